//! `gptoss bench`: llama-bench-style throughput of the engine users get. Prefill (`ppN`: one N-token
//! prompt timed to its first token), decode (`tgN`: N tokens after a short prompt, timed from the first
//! to the last) and batched decode (`batchN`: N streams at once, all their tokens over the wall time)
//! all go through the continuous-batching scheduler that `serve` and `batch` drive, so the numbers are
//! theirs. Prompts are random ordinary tokens from `--seed`; each test has one uncounted warm-up run.

mod measure;
mod prompts;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use gptoss_engine::scheduler::{EngineConfig, PrefixCaching, Speculative};
use gptoss_engine::{Capacity, BLOCK_POSITIONS};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output;
use crate::serve::{self, DEFAULT_BATCH_TOKENS};
use crate::source::{self, ModelArgs};
use crate::spec::SpecArgs;
use crate::vocab;

use prompts::TokenPool;
use report::{Row, Setup};

/// Arguments of `gptoss bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prefill tests: prompt lengths, comma-separated (pp512 runs one 512-token prompt to its first
    /// token).
    #[arg(short = 'p', long = "prompt-tokens", value_name = "LIST", value_parser = parse_counts, default_value = "512,2048")]
    prompt_tokens: Counts,
    /// Decode tests: tokens generated after the short prompt, comma-separated (tg128).
    #[arg(short = 'n', long = "gen-tokens", value_name = "LIST", value_parser = parse_counts, default_value = "128")]
    gen_tokens: Counts,
    /// Batched-decode tests: concurrent streams, comma-separated (batch16: 16 requests at once).
    #[arg(long, value_name = "LIST", value_parser = parse_counts, default_value = "1,4,16,64")]
    streams: Counts,
    /// New tokens per stream in the batched-decode tests.
    #[arg(long, alias = "streams-tokens", value_name = "N", value_parser = at_least_one, default_value_t = 256)]
    stream_tokens: usize,
    /// Prompt length of the decode and batched-decode tests.
    #[arg(long, value_name = "N", value_parser = at_least_one, default_value_t = 20)]
    short_prompt: usize,
    /// Which kinds of test to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pp,tg,batch")]
    tests: Vec<TestKind>,
    /// Counted runs of each test (after one warm-up run that is not counted).
    #[arg(short = 'r', long = "repetitions", value_name = "N", value_parser = at_least_one, default_value_t = 3)]
    reps: usize,
    /// Token budget of one engine step, as `serve --batch-tokens`: a longer prompt is prefilled in
    /// chunks of this many tokens.
    #[arg(long, value_parser = at_least_one, default_value_t = DEFAULT_BATCH_TOKENS)]
    batch_tokens: usize,
    /// Sequences the engine runs at once, as `serve --max-seqs` (default: the largest --streams, so
    /// every stream of a batched test runs at once).
    #[arg(long, value_parser = at_least_one)]
    max_seqs: Option<usize>,
    /// Full-attention KV pool in blocks of 16 positions (default: what the largest test needs, so no
    /// test is preempted and the peak memory is what the tests use).
    #[arg(long, value_parser = at_least_one)]
    kv_blocks: Option<usize>,
    /// Seed of the random prompt tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON rows to this file (whole or not at all), whatever stdout shows.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// Speculative decoding, as `serve` runs it.
    #[command(flatten)]
    spec: SpecArgs,
}

/// A kind of test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TestKind {
    /// Prefill (`-p`).
    Pp,
    /// Single-stream decode (`-n`).
    Tg,
    /// Batched decode (`--streams`).
    Batch,
}

/// A list of counts, each at least 1.
#[derive(Clone, Debug)]
pub struct Counts(Vec<usize>);

fn parse_counts(text: &str) -> Result<Counts, String> {
    if text.trim().is_empty() {
        return Err(
            "expected a comma-separated list of counts such as 512,2048, got nothing".into(),
        );
    }
    text.split(',')
        .map(|s| at_least_one(s.trim()))
        .collect::<Result<_, _>>()
        .map(Counts)
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("each count must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{text}` is not a count (expected a whole number ≥ 1)"
        )),
    }
}

/// One test of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Test {
    /// One prompt, timed to its first token.
    Prefill { prompt_tokens: usize },
    /// One short prompt, then `new_tokens` decode steps timed from the first token to the last.
    Decode {
        prompt_tokens: usize,
        new_tokens: usize,
    },
    /// `streams` short prompts at once, `new_tokens` each, all tokens over the wall time.
    Batch {
        streams: usize,
        prompt_tokens: usize,
        new_tokens: usize,
    },
}

impl Test {
    /// The name in the table: `pp512`, `tg128`, `batch16`.
    pub fn name(&self) -> String {
        match *self {
            Test::Prefill { prompt_tokens } => format!("pp{prompt_tokens}"),
            Test::Decode { new_tokens, .. } => format!("tg{new_tokens}"),
            Test::Batch { streams, .. } => format!("batch{streams}"),
        }
    }

    /// Requests of one run, prompt tokens of each, and the new tokens each asks for.
    pub fn shape(&self) -> (usize, usize, usize) {
        match *self {
            Test::Prefill { prompt_tokens } => (1, prompt_tokens, 1),
            // The first token comes from the prefill; the `new_tokens` after it are the decode steps.
            Test::Decode {
                prompt_tokens,
                new_tokens,
            } => (1, prompt_tokens, new_tokens + 1),
            Test::Batch {
                streams,
                prompt_tokens,
                new_tokens,
            } => (streams, prompt_tokens, new_tokens),
        }
    }

    /// Tokens one run's rate counts.
    pub fn counted_tokens(&self) -> usize {
        match *self {
            Test::Prefill { prompt_tokens } => prompt_tokens,
            Test::Decode { new_tokens, .. } => new_tokens,
            Test::Batch {
                streams,
                new_tokens,
                ..
            } => streams * new_tokens,
        }
    }

    /// Positions one request reaches (prompt and every token it is asked for).
    fn positions(&self) -> usize {
        let (_, prompt, new) = self.shape();
        prompt + new
    }

    /// Full-attention KV blocks the test holds at once with `slots` sequences running.
    fn kv_blocks(&self, slots: usize) -> usize {
        let (streams, _, _) = self.shape();
        streams.min(slots) * self.positions().div_ceil(BLOCK_POSITIONS)
    }

    /// The flags that set this test's length, for errors.
    fn flags(&self) -> String {
        match *self {
            Test::Prefill { prompt_tokens } => format!("-p {prompt_tokens}"),
            Test::Decode {
                prompt_tokens,
                new_tokens,
            } => format!("-n {new_tokens} after --short-prompt {prompt_tokens}"),
            Test::Batch {
                prompt_tokens,
                new_tokens,
                ..
            } => format!("--stream-tokens {new_tokens} after --short-prompt {prompt_tokens}"),
        }
    }
}

/// The tests `args` asks for, in table order, each checked against `--ctx`.
fn plan(args: &BenchArgs) -> Result<Vec<Test>> {
    let wants = |k: TestKind| args.tests.contains(&k);
    let mut tests = Vec::new();
    if wants(TestKind::Pp) {
        tests.extend(
            args.prompt_tokens
                .0
                .iter()
                .map(|&prompt_tokens| Test::Prefill { prompt_tokens }),
        );
    }
    if wants(TestKind::Tg) {
        tests.extend(args.gen_tokens.0.iter().map(|&new_tokens| Test::Decode {
            prompt_tokens: args.short_prompt,
            new_tokens,
        }));
    }
    if wants(TestKind::Batch) {
        tests.extend(args.streams.0.iter().map(|&streams| Test::Batch {
            streams,
            prompt_tokens: args.short_prompt,
            new_tokens: args.stream_tokens,
        }));
    }
    if tests.is_empty() {
        bail!("--tests selects no test");
    }
    let ctx = args.model.ctx;
    if let Some(t) = tests.iter().find(|t| t.positions() > ctx) {
        bail!(
            "{}: {} needs {} positions (prompt and new tokens) but --ctx is {ctx}; raise --ctx or shorten the test",
            t.flags(),
            t.name(),
            t.positions()
        );
    }
    Ok(tests)
}

/// The engine's settings; the same as `serve` would use for these flags.
fn engine_config(speculative: Speculative) -> EngineConfig {
    EngineConfig {
        max_batch_tokens: None,
        mask_sampling: Default::default(),
        // Every counted run repeats its warm-up's prompts: with the prefix cache on, prefill would measure
        // a cache hit (pp512 read 24k tok/s on the H200 where it computes at 6k). llama-bench measures
        // uncached work too.
        prefix_caching: PrefixCaching::Off,
        speculative,
    }
}

/// Runs every test and prints the table (or the JSON rows).
pub fn run(args: BenchArgs) -> Result<()> {
    let tests = plan(&args)?;
    // Checked before the minutes of measuring, not after.
    if let Some(dir) = args.json_out.as_ref().and_then(|p| p.parent()) {
        if !(dir.as_os_str().is_empty() || dir.is_dir()) {
            bail!("--json-out: the directory {} does not exist", dir.display());
        }
    }
    let largest_streams = tests.iter().map(|t| t.shape().0).max().unwrap_or(1);
    let slots = args.max_seqs.unwrap_or(largest_streams);
    let kv_blocks = args
        .kv_blocks
        .unwrap_or_else(|| tests.iter().map(|t| t.kv_blocks(slots)).max().unwrap_or(1));
    let speculative = args.spec.speculative()?;
    let capacity = Capacity {
        max_batch_tokens: args.batch_tokens,
        max_logit_rows: speculative.logit_rows(slots, args.batch_tokens),
        slots,
        context_tokens: args.model.ctx,
        kv_blocks: Some(kv_blocks),
    };
    let bar = progress_bar(tests.len() * (args.reps + 1));
    bar.set_message("loading the model");
    let load_start = Instant::now();
    let loaded = source::load(&args.model)?;
    let read = load_start.elapsed();
    let tokenizer = vocab::tokenizer_for(&loaded)?;
    let pool = TokenPool::new(&tokenizer, loaded.weights.config.vocab_size)?;
    let build_start = Instant::now();
    let started = serve::spawn_on_device(
        &args.model,
        loaded.weights,
        capacity,
        engine_config(speculative),
    )?;
    let setup = Setup {
        model: serve::default_name(&args.model),
        device: started.device,
        kv_cache: args
            .model
            .kv_cache
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string()),
        batch_tokens: args.batch_tokens,
        max_seqs: slots,
        kv_blocks,
        seed: args.seed,
        load_seconds: (read + build_start.elapsed()).as_secs_f64(),
    };
    let mut rows = Vec::with_capacity(tests.len());
    for test in &tests {
        let measured = measure::measure(&started.engine, test, &pool, &args, &bar)?;
        let row = Row::new(&setup, test, measured);
        if bar.is_hidden() {
            // No terminal to draw on (a log, a remote run): one line per finished test instead.
            eprintln!(
                "bench: {} {:.2} t/s (1 warm-up + {} runs)",
                row.test, row.tokens_per_second, row.reps
            );
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&rows)?;
    if let Some(path) = &args.json_out {
        output::write_atomically(path, format!("{json}\n").as_bytes())?;
    }
    if args.json {
        println!("{json}");
    } else {
        report::print_table(&rows, &setup, &args);
    }
    Ok(())
}

/// A progress line on stderr (drawn only on a terminal) counting runs, warm-ups included.
fn progress_bar(runs: usize) -> ProgressBar {
    let bar = ProgressBar::new(runs as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} bench {msg}  [{pos}/{len} runs, {elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let argv = ["bench", "--dummy", "gpt-oss-20b"].iter().chain(extra);
        Cli::try_parse_from(argv).unwrap().bench
    }

    #[test]
    fn counts_parse_and_reject_zero_and_empty() {
        assert_eq!(parse_counts("512, 2048").unwrap().0, vec![512, 2048]);
        assert!(parse_counts("").unwrap_err().contains("got nothing"));
        assert!(parse_counts("4,0").unwrap_err().contains("at least 1"));
        assert!(parse_counts("4,x").unwrap_err().contains("`x`"));
    }

    #[test]
    fn default_plan_is_the_issue_table() {
        let names: Vec<String> = plan(&args(&[])).unwrap().iter().map(Test::name).collect();
        assert_eq!(
            names,
            ["pp512", "pp2048", "tg128", "batch1", "batch4", "batch16", "batch64"]
        );
    }

    #[test]
    fn shapes_and_counted_tokens() {
        let tests = plan(&args(&[
            "-p",
            "16",
            "-n",
            "8",
            "--streams",
            "3",
            "--short-prompt",
            "5",
            "--stream-tokens",
            "7",
        ]))
        .unwrap();
        let shapes: Vec<_> = tests
            .iter()
            .map(|t| (t.shape(), t.counted_tokens()))
            .collect();
        // tg8 asks for 9 tokens: the prefill's token, then the 8 timed decode steps.
        assert_eq!(shapes, [((1, 16, 1), 16), ((1, 5, 9), 8), ((3, 5, 7), 21)]);
        // 3 streams of 12 positions in blocks of 16 (one each) when 2 run at once.
        assert_eq!(tests[2].kv_blocks(2), 2);
        assert_eq!(tests[0].kv_blocks(2), 2); // 17 positions
    }

    #[test]
    fn a_test_longer_than_the_context_names_its_flags() {
        let e = plan(&args(&["-p", "600", "--ctx", "512"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("-p 600") && e.contains("--ctx is 512"), "{e}");
        let e = plan(&args(&["--tests", "tg", "-n", "500", "--ctx", "512"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("-n 500") && e.contains("521 positions"), "{e}");
        // Exactly the context fits.
        assert!(plan(&args(&["--tests", "pp", "-p", "511", "--ctx", "512"])).is_ok());
    }
}
