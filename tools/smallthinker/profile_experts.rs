//! `smallthinker profile-experts -m M.gguf -f TEXT -o PROFILE.json`: runs a text through the model on the sparse
//! path and writes how many tokens selected each expert, per layer (the format of `model::profile`), for the
//! expert cache's `--expert-profile`. Prints a summary of the frequency distribution to stderr.
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use smallthinker::model::{profile_tokens, ExpertProfile, KvCache, KvParams, Model, Session, SessionParams};
use smallthinker::tokenizer::EncodeOptions;

use crate::common::{self, RepackArg, SessionArgs};
use crate::run::load_tokenizer;

/// Arguments of `profile-experts`.
#[derive(clap::Args)]
pub struct ProfileArgs {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// The text file to run through the model.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Profile at most this many tokens of the text (default: all of it).
    #[arg(short = 'n', long = "n-tokens")]
    max_tokens: Option<usize>,
    /// Output profile (JSON).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    #[command(flatten)]
    session: SessionArgs,
}

pub fn run(args: &ProfileArgs) -> anyhow::Result<()> {
    // Refuse a bad -o before the (long) run; the write itself is atomic.
    let parent = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() || args.output.is_dir() {
        bail!(
            "cannot write the profile to {}: {} is not a directory",
            args.output.display(),
            if args.output.is_dir() {
                args.output.display()
            } else {
                parent.display()
            }
        );
    }
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    if text.trim().is_empty() {
        bail!("{} is empty: nothing to profile", args.file.display());
    }
    // The router op that reports the experts is on the sparse path, which reads the experts in the file's
    // layout: with the default --repack all, only the dense matrices are repacked.
    let mut sargs = args.session.clone();
    if sargs.repack == RepackArg::All {
        sargs.repack = RepackArg::Dense;
    }
    let file = common::open(&args.model, &sargs)?;
    let (wctx, rctx) = (Model::context(&file)?, Model::context(&file)?);
    let model = common::load(&file, &wctx, &rctx, &sargs)?;
    let (_, tok) = load_tokenizer(&file)?;
    let opts = EncodeOptions {
        add_special: true,
        parse_special: false,
    };
    let tokens = match args.max_tokens {
        Some(0) => bail!("-n must be positive"),
        Some(n) => {
            // A whole bible tokenizes slowly: try a prefix that surely holds n tokens (a token is rarely more
            // than 32 bytes), keeping a margin so the cut word at its end is not among the first n.
            let mut cut = text.len().min(n.saturating_mul(32));
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut t = tok.encode_with(&text[..cut], opts)?;
            if t.len() < n + 16 && cut < text.len() {
                t = tok.encode_with(&text, opts)?;
            }
            t.truncate(n);
            t
        }
        None => tok.encode_with(&text, opts)?,
    };
    if args.session.threads == Some(0) || args.session.batch == 0 || args.session.ctx == Some(0) {
        bail!("--threads, --batch and --ctx must be positive");
    }
    // The context is only a chunk size here; 4096 keeps the KV cache small for long texts.
    let n_ctx = args
        .session
        .ctx
        .unwrap_or(4096)
        .min(model.hp.n_ctx_train)
        .min(tokens.len().max(1) as u32);
    let n_batch = args.session.batch.min(n_ctx);
    let kctx = KvCache::context(&model.hp)?;
    let kv = KvCache::new(
        &kctx,
        &model.hp,
        KvParams {
            n_ctx,
            n_batch,
            ty: args.session.kv_type.kv_type(),
        },
    )?;
    if args.session.dense {
        bail!("--dense has no router op to report the experts; profile-experts runs the sparse path");
    }
    let params = SessionParams {
        n_threads: args.session.threads.unwrap_or_else(common::physical_cores),
        down_type: args.session.moe_down.down_type(),
        // Every batch through the sparse path, whose router op reports each token's experts.
        sparse_max_batch: n_batch,
        ..Default::default()
    };
    let mut session = Session::new(&model, kv, params)?;
    eprintln!(
        "profile-experts: {} tokens in chunks of {n_ctx}, moe: {}",
        tokens.len(),
        session.moe_path()
    );
    let name = args
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let t0 = std::time::Instant::now();
    let profile = profile_tokens(&mut session, &name, &model.hp, &tokens)?;
    eprintln!("{} tokens in {:.1}s", profile.n_tokens, t0.elapsed().as_secs_f64());
    profile.save(&args.output)?;
    eprintln!("{}", summary(&profile));
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// The distribution over all (layer, expert) pairs: share below 0.14, and quantiles of the frequencies.
fn summary(p: &ExpertProfile) -> String {
    let mut f: Vec<f64> = p.frequencies().into_iter().flatten().collect();
    f.sort_by(f64::total_cmp);
    if f.is_empty() {
        return "no experts".into();
    }
    let q = |x: f64| f[((f.len() - 1) as f64 * x).round() as usize];
    let below = f.iter().filter(|&&x| x < 0.14).count() as f64 / f.len() as f64;
    let top_quarter = &f[f.len() * 3 / 4..];
    format!(
        "expert frequency: {:.1}% of experts below 0.14; min {:.3} p25 {:.3} median {:.3} p75 {:.3} p90 {:.3} max {:.3}; top quarter {:.3}..{:.3} (mean {:.3})",
        100.0 * below,
        q(0.0),
        q(0.25),
        q(0.5),
        q(0.75),
        q(0.9),
        q(1.0),
        top_quarter[0],
        top_quarter[top_quarter.len() - 1],
        top_quarter.iter().sum::<f64>() / top_quarter.len() as f64
    )
}
