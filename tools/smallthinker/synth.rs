//! `smallthinker synth`: a random-weight HF checkpoint with the real Qwen2 vocabulary.
use std::path::PathBuf;

use anyhow::{bail, Context};
use smallthinker::convert::{convert, ConvertParams, OutType};
use smallthinker::synth::{synth, Shape, SynthDtype, SynthParams};

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
    /// The GGUF type for --gguf.
    #[arg(long = "type", default_value = "q4_0", requires = "gguf")]
    out_type: OutType,
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
    };
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
            n_threads: 0,
        };
        let r = convert(&p, &mut |_| {})?;
        eprintln!("wrote {} ({} tensors)", out.display(), r.n_tensors);
    }
    Ok(())
}
