//! The paged KV cache on the tiny fixture model (1 full + 2 sliding layers, window 8): sliding-window rings
//! reused over a long sequence give the logits of a run whose ring never wraps; scattered, interleaved
//! block tables give each sequence its solo logits; the engine holds at most a ring of sliding blocks per
//! sequence and returns every block when requests finish, are cancelled or preempted; bad tables are
//! errors, not panics.

mod common;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use gptoss_engine::scheduler::{
    channel_sink, Engine, EngineConfig, EngineStats, GenRequest, Output, RequestId,
};
use gptoss_engine::{Batch, BlockTable, Capacity, CpuBackend, Model, PoolKind, SamplingParams};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

fn model(w: &ModelWeights, slots: usize, step_tokens: usize, ctx: usize) -> Model<CpuBackend> {
    let cap = Capacity {
        max_batch_tokens: step_tokens,
        max_logit_rows: step_tokens.max(slots),
        slots,
        context_tokens: ctx,
        kv_blocks: None,
    };
    Model::new(CpuBackend, w, cap).unwrap()
}

fn tokens(n: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|j| ((j * 37 + salt * 101) % 480) as u32 + 1)
        .collect()
}

/// Logits of every position of `toks`, run in one step (the ring is as long as the table: no reuse).
fn one_shot(w: &ModelWeights, toks: &[u32]) -> Vec<f32> {
    let n = toks.len();
    let mut m = model(w, 1, n, n);
    assert_eq!(m.kv_layout().ring_blocks, m.kv_layout().table_blocks);
    let mut batch = Batch::single(toks, 0, m.solo_table());
    batch.logit_rows = (0..n as u32).collect();
    m.forward(&batch).unwrap();
    m.logits(n).unwrap()
}

#[test]
fn long_sequence_reuses_the_sliding_ring_with_unchanged_logits() {
    let w = weights();
    assert_eq!(w.config.sliding_window, 8);
    let toks = tokens(150, 1);
    let want = one_shot(&w, &toks);
    // One token per step: a ring of 2 sliding blocks serves 150 positions (10 blocks), reused 8 times.
    let mut m = model(&w, 1, 1, 160);
    let layout = m.kv_layout().clone();
    assert_eq!((layout.ring_blocks, layout.table_blocks), (2, 10));
    let table = m.solo_table();
    let vocab = w.config.vocab_size;
    for (p, &t) in toks.iter().enumerate() {
        m.forward(&Batch::single(&[t], p as u32, table.clone()))
            .unwrap();
        let got = m.logits(1).unwrap();
        assert!(
            got == want[p * vocab..(p + 1) * vocab],
            "position {p}: logits differ from the one-shot run"
        );
    }
    assert_eq!(m.cache().touched_blocks(PoolKind::Sliding), 2);
    assert_eq!(m.cache().touched_blocks(PoolKind::Full), 10);
}

#[test]
fn interleaved_scattered_tables_equal_solo_runs() {
    let w = weights();
    let (a, b) = (tokens(45, 2), tokens(37, 3));
    let (want_a, want_b) = (one_shot(&w, &a), one_shot(&w, &b));
    // Two sequences in one model, blocks deliberately scattered and interleaved in both pools.
    let mut m = model(&w, 2, 8, 64);
    let l = m.kv_layout().clone();
    assert_eq!((l.ring_blocks, l.full_blocks, l.sliding_blocks), (2, 8, 8));
    let ta = BlockTable {
        full: vec![6, 1, 3],
        sliding: vec![3, 0],
    };
    let tb = BlockTable {
        full: vec![0, 7, 2],
        sliding: vec![1, 2],
    };
    let vocab = w.config.vocab_size;
    let (mut pa, mut pb) = (0usize, 0usize);
    // Steps of 5 tokens of a then 3 of b, in one batch, until both are done.
    while pa < a.len() || pb < b.len() {
        let (na, nb) = ((a.len() - pa).min(5), (b.len() - pb).min(3));
        let mut batch = Batch::default();
        for (toks, start, n, table) in [(&a, pa, na, &ta), (&b, pb, nb, &tb)] {
            if n == 0 {
                continue;
            }
            let row = batch.tables.len() as u32;
            batch.tokens.extend_from_slice(&toks[start..start + n]);
            batch.positions.extend(start as u32..(start + n) as u32);
            batch.seqs.extend(std::iter::repeat_n(row, n));
            batch.tables.push(table.clone());
        }
        batch.logit_rows = (0..(na + nb) as u32).collect();
        m.forward(&batch).unwrap();
        let got = m.logits(na + nb).unwrap();
        for i in 0..na {
            let p = pa + i;
            assert!(
                got[i * vocab..(i + 1) * vocab] == want_a[p * vocab..(p + 1) * vocab],
                "a, position {p}"
            );
        }
        for i in 0..nb {
            let (p, r) = (pb + i, na + i);
            assert!(
                got[r * vocab..(r + 1) * vocab] == want_b[p * vocab..(p + 1) * vocab],
                "b, position {p}"
            );
        }
        pa += na;
        pb += nb;
    }
}

/// Runs the engine synchronously until idle; after every step, checks the block counts against the
/// running sequences. Returns each request's tokens.
fn drive(
    engine: &mut Engine<'_, CpuBackend>,
    stats: &EngineStats,
    rxs: &[mpsc::Receiver<Output>],
) -> Vec<Vec<u32>> {
    let ring = engine.model().kv_layout().ring_blocks;
    let sliding_pool = engine.model().kv_layout().sliding_blocks;
    let mut steps = 0;
    while engine.has_work() {
        engine.step();
        steps += 1;
        assert!(steps < 10_000, "the engine does not finish");
        let g = stats.snapshot().gauges;
        assert!(
            g.kv_sliding_used_blocks <= g.running * ring,
            "{} sliding blocks for {} running sequences (ring {ring})",
            g.kv_sliding_used_blocks,
            g.running
        );
        assert!(g.kv_used_blocks <= g.kv_total_blocks);
        assert!(engine.model().cache().touched_blocks(PoolKind::Sliding) <= sliding_pool);
    }
    rxs.iter()
        .map(|rx| {
            rx.try_iter()
                .filter_map(|o| match o {
                    Output::Token(t) => Some(t),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn engine_holds_a_ring_per_sequence_and_returns_every_block() {
    let w = weights();
    let stats = Arc::new(EngineStats::default());
    // 3 running sequences, 6 tokens a step: rings of floor((6 + 8 - 2) / 16) + 2 = 2 blocks.
    let mut m = model(&w, 3, 6, 200);
    let mut engine = Engine::new(&mut m, EngineConfig::default(), stats.clone());
    assert_eq!(engine.model().kv_layout().ring_blocks, 2);
    let req = |n: usize, salt: usize, new: usize| GenRequest {
        prompt: tokens(n, salt),
        sampling: SamplingParams::default(),
        max_new_tokens: new,
        stop_tokens: vec![],
    };
    let reqs = [
        req(40, 4, 120),
        req(9, 5, 60),
        req(70, 6, 90),
        req(3, 7, 30),
    ];
    let mut rxs = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        engine.submit(RequestId(i as u64), r.clone(), channel_sink(tx));
        rxs.push(rx);
    }
    // Cancel one after a few steps: its blocks come back too.
    for _ in 0..5 {
        engine.step();
    }
    engine.cancel(RequestId(1));
    let got = drive(&mut engine, &stats, &rxs);
    let g = stats.snapshot().gauges;
    assert_eq!(
        (g.kv_used_blocks, g.kv_sliding_used_blocks, g.running),
        (0, 0, 0)
    );
    // Each finished request equals its solo run (the longest one wraps its ring many times).
    for (i, r) in reqs.iter().enumerate().filter(|(i, _)| *i != 1) {
        let mut solo = model(&w, 1, 6, 200);
        let (want, _) = common::plain_decode(&mut solo, r);
        assert_eq!(got[i], want, "request {i}");
    }
}

#[test]
fn tables_that_miss_blocks_are_errors() {
    let w = weights();
    let mut m = model(&w, 2, 32, 64);
    assert_eq!(m.kv_layout().ring_blocks, 4);
    let toks = tokens(20, 8);
    let cases = [
        (
            BlockTable {
                full: vec![0],
                sliding: vec![0, 1],
            },
            "full table needs 2 blocks",
        ),
        (
            BlockTable {
                full: vec![0, 9],
                sliding: vec![0, 1],
            },
            "block 9 is outside the pool",
        ),
        (
            BlockTable {
                full: vec![0, 1],
                sliding: vec![0],
            },
            "sliding table needs 2 blocks",
        ),
        (
            BlockTable {
                full: vec![0, 1, 2, 3, 4],
                sliding: vec![0, 1],
            },
            "at most 4 / 4",
        ),
    ];
    for (table, msg) in cases {
        let e = m
            .forward(&Batch::single(&toks, 0, table))
            .unwrap_err()
            .to_string();
        assert!(e.contains(msg), "{e}");
    }
    let mut batch = Batch::single(&toks, 0, m.solo_table());
    batch.seqs[3] = 1;
    let e = m.forward(&batch).unwrap_err().to_string();
    assert!(
        e.contains("token of sequence 1 in a step of 1 block tables"),
        "{e}"
    );
}
