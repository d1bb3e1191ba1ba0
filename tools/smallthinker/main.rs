//! `smallthinker`: the project's command-line tool. Each subcommand lives in its own module; this file only
//! parses the command line and dispatches.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod chat;
mod common;
mod convert;
mod inspect;
mod logits;
mod perplexity;
mod profile_experts;
mod run;
mod serve;
mod synth;

#[derive(Parser)]
#[command(
    name = "smallthinker",
    version,
    about = "SmallThinker inference engine and GGUF toolchain"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an HF SmallThinker checkpoint to GGUF.
    Convert(convert::Args),
    /// Print a GGUF file's metadata and tensor table (like gguf-dump).
    Inspect(inspect::InspectArgs),
    /// Write a random-weight HF-format SmallThinker checkpoint (for tests and benchmarks).
    Synth(synth::Args),
    /// Run a model on token ids and write the logits (little-endian f32) to a file.
    Logits(logits::LogitsArgs),
    /// Generate text from a prompt, streaming it to stdout.
    Run(run::RunArgs),
    /// Interactive multi-turn chat on stdin/stdout, keeping the KV cache between turns.
    Chat(chat::ChatArgs),
    /// Perplexity of a text file, as llama-perplexity computes it.
    Perplexity(perplexity::PerplexityArgs),
    /// Count per layer how often each expert is selected on a text (JSON profile for the expert cache).
    ProfileExperts(profile_experts::ProfileArgs),
    /// Prefill and decode speed on a fixed workload (the one tools/ref/llama_speed.py runs on llama.cpp).
    Bench(bench::BenchArgs),
    /// OpenAI-compatible HTTP server with a chat page.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Synth(args) => synth::run(args),
        Command::Logits(args) => logits::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Perplexity(args) => perplexity::run(&args),
        Command::ProfileExperts(args) => profile_experts::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Serve(args) => serve::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Names and keys from a corrupt file can hold control characters: escape them, keep the rest readable.
            let msg: String = format!("{e:#}")
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
