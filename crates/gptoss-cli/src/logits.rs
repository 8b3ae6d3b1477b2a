//! `gptoss logits`: the logits of a token sequence as JSON, for checking a checkpoint or a conversion
//! against a reference implementation.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use gptoss_engine::{Batch, Capacity, TraceRecord, TraceSpec};

use crate::source::{self, ModelArgs};
use crate::{device, with_model};

/// Arguments of `gptoss logits`.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long)]
    tokens: String,
    /// Logits of every position, not only the last.
    #[arg(long)]
    all_positions: bool,
    /// Print JSON (the default output form; accepted for symmetry with other commands).
    #[arg(long)]
    json: bool,
    /// Write the logits to this file as a float32 `.npy` array `[positions, vocab]` instead of printing
    /// them (numpy.load reads it; large comparisons stay fast).
    #[arg(long, value_name = "FILE")]
    npy: Option<PathBuf>,
    /// Dump every intermediate of every layer (attn_norm, q, k, v, q_rope, k_rope, attn_out, attn_proj,
    /// attn_resid, mlp_norm, router_logits, experts, expert_weights, moe_out, layer_out) at these
    /// positions (0-based, comma-separated, or `all`) to `--dump-out`, to diff two backends node by node.
    #[arg(long, value_name = "POSITIONS", requires = "dump_out")]
    dump_layers: Option<String>,
    /// Only these nodes of `--dump-layers` (comma-separated names).
    #[arg(long, value_name = "NODES", requires = "dump_layers")]
    dump_nodes: Option<String>,
    /// The JSON file `--dump-layers` writes.
    #[arg(long, value_name = "FILE", requires = "dump_layers")]
    dump_out: Option<PathBuf>,
    /// Run the sequence in steps of at most N tokens (default: one step), through the KV cache as a
    /// generation would; small steps take the backend's decode paths.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    step_tokens: Option<u32>,
}

/// Runs the sequence (in one step, or steps of `--step-tokens`) and prints
/// `{"tokens": [...], "logits": [[...], ...]}`.
pub fn run(args: LogitsArgs) -> Result<()> {
    let tokens = source::parse_tokens(&args.tokens)?;
    if tokens.is_empty() {
        bail!("--tokens: no token ids given");
    }
    let loaded = source::load(&args.model)?;
    let n = tokens.len();
    let step = args.step_tokens.map_or(n, |s| (s as usize).min(n));
    let capacity = Capacity {
        max_batch_tokens: step,
        max_logit_rows: if args.all_positions { step } else { 1 },
        slots: 1,
        kv_blocks: None,
        context_tokens: n,
    };
    let mut traced = match args.dump_layers.as_deref() {
        Some("all") => (0..n as u32).collect(),
        Some(list) => source::parse_tokens(list).context("--dump-layers")?,
        None => Vec::new(),
    };
    traced.sort_unstable();
    traced.dedup();
    let nodes: Vec<&str> = args
        .dump_nodes
        .as_deref()
        .map_or(Vec::new(), |s| s.split(',').map(str::trim).collect());
    if let Some(&p) = traced.iter().find(|&&p| p as usize >= n) {
        bail!("--dump-layers: position {p} is beyond the {n} tokens given");
    }
    let mut model = device::build_model(&args.model, &loaded.weights, capacity)?;
    let device_name = model.device_name();
    let mut flat = Vec::new();
    let mut records: Vec<TraceRecord> = Vec::new();
    with_model!(&mut model, m => {
        let table = m.solo_table();
        for (i, chunk) in tokens.chunks(step).enumerate() {
            let start = (i * step) as u32;
            let mut batch = Batch::single(chunk, start, table.clone());
            let rows = if args.all_positions { chunk.len() } else { 1 };
            if args.all_positions {
                batch.logit_rows = (0..chunk.len() as u32).collect();
            }
            let here: Vec<u32> = traced
                .iter()
                .filter(|&&p| p >= start && ((p - start) as usize) < chunk.len())
                .map(|&p| p - start)
                .collect();
            if here.is_empty() {
                m.forward(&batch)?;
            } else {
                let step_records = m.forward_traced(&batch, TraceSpec { rows: &here, nodes: &nodes })?;
                merge_records(&mut records, step_records);
            }
            if args.all_positions || start as usize + chunk.len() == n {
                flat.extend(m.logits(rows)?);
            }
        }
    });
    let rows = if args.all_positions { n } else { 1 };
    if let Some(path) = &args.dump_out {
        write_dump(path, device_name, &traced, &records)?;
    }
    let vocab = loaded.weights.config.vocab_size;
    if let Some(path) = &args.npy {
        return write_npy(path, &flat, rows, vocab);
    }
    let logits: Vec<&[f32]> = flat.chunks_exact(vocab).collect();
    let out = serde_json::json!({ "tokens": tokens, "logits": logits });
    println!("{out}");
    Ok(())
}

/// Appends the rows of one step's records to those of earlier steps (every step records the same nodes in
/// the same order).
fn merge_records(all: &mut Vec<TraceRecord>, step: Vec<TraceRecord>) {
    if all.is_empty() {
        *all = step;
        return;
    }
    for (a, s) in all.iter_mut().zip(step) {
        a.rows.extend(s.rows);
    }
}

/// `{"device": ..., "positions": [...], "nodes": [{"layer": l|null, "node": name, "rows": [[...], ...]}]}`.
fn write_dump(path: &Path, device: &str, positions: &[u32], records: &[TraceRecord]) -> Result<()> {
    let nodes: Vec<_> = records
        .iter()
        .map(|r| serde_json::json!({ "layer": r.layer, "node": r.node, "rows": r.rows }))
        .collect();
    let out = serde_json::json!({ "device": device, "positions": positions, "nodes": nodes });
    crate::output::write_atomically(path, out.to_string().as_bytes())
        .with_context(|| format!("--dump-out {}", path.display()))
}

/// A float32 little-endian `.npy` (format 1.0) of shape `[rows, vocab]`.
fn write_npy(path: &Path, logits: &[f32], rows: usize, vocab: usize) -> Result<()> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {vocab}), }}");
    // The header (magic, version, length, dict, padding, newline) is a multiple of 64 bytes.
    let unpadded = 10 + dict.len() + 1;
    let header_len = unpadded.div_ceil(64) * 64 - 10;
    let mut bytes = Vec::with_capacity(header_len + 10 + logits.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header_len as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.resize(10 + header_len - 1, b' ');
    bytes.push(b'\n');
    for v in logits {
        bytes.write_all(&v.to_le_bytes())?;
    }
    crate::output::write_atomically(path, &bytes)
        .with_context(|| format!("--npy {}", path.display()))
}
