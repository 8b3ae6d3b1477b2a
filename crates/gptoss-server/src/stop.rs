//! `stop` strings: visible text is cut before the first occurrence of any of them. Text that could
//! still become a stop string is held back until the next piece decides it.

/// A stop-string matcher over streamed text.
#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds text; returns what is now safe to show.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_string();
        }
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.stopped = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        let keep = self.partial_suffix();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// Text held back at the end of the stream (it was not a stop string).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that begins some stop string.
    fn partial_suffix(&self) -> usize {
        let h = &self.held;
        (1..=h.len())
            .rev()
            .filter(|&n| h.is_char_boundary(h.len() - n))
            .find(|&n| self.stops.iter().any(|s| s.starts_with(&h[h.len() - n..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_before_a_stop_split_across_pieces() {
        let mut s = StopStrings::new(vec!["END".into(), "xyz".into()]);
        assert_eq!(s.push("hello E"), "hello ");
        assert_eq!(s.push("N"), "");
        assert_eq!(s.push("Dless"), "");
        assert!(s.stopped());
        assert_eq!(s.push("more"), "");

        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("aE"), "a");
        assert_eq!(s.push("Nx"), "ENx");
        assert_eq!(s.push("é E"), "é ");
        assert_eq!(s.flush(), "E");
        assert!(!s.stopped());
        assert_eq!(StopStrings::new(vec![]).push("END"), "END");
    }
}
