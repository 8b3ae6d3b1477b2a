//! `gptoss`: run, inspect, convert and check gpt-oss models from any checkpoint layout. `main` parses the
//! command line, runs the subcommand and maps errors to a message and a non-zero exit code.

mod answer;
mod batch;
mod bench;
mod chat;
mod convert;
mod device;
mod eval;
mod fit;
mod gpus;
mod hub;
mod inspect;
mod logits;
mod output;
mod run;
mod sampling;
mod serve;
mod source;
mod spec;
mod split;
mod synth;
mod vocab;

use clap::{Parser, Subcommand};

/// gptoss — run OpenAI's gpt-oss models from any checkpoint, exactly, on the CPU or an NVIDIA GPU.
#[derive(Parser)]
#[command(name = "gptoss", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text (a Harmony chat prompt unless --raw) or continue token ids.
    Run(run::RunArgs),
    /// Talk with a model: an interactive Harmony conversation (reads stdin when it is piped).
    Chat(chat::ChatArgs),
    /// Perplexity of a text, or KL divergence of a model's distributions from a base model's.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Download a model from the Hugging Face Hub into its cache (as `--model ORG/NAME` does).
    Pull(hub::PullArgs),
    /// Print the logits of a token sequence as JSON (for checking a checkpoint against a reference).
    Logits(logits::LogitsArgs),
    /// Show a checkpoint's format, config, tensor types and the memory it needs.
    Inspect(inspect::InspectArgs),
    /// Will a model fit a GPU, and how fast will it decode? (Sizes only: nothing is downloaded or
    /// loaded; the speed is an estimate.)
    Fit(fit::FitArgs),
    /// Serve the OpenAI-compatible API (chat, completions, responses) with continuous batching.
    Serve(serve::ServeArgs),
    /// Run a JSONL batch job (OpenAI Batch API lines or {"messages"} / {"prompt"} lines).
    Batch(batch::BatchArgs),
    /// Measure prefill, decode and batched-decode throughput through the serving engine (like llama-bench).
    Bench(bench::BenchArgs),
    /// Convert a checkpoint to a GGUF llama.cpp loads, or to HF MXFP4 safetensors (--to hf-mxfp4).
    Convert(convert::ConvertArgs),
    /// Write the random weights of --dummy as an HF MXFP4 checkpoint.
    Synth(synth::SynthArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `serve` writes its request log (one line per request) unless GPTOSS_LOG says otherwise.
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,gptoss_server::request_log=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GPTOSS_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Pull(args) => hub::pull(args),
        Command::Logits(args) => logits::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Fit(args) => fit::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Batch(args) => batch::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Synth(args) => synth::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
