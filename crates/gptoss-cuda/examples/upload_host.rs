//! The host side of a CUDA weight upload, timed on a machine without a GPU: loads a checkpoint and
//! prepares every weight the backend uploads, one of three ways: `raw`, what `CudaBackend` does by
//! default (ggml block formats copied as raw blocks into a 32 MiB buffer standing in for a pinned
//! staging slot, a parallel memcpy, for `kernels/repack.cu` to rewrite on the device; the rest repacked
//! as `staged` does); `staged`, the host repack (`GPTOSS_REPACK=host`: each tensor's arrays built in
//! parallel into the buffer); or `serial`, on one thread into whole arrays (`weights::pack`). Mapped pages
//! are released after each tensor in `raw` and `staged`. Prints the time and the process's resident
//! memory after each phase.
//!
//! `cargo run --release -p gptoss-cuda --example upload_host -- MODEL [raw|staged|serial] [LAYERS]`
//! (`LAYERS`: only the first so many layers, so the part of the file read fits a small page cache).

use std::time::Instant;

use gptoss_cuda::repack::{PackPlan, TASK_BYTES};
use gptoss_cuda::staging::SLOT_BYTES;
use gptoss_cuda::weights::pack;
use gptoss_formats::{ModelWeights, QuantTensor};

/// `VmRSS`, `RssAnon` and `RssFile` of this process.
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["VmRSS", "RssAnon", "RssFile"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (in clock ticks of 1/100 s).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (f.get(10).unwrap_or(&0.0) + f.get(11).unwrap_or(&0.0)) / 100.0
}

/// Every weight tensor in upload order (of the first `layers` layers, then embed and lm_head).
fn tensors(w: &ModelWeights, layers: usize) -> Vec<&QuantTensor> {
    let mut out = Vec::new();
    for l in w.layers.iter().take(layers) {
        out.extend([&l.q, &l.k, &l.v, &l.o, &l.router].map(|lin| &lin.weight));
        out.extend(l.experts.iter().map(|e| &e.gate_up.weight));
        out.extend(l.experts.iter().map(|e| &e.down.weight));
    }
    out.extend([&w.embed, &w.lm_head]);
    out
}

/// Output bytes made, and the source bytes of them copied raw for the device.
type Made = Result<(usize, usize), Box<dyn std::error::Error>>;

/// Builds `plan`'s arrays on the host, a slot at a time (the stager's fill).
fn host_repack(plan: &PackPlan<'_>, slot: &mut [u8]) -> Result<usize, Box<dyn std::error::Error>> {
    let mut bytes = 0;
    for m in std::iter::once(&plan.data).chain(plan.scales.as_ref()) {
        let per_slot = (SLOT_BYTES / m.unit_bytes().max(1)).max(1);
        let mut first = 0;
        while first < m.units() {
            let n = per_slot.min(m.units() - first);
            let out = &mut slot[..n * m.unit_bytes()];
            m.fill_par(first, out, TASK_BYTES)?;
            std::hint::black_box(&out[0]);
            first += n;
        }
        bytes += m.len_bytes();
    }
    Ok(bytes)
}

fn staged(ts: &[&QuantTensor], raw: Site) -> Made {
    let mut slot = vec![0u8; SLOT_BYTES];
    let (mut bytes, mut raw_bytes) = (0, 0);
    for t in ts {
        let plan = PackPlan::new(t)?;
        let chunks = match raw {
            Site::Device => plan.raw.as_ref().and_then(|r| r.chunks(SLOT_BYTES)),
            Site::Host => None,
        };
        match chunks {
            Some(chunks) => {
                for c in chunks {
                    let out = &mut slot[..c.src_bytes()];
                    c.fill(out)?;
                    std::hint::black_box(&out[0]);
                    raw_bytes += c.src_bytes();
                }
                bytes += plan.size_bytes();
            }
            None => bytes += host_repack(&plan, &mut slot)?,
        }
        plan.release_pages();
    }
    Ok((bytes, raw_bytes))
}

/// Where the ggml block formats are repacked.
#[derive(Clone, Copy)]
enum Site {
    Device,
    Host,
}

fn serial(ts: &[&QuantTensor]) -> Made {
    let mut bytes = 0;
    for t in ts {
        let p = pack(t)?;
        std::hint::black_box(p.data.first());
        bytes += p.size_bytes();
    }
    Ok((bytes, 0))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: upload_host MODEL [raw|staged|serial] [LAYERS]")?;
    let mode = args.next().unwrap_or_else(|| "raw".into());
    let layers = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|_| format!("LAYERS `{n}` is not a number"))?,
        None => usize::MAX,
    };
    let t0 = Instant::now();
    let ckpt = gptoss_formats::load(std::path::Path::new(&path))?;
    println!("load {:.2} s  [{}]", t0.elapsed().as_secs_f64(), rss());
    let ts = tensors(&ckpt.weights, layers);
    let (t1, cpu1) = (Instant::now(), cpu_seconds());
    let (bytes, raw_bytes) = match mode.as_str() {
        "raw" => staged(&ts, Site::Device)?,
        "staged" => staged(&ts, Site::Host)?,
        "serial" => serial(&ts)?,
        other => return Err(format!("mode `{other}`: expected raw, staged or serial").into()),
    };
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!(
        "{mode} upload of {} tensors, {:.2} GiB ({:.2} GiB of it from raw blocks copied for the device): {:.2} s ({:.2} CPU s) on {} threads  [{}]",
        ts.len(),
        gib(bytes),
        gib(raw_bytes),
        t1.elapsed().as_secs_f64(),
        cpu_seconds() - cpu1,
        rayon::current_num_threads(),
        rss()
    );
    Ok(())
}
