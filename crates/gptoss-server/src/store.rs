//! The Responses API's state: a bounded in-memory store of responses (`store`, default true), each
//! kept with the conversation turns it ended (its input and its output as turns), so that
//! `previous_response_id` continues it and `GET /v1/responses/{id}` returns it. The oldest response
//! is dropped when the store is full (`--responses-store`); a server restart forgets them all.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

use crate::conversation::Turn;

/// One stored response.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The response object as returned.
    pub response: Value,
    /// The turns of the conversation up to and including this response's output.
    pub turns: Vec<Turn>,
}

/// The bounded store.
#[derive(Debug)]
pub struct ResponseStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Stored>,
    order: VecDeque<String>,
}

impl ResponseStore {
    /// A store of at most `capacity` responses (0 stores nothing).
    pub fn new(capacity: usize) -> Self {
        ResponseStore {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Most responses kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps `stored` under `id`, dropping the oldest beyond the capacity.
    pub fn put(&self, id: String, stored: Stored) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.by_id.insert(id.clone(), stored).is_none() {
            inner.order.push_back(id);
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
    }

    /// The response stored under `id`.
    pub fn get(&self, id: &str) -> Option<Stored> {
        self.inner.lock().ok()?.by_id.get(id).cloned()
    }

    /// Responses held now.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.by_id.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_capacity() {
        let s = ResponseStore::new(2);
        let stored = |n: i64| Stored {
            response: serde_json::json!(n),
            turns: vec![Turn::User(n.to_string())],
        };
        s.put("a".into(), stored(1));
        s.put("b".into(), stored(2));
        s.put("c".into(), stored(3));
        assert!(s.get("a").is_none());
        assert_eq!(s.get("b").unwrap().response, 2);
        assert_eq!(s.get("c").unwrap().turns, vec![Turn::User("3".into())]);
        assert_eq!(s.len(), 2);
        let none = ResponseStore::new(0);
        none.put("a".into(), stored(1));
        assert_eq!(none.len(), 0);
    }
}
