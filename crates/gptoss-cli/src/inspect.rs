//! `gptoss inspect`: a checkpoint's detected layout, config, tensor types and bytes, the conversions
//! made at load, the memory the model needs, and (`--convert-to`) what a conversion would write.
//! Tensors are mapped, never read; `--dummy` computes everything from the config without building weights.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gptoss_engine::Capacity;
use gptoss_formats::{LayerType, ModelConfig, ModelWeights};

use crate::source::{dummy_config, DummyModel};

/// Arguments of `gptoss inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// Model directory, .safetensors or .gguf file, or a Hub name ORG/NAME[@REVISION][:QUANT].
    #[arg(required_unless_present = "dummy")]
    path: Option<PathBuf>,
    /// Inspect a dummy model of real shapes instead.
    #[arg(long, value_name = "NAME", conflicts_with = "path")]
    dummy: Option<DummyModel>,
    /// Context length for the GPU memory plan.
    #[arg(long, default_value_t = 8192, value_parser = crate::source::size_in(1, gptoss_engine::MAX_CONTEXT_TOKENS))]
    ctx: usize,
    /// Check the GPU memory plan against this cap (e.g. 16GiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::source::parse_size)]
    max_vram: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also show what `gptoss convert` would write (its --dry-run) for this output format (with --dummy
    /// this builds the random weights, which takes their full size in memory).
    #[arg(long, value_enum, value_name = "FORMAT")]
    convert_to: Option<crate::convert::Target>,
}

/// Stored types: (type, count, bytes).
type TypeTable = Vec<(String, usize, usize)>;

/// What `inspect` reports, gathered from a checkpoint's headers or from a dummy model's config.
struct Report {
    layout: String,
    config: ModelConfig,
    stored: TypeTable,
    canonical: TypeTable,
    notes: Vec<String>,
    /// Bytes of the canonical weights in host memory.
    load_bytes: usize,
    /// Bytes of the weights on the GPU.
    device_bytes: u64,
    /// The loaded weights (a checkpoint's, mapped from its files; none for a dummy model).
    weights: Option<ModelWeights>,
}

/// The report of a dummy model, from its config alone: no weight is built.
fn dummy_report(d: DummyModel) -> Report {
    let config = dummy_config(d);
    let sizes = gptoss_formats::dummy::dummy_sizes(&config);
    Report {
        layout: "dummy (random weights, MXFP4 experts, bf16 dense)".to_string(),
        stored: sizes.types.clone(),
        canonical: sizes.types,
        notes: Vec::new(),
        load_bytes: sizes.size_bytes,
        device_bytes: gptoss_engine::memory::mxfp4_checkpoint_bytes(&config),
        config,
        weights: None,
    }
}

/// The report of a checkpoint: its tensors are mapped, not read.
fn checkpoint_report(path: &std::path::Path) -> Result<Report> {
    let path = &crate::hub::model_path(path, None)?;
    let ckpt =
        gptoss_formats::load(path).with_context(|| format!("inspecting {}", path.display()))?;
    let mut table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in &ckpt.source_tensors {
        let e = table.entry(t.dtype.clone()).or_default();
        e.0 += 1;
        e.1 += t.size_bytes;
    }
    let w = ckpt.weights;
    Ok(Report {
        layout: format!("{:?}", ckpt.layout),
        config: w.config.clone(),
        stored: table.into_iter().map(|(k, (n, b))| (k, n, b)).collect(),
        canonical: canonical_types(&w),
        notes: ckpt.notes,
        load_bytes: w.size_bytes(),
        device_bytes: gptoss_engine::memory::weights_bytes(&w),
        weights: Some(w),
    })
}

/// Prints the report.
pub fn run(args: InspectArgs) -> Result<()> {
    let r = match (&args.path, args.dummy) {
        (_, Some(d)) => dummy_report(d),
        (Some(path), None) => checkpoint_report(path)?,
        (None, None) => anyhow::bail!("give a PATH or --dummy NAME"),
    };
    let capacity = Capacity {
        max_batch_tokens: 512,
        max_logit_rows: 1,
        slots: 1,
        context_tokens: args.ctx,
        kv_blocks: None,
    };
    let plan = gptoss_engine::memory::plan(
        &r.config,
        r.device_bytes,
        &capacity,
        gptoss_engine::memory::KvPrecision::F32,
    )?;
    let fits = args.max_vram.map(|cap| plan.total_bytes() <= cap);
    if args.json {
        let c = &r.config;
        let out = serde_json::json!({
            "layout": r.layout,
            "config": config_json(c),
            "stored_types": r.stored.iter().map(|(t, n, b)| serde_json::json!({"type": t, "tensors": n, "bytes": b})).collect::<Vec<_>>(),
            "loaded_types": r.canonical.iter().map(|(t, n, b)| serde_json::json!({"type": t, "tensors": n, "bytes": b})).collect::<Vec<_>>(),
            "notes": r.notes,
            "weights_bytes": r.load_bytes,
            "gpu_plan": {
                "context_tokens": args.ctx,
                "weights_bytes": plan.weights_bytes,
                "kv_cache_bytes": plan.kv_cache_bytes,
                "kv_blocks": plan.kv_blocks,
                "workspace_bytes": plan.workspace_bytes,
                "total_bytes": plan.total_bytes(),
                "max_vram_bytes": args.max_vram,
                "fits": fits,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("layout:  {}", r.layout);
    print_config(&r.config);
    println!("\nstored tensors:");
    print_table(&r.stored);
    println!("\nloaded as:");
    print_table(&r.canonical);
    for n in &r.notes {
        println!("note: {n}");
    }
    println!("\nweights in host memory: {}", human_bytes(r.load_bytes));
    println!(
        "GPU plan at {} tokens of context (f32 KV): {plan}",
        args.ctx
    );
    if let (Some(cap), Some(fits)) = (args.max_vram, fits) {
        let verdict = if fits { "fits" } else { "does NOT fit" };
        println!("  {verdict} in --max-vram {}", human_bytes(cap as usize));
    }
    if let Some(target) = args.convert_to {
        println!();
        match (&r.weights, args.dummy) {
            (Some(w), _) => crate::convert::print_default_plan(w, target)?,
            (None, Some(d)) => {
                // The conversion plan walks real tensors: build the random weights for it.
                let w = gptoss_formats::dummy::dummy_weights(&dummy_config(d), 0);
                crate::convert::print_default_plan(&w, target)?
            }
            (None, None) => {}
        }
    }
    Ok(())
}

fn canonical_types(w: &ModelWeights) -> TypeTable {
    let mut table: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    w.for_each_tensor(|_, t| {
        let e = table.entry(t.format.describe()).or_default();
        e.0 += 1;
        e.1 += t.size_bytes();
    });
    table.into_iter().map(|(k, (n, b))| (k, n, b)).collect()
}

fn print_table(rows: &TypeTable) {
    println!("  {:<12} {:>8} {:>12}", "type", "tensors", "bytes");
    for (t, n, b) in rows {
        println!("  {t:<12} {n:>8} {:>12}", human_bytes(*b));
    }
}

fn print_config(c: &ModelConfig) {
    let sliding = c
        .layer_types
        .iter()
        .filter(|t| **t == LayerType::Sliding)
        .count();
    println!(
        "model:   {} layers ({} sliding window {}, {} full), hidden {}, {} experts (top {}), expert width {}",
        c.num_hidden_layers,
        sliding,
        c.sliding_window,
        c.num_hidden_layers - sliding,
        c.hidden_size,
        c.num_local_experts,
        c.num_experts_per_tok,
        c.intermediate_size
    );
    println!(
        "attn:    {} query heads, {} kv heads, head dim {}, vocab {}",
        c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size
    );
    match &c.yarn {
        Some(y) => println!(
            "rope:    theta {}, YaRN factor {} over {} tokens (beta {}/{}), max context {}",
            c.rope_theta,
            y.factor,
            y.original_max_position_embeddings,
            y.beta_fast,
            y.beta_slow,
            c.max_position_embeddings
        ),
        None => println!(
            "rope:    theta {}, no scaling, max context {}",
            c.rope_theta, c.max_position_embeddings
        ),
    }
}

fn config_json(c: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "num_hidden_layers": c.num_hidden_layers,
        "num_local_experts": c.num_local_experts,
        "num_experts_per_tok": c.num_experts_per_tok,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "head_dim": c.head_dim,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "sliding_window": c.sliding_window,
        "layer_types": c.layer_types.iter().map(|t| match t { LayerType::Sliding => "sliding_attention", LayerType::Full => "full_attention" }).collect::<Vec<_>>(),
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
    })
}

/// `12.3 GiB`-style sizes.
pub fn human_bytes(b: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}
