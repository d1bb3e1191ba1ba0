//! `smallthinker logits -m M.gguf --tokens 1,2,3 [--all] --out FILE`: runs the model on token ids and writes
//! the logits as little-endian f32, `n_rows x n_vocab` (the last position, or every position with `--all`),
//! then prints one JSON line with the shape. Every input is checked before a graph is built; on error nothing
//! is written.
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde_json::json;
use smallthinker::model::{KvCache, KvType, Model, Rows};

use crate::common::{self, SessionArgs};

/// Arguments of `logits`.
#[derive(clap::Args)]
pub struct LogitsArgs {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// Write the logits of every position, not only the last.
    #[arg(long)]
    all: bool,
    /// Output file (little-endian f32, row-major).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    session: SessionArgs,
}

pub fn run(args: &LogitsArgs) -> anyhow::Result<()> {
    let file = common::open(&args.model, &args.session)?;
    let (wctx, rctx) = (Model::context(&file)?, Model::context(&file)?);
    let model = common::load(&file, &wctx, &rctx, &args.session)?;
    let hp = &model.hp;
    let n_ctx = common::n_ctx(&args.session, &model)?;
    if args.tokens.len() > n_ctx as usize {
        bail!("{} tokens do not fit the context of {n_ctx} (--ctx)", args.tokens.len());
    }
    let ty = args.session.kv_type.kv_type();
    let mut sargs = args.session.clone();
    if args.all {
        sargs.n_outputs = sargs.batch;
    }
    let kctx = KvCache::context(hp)?;
    let mut session = common::session(&sargs, &model, &kctx)?;
    let rows = if args.all { Rows::All } else { Rows::Last };
    let logits = session.eval(&args.tokens, rows)?;

    let n_vocab = hp.n_vocab as usize;
    let n_rows = logits.len() / n_vocab;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    // Written next to the target and renamed, so a failed write leaves no partial file.
    let tmp = args.out.with_extension("tmp-logits");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming to {}", args.out.display()))?;
    let line = json!({
        "out": args.out.display().to_string(),
        "dtype": "f32le",
        "shape": [n_rows, n_vocab],
        "n_tokens": args.tokens.len(),
        "n_ctx": n_ctx,
        "kv_type": match ty { KvType::F16 => "f16", KvType::F32 => "f32" },
    });
    writeln!(std::io::stdout().lock(), "{line}").context("writing to stdout")?;
    Ok(())
}
