//! Pieces shared by the commands that run a model: thread count, session flags, sampling flags, loading.
use std::path::Path;

use anyhow::{bail, Context as _};
use smallthinker::gguf::{GgmlType, GgufFile};
use smallthinker::graph::DownType;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Session, SessionParams};
use smallthinker::sampling::SamplerParams;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KvTypeArg {
    F16,
    F32,
}

impl KvTypeArg {
    pub fn kv_type(self) -> KvType {
        match self {
            KvTypeArg::F16 => KvType::F16,
            KvTypeArg::F32 => KvType::F32,
        }
    }
}

/// Physical cores from /proc/cpuinfo (distinct physical id / core id pairs), else the logical CPUs.
pub fn physical_cores() -> usize {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut cores = std::collections::HashSet::new();
    let mut package = "";
    for line in info.lines() {
        let mut kv = line.splitn(2, ':').map(str::trim);
        match (kv.next(), kv.next()) {
            (Some("physical id"), Some(v)) => package = v,
            (Some("core id"), Some(v)) => {
                cores.insert((package.to_string(), v.to_string()));
            }
            _ => {}
        }
    }
    if cores.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cores.len()
    }
}

/// How to evaluate: threads, context, batch and KV type (llama.cpp's `-t`, `-c`, `-b`, `-ctk`).
#[derive(clap::Args, Clone)]
pub struct SessionArgs {
    /// Threads (default: the physical cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context length (default: the model's training context).
    #[arg(long)]
    pub ctx: Option<u32>,
    /// Tokens per graph while reading the prompt.
    #[arg(long, default_value_t = 512)]
    pub batch: u32,
    /// KV cache element type.
    #[arg(long, value_enum, default_value = "f16")]
    pub kv_type: KvTypeArg,
    /// Run the MoE with plain ggml ops (mul_mat_id), as llama.cpp does, instead of the sparse path.
    #[arg(long)]
    pub dense: bool,
    /// Type of the sparse path's neuron-major down copy (auto: Q8_0 for quantized models, F32 for float ones).
    #[arg(long, value_enum, default_value = "auto")]
    pub moe_down: MoeDownArg,
}

/// `--moe-down` values.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum MoeDownArg {
    Auto,
    Q8_0,
    Q4_0,
    F32,
}

impl MoeDownArg {
    pub fn down_type(self) -> DownType {
        match self {
            MoeDownArg::Auto => DownType::Auto,
            MoeDownArg::Q8_0 => DownType::Fixed(GgmlType::Q8_0),
            MoeDownArg::Q4_0 => DownType::Fixed(GgmlType::Q4_0),
            MoeDownArg::F32 => DownType::Fixed(GgmlType::F32),
        }
    }
}

/// Sampling flags, llama.cpp's names and defaults.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 samples greedily.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: i32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplerParams {
        SamplerParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            ..SamplerParams::default()
        }
    }
}

/// The model `run` and `chat` use without -m: the tiny SmallThinker trained by tools/train_tiny, shipped in models/.
pub const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/smallthinker-tiny/smallthinker-tiny-f32.gguf"
);

/// Opens a model to run, with its pages mapped in up front (`GgufFile::prefault`), as llama.cpp does.
pub fn open(path: &Path) -> anyhow::Result<GgufFile> {
    if path == Path::new(DEFAULT_MODEL) && !path.exists() {
        bail!(
            "the default model {} is missing (it ships in the repository's models/ folder); pass -m MODEL.gguf",
            path.display()
        );
    }
    let file = GgufFile::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Only a speed-up: a kernel without either advice still runs the model, faulting pages on first use.
    let _ = file.prefault();
    Ok(file)
}

/// The context length `args` asks for, checked.
pub fn n_ctx(args: &SessionArgs, model: &Model<'_>) -> anyhow::Result<u32> {
    if args.threads == Some(0) || args.batch == 0 || args.ctx == Some(0) {
        bail!("--threads, --batch and --ctx must be positive");
    }
    Ok(args.ctx.unwrap_or(model.hp.n_ctx_train))
}

/// A session over a fresh cache of `n_ctx` positions in `kctx` (from `KvCache::context`).
pub fn session<'a>(
    args: &SessionArgs,
    model: &'a Model<'a>,
    kctx: &'a smallthinker::ggml::Context,
) -> anyhow::Result<Session<'a>> {
    let n_ctx = n_ctx(args, model)?;
    if let Some(w) = model.hp.swa_warning() {
        eprintln!("{w}");
    }
    let kv_params = KvParams {
        n_ctx,
        n_batch: args.batch.min(n_ctx),
        ty: args.kv_type.kv_type(),
    };
    let kv = KvCache::new(kctx, &model.hp, kv_params)?;
    let threads = args.threads.unwrap_or_else(physical_cores);
    let params = SessionParams {
        n_threads: threads,
        dense: args.dense,
        down_type: args.moe_down.down_type(),
        ..Default::default()
    };
    let session = Session::new(model, kv, params)?;
    eprintln!("moe: {}", session.moe_path());
    Ok(session)
}
