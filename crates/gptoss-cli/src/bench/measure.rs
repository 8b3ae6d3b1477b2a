//! Running one test through the engine: its requests are submitted together to the scheduler (as
//! concurrent clients of `serve` would be), every token is timestamped on the engine thread as it is
//! sampled, and the test's interval is read off those timestamps.

use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use gptoss_engine::scheduler::{EngineHandle, GenRequest, Output};
use gptoss_engine::{ExpertCacheStats, SamplingParams};
use indicatif::ProgressBar;

use super::prompts::TokenPool;
use super::{BenchArgs, Test};

/// The counted runs of one test, and what the engine reported around them.
pub(crate) struct Measured {
    /// Seconds of each counted run (the warm-up excluded).
    pub seconds: Vec<f64>,
    /// Sequences preempted for lack of KV blocks during the test (warm-up included).
    pub preemptions: u64,
    /// Prompt tokens served from the prefix cache during the test (0: the bench runs with it off).
    pub prefix_cached_tokens: u64,
    /// The CUDA backend's peak device memory so far (`None` on the CPU).
    pub peak_device_bytes: Option<u64>,
    /// This process's peak resident memory so far.
    pub peak_host_bytes: Option<u64>,
    /// The hot-expert cache's counters over the test, warm-up included (zeros without one).
    pub expert_cache: ExpertCacheStats,
    /// Host layers streamed to the GPU over the test, warm-up included (0 without streaming).
    pub streamed_layers: u64,
}

/// When one run's requests were submitted, and when each stream's tokens were sampled.
struct Timeline {
    submitted: Instant,
    tokens: Vec<Vec<Instant>>,
}

/// Runs `test` once to warm up, then `args.reps` counted times, on the same prompts each time.
pub(crate) fn measure(
    engine: &EngineHandle,
    test: &Test,
    pool: &TokenPool,
    args: &BenchArgs,
    bar: &ProgressBar,
) -> Result<Measured> {
    let (streams, prompt_tokens, new_tokens) = test.shape();
    let prompts: Vec<Vec<u32>> = (0..streams as u64)
        .map(|s| pool.prompt(args.seed, s, prompt_tokens))
        .collect();
    let before = engine.stats().snapshot();
    let mut seconds = Vec::with_capacity(args.reps);
    for run in 0..=args.reps {
        let label = match run {
            0 => format!("{} warm-up", test.name()),
            r => format!("{} run {r}/{}", test.name(), args.reps),
        };
        bar.set_message(label.clone());
        let timeline = run_once(engine, &prompts, new_tokens, bar, &label)?;
        let s = interval(test, &timeline)
            .ok_or_else(|| anyhow!("{}: a run produced no tokens", test.name()))?;
        if run > 0 {
            seconds.push(s);
        }
        bar.inc(1);
    }
    let stats = engine.stats().snapshot();
    Ok(Measured {
        seconds,
        preemptions: stats.preemptions - before.preemptions,
        prefix_cached_tokens: stats.prefix_cached_tokens - before.prefix_cached_tokens,
        peak_device_bytes: (stats.device_peak_bytes > 0).then_some(stats.device_peak_bytes),
        peak_host_bytes: crate::batch::peak_host_memory_bytes(),
        expert_cache: stats.since(&before).expert_cache,
        streamed_layers: stats.since(&before).expert_stream.streamed_layers,
    })
}

/// The timed interval of one run, in seconds.
fn interval(test: &Test, t: &Timeline) -> Option<f64> {
    let first_stream = t.tokens.first()?;
    let span = match test {
        Test::Prefill { .. } => first_stream.first()?.duration_since(t.submitted),
        Test::Decode { .. } => first_stream.last()?.duration_since(*first_stream.first()?),
        Test::Batch { .. } => t
            .tokens
            .iter()
            .filter_map(|s| s.last())
            .max()?
            .duration_since(t.submitted),
    };
    Some(span.as_secs_f64())
}

/// Submits one request per prompt, each for exactly `new_tokens` (no stop tokens, greedy), and waits
/// until all have finished.
fn run_once(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    bar: &ProgressBar,
    label: &str,
) -> Result<Timeline> {
    let requests: Vec<GenRequest> = prompts
        .iter()
        .map(|prompt| GenRequest {
            prompt: prompt.clone(),
            sampling: SamplingParams::default(),
            max_new_tokens: new_tokens,
            stop_tokens: Vec::new(),
        })
        .collect();
    let (tx, rx) = mpsc::channel::<(usize, Instant, Output)>();
    let submitted = Instant::now();
    for (i, request) in requests.into_iter().enumerate() {
        let tx = tx.clone();
        // Stamped on the engine thread when the token is sampled, not when this thread reads it.
        engine.submit(
            request,
            Box::new(move |out| tx.send((i, Instant::now(), out)).is_ok()),
        )?;
    }
    drop(tx);
    let mut tokens: Vec<Vec<Instant>> = vec![Vec::with_capacity(new_tokens); prompts.len()];
    let (mut open, mut received, total) = (prompts.len(), 0usize, prompts.len() * new_tokens);
    let mut shown = Instant::now();
    while open > 0 {
        let (i, at, out) = rx
            .recv()
            .map_err(|_| anyhow!("{label}: the engine stopped before the requests finished"))?;
        match out {
            Output::Token(_) => {
                if let Some(stream) = tokens.get_mut(i) {
                    stream.push(at);
                }
                received += 1;
                if shown.elapsed().as_millis() >= 100 {
                    bar.set_message(format!("{label}: {received}/{total} tokens"));
                    shown = Instant::now();
                }
            }
            Output::Finished(f) => {
                open -= 1;
                if f.generated_tokens != new_tokens {
                    bail!(
                        "{label}: stream {i} ended after {} of {new_tokens} tokens ({:?})",
                        f.generated_tokens,
                        f.reason
                    );
                }
            }
            Output::Failed { message, .. } => bail!("{label}: stream {i} failed: {message}"),
            Output::Logprobs(_) => {}
        }
    }
    Ok(Timeline { submitted, tokens })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn intervals_are_read_off_the_right_tokens() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let one = Timeline {
            submitted: t0,
            tokens: vec![vec![at(40), at(50), at(70)]],
        };
        let pp = Test::Prefill { prompt_tokens: 8 };
        let tg = Test::Decode {
            prompt_tokens: 4,
            new_tokens: 2,
        };
        assert!((interval(&pp, &one).unwrap() - 0.040).abs() < 1e-9);
        assert!((interval(&tg, &one).unwrap() - 0.030).abs() < 1e-9);
        let two = Timeline {
            submitted: t0,
            tokens: vec![vec![at(10), at(90)], vec![at(20), at(120)]],
        };
        let batch = Test::Batch {
            streams: 2,
            prompt_tokens: 4,
            new_tokens: 2,
        };
        assert!((interval(&batch, &two).unwrap() - 0.120).abs() < 1e-9);
        let empty = Timeline {
            submitted: t0,
            tokens: vec![vec![]],
        };
        assert!(interval(&tg, &empty).is_none());
    }
}
