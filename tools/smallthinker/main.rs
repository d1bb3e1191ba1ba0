//! `smallthinker`: the command-line front end. Each subcommand lives in its own module; this file only dispatches.
use clap::{Parser, Subcommand};

mod convert;
mod synth;

#[derive(Parser)]
#[command(name = "smallthinker", version, about = "SmallThinker toolchain on a vendored ggml")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an HF SmallThinker checkpoint to GGUF.
    Convert(convert::Args),
    /// Write a random-weight HF-format SmallThinker checkpoint (for tests and benchmarks).
    Synth(synth::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Convert(args) => convert::run(args),
        Command::Synth(args) => synth::run(args),
    }
}
