//! `gptoss fit`: will a model fit a GPU, and how fast will it decode? Computed from sizes only (a
//! checkpoint's headers, or a dummy model's config), before anything is downloaded or loaded: the GPU
//! plan (weights, KV cache, workspace), the largest context and the most streams that fit, how many
//! layers' experts would have to stay in host memory, and an estimated decode speed. When the request
//! does not fit, it says what would.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use gptoss_engine::memory::{plan, KvPrecision, MemoryPlan};
use gptoss_engine::placement::{
    expert_cache_fit, expert_stream_bytes, kv_read_per_token, max_context, max_streams,
    place_experts, DenseFormat, Placement, WeightSplit,
};
use gptoss_engine::{Capacity, StreamCost};
use gptoss_formats::ModelConfig;
use serde_json::{json, Value};

use crate::gpus::{self, Gpu};
use crate::inspect::human_bytes;
use crate::source::{dummy_config, parse_size, DummyModel, KvCache};

/// Device memory a real card loses to the CUDA context, cuBLASLt and the loaded kernels before the
/// engine allocates anything (what `--gpu` subtracts; `--vram` is taken as the engine's own budget,
/// like `--max-vram`).
const CUDA_CONTEXT_BYTES: u64 = 512 << 20;

/// Per-step time besides reading the bytes, fitted to gptoss's measured decode: 20b (HF layout, bf16 dense)
/// on the H200 (4.8 TB/s) decodes at 2.241 ms a token (`gptoss bench` tg128 446.2 tok/s, commit 969dc3c,
/// bench/BENCHMARKS.md session 12), of which reading 3.71 GB takes 0.77 ms at the spec bandwidth, leaving
/// 1.47 ms. Checked against Q8_0 dense weights on the same card (2.56 GB a token, `--dense q8_0`): predicted
/// 2.00 ms, measured 1.92 ms. It is assumed the same on every card.
const STEP_OVERHEAD_S: f64 = 1.47e-3;

/// Most streams `fit` searches for.
const MAX_STREAMS: usize = 4096;

/// Arguments of `gptoss fit`.
#[derive(Args)]
#[command(group(ArgGroup::new("card").required(true).args(["gpu", "vram"])))]
pub struct FitArgs {
    /// Model directory, .safetensors or .gguf file (only headers are read).
    #[arg(required_unless_present = "dummy")]
    path: Option<PathBuf>,
    /// Plan a model of real shapes by name instead (gpt-oss-20b, gpt-oss-120b).
    #[arg(long, value_name = "NAME", conflicts_with = "path")]
    dummy: Option<DummyModel>,
    /// The GPU, from the built-in table (e.g. "RTX 4080", "4090", "H100 80GB"); 0.5 GiB of it is kept
    /// for the CUDA context.
    #[arg(long, value_name = "NAME")]
    gpu: Option<String>,
    /// Device memory the engine may use, instead of a named card (like --max-vram).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "gpu")]
    vram: Option<u64>,
    /// Memory bandwidth of the --vram card in GB/s, for the speed estimate.
    #[arg(long, value_name = "GB/S", requires = "vram")]
    bandwidth: Option<f64>,
    /// Host memory available for experts that do not fit the GPU.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    ram: Option<u64>,
    /// Host memory bandwidth in GB/s for experts read from host memory (the default is what the
    /// fast CPU path and llama.cpp reach on the project's 2-core test machine; measure yours with
    /// `gptoss bench --device cpu`).
    #[arg(long, value_name = "GB/S", default_value_t = 30.0)]
    host_bandwidth: f64,
    /// Context length of each stream.
    #[arg(long, default_value_t = 8192)]
    ctx: usize,
    /// Concurrent streams, each at the full context.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Element type of the KV cache.
    #[arg(long, value_enum, default_value_t = KvCache::F32)]
    kv_cache: KvCache,
    /// Print JSON (`{"fits": bool, ...}`).
    #[arg(long)]
    json: bool,
}

/// The device the plan is for.
struct Card {
    name: String,
    vram_bytes: u64,
    budget_bytes: u64,
    bandwidth_gbs: Option<f64>,
}

fn card(args: &FitArgs) -> Result<Card> {
    match (&args.gpu, args.vram) {
        (Some(name), _) => {
            let g: Gpu = gpus::find(name)?;
            Ok(Card {
                name: g.name.to_string(),
                vram_bytes: g.vram_bytes(),
                budget_bytes: g.vram_bytes().saturating_sub(CUDA_CONTEXT_BYTES),
                bandwidth_gbs: Some(g.bandwidth_gbs),
            })
        }
        (None, Some(v)) => Ok(Card {
            name: "a card (--vram)".to_string(),
            vram_bytes: v,
            budget_bytes: v,
            bandwidth_gbs: args.bandwidth,
        }),
        (None, None) => bail!("give --gpu NAME or --vram SIZE"),
    }
}

fn kv_precision(kv: KvCache) -> KvPrecision {
    match kv {
        KvCache::F32 => KvPrecision::F32,
        KvCache::F16 => KvPrecision::F16,
        KvCache::Bf16 => KvPrecision::Bf16,
    }
}

/// The model's name, config and weight split.
fn model(args: &FitArgs) -> Result<(String, ModelConfig, WeightSplit)> {
    match (&args.path, args.dummy) {
        (_, Some(d)) => {
            let c = dummy_config(d);
            let name = format!("{} (dummy: MXFP4 experts, bf16 dense)", dummy_name(d));
            Ok((name, c.clone(), WeightSplit::mxfp4_checkpoint(&c)))
        }
        (Some(p), None) => {
            let ckpt = gptoss_formats::load(p).with_context(|| format!("fit: {}", p.display()))?;
            let split = WeightSplit::of_weights(&ckpt.weights);
            Ok((p.display().to_string(), ckpt.weights.config, split))
        }
        (None, None) => bail!("give a model PATH or --dummy NAME"),
    }
}

fn dummy_name(d: DummyModel) -> &'static str {
    match d {
        DummyModel::GptOss20b => "gpt-oss-20b",
        DummyModel::GptOss120b => "gpt-oss-120b",
    }
}

/// Everything `fit` decided.
struct Fit {
    capacity: Capacity,
    kv: KvPrecision,
    full: MemoryPlan,
    fits: bool,
    placement: Option<Placement>,
    /// The hot-expert cache `--expert-cache auto` would make beside that placement: (experts, bytes).
    expert_cache: (usize, u64),
    /// Streaming of host experts for long prompts beside that placement.
    stream: Stream,
    max_context: Option<usize>,
    max_streams: Option<usize>,
    decode: Option<Estimate>,
    suggestions: Vec<String>,
}

/// What `--stream-experts auto` would do with a placement's host layers: long prompts copy one host layer's
/// experts at a time into a device set of that size and run them on the GPU, when the set fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    /// No experts in host memory.
    NoHostExperts,
    /// The set fits: its bytes, and the prompt tokens from which a step streams.
    On { bytes: u64, from_tokens: usize },
    /// The set does not fit beside the plan; `more_layers`: the fewest extra `--n-cpu-moe` layers that
    /// would leave room (none within the model's layers).
    NoRoom {
        bytes: u64,
        more_layers: Option<usize>,
    },
}

/// Streaming for `placement` under `cap` (as `run` reserves it, before the expert cache).
fn stream_for(
    config: &ModelConfig,
    split: &WeightSplit,
    (capacity, kv): (&Capacity, KvPrecision),
    placement: &Placement,
    cap: u64,
) -> Result<Stream> {
    let layers = placement.cpu_moe_layers;
    let bytes = expert_stream_bytes(split, layers);
    if layers == 0 || bytes == 0 {
        return Ok(Stream::NoHostExperts);
    }
    let fits = |host_layers: usize| -> Result<bool> {
        let set = expert_stream_bytes(split, host_layers);
        let p = plan(config, split.device_bytes(host_layers) + set, capacity, kv)?;
        Ok(p.total_bytes() <= cap)
    };
    if fits(layers)? {
        let pairs = StreamCost::H200_HOST.min_pairs(config.num_local_experts);
        return Ok(Stream::On {
            bytes,
            from_tokens: pairs.div_ceil(config.num_experts_per_tok.max(1)),
        });
    }
    let mut more_layers = None;
    for extra in 1..=config.num_hidden_layers - layers {
        if fits(layers + extra)? {
            more_layers = Some(extra);
            break;
        }
    }
    Ok(Stream::NoRoom { bytes, more_layers })
}

/// A decode-speed estimate.
struct Estimate {
    tok_s: f64,
    device_bytes: u64,
    host_bytes: u64,
}

/// Prints the plan.
pub fn run(args: FitArgs) -> Result<()> {
    let card = card(&args)?;
    let (name, config, split) = model(&args)?;
    if args.streams == 0 || args.ctx == 0 {
        bail!("--ctx and --streams must be at least 1");
    }
    let f = decide(&args, &card, &config, &split)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&args, &card, &name, &split, &f))?
        );
    } else {
        print_text(&args, &card, &name, &split, &f);
    }
    Ok(())
}

fn decide(args: &FitArgs, card: &Card, config: &ModelConfig, split: &WeightSplit) -> Result<Fit> {
    let kv = kv_precision(args.kv_cache);
    let capacity = Capacity {
        max_batch_tokens: 512,
        max_logit_rows: args.streams,
        slots: args.streams,
        context_tokens: args.ctx,
        kv_blocks: None,
    };
    let cap = card.budget_bytes;
    let full = plan(config, split.total_bytes(), &capacity, kv)?;
    let placement = place_experts(config, split, &capacity, kv, cap).ok();
    let ram_ok = |p: &Placement| args.ram.is_none_or(|r| p.host_bytes <= r);
    let stream = match &placement {
        Some(p) => stream_for(config, split, (&capacity, kv), p, cap)?,
        None => Stream::NoHostExperts,
    };
    let stream_set = match stream {
        Stream::On { bytes, .. } => bytes,
        _ => 0,
    };
    let expert_cache = placement.as_ref().map_or((0, 0), |p| {
        let spare = cap.saturating_sub(p.plan.total_bytes() + stream_set);
        expert_cache_fit(config, split, &capacity, p.cpu_moe_layers, spare)
    });
    let fits = full.total_bytes() <= cap;
    let one = Capacity {
        slots: 1,
        max_logit_rows: 1,
        ..capacity
    };
    let max_ctx = max_context(config, split.total_bytes(), &capacity, kv, cap)?;
    let max_str = max_streams(
        config,
        split.total_bytes(),
        &capacity,
        kv,
        (cap, MAX_STREAMS),
    )?;
    let decode = match (&placement, card.bandwidth_gbs) {
        (Some(p), Some(bw)) if ram_ok(p) => Some(estimate(config, split, p, (args, bw))?),
        _ => None,
    };
    let mut suggestions = Vec::new();
    if !fits {
        if let Some(c) = max_context(config, split.total_bytes(), &one, kv, cap)? {
            if c < args.ctx && args.streams == 1 {
                suggestions.push(format!("--ctx {c} (the largest context that fits)"));
            }
        }
        if let (Some(n), true) = (max_str, args.streams > 1) {
            suggestions.push(format!("--streams {n}"));
        }
        let f16 = plan(config, split.total_bytes(), &capacity, KvPrecision::F16)?;
        if kv == KvPrecision::F32 && f16.total_bytes() <= cap {
            suggestions.push("--kv-cache f16 (half the KV cache; slightly less exact)".to_string());
        }
        match &placement {
            Some(p) if ram_ok(p) => suggestions.push(format!(
                "--n-cpu-moe {} (the experts of the first {} layers, {}, in host memory)",
                p.cpu_moe_layers,
                p.cpu_moe_layers,
                human_bytes(p.host_bytes as usize)
            )),
            Some(p) => suggestions.push(format!(
                "--n-cpu-moe {} would need {} of host memory, more than --ram",
                p.cpu_moe_layers,
                human_bytes(p.host_bytes as usize)
            )),
            None => {}
        }
        suggestions.extend(smaller_models(config, split, &capacity, (kv, cap))?);
    }
    Ok(Fit {
        capacity,
        kv,
        full,
        fits,
        placement,
        expert_cache,
        stream,
        max_context: max_ctx,
        max_streams: max_str,
        decode,
        suggestions,
    })
}

/// Smaller quants or models that fit: the same model with Q8_0 dense weights (a GGUF written by
/// `gptoss convert --type mxfp4`, llama.cpp's MXFP4_MOE mix), then gpt-oss-20b.
fn smaller_models(
    config: &ModelConfig,
    split: &WeightSplit,
    capacity: &Capacity,
    (kv, cap): (KvPrecision, u64),
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let q8 = WeightSplit::with_dense(config, DenseFormat::Q8_0);
    let fits = |c: &ModelConfig, s: &WeightSplit| -> Result<bool> {
        Ok(plan(c, s.total_bytes(), capacity, kv)?.total_bytes() <= cap)
    };
    if q8.total_bytes() < split.total_bytes() && fits(config, &q8)? {
        out.push(format!(
            "a GGUF with Q8_0 dense weights (`gptoss convert MODEL out.gguf --type mxfp4`): {} of weights",
            gib(q8.total_bytes())
        ));
    }
    let small = ModelConfig::gpt_oss_20b();
    let small_split = WeightSplit::mxfp4_checkpoint(&small);
    if small_split.total_bytes() < split.total_bytes() && fits(&small, &small_split)? {
        out.push(format!(
            "gpt-oss-20b: {} of weights in the official layout",
            gib(small_split.total_bytes())
        ));
    }
    Ok(out)
}

/// Decode tok/s of one stream at `--ctx`: device bytes (weights + KV) at the card's bandwidth, host
/// experts at the host bandwidth, plus the measured per-step overhead.
fn estimate(
    config: &ModelConfig,
    split: &WeightSplit,
    p: &Placement,
    (args, bw_gbs): (&FitArgs, f64),
) -> Result<Estimate> {
    let (weights, host) = split.read_per_token(p.cpu_moe_layers);
    let device = weights + kv_read_per_token(config, args.ctx, kv_precision(args.kv_cache))?;
    let seconds = device as f64 / (bw_gbs * 1e9)
        + host as f64 / (args.host_bandwidth * 1e9)
        + STEP_OVERHEAD_S;
    Ok(Estimate {
        tok_s: 1.0 / seconds,
        device_bytes: device,
        host_bytes: host,
    })
}

fn to_json(args: &FitArgs, card: &Card, name: &str, split: &WeightSplit, f: &Fit) -> Value {
    let p = &f.full;
    json!({
        "fits": f.fits,
        "model": name,
        "gpu": {
            "name": card.name,
            "vram_bytes": card.vram_bytes,
            "budget_bytes": card.budget_bytes,
            "bandwidth_gb_s": card.bandwidth_gbs,
        },
        "context_tokens": args.ctx,
        "streams": args.streams,
        "kv_cache": format!("{:?}", f.kv).to_lowercase(),
        "weights_bytes": p.weights_bytes,
        "expert_bytes": split.expert_bytes.iter().sum::<u64>(),
        "kv_cache_bytes": p.kv_cache_bytes,
        "workspace_bytes": p.workspace_bytes,
        "total_bytes": p.total_bytes(),
        "free_bytes": card.budget_bytes as i128 - p.total_bytes() as i128,
        "max_context_tokens": f.max_context,
        "max_streams": f.max_streams,
        "n_cpu_moe": f.placement.as_ref().map(|p| p.cpu_moe_layers),
        "host_bytes": f.placement.as_ref().map(|p| p.host_bytes),
        "expert_cache_slots": f.expert_cache.0,
        "expert_cache_bytes": f.expert_cache.1,
        "stream_experts": match f.stream {
            Stream::NoHostExperts => Value::Null,
            Stream::On { bytes, from_tokens } => json!({
                "fits": true, "set_bytes": bytes, "from_prompt_tokens": from_tokens
            }),
            Stream::NoRoom { bytes, more_layers } => json!({
                "fits": false, "set_bytes": bytes, "n_cpu_moe_for_room": more_layers
                    .zip(f.placement.as_ref()).map(|(m, p)| p.cpu_moe_layers + m)
            }),
        },
        "ram_bytes": args.ram,
        "decode_tok_s_estimate": f.decode.as_ref().map(|d| (d.tok_s * 10.0).round() / 10.0),
        "decode_device_bytes_per_token": f.decode.as_ref().map(|d| d.device_bytes),
        "decode_host_bytes_per_token": f.decode.as_ref().map(|d| d.host_bytes),
        "estimate_note": "an estimate: bytes read per token over the bandwidth plus a per-step overhead measured on an H200",
        "suggestions": f.suggestions,
        "max_batch_tokens": f.capacity.max_batch_tokens,
    })
}

fn gib(b: u64) -> String {
    human_bytes(b as usize)
}

fn print_text(args: &FitArgs, card: &Card, name: &str, split: &WeightSplit, f: &Fit) {
    let bw = card
        .bandwidth_gbs
        .map_or(String::new(), |b| format!(", {b} GB/s"));
    println!("model:  {name}");
    println!(
        "GPU:    {} ({}{bw}; {} for the engine)",
        card.name,
        gib(card.vram_bytes),
        gib(card.budget_bytes)
    );
    let kv = format!("{:?}", f.kv).to_lowercase();
    println!(
        "plan:   {} tokens × {} stream(s), {kv} KV cache",
        args.ctx, args.streams
    );
    let experts: u64 = split.expert_bytes.iter().sum();
    let p = &f.full;
    println!(
        "  weights    {:>10}  (experts {} in {} layers, the rest {})",
        gib(p.weights_bytes),
        gib(experts),
        split.expert_bytes.len(),
        gib(p.weights_bytes - experts)
    );
    println!("  KV cache   {:>10}", gib(p.kv_cache_bytes));
    println!("  workspace  {:>10}", gib(p.workspace_bytes));
    let verdict = if f.fits {
        format!("fits ({} free)", gib(card.budget_bytes - p.total_bytes()))
    } else {
        format!(
            "does NOT fit ({} over)",
            gib(p.total_bytes() - card.budget_bytes)
        )
    };
    println!("  total      {:>10}  {verdict}", gib(p.total_bytes()));
    match f.max_context {
        Some(c) => println!(
            "largest context that fits ({} stream(s)): {c} tokens",
            args.streams
        ),
        None => println!("no context fits with every weight on the GPU"),
    }
    if let Some(n) = f.max_streams {
        println!("streams that fit at {} tokens each: {n}", args.ctx);
    }
    if let Some(pl) = f.placement.as_ref().filter(|p| p.cpu_moe_layers > 0) {
        println!(
            "with the experts of {} layers in host memory (--n-cpu-moe {}): GPU {}, host {}",
            pl.cpu_moe_layers,
            pl.cpu_moe_layers,
            gib(pl.plan.total_bytes()),
            gib(pl.host_bytes)
        );
        if f.expert_cache.0 > 0 {
            println!(
                "  the spare GPU memory holds a hot-expert cache of {} of those experts ({}; --expert-cache auto)",
                f.expert_cache.0,
                gib(f.expert_cache.1)
            );
        }
        match f.stream {
            Stream::NoHostExperts => {}
            Stream::On { bytes, from_tokens } => println!(
                "  prompt steps of {from_tokens} tokens or more copy them to the GPU a layer at a time ({} set; --stream-experts auto)",
                gib(bytes)
            ),
            Stream::NoRoom { bytes, more_layers } => println!(
                "  no room for a one-layer set ({}) to stream them to the GPU for long prompts{}",
                gib(bytes),
                match more_layers {
                    Some(m) => format!(" (--n-cpu-moe {} would leave room)", pl.cpu_moe_layers + m),
                    None => String::new(),
                }
            ),
        }
    }
    match &f.decode {
        Some(d) => println!(
            "decode: ≈ {:.0} tok/s for one stream at {} tokens of context (an estimate: {:.2} GB per token from the GPU{}, plus {:.2} ms per step as measured on an H200)",
            d.tok_s,
            args.ctx,
            d.device_bytes as f64 / 1e9,
            if d.host_bytes > 0 {
                format!(" and {:.2} GB from host memory at {} GB/s", d.host_bytes as f64 / 1e9, args.host_bandwidth)
            } else {
                String::new()
            },
            STEP_OVERHEAD_S * 1e3
        ),
        None if card.bandwidth_gbs.is_none() => println!("decode: give --bandwidth GB/s for a speed estimate"),
        None => println!("decode: no placement fits, so no estimate"),
    }
    if !f.suggestions.is_empty() {
        println!("what would fit:");
        for s in &f.suggestions {
            println!("  {s}");
        }
    }
}
