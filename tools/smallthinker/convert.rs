//! `smallthinker convert`: HF SmallThinker checkpoint → GGUF, as llama.cpp's converter (+ llama-quantize) writes it.
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use smallthinker::convert::{convert, ConvertParams, OutType, Progress};

#[derive(clap::Args)]
pub struct Args {
    /// The HF model directory (config.json, safetensors, tokenizer files).
    hf_dir: PathBuf,
    /// Output GGUF.
    #[arg(short, long)]
    output: PathBuf,
    /// f32, f16, bf16, q8_0, q4_0 (llama-quantize's mix) or q4_0-pure.
    #[arg(long = "type", default_value = "q4_0")]
    out_type: OutType,
    /// Quantization threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let params = ConvertParams {
        input: a.hf_dir,
        output: a.output.clone(),
        out_type: a.out_type,
        n_threads: a.threads,
    };
    let report = convert(&params, &mut |p| match p {
        Progress::Start { total_bytes, .. } => bar.set_length(total_bytes),
        Progress::Tensor { index, name, ty, .. } => bar.set_message(format!("[{index}] {name} {ty}")),
        Progress::Bytes(n) => bar.inc(n),
    });
    bar.finish_and_clear();
    let report = report?;
    if !a.quiet {
        eprintln!(
            "wrote {} ({} tensors, {} data bytes) in {:.1}s",
            a.output.display(),
            report.n_tensors,
            report.data_bytes,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
