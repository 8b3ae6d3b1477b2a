//! `gptoss batch IN.jsonl -o OUT.jsonl`: OpenAI Batch API lines (`custom_id`, `method`, `url`,
//! `body`) or plain `{"messages"}` / `{"prompt"}` lines, run concurrently through the engine's
//! scheduler. One result line per input line (errors per line), written as each finishes; a rerun
//! skips `custom_id`s already in the output (resume). Ends with a summary (latency p50/p95, tok/s).

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use gptoss_server::{ApiError, AppState, ServerConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::serve::{start_engine, EngineArgs};

/// Arguments of `gptoss batch`.
#[derive(Args)]
pub struct BatchArgs {
    /// Input JSONL file.
    input: PathBuf,
    /// Output JSONL file (appended to; lines whose custom_id is already there are skipped).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
    /// Requests in flight at once (default: 2 × --max-seqs).
    #[arg(long, value_parser = crate::source::size_in(1, 1 << 16))]
    concurrency: Option<usize>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

/// One input line, ready to run (or already failed). The body stays its JSON bytes until its turn:
/// a large batch file is not held as parsed values.
struct Job {
    custom_id: String,
    url: String,
    body: Result<Vec<u8>, ApiError>,
}

/// What a finished line reports for the summary.
struct Done {
    line: String,
    ok: bool,
    latency: Duration,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Parses one input line; `n` is its 1-based number (the custom_id of lines that give none); `model`
/// is the served model's name.
fn job(line: &str, n: usize, model: &str) -> Job {
    let fallback = format!("line-{n}");
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return failed(
                fallback,
                ApiError::invalid(format!("line {n}: not valid JSON: {e}")),
            )
        }
    };
    let custom_id = value
        .get("custom_id")
        .and_then(Value::as_str)
        .map_or(fallback, str::to_string);
    let (url, body) = if let Some(body) = value.get("body") {
        let url = value
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("/v1/chat/completions");
        if let Some(m) = value
            .get("method")
            .and_then(Value::as_str)
            .filter(|m| *m != "POST")
        {
            return failed(
                custom_id,
                ApiError::invalid(format!("line {n}: method must be POST, got {m:?}")),
            );
        }
        (url.to_string(), body.clone())
    } else if value.get("messages").is_some() {
        ("/v1/chat/completions".to_string(), value)
    } else if value.get("prompt").is_some() {
        ("/v1/completions".to_string(), value)
    } else {
        let e = ApiError::invalid(format!("line {n}: expected a Batch API line (custom_id, url, body) or {{\"messages\"}} / {{\"prompt\"}}"));
        return failed(custom_id, e);
    };
    Job {
        custom_id,
        url,
        body: request_bytes(body, model),
    }
}

/// The body as the server will read it: the served model (the job runs on `--model`), no streaming.
fn request_bytes(body: Value, model: &str) -> Result<Vec<u8>, ApiError> {
    let Value::Object(mut map) = body else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    map.insert("model".into(), json!(model));
    map.remove("stream");
    // A plain line carries its `custom_id` beside the request's fields: it is the job's, not the body's.
    map.remove("custom_id");
    serde_json::to_vec(&map).map_err(|e| ApiError::internal(e.to_string()))
}

fn failed(custom_id: String, e: ApiError) -> Job {
    Job {
        custom_id,
        url: String::new(),
        body: Err(e),
    }
}

/// Runs one job; the body's `model` is set to the served model (the job runs on `--model`).
async fn run_job(state: Arc<AppState>, job: Job, index: usize) -> Done {
    let started = Instant::now();
    let result = match job.body {
        Ok(body) => gptoss_server::run_endpoint(&state, &job.url, body).await,
        Err(e) => Err(e),
    };
    let latency = started.elapsed();
    let usage = |v: &Value, k: &str| v["usage"][k].as_u64().unwrap_or(0);
    let (ok, response, error, p, c) = match result {
        Ok(v) => {
            let (p, c) = (
                usage(&v, "prompt_tokens").max(usage(&v, "input_tokens")),
                usage(&v, "completion_tokens").max(usage(&v, "output_tokens")),
            );
            (
                true,
                json!({"status_code": 200, "request_id": v["id"], "body": v}),
                Value::Null,
                p,
                c,
            )
        }
        Err(e) => {
            let error = json!({"code": e.code.unwrap_or(e.kind), "message": e.message});
            (
                false,
                json!({"status_code": e.status.as_u16(), "request_id": null, "body": e.to_json()}),
                error,
                0,
                0,
            )
        }
    };
    let line = json!({"id": format!("batch_req_{index}"), "custom_id": job.custom_id, "response": response, "error": error});
    Done {
        line: line.to_string(),
        ok,
        latency,
        prompt_tokens: p,
        completion_tokens: c,
    }
}

/// custom_ids already in the output; a torn last line (an interrupted write) is cut off.
fn finished_ids(path: &Path) -> Result<HashSet<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(HashSet::new());
    };
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(complete as u64)
            .with_context(|| format!("trimming {}", path.display()))?;
    }
    Ok(text[..complete]
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v.get("custom_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect())
}

/// Runs the batch.
pub fn run(args: BatchArgs) -> Result<()> {
    let input = std::fs::File::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let lines: Vec<String> = std::io::BufReader::new(input)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", args.input.display()))?;
    let done_ids = finished_ids(&args.output)?;
    let name = crate::serve::served_name(&args.engine);
    let jobs: Vec<(usize, Job)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, job(l, i + 1, &name)))
        .filter(|(_, j)| !done_ids.contains(&j.custom_id))
        .collect();
    let skipped = lines.iter().filter(|l| !l.trim().is_empty()).count() - jobs.len();
    let started = start_engine(&args.engine)?;
    let concurrency = args.concurrency.unwrap_or(2 * args.engine.max_seqs).max(1);
    let config = ServerConfig {
        max_concurrency: concurrency,
        max_queue: jobs.len(),
        ..ServerConfig::new(started.name.clone())
    };
    let state = AppState::new(started.engine, started.tokenizer, config)
        .context("this vocabulary lacks Harmony's special tokens")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let totals = runtime.block_on(run_jobs(state.clone(), jobs, &args.output, concurrency))?;
    let engine = state.engine_stats();
    let device_peak = engine.device_peak_bytes;
    let drafts = args
        .engine
        .spec
        .speculative
        .map(|_| (engine.drafted_tokens, engine.accepted_tokens));
    let summary = totals.finish(skipped, (device_peak > 0).then_some(device_peak), drafts);
    print_summary(&summary);
    if let Some(path) = &args.summary_json {
        let text = serde_json::to_string_pretty(&summary)? + "\n";
        crate::output::write_atomically(path, text.as_bytes())?;
    }
    Ok(())
}

/// Running totals.
#[derive(Default)]
struct Totals {
    ok: usize,
    failed: usize,
    prompt_tokens: u64,
    completion_tokens: u64,
    latencies: Vec<f64>,
    wall: Duration,
}

async fn run_jobs(
    state: Arc<AppState>,
    jobs: Vec<(usize, Job)>,
    output: &Path,
    concurrency: usize,
) -> Result<Totals> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .with_context(|| format!("opening {}", output.display()))?;
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (tx, mut rx) = mpsc::channel::<Done>(concurrency);
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let feeder = tokio::spawn(async move {
        for (index, job) in jobs {
            let Ok(permit) = gate.clone().acquire_owned().await else {
                return;
            };
            let (state, tx) = (state.clone(), tx.clone());
            tokio::spawn(async move {
                let done = run_job(state, job, index).await;
                drop(permit);
                let _ = tx.send(done).await;
            });
        }
    });
    let start = Instant::now();
    let mut totals = Totals::default();
    while let Some(done) = rx.recv().await {
        writeln!(out, "{}", done.line)
            .and_then(|_| out.flush())
            .with_context(|| format!("writing {}", output.display()))?;
        if done.ok {
            totals.ok += 1
        } else {
            totals.failed += 1
        }
        totals.prompt_tokens += done.prompt_tokens;
        totals.completion_tokens += done.completion_tokens;
        totals.latencies.push(done.latency.as_secs_f64());
        let rate = totals.completion_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{rate:.1} tok/s"));
        bar.inc(1);
    }
    let _ = feeder.await;
    bar.finish_and_clear();
    totals.wall = start.elapsed();
    Ok(totals)
}

impl Totals {
    /// The summary; `drafts` is (drafted, accepted) when speculating.
    fn finish(
        mut self,
        skipped: usize,
        device_peak_bytes: Option<u64>,
        drafts: Option<(u64, u64)>,
    ) -> Value {
        self.latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let n = self.latencies.len();
            if n == 0 {
                0.0
            } else {
                self.latencies[((p * (n - 1) as f64).round() as usize).min(n - 1)]
            }
        };
        let wall = self.wall.as_secs_f64();
        json!({
            "requests": self.ok + self.failed,
            "succeeded": self.ok,
            "failed": self.failed,
            "skipped_already_done": skipped,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.completion_tokens,
            "wall_seconds": wall,
            "generated_tokens_per_second": self.completion_tokens as f64 / wall.max(1e-9),
            "latency_p50_seconds": pct(0.50),
            "latency_p95_seconds": pct(0.95),
            "peak_device_memory_bytes": device_peak_bytes,
            "peak_host_memory_bytes": peak_host_memory_bytes(),
            "drafted_tokens": drafts.map(|d| d.0),
            "accepted_tokens": drafts.map(|d| d.1),
        })
    }
}

/// Peak resident memory of this process (where the CPU backend keeps everything): VmHWM from /proc.
pub(crate) fn peak_host_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mib(bytes: &Value) -> String {
    bytes.as_u64().map_or("-".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

fn print_summary(s: &Value) {
    let rows = [
        ("requests", s["requests"].to_string()),
        ("succeeded", s["succeeded"].to_string()),
        ("failed", s["failed"].to_string()),
        (
            "skipped (already done)",
            s["skipped_already_done"].to_string(),
        ),
        ("prompt tokens", s["prompt_tokens"].to_string()),
        ("generated tokens", s["generated_tokens"].to_string()),
        (
            "wall time",
            format!("{:.2} s", s["wall_seconds"].as_f64().unwrap_or(0.0)),
        ),
        (
            "generated tok/s",
            format!(
                "{:.1}",
                s["generated_tokens_per_second"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "latency p50",
            format!("{:.3} s", s["latency_p50_seconds"].as_f64().unwrap_or(0.0)),
        ),
        (
            "latency p95",
            format!("{:.3} s", s["latency_p95_seconds"].as_f64().unwrap_or(0.0)),
        ),
        ("peak device memory", mib(&s["peak_device_memory_bytes"])),
        ("peak host memory (RSS)", mib(&s["peak_host_memory_bytes"])),
    ];
    for (name, value) in rows {
        println!("{name:<24} {value}");
    }
    if let (Some(drafted), Some(accepted)) =
        (s["drafted_tokens"].as_u64(), s["accepted_tokens"].as_u64())
    {
        let rate = 100.0 * accepted as f64 / drafted.max(1) as f64;
        println!("{:<24} {drafted}", "drafted tokens");
        println!("{:<24} {accepted} ({rate:.1}%)", "accepted tokens");
    }
}
