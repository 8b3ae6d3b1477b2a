//! The benchmark's results: one [`Row`] per test (mean ± sample sd over the counted runs), printed
//! as an aligned Markdown table like llama-bench's, or as a JSON array of rows with `--json`.

use serde::Serialize;

use super::measure::Measured;
use super::{BenchArgs, Test};
use crate::inspect::human_bytes;

/// What every row shares: the model, the engine's settings and the load time.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Setup {
    /// The checkpoint's directory or file name, or the dummy's name.
    pub model: String,
    /// The backend that ran (`cpu`, `cuda`).
    pub device: &'static str,
    /// `--kv-cache` (the CPU backend always keeps f32).
    pub kv_cache: String,
    /// The step token budget.
    pub batch_tokens: usize,
    /// Engine slots.
    pub max_seqs: usize,
    /// Full-attention KV blocks in the pool.
    pub kv_blocks: usize,
    /// Seed of the prompt tokens.
    pub seed: u64,
    /// Reading (or generating) the weights and building the model on the device.
    pub load_seconds: f64,
}

/// One test's result.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// `pp512`, `tg128`, `batch16`.
    pub test: String,
    /// Prompt tokens of each request.
    pub prompt_tokens: usize,
    /// Requests run at once.
    pub streams: usize,
    /// Tokens one run's rate counts (prompt tokens for pp, decoded tokens for tg, all streams' new
    /// tokens for batch).
    pub tokens: usize,
    /// Counted runs.
    pub reps: usize,
    /// Mean over the runs of tokens / seconds.
    pub tokens_per_second: f64,
    /// Sample standard deviation of tokens_per_second (`null` with one run).
    pub sd: Option<f64>,
    /// Mean over the runs of 1000 × seconds / tokens.
    pub ms_per_token: f64,
    /// Mean seconds of one run.
    pub seconds: f64,
    /// Seconds of each run.
    pub samples_seconds: Vec<f64>,
    /// tokens / seconds of each run.
    pub samples_tokens_per_second: Vec<f64>,
    /// Sequences preempted during the test (0 unless --kv-blocks is too small).
    pub preemptions: u64,
    /// Prompt tokens served from the prefix cache (0: every run computes its prompt).
    pub prefix_cached_tokens: u64,
    /// Peak device memory after this test (`null` on the CPU).
    pub peak_device_bytes: Option<u64>,
    /// Peak resident host memory after this test (VmHWM).
    pub peak_host_bytes: Option<u64>,
    /// Experts the hot-expert cache holds (0 without one).
    pub expert_cache_slots: usize,
    /// Hits over routed pairs of host-expert layers during the test, warm-up included (`null` without
    /// a cache).
    pub expert_cache_hit_rate: Option<f64>,
    /// Host-expert layers whose experts were streamed to the GPU for the test's big steps, warm-up
    /// included (0 without streaming or host experts).
    pub streamed_layers: u64,
    #[serde(flatten)]
    setup: Setup,
}

impl Row {
    /// The row of `test` from its runs.
    pub fn new(setup: &Setup, test: &Test, m: Measured) -> Row {
        let (streams, prompt_tokens, _) = test.shape();
        let tokens = test.counted_tokens();
        let rates: Vec<f64> = m.seconds.iter().map(|s| tokens as f64 / s).collect();
        let ms: Vec<f64> = m
            .seconds
            .iter()
            .map(|s| 1000.0 * s / tokens as f64)
            .collect();
        Row {
            test: test.name(),
            prompt_tokens,
            streams,
            tokens,
            reps: m.seconds.len(),
            tokens_per_second: mean(&rates),
            sd: sample_sd(&rates),
            ms_per_token: mean(&ms),
            seconds: mean(&m.seconds),
            samples_seconds: m.seconds,
            samples_tokens_per_second: rates,
            preemptions: m.preemptions,
            prefix_cached_tokens: m.prefix_cached_tokens,
            peak_device_bytes: m.peak_device_bytes,
            peak_host_bytes: m.peak_host_bytes,
            expert_cache_slots: m.expert_cache.slots,
            expert_cache_hit_rate: (m.expert_cache.slots > 0).then(|| m.expert_cache.hit_rate()),
            streamed_layers: m.streamed_layers,
            setup: setup.clone(),
        }
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The sample (n − 1) standard deviation; `None` for fewer than two values.
fn sample_sd(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64;
    Some(var.sqrt())
}

/// Prints the rows as a Markdown table, then the settings and memory under it.
pub(crate) fn print_table(rows: &[Row], setup: &Setup, args: &BenchArgs) {
    let header = ["model", "device", "test", "t/s", "ms/token"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let rate = match r.sd {
                Some(sd) => format!("{:.2} ± {sd:.2}", r.tokens_per_second),
                None => format!("{:.2}", r.tokens_per_second),
            };
            [
                setup.model.clone(),
                setup.device.to_string(),
                r.test.clone(),
                rate,
                format!("{:.3}", r.ms_per_token),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Text columns left-aligned, numbers right-aligned (`---:` in Markdown).
    let right = |c: usize| c >= 3;
    let line = |row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, &w))| pad(s, w, right(c)))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    println!("{}", line(&header.map(String::from)));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, &w)| {
            if right(c) {
                format!("{}:", "-".repeat(w.max(2) - 1))
            } else {
                "-".repeat(w)
            }
        })
        .collect();
    println!("| {} |", rule.join(" | "));
    for row in &cells {
        println!("{}", line(row));
    }
    let last = rows.last();
    let memory = |b: Option<u64>| b.map_or_else(|| "-".to_string(), |b| human_bytes(b as usize));
    println!();
    println!(
        "load {:.3} s · peak device memory {} · peak host memory (RSS) {}",
        setup.load_seconds,
        memory(last.and_then(|r| r.peak_device_bytes)),
        memory(last.and_then(|r| r.peak_host_bytes)),
    );
    let cached: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{} {:.1}%",
                r.test,
                100.0 * r.expert_cache_hit_rate?
            ))
        })
        .collect();
    if let (false, Some(r)) = (cached.is_empty(), last) {
        println!(
            "expert cache ({} experts) hit rate: {}",
            r.expert_cache_slots,
            cached.join(" · ")
        );
    }
    let streamed: Vec<String> = rows
        .iter()
        .filter(|r| r.streamed_layers > 0)
        .map(|r| format!("{} {}", r.test, r.streamed_layers))
        .collect();
    if !streamed.is_empty() {
        println!(
            "host-expert layers streamed to the GPU (--stream-experts): {}",
            streamed.join(" · ")
        );
    }
    let preemptions: u64 = rows.iter().map(|r| r.preemptions).sum();
    println!(
        "{} runs per test after 1 warm-up · kv cache {} · --batch-tokens {} · --max-seqs {} · --kv-blocks {} · --short-prompt {} · --stream-tokens {} · --seed {} · {preemptions} preemptions",
        args.reps, setup.kv_cache, setup.batch_tokens, setup.max_seqs, setup.kv_blocks, args.short_prompt, args.stream_tokens, setup.seed
    );
}

fn pad(s: &str, width: usize, right: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(s.chars().count()));
    if right {
        format!("{fill}{s}")
    } else {
        format!("{s}{fill}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        assert_eq!(mean(&[2.0, 4.0, 9.0]), 5.0);
        // Deviations -3, -1, 4: squares sum 26, over n - 1 = 2.
        assert!((sample_sd(&[2.0, 4.0, 9.0]).unwrap() - 13f64.sqrt()).abs() < 1e-12);
        assert_eq!(sample_sd(&[5.0]), None);
    }

    #[test]
    fn row_rates_come_from_the_run_times() {
        let setup = Setup {
            model: "m".into(),
            device: "cpu",
            kv_cache: "f32".into(),
            batch_tokens: 512,
            max_seqs: 4,
            kv_blocks: 8,
            seed: 0,
            load_seconds: 1.0,
        };
        let test = Test::Batch {
            streams: 4,
            prompt_tokens: 20,
            new_tokens: 25,
        };
        let m = Measured {
            seconds: vec![1.0, 0.5],
            preemptions: 0,
            prefix_cached_tokens: 0,
            peak_device_bytes: None,
            peak_host_bytes: Some(1 << 20),
            expert_cache: gptoss_engine::ExpertCacheStats::default(),
            streamed_layers: 0,
        };
        let row = Row::new(&setup, &test, m);
        assert_eq!((row.tokens, row.reps, row.streams), (100, 2, 4));
        assert_eq!(row.samples_tokens_per_second, vec![100.0, 200.0]);
        assert_eq!(row.tokens_per_second, 150.0);
        assert!((row.sd.unwrap() - 50f64 * 2f64.sqrt()).abs() < 1e-9);
        assert!((row.ms_per_token - 7.5).abs() < 1e-12);
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["test"], "batch4");
        assert_eq!(v["device"], "cpu");
        assert_eq!(v["expert_cache_hit_rate"], serde_json::Value::Null);
        let cached = Measured {
            seconds: vec![1.0],
            preemptions: 0,
            prefix_cached_tokens: 0,
            peak_device_bytes: None,
            peak_host_bytes: None,
            expert_cache: gptoss_engine::ExpertCacheStats {
                slots: 8,
                hits: 30,
                misses: 90,
                uploads: 9,
                refreshes: 2,
            },
            streamed_layers: 48,
        };
        let v = serde_json::to_value(Row::new(&setup, &test, cached)).unwrap();
        assert_eq!(
            (
                v["expert_cache_slots"].as_u64(),
                v["expert_cache_hit_rate"].as_f64()
            ),
            (Some(8), Some(0.25))
        );
        assert_eq!(v["streamed_layers"].as_u64(), Some(48));
        assert!(v["peak_device_bytes"].is_null());
    }
}
