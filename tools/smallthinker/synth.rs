//! `smallthinker synth`: a random-weight HF checkpoint with the real Qwen2 vocabulary, optionally converted to
//! GGUF; with `--gguf-only` the weights go straight into the GGUF (no safetensors), for the 21B shape.
use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use smallthinker::convert::{convert, convert_from, ConvertParams, OutType, Progress};
use smallthinker::synth::{synth, synth_meta, Shape, SynthDtype, SynthParams};

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (created if missing).
    out_dir: PathBuf,
    /// Base configuration.
    #[arg(long, default_value = "tiny")]
    shape: Shape,
    /// JSON object merged into config.json, e.g. '{"tie_word_embeddings":false}'.
    #[arg(long)]
    config: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "bf16")]
    dtype: SynthDtype,
    /// Split the weights into this many shards (with model.safetensors.index.json).
    #[arg(long)]
    shards: Option<usize>,
    /// Do not store lm_head.weight when the config ties embeddings.
    #[arg(long)]
    no_lm_head: bool,
    /// Also convert the checkpoint to this GGUF (for quick benchmark setup).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// The GGUF type for --gguf (f32, f16, bf16, q8_0, q4_0, q4_0-pure).
    #[arg(long = "type", default_value = "q4_0", requires = "gguf")]
    out_type: OutType,
    /// Write no safetensors: generate the weights straight into the --gguf file (same bytes as writing the
    /// checkpoint and converting it). OUT_DIR then gets only config.json and the tokenizer files.
    #[arg(long, requires = "gguf")]
    gguf_only: bool,
    /// Share of each layer's experts made hot (their router rows scaled so that they take most selections),
    /// e.g. 0.25; 0 = uniform routing.
    #[arg(long, default_value_t = 0.0)]
    routing_skew: f32,
    /// Routers read only the token's own embedding dims (implied by --routing-skew): with no skew, near-uniform
    /// routing. Without either, a random model's residual stream sends most tokens to a few arbitrary experts.
    #[arg(long)]
    token_routing: bool,
    /// ReGLU neuron sparsity like the trained models' (random weights leave half the neurons active): every
    /// expert gate's pre-activation is lowered by this much at a residual rms of 1, less in deeper layers as the
    /// residual grows (so the first layers are the sparsest, as in the trained models). Implies
    /// --token-routing without --routing-skew. E.g. 0.7; 0 = none.
    #[arg(long, default_value_t = 0.0)]
    gate_shift: f32,
    /// Quantization threads for --gguf (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The Qwen2 vocab GGUF.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/qwen2-vocab/ggml-vocab-qwen2.gguf"))]
    vocab: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let overrides = match &a.config {
        None => Default::default(),
        Some(s) => match serde_json::from_str::<serde_json::Value>(s).context("--config is not JSON")? {
            serde_json::Value::Object(m) => m,
            _ => bail!("--config must be a JSON object"),
        },
    };
    let params = SynthParams {
        shape: a.shape,
        overrides,
        seed: a.seed,
        dtype: a.dtype,
        shards: a.shards,
        lm_head: !a.no_lm_head,
        vocab_gguf: a.vocab,
        routing_skew: a.routing_skew,
        token_routing: a.token_routing,
        gate_shift: a.gate_shift,
    };
    if a.gguf_only {
        let out = a.gguf.as_ref().expect("clap: --gguf-only requires --gguf");
        let (source, files) = synth_meta(&a.out_dir, &params)?;
        eprintln!("wrote {} files to {}", files.len(), a.out_dir.display());
        let p = ConvertParams {
            input: a.out_dir.clone(),
            output: out.clone(),
            out_type: a.out_type,
            n_threads: a.threads,
        };
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:40} [{bar:30}] {bytes}/{total_bytes} ETA {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        let r = convert_from(&p, &source, &mut |p| match p {
            Progress::Start { total_bytes, .. } => bar.set_length(total_bytes),
            Progress::Tensor { index, name, ty, .. } => bar.set_message(format!("[{index}] {name} {ty}")),
            Progress::Bytes(n) => bar.inc(n),
        });
        bar.finish_and_clear();
        let r = r?;
        eprintln!(
            "wrote {} ({} tensors, {} data bytes)",
            out.display(),
            r.n_tensors,
            r.data_bytes
        );
        return Ok(());
    }
    let r = synth(&a.out_dir, &params)?;
    eprintln!(
        "wrote {} tensors, {} bytes of weights, {} files to {}",
        r.n_tensors,
        r.n_bytes,
        r.files.len(),
        a.out_dir.display()
    );
    if let Some(out) = &a.gguf {
        let p = ConvertParams {
            input: a.out_dir.clone(),
            output: out.clone(),
            out_type: a.out_type,
            n_threads: a.threads,
        };
        let r = convert(&p, &mut |_| {})?;
        eprintln!("wrote {} ({} tensors)", out.display(), r.n_tensors);
    }
    Ok(())
}
