//! `smallthinker bench -m M.gguf [-t T] [--prompt N] [--gen N] [--depth D] [--json]`: prefill and decode speed
//! on a fixed workload, the one tools/ref/llama_speed.py runs on llama.cpp, so the two can be compared:
//!
//! 1. warm-up: tokens 1000..1003 evaluated, then the cache cleared (as llama_speed.py does);
//! 2. `--depth D`: D tokens (ids from 3000) evaluated in `--batch` batches, untimed;
//! 3. prefill, timed: the prompt 1000, 1001, ..., 1000+N-1 in one `eval`;
//! 4. decode, timed: `--gen` single-token steps feeding 2000, 2001, ...
//!
//! Ids wrap modulo the vocabulary (tiny test models). Peak RSS is the kernel's high-water mark (VmHWM).
//! `weight_mb_per_token` is what a decode step reads of the weights with whole expert matrices
//! ([`Model::decode_weight_bytes`]); times decode_tps and divided by `bench --read-bandwidth`'s figure, it is the
//! share of the memory-bandwidth roofline reached.
//!
//! `smallthinker bench --read-bandwidth [-t T]` measures that bandwidth instead: the best of five passes of T
//! threads summing a 1 GiB buffer (far beyond the caches), one JSON line `{"read_gbps": ..}`.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde_json::json;
use smallthinker::model::{KvCache, Model, Rows};

use crate::common::{self, SessionArgs};

/// ggml's GGML_MAX_N_THREADS: more threads than this abort inside ggml.
const MAX_THREADS: usize = 512;
/// Positions added to the workload when `--ctx` is not given (llama_speed.py does the same).
const CTX_SLACK: u32 = 16;

/// First token id of each part of the workload.
pub const PROMPT_BASE: u32 = 1000;
pub const GEN_BASE: u32 = 2000;
pub const DEPTH_BASE: u32 = 3000;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The GGUF model.
    #[arg(short = 'm', long = "model", required_unless_present = "read_bandwidth")]
    model: Option<PathBuf>,
    /// Measure the machine's streaming read bandwidth with -t threads instead (no model).
    #[arg(long, conflicts_with = "model")]
    read_bandwidth: bool,
    /// Prompt tokens to prefill (timed).
    #[arg(long, default_value_t = 128)]
    prompt: u32,
    /// Decode steps (timed).
    #[arg(long, default_value_t = 64)]
    gen: u32,
    /// Tokens filled into the context before the prompt (untimed).
    #[arg(long, default_value_t = 0)]
    depth: u32,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    session: SessionArgs,
}

/// `n` workload ids from `base`, wrapped into the vocabulary.
fn ids(base: u32, n: u32, n_vocab: u32) -> Vec<u32> {
    (0..n).map(|i| (base + i) % n_vocab).collect()
}

/// The process's peak resident set in MiB, from /proc/self/status (VmHWM, in kB).
fn peak_rss_mb() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb / 1024.0)
}

/// The flags, checked before the model is read (cheap errors first).
fn check_flags(a: &BenchArgs) -> anyhow::Result<()> {
    if a.prompt == 0 || a.gen == 0 {
        bail!("--prompt and --gen must be at least 1");
    }
    if let Some(t) = a.session.threads {
        if t == 0 || t > MAX_THREADS {
            bail!("--threads {t}: must be 1..={MAX_THREADS}");
        }
    }
    if a.session.batch == 0 || a.session.ctx == Some(0) {
        bail!("--batch and --ctx must be positive");
    }
    let total = u64::from(a.depth) + u64::from(a.prompt) + u64::from(a.gen);
    if let Some(ctx) = a.session.ctx {
        if total > u64::from(ctx) {
            bail!(
                "--depth {} + --prompt {} + --gen {} = {total} tokens do not fit --ctx {ctx}",
                a.depth,
                a.prompt,
                a.gen
            );
        }
    }
    Ok(())
}

/// Sums a slice with eight independent lanes (the loads, not the adds, set the pace).
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for w in words.chunks_exact(8) {
        for (a, &x) in acc.iter_mut().zip(w) {
            *a = a.wrapping_add(x);
        }
    }
    acc.iter().fold(0, |s, &x| s.wrapping_add(x))
}

/// Streaming read bandwidth in GB/s: the best of five passes of `threads` threads over a 1 GiB buffer.
fn read_bandwidth(threads: usize) -> f64 {
    const WORDS: usize = 1 << 27;
    let buf: Vec<u64> = (0..WORDS as u64).collect(); // every page touched before timing
    let chunk = WORDS.div_ceil(threads).next_multiple_of(8);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        let sum = std::thread::scope(|s| {
            let parts: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || sum_words(c))).collect();
            parts
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (WORDS * 8) as f64 / best / 1e9
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    check_flags(a)?;
    let Some(model_path) = &a.model else {
        let threads = a.session.threads.unwrap_or_else(common::physical_cores);
        let gbps = read_bandwidth(threads);
        if a.json {
            println!("{}", json!({"read_gbps": gbps, "threads": threads}));
        } else {
            println!("read bandwidth: {gbps:.2} GB/s with {threads} threads");
        }
        return Ok(());
    };
    let file = common::open(model_path, &a.session)?;
    let (wctx, rctx) = (Model::context(&file)?, Model::context(&file)?);
    let model = common::load(&file, &wctx, &rctx, &a.session)?;
    let hp = &model.hp;
    let total = u64::from(a.depth) + u64::from(a.prompt) + u64::from(a.gen);
    if total > u64::from(hp.n_ctx_train) {
        bail!(
            "--depth {} + --prompt {} + --gen {} = {total} tokens exceed the model's training context {}",
            a.depth,
            a.prompt,
            a.gen,
            hp.n_ctx_train
        );
    }
    // A context just large enough, as llama_speed.py sizes llama.cpp's, unless --ctx says otherwise.
    let mut sargs = a.session.clone();
    let fit = (total + u64::from(CTX_SLACK)).min(u64::from(hp.n_ctx_train)) as u32; // <= n_ctx_train: fits
    sargs.ctx = Some(a.session.ctx.unwrap_or(fit));
    let threads = sargs.threads.unwrap_or_else(common::physical_cores);
    let kctx = KvCache::context(hp)?;
    let mut session = common::session(&sargs, &model, &kctx)?;
    let n_vocab = hp.n_vocab;

    session.eval(&ids(PROMPT_BASE, 4, n_vocab), Rows::Last)?; // warm-up, as llama_speed.py
    session.reset();
    if a.depth > 0 {
        session.eval(&ids(DEPTH_BASE, a.depth, n_vocab), Rows::Last)?;
    }
    session.reset_moe_stats(); // the fraction covers the timed prompt and decode steps only
    let t0 = Instant::now();
    session.eval(&ids(PROMPT_BASE, a.prompt, n_vocab), Rows::Last)?;
    let t1 = Instant::now();
    let c1 = session.cache_stats();
    for &t in &ids(GEN_BASE, a.gen, n_vocab) {
        session.eval(&[t], Rows::Last)?;
    }
    let t2 = Instant::now();
    // Decode steps only: the prompt loads whole layers.
    let cache = session.cache_stats().zip(c1).map(|(b, a)| b.minus(&a));
    let prefill_tps = f64::from(a.prompt) / (t1 - t0).as_secs_f64();
    let decode_tps = f64::from(a.gen) / (t2 - t1).as_secs_f64();
    let rss = peak_rss_mb()?;
    let weight_mb = model.decode_weight_bytes() as f64 / 1e6;
    // Counted by the sparse expert op; None when every step ran dense (no neuron was skipped or counted).
    let stats = session.moe_stats();
    let active_neuron_frac = (stats.total_neurons > 0).then(|| stats.active_frac());
    let path = if session.moe_path().starts_with("sparse") {
        "sparse"
    } else {
        "dense"
    };

    if a.json {
        let line = json!({
            "engine": "smallthinker",
            "prefill_tps": prefill_tps,
            "decode_tps": decode_tps,
            "peak_rss_mb": rss.round(),
            "active_neuron_frac": active_neuron_frac,
            "weight_mb_per_token": weight_mb,
            "threads": threads,
            "prompt": a.prompt,
            "gen": a.gen,
            "depth": a.depth,
            "path": path,
            "mem_budget_mb": a.session.mem_budget.map(|b| b / (1 << 20)),
            "cache_hit_rate": cache.map(|c| c.hit_rate()),
            "cache_read_mb_per_token": cache.map(|c| c.bytes_read as f64 / (1 << 20) as f64 / f64::from(a.gen.max(1))),
            "io_wait_ms_per_token": cache.map(|c| c.wait_ns as f64 / 1e6 / f64::from(a.gen.max(1))),
            "prefetch_coverage": cache.map(|c| c.prefetch_coverage()),
            "prefetch_hidden": cache.map(|c| c.hidden_rate()),
            "lookahead_loads_per_token": cache.map(|c| c.loads_hinted as f64 / f64::from(a.gen.max(1))),
        });
        println!("{line}");
    } else {
        println!("model    {}", model_path.display());
        println!("threads  {threads}, moe {}, depth {}", session.moe_path(), a.depth);
        println!(
            "prefill  {:8.2} tok/s  ({} tokens in {:.3} s)",
            prefill_tps,
            a.prompt,
            (t1 - t0).as_secs_f64()
        );
        println!(
            "decode   {:8.2} tok/s  ({} tokens in {:.3} s)",
            decode_tps,
            a.gen,
            (t2 - t1).as_secs_f64()
        );
        println!("peak RSS {:8.0} MiB", rss);
        println!("weights read per decode token {weight_mb:.1} MB (whole expert matrices)");
        match active_neuron_frac {
            Some(f) => println!("active expert neurons {:.3}", f),
            None => println!("active expert neurons n/a (no step took the sparse path)"),
        }
        if let Some(c) = cache {
            let n = f64::from(a.gen.max(1));
            println!(
                "cache (decode) hit rate {:.3}, read {:.1} MiB/token, I/O wait {:.1} ms/token, prefetched {:.3}, \
                 arrived in time {:.3}",
                c.hit_rate(),
                c.bytes_read as f64 / (1 << 20) as f64 / n,
                c.wait_ns as f64 / 1e6 / n,
                c.prefetch_coverage(),
                c.hidden_rate()
            );
        }
    }
    Ok(())
}
