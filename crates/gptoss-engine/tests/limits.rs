//! Capacity bounds (issue 13): `--ctx 1e11`, `--kv-blocks 1e13` and `--max-seqs 1e9` once aborted the
//! process sizing buffers; every capacity is now checked against its bound first, and a CPU pool
//! declared at the largest size costs nothing until blocks are written.

use std::path::PathBuf;

use gptoss_engine::{Batch, Capacity, CpuBackend, Model, MAX_KV_BLOCKS};
use gptoss_formats::ModelWeights;

fn weights() -> ModelWeights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    gptoss_formats::load(&dir).unwrap().weights
}

fn cap(context_tokens: usize, slots: usize, kv_blocks: Option<usize>) -> Capacity {
    Capacity {
        max_batch_tokens: 64,
        max_logit_rows: slots.min(64),
        slots,
        context_tokens,
        kv_blocks,
    }
}

#[test]
fn capacities_past_their_bounds_are_errors_naming_the_flag() {
    let w = weights();
    for (c, flag) in [
        (cap(100_000_000_000, 1, None), "--ctx"),
        (cap(4096, 1_000_000_000, None), "--max-seqs"),
        (cap(4096, 4, Some(10_000_000_000_000)), "--kv-blocks"),
        (cap(1 << 20, 1024, None), "--kv-blocks"),
        (cap(0, 1, None), "--ctx"),
    ] {
        let e = Model::new(CpuBackend, &w, c).err().unwrap().to_string();
        assert!(e.contains(flag), "{flag}: {e}");
    }
}

#[test]
fn a_cpu_pool_at_the_largest_size_costs_nothing_until_used() {
    let w = weights();
    // 2^24 blocks per layer would be 800 MB of empty block records per layer if allocated up front.
    let mut m = Model::new(CpuBackend, &w, cap(4096, 4, Some(MAX_KV_BLOCKS))).unwrap();
    let toks = [1u32, 2, 3, 4, 5];
    let batch = Batch::single(&toks, 0, m.solo_table());
    m.forward(&batch).unwrap();
    assert!(m.logits(1).unwrap().iter().all(|x| x.is_finite()));
}
