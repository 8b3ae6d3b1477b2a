//! Structured outputs' host cost per token on gpt-oss's real vocabulary (o200k_harmony, 201,088
//! ids): the grammar's mask and step, and the whole host sampling of a constrained row (mask applied
//! to a logit row, then sampling), for 1 stream and for 64 streams stepped in parallel as the engine
//! does; and end to end through the server, a JSON schema in `response_format` against none, on the
//! tiny model's layers with the real vocabulary. Measurements, ignored by default:
//! `cargo test -p gptoss-server --test mask_cost -- --ignored --nocapture --test-threads 1`.

#[path = "../../../tests/support/api.rs"]
mod api;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use gptoss_engine::logits::{LogitsState, RowContext};
use gptoss_engine::scheduler::{spawn_engine, EngineConfig};
use gptoss_engine::{Capacity, CpuBackend, LogitsOptions, Model, SamplingParams};
use gptoss_server::structured::{Grammars, OutputSchema};
use gptoss_server::{AppState, MetricsAccess, ServerConfig};
use gptoss_tokenizer::Tokenizer;
use rayon::prelude::*;
use serde_json::json;

const ANSWER: &str = "<|channel|>analysis<|message|>The user wants a person. Let me think about a name and an age for them.<|end|><|start|>assistant<|channel|>final<|message|>{\"name\":\"Ann Smith\",\"age\":30,\"ok\":true,\"color\":\"green\",\"tags\":[\"a\",\"bc\"],\"bio\":\"Ann likes long walks on the beach and writing Rust code.\"}<|return|>";

fn tokens(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<|") {
        out.extend(tok.encode(&rest[..start]).unwrap());
        let end = rest[start..].find("|>").unwrap() + start + 2;
        out.push(tok.special_id(&rest[start..end]).unwrap());
        rest = &rest[end..];
    }
    out.extend(tok.encode(rest).unwrap());
    out
}

#[test]
#[ignore = "measurement: prints per-token costs, asserts only that the answer is accepted"]
fn mask_cost_per_token_at_1_and_64_streams() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let vocab = 201_088;
    let t = Instant::now();
    let grammars = Grammars::new(&tok, vocab).unwrap();
    println!(
        "vocabulary setup (once per server): {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let schema = OutputSchema {
        answer: Some((
            json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                "ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
                "tags": {"type": "array", "items": {"type": "string"}}, "bio": {"type": "string"}},
                "required": ["name", "age", "ok", "color", "tags", "bio"], "additionalProperties": false}),
            "response_format.json_schema.schema".into(),
        )),
        ..OutputSchema::default()
    };
    let t = Instant::now();
    let spec = grammars.compile(&schema).unwrap();
    println!(
        "grammar compile (per request): {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let answer = tokens(&tok, ANSWER);
    let options = LogitsOptions {
        constraint: Some(spec),
        ..LogitsOptions::default()
    };
    // Logits that make the answer's token the most likely at each step (greedy follows it).
    let row_for = |want: u32| {
        let mut row: Vec<f32> = (0..vocab)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        row[want as usize] = 50.0;
        row
    };
    let params = SamplingParams::default();
    for streams in [1usize, 64] {
        let mut states: Vec<LogitsState> = (0..streams)
            .map(|_| LogitsState::new(options.clone()).unwrap())
            .collect();
        let rows: Vec<Vec<f32>> = answer.iter().map(|&t| row_for(t)).collect();
        let started = Instant::now();
        for (i, &want) in answer.iter().enumerate() {
            let got: Vec<u32> = states
                .par_iter_mut()
                .map(|s| {
                    let mut row = rows[i].clone();
                    let cx = RowContext {
                        params: &params,
                        counter: i as u64,
                        tokens: &answer[..i],
                        prompt_len: 0,
                        stop_tokens: &[],
                    };
                    s.sample(&mut row, &cx).unwrap().token
                })
                .collect();
            assert!(got.iter().all(|&g| g == want), "step {i}");
        }
        let per_step = started.elapsed().as_secs_f64() * 1e3 / answer.len() as f64;
        println!(
            "{streams} stream(s): {per_step:.3} ms per step ({:.1} µs per token per stream; {} tokens, {} cores)",
            per_step * 1e3 / streams as f64,
            answer.len(),
            rayon::current_num_threads()
        );
    }
    // The grammar alone (mask + step per token), what constraining adds over host sampling.
    let spec = options.constraint.clone().unwrap();
    for streams in [1usize, 64] {
        let mut cs: Vec<_> = (0..streams).map(|_| spec.start().unwrap()).collect();
        let started = Instant::now();
        for &want in &answer {
            cs.par_iter_mut().for_each(|c| {
                let mask = c.allowed().unwrap().unwrap();
                assert!(mask[want as usize / 32] >> (want % 32) & 1 == 1);
                c.accept(want).unwrap();
            });
        }
        let per_step = started.elapsed().as_secs_f64() * 1e3 / answer.len() as f64;
        println!(
            "grammar only, {streams} stream(s): {per_step:.3} ms per step ({:.1} µs per token per stream)",
            per_step * 1e3 / streams as f64
        );
    }
    // Host sampling of one unconstrained row (the row is copied, as the logprobs path copies it).
    let mut plain = LogitsState::new(LogitsOptions {
        min_p: 0.05,
        ..LogitsOptions::default()
    })
    .unwrap();
    let row = row_for(7);
    let started = Instant::now();
    for i in 0..answer.len() {
        let mut r = row.clone();
        let cx = RowContext {
            params: &params,
            counter: i as u64,
            tokens: &[],
            prompt_len: 0,
            stop_tokens: &[],
        };
        assert_eq!(plain.sample(&mut r, &cx).unwrap().token, 7);
    }
    println!(
        "unconstrained host sampling (min_p), 1 stream: {:.3} ms per token",
        started.elapsed().as_secs_f64() * 1e3 / answer.len() as f64
    );
}

/// The tiny fixture's layers (hidden 64, 3 layers, 4 experts) with gpt-oss's vocabulary (201,088
/// rows of random weights), so each logit row is as wide as the real model's; served on the CPU with
/// 64 slots and the o200k_harmony tokenizer.
async fn real_vocab_server() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/hf-mxfp4");
    let mut config = gptoss_formats::ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
    config.vocab_size = 201_088;
    let w = gptoss_formats::dummy::dummy_weights(&config, 1);
    let engine = spawn_engine(
        move || {
            let cap = Capacity {
                max_batch_tokens: 256,
                max_logit_rows: 64,
                slots: 64,
                context_tokens: 256,
                kv_blocks: None,
            };
            Model::new(CpuBackend, &w, cap)
        },
        EngineConfig::default(),
    )
    .unwrap();
    let tok = Arc::new(Tokenizer::o200k_harmony().unwrap());
    let config = ServerConfig {
        max_concurrency: 64,
        metrics_access: MetricsAccess::Public,
        ..ServerConfig::new("m")
    };
    let state = AppState::new(engine, tok, config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gptoss_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// Decoding with and without a JSON schema in `response_format` (`/v1/completions`: the whole output
/// is the JSON value, so every token is masked), 1 and 64 streams at once, 48 tokens each, greedy:
/// the mean time between tokens of a stream (the inter-token histogram of `/metrics`), per run.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: prints per-token times, asserts only that every request succeeds"]
async fn constrained_decoding_through_the_server() {
    let base = real_vocab_server().await;
    api::measure_constrained_inter_token(&base, "").await;
}
