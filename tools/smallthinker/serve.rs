//! `smallthinker serve -m M.gguf`: the OpenAI-compatible HTTP server (see `smallthinker::server`).
use std::path::PathBuf;

use anyhow::bail;
use smallthinker::graph::{CachePolicy, IoBackend};
use smallthinker::model::BudgetParams;
use smallthinker::server::{EngineParams, Server, ServerParams};

use crate::common::{parse_size, physical_cores, KvTypeArg};

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences generated at once; each has its own KV cache of --ctx positions.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Context per slot (default: the model's training context).
    #[arg(long)]
    ctx: Option<u32>,
    /// Tokens per graph while reading a prompt.
    #[arg(long, default_value_t = 512)]
    batch: u32,
    /// Threads (default: the physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "f16")]
    kv_type: KvTypeArg,
    /// Run the MoE with plain ggml ops (mul_mat_id) instead of the sparse path.
    #[arg(long)]
    dense: bool,
    /// Most slots whose decode steps share one graph (default: all of them; 1 steps each slot in its own
    /// graph, for comparisons).
    #[arg(long)]
    decode_batch: Option<usize>,
    /// Requests that may wait for a free slot; more get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Cap on the memory the process holds (e.g. 1G): experts are read from the GGUF into a cache shared by
    /// the slots, as with `run --mem-budget`.
    #[arg(long, value_parser = parse_size)]
    mem_budget: Option<u64>,
    /// Which cached expert gives way with --mem-budget: lru or freq.
    #[arg(long, default_value = "lru", requires = "mem_budget")]
    cache_policy: CachePolicy,
    /// Experts read at once with --mem-budget (pread threads, or experts in flight on the io_uring).
    #[arg(long, default_value_t = 4, requires = "mem_budget")]
    io_threads: usize,
    /// How --mem-budget reads experts: auto (io_uring where the kernel allows it, else pread), uring or pread.
    #[arg(long, default_value = "auto", requires = "mem_budget")]
    io_backend: IoBackend,
    /// With --mem-budget: hint the reads of the experts this many layers ahead (0: off; see `run --help`).
    #[arg(long, default_value_t = 2, requires = "mem_budget")]
    lookahead: u32,
    /// Keep every matrix in the file's layout instead of ggml's repacked one.
    #[arg(long)]
    no_repack: bool,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    if args.parallel == 0
        || args.decode_batch == Some(0)
        || args.batch == 0
        || args.ctx == Some(0)
        || args.threads == Some(0)
        || args.queue == 0
    {
        bail!("--parallel, --decode-batch, --batch, --ctx, --threads and --queue must be positive");
    }
    let params = ServerParams {
        engine: EngineParams {
            model: args.model.clone(),
            n_parallel: args.parallel,
            n_ctx: args.ctx,
            n_batch: args.batch,
            n_threads: args.threads.unwrap_or_else(physical_cores),
            kv_type: args.kv_type.kv_type(),
            queue: args.queue,
            dense: args.dense,
            max_decode_batch: args.decode_batch.unwrap_or(args.parallel),
            repack: !args.no_repack,
            mem_budget: args.mem_budget.map(|bytes| BudgetParams {
                bytes,
                policy: args.cache_policy,
                io_threads: args.io_threads.max(1),
                io_backend: args.io_backend,
                n_threads: 0,
                n_batch: 0,
                n_outputs: 0,
                frequencies: None,
                pinned: Vec::new(),
                assume_resident: None,
                interleave: !args.no_repack,
                lookahead: args.lookahead,
            }),
        },
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        max_body: args.max_body,
    };
    let server = Server::bind(params)?;
    eprintln!("listening on http://{}", server.local_addr()?);
    server.run()?;
    Ok(())
}
