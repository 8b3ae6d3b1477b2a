//! `/metrics` in Prometheus text format, through the `metrics` crate and its Prometheus exporter:
//! requests by endpoint and status, tokens, latency histograms (time to first token, inter-token,
//! end to end), queue depth, KV block use, preemptions, speculative drafts, prefix-cache hits and the
//! hot-expert cache's hits (the engine's counters, read at each scrape).
//!
//! Each server owns its recorder (none is installed process-wide), so two servers in one process (the
//! tests) never mix their numbers. Label values come from a fixed set (route templates, status codes),
//! never from what a client sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::metrics::{Counter, Histogram, Recorder};
use gptoss_engine::scheduler::StatsSnapshot;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::generation::Usage;

/// Name, type and help of a series.
type Series = (&'static str, Kind, &'static str);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

const REQUESTS: &str = "gptoss_requests_total";
const TTFT: &str = "gptoss_time_to_first_token_seconds";
const ITL: &str = "gptoss_inter_token_latency_seconds";
const E2E: &str = "gptoss_request_duration_seconds";
const PROMPT_TOKENS: &str = "gptoss_prompt_tokens_total";
const GENERATION_TOKENS: &str = "gptoss_generation_tokens_total";

/// Bucket bounds in seconds. vLLM's bounds (`vllm:time_to_first_token_seconds`,
/// `vllm:inter_token_latency_seconds`, `vllm:e2e_request_latency_seconds`), with finer low buckets for
/// inter-token latency: a GPU decode step of a small batch takes 3–10 ms.
const TTFT_BUCKETS: [f64; 18] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
    40.0, 80.0,
];
const ITL_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    1.0, 2.5, 5.0,
];
const E2E_BUCKETS: [f64; 18] = [
    0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0,
    960.0,
];

/// The histograms and their help.
const HISTOGRAMS: [(&str, &[f64], &str); 3] = [
    (TTFT, &TTFT_BUCKETS, "Time from a request's admission (before its body is read) to its first generated token, per choice."),
    (ITL, &ITL_BUCKETS, "Time between consecutive generated tokens of one choice, as they reach the server."),
    (E2E, &E2E_BUCKETS, "Time from a request's admission to its last token, per finished choice."),
];

/// The series whose values are read at each scrape, in the order of [`Metrics::values`].
#[rustfmt::skip]
const SCRAPED: [Series; 20] = [
    ("gptoss_generation_tokens_per_second", Kind::Gauge, "Generated tokens per second of generation time (submission to end), over finished requests."),
    ("gptoss_queue_depth", Kind::Gauge, "Requests waiting (admission gate and engine queue)."),
    ("gptoss_requests_running", Kind::Gauge, "Requests holding a KV cache slot."),
    ("gptoss_requests_admitted", Kind::Gauge, "Requests past the admission gate."),
    ("gptoss_kv_blocks_used", Kind::Gauge, "Full-attention KV blocks (16 positions of every full layer) held."),
    ("gptoss_kv_blocks_total", Kind::Gauge, "Full-attention KV blocks in the pool."),
    ("gptoss_preemptions_total", Kind::Counter, "Sequences preempted for lack of KV blocks."),
    ("gptoss_device_memory_peak_bytes", Kind::Gauge, "Peak device memory (GPU backends; 0 on the CPU)."),
    ("gptoss_engine_steps_total", Kind::Counter, "Forward steps."),
    ("gptoss_engine_batch_tokens_total", Kind::Counter, "Tokens run through the model (prefill, recompute, decode, drafts)."),
    ("gptoss_spec_draft_tokens_total", Kind::Counter, "Speculative draft tokens verified (0 without --speculative)."),
    ("gptoss_spec_accepted_tokens_total", Kind::Counter, "Speculative draft tokens accepted."),
    ("gptoss_responses_stored", Kind::Gauge, "Responses held for previous_response_id (--responses-store)."),
    ("gptoss_prefix_cache_hits_total", Kind::Counter, "Requests that started from prefix-cached KV blocks."),
    ("gptoss_prefix_cache_hit_tokens_total", Kind::Counter, "Prompt positions whose KV came from the prefix cache."),
    ("gptoss_expert_cache_slots", Kind::Gauge, "Experts of host-memory layers held on the GPU by the hot-expert cache (--expert-cache)."),
    ("gptoss_expert_cache_hits_total", Kind::Counter, "Routed (token, expert) pairs of host-memory layers run on the GPU from the hot-expert cache."),
    ("gptoss_expert_cache_misses_total", Kind::Counter, "Routed (token, expert) pairs of host-memory layers run on the CPU."),
    ("gptoss_expert_cache_hit_rate", Kind::Gauge, "Hits over all routed pairs of host-memory layers since start (0 before any)."),
    ("gptoss_expert_cache_uploads_total", Kind::Counter, "Experts copied into hot-expert cache slots (the initial fill included)."),
];

/// The gauges the server itself knows.
#[derive(Clone, Copy, Debug)]
pub struct ServerGauges {
    /// Requests waiting at the admission gate.
    pub queued: usize,
    /// Requests admitted.
    pub running: usize,
    /// Responses held for `previous_response_id`.
    pub stored_responses: usize,
}

/// The server's recorder and the handles it records through.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    /// Generation time (submission to end) of finished generations, for the tokens-per-second gauge.
    gen_micros: AtomicU64,
    gen_tokens: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder with every series registered (a scrape lists them all, at 0, before any request).
    pub fn new() -> Self {
        let builder = HISTOGRAMS
            .iter()
            .try_fold(PrometheusBuilder::new(), |b, (name, buckets, _)| {
                b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            })
            // Only an empty bucket list is refused, and none of ours is empty.
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let (ttft, itl, e2e, prompt_tokens, generation_tokens) =
            ::metrics::with_local_recorder(&recorder, || {
                for (name, _, help) in HISTOGRAMS {
                    ::metrics::describe_histogram!(name, ::metrics::Unit::Seconds, help);
                }
                ::metrics::describe_counter!(REQUESTS, "HTTP requests by endpoint and status.");
                ::metrics::describe_counter!(
                    PROMPT_TOKENS,
                    "Prompt tokens of finished generations."
                );
                ::metrics::describe_counter!(
                    GENERATION_TOKENS,
                    "Tokens generated by finished generations."
                );
                for (name, kind, help) in SCRAPED {
                    match kind {
                        Kind::Counter => ::metrics::describe_counter!(name, help),
                        Kind::Gauge => ::metrics::describe_gauge!(name, help),
                    }
                }
                (
                    ::metrics::histogram!(TTFT),
                    ::metrics::histogram!(ITL),
                    ::metrics::histogram!(E2E),
                    ::metrics::counter!(PROMPT_TOKENS),
                    ::metrics::counter!(GENERATION_TOKENS),
                )
            });
        Metrics {
            recorder,
            handle,
            ttft,
            itl,
            e2e,
            prompt_tokens,
            generation_tokens,
            gen_micros: AtomicU64::new(0),
            gen_tokens: AtomicU64::new(0),
        }
    }

    /// Counts a finished HTTP request under its route (a fixed set: one series per route and status).
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let key = ::metrics::Key::from_parts(
            REQUESTS,
            vec![
                ::metrics::Label::new("endpoint", endpoint),
                ::metrics::Label::new("status", status.to_string()),
            ],
        );
        self.recorder
            .register_counter(&key, &metadata())
            .increment(1);
    }

    /// Records a time to first token, from the request's admission.
    pub fn first_token(&self, since_admission: Duration) {
        self.ttft.record(since_admission.as_secs_f64());
    }

    /// Records the time since the previous token of the same choice.
    pub fn inter_token(&self, gap: Duration) {
        self.itl.record(gap.as_secs_f64());
    }

    /// Records a finished generation: its tokens, its end-to-end latency (from the request's
    /// admission) and its generation time (from its submission to the engine).
    pub fn finished(&self, usage: Usage, since_admission: Duration, generating: Duration) {
        self.e2e.record(since_admission.as_secs_f64());
        self.prompt_tokens.increment(usage.prompt_tokens as u64);
        self.generation_tokens
            .increment(usage.completion_tokens as u64);
        self.gen_micros
            .fetch_add(generating.as_micros() as u64, Ordering::Relaxed);
        self.gen_tokens
            .fetch_add(usage.completion_tokens as u64, Ordering::Relaxed);
        // Moves the histograms' samples into their buckets, so memory stays bounded between scrapes.
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition.
    pub fn render(&self, engine: &StatsSnapshot, server: ServerGauges) -> String {
        for ((name, kind, _), value) in SCRAPED.iter().zip(self.values(engine, server)) {
            let key = ::metrics::Key::from_static_name(name);
            match kind {
                Kind::Counter => self
                    .recorder
                    .register_counter(&key, &metadata())
                    .absolute(value as u64),
                Kind::Gauge => self.recorder.register_gauge(&key, &metadata()).set(value),
            }
        }
        // The exporter separates metric families by blank lines; one series per line is plainer to
        // read and to parse.
        let text = self.handle.render();
        let mut out = String::with_capacity(text.len());
        for line in text.lines().filter(|l| !l.is_empty()) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The value of each of [`SCRAPED`], in order.
    fn values(&self, engine: &StatsSnapshot, server: ServerGauges) -> [f64; 20] {
        let secs = self.gen_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let tokens = self.gen_tokens.load(Ordering::Relaxed) as f64;
        [
            tokens / secs.max(1e-9),
            (server.queued + engine.gauges.waiting) as f64,
            engine.gauges.running as f64,
            server.running as f64,
            engine.gauges.kv_used_blocks as f64,
            engine.gauges.kv_total_blocks as f64,
            engine.preemptions as f64,
            engine.device_peak_bytes as f64,
            engine.steps as f64,
            engine.batch_tokens as f64,
            engine.drafted_tokens as f64,
            engine.accepted_tokens as f64,
            server.stored_responses as f64,
            engine.prefix_hits as f64,
            engine.prefix_cached_tokens as f64,
            engine.expert_cache.slots as f64,
            engine.expert_cache.hits as f64,
            engine.expert_cache.misses as f64,
            engine.expert_cache.hit_rate(),
            engine.expert_cache.uploads as f64,
        ]
    }
}

/// The metadata the recorder is given (the Prometheus recorder ignores it).
fn metadata() -> ::metrics::Metadata<'static> {
    ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        let gauges = ServerGauges {
            queued: 0,
            running: 0,
            stored_responses: 0,
        };
        m.render(&StatsSnapshot::default(), gauges)
    }

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let m = Metrics::new();
        let empty = scrape(&m);
        assert!(
            empty.contains("gptoss_time_to_first_token_seconds_count 0"),
            "{empty}"
        );
        m.first_token(Duration::from_millis(30));
        m.first_token(Duration::from_millis(300));
        let text = scrape(&m);
        for line in [
            "gptoss_time_to_first_token_seconds_bucket{le=\"0.02\"} 0",
            "gptoss_time_to_first_token_seconds_bucket{le=\"0.04\"} 1",
            "gptoss_time_to_first_token_seconds_bucket{le=\"0.25\"} 1",
            "gptoss_time_to_first_token_seconds_bucket{le=\"0.5\"} 2",
            "gptoss_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2",
            "gptoss_time_to_first_token_seconds_count 2",
            "# TYPE gptoss_time_to_first_token_seconds histogram",
            "# TYPE gptoss_queue_depth gauge",
            "# TYPE gptoss_engine_steps_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("gptoss_time_to_first_token_seconds_sum "))
            .unwrap();
        assert!((sum.parse::<f64>().unwrap() - 0.33).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn expert_cache_series_carry_the_engine_counters() {
        let m = Metrics::new();
        let engine = StatsSnapshot {
            expert_cache: gptoss_engine::ExpertCacheStats {
                slots: 40,
                hits: 300,
                misses: 100,
                uploads: 52,
                refreshes: 7,
            },
            ..StatsSnapshot::default()
        };
        let gauges = ServerGauges {
            queued: 0,
            running: 0,
            stored_responses: 0,
        };
        let text = m.render(&engine, gauges);
        for line in [
            "gptoss_expert_cache_slots 40",
            "gptoss_expert_cache_hits_total 300",
            "gptoss_expert_cache_misses_total 100",
            "gptoss_expert_cache_hit_rate 0.75",
            "gptoss_expert_cache_uploads_total 52",
            "# TYPE gptoss_expert_cache_hits_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn two_recorders_keep_their_own_numbers() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.request("/v1/models", 200);
        a.request("/v1/models", 200);
        assert!(
            scrape(&a).contains("gptoss_requests_total{endpoint=\"/v1/models\",status=\"200\"} 2")
        );
        assert!(!scrape(&b).contains("gptoss_requests_total{"));
    }
}
