//! A measurement harness, not a test (ignored; nothing asserted): throughput of the fast matmul on
//! 20b-sized weights, per CPU-second so that other processes on a shared machine count less. Run with
//! `cargo test --release -p gptoss-engine --lib kernel_throughput -- --ignored --nocapture`
//! (`KB=mxfp4|q8_0|bf16`, `KT=1|8|64`, `KI=avx512|avx2` pick one case). bench/NOTES.md has the figures.

use std::time::Instant;

use gptoss_formats::tensor::{Lut4Scales, NibbleOrder, ScaleFormat, E2M1_VALUES, Q8_0_BLOCK_BYTES};
use gptoss_formats::{DType, Lut4, QuantTensor, Storage, TensorFormat};

use super::{CpuIsa, FastMatmul, Scratch};

/// User + system CPU seconds of this process so far (from /proc/self/stat, in clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// MXFP4 as a GGUF stores it (split nibble halves, an inline E8M0 scale per 32 elements).
fn ggml_mxfp4() -> TensorFormat {
    TensorFormat::Lut4(Lut4 {
        table: E2M1_VALUES,
        block_elems: 32,
        nibbles: NibbleOrder::SplitHalves,
        scales: Lut4Scales::Inline {
            format: ScaleFormat::E8M0,
        },
        round_to: DType::F32,
    })
}

fn skip(var: &str, value: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v != value)
}

/// The count in `var`, or `default` when it is unset or not a number.
fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "a measurement, run by hand"]
fn kernel_throughput() {
    // A 20b expert's gate_up [5760, 2880]: ggml MXFP4 (17 bytes per 32), Q8_0 (34) and bf16.
    let (rows, n) = (5760usize, 2880usize);
    let nb = rows * n / 32;
    let mut mx = vec![0x37u8; nb * 17];
    for (i, blk) in mx.chunks_exact_mut(17).enumerate() {
        blk[0] = 120 + (i % 3) as u8;
    }
    let mut q8 = vec![0x11u8; nb * 34];
    for blk in q8.chunks_exact_mut(34) {
        blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
    }
    let weights = [
        ("mxfp4", ggml_mxfp4(), mx),
        ("q8_0", TensorFormat::Q8_0, q8),
        (
            "bf16",
            TensorFormat::Dense(DType::BF16),
            vec![0x3fu8; rows * n * 2],
        ),
    ]
    .map(|(name, format, bytes)| {
        let t = QuantTensor {
            shape: vec![rows, n],
            format,
            data: Storage::owned(bytes),
        };
        (name, t)
    });
    for isa in [CpuIsa::Avx512, CpuIsa::Avx2] {
        if !isa.supported() || skip("KI", isa.name()) {
            continue;
        }
        for (name, w) in &weights {
            if skip("KB", name) {
                continue;
            }
            for t in [1usize, 8, 64] {
                if skip("KT", &t.to_string()) {
                    continue;
                }
                let x: Vec<f32> = (0..t * n).map(|i| (i % 13) as f32 - 6.0).collect();
                let mut out = vec![0f32; t * rows];
                let mut scratch = Scratch::default();
                let mut mm = FastMatmul {
                    isa,
                    scratch: &mut scratch,
                };
                mm.run(&x, t, w, None, &mut out);
                let (start, cpu0) = (Instant::now(), cpu_seconds());
                let mut reps = 0;
                while start.elapsed().as_secs_f64() < 1.5 {
                    mm.run(&x, t, w, None, &mut out);
                    reps += 1;
                }
                let cpu = (cpu_seconds() - cpu0) / reps as f64;
                let wall = start.elapsed().as_secs_f64() / reps as f64;
                eprintln!(
                    "{isa:?} {name} T={t}: wall {:.2} ms, cpu {:.2} ms; per CPU-second {:.1} GB/s, {:.1} GMAC/s",
                    wall * 1e3,
                    cpu * 1e3,
                    w.data.len() as f64 / cpu / 1e9,
                    (rows * n * t) as f64 / cpu / 1e9
                );
            }
        }
    }
}

/// The quad tile of `quad_x86.rs` against the VBMI pair tile it stands in for, at `KT` activation rows
/// (1) on a random ggml MXFP4 (`KB=q8_0`: Q8_0, `KB=hf`: HF MXFP4) [`KROWS` (5760), 2880] weight (8.8 MB of MXFP4: in L3
/// here, not in L2): the two levels alternate (the order flips every round) so that other processes on a
/// shared machine hit both alike. `KTH=2` splits the rows over two threads (the 2-core decode's shape; the figure is then
/// bytes per wall second), else one thread and bytes per CPU-second. `KR` rounds (6); `KL=avx2` compares
/// the AVX2 tiles instead (`Avx2Int16` against `Avx2`), `KL=avx2pair` the AVX2 pair tile against `Avx2`.
/// Run with `cargo test --release -p gptoss-engine --lib int16_tile_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
#[cfg(target_arch = "x86_64")]
fn int16_tile_throughput() {
    use super::acts::QuantActs;
    use super::int8_x86::{task, X86Level};
    use super::weights::IntWeight;
    use super::OutRows;

    let (old, new) = match std::env::var("KL").as_deref() {
        Ok("avx2") => (X86Level::Avx2, X86Level::Avx2Int16),
        Ok("avx2pair") => (X86Level::Avx2, X86Level::Avx2Pair),
        _ => (X86Level::Avx512Vbmi, X86Level::Avx512Quad),
    };
    let can = match old {
        X86Level::Avx2 => CpuIsa::Avx2.supported(),
        _ => CpuIsa::Avx512.supported() && is_x86_feature_detected!("avx512vbmi"),
    };
    if !can {
        eprintln!("this CPU lacks {old:?}: nothing to compare");
        return;
    }
    let (rows, n, t) = (env_count("KROWS", 5760), 2880usize, env_count("KT", 1));
    let kb = std::env::var("KB").unwrap_or_default();
    let w = if kb == "hf" {
        let scales: Vec<u8> = (0..rows * n / 32).map(|i| 120 + (i % 3) as u8).collect();
        QuantTensor::hf_mxfp4(
            vec![rows, n],
            Storage::owned(super::testing::bytes(rows * n / 2, 5)),
            Storage::owned(scales),
        )
    } else if kb == "q8_0" {
        let mut q8 = super::testing::bytes(rows * n / 32 * 34, 5);
        for blk in q8.chunks_exact_mut(34) {
            blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
        QuantTensor {
            shape: vec![rows, n],
            format: TensorFormat::Q8_0,
            data: Storage::owned(q8),
        }
    } else {
        let mut mx = super::testing::bytes(rows * n / 32 * 17, 5);
        for (i, blk) in mx.chunks_exact_mut(17).enumerate() {
            blk[0] = 120 + (i % 3) as u8;
        }
        QuantTensor {
            shape: vec![rows, n],
            format: ggml_mxfp4(),
            data: Storage::owned(mx),
        }
    };
    let Some(iw) = IntWeight::of(&w) else {
        eprintln!("the weight has no int8 view");
        return;
    };
    let x: Vec<f32> = (0..t * n).map(|i| ((i * 7) % 29) as f32 - 14.3).collect();
    let mut acts = QuantActs::default();
    acts.quantize(&x, t, n, iw.layout());
    let view = acts.view(0..t);
    let (threads, rounds) = (env_count("KTH", 1), env_count("KR", 6));
    let mut out = vec![0f32; t * rows];
    let sink = OutRows {
        ptr: out.as_mut_ptr(),
        n_out: rows,
    };
    let pass = |level: X86Level| {
        let per = rows.div_ceil(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (iw, view) = (&iw, &view);
                let r = t * per..((t + 1) * per).min(rows);
                // SAFETY: the level's features were detected; `out` holds `[1, rows]` and the threads' rows are disjoint.
                s.spawn(move || unsafe { task(level, iw, view, r, None, sink) });
            }
        });
    };
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let mut order = [old, new];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut rate = [0f64; 2];
        for level in order {
            pass(level);
            let (start, cpu0) = (Instant::now(), cpu_seconds());
            let mut reps = 0;
            while start.elapsed().as_secs_f64() < 1.0 {
                pass(level);
                reps += 1;
            }
            let secs = if threads == 1 {
                cpu_seconds() - cpu0
            } else {
                start.elapsed().as_secs_f64()
            };
            let gbs = w.data.len() as f64 * reps as f64 / secs / 1e9;
            let gmacs = (rows * n * t) as f64 * reps as f64 / secs / 1e9;
            rate[usize::from(level == new)] = gbs;
            eprintln!(
                "round {round} {level:?} threads={threads} T={t}: {gbs:.1} GB/s, {gmacs:.1} GMAC/s"
            );
        }
        ratios.push(rate[1] / rate[0]);
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "{new:?} / {old:?} per round, sorted: {:?}",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
}

/// `count` distinct `[rows, n]` weights of a ggml block format (`block` bytes a block: MXFP4's 17 or
/// Q8_0's 34) with random codes and sane scales (E8M0 2^-7..2^0, f16 0.01), for the streaming harnesses.
fn stream_weights(
    format: &TensorFormat,
    block: usize,
    (rows, n): (usize, usize),
    count: usize,
) -> Vec<QuantTensor> {
    let nb = rows * n / 32;
    (0..count)
        .map(|k| {
            let mut bytes = super::testing::bytes(nb * block, k as u64 + 1);
            for blk in bytes.chunks_exact_mut(block) {
                if block == 17 {
                    blk[0] = 120 + blk[1] % 8;
                } else {
                    blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                }
            }
            QuantTensor {
                shape: vec![rows, n],
                format: format.clone(),
                data: Storage::owned(bytes),
            }
        })
        .collect()
}

/// `KS` MiB (1,024) of [`stream_weights`] in the format `KB` picks (`q8_0`, else MXFP4): its name, the
/// weights and their bytes.
fn picked_stream_weights((rows, n): (usize, usize)) -> (&'static str, Vec<QuantTensor>, f64) {
    let (name, format, block) = if std::env::var("KB").is_ok_and(|v| v == "q8_0") {
        ("q8_0", TensorFormat::Q8_0, Q8_0_BLOCK_BYTES)
    } else {
        ("mxfp4", ggml_mxfp4(), 17usize)
    };
    let bytes = rows * n / 32 * block;
    let count = (env_count("KS", 1024) << 20) / bytes;
    let ws = stream_weights(&format, block, (rows, n), count);
    (name, ws, (count * bytes) as f64)
}

/// The fast matmul at T = 1 streaming from DRAM, as a decode token does: `KS` MiB (1,024) of distinct
/// [5760, 2880] weights (ggml MXFP4 and Q8_0, `KB` picks one), run one after another through
/// [`FastMatmul::run`] on rayon's pool; bytes per wall second over `KR` sweeps (4).
/// Run with `cargo test --release -p gptoss-engine --lib stream_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn stream_throughput() {
    let (rows, n) = (5760usize, 2880usize);
    let nb = rows * n / 32;
    let total = env_count("KS", 1024) << 20;
    let isa = if CpuIsa::Avx512.supported() && !skip("KI", "avx512") {
        CpuIsa::Avx512
    } else {
        CpuIsa::Avx2
    };
    for (name, format, block) in [
        ("mxfp4", ggml_mxfp4(), 17usize),
        ("q8_0", TensorFormat::Q8_0, Q8_0_BLOCK_BYTES),
    ] {
        if skip("KB", name) {
            continue;
        }
        let count = total / (nb * block);
        let swept = count * nb * block;
        let ws = stream_weights(&format, block, (rows, n), count);
        let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
        let mut out = vec![0f32; rows];
        let mut scratch = Scratch::default();
        let mut mm = FastMatmul {
            isa,
            scratch: &mut scratch,
        };
        let sweep = |mm: &mut FastMatmul<'_>, out: &mut Vec<f32>| {
            for w in &ws {
                mm.run(&x, 1, w, None, out);
            }
        };
        sweep(&mut mm, &mut out);
        let mut rates = Vec::new();
        for _ in 0..env_count("KR", 4) {
            let start = Instant::now();
            sweep(&mut mm, &mut out);
            let secs = start.elapsed().as_secs_f64();
            rates.push(swept as f64 / secs / 1e9);
        }
        eprintln!(
            "{isa:?} {name} T=1 streaming {count} weights ({:.2} GB): {} GB/s",
            swept as f64 / 1e9,
            rates
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// Two x86 levels at T = 1 streaming from DRAM, as a decode token reads its weights: `KS` MiB (1,024)
/// of distinct [5760, 2880] weights (`KB=mxfp4|q8_0`, MXFP4 by default) swept one after another, each
/// split into tasks over rayon's pool as [`FastMatmul::run`] splits it, the levels alternated for `KR`
/// rounds (6; the order flips every round) so that other processes hit both alike: `Avx512Quad`
/// against `Avx512Vbmi`. `KREAD=1` first times a plain two-thread AVX-512 read of the same bytes (the
/// machine's streaming rate of the moment).
/// Run with `cargo test --release -p gptoss-engine --lib stream_levels -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
#[cfg(target_arch = "x86_64")]
fn stream_levels() {
    use super::acts::QuantActs;
    use super::int8_x86::{task, X86Level};
    use super::weights::IntWeight;
    use super::{OutRows, TASK_ROWS};
    use rayon::prelude::*;

    if !(CpuIsa::Avx512.supported() && is_x86_feature_detected!("avx512vbmi")) {
        eprintln!("this CPU lacks AVX-512 VBMI: nothing to compare");
        return;
    }
    let (old, new) = (X86Level::Avx512Vbmi, X86Level::Avx512Quad);
    let (rows, n) = (5760usize, 2880usize);
    let (name, ws, swept) = picked_stream_weights((rows, n));
    let views: Vec<IntWeight<'_>> = ws.iter().filter_map(IntWeight::of).collect();
    let Some(layout) = views.first().map(IntWeight::layout) else {
        return;
    };
    let x: Vec<f32> = (0..n).map(|i| ((i * 7) % 29) as f32 - 14.3).collect();
    let mut acts = QuantActs::default();
    acts.quantize(&x, 1, n, layout);
    let view = acts.view(0..1);
    let mut out = vec![0f32; rows];
    let sink = OutRows {
        ptr: out.as_mut_ptr(),
        n_out: rows,
    };
    let sweep = |level: X86Level| {
        let start = Instant::now();
        for iw in &views {
            (0..rows.div_ceil(TASK_ROWS)).into_par_iter().for_each(|i| {
                let r = i * TASK_ROWS..((i + 1) * TASK_ROWS).min(rows);
                // SAFETY: VBMI was detected; `out` holds `[1, rows]` and tasks own disjoint rows.
                unsafe { task(level, iw, &view, r, None, sink) }
            });
        }
        swept / start.elapsed().as_secs_f64() / 1e9
    };
    sweep(old);
    if std::env::var("KREAD").is_ok() {
        #[target_feature(enable = "avx512f")]
        unsafe fn read(b: &[u8]) -> u64 {
            use std::arch::x86_64::*;
            let mut acc = _mm512_setzero_si512();
            for c in b.chunks_exact(64) {
                acc = _mm512_xor_si512(acc, _mm512_loadu_si512(c.as_ptr().cast()));
            }
            _mm512_reduce_add_epi64(acc) as u64
        }
        for _ in 0..3 {
            let start = Instant::now();
            let t: u64 = ws
                .iter()
                .map(|w| {
                    let bytes = w.data.bytes();
                    bytes
                        .par_chunks(bytes.len() / rows * TASK_ROWS)
                        .map(|c| {
                            // SAFETY: AVX-512 F was detected (VBMI above implies it).
                            unsafe { read(c) }
                        })
                        .sum::<u64>()
                })
                .sum();
            eprintln!(
                "plain read {:.1} GB/s ({t})",
                swept / start.elapsed().as_secs_f64() / 1e9
            );
        }
    }
    let mut ratios = Vec::new();
    for round in 0..env_count("KR", 6) {
        let mut order = [(0usize, old), (1, new)];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut rate = [0f64; 2];
        for (which, level) in order {
            let gbs = sweep(level);
            rate[which] = gbs;
            eprintln!("round {round} {name} {level:?}: {gbs:.1} GB/s");
        }
        ratios.push(rate[1] / rate[0]);
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "{new:?} / {old:?} streaming {name}, per round, sorted: {:?}",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
}

/// Where `FastMatmul::run` loses against its own tiles at T = 1 (on the H200 host, one thread in L3, 8.4
/// GB/s through `stream_throughput` against 15.2 through `stream_levels`, bench/NOTES.md session 17): the
/// same MXFP4 weights (`KS` MiB, 1,024; `KB=q8_0` for Q8_0) and x swept, in alternating order for `KR`
/// rounds (6), (a) through `FastMatmul::run` (x quantized per call, then the tasks), (b) the same tasks
/// after one quantization, (c) the quantization alone, per call, as `FastMatmul::run` asks for it. GB/s per
/// wall second.
/// Run with `cargo test --release -p gptoss-engine --lib stream_paths -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn stream_paths() {
    use super::weights::IntWeight;
    use super::{for_tasks, int8_task, OutRows};

    let (rows, n) = (5760usize, 2880usize);
    let (name, ws, swept) = picked_stream_weights((rows, n));
    let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
    let mut out = vec![0f32; rows];
    let isa = if CpuIsa::Avx512.supported() {
        CpuIsa::Avx512
    } else {
        CpuIsa::Avx2
    };
    let mut scratch = Scratch::default();
    let Some(layout) = ws.first().and_then(IntWeight::of).map(|w| w.layout()) else {
        return;
    };
    let mut through_run = |out: &mut Vec<f32>| {
        let start = Instant::now();
        let mut mm = FastMatmul {
            isa,
            scratch: &mut scratch,
        };
        for w in &ws {
            mm.run(&x, 1, w, None, out);
        }
        swept / start.elapsed().as_secs_f64() / 1e9
    };
    let mut acts = super::acts::QuantActs::default();
    acts.quantize(&x, 1, n, layout);
    let through_tasks = |out: &mut Vec<f32>| {
        let view = acts.view(0..1);
        let sink = OutRows {
            ptr: out.as_mut_ptr(),
            n_out: rows,
        };
        let start = Instant::now();
        for w in &ws {
            let Some(iw) = IntWeight::of(w) else { continue };
            for_tasks(rows, |r| {
                // SAFETY: `isa` is supported; `out` holds `[1, rows]` and each task owns its rows.
                unsafe { int8_task(isa, &iw, &view, r, None, sink) }
            });
        }
        swept / start.elapsed().as_secs_f64() / 1e9
    };
    through_run(&mut out);
    through_tasks(&mut out);
    let mut quant = super::acts::QuantActs::default();
    let start = Instant::now();
    let reps = 1000;
    for _ in 0..reps {
        quant.quantize_for(&x, 1, n, layout, false);
    }
    let quant_us = start.elapsed().as_secs_f64() * 1e6 / reps as f64;
    for round in 0..env_count("KR", 6) {
        let (run, tasks) = if round % 2 == 0 {
            let a = through_run(&mut out);
            (a, through_tasks(&mut out))
        } else {
            let b = through_tasks(&mut out);
            (through_run(&mut out), b)
        };
        eprintln!(
            "round {round} {name} {} threads: FastMatmul::run {run:.1} GB/s, tasks alone {tasks:.1} GB/s",
            rayon::current_num_threads()
        );
    }
    eprintln!("{name}: quantizing one row of {n} takes {quant_us:.1} us");
}
