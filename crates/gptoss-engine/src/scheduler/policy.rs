//! Which tokens run in the next step (vLLM v1 style): no prefill or decode phase, each sequence has
//! computed and total token counts; the step's token budget goes to running sequences first (oldest
//! first), then to waiting ones (admitted while fewer than `max_running` run and KV blocks are free).
//! A running sequence that cannot get blocks preempts the newest running one (recompute: its blocks
//! are freed and it goes back to the front of the queue with nothing computed, keeping the tokens it
//! generated).
//!
//! Speculative drafts ride on a running sequence's sampled slice: they count in the token budget and
//! take a logit row each, but only from what is left after one token and one row for every later
//! running sequence (drafts never starve a sequence), and a draft that does not fit the KV pool is
//! dropped rather than preempting anyone.

use std::collections::{HashMap, VecDeque};

use super::kv::{BlockCopy, KvBlocks};
use super::sequence::{RequestId, Sequence};

/// What bounds a step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Tokens per step.
    pub max_batch_tokens: usize,
    /// Sequences holding a cache slot.
    pub max_running: usize,
    /// Logit rows per step (a sampled slice takes one, plus one per draft token).
    pub max_logit_rows: usize,
    /// Longest sequence.
    pub context_tokens: usize,
    /// Most draft tokens a sequence adds to its step.
    pub max_draft: usize,
}

/// A slice of one sequence's tokens to run in this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scheduled {
    pub id: RequestId,
    /// First position of the slice.
    pub start: usize,
    /// Tokens in the slice, draft tokens included.
    pub len: usize,
    /// Whether the slice reaches the end of the sequence (its last token's logits are sampled).
    pub sample: bool,
    /// Draft tokens (the sequence's `draft`) after the slice's own tokens, each with a logit row.
    pub draft: usize,
}

/// The next step: slices to run, how many sequences were preempted to make room, and the KV block
/// copies (prefix-cache hits) to make before it runs.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub items: Vec<Scheduled>,
    pub preempted: usize,
    pub copies: Vec<BlockCopy>,
    /// Admissions that started from cached prefix blocks, and the positions they reused.
    pub prefix_hits: usize,
    pub prefix_tokens: usize,
}

/// Tokens and logit rows left in the step being planned.
#[derive(Clone, Copy, Debug)]
struct Room {
    tokens: usize,
    rows: usize,
}

impl Room {
    fn take(&mut self, item: &Scheduled) {
        self.tokens -= item.len;
        if item.sample {
            self.rows -= 1 + item.draft;
        }
    }
}

/// The waiting queue, the running set and the KV block allocator.
pub(crate) struct Scheduler {
    limits: Limits,
    kv: KvBlocks,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    seqs: HashMap<RequestId, Sequence>,
}

impl Scheduler {
    /// A scheduler within `limits` over the block allocator `kv`.
    pub fn new(limits: Limits, kv: KvBlocks) -> Self {
        Scheduler {
            limits,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            seqs: HashMap::new(),
        }
    }

    pub fn kv(&self) -> &KvBlocks {
        &self.kv
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Every sequence's id.
    pub fn ids(&self) -> Vec<RequestId> {
        self.seqs.keys().copied().collect()
    }

    /// Queues a new sequence.
    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
    }

    pub fn get(&self, id: RequestId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// After a step: registers the prompt blocks of `id` once its prompt is computed (prefix
    /// caching); returns the ring copies to make before the next step.
    pub fn register_prefix(&mut self, id: RequestId) -> Vec<BlockCopy> {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return Vec::new();
        };
        if seq.registered || seq.computed < seq.prompt_len {
            return Vec::new();
        }
        seq.registered = true;
        let tokens = seq.tokens.get(..seq.computed).unwrap_or(&[]);
        self.kv.register_prefix(id, tokens)
    }

    pub fn get_mut(&mut self, id: RequestId) -> Option<&mut Sequence> {
        self.seqs.get_mut(&id)
    }

    /// Removes a sequence wherever it is, returning it; its blocks are freed.
    pub fn remove(&mut self, id: RequestId) -> Option<Sequence> {
        let seq = self.seqs.remove(&id)?;
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        self.kv.free(id);
        Some(seq)
    }

    /// Decides the next step.
    pub fn schedule(&mut self) -> Plan {
        let mut plan = Plan::default();
        let mut room = Room {
            tokens: self.limits.max_batch_tokens,
            rows: self.limits.max_logit_rows,
        };
        let mut i = 0;
        while i < self.running.len() && room.tokens > 0 {
            let id = self.running[i];
            let later = self.running.len() - i - 1;
            let Some(mut item) = self.slice(id, room.tokens) else {
                break;
            };
            if item.sample && room.rows == 0 {
                break;
            }
            if item.sample {
                self.add_draft(&mut item, room, later);
            }
            if !self.reserve(&mut item, &mut plan) {
                break; // `id` itself was the newest and got preempted
            }
            room.take(&item);
            plan.items.push(item);
            i += 1;
        }
        if plan.preempted == 0 {
            self.admit(&mut room, &mut plan);
        }
        plan
    }

    /// The next slice of `id` within `budget`, without a draft.
    fn slice(&self, id: RequestId, budget: usize) -> Option<Scheduled> {
        let seq = self.seqs.get(&id)?;
        let len = seq.uncomputed().min(budget);
        Some(Scheduled {
            id,
            start: seq.computed,
            len,
            sample: seq.computed + len == seq.tokens.len(),
            draft: 0,
        })
    }

    /// Asks the sequence's proposer for a draft to follow `item`, within what `room` leaves after a
    /// token and a row for each of `later` running sequences, what the request may still generate
    /// (the step emits up to one token more than it drafts) and the context.
    fn add_draft(&mut self, item: &mut Scheduled, room: Room, later: usize) {
        let context = self.limits.context_tokens;
        let Some(seq) = self.seqs.get_mut(&item.id) else {
            return;
        };
        seq.draft.clear();
        let max = (room.tokens - item.len)
            .saturating_sub(later)
            .min(self.limits.max_draft)
            .min(room.rows.saturating_sub(1 + later))
            .min(seq.remaining().saturating_sub(1))
            .min(context.saturating_sub(seq.tokens.len() + 1));
        let Some(proposer) = seq.proposer.as_mut().filter(|_| max > 0) else {
            return;
        };
        let mut draft = proposer.propose(&seq.tokens, max);
        draft.truncate(max);
        item.draft = draft.len();
        item.len += draft.len();
        seq.draft = draft;
    }

    /// Reserves blocks for a running slice, preempting the newest running sequences until it fits.
    /// A draft that does not fit is dropped first. False when the slice's own sequence had to go.
    fn reserve(&mut self, item: &mut Scheduled, plan: &mut Plan) -> bool {
        if item.draft > 0 && !self.kv.grow(item.id, item.start + item.len) {
            item.len -= item.draft;
            item.draft = 0;
            if let Some(seq) = self.seqs.get_mut(&item.id) {
                seq.draft.clear();
            }
        }
        while !self.kv.grow(item.id, item.start + item.len) {
            let Some(victim) = self.running.pop() else {
                return false;
            };
            self.preempt(victim, plan);
            if victim == item.id {
                return false;
            }
        }
        true
    }

    fn preempt(&mut self, id: RequestId, plan: &mut Plan) {
        self.kv.free(id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.computed = 0;
            seq.registered = false;
        }
        self.waiting.push_front(id);
        plan.preempted += 1;
        tracing::debug!(
            request = id.0,
            "preempted (KV blocks exhausted); will recompute"
        );
    }

    /// Whether `id` is a choice of a request whose prompt another running choice is still
    /// prefilling: it waits, and then starts from that choice's cached blocks.
    fn waits_for_sibling(&self, id: RequestId) -> bool {
        let Some(group) = self.seqs.get(&id).and_then(|s| s.fork) else {
            return false;
        };
        self.running.iter().any(|r| {
            self.seqs
                .get(r)
                .is_some_and(|s| s.fork == Some(group) && s.computed < s.prompt_len)
        })
    }

    /// Starts a waiting sequence from the prefix cache when its prompt's start is cached; returns the
    /// block copies that restores.
    fn adopt_prefix(&mut self, id: RequestId) -> Vec<BlockCopy> {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return Vec::new();
        };
        if seq.computed > 0 {
            return Vec::new();
        }
        match self.kv.adopt_prefix(id, &seq.tokens) {
            Some((hit, copies)) => {
                seq.computed = hit;
                if seq.generated() == 0 {
                    seq.cached_tokens = seq.cached_tokens.max(hit);
                }
                copies
            }
            None => Vec::new(),
        }
    }

    /// Admits waiting sequences in order while running room, blocks, budget and rows remain.
    fn admit(&mut self, room: &mut Room, plan: &mut Plan) {
        while room.tokens > 0 {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            if self.running.len() >= self.limits.max_running || self.waits_for_sibling(id) {
                break;
            }
            let copies = self.adopt_prefix(id);
            let Some(item) = self.slice(id, room.tokens) else {
                self.waiting.pop_front(); // a stale id: its sequence was removed
                continue;
            };
            if (item.sample && room.rows == 0) || !self.kv.grow(id, item.start + item.len) {
                if !copies.is_empty() || item.start > 0 {
                    // Give the shared blocks back: the sequence starts over when it is admitted.
                    self.kv.free(id);
                    if let Some(seq) = self.seqs.get_mut(&id) {
                        seq.computed = 0;
                    }
                }
                break;
            }
            if item.start > 0 {
                plan.prefix_hits += 1;
                plan.prefix_tokens += item.start;
            }
            plan.copies.extend(copies);
            self.waiting.pop_front();
            self.running.push(id);
            room.take(&item);
            plan.items.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::sequence::GenRequest;
    use crate::{Capacity, KvLayout, SamplingParams};

    fn seq(id: u64, prompt_len: usize) -> Sequence {
        let request = GenRequest {
            prompt: vec![1; prompt_len],
            sampling: SamplingParams::default(),
            max_new_tokens: 100,
            stop_tokens: vec![],
        };
        Sequence::new(RequestId(id), request, Box::new(|_| true), None)
    }

    /// `max_batch_tokens` and `max_running` with a logit row per running sequence.
    fn limits(max_batch_tokens: usize, max_running: usize) -> Limits {
        Limits {
            max_batch_tokens,
            max_running,
            max_logit_rows: max_running,
            context_tokens: 1024,
            max_draft: 0,
        }
    }

    /// One full layer: a block per 16 positions.
    fn kv(total_blocks: usize) -> KvBlocks {
        let mut c = gptoss_formats::ModelConfig::gpt_oss_20b();
        c.num_hidden_layers = 1;
        c.layer_types = vec![gptoss_formats::config::LayerType::Full];
        let cap = Capacity {
            max_batch_tokens: 100,
            max_logit_rows: 4,
            slots: 4,
            context_tokens: 1024,
            kv_blocks: Some(total_blocks),
        };
        KvBlocks::new(KvLayout::new(&c, &cap).unwrap())
    }

    /// Marks the plan's slices as run and appends a sampled token where one was sampled.
    fn run(s: &mut Scheduler, plan: &Plan) {
        for item in &plan.items {
            let seq = s.get_mut(item.id).unwrap();
            seq.computed += item.len;
            if item.sample {
                seq.tokens.push(7);
            }
        }
    }

    #[test]
    fn chunked_prefill_running_first_then_waiting() {
        let mut s = Scheduler::new(limits(10, 4), kv(100));
        s.add(seq(1, 25));
        s.add(seq(2, 3));
        let p = s.schedule();
        let want = [Scheduled {
            id: RequestId(1),
            start: 0,
            len: 10,
            sample: false,
            draft: 0,
        }];
        assert_eq!(p.items, want);
        run(&mut s, &p);
        let p = s.schedule();
        assert_eq!(
            p.items[0],
            Scheduled {
                id: RequestId(1),
                start: 10,
                len: 10,
                sample: false,
                draft: 0,
            }
        );
        assert_eq!(p.items.len(), 1);
        run(&mut s, &p);
        // 5 left of the first prompt, then the second prompt fits in the remaining budget.
        let p = s.schedule();
        assert_eq!(
            p.items,
            [
                Scheduled {
                    id: RequestId(1),
                    start: 20,
                    len: 5,
                    sample: true,
                    draft: 0,
                },
                Scheduled {
                    id: RequestId(2),
                    start: 0,
                    len: 3,
                    sample: true,
                    draft: 0,
                },
            ]
        );
        run(&mut s, &p);
        // Both decode one token each.
        let p = s.schedule();
        assert_eq!(
            p.items.iter().map(|i| (i.start, i.len)).collect::<Vec<_>>(),
            [(25, 1), (3, 1)]
        );
    }

    #[test]
    fn admission_waits_for_slots_and_blocks() {
        let mut s = Scheduler::new(limits(100, 1), kv(100));
        s.add(seq(1, 4));
        s.add(seq(2, 4));
        let p = s.schedule();
        assert_eq!(p.items.len(), 1); // one slot
        run(&mut s, &p);
        s.remove(RequestId(1));
        assert_eq!(s.schedule().items[0].id, RequestId(2));

        let mut s = Scheduler::new(limits(100, 4), kv(2));
        s.add(seq(1, 20)); // 2 blocks
        s.add(seq(2, 4));
        let p = s.schedule();
        assert_eq!(p.items.len(), 1);
        assert_eq!(s.waiting_len(), 1);
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_and_recomputes() {
        let mut s = Scheduler::new(limits(100, 4), kv(2));
        s.add(seq(1, 16));
        s.add(seq(2, 15));
        let p = s.schedule();
        assert_eq!(p.items.len(), 2);
        run(&mut s, &p);
        // Seq 1 now needs a second block for position 16; seq 2 still fits in its one block.
        let p = s.schedule();
        assert_eq!(p.preempted, 1);
        assert_eq!(
            p.items,
            [Scheduled {
                id: RequestId(1),
                start: 16,
                len: 1,
                sample: true,
                draft: 0,
            }]
        );
        assert_eq!(s.waiting_len(), 1);
        assert!(s.kv().table(RequestId(2)).is_none());
        assert_eq!(s.kv().used_blocks(), 2);
        let seq2 = s.get_mut(RequestId(2)).unwrap();
        assert_eq!((seq2.computed, seq2.tokens.len()), (0, 16));
        run(&mut s, &p);
        s.remove(RequestId(1));
        // Seq 2 comes back and recomputes its prompt and its sampled token.
        let p = s.schedule();
        assert_eq!(
            p.items,
            [Scheduled {
                id: RequestId(2),
                start: 0,
                len: 16,
                sample: true,
                draft: 0,
            }]
        );
    }

    /// Proposes its tokens, as many as allowed.
    struct Fixed(Vec<u32>);

    impl crate::scheduler::draft::DraftProposer for Fixed {
        fn propose(&mut self, _tokens: &[u32], max: usize) -> Vec<u32> {
            self.0.iter().copied().take(max).collect()
        }
    }

    fn drafting(id: u64, prompt_len: usize, max_new_tokens: usize, draft: &[u32]) -> Sequence {
        let request = GenRequest {
            prompt: vec![1; prompt_len],
            sampling: SamplingParams::default(),
            max_new_tokens,
            stop_tokens: vec![],
        };
        let proposer = Box::new(Fixed(draft.to_vec()));
        Sequence::new(RequestId(id), request, Box::new(|_| true), Some(proposer))
    }

    /// Runs the plan as the engine does when the target accepts `accepted` tokens of each draft:
    /// the accepted drafts and one more token are appended, the accepted ones count as computed.
    fn run_spec(s: &mut Scheduler, plan: &Plan, accepted: usize) {
        for item in &plan.items {
            let seq = s.get_mut(item.id).unwrap();
            seq.computed += item.len - item.draft;
            if item.sample {
                let a = accepted.min(item.draft);
                let kept: Vec<u32> = seq.draft[..a].to_vec();
                seq.tokens.extend(kept);
                seq.tokens.push(7);
                seq.computed += a;
            }
        }
    }

    fn shape(p: &Plan) -> Vec<(u64, usize, usize, usize)> {
        p.items
            .iter()
            .map(|i| (i.id.0, i.start, i.len, i.draft))
            .collect()
    }

    #[test]
    fn drafts_share_the_budget_and_leave_each_later_sequence_a_token_and_a_row() {
        let limits = Limits {
            max_batch_tokens: 8,
            max_running: 3,
            max_logit_rows: 15,
            context_tokens: 1024,
            max_draft: 16,
        };
        let mut s = Scheduler::new(limits, kv(100));
        for id in 1..=3 {
            s.add(drafting(id, 2, 100, &[5; 6]));
        }
        let p = s.schedule();
        // Admission carries no drafts.
        assert_eq!(shape(&p), [(1, 0, 2, 0), (2, 0, 2, 0), (3, 0, 2, 0)]);
        run_spec(&mut s, &p, 0);
        // 8 tokens: the oldest drafts 5, leaving one token each for the two after it.
        let p = s.schedule();
        assert_eq!(shape(&p), [(1, 2, 6, 5), (2, 2, 1, 0), (3, 2, 1, 0)]);
        assert_eq!(s.get_mut(RequestId(1)).unwrap().draft, [5; 5]);
        run_spec(&mut s, &p, 2);
        assert_eq!(s.get_mut(RequestId(1)).unwrap().tokens.len(), 3 + 3);
        assert_eq!(s.get_mut(RequestId(1)).unwrap().computed, 5);

        // Rows bound drafts too: 4 rows for 3 running sequences leave one draft token.
        let limits = Limits {
            max_logit_rows: 4,
            ..limits
        };
        let mut s = Scheduler::new(limits, kv(100));
        for id in 1..=3 {
            s.add(drafting(id, 2, 100, &[5; 6]));
        }
        let p = s.schedule();
        run_spec(&mut s, &p, 0);
        assert_eq!(
            shape(&s.schedule()),
            [(1, 2, 2, 1), (2, 2, 1, 0), (3, 2, 1, 0)]
        );
    }

    #[test]
    fn drafts_stop_at_the_token_limit_and_the_context() {
        let limits = Limits {
            max_batch_tokens: 64,
            max_running: 2,
            max_logit_rows: 20,
            context_tokens: 20,
            max_draft: 16,
        };
        let mut s = Scheduler::new(limits, kv(100));
        s.add(drafting(1, 4, 3, &[5; 8])); // 3 new tokens: after the first, a draft of 1 at most
        s.add(drafting(2, 16, 100, &[5; 8])); // 17 tokens of 20: a draft of 2 at most
        let p = s.schedule();
        run_spec(&mut s, &p, 0);
        assert_eq!(shape(&s.schedule()), [(1, 4, 2, 1), (2, 16, 3, 2)]);
    }

    #[test]
    fn a_draft_that_does_not_fit_is_dropped_without_preempting() {
        let limits = Limits {
            max_batch_tokens: 64,
            max_running: 2,
            max_logit_rows: 10,
            context_tokens: 1024,
            max_draft: 16,
        };
        let mut s = Scheduler::new(limits, kv(2));
        s.add(drafting(1, 15, 100, &[5; 4]));
        s.add(drafting(2, 15, 100, &[5; 4]));
        let p = s.schedule();
        run_spec(&mut s, &p, 0);
        assert_eq!(s.kv().used_blocks(), 2);
        // Position 15 fits each one's block; a draft would need a third block.
        let p = s.schedule();
        assert_eq!(p.preempted, 0);
        assert_eq!(shape(&p), [(1, 15, 1, 0), (2, 15, 1, 0)]);
        assert!(s.get_mut(RequestId(1)).unwrap().draft.is_empty());
    }

    #[test]
    fn blocks_of_rejected_positions_are_reused_then_returned() {
        let limits = Limits {
            max_batch_tokens: 64,
            max_running: 1,
            max_logit_rows: 5,
            context_tokens: 1024,
            max_draft: 16,
        };
        let mut s = Scheduler::new(limits, kv(10));
        s.add(drafting(1, 14, 100, &[5; 4]));
        let p = s.schedule();
        run_spec(&mut s, &p, 0); // 15 tokens, 14 computed
        let p = s.schedule();
        assert_eq!(shape(&p), [(1, 14, 5, 4)]); // positions 14..=18: two blocks
        assert_eq!(s.kv().used_blocks(), 2);
        run_spec(&mut s, &p, 0); // all rejected: 16 tokens, 15 computed
                                 // The next draft writes positions 15..=19 into the blocks it already holds.
        let p = s.schedule();
        assert_eq!(shape(&p), [(1, 15, 5, 4)]);
        assert_eq!(s.kv().used_blocks(), 2);
        run_spec(&mut s, &p, 4); // all accepted: 21 tokens, 20 computed
        let p = s.schedule();
        assert_eq!(shape(&p), [(1, 20, 5, 4)]);
        assert_eq!(s.kv().used_blocks(), 2); // positions up to 24
        s.remove(RequestId(1));
        assert_eq!(s.kv().used_blocks(), 0);
    }
}
