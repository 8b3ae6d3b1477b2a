//! The op harness: each CUDA op against the CPU backend's op on random inputs of awkward shapes (T = 1,
//! partial tiles, rows not a multiple of 8, the sliding-window edge), for every stored weight format; paged
//! attention through scattered block tables for every KV type (f32, f16, bf16).
//! Needs a GPU: run by `scripts/gpu-check.sh` (natively and with `GPTOSS_CUDA_ARCH=sm_80`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gptoss_cuda::ops::linear::FAST_LINEAR_MIN_ROWS;
use gptoss_cuda::ops::moe::{choose_moe, ExpertTraits};
use gptoss_cuda::testing::{random_mxfp4_spread, random_tensor, Rng, TestFormat};
use gptoss_cuda::{CudaBackend, CudaOptions, LinearKernel, MoeKernel};
use gptoss_engine::backend::{AttnShape, MoeArgs, MoeShape, NormInput, QkvBufs, Rope};
use gptoss_engine::memory::KvPrecision;
use gptoss_engine::{Backend, Batch, BlockTable, Capacity, CpuBackend, KvLayout, SamplingParams};
use gptoss_formats::{Expert, Linear, ModelConfig, Window};

fn cuda(kv: KvPrecision) -> CudaBackend {
    let mut o = CudaOptions::from_env().unwrap();
    o.kv = kv;
    CudaBackend::new(&o).unwrap()
}

/// The backend of `--exact`: large steps keep the exact expert and linear kernels.
fn cuda_exact(kv: KvPrecision) -> CudaBackend {
    let mut o = CudaOptions::from_env().unwrap();
    o.kv = kv;
    o.exact = true;
    CudaBackend::new(&o).unwrap()
}

/// Bound on the f16 tensor-core attention's error against the CPU (q, k, v and the probabilities rounded
/// once to f16: 2^-12 relative each), relative to the largest output.
const FAST_ATTENTION_BOUND: f32 = 4e-3;

/// Bound on the fast linear tiles' error against an exact reference (x as two bf16 parts: 2^-17 relative
/// per element, and the tensor cores' accumulation over the whole K), relative to the largest output.
const FAST_LINEAR_BOUND: f32 = 1e-4;

/// max |a - b| / max |b| against an f64 reference.
fn rel_err_f64(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - y).abs()))
        / scale
}

/// max |a - b| / max |b| (b is the CPU reference).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "non-finite CUDA output");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn upload<B: Backend>(b: &B, rows: usize, cols: usize, data: &[f32]) -> B::Buf {
    // Buffers are filled by embedding rows 0..rows of an f32 table: the one generic way to write a buffer.
    let src = b
        .upload_embedding(&gptoss_formats::QuantTensor::from_f32(
            vec![rows, cols],
            data,
        ))
        .unwrap();
    let mut step = b
        .alloc_step(
            &cap(rows),
            &plain_layout(rows),
            &Rope {
                inv_freq: vec![1.0],
                concentration: 1.0,
            },
        )
        .unwrap();
    let tokens: Vec<u32> = (0..rows as u32).collect();
    b.begin_step(
        &mut step,
        &Batch {
            tokens,
            positions: vec![0; rows],
            seqs: vec![0; rows],
            logit_rows: vec![],
            tables: vec![],
        },
    )
    .unwrap();
    let mut out = b.alloc(rows, cols).unwrap();
    b.embed(&step, &src, &mut out).unwrap();
    out
}

fn cap(rows: usize) -> Capacity {
    Capacity {
        max_batch_tokens: rows,
        max_logit_rows: rows,
        slots: 2,
        context_tokens: 64,
        kv_blocks: None,
    }
}

/// Table widths for ops that read no cache.
fn plain_layout(rows: usize) -> KvLayout {
    KvLayout::new(&ModelConfig::gpt_oss_20b(), &cap(rows)).unwrap()
}

fn step_of<B: Backend>(b: &B, batch: &Batch) -> B::Step {
    let rows = batch.tokens.len().max(1);
    let mut s = b
        .alloc_step(
            &cap(rows),
            &plain_layout(rows),
            &Rope {
                inv_freq: vec![1.0],
                concentration: 1.0,
            },
        )
        .unwrap();
    b.begin_step(&mut s, batch).unwrap();
    s
}

fn plain_batch(rows: usize) -> Batch {
    Batch {
        tokens: vec![0; rows],
        positions: (0..rows as u32).collect(),
        seqs: vec![0; rows],
        logit_rows: vec![],
        tables: vec![],
    }
}

fn linear_out<B: Backend>(b: &B, lin: &Linear, x: &[f32], rows: usize) -> Vec<f32> {
    let (n_out, k) = (lin.weight.n_rows(), lin.weight.row_len());
    let w = b.upload_linear(lin).unwrap();
    let xb = upload(b, rows, k, x);
    let mut out = b.alloc(rows, n_out).unwrap();
    b.linear(&step_of(b, &plain_batch(rows)), &xb, &w, &mut out)
        .unwrap();
    b.read(&out, rows).unwrap()
}

#[test]
#[ignore = "needs GPU"]
fn linear_every_format_and_shape() {
    let g = cuda(KvPrecision::Bf16);
    let mut rng = Rng(11);
    for format in TestFormat::ALL {
        for (rows, n_out, k) in [(1, 37, 64), (5, 45, 96), (19, 64, 128), (9, 8, 45)] {
            if k % 32 != 0 && !matches!(format, TestFormat::Dense(_)) {
                continue;
            }
            let lin = Linear {
                weight: random_tensor(&mut rng, format, n_out, k, 0.2),
                bias: Some(rng.vec(n_out, 0.5)),
            };
            let x = rng.vec(rows * k, 1.0);
            let e = rel_err(
                &linear_out(&g, &lin, &x, rows),
                &linear_out(&CpuBackend, &lin, &x, rows),
            );
            println!("linear {format:?} T={rows} [{n_out}, {k}]: rel err {e:.2e}");
            assert!(
                e < 1e-5,
                "linear {format:?} T={rows} [{n_out}, {k}]: rel err {e}"
            );
        }
    }
}

/// Token counts that hit every edge of the split-K tiles (1, 2, 4, 8 rows) and of the tensor-core tiles
/// (5 rows and up with K splits, 32 or 64 per tile; from 65 the fast tiles unless exact).
const TILE_EDGES: [usize; 9] = [1, 2, 7, 16, 17, 63, 64, 65, 300];

/// Every linear path at every tile edge: exact (`--exact`) within 1e-5 of the CPU, and the default, whose
/// steps of 65 rows and more take the fast tiles (x as two bf16 parts), within [`FAST_LINEAR_BOUND`].
#[test]
#[ignore = "needs GPU"]
fn linear_tile_edges_every_path() {
    let g = cuda(KvPrecision::Bf16);
    let exact = cuda_exact(KvPrecision::Bf16);
    let mut rng = Rng(16);
    // bf16, Q8_0, MXFP4 and NF4 take the tensor cores from 5 rows; f32 stays on the split-K kernel.
    // 130 and 67 output rows leave partial 128-row tiles; k = 45 leaves a partial K step and unaligned rows.
    // k = 1000 and 1024 give the few tiles of up to 300 rows K splits (the last one short for 1000).
    let cases = [
        (TestFormat::Dense(gptoss_formats::DType::BF16), 130, 96),
        (TestFormat::Dense(gptoss_formats::DType::BF16), 67, 45),
        (TestFormat::Dense(gptoss_formats::DType::BF16), 130, 1000),
        (TestFormat::Mxfp4, 67, 1024),
        (TestFormat::Mxfp4, 130, 160),
        (TestFormat::BnbNf4, 67, 128),
        (TestFormat::Q8_0, 130, 96),
        (TestFormat::Q8_0, 67, 1024),
        (TestFormat::Dense(gptoss_formats::DType::F32), 67, 45),
    ];
    for (format, n_out, k) in cases {
        let lin = Linear {
            weight: random_tensor(&mut rng, format, n_out, k, 0.2),
            bias: Some(rng.vec(n_out, 0.5)),
        };
        for rows in TILE_EDGES {
            let x = rng.vec(rows * k, 1.0);
            let cpu = linear_out(&CpuBackend, &lin, &x, rows);
            let e = rel_err(&linear_out(&exact, &lin, &x, rows), &cpu);
            let fast_tiles = rows >= FAST_LINEAR_MIN_ROWS
                && !matches!(format, TestFormat::Dense(gptoss_formats::DType::F32));
            let ef = rel_err(&linear_out(&g, &lin, &x, rows), &cpu);
            println!("linear edges {format:?} T={rows} [{n_out}, {k}]: rel err exact {e:.2e}, default {ef:.2e}");
            assert!(
                e < 1e-5,
                "linear {format:?} T={rows} [{n_out}, {k}], exact: rel err {e}"
            );
            let bound = if fast_tiles { FAST_LINEAR_BOUND } else { 1e-5 };
            assert!(
                ef < bound,
                "linear {format:?} T={rows} [{n_out}, {k}]: rel err {ef}"
            );
        }
    }
}

/// A step of `rows` rows in a capacity of 64 (room for the pipelined tiles' x planes at any row count).
fn step_in_64<B: Backend>(b: &B, batch: &Batch) -> B::Step {
    let mut s = b
        .alloc_step(
            &cap(64),
            &plain_layout(64),
            &Rope {
                inv_freq: vec![1.0],
                concentration: 1.0,
            },
        )
        .unwrap();
    b.begin_step(&mut s, batch).unwrap();
    s
}

/// The pipelined tiles (`linear_pipe_<fmt>`: batched decode's bf16 and Q8_0 linears), forced from one row, against
/// the CPU within 1e-5: partial 128-row tiles, a K of three steps (shorter than the ring; with 67 rows the last
/// Q8_0 scale sits at an even index, the end of its buffer), 20b's K split across
/// blocks (2,880 and 4,096), x with a huge and a tiny 32-element block; `linear3`'s one set of x planes for parts
/// of different heights; the logits of selected rows (`x_rows`). Each case asserts that the pipelined path ran.
#[test]
#[ignore = "needs GPU"]
fn pipelined_tiles_every_edge() {
    use gptoss_cuda::ops::linear::{path_of, LinearPath};
    let pipe = {
        let mut o = CudaOptions::from_env().unwrap();
        o.linear_kernel = LinearKernel::Pipe;
        CudaBackend::new(&o).unwrap()
    };
    let is_pipe = |w: &<CudaBackend as Backend>::Linear, rows: usize| {
        let step = step_in_64(&pipe, &plain_batch(rows));
        matches!(
            path_of(pipe.device(), &step, w, rows),
            LinearPath::Pipe { .. }
        )
    };
    let mut rng = Rng(41);
    let x_of = |rng: &mut Rng, rows: usize, k: usize| {
        let mut x = rng.vec(rows * k, 1.0);
        x[..32].iter_mut().for_each(|v| *v *= 1e4);
        x[64..96].iter_mut().for_each(|v| *v *= 1e-4);
        x
    };
    for format in [
        TestFormat::Dense(gptoss_formats::DType::BF16),
        TestFormat::Q8_0,
    ] {
        for (n_out, k) in [(130, 96), (67, 96), (300, 2880), (67, 4096)] {
            let lin = Linear {
                weight: random_tensor(&mut rng, format, n_out, k, 0.2),
                bias: Some(rng.vec(n_out, 0.5)),
            };
            let w = pipe.upload_linear(&lin).unwrap();
            for rows in [1, 5, 8, 31, 32, 33, 64] {
                assert!(
                    is_pipe(&w, rows),
                    "{format:?} [{n_out}, {k}] T={rows} not pipelined"
                );
                let x = x_of(&mut rng, rows, k);
                let xb = upload(&pipe, rows, k, &x);
                let mut out = pipe.alloc(rows, n_out).unwrap();
                pipe.linear(&step_in_64(&pipe, &plain_batch(rows)), &xb, &w, &mut out)
                    .unwrap();
                let got = pipe.read(&out, rows).unwrap();
                let e = rel_err(&got, &linear_out(&CpuBackend, &lin, &x, rows));
                println!("pipelined linear {format:?} T={rows} [{n_out}, {k}]: rel err {e:.2e}");
                assert!(
                    e < 1e-5,
                    "pipelined linear {format:?} T={rows} [{n_out}, {k}]: {e}"
                );
            }
        }
        // q, k and v of 20 rows: one set of planes, three launches with different splits.
        let (rows, k) = (20, 2880);
        let lins: Vec<Linear> = [640, 128, 200]
            .map(|n_out| Linear {
                weight: random_tensor(&mut rng, format, n_out, k, 0.2),
                bias: Some(rng.vec(n_out, 0.5)),
            })
            .into();
        let x = x_of(&mut rng, rows, k);
        let e = worst_rel_err(
            &linear3_rows(&pipe, &lins, &x, rows),
            &linear3_rows(&CpuBackend, &lins, &x, rows),
        );
        println!("pipelined linear3 {format:?} T={rows}: rel err {e:.2e}");
        assert!(e < 1e-5, "pipelined linear3 {format:?}: {e}");
        // The logits of 9 of 40 rows (x_rows), from a weight of 1,000 rows.
        let head = Linear {
            weight: random_tensor(&mut rng, format, 1000, k, 0.2),
            bias: None,
        };
        let x = x_of(&mut rng, 40, k);
        let picked: Vec<u32> = vec![39, 0, 7, 8, 20, 21, 22, 3, 11];
        let e = rel_err(
            &logits_rows(&pipe, &head, &x, &picked),
            &logits_rows(&CpuBackend, &head, &x, &picked),
        );
        println!("pipelined logits {format:?}, 9 of 40 rows: rel err {e:.2e}");
        assert!(e < 1e-5, "pipelined logits {format:?}: {e}");
    }
}

/// `linear3` over `rows` rows of x.
fn linear3_rows<B: Backend>(b: &B, lins: &[Linear], x: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let w: Vec<B::Linear> = lins.iter().map(|l| b.upload_linear(l).unwrap()).collect();
    let xb = upload(b, rows, x.len() / rows, x);
    let mut out: Vec<B::Buf> = lins
        .iter()
        .map(|l| b.alloc(rows, l.weight.n_rows()).unwrap())
        .collect();
    let [o0, o1, o2] = &mut out[..] else {
        unreachable!("three linears")
    };
    let step = step_in_64(b, &plain_batch(rows));
    b.linear3(&step, &xb, [&w[0], &w[1], &w[2]], [o0, o1, o2])
        .unwrap();
    out.iter().map(|o| b.read(o, rows).unwrap()).collect()
}

/// The logits of x's rows `picked` (bias dropped), all in one step.
fn logits_rows<B: Backend>(b: &B, lin: &Linear, x: &[f32], picked: &[u32]) -> Vec<f32> {
    let k = lin.weight.row_len();
    let rows = x.len() / k;
    let head = b.upload_linear(lin).unwrap();
    let xb = upload(b, rows, k, x);
    let batch = Batch {
        logit_rows: picked.to_vec(),
        ..plain_batch(rows)
    };
    let mut l = b.alloc(picked.len(), lin.weight.n_rows()).unwrap();
    b.logits(&step_in_64(b, &batch), &xb, &head, &mut l)
        .unwrap();
    b.read(&l, picked.len()).unwrap()
}

/// The one-row GEMVs (`linear_warp_<fmt>` for bf16 / f16, `linear_dot_q8` for Q8_0) at full model widths:
/// K of several passes per lane (2,080, 4,096) and an unaligned K (2,883: bf16 / f16 only, Q8_0 needs whole
/// blocks); weight rows that leave a partial block (257, 300); `linear3`'s grouped launch with parts of
/// different heights; the logits of one selected row (`x_rows`); and x with a huge and a tiny block, which
/// the int8 planes of the Q8_0 kernel scale per 32 elements.
#[test]
#[ignore = "needs GPU"]
fn linear_one_row_kernels_full_width() {
    let g = cuda(KvPrecision::Bf16);
    let mut rng = Rng(29);
    let formats = [
        TestFormat::Dense(gptoss_formats::DType::BF16),
        TestFormat::Dense(gptoss_formats::DType::F16),
        TestFormat::Q8_0,
    ];
    for format in formats {
        for k in [2080, 4096, 2883] {
            if k % 32 != 0 && format == TestFormat::Q8_0 {
                continue;
            }
            let mut x = rng.vec(k, 1.0);
            x[..32].iter_mut().for_each(|v| *v *= 1e4);
            x[64..96].iter_mut().for_each(|v| *v *= 1e-4);
            let lins: Vec<Linear> = [257, 300, 256]
                .map(|n_out| Linear {
                    weight: random_tensor(&mut rng, format, n_out, k, 0.2),
                    bias: Some(rng.vec(n_out, 0.5)),
                })
                .into();
            for lin in &lins {
                let n_out = lin.weight.n_rows();
                let e = rel_err(
                    &linear_out(&g, lin, &x, 1),
                    &linear_out(&CpuBackend, lin, &x, 1),
                );
                println!("one-row linear {format:?} [{n_out}, {k}]: rel err {e:.2e}");
                assert!(e < 1e-5, "one-row linear {format:?} [{n_out}, {k}]: {e}");
            }
            let (gpu, cpu) = (
                linear3_out(&g, &lins, &x),
                linear3_out(&CpuBackend, &lins, &x),
            );
            for (i, (a, b)) in gpu.iter().zip(&cpu).enumerate() {
                let e = rel_err(a, b);
                println!("one-row linear3 {format:?} part {i}, K = {k}: rel err {e:.2e}");
                assert!(
                    e < 1e-5,
                    "one-row linear3 {format:?} part {i}, K = {k}: {e}"
                );
            }
            let e = rel_err(
                &logits_of_row(&g, &lins[0], &x),
                &logits_of_row(&CpuBackend, &lins[0], &x),
            );
            println!("one-row logits {format:?}, K = {k}: rel err {e:.2e}");
            assert!(e < 1e-5, "one-row logits {format:?}, K = {k}: {e}");
        }
    }
}

/// The norms that one-row GEMVs compute themselves (before q/k/v, before the router) give what the norm's
/// own launch gives, bit for bit: the projections, the routing and the experts after it, h and the residual;
/// with and without a residual to add, twice in a row (the ticket that picks the block writing the residual
/// back is reset); and within the CPU's precision of the CPU backend. (q/k/v fuse the norm for Q8_0 only; the
/// bf16 / f16 cases check that their fallback stays exact.)
#[test]
#[ignore = "needs GPU"]
fn fused_norms_match_their_own_launch_bit_for_bit() {
    let backend = |fuse_norm| {
        let mut o = CudaOptions::from_env().unwrap();
        o.fuse_norm = fuse_norm;
        CudaBackend::new(&o).unwrap()
    };
    let (fused, plain) = (backend(true), backend(false));
    let mut rng = Rng(31);
    let hidden = 2880;
    let mut x = rng.vec(hidden, 1.0);
    x[..32].iter_mut().for_each(|v| *v *= 1e3);
    let y = rng.vec(hidden, 1.0);
    let weight: Vec<f32> = rng.vec(hidden, 0.5).iter().map(|v| 1.0 + v).collect();
    let formats = [
        TestFormat::Dense(gptoss_formats::DType::BF16),
        TestFormat::Dense(gptoss_formats::DType::F16),
        TestFormat::Q8_0,
    ];
    for format in formats {
        let lins = [4096, 512, 512].map(|n_out| Linear {
            weight: random_tensor(&mut rng, format, n_out, hidden, 0.2),
            bias: Some(rng.vec(n_out, 0.5)),
        });
        for add in [true, false] {
            let input = NormCase {
                x: &x,
                y: add.then_some(&y[..]),
                weight: &weight,
            };
            let (a, b) = (
                norm_qkv_run(&fused, &lins, &input),
                norm_qkv_run(&plain, &lins, &input),
            );
            assert_same_bits(&a, &b, &format!("norm + q/k/v {format:?}, add {add}"));
            let e = worst_rel_err(&a, &norm_qkv_run(&CpuBackend, &lins, &input));
            println!(
                "fused norm + q/k/v {format:?}, add {add}: bit-identical, rel err vs CPU {e:.2e}"
            );
            assert!(e < 1e-5, "fused norm + q/k/v {format:?} vs CPU: {e}");
        }
    }
    let ex = experts(&mut rng, TestFormat::Mxfp4, 32, hidden, 64);
    for format in [
        TestFormat::Dense(gptoss_formats::DType::F32),
        TestFormat::Dense(gptoss_formats::DType::BF16),
    ] {
        let router = Linear {
            weight: random_tensor(&mut rng, format, 32, hidden, 0.5),
            bias: Some(rng.vec(32, 0.5)),
        };
        let input = NormCase {
            x: &x,
            y: Some(&y),
            weight: &weight,
        };
        let ((a, fused_ready), (b, plain_ready)) = (
            norm_route_run(&fused, &router, &ex, &input),
            norm_route_run(&plain, &router, &ex, &input),
        );
        // The fused router left the one-token step's top-k to gate_up (the routing appears only once the
        // experts ran); the plain one routed in a launch of its own.
        assert!(
            !fused_ready && plain_ready,
            "norm + router {format:?}: top-k deferred {}",
            !fused_ready
        );
        assert_same_bits(&a, &b, &format!("norm + router {format:?}"));
        let e = worst_rel_err(&a, &norm_route_run(&CpuBackend, &router, &ex, &input).0);
        println!(
            "fused norm + router {format:?} (top-k in gate_up, x split by the router): bit-identical, rel err vs CPU {e:.2e}"
        );
        assert!(e < 1e-5, "fused norm + router {format:?} vs CPU: {e}");
    }
}

/// A one-token route that left its top-k to gate_up, followed by a MoE of another input (so not the gate_up the
/// route planned for): the MoE first selects the top-k from the router's logits, and routing and output are
/// those of a route that selected it itself.
#[test]
#[ignore = "needs GPU"]
fn deferred_topk_is_completed_for_another_input() {
    let mut rng = Rng(41);
    let hidden = 2880;
    let (x, y) = (rng.vec(hidden, 1.0), rng.vec(hidden, 1.0));
    let weight: Vec<f32> = rng.vec(hidden, 0.5).iter().map(|v| 1.0 + v).collect();
    let ex = experts(&mut rng, TestFormat::Mxfp4, 32, hidden, 64);
    let router = Linear {
        weight: random_tensor(
            &mut rng,
            TestFormat::Dense(gptoss_formats::DType::BF16),
            32,
            hidden,
            0.5,
        ),
        bias: Some(rng.vec(32, 0.5)),
    };
    let input = NormCase {
        x: &x,
        y: Some(&y),
        weight: &weight,
    };
    let top_k = 4;
    let run = |moe_follows: bool| {
        let b = cuda(KvPrecision::F32);
        let up = b.upload_experts(&ex).unwrap();
        let r = b.upload_linear(&router).unwrap();
        let mut routing = b.alloc_routing(1, top_k).unwrap();
        let mut bufs = input.upload(&b);
        let other = upload(&b, 1, hidden, &y);
        let mut out = b.alloc(1, hidden).unwrap();
        let step = step_of(&b, &plain_batch(1));
        b.norm_route(&step, bufs.input(), &r, (top_k, moe_follows), &mut routing)
            .unwrap();
        let before = b.read_routing(&routing, 1, top_k).unwrap();
        let args = MoeArgs {
            h: &other,
            experts: &up,
            routing: &routing,
            shape: MoeShape {
                top_k,
                swiglu_alpha: 1.702,
                swiglu_limit: 7.0,
            },
        };
        b.moe(&step, args, &mut out).unwrap();
        let after = b.read_routing(&routing, 1, top_k).unwrap();
        (before == after, after, b.read(&out, 1).unwrap())
    };
    let ((deferred_ready, deferred, deferred_out), (plain_ready, plain, plain_out)) =
        (run(true), run(false));
    assert!(
        !deferred_ready && plain_ready,
        "the route left its top-k: {}",
        !deferred_ready
    );
    assert_eq!(deferred, plain, "routing completed by the MoE");
    let same = deferred_out
        .iter()
        .zip(&plain_out)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    println!("deferred top-k completed for another input: routing {deferred:?}, output bit-identical {same}");
    assert!(same, "MoE output");
}

/// One row's norm input: the residual, the output to add into it (if any), the norm's weight.
struct NormCase<'a> {
    x: &'a [f32],
    y: Option<&'a [f32]>,
    weight: &'a [f32],
}

/// A [`NormCase`] on a backend, with the h it writes.
struct NormBufs<B: Backend> {
    x: B::Buf,
    y: Option<B::Buf>,
    weight: B::Vector,
    h: B::Buf,
}

impl NormCase<'_> {
    fn upload<B: Backend>(&self, b: &B) -> NormBufs<B> {
        let n = self.x.len();
        NormBufs {
            x: upload(b, 1, n, self.x),
            y: self.y.map(|y| upload(b, 1, n, y)),
            weight: b.upload_vector(self.weight).unwrap(),
            h: b.alloc(1, n).unwrap(),
        }
    }
}

impl<B: Backend> NormBufs<B> {
    fn input(&mut self) -> NormInput<'_, B> {
        NormInput {
            x: &mut self.x,
            y: self.y.as_ref(),
            weight: &self.weight,
            eps: 1e-5,
            h: &mut self.h,
        }
    }
}

/// The largest [`rel_err`] of the outputs `a` against the CPU's `cpu`.
fn worst_rel_err(a: &[Vec<f32>], cpu: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(cpu)
        .map(|(g, c)| rel_err(g, c))
        .fold(0f32, f32::max)
}

fn assert_same_bits(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        let same = a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what}: output {i} differs from the unfused launch");
    }
}

/// `norm_linear3` twice on one row (the second on the residual the first wrote): q, k, v, h and x after each.
fn norm_qkv_run<B: Backend>(b: &B, lins: &[Linear; 3], c: &NormCase<'_>) -> Vec<Vec<f32>> {
    let w: Vec<B::Linear> = lins.iter().map(|l| b.upload_linear(l).unwrap()).collect();
    let mut bufs = c.upload(b);
    let mut out: Vec<B::Buf> = lins
        .iter()
        .map(|l| b.alloc(1, l.weight.n_rows()).unwrap())
        .collect();
    let step = step_of(b, &plain_batch(1));
    let mut got = Vec::new();
    for _ in 0..2 {
        let [o0, o1, o2] = &mut out[..] else {
            unreachable!("three linears")
        };
        b.norm_linear3(&step, bufs.input(), [&w[0], &w[1], &w[2]], [o0, o1, o2])
            .unwrap();
        got.extend(out.iter().map(|o| b.read(o, 1).unwrap()));
        got.push(b.read(&bufs.h, 1).unwrap());
        got.push(b.read(&bufs.x, 1).unwrap());
    }
    got
}

/// A plain route and MoE of the row first (which sizes the MoE scratch, as a model's first step does), then
/// `norm_route` + MoE twice: the routing's choices and weights, the MoE output, h and x after each.
/// The outputs of two norm + route + moe rounds (after a plain route + moe), and whether the routing of the
/// first round could be read before its moe ran (false where the backend left the top-k to the experts).
fn norm_route_run<B: Backend>(
    b: &B,
    router: &Linear,
    ex: &[Expert],
    c: &NormCase<'_>,
) -> (Vec<Vec<f32>>, bool) {
    let n = c.x.len();
    let top_k = 4;
    let up = b.upload_experts(ex).unwrap();
    let r = b.upload_linear(router).unwrap();
    let mut routing = b.alloc_routing(1, top_k).unwrap();
    let mut bufs = c.upload(b);
    let mut out = b.alloc(1, n).unwrap();
    let step = step_of(b, &plain_batch(1));
    let shape = MoeShape {
        top_k,
        swiglu_alpha: 1.702,
        swiglu_limit: 7.0,
    };
    let moe = |h: &B::Buf, routing: &B::Routing, out: &mut B::Buf| {
        let args = MoeArgs {
            h,
            experts: &up,
            routing,
            shape,
        };
        b.moe(&step, args, out).unwrap();
    };
    b.route(&step, &bufs.x, &r, top_k, &mut routing).unwrap();
    moe(&bufs.x, &routing, &mut out);
    let mut got = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..2 {
        b.norm_route(&step, bufs.input(), &r, (top_k, true), &mut routing)
            .unwrap();
        let before = b.read_routing(&routing, 1, top_k).unwrap();
        moe(&bufs.h, &routing, &mut out);
        let choices = b.read_routing(&routing, 1, top_k).unwrap();
        ready.push(before == choices);
        got.push(choices.iter().map(|&(e, _)| e as f32).collect());
        got.push(choices.iter().map(|&(_, w)| w).collect());
        got.push(b.read(&out, 1).unwrap());
        got.push(b.read(&bufs.h, 1).unwrap());
        got.push(b.read(&bufs.x, 1).unwrap());
    }
    (got, ready[0])
}

/// `linear3` of one x row through three linears.
fn linear3_out<B: Backend>(b: &B, lins: &[Linear], x: &[f32]) -> Vec<Vec<f32>> {
    let w: Vec<B::Linear> = lins.iter().map(|l| b.upload_linear(l).unwrap()).collect();
    let xb = upload(b, 1, x.len(), x);
    let mut out: Vec<B::Buf> = lins
        .iter()
        .map(|l| b.alloc(1, l.weight.n_rows()).unwrap())
        .collect();
    let [o0, o1, o2] = &mut out[..] else {
        unreachable!("three linears")
    };
    b.linear3(
        &step_of(b, &plain_batch(1)),
        &xb,
        [&w[0], &w[1], &w[2]],
        [o0, o1, o2],
    )
    .unwrap();
    out.iter().map(|o| b.read(o, 1).unwrap()).collect()
}

/// The logits of row 2 of three x rows (row 2 is `x`; rows 0 and 1 are its negation), bias dropped.
fn logits_of_row<B: Backend>(b: &B, lin: &Linear, x: &[f32]) -> Vec<f32> {
    let head = b
        .upload_linear(&Linear {
            weight: lin.weight.clone(),
            bias: None,
        })
        .unwrap();
    let neg: Vec<f32> = x.iter().map(|v| -v).collect();
    let rows = [neg.as_slice(), neg.as_slice(), x].concat();
    let xb = upload(b, 3, x.len(), &rows);
    let batch = Batch {
        logit_rows: vec![2],
        ..plain_batch(3)
    };
    let mut l = b.alloc(1, lin.weight.n_rows()).unwrap();
    b.logits(&step_of(b, &batch), &xb, &head, &mut l).unwrap();
    b.read(&l, 1).unwrap()
}

/// The tensor-core path keeps every bit of an f32 activation: with a bf16 permutation matrix as the weight,
/// each output is one product `x · 1.0`, so it must come back as `x` itself (to one rounding of the f32
/// accumulator). Splitting x into two bf16 parts kept 16 mantissa bits (errors up to 2^-18 ≈ 3.8e-6), which
/// flipped a router near-tie of a full-size random 20b (issue 16); three parts keep 24.
#[test]
#[ignore = "needs GPU"]
fn tensor_core_products_keep_f32_precision() {
    let g = cuda(KvPrecision::F32);
    let mut rng = Rng(23);
    let (n, rows) = (160, 64);
    let perm: Vec<usize> = (0..n).map(|j| (j * 37 + 11) % n).collect();
    let mut bytes = vec![0u8; n * n * 2];
    for (j, &src) in perm.iter().enumerate() {
        let at = (j * n + src) * 2;
        bytes[at..at + 2].copy_from_slice(&half::bf16::ONE.to_le_bytes());
    }
    let lin = Linear {
        weight: gptoss_formats::QuantTensor {
            shape: vec![n, n],
            format: gptoss_formats::TensorFormat::Dense(gptoss_formats::DType::BF16),
            data: gptoss_formats::Storage::owned(bytes),
        },
        bias: None,
    };
    // Values with full 24-bit mantissas over several binades.
    let x: Vec<f32> = (0..rows * n)
        .map(|_| rng.uniform(1.0) * (1.0 + 1.0 / 3.0) * 2f32.powi((rng.uniform(8.0)) as i32))
        .collect();
    let out = linear_out(&g, &lin, &x, rows);
    let worst = (0..rows * n)
        .map(|i| {
            let (t, j) = (i / n, i % n);
            let want = x[t * n + perm[j]];
            ((out[i] - want) / want.abs().max(f32::MIN_POSITIVE)).abs()
        })
        .fold(0f32, f32::max);
    println!("tensor-core linear, permutation weight, T={rows}: worst rel err {worst:.2e}");
    assert!(worst <= 2.0 * f32::EPSILON, "rel err {worst:.2e}");
}

/// Long dot products on the tensor cores stay at f32 accuracy: a linear of 20b's width (K = 2880) against
/// an f64 reference, and an MoE of that width against the CPU backend. The tensor cores truncate each
/// product into their accumulator, so one running MMA chain over K = 2880 drifted by ~1e-5 relative and
/// flipped a router near-tie of a full-size random 20b (issue 16); partial sums per K step keep it at 1e-7.
/// Prompt-sized steps (300 rows) on the exact tiles likewise; on the default fast tiles (x as two bf16 parts,
/// the whole K in the tensor cores) within [`FAST_LINEAR_BOUND`], and not the exact tiles' output.
#[test]
#[ignore = "needs GPU"]
fn tensor_core_long_dot_products_match_f64() {
    let g = cuda(KvPrecision::F32);
    let exact = cuda_exact(KvPrecision::F32);
    let mut rng = Rng(29);
    let (n_out, k) = (256, 2880);
    for format in [
        TestFormat::Dense(gptoss_formats::DType::BF16),
        TestFormat::Mxfp4,
        TestFormat::Q8_0,
    ] {
        let lin = Linear {
            weight: random_tensor(&mut rng, format, n_out, k, 1.0 / (k as f32).sqrt()),
            bias: None,
        };
        let dense = lin.weight.to_f32_vec();
        for rows in [64, 300] {
            let x = rng.vec(rows * k, 1.0);
            let want: Vec<f64> = (0..rows * n_out)
                .map(|i| {
                    let (t, j) = (i / n_out, i % n_out);
                    (0..k)
                        .map(|c| x[t * k + c] as f64 * dense[j * k + c] as f64)
                        .sum()
                })
                .collect();
            let (exact_out, default_out) = (
                linear_out(&exact, &lin, &x, rows),
                linear_out(&g, &lin, &x, rows),
            );
            let err = rel_err_f64(&exact_out, &want);
            let err_default = rel_err_f64(&default_out, &want);
            println!(
                "tensor-core linear {format:?} T={rows} [{n_out}, {k}] vs f64: rel err exact {err:.2e}, default {err_default:.2e}"
            );
            assert!(
                err < 1e-6,
                "linear {format:?} T={rows}, exact: rel err {err:.2e}"
            );
            if rows >= FAST_LINEAR_MIN_ROWS {
                assert!(
                    err_default < FAST_LINEAR_BOUND as f64 && default_out != exact_out,
                    "linear {format:?} T={rows}, fast tiles: rel err {err_default:.2e}"
                );
            } else {
                assert!(
                    err_default < 1e-6,
                    "linear {format:?} T={rows}: rel err {err_default:.2e}"
                );
            }
        }
    }
    // An MoE of 20b's hidden width: 64 tokens, top-2 of 4 experts, 32 pairs per expert (tensor-core tiles).
    let (rows, n_exp, hidden, inter, top_k) = (64, 4, 2880, 256, 2);
    let ex = experts(&mut rng, TestFormat::Mxfp4, n_exp, hidden, inter);
    let router = bf16_router(&mut rng, (n_exp, hidden), 0.05, None);
    let h = rng.vec(rows * hidden, 1.0);
    // The exact expert kernels (the default for 32 pairs per expert is the f16-activation GEMM, checked
    // against f64 in mxfp4_experts_every_kernel_match_f64).
    let exact = cuda_exact(KvPrecision::F32);
    let e = moe_vs_cpu(&exact, &router, &ex, &h, (rows, top_k));
    println!("tensor-core moe Mxfp4 T={rows} hidden {hidden}: rel err vs CPU {e:.2e}");
    assert!(e < 2e-6, "moe: rel err {e:.2e}");
}

/// The MXFP4 experts at 20b's widths through every expert kernel (the automatic choice, exact and fast, and each
/// one forced: split-K GEMV, bf16 tensor-core tiles, f16 tensor-core tiles of 8 and 16 pairs, f16 GEMM tiles of
/// 32 and 64 pairs, the f16-activation GEMM), against an f64 reference of the routing the first run chose
/// (every later run must choose the same), from one pair per expert (decode) to 50 on average (several GEMM
/// tiles per expert, the last one partial; down's 2,880 rows end in a partial 128-row tile). The exact kernels
/// agree to 1e-6; the f16-activation GEMM (x and act rounded to f16: 2^-11 relative each) to 2e-3.
#[test]
#[ignore = "needs GPU"]
fn mxfp4_experts_every_kernel_match_f64() {
    let mut rng = Rng(31);
    let (n_exp, hidden, inter, top_k) = (8, 2880, 2880, 4);
    let ex = experts(&mut rng, TestFormat::Mxfp4, n_exp, hidden, inter);
    let dense: Vec<[Vec<f32>; 2]> = ex
        .iter()
        .map(|e| [e.gate_up.weight.to_f32_vec(), e.down.weight.to_f32_vec()])
        .collect();
    let router = bf16_router(&mut rng, (n_exp, hidden), 0.05, None);
    for rows in [1usize, 2, 7, 32, 100] {
        let h = rng.vec(rows * hidden, 1.0);
        let mut reference: Option<Reference> = None;
        for (kernel, exact) in [
            (MoeKernel::Auto, true),
            (MoeKernel::Auto, false),
            (MoeKernel::Split, false),
            (MoeKernel::Mma, false),
            (MoeKernel::Fp4P8, false),
            (MoeKernel::Fp4P16, false),
            (MoeKernel::Fp4G32, false),
            (MoeKernel::Fp4G64, false),
            (MoeKernel::Fp4H16, false),
            (MoeKernel::Fp4H64, false),
            (MoeKernel::Fp4Dot, false),
        ] {
            let mut o = CudaOptions::from_env().unwrap();
            o.kv = KvPrecision::F32;
            o.moe_kernel = kernel;
            o.exact = exact;
            let g = CudaBackend::new(&o).unwrap();
            // Auto takes the f16-activation GEMM beyond 8 pairs per expert unless exact.
            let fast = matches!(kernel, MoeKernel::Fp4H16 | MoeKernel::Fp4H64)
                || (kernel == MoeKernel::Auto
                    && !exact
                    && default_mxfp4_is_fast(rows * top_k, n_exp));
            let bound = if fast { 2e-3 } else { 1e-6 };
            let (got, routing) = moe_run_routed(&g, &router, &ex, &h, rows, top_k);
            // The experts of every kernel are checked on the same routing (the router is not under test).
            let (want, first) = reference.get_or_insert_with(|| {
                (
                    moe_f64(&ex, &dense, &routing, &h, rows, top_k),
                    routing.clone(),
                )
            });
            assert_eq!(
                &routing, first,
                "{kernel:?} T={rows}: routing differs between runs"
            );
            let err = rel_err_f64(&got, want);
            println!(
                "mxfp4 experts {kernel:?} exact={exact} T={rows} top-{top_k} of {n_exp}: rel err vs f64 {err:.2e}"
            );
            assert!(
                err < bound,
                "{kernel:?} exact={exact} T={rows}: rel err {err:.2e}"
            );
        }
    }
}

/// The f16-activation GEMM's tiles of 128 pairs (long prompts): 200 pairs on each of two experts make a full
/// tile (the 128-pair code) and one of 72 (the same code, partly empty); 40 pairs an expert the 64-pair code.
/// Against f64 within the fast bound, as the 64-pair tiles, and the exact kernel on the same routing.
/// Runs `ex` on each forced kernel over the routing of `h` and checks it against the f64 result of the first
/// run's routing (every run must route alike) within the kernel's bound; `what` labels the printed errors.
fn experts_within_bounds(
    ex: &[Expert],
    router: &Linear,
    h: &[f32],
    (rows, top_k): (usize, usize),
    kernels: &[(MoeKernel, f64)],
    what: &str,
) {
    let dense: Vec<[Vec<f32>; 2]> = ex
        .iter()
        .map(|e| [e.gate_up.weight.to_f32_vec(), e.down.weight.to_f32_vec()])
        .collect();
    let mut reference: Option<Reference> = None;
    for &(kernel, bound) in kernels {
        let mut o = CudaOptions::from_env().unwrap();
        o.kv = KvPrecision::F32;
        o.moe_kernel = kernel;
        let g = CudaBackend::new(&o).unwrap();
        let (got, routing) = moe_run_routed(&g, router, ex, h, rows, top_k);
        let (want, first) = reference.get_or_insert_with(|| {
            (
                moe_f64(ex, &dense, &routing, h, rows, top_k),
                routing.clone(),
            )
        });
        assert_eq!(
            &routing, first,
            "{what} {kernel:?}: routing differs between runs"
        );
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{what} {kernel:?}: non-finite output"
        );
        let err = rel_err_f64(&got, want);
        println!("{what}: {kernel:?} rel err vs f64 {err:.2e}");
        assert!(err < bound, "{what} {kernel:?}: rel err {err:.2e}");
    }
}

/// The 16-pair tiles on widths whose rows hold an odd number of scale blocks (160 and 96: the scale bytes
/// one at a time, not as the 16-bit pairs of the 20b shapes) and whose K ends inside a step of 64, at up to 8
/// and at 9–16 pairs an expert.
#[test]
#[ignore = "needs GPU"]
fn fast_experts_16_pair_tiles_odd_widths() {
    let mut rng = Rng(43);
    let (n_exp, hidden, inter, top_k) = (4, 160, 96, 2);
    let ex = experts(&mut rng, TestFormat::Mxfp4, n_exp, hidden, inter);
    let router = bf16_router(&mut rng, (n_exp, hidden), 0.05, None);
    for rows in [5usize, 24] {
        let h = rng.vec(rows * hidden, 1.0);
        let kernels = [(MoeKernel::Fp4G64, 1e-6), (MoeKernel::Fp4H16, 2e-3)];
        let what = format!("mxfp4 experts T={rows} top-{top_k} of {n_exp}");
        experts_within_bounds(&ex, &router, &h, (rows, top_k), &kernels, &what);
    }
}

#[test]
#[ignore = "needs GPU"]
fn fast_experts_128_pair_tiles() {
    let mut rng = Rng(41);
    let (n_exp, hidden, inter, top_k) = (2, 256, 320, 2);
    let ex = experts(&mut rng, TestFormat::Mxfp4, n_exp, hidden, inter);
    let router = bf16_router(&mut rng, (n_exp, hidden), 0.05, None);
    for rows in [200usize, 40] {
        let h = rng.vec(rows * hidden, 1.0);
        let kernels = [
            (MoeKernel::Fp4G64, 1e-6),
            (MoeKernel::Fp4H64, 2e-3),
            (MoeKernel::Fp4H128, 2e-3),
        ];
        let what = format!("mxfp4 experts T={rows} top-{top_k} of {n_exp}");
        experts_within_bounds(&ex, &router, &h, (rows, top_k), &kernels, &what);
    }
}

/// The f16-activation GEMM folds each E8M0 scale into f16 relative to the largest of its 128-row tile: with
/// scales spread over 2^40 (blocks more than 2^29 below the largest round to f16 subnormals or zero) and a
/// tile's largest scale far from 1 (2^-12 and 2^+9), it stays within its bound of the f64 result, and the
/// exact kernel on the same weights within its own.
#[test]
#[ignore = "needs GPU"]
fn fast_experts_fold_spread_scales() {
    let mut rng = Rng(37);
    let (n_exp, hidden, inter, top_k, rows) = (8, 2880, 2880, 4, 100);
    let router = bf16_router(&mut rng, (n_exp, hidden), 0.05, None);
    for top in [2f32.powi(-12), 2f32.powi(9)] {
        let ex: Vec<Expert> = (0..n_exp)
            .map(|_| Expert {
                gate_up: Linear {
                    weight: random_mxfp4_spread(&mut rng, 2 * inter, hidden, top, 40),
                    bias: Some(rng.vec(2 * inter, 0.5)),
                },
                down: Linear {
                    weight: random_mxfp4_spread(&mut rng, hidden, inter, top, 40),
                    bias: Some(rng.vec(hidden, 0.5)),
                },
            })
            .collect();
        // x scaled so that gate_up's outputs are of order one whatever the weights' scale.
        let h = rng.vec(rows * hidden, 0.05 / top);
        let kernels = [
            (MoeKernel::Fp4G64, 1e-6),
            (MoeKernel::Fp4H16, 2e-3),
            (MoeKernel::Fp4H64, 2e-3),
        ];
        let what = format!("spread scales, top 2^{}", top.log2());
        experts_within_bounds(&ex, &router, &h, (rows, top_k), &kernels, &what);
    }
}

/// Choices naming no expert (the hot-expert cache's misses) are skipped by every kernel, and a token left with
/// none gets zeros: including the dot kernels, which read the routing directly and whose token-major down
/// combines by itself.
#[test]
#[ignore = "needs GPU"]
fn moe_skips_missing_experts_in_every_kernel() {
    use gptoss_engine::backend::NO_EXPERT;
    let mut rng = Rng(41);
    let (n_exp, hidden, inter, top_k) = (8, 160, 96, 4);
    let ex = experts(&mut rng, TestFormat::Mxfp4, n_exp, hidden, inter);
    let choices: Vec<(u32, f32)> = vec![
        (2, 0.4),
        (NO_EXPERT, 0.3),
        (5, 0.2),
        (NO_EXPERT, 0.1),
        (NO_EXPERT, 0.5),
        (NO_EXPERT, 0.2),
        (NO_EXPERT, 0.2),
        (NO_EXPERT, 0.1),
        (7, 0.25),
        (0, 0.25),
        (3, 0.3),
        (1, 0.2),
    ];
    let rows = choices.len() / top_k;
    let h = rng.vec(rows * hidden, 1.0);
    let want = moe_written(&CpuBackend, &ex, &h, &choices, (rows, top_k));
    assert!(want[hidden..2 * hidden].iter().all(|v| *v == 0.0));
    for kernel in [
        MoeKernel::Auto,
        MoeKernel::Fp4Dot,
        MoeKernel::Fp4P8,
        MoeKernel::Split,
    ] {
        let mut o = CudaOptions::from_env().unwrap();
        o.kv = KvPrecision::F32;
        o.moe_kernel = kernel;
        let g = CudaBackend::new(&o).unwrap();
        // Twice: a second MoE on the same scratch.
        for round in 0..2 {
            let got = moe_written(&g, &ex, &h, &choices, (rows, top_k));
            let e = rel_err(&got, &want);
            println!("moe with missing experts {kernel:?} round {round}: rel err {e:.2e}");
            assert!(e < 1e-5, "{kernel:?} round {round}: rel err {e:.2e}");
            assert!(
                got[hidden..2 * hidden].iter().all(|v| *v == 0.0),
                "{kernel:?}: the token without experts is not zero"
            );
        }
    }
}

/// The MoE of `ex` on `h` for choices written directly (no router).
fn moe_written<B: Backend>(
    b: &B,
    ex: &[Expert],
    h: &[f32],
    choices: &[(u32, f32)],
    (rows, top_k): (usize, usize),
) -> Vec<f32> {
    let hidden = ex[0].gate_up.weight.row_len();
    let up = b.upload_experts(ex).unwrap();
    let mut routing = b.alloc_routing(rows, top_k).unwrap();
    b.write_routing(&mut routing, rows, top_k, choices).unwrap();
    let hb = upload(b, rows, hidden, h);
    let step = step_of(b, &plain_batch(rows));
    // Poisoned, so that a row the MoE leaves unwritten shows.
    let mut out = upload(b, rows, hidden, &vec![f32::NAN; rows * hidden]);
    let shape = MoeShape {
        top_k,
        swiglu_alpha: 1.702,
        swiglu_limit: 7.0,
    };
    let args = MoeArgs {
        h: &hb,
        experts: &up,
        routing: &routing,
        shape,
    };
    b.moe(&step, args, &mut out).unwrap();
    b.read(&out, rows).unwrap()
}

/// An f64 MoE output and the routing it was computed for.
type Reference = (Vec<f64>, Vec<(u32, f32)>);

/// The experts of `moe_run` in f64 for the given `(expert, weight)` choices.
fn moe_f64(
    ex: &[Expert],
    dense: &[[Vec<f32>; 2]],
    routing: &[(u32, f32)],
    h: &[f32],
    rows: usize,
    top_k: usize,
) -> Vec<f64> {
    let hidden = ex[0].gate_up.weight.row_len();
    let inter = ex[0].down.weight.row_len();
    let bias = |l: &Linear, j: usize| l.bias.as_ref().map_or(0.0, |b| b[j] as f64);
    let mut out = vec![0f64; rows * hidden];
    for t in 0..rows {
        let x = &h[t * hidden..(t + 1) * hidden];
        let mut picks: Vec<(u32, f32)> = routing[t * top_k..(t + 1) * top_k].to_vec();
        picks.sort_by_key(|p| p.0);
        for (e, w) in picks {
            let (gu, dn) = (&dense[e as usize][0], &dense[e as usize][1]);
            let dot = |m: &[f32], row: usize, v: &[f64]| -> f64 {
                v.iter()
                    .enumerate()
                    .map(|(c, x)| m[row * v.len() + c] as f64 * x)
                    .sum()
            };
            let xd: Vec<f64> = x.iter().map(|v| *v as f64).collect();
            let act: Vec<f64> = (0..inter)
                .map(|i| {
                    let g = (dot(gu, 2 * i, &xd) + bias(&ex[e as usize].gate_up, 2 * i)).min(7.0);
                    let u = (dot(gu, 2 * i + 1, &xd) + bias(&ex[e as usize].gate_up, 2 * i + 1))
                        .clamp(-7.0, 7.0);
                    g / (1.0 + (-1.702 * g).exp()) * (u + 1.0)
                })
                .collect();
            for j in 0..hidden {
                out[t * hidden + j] +=
                    w as f64 * (dot(dn, j, &act) + bias(&ex[e as usize].down, j));
            }
        }
    }
    out
}

/// Whether MXFP4 experts of `pairs` pairs over `n_exp` experts take the f16-activation GEMM by default.
fn default_mxfp4_is_fast(pairs: usize, n_exp: usize) -> bool {
    let traits = ExpertTraits {
        fp4: true,
        mma: false,
    };
    choose_moe(pairs, n_exp, traits, MoeKernel::Auto, false).rounds_x_to_f16()
}

#[test]
#[ignore = "needs GPU"]
fn moe_tile_edges_every_path() {
    let g = cuda(KvPrecision::Bf16);
    let exact = cuda_exact(KvPrecision::Bf16);
    let mut rng = Rng(17);
    // 160 hidden and 2 × 96 gate_up rows leave partial 128-row tiles; with top_k 2 of 6 experts, 64 tokens and
    // more (128 pairs) take the tensor cores for MXFP4, bf16 and NF4, in tiles of 64 pairs per expert.
    let (n_exp, hidden, inter, top_k) = (6, 160, 96, 2);
    for format in [
        TestFormat::Mxfp4,
        TestFormat::Dense(gptoss_formats::DType::BF16),
        TestFormat::BnbNf4,
        TestFormat::Q8_0,
    ] {
        let ex = experts(&mut rng, format, n_exp, hidden, inter);
        let router = bf16_router(&mut rng, (n_exp, hidden), 1.0, Some(0.5));
        for rows in TILE_EDGES {
            let h = rng.vec(rows * hidden, 1.0);
            let e = moe_vs_cpu(&exact, &router, &ex, &h, (rows, top_k));
            println!("moe edges {format:?} T={rows} top_k={top_k}, exact: rel err {e:.2e}");
            assert!(e < 1e-5, "moe {format:?} T={rows}, exact: {e}");
            // By default MXFP4 past the dot kernels takes the f16-activation GEMM (K of 160 and 96: a last
            // 64-element step half past K).
            let fast = format == TestFormat::Mxfp4 && default_mxfp4_is_fast(rows * top_k, n_exp);
            let e = moe_vs_cpu(&g, &router, &ex, &h, (rows, top_k));
            println!("moe edges {format:?} T={rows} top_k={top_k}, default: rel err {e:.2e}");
            assert!(
                e < if fast { 2e-3 } else { 1e-5 },
                "moe {format:?} T={rows}: {e}"
            );
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn embed_and_logits_every_format() {
    let g = cuda(KvPrecision::Bf16);
    let mut rng = Rng(12);
    for format in TestFormat::ALL {
        let table = random_tensor(&mut rng, format, 50, 64, 0.5);
        let batch = Batch {
            tokens: vec![3, 0, 49, 3, 17],
            positions: vec![0; 5],
            seqs: vec![0; 5],
            logit_rows: vec![4, 0],
            tables: vec![],
        };
        let run = |b: &dyn Fn() -> (Vec<f32>, Vec<f32>)| b();
        let cpu = run(&|| embed_logits(&CpuBackend, &table, &batch));
        let gpu = run(&|| embed_logits(&g, &table, &batch));
        assert_eq!(gpu.0, cpu.0, "embed {format:?} must be exact");
        let e = rel_err(&gpu.1, &cpu.1);
        println!("embed+logits {format:?}: exact embed, logits rel err {e:.2e}");
        assert!(e < 1e-5, "logits {format:?}: {e}");
    }
}

fn embed_logits<B: Backend>(
    b: &B,
    table: &gptoss_formats::QuantTensor,
    batch: &Batch,
) -> (Vec<f32>, Vec<f32>) {
    let t = b.upload_embedding(table).unwrap();
    let head = b
        .upload_linear(&Linear {
            weight: table.clone(),
            bias: None,
        })
        .unwrap();
    let step = step_of(b, batch);
    let mut x = b.alloc(batch.tokens.len(), table.row_len()).unwrap();
    b.embed(&step, &t, &mut x).unwrap();
    let mut l = b.alloc(batch.logit_rows.len(), table.n_rows()).unwrap();
    b.logits(&step, &x, &head, &mut l).unwrap();
    (
        b.read(&x, batch.tokens.len()).unwrap(),
        b.read(&l, batch.logit_rows.len()).unwrap(),
    )
}

/// `rms_norm(x + y)` by `add` then `rms_norm`, the same by the fused `add_rms_norm`, and the fused call's x.
fn norm_add<B: Backend>(b: &B, x: &[f32], y: &[f32], w: &[f32], rows: usize) -> Vec<f32> {
    let n = w.len();
    let (mut xb, yb) = (upload(b, rows, n, x), upload(b, rows, n, y));
    let wv = b.upload_vector(w).unwrap();
    let step = step_of(b, &plain_batch(rows));
    b.add(&step, &mut xb, &yb).unwrap();
    let mut out = b.alloc(rows, n).unwrap();
    b.rms_norm(&step, &xb, &wv, 1e-5, &mut out).unwrap();
    let mut got = b.read(&out, rows).unwrap();
    let mut xf = upload(b, rows, n, x);
    let mut fused = b.alloc(rows, n).unwrap();
    b.add_rms_norm(&step, &mut xf, &yb, &wv, 1e-5, &mut fused)
        .unwrap();
    got.extend(b.read(&fused, rows).unwrap());
    got.extend(b.read(&xf, rows).unwrap());
    got
}

#[test]
#[ignore = "needs GPU"]
fn rms_norm_and_add() {
    let g = cuda(KvPrecision::Bf16);
    let mut rng = Rng(13);
    // 100 and 2880 take the vector path (whole float4s, at most 4,096), 37 and 5000 the strided one.
    for (rows, n) in [(1, 100), (7, 2880), (3, 37), (2, 5000)] {
        let (x, y, w) = (
            rng.vec(rows * n, 2.0),
            rng.vec(rows * n, 1.0),
            rng.vec(n, 1.5),
        );
        let e = rel_err(
            &norm_add(&g, &x, &y, &w, rows),
            &norm_add(&CpuBackend, &x, &y, &w, rows),
        );
        println!("add+rms_norm, separate and fused, T={rows} n={n}: rel err {e:.2e}");
        assert!(e < 1e-5, "rms_norm T={rows} n={n}: {e}");
    }
}

/// A sequence of attention steps over a paged cache: the capacity (pool sizes), the tables of the two
/// sequences (scattered and interleaved blocks) and the steps.
struct AttnCase {
    shape: AttnShape,
    capacity: Capacity,
    steps: Vec<Batch>,
}

/// Layer 1 of [`attn_config`]'s two layers (the sliding one when `window` is), `nq` query heads over `nkv` kv
/// heads `d` wide.
fn layer1_shape(nq: usize, nkv: usize, d: usize, window: Window) -> AttnShape {
    AttnShape {
        layer: 1,
        n_q_heads: nq,
        n_kv_heads: nkv,
        head_dim: d,
        window,
    }
}

fn attn_config(s: &AttnShape) -> ModelConfig {
    let mut cfg = ModelConfig::gpt_oss_20b();
    cfg.num_hidden_layers = 2;
    cfg.layer_types = vec![
        gptoss_formats::LayerType::Full,
        gptoss_formats::LayerType::Full,
    ];
    if let Window::Sliding(w) = s.window {
        cfg.layer_types[1] = gptoss_formats::LayerType::Sliding;
        cfg.sliding_window = w;
    }
    cfg.num_attention_heads = s.n_q_heads;
    cfg.num_key_value_heads = s.n_kv_heads;
    cfg.head_dim = s.head_dim;
    cfg
}

/// Block tables of sequences 0 and 1: full blocks spread over the pool by a permutation, interleaved
/// between the two; ring entries crossed (sequence 0 gets sliding blocks 1, 3, ..., sequence 1 2, 0, ...).
fn scattered_tables(layout: &KvLayout) -> [BlockTable; 2] {
    let n = layout.full_blocks as u32;
    let table = |s: u32| BlockTable {
        full: (0..layout.table_blocks as u32)
            .map(|i| ((2 * i + s) * 37 + 11) % n)
            .collect(),
        sliding: (0..layout.ring_blocks as u32)
            .map(|e| (2 * e + s + 1) % layout.sliding_blocks.max(1) as u32)
            .collect(),
    };
    [table(0), table(1)]
}

/// A step of `parts`: (sequence, first position, tokens).
fn attn_step(tables: &[BlockTable; 2], parts: &[(usize, u32, u32)]) -> Batch {
    let mut b = Batch::default();
    for &(seq, from, n) in parts {
        let row = b.tables.len() as u32;
        b.tables.push(tables[seq].clone());
        b.tokens.extend(std::iter::repeat_n(0, n as usize));
        b.positions.extend(from..from + n);
        b.seqs.extend(std::iter::repeat_n(row, n as usize));
    }
    b
}

/// Runs each step's rope+store then attention; returns the rotated q and the attention outputs of every step.
fn attention_run<B: Backend>(b: &B, case: &AttnCase, rng_seed: u64) -> (Vec<f32>, Vec<f32>) {
    attention_run_as(b, case, rng_seed, false)
}

/// [`attention_run`], through `Backend::rope_attention` when `fused` (q is then not returned: the fused form
/// leaves it unrotated).
fn attention_run_as<B: Backend>(
    b: &B,
    case: &AttnCase,
    rng_seed: u64,
    fused: bool,
) -> (Vec<f32>, Vec<f32>) {
    let s = &case.shape;
    let mut rng = Rng(rng_seed);
    let cfg = attn_config(s);
    let layout = KvLayout::new(&cfg, &case.capacity).unwrap();
    let mut cache = b.alloc_cache(&layout).unwrap();
    let (inv_freq, concentration) = gptoss_engine::math::yarn_inv_freq(&cfg);
    let sinks = b.upload_vector(&rng.vec(s.n_q_heads, 1.0)).unwrap();
    let (qw, kvw) = (s.n_q_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    let rope = Rope {
        inv_freq,
        concentration,
    };
    let mut step = b.alloc_step(&case.capacity, &layout, &rope).unwrap();
    let (mut qs, mut outs) = (Vec::new(), Vec::new());
    for batch in &case.steps {
        b.begin_step(&mut step, batch).unwrap();
        let t = batch.tokens.len();
        let mut q = upload(b, t, qw, &rng.vec(t * qw, 1.0));
        let mut k = upload(b, t, kvw, &rng.vec(t * kvw, 1.0));
        let v = upload(b, t, kvw, &rng.vec(t * kvw, 1.0));
        let qkv = QkvBufs {
            q: &mut q,
            k: &mut k,
            v: &v,
        };
        let mut out = b.alloc(t, qw).unwrap();
        if fused {
            b.rope_attention(&step, s, qkv, (&sinks, &mut cache), &mut out)
                .unwrap();
        } else {
            b.rope_store_kv(&step, s, qkv, &mut cache).unwrap();
            b.attention(&step, s, &q, &sinks, &cache, &mut out).unwrap();
            qs.extend(b.read(&q, t).unwrap());
        }
        outs.extend(b.read(&out, t).unwrap());
    }
    (qs, outs)
}

/// Two sequences through scattered, interleaved block tables: chunked prefill (7 + 6 tokens), decode, a
/// second sequence, a mixed step of both, then sequence 1 runs on in 8-token chunks to position 600 (sliding
/// rings of 2 blocks wrap dozens of times) and ends with single-token decodes, where full layers split their
/// 600 keys across CTAs (attention_combine). Layer 1 is the sliding layer when the window is one.
fn attn_case(shape: AttnShape) -> (AttnCase, KvLayout) {
    let capacity = Capacity {
        max_batch_tokens: 8,
        max_logit_rows: 1,
        slots: 2,
        context_tokens: 640,
        kv_blocks: None,
    };
    let layout = KvLayout::new(&attn_config(&shape), &capacity).unwrap();
    let t = scattered_tables(&layout);
    let mut steps = vec![
        attn_step(&t, &[(1, 0, 7)]),
        attn_step(&t, &[(1, 7, 6)]),
        attn_step(&t, &[(1, 13, 1)]),
        attn_step(&t, &[(0, 0, 5)]),
        attn_step(&t, &[(1, 14, 1), (0, 5, 3)]),
    ];
    let mut p = 15;
    while p < 598 {
        let n = (598 - p).min(8);
        steps.push(attn_step(&t, &[(1, p, n)]));
        p += n;
    }
    steps.push(attn_step(&t, &[(1, 598, 1)]));
    steps.push(attn_step(&t, &[(1, 599, 1), (0, 8, 1)]));
    (
        AttnCase {
            shape,
            capacity,
            steps,
        },
        layout,
    )
}

#[test]
#[ignore = "needs GPU"]
fn paged_attention_every_kv_type_window_and_group() {
    // (q heads, kv heads, head_dim): the tiny fixtures' GQA of 2, and gpt-oss's head_dim 64 with a group
    // of 12 (two CTAs of 8 and 4 query heads per kv head).
    for (nq, nkv, d) in [(4, 2, 16), (24, 2, 64)] {
        for window in [Window::Sliding(4), Window::Full, Window::Sliding(8)] {
            let shape = layer1_shape(nq, nkv, d, window);
            let (case, layout) = attn_case(shape);
            let want_ring = if window == Window::Full { 0 } else { 2 };
            assert_eq!(layout.ring_blocks, want_ring);
            let cpu = attention_run(&CpuBackend, &case, 21);
            for (kv, tol) in [
                (KvPrecision::F32, 2e-5),
                (KvPrecision::F16, 3e-3),
                (KvPrecision::Bf16, 1.5e-2),
            ] {
                let (q, out) = attention_run(&cuda_exact(kv), &case, 21);
                // RoPE does not touch the cache: f32 everywhere.
                let eq = rel_err(&q, &cpu.0);
                // Attention outputs on their own scale (they are averages, far smaller than q).
                let e = rel_err(&out, &cpu.1);
                println!(
                    "paged rope+attention nq={nq} nkv={nkv} d={d} {window:?} kv {kv:?}: {} steps, rope rel err {eq:.2e}, attention rel err {e:.2e}",
                    case.steps.len()
                );
                assert!(eq < 1e-5, "rope {nq}/{nkv}/{d} {window:?} {kv:?}: {eq}");
                assert!(e < tol, "attention {nq}/{nkv}/{d} {window:?} {kv:?}: {e}");
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn fused_rope_attention_matches_two_launches() {
    // gpt-oss's heads (one CTA per kv head: the decode steps fuse), the tiny fixtures' heads, and a group of
    // 12 (two CTAs per kv head: never fused). attn_case's decode steps include one sequence at 598 and 599
    // keys (full layers split them over CTAs: the key's writer is the last split) and two sequences at once;
    // its later steps read the keys the fused steps stored.
    for (nq, nkv, d) in [(64, 8, 64), (4, 2, 16), (24, 2, 64)] {
        for window in [Window::Full, Window::Sliding(8)] {
            let shape = layer1_shape(nq, nkv, d, window);
            let (case, _) = attn_case(shape);
            let fused_steps = case
                .steps
                .iter()
                .filter(|b| {
                    gptoss_cuda::ops::attention::fuses_rope(b.tokens.len(), b.tables.len(), &shape)
                })
                .count();
            assert_eq!(
                fused_steps > 0,
                nq / nkv <= 8,
                "{nq}/{nkv}: {fused_steps} fused steps"
            );
            for kv in [KvPrecision::F32, KvPrecision::Bf16] {
                // Always fused where it can be (auto leaves it to steps that do not launch as dependents).
                let mut o = CudaOptions::from_env().unwrap();
                o.kv = kv;
                o.fuse_rope = gptoss_cuda::options::FuseRope::Always;
                let mut exact = o.clone();
                exact.exact = true;
                for backend in [o, exact].map(|o| CudaBackend::new(&o).unwrap()) {
                    let (_, two) = attention_run_as(&backend, &case, 33, false);
                    let (_, one) = attention_run_as(&backend, &case, 33, true);
                    let differ = two
                        .iter()
                        .zip(&one)
                        .filter(|(a, b)| a.to_bits() != b.to_bits())
                        .count();
                    println!(
                        "rope+attention fused vs two launches nq={nq} nkv={nkv} d={d} {window:?} {kv:?}: \
                         {fused_steps} of {} steps fused, {differ} of {} outputs differ, rel err {:.2e}",
                        case.steps.len(),
                        two.len(),
                        rel_err(&one, &two)
                    );
                    assert_eq!(differ, 0, "{nq}/{nkv}/{d} {window:?} {kv:?}");
                }
            }
        }
    }
}

/// Prefill-sized steps for the 8-rows-per-CTA kernel (`attention_rows`): sequence 1 in chunks of 64 to
/// position 300 (the last one partial), a step whose first CTA holds 5 rows of sequence 1 and 3 of sequence
/// 0 (two passes), a step of 40 + 20 rows of the two, then single-token decodes (the one-row kernel).
fn rows_case(shape: AttnShape) -> AttnCase {
    let capacity = Capacity {
        max_batch_tokens: 64,
        max_logit_rows: 1,
        slots: 2,
        context_tokens: 640,
        kv_blocks: None,
    };
    let layout = KvLayout::new(&attn_config(&shape), &capacity).unwrap();
    let t = scattered_tables(&layout);
    let mut steps = Vec::new();
    let mut p = 0;
    while p < 300 {
        let n = (300 - p).min(64);
        steps.push(attn_step(&t, &[(1, p, n)]));
        p += n;
    }
    steps.push(attn_step(&t, &[(1, 300, 5), (0, 0, 7)]));
    steps.push(attn_step(&t, &[(0, 7, 40), (1, 305, 20)]));
    steps.push(attn_step(&t, &[(1, 325, 1), (0, 47, 1)]));
    AttnCase {
        shape,
        capacity,
        steps,
    }
}

#[test]
#[ignore = "needs GPU"]
fn attention_rows_kernel_matches_cpu() {
    // gpt-oss's heads (64 query, 8 kv, 64 wide), a group of 4, and the tiny fixtures' heads (4 / 2, 16 wide:
    // the one-row kernel when exact); full, a 128-key window, a 20-key window. Exact: attention_rows against
    // the CPU to f32 rounding. Default: attention_flash (f16 operands) inside FAST_ATTENTION_BOUND, and
    // visibly not the exact kernel.
    for (nq, nkv, d) in [(64, 8, 64), (8, 2, 64), (4, 2, 16)] {
        for window in [Window::Full, Window::Sliding(128), Window::Sliding(20)] {
            let shape = layer1_shape(nq, nkv, d, window);
            let case = rows_case(shape);
            let cpu = attention_run(&CpuBackend, &case, 5);
            for (kv, tol, fast_tol) in [
                (KvPrecision::F32, 2e-5, FAST_ATTENTION_BOUND),
                (KvPrecision::F16, 3e-3, FAST_ATTENTION_BOUND),
                (KvPrecision::Bf16, 1.5e-2, 1.5e-2),
            ] {
                let (_, out) = attention_run(&cuda_exact(kv), &case, 5);
                let e = rel_err(&out, &cpu.1);
                let (_, fast) = attention_run(&cuda(kv), &case, 5);
                let e_fast = rel_err(&fast, &cpu.1);
                println!(
                    "attention prefill nq={nq} nkv={nkv} d={d} {window:?} kv {kv:?}: rel err exact {e:.2e}, flash {e_fast:.2e}"
                );
                assert!(
                    e < tol,
                    "attention rows {nq}/{nkv}/{d} {window:?} {kv:?}: {e}"
                );
                assert!(
                    e_fast < fast_tol,
                    "attention flash {nq}/{nkv}/{d} {window:?} {kv:?}: {e_fast}"
                );
                if kv == KvPrecision::F32 {
                    assert!(e_fast > 1e-6, "the flash kernel did not run: {e_fast}");
                }
            }
        }
    }
}

/// A router of bf16 weights `[n_exp, hidden]` of scale `scale`, with a bias of scale `bias` if given.
fn bf16_router(
    rng: &mut Rng,
    (n_exp, hidden): (usize, usize),
    scale: f32,
    bias: Option<f32>,
) -> Linear {
    let dense = TestFormat::Dense(gptoss_formats::DType::BF16);
    let weight = random_tensor(rng, dense, n_exp, hidden, scale);
    Linear {
        weight,
        bias: bias.map(|b| rng.vec(n_exp, b)),
    }
}

fn experts(rng: &mut Rng, format: TestFormat, n: usize, h: usize, i: usize) -> Vec<Expert> {
    (0..n)
        .map(|_| Expert {
            gate_up: Linear {
                weight: random_tensor(rng, format, 2 * i, h, 0.3),
                bias: Some(rng.vec(2 * i, 0.5)),
            },
            down: Linear {
                weight: random_tensor(rng, format, h, i, 0.3),
                bias: Some(rng.vec(h, 0.5)),
            },
        })
        .collect()
}

/// `rel_err` of the CUDA MoE (route + experts) against the CPU backend's on the same inputs.
fn moe_vs_cpu(
    g: &CudaBackend,
    router: &Linear,
    ex: &[Expert],
    h: &[f32],
    (rows, top_k): (usize, usize),
) -> f32 {
    rel_err(
        &moe_run(g, router, ex, h, rows, top_k),
        &moe_run(&CpuBackend, router, ex, h, rows, top_k),
    )
}

fn moe_run<B: Backend>(
    b: &B,
    router: &Linear,
    ex: &[Expert],
    h: &[f32],
    rows: usize,
    top_k: usize,
) -> Vec<f32> {
    moe_run_routed(b, router, ex, h, rows, top_k).0
}

/// `moe_run`, also returning the router's `(expert, weight)` choices.
fn moe_run_routed<B: Backend>(
    b: &B,
    router: &Linear,
    ex: &[Expert],
    h: &[f32],
    rows: usize,
    top_k: usize,
) -> (Vec<f32>, Vec<(u32, f32)>) {
    let hidden = router.weight.row_len();
    let up = b.upload_experts(ex).unwrap();
    let r = b.upload_linear(router).unwrap();
    let mut routing = b.alloc_routing(rows, top_k).unwrap();
    let hb = upload(b, rows, hidden, h);
    let step = step_of(b, &plain_batch(rows));
    b.route(&step, &hb, &r, top_k, &mut routing).unwrap();
    let mut out = b.alloc(rows, hidden).unwrap();
    let shape = MoeShape {
        top_k,
        swiglu_alpha: 1.702,
        swiglu_limit: 7.0,
    };
    b.moe(
        &step,
        MoeArgs {
            h: &hb,
            experts: &up,
            routing: &routing,
            shape,
        },
        &mut out,
    )
    .unwrap();
    let choices = b.read_routing(&routing, rows, top_k).unwrap();
    (b.read(&out, rows).unwrap(), choices)
}

#[test]
#[ignore = "needs GPU"]
fn router_and_moe_every_format() {
    let g = cuda(KvPrecision::Bf16);
    let mut rng = Rng(14);
    let (n_exp, hidden, inter) = (6, 64, 96);
    for format in TestFormat::ALL {
        let ex = experts(&mut rng, format, n_exp, hidden, inter);
        for (rows, top_k) in [(1, 2), (3, 2), (11, 3), (20, 1)] {
            let router = bf16_router(&mut rng, (n_exp, hidden), 1.0, Some(0.5));
            let h = rng.vec(rows * hidden, 1.0);
            let e = moe_vs_cpu(&g, &router, &ex, &h, (rows, top_k));
            println!("route+moe {format:?} T={rows} top_k={top_k}: rel err {e:.2e}");
            let mxfp4 = matches!(format, TestFormat::Mxfp4 | TestFormat::GgmlMxfp4);
            let fast = mxfp4 && default_mxfp4_is_fast(rows * top_k, n_exp);
            let bound = if fast { 2e-3 } else { 1e-5 };
            assert!(e < bound, "moe {format:?} T={rows} top_k={top_k}: {e}");
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn sampling_matches_the_host_sampler() {
    let g = cuda(KvPrecision::Bf16);
    let mut rng = Rng(15);
    let (rows, vocab) = (4, 1000);
    let logits = rng.vec(rows * vocab, 4.0);
    let lb = upload(&g, rows, vocab, &logits);
    let configs = [
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 1,
        },
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 2,
        },
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
            seed: 3,
        },
        SamplingParams {
            temperature: 1.3,
            top_p: 0.8,
            top_k: 40,
            seed: 4,
        },
    ];
    let mut same = 0;
    let draws = 50u64;
    for c in 0..draws {
        let counters = vec![c; rows];
        let got = g.sample(&lb, &configs, &counters).unwrap();
        for (r, p) in configs.iter().enumerate() {
            let want = gptoss_engine::sampler::sample(&logits[r * vocab..(r + 1) * vocab], p, c);
            same += usize::from(got[r] == want);
        }
    }
    println!(
        "sampling: {same} of {} draws equal the host sampler",
        draws as usize * rows
    );
    assert_eq!(same, draws as usize * rows);
}
