//! The host side of a CUDA weight upload, timed on a machine without a GPU: loads a checkpoint and
//! repacks every weight the backend uploads, either the way `CudaBackend` does it (each tensor's
//! arrays built in parallel into a 32 MiB buffer standing in for a pinned staging slot, then its
//! mapped pages released) or on one thread into whole arrays (`weights::pack`). Prints the time and
//! the process's resident memory after each phase.
//!
//! `cargo run --release -p gptoss-cuda --example upload_host -- MODEL [staged|serial] [LAYERS]`
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

fn staged(ts: &[&QuantTensor]) -> Result<usize, Box<dyn std::error::Error>> {
    let mut slot = vec![0u8; SLOT_BYTES];
    let mut bytes = 0;
    for t in ts {
        let plan = PackPlan::new(t)?;
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
        plan.release_pages();
    }
    Ok(bytes)
}

fn serial(ts: &[&QuantTensor]) -> Result<usize, Box<dyn std::error::Error>> {
    let mut bytes = 0;
    for t in ts {
        let p = pack(t)?;
        std::hint::black_box(p.data.first());
        bytes += p.size_bytes();
    }
    Ok(bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: upload_host MODEL [staged|serial]")?;
    let mode = args.next().unwrap_or_else(|| "staged".into());
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
    let bytes = match mode.as_str() {
        "staged" => staged(&ts)?,
        "serial" => serial(&ts)?,
        other => return Err(format!("mode `{other}`: expected staged or serial").into()),
    };
    println!(
        "{mode} repack of {} tensors, {:.2} GiB: {:.2} s ({:.2} CPU s) on {} threads  [{}]",
        ts.len(),
        bytes as f64 / (1u64 << 30) as f64,
        t1.elapsed().as_secs_f64(),
        cpu_seconds() - cpu1,
        rayon::current_num_threads(),
        rss()
    );
    Ok(())
}
