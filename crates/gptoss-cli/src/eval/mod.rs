//! `gptoss eval`, the llama-perplexity of gpt-oss: `ppl` scores a text (every token after the first, in
//! windows of `--ctx` advancing by half a window) and `kld` compares a model's next-token distributions
//! with a base model's at every scored position (mean and p99 KL(base ‖ model), top-1 agreement, both
//! perplexities). The base runs first and its logit rows go to a file (`--save-logits` keeps it,
//! `--base-logits` reuses it), so the two models are never loaded together and can run on different
//! devices, settings or machines.

mod logits_file;
mod score;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use gptoss_engine::{Batch, Capacity};
use indicatif::{ProgressBar, ProgressStyle};

use crate::source::{self, DenseWeights, Device, DummyModel, KvCache, Loaded, ModelArgs};
use crate::{device, vocab, with_model};
use logits_file::{Header, Reader, Writer};
use score::{argmax, kl, quantile, windows, Perplexity};

/// `gptoss eval` subcommands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity of a text (llama-perplexity).
    Ppl(PplArgs),
    /// KL divergence of --model's next-token distributions from --base's, top-1 agreement, both perplexities.
    Kld(KldArgs),
}

/// The text evaluated.
#[derive(Args, Clone, Debug)]
pub struct TextArgs {
    /// A plain text file, tokenized without a chat template.
    #[arg(short = 'f', long, value_name = "FILE", conflicts_with = "tokens")]
    file: Option<PathBuf>,
    /// Token ids, comma-separated.
    #[arg(long, value_name = "IDS")]
    tokens: Option<String>,
    /// Evaluate only the first N tokens.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    limit: Option<u32>,
}

/// Arguments of `gptoss eval ppl`.
#[derive(Args)]
pub struct PplArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    text: TextArgs,
    /// Print `{"ppl", "tokens", "scored", "mean_nll", "ctx", "model"}`.
    #[arg(long)]
    json: bool,
    /// Also write the logit rows to FILE, for a later `eval kld --base-logits FILE`.
    #[arg(long, value_name = "FILE")]
    save_logits: Option<PathBuf>,
    /// Tokens per forward step (each step's logits are [N, vocab] f32).
    #[arg(long, default_value_t = 256)]
    batch_tokens: usize,
}

/// The base model of `kld`, with its own device and settings (default: the model's device, the
/// weights as stored, an f32 KV cache).
#[derive(Args, Clone, Debug)]
pub struct BaseArgs {
    /// The base model (the reference): a path or a Hub name.
    #[arg(long, value_name = "MODEL", conflicts_with_all = ["base_dummy", "base_logits"])]
    base: Option<PathBuf>,
    /// Random weights of a real model's shapes as the base.
    #[arg(long, value_name = "NAME", conflicts_with = "base_logits")]
    base_dummy: Option<DummyModel>,
    /// The file of a Hub repo to load as the base.
    #[arg(long, value_name = "FILE", requires = "base")]
    base_hf_file: Option<String>,
    /// Where the base runs (default: --device).
    #[arg(long, value_enum)]
    base_device: Option<Device>,
    /// The base's dense weights (default: as stored).
    #[arg(long, value_enum)]
    base_dense: Option<DenseWeights>,
    /// The base's GPU KV cache (default: f32).
    #[arg(long, value_enum)]
    base_kv_cache: Option<KvCache>,
    /// Base logits saved by `eval ppl --save-logits` or `eval kld --save-logits` (the text and the window
    /// are taken from it).
    #[arg(long, value_name = "FILE")]
    base_logits: Option<PathBuf>,
}

/// Arguments of `gptoss eval kld`.
#[derive(Args)]
pub struct KldArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    base: BaseArgs,
    #[command(flatten)]
    text: TextArgs,
    /// Print `{"kl_mean", "kl_p99", "top1", "ppl_base", "ppl_model", ...}`.
    #[arg(long)]
    json: bool,
    /// Keep the base's logit rows in FILE (for another `eval kld --base-logits FILE`).
    #[arg(long, value_name = "FILE", conflicts_with = "base_logits")]
    save_logits: Option<PathBuf>,
    /// Tokens per forward step (each step's logits are [N, vocab] f32).
    #[arg(long, default_value_t = 256)]
    batch_tokens: usize,
}

/// Runs an eval subcommand.
pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ppl(args) => ppl(args),
        EvalCommand::Kld(args) => kld(args),
    }
}

fn ppl(args: PplArgs) -> Result<()> {
    let loaded = source::load(&args.model)?;
    let tokens = text_tokens(&args.text, &loaded)?
        .context("give the text with --file FILE or --tokens IDS")?;
    let ctx = args.model.ctx;
    let name = model_name(&args.model);
    let mut writer = match &args.save_logits {
        Some(path) => Some(Writer::create(path, &header(&tokens, ctx, &loaded, &name))?),
        None => None,
    };
    let mut score = Perplexity::default();
    let pass = Pass {
        args: &args.model,
        loaded: &loaded,
        tokens: &tokens,
        ctx,
        step: args.batch_tokens,
    };
    pass.run(|row, target| {
        score.add(row, target);
        writer.as_mut().map_or(Ok(()), |w| w.row(row))
    })?;
    if let Some(w) = writer {
        w.finish()?;
    }
    if args.json {
        let out = serde_json::json!({
            "ppl": score.ppl(), "tokens": tokens.len(), "scored": score.count(),
            "mean_nll": score.mean_nll(), "ctx": ctx, "model": name,
        });
        println!("{out}");
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} scored; mean NLL {:.5} nats/token; windows of {ctx}; {name})",
            score.ppl(), tokens.len(), score.count(), score.mean_nll()
        );
    }
    Ok(())
}

fn kld(args: KldArgs) -> Result<()> {
    // The base's rows go to a file first (a temporary one unless --save-logits), so only one model is
    // loaded at a time.
    let temp =
        TempFile(std::env::temp_dir().join(format!("gptoss-kld-{}.logits", std::process::id())));
    let (path, base_ppl) = match (&args.base.base_logits, base_model_args(&args)) {
        (Some(path), _) => (path.clone(), None),
        (None, Some(base_args)) => {
            let path = args.save_logits.clone().unwrap_or_else(|| temp.0.clone());
            let ppl = save_base(
                &base_args,
                &args.text,
                args.model.ctx,
                args.batch_tokens,
                &path,
            )?;
            (path, Some(ppl))
        }
        (None, None) => {
            bail!("give the base with --base MODEL, --base-dummy NAME or --base-logits FILE")
        }
    };
    let mut base = Reader::open(&path)?;
    let header = base.header.clone();
    let loaded = source::load(&args.model)?;
    if let Some(tokens) = text_tokens(&args.text, &loaded)? {
        if tokens != header.tokens {
            bail!("--base-logits {}: computed on another text ({} tokens) than --file/--tokens give ({} tokens)", path.display(), header.tokens.len(), tokens.len());
        }
    }
    if loaded.weights.config.vocab_size != header.vocab {
        bail!("the base's vocabulary has {} entries, --model's {}: the distributions cannot be compared", header.vocab, loaded.weights.config.vocab_size);
    }
    if args.model.ctx != header.ctx {
        eprintln!(
            "[windows of {} tokens, as the base logits were computed]",
            header.ctx
        );
    }
    let mut stats = KlStats::default();
    let mut base_row = Vec::with_capacity(header.vocab);
    let mut base_score = Perplexity::default();
    let pass = Pass {
        args: &args.model,
        loaded: &loaded,
        tokens: &header.tokens,
        ctx: header.ctx,
        step: args.batch_tokens,
    };
    pass.run(|row, target| {
        base.row(&mut base_row)?;
        base_score.add(&base_row, target);
        stats.add(&base_row, row, target);
        Ok(())
    })?;
    let ppl_base = base_ppl.unwrap_or_else(|| base_score.ppl());
    report_kld(&args, &header, &stats, ppl_base);
    Ok(())
}

/// The base's model arguments: the model's, with the base's own source, device and settings.
fn base_model_args(args: &KldArgs) -> Option<ModelArgs> {
    let b = &args.base;
    if b.base.is_none() && b.base_dummy.is_none() {
        return None;
    }
    let mut m = args.model.clone();
    m.model = b.base.clone();
    m.dummy = b.base_dummy;
    m.hf_file = b.base_hf_file.clone();
    m.device = b.base_device.unwrap_or(args.model.device);
    m.dense = b.base_dense.unwrap_or(DenseWeights::Stored);
    m.kv_cache = b.base_kv_cache.unwrap_or(KvCache::F32);
    if m.device != args.model.device {
        // GPU memory settings belong to the model's device.
        m.max_vram = None;
        m.cpu_moe = false;
        m.n_cpu_moe = None;
    }
    Some(m)
}

/// Runs the base over the text, writing its rows to `path`; returns its perplexity.
fn save_base(
    base: &ModelArgs,
    text: &TextArgs,
    ctx: usize,
    step: usize,
    path: &Path,
) -> Result<f64> {
    let loaded = source::load(base).context("loading the base model")?;
    let tokens =
        text_tokens(text, &loaded)?.context("give the text with --file FILE or --tokens IDS")?;
    let name = model_name(base);
    let mut writer = Writer::create(path, &header(&tokens, ctx, &loaded, &name))?;
    let mut score = Perplexity::default();
    let pass = Pass {
        args: base,
        loaded: &loaded,
        tokens: &tokens,
        ctx,
        step,
    };
    pass.run(|row, target| {
        score.add(row, target);
        writer.row(row)
    })?;
    writer.finish()?;
    eprintln!("[base {name}: perplexity {:.4}]", score.ppl());
    Ok(score.ppl())
}

fn header(tokens: &[u32], ctx: usize, loaded: &Loaded, name: &str) -> Header {
    Header {
        tokens: tokens.to_vec(),
        ctx,
        vocab: loaded.weights.config.vocab_size,
        rows: tokens.len().saturating_sub(1),
        model: name.to_string(),
    }
}

/// The KL statistics over the scored positions.
#[derive(Default)]
struct KlStats {
    kl: Vec<f64>,
    same_top1: usize,
    model: Perplexity,
}

impl KlStats {
    fn add(&mut self, base: &[f32], model: &[f32], target: u32) {
        self.kl.push(kl(base, model));
        self.same_top1 += usize::from(argmax(base) == argmax(model));
        self.model.add(model, target);
    }

    fn mean(&self) -> f64 {
        self.kl.iter().sum::<f64>() / self.kl.len().max(1) as f64
    }

    fn top1(&self) -> f64 {
        self.same_top1 as f64 / self.kl.len().max(1) as f64
    }
}

fn report_kld(args: &KldArgs, header: &Header, stats: &KlStats, ppl_base: f64) {
    let (mean, p99) = (stats.mean(), quantile(&stats.kl, 0.99));
    let (median, max) = (quantile(&stats.kl, 0.5), quantile(&stats.kl, 1.0));
    let model = model_name(&args.model);
    if args.json {
        let out = serde_json::json!({
            "kl_mean": mean, "kl_p99": p99, "kl_median": median, "kl_max": max,
            "top1": stats.top1(), "ppl_base": ppl_base, "ppl_model": stats.model.ppl(),
            "tokens": header.tokens.len(), "scored": stats.kl.len(), "ctx": header.ctx,
            "base": header.model, "model": model,
        });
        println!("{out}");
        return;
    }
    println!("base  {}: perplexity {ppl_base:.4}", header.model);
    println!("model {model}: perplexity {:.4}", stats.model.ppl());
    println!("KL(base ‖ model) over {} positions: mean {mean:.6}, median {median:.6}, p99 {p99:.6}, max {max:.6}", stats.kl.len());
    println!("top-1 agreement {:.2}%", 100.0 * stats.top1());
}

/// The text's tokens (`None` when neither --file nor --tokens was given), cut to --limit.
fn text_tokens(text: &TextArgs, loaded: &Loaded) -> Result<Option<Vec<u32>>> {
    let mut tokens = match (&text.file, &text.tokens) {
        (Some(path), _) => {
            let s = std::fs::read_to_string(path)
                .with_context(|| format!("--file {}", path.display()))?;
            vocab::tokenizer_for(loaded)?
                .encode(&s)
                .with_context(|| format!("tokenizing {}", path.display()))?
        }
        (None, Some(ids)) => source::parse_tokens(ids)?,
        (None, None) => return Ok(None),
    };
    if let Some(n) = text.limit {
        tokens.truncate(n as usize);
    }
    if tokens.len() < 2 {
        bail!(
            "the text is {} token(s); perplexity needs at least 2",
            tokens.len()
        );
    }
    let vocab = loaded.weights.config.vocab_size;
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {t} is outside the model's vocabulary of {vocab}");
    }
    Ok(Some(tokens))
}

fn model_name(args: &ModelArgs) -> String {
    let mut name = match (&args.model, args.dummy) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(d)) => format!(
            "--dummy {}",
            d.to_possible_value()
                .map_or_else(|| format!("{d:?}"), |v| v.get_name().to_string())
        ),
        (None, None) => "?".into(),
    };
    if args.dense == DenseWeights::Q8_0 {
        name.push_str(" --dense q8_0");
    }
    if args.kv_cache != KvCache::F32 {
        name.push_str(&format!(" --kv-cache {:?}", args.kv_cache).to_lowercase());
    }
    name
}

/// One model's pass over the text.
struct Pass<'a> {
    args: &'a ModelArgs,
    loaded: &'a Loaded,
    tokens: &'a [u32],
    ctx: usize,
    step: usize,
}

impl Pass<'_> {
    /// Runs every window and calls `sink(logits row, target)` for each scored target, in order.
    fn run(&self, mut sink: impl FnMut(&[f32], u32) -> Result<()>) -> Result<()> {
        if self.ctx < 2 {
            bail!("--ctx {}: a window needs at least 2 tokens", self.ctx);
        }
        let ws = windows(self.tokens.len(), self.ctx);
        let step = self.step.clamp(1, self.ctx);
        let capacity = Capacity {
            max_batch_tokens: step,
            max_logit_rows: step,
            slots: 1,
            kv_blocks: None,
            context_tokens: self.ctx,
        };
        let mut model = device::build_model(self.args, &self.loaded.weights, capacity)?;
        let vocab = self.loaded.weights.config.vocab_size;
        let bar = progress(self.tokens.len().saturating_sub(1) as u64);
        with_model!(&mut model, m => {
            let table = m.solo_table();
            for w in &ws {
                for start in (w.begin..w.end).step_by(step) {
                    let end = (start + step).min(w.end);
                    let mut batch = Batch::single(&self.tokens[start..end], (start - w.begin) as u32, table.clone());
                    // Position p's logits predict token p + 1; this window scores targets first_target..end.
                    let rows: Vec<usize> = (start..end).filter(|&p| p + 1 >= w.first_target && p + 1 < w.end).collect();
                    batch.logit_rows = rows.iter().map(|&p| (p - start) as u32).collect();
                    m.forward(&batch)?;
                    if rows.is_empty() {
                        continue;
                    }
                    let flat = m.logits(rows.len())?;
                    for (row, &p) in flat.chunks_exact(vocab).zip(&rows) {
                        sink(row, self.tokens[p + 1])?;
                    }
                    bar.inc(rows.len() as u64);
                }
            }
        });
        bar.finish_and_clear();
        Ok(())
    }
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("scoring [{bar:30}] {pos}/{len} positions, eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A temporary file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
