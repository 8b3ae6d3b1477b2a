//! Issue 12's API checks on the CUDA backend: `gptoss serve`'s server and engine over the tiny fixture model
//! (random weights) on the GPU. Every json_schema answer over several seeds parses and validates, plain,
//! streamed, as strict tool arguments and as Responses `text.format` (the constraint bites on the final
//! channel only; the reasoning runs free); top_logprobs agree with the CPU model's logits (what `gptoss
//! logits` prints) within the CUDA-vs-CPU bar, with the same top tokens; `top_k=1` is greedy; `logit_bias`
//! +100 forces its token; `n=3` gives three choices; frequency, presence and repetition penalties change a
//! sampled continuation; `min_tokens` holds. Constrained rows are sampled on the device under their masks
//! and log-probabilities are taken on the device; bias and penalties take the host path. Also a
//! measurement (`bench_*`, run with the benchmarks): constrained decoding's added time per step with the
//! mask on the device and on the host, at 1 and 64 streams, on gpt-oss's real vocabulary. Needs a GPU: run
//! by `scripts/gpu-check.sh` (`cargo test -p gptoss-cuda --test gpu_api -- --ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use gptoss_cuda::{CudaBackend, CudaOptions};
use gptoss_engine::scheduler::{spawn_engine, EngineConfig, EngineHandle, MaskSampling};
use gptoss_engine::{Batch, Capacity, CpuBackend, Model};
use gptoss_server::{AppState, MetricsAccess, ServerConfig};
use gptoss_tokenizer::Tokenizer;
use serde_json::{json, Value};

#[path = "../../../tests/support/api.rs"]
mod api;

use api::{post, schema, streamed_content, valid, MODEL};

const CTX: usize = 4096;

fn fixture() -> PathBuf {
    // From the repo root (scripts/gpu-check.sh), else relative to this crate.
    [
        PathBuf::from("tests/fixtures/tiny/hf-mxfp4"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap()
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_tokenizer_json(&fixture().join("tokenizer.json")).unwrap())
}

fn capacity(slots: usize, ctx: usize) -> Capacity {
    Capacity {
        max_batch_tokens: 64,
        max_logit_rows: slots,
        slots,
        context_tokens: ctx,
        kv_blocks: None,
    }
}

/// An engine on the CUDA backend over `weights`, as `gptoss serve --device cuda` runs one.
fn cuda_engine(
    weights: gptoss_formats::ModelWeights,
    cap: Capacity,
    mask_sampling: MaskSampling,
) -> EngineHandle {
    cuda_engine_with(
        weights,
        cap,
        mask_sampling,
        CudaOptions::from_env().unwrap(),
    )
}

/// [`cuda_engine`] with these options.
fn cuda_engine_with(
    weights: gptoss_formats::ModelWeights,
    cap: Capacity,
    mask_sampling: MaskSampling,
    options: CudaOptions,
) -> EngineHandle {
    let config = EngineConfig {
        mask_sampling,
        ..EngineConfig::default()
    };
    spawn_engine(
        move || {
            let backend = CudaBackend::new(&options)?;
            Model::new(backend, &weights, cap)
        },
        config,
    )
    .unwrap()
}

/// Starts the server on 127.0.0.1:0; returns its base URL.
async fn serve(engine: EngineHandle, tokenizer: Arc<Tokenizer>, config: ServerConfig) -> String {
    let state = AppState::new(engine, tokenizer, config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gptoss_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

async fn tiny_server() -> String {
    let w = gptoss_formats::load(&fixture()).unwrap().weights;
    let engine = cuda_engine(w, capacity(4, CTX), MaskSampling::Backend);
    serve(engine, tokenizer(), ServerConfig::new(MODEL)).await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs GPU"]
async fn json_schema_answers_and_strict_tool_arguments_validate_on_cuda() {
    let base = tiny_server().await;
    let url = format!("{base}/v1/chat/completions");
    let format = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema(), "strict": true}});
    // Temperature 2: the tiny random model seldom opens the analysis channel (on the CPU, 0 of 16 seeds at
    // temperature 1, 3 of 16 at 2), and a reasoned answer shows the constraint leaves the reasoning free.
    let (mut reasoned, seeds) = (0, 16);
    for seed in 0..seeds {
        let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "Describe a person."}],
            "seed": seed, "temperature": 2.0, "max_tokens": 3000, "response_format": format});
        let (status, body) = post(&url, &req).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(content)
            .unwrap_or_else(|e| panic!("seed {seed}: {content:?}: {e}"));
        assert!(valid(&parsed), "seed {seed}: {parsed}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{body}");
        reasoned += usize::from(
            v["choices"][0]["message"]["reasoning_content"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
        );
    }
    println!("json_schema on cuda: {seeds} of {seeds} answers validate, {reasoned} with free reasoning first");
    assert!(reasoned > 0, "no seed reasoned before its answer");
    for seed in 10..12 {
        let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "Describe a person."}],
            "seed": seed, "max_tokens": 3000, "stream": true, "response_format": format});
        let (status, body) = post(&url, &req).await;
        assert_eq!(status, 200, "{body}");
        let (content, finish) = streamed_content(&body);
        assert_eq!(finish.as_deref(), Some("stop"), "{body}");
        let parsed: Value =
            serde_json::from_str(&content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
        assert!(valid(&parsed), "{parsed}");
    }
    api::strict_tool_arguments_validate(&base).await;
    api::responses_text_format_validates(&base).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs GPU"]
async fn sampling_controls_work_on_cuda() {
    let base = tiny_server().await;
    api::sampling_controls_work(&base, tokenizer().encode("Q").unwrap()[0]).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs GPU"]
async fn top_logprobs_on_cuda_agree_with_the_cpu_logits() {
    let w = gptoss_formats::load(&fixture()).unwrap().weights;
    // `--exact`: the bar below is the exact kernels' (the prompt's default f16 attention is held to the
    // fixtures' 1e-2 in gpu_model); this checks what the API makes of the logits.
    let mut options = CudaOptions::from_env().unwrap();
    options.exact = true;
    let engine = cuda_engine_with(w.clone(), capacity(4, CTX), MaskSampling::Backend, options);
    let base = serve(engine, tokenizer(), ServerConfig::new(MODEL)).await;
    let req = json!({"model": MODEL, "prompt": "The cat", "max_tokens": 6, "temperature": 0, "logprobs": 5});
    let (s, body) = post(&format!("{base}/v1/completions"), &req).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    let tok = tokenizer();
    let lossy = |u: u32| String::from_utf8_lossy(tok.token_bytes(u).unwrap()).into_owned();
    let mut ids = tok.encode("The cat").unwrap();
    let mut cpu = Model::new(CpuBackend, &w, capacity(1, CTX)).unwrap();
    let mut worst = 0f64;
    let got_tokens = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(got_tokens.len(), 6, "{body}");
    for (i, got) in got_tokens.iter().enumerate() {
        cpu.forward(&Batch::single(&ids, 0, cpu.solo_table()))
            .unwrap();
        let logits = cpu.logits(1).unwrap();
        let (_, top) = gptoss_engine::sampler::log_softmax_top(&logits, 5);
        // gpu_model's bar: CUDA logits within 1e-4 of the row's largest |logit| (f32 KV); a log-probability
        // is a logit less the log-sum-exp, so twice that.
        let scale = logits.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        let bar = 2e-4 * scale;
        let (best, best_lp) = top[0];
        let d = (got.as_f64().unwrap() - best_lp as f64).abs();
        worst = worst.max(d / scale);
        assert!(d <= bar, "position {i}: {got} vs {best_lp} (bar {bar:.1e})");
        assert_eq!(
            lp["tokens"][i].as_str().unwrap(),
            lossy(best),
            "position {i}"
        );
        // The same top tokens (keyed by text, as OpenAI's), with values within the bar.
        let tops = lp["top_logprobs"][i].as_object().unwrap();
        let texts: std::collections::BTreeSet<String> =
            top.iter().map(|&(t, _)| lossy(t)).collect();
        assert_eq!(
            tops.keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            texts,
            "position {i}"
        );
        for &(t, l) in &top {
            let text = lossy(t);
            let same_text = top.iter().filter(|&&(u, _)| lossy(u) == text).count();
            let d = (tops[&text].as_f64().unwrap() - l as f64).abs();
            assert!(
                same_text > 1 || d <= bar,
                "position {i} {text:?}: {d:.2e} (bar {bar:.1e})"
            );
        }
        ids.push(best);
    }
    println!(
        "top_logprobs on cuda vs cpu: worst |d logprob| / max |logit| {worst:.2e} over 6 positions"
    );
    // Chat with a schema and logprobs (mask and log-probabilities on the device): the answer validates and
    // the entries spell it.
    let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000, "seed": 1,
        "logprobs": true, "top_logprobs": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema()}}});
    let (s, body) = post(&format!("{base}/v1/chat/completions"), &req).await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(valid(&serde_json::from_str(content).unwrap()), "{content}");
    let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|e| {
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), content);
    assert!(entries
        .iter()
        .all(|e| e["top_logprobs"].as_array().unwrap().len() == 2
            && e["logprob"].as_f64().unwrap() <= 0.0));
}

/// Constrained decoding's added time per step, the mask sampled on the device (`MaskSampling::Backend`)
/// against the host path (`MaskSampling::Host`: each constrained row read back, 0.8 MB, masked and sampled
/// on the host): `/v1/completions` with a JSON schema (every token masked) and without, greedy, 48 tokens,
/// 1 and 64 streams, three rounds; the tiny fixture's layers with gpt-oss's real vocabulary (201,088 rows,
/// random weights), so each logit row is as wide as the real model's. Prints `BENCH mask ...` lines.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement on a GPU: prints per-step times, asserts only that every request succeeds"]
async fn bench_mask_on_device_against_host() {
    let mut config =
        gptoss_formats::ModelConfig::from_json_file(&fixture().join("config.json")).unwrap();
    config.vocab_size = 201_088;
    let w = gptoss_formats::dummy::dummy_weights(&config, 1);
    let tok = Arc::new(Tokenizer::o200k_harmony().unwrap());
    for mode in [MaskSampling::Backend, MaskSampling::Host] {
        let cap = Capacity {
            max_batch_tokens: 256,
            ..capacity(64, 256)
        };
        let engine = cuda_engine(w.clone(), cap, mode);
        let server = ServerConfig {
            max_concurrency: 64,
            metrics_access: MetricsAccess::Public,
            ..ServerConfig::new("m")
        };
        let base = serve(engine, tok.clone(), server).await;
        api::measure_constrained_inter_token(&base, &format!("BENCH mask {mode:?} ")).await;
    }
}
