//! Which tokens run in the next step (vLLM v1 style): no prefill or decode phase, each sequence has
//! computed and total token counts; the step's token budget goes to running sequences first (oldest
//! first), then to waiting ones (admitted while fewer than `max_running` run and KV blocks are free).
//! A running sequence that cannot get blocks preempts the newest running one (recompute: its blocks
//! are freed and it goes back to the front of the queue with nothing computed, keeping the tokens it
//! generated).

use std::collections::{HashMap, VecDeque};

use super::kv::KvBlocks;
use super::sequence::{RequestId, Sequence};

/// A slice of one sequence's tokens to run in this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scheduled {
    pub id: RequestId,
    /// First position of the slice.
    pub start: usize,
    /// Tokens in the slice.
    pub len: usize,
    /// Whether the slice reaches the end of the sequence (its last token's logits are sampled).
    pub sample: bool,
}

/// The next step: slices to run, and how many sequences were preempted to make room.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub items: Vec<Scheduled>,
    pub preempted: usize,
}

/// The waiting queue, the running set and the KV block allocator.
pub(crate) struct Scheduler {
    max_batch_tokens: usize,
    max_running: usize,
    kv: KvBlocks,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    seqs: HashMap<RequestId, Sequence>,
}

impl Scheduler {
    /// A scheduler running at most `max_running` sequences, `max_batch_tokens` per step, over the
    /// block allocator `kv`.
    pub fn new(max_batch_tokens: usize, max_running: usize, kv: KvBlocks) -> Self {
        Scheduler {
            max_batch_tokens,
            max_running,
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
        let mut budget = self.max_batch_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(item) = self.slice(id, budget) else {
                break;
            };
            if !self.reserve(item, &mut plan) {
                break; // `id` itself was the newest and got preempted
            }
            plan.items.push(item);
            budget -= item.len;
            i += 1;
        }
        if plan.preempted == 0 {
            self.admit(&mut budget, &mut plan);
        }
        plan
    }

    /// The next slice of `id` within `budget`.
    fn slice(&self, id: RequestId, budget: usize) -> Option<Scheduled> {
        let seq = self.seqs.get(&id)?;
        let len = seq.uncomputed().min(budget);
        Some(Scheduled {
            id,
            start: seq.computed,
            len,
            sample: seq.computed + len == seq.tokens.len(),
        })
    }

    /// Reserves blocks for a running slice, preempting the newest running sequences until it fits.
    /// False when the slice's own sequence had to go.
    fn reserve(&mut self, item: Scheduled, plan: &mut Plan) -> bool {
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
        }
        self.waiting.push_front(id);
        plan.preempted += 1;
        tracing::debug!(
            request = id.0,
            "preempted (KV blocks exhausted); will recompute"
        );
    }

    /// Admits waiting sequences in order while running room, blocks and budget remain.
    fn admit(&mut self, budget: &mut usize, plan: &mut Plan) {
        while *budget > 0 {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let Some(item) = self.slice(id, *budget) else {
                self.waiting.pop_front(); // a stale id: its sequence was removed
                continue;
            };
            if self.running.len() >= self.max_running || !self.kv.grow(id, item.start + item.len) {
                break;
            }
            self.waiting.pop_front();
            self.running.push(id);
            plan.items.push(item);
            *budget -= item.len;
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
        Sequence::new(RequestId(id), request, Box::new(|_| true))
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
        let mut s = Scheduler::new(10, 4, kv(100));
        s.add(seq(1, 25));
        s.add(seq(2, 3));
        let p = s.schedule();
        let want = [Scheduled {
            id: RequestId(1),
            start: 0,
            len: 10,
            sample: false,
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
                sample: false
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
                    sample: true
                },
                Scheduled {
                    id: RequestId(2),
                    start: 0,
                    len: 3,
                    sample: true
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
        let mut s = Scheduler::new(100, 1, kv(100));
        s.add(seq(1, 4));
        s.add(seq(2, 4));
        let p = s.schedule();
        assert_eq!(p.items.len(), 1); // one slot
        run(&mut s, &p);
        s.remove(RequestId(1));
        assert_eq!(s.schedule().items[0].id, RequestId(2));

        let mut s = Scheduler::new(100, 4, kv(2));
        s.add(seq(1, 20)); // 2 blocks
        s.add(seq(2, 4));
        let p = s.schedule();
        assert_eq!(p.items.len(), 1);
        assert_eq!(s.waiting_len(), 1);
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_and_recomputes() {
        let mut s = Scheduler::new(100, 4, kv(2));
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
                sample: true
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
                sample: true
            }]
        );
    }
}
