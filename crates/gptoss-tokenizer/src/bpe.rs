//! Byte-pair merging of one pre-tokenized piece: start from one token per byte and repeatedly merge the
//! adjacent pair of lowest priority (leftmost on ties) until no pair merges. A heap keeps it O(n log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap as HashMap;

/// How adjacent tokens merge, i.e. which BPE flavour the vocabulary was built for.
#[derive(Debug)]
pub(crate) enum MergeRule {
    /// tiktoken: two adjacent tokens merge when their concatenated bytes are a token; the priority is
    /// that token's id (rank == id).
    Ranks,
    /// Hugging Face BPE: `(left id, right id) -> (merge index, merged id)` from the ordered merges list.
    Pairs(HashMap<(u32, u32), (u32, u32)>),
}

/// One symbol of the piece being merged: a byte span, its token id and its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    end: usize,
    id: u32,
    prev: usize,
    next: usize,
}

/// A candidate merge of `left` with its right neighbour; valid while both spans are unchanged.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    priority: u32,
    left: usize,
    left_end: usize,
    right_end: usize,
    merged: u32,
}

const NONE: usize = usize::MAX;

/// Merges `piece` (one pre-token) into token ids. `byte_ids[b]` is the token of byte `b`; `by_bytes`
/// maps token bytes to ids (used by [`MergeRule::Ranks`]).
pub(crate) fn merge_piece(
    piece: &[u8],
    byte_ids: &[u32; 256],
    by_bytes: &HashMap<Vec<u8>, u32>,
    rule: &MergeRule,
) -> Vec<u32> {
    let n = piece.len();
    let mut syms: Vec<Symbol> = piece
        .iter()
        .enumerate()
        .map(|(i, &b)| Symbol {
            start: i,
            end: i + 1,
            id: byte_ids[b as usize],
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == n { NONE } else { i + 1 },
        })
        .collect();
    let candidate = |syms: &[Symbol], left: usize| -> Option<Candidate> {
        let l = syms.get(left)?;
        let r = syms.get(l.next)?;
        let (priority, merged) = match rule {
            MergeRule::Ranks => {
                let id = *by_bytes.get(piece.get(l.start..r.end)?)?;
                (id, id)
            }
            MergeRule::Pairs(pairs) => *pairs.get(&(l.id, r.id))?,
        };
        Some(Candidate {
            priority,
            left,
            left_end: l.end,
            right_end: r.end,
            merged,
        })
    };
    let mut heap: BinaryHeap<Reverse<Candidate>> = (0..n)
        .filter_map(|i| candidate(&syms, i))
        .map(Reverse)
        .collect();
    while let Some(Reverse(c)) = heap.pop() {
        let Some(&l) = syms.get(c.left) else { continue };
        let Some(&r) = syms.get(l.next) else { continue };
        if l.end != c.left_end || r.end != c.right_end {
            continue; // stale: one side has merged since this candidate was pushed
        }
        if let Some(s) = syms.get_mut(c.left) {
            s.end = r.end;
            s.id = c.merged;
            s.next = r.next;
        }
        if let Some(s) = syms.get_mut(r.next) {
            s.prev = c.left;
        }
        // Mark the absorbed symbol dead so no candidate can start from it.
        if let Some(s) = syms.get_mut(r.start) {
            s.end = usize::MAX;
            s.next = NONE;
        }
        heap.extend(candidate(&syms, c.left).map(Reverse));
        if l.prev != NONE {
            heap.extend(candidate(&syms, l.prev).map(Reverse));
        }
    }
    let mut out = Vec::new();
    let mut i = if n == 0 { NONE } else { 0 };
    while let Some(s) = syms.get(i) {
        out.push(s.id);
        i = s.next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[&str]) -> (HashMap<Vec<u8>, u32>, [u32; 256]) {
        let mut by_bytes = HashMap::default();
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            byte_ids[b as usize] = u32::from(b);
            by_bytes.insert(vec![b], u32::from(b));
        }
        for (i, t) in tokens.iter().enumerate() {
            by_bytes.insert(t.as_bytes().to_vec(), 256 + i as u32);
        }
        (by_bytes, byte_ids)
    }

    #[test]
    fn ranks_merge_lowest_first_leftmost_on_ties() {
        let (by_bytes, byte_ids) = vocab(&["aa", "ab", "aaa", "aab"]);
        // "aab": "aa"(256) beats "ab"(257), then "aa"+"b" = "aab"(259).
        assert_eq!(
            merge_piece(b"aab", &byte_ids, &by_bytes, &MergeRule::Ranks),
            vec![259]
        );
        // "aaaa": leftmost "aa" first, then "aa"+"aa" is not a token, so two "aa".
        assert_eq!(
            merge_piece(b"aaaa", &byte_ids, &by_bytes, &MergeRule::Ranks),
            vec![256, 256]
        );
        assert_eq!(
            merge_piece(b"", &byte_ids, &by_bytes, &MergeRule::Ranks),
            Vec::<u32>::new()
        );
        assert_eq!(
            merge_piece(b"z", &byte_ids, &by_bytes, &MergeRule::Ranks),
            vec![u32::from(b'z')]
        );
    }

    #[test]
    fn pairs_follow_merge_order_not_ids() {
        let (by_bytes, byte_ids) = vocab(&["ab", "bc"]);
        let (a, b, c) = (u32::from(b'a'), u32::from(b'b'), u32::from(b'c'));
        // The merges list puts "b c" before "a b", although "ab" has the lower id.
        let pairs = [((b, c), (0, 257)), ((a, b), (1, 256))]
            .into_iter()
            .collect();
        let rule = MergeRule::Pairs(pairs);
        assert_eq!(
            merge_piece(b"abc", &byte_ids, &by_bytes, &rule),
            vec![a, 257]
        );
        assert_eq!(
            merge_piece(b"abc", &byte_ids, &by_bytes, &MergeRule::Ranks),
            vec![256, c]
        );
    }
}
