//! Pieces shared by the commands that run a model: thread count, session flags, sampling flags, loading.
use std::path::Path;

use anyhow::{bail, Context as _};
use smallthinker::gguf::{GgmlType, GgufFile};
use smallthinker::graph::{CachePolicy, DownType, IoBackend};
use smallthinker::model::{
    BudgetParams, ExpertProfile, KvCache, KvParams, KvType, Model, MoeSetup, Session, SessionParams,
};
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
    /// How the sparse op reads ffn_down: auto/native use the GGUF's layout (exact, no copy); q8_0, q4_0 and
    /// f32 build a neuron-major copy of that type whose rows are read only for active neurons.
    #[arg(long, value_enum, default_value = "auto")]
    pub moe_down: MoeDownArg,
    /// Cap on the memory the process holds (e.g. 1G, 800M; binary units): expert weights are then read from the
    /// GGUF into a cache of that size minus the dense weights, KV cache and buffers, instead of mapped.
    #[arg(long, value_parser = parse_size)]
    pub mem_budget: Option<u64>,
    /// Which cached expert gives way with --mem-budget: lru, or freq (least often selected).
    #[arg(long, default_value = "lru", requires = "mem_budget")]
    pub cache_policy: CachePolicy,
    /// With --mem-budget: an expert profile (from `profile-experts`) that seeds the frequency policy and whose
    /// hottest experts (those selected more often than uniform routing would) are loaded at start and pinned.
    #[arg(long, requires = "mem_budget")]
    pub expert_profile: Option<std::path::PathBuf>,
    /// Experts read at once with --mem-budget: threads of the pread backend, or experts in flight (3 reads
    /// each) on the io_uring.
    #[arg(long, default_value_t = 4, requires = "mem_budget")]
    pub io_threads: usize,
    /// How --mem-budget reads experts: auto (io_uring where the kernel allows it, else pread), uring (an error
    /// where it does not), or pread (a thread pool).
    #[arg(long, default_value = "auto", requires = "mem_budget")]
    pub io_backend: IoBackend,
    /// With --mem-budget: start the reads of the experts a layer this many layers ahead will likely choose (its
    /// router on the current layer's input), not only those of the current layer during its attention. 0: off.
    /// Default 2: on the trained tiny model 71% of the experts a layer chooses are predicted 2 layers ahead.
    #[arg(long, default_value_t = 2, requires = "mem_budget")]
    pub lookahead: u32,
    /// Which Q4_0 matrices move to ggml's repacked (8-row interleaved) layout at load: all (dense matrices and
    /// experts, as llama.cpp does; the sparse op then runs ggml's 8-row GEMV and GEMM on them, or mul_mat_id with
    /// --dense), dense (attention, router, output: the experts stay mapped, for the sparse op's row dot
    /// products) or none. With --mem-budget the experts always stay in the file.
    #[arg(long, value_enum, default_value = "all")]
    pub repack: RepackArg,
    /// Same as --repack none (llama.cpp's flag).
    #[arg(long)]
    pub no_repack: bool,
    /// Per token: the expert cache's hit rate, bytes read, I/O wait and prefetch coverage (with --mem-budget),
    /// and the share of active expert neurons.
    #[arg(long)]
    pub stats: bool,
    /// Logit rows a batch returns at most (set by perplexity; bounds the compute buffers under a budget).
    #[arg(skip = 1u32)]
    pub n_outputs: u32,
}

/// A memory budget: `1G`, `512M`, `64K`, `1.5G` (binary units) or plain bytes, at least 1 MiB (no budget is that
/// small, so a bare `1200` is a missing unit, not 1200 bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_lowercase()),
        None => (t, String::new()),
    };
    let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1G or 800M"))?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?} is not a positive size"));
    }
    if bytes < (1u64 << 20) as f64 {
        let hint = if unit.is_empty() {
            format!(" (for MiB write {}M)", num.trim())
        } else {
            String::new()
        };
        return Err(format!("{s:?} is {bytes:.0} bytes, below 1 MiB{hint}"));
    }
    Ok(bytes as u64)
}

/// `--repack` values.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum RepackArg {
    All,
    Dense,
    None,
}

/// `--moe-down` values.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum MoeDownArg {
    Auto,
    // ggml's type names, not clap's default kebab-case (q8-0).
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    F32,
    /// No transposed copy: down as the GGUF stores it (the layout of the --mem-budget expert cache).
    Native,
}

impl MoeDownArg {
    pub fn down_type(self) -> DownType {
        match self {
            MoeDownArg::Auto => DownType::Auto,
            MoeDownArg::Q8_0 => DownType::Fixed(GgmlType::Q8_0),
            MoeDownArg::Q4_0 => DownType::Fixed(GgmlType::Q4_0),
            MoeDownArg::F32 => DownType::Fixed(GgmlType::F32),
            MoeDownArg::Native => DownType::Native,
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

/// Opens a model to run, with its pages mapped in up front (`GgufFile::prefault`), as llama.cpp does; with a
/// memory budget only the dense weights are, later (`MoeSetup::with_budget`).
pub fn open(path: &Path, args: &SessionArgs) -> anyhow::Result<GgufFile> {
    if path == Path::new(DEFAULT_MODEL) && !path.exists() {
        bail!(
            "the default model {} is missing (it ships in the repository's models/ folder); pass -m MODEL.gguf",
            path.display()
        );
    }
    let file = GgufFile::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Only a speed-up: a kernel without either advice still runs the model, faulting pages on first use.
    if args.mem_budget.is_none() {
        let _ = file.prefault();
    }
    Ok(file)
}

/// A transposed down copy (--moe-down q8_0, q4_0 or f32) is built only for experts the sparse op reads in the
/// file's layout: refuse the flag where it would be ignored rather than run another path than the one asked for.
fn check_moe_down(args: &SessionArgs, model: &Model<'_>) -> anyhow::Result<()> {
    let name = match args.moe_down {
        MoeDownArg::Q8_0 => "q8_0",
        MoeDownArg::Q4_0 => "q4_0",
        MoeDownArg::F32 => "f32",
        MoeDownArg::Auto | MoeDownArg::Native => return Ok(()),
    };
    let repacked = model.layers.iter().any(|l| !l.experts.gate_exps.is_borrowed());
    if args.dense {
        bail!("--moe-down {name} is for the sparse path: --dense runs ggml's mul_mat_id on the file's down");
    }
    if args.mem_budget.is_some() {
        bail!("--moe-down {name}: with --mem-budget the expert cache holds the file's bytes, so down is read as the GGUF stores it");
    }
    if repacked {
        bail!("--moe-down {name} needs the experts in the file's layout: add --repack dense (--repack all interleaves them for ggml's kernels)");
    }
    Ok(())
}

/// Loads the model from `file` into `wctx`, with its Q4_0 matrices repacked into `rctx` (both from
/// `Model::context`) as --repack says.
pub fn load<'a>(
    file: &'a GgufFile,
    wctx: &'a smallthinker::ggml::Context,
    rctx: &'a smallthinker::ggml::Context,
    args: &SessionArgs,
) -> anyhow::Result<Model<'a>> {
    let model = Model::load(wctx, file)?;
    if args.no_repack || args.repack == RepackArg::None {
        return Ok(model);
    }
    // The sparse op (asked for with --repack dense, or needed by the expert cache) reads the file's layout.
    let experts = args.repack == RepackArg::All && args.mem_budget.is_none();
    let (model, bytes) = model.repacked(rctx, experts)?;
    if bytes > 0 {
        let what = if experts { "weights" } else { "dense weights" };
        eprintln!(
            "repacked {:.0} MiB of Q4_0 {what} (8-row interleave)",
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(model)
}

/// Frequencies per (layer, expert), layer-major, and the (layer, expert) pairs to pin.
type ProfilePins = (Option<Vec<f32>>, Vec<(u32, u32)>);

/// A profile's frequencies (layer-major, for the frequency policy) and its hot experts, hottest first: those
/// selected more often than the uniform rate k / n_expert. The cache pins as many as it has room for.
fn profile_pins(path: &Path, model: &Model<'_>) -> anyhow::Result<ProfilePins> {
    let p = ExpertProfile::load(path)?;
    p.check_model(&model.hp, path)?;
    let freq = p.frequencies();
    let uniform = f64::from(model.hp.n_expert_used) / f64::from(model.hp.n_expert);
    let mut hot: Vec<(f64, u32, u32)> = freq
        .iter()
        .enumerate()
        .flat_map(|(il, row)| row.iter().enumerate().map(move |(e, &f)| (f, il as u32, e as u32)))
        .filter(|&(f, ..)| f > uniform)
        .collect();
    hot.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let flat = freq.iter().flatten().map(|&f| f as f32).collect();
    Ok((Some(flat), hot.into_iter().map(|(_, il, e)| (il, e)).collect()))
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
    check_moe_down(args, model)?;
    let threads = args.threads.unwrap_or_else(physical_cores);
    let params = SessionParams {
        n_threads: threads,
        dense: args.dense,
        down_type: args.moe_down.down_type(),
        ..Default::default()
    };
    let session = match args.mem_budget {
        None => Session::new(model, kv, params)?,
        Some(bytes) => {
            if args.dense {
                bail!("--mem-budget needs the sparse path (its expert op reads the cache): drop --dense");
            }
            let (frequencies, pinned) = match &args.expert_profile {
                None => (None, Vec::new()),
                Some(path) => profile_pins(path, model)?,
            };
            let b = BudgetParams {
                bytes,
                policy: args.cache_policy,
                io_threads: args.io_threads.max(1),
                io_backend: args.io_backend,
                n_threads: threads,
                n_batch: kv_params.n_batch,
                n_outputs: args.n_outputs,
                frequencies,
                pinned,
                assume_resident: None,
                interleave: !args.no_repack && args.repack == RepackArg::All,
                lookahead: args.lookahead,
            };
            let (moe, _) = MoeSetup::with_budget(model, kv.allocated_bytes(), &b)?;
            Session::with_moe(model, kv, params, moe)?
        }
    };
    eprintln!("moe: {}", session.moe_path());
    Ok(session)
}
