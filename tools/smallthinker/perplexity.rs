//! `smallthinker perplexity -m M.gguf -f TEXT`: perplexity the way llama-perplexity computes it. The whole text
//! is tokenized (BOS first if the vocabulary adds it), cut into chunks of `n_ctx` tokens (the rest is dropped),
//! and each chunk is evaluated from an empty cache; only the second half of each chunk is scored (the first
//! `n_ctx / 2` positions just give context), with the chunk's first token replaced by BOS if the vocabulary adds
//! it. Prints the running `[i]ppl` after each chunk and `PPL = x +/- err` at the end.
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use smallthinker::model::{KvCache, Model, Rows};
use smallthinker::tokenizer::EncodeOptions;

use crate::common::{self, SessionArgs};
use crate::run::load_tokenizer;

/// Arguments of `perplexity`.
#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// The text file to score.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    #[command(flatten)]
    session: SessionArgs,
}

/// `-log softmax(logits)[target]`, in f64 like llama-perplexity's `log_softmax`.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    -(f64::from(logits[target as usize] - max) - sum.ln())
}

pub fn run(args: &PerplexityArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let file = common::open(&args.model, &args.session)?;
    let (wctx, rctx) = (Model::context(&file)?, Model::context(&file)?);
    let model = common::load(&file, &wctx, &rctx, &args.session)?;
    let (_, tok) = load_tokenizer(&file)?;
    let n_ctx = common::n_ctx(&args.session, &model)? as usize;
    if n_ctx < 4 {
        bail!("--ctx must be at least 4 for perplexity (half of each chunk is scored)");
    }
    let opts = EncodeOptions {
        add_special: true,
        parse_special: false,
    };
    let tokens = tok.encode_with(&text, opts)?;
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{} tokenizes to {} tokens; perplexity with a context of {n_ctx} needs at least {} (lower --ctx)",
            args.file.display(),
            tokens.len(),
            2 * n_ctx
        );
    }
    let kctx = KvCache::context(&model.hp)?;
    let mut sargs = args.session.clone();
    sargs.n_outputs = sargs.batch; // every position's logits
    let mut session = common::session(&sargs, &model, &kctx)?;
    let n_vocab = model.hp.n_vocab as usize;
    let n_chunk = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    eprintln!(
        "perplexity: {} tokens, {n_chunk} chunks of {n_ctx}, scoring positions {first}..{n_ctx}",
        tokens.len()
    );
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut stdout = std::io::stdout().lock();
    for i in 0..n_chunk {
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.reset();
        let logits = session.eval(&chunk, Rows::All)?; // [n_ctx][n_vocab]
        for j in first..n_ctx - 1 {
            // Position j's logits predict the token at j + 1 (of the original text, never the BOS).
            let v = nll(&logits[j * n_vocab..(j + 1) * n_vocab], tokens[i * n_ctx + j + 1]);
            sum += v;
            sum2 += v * v;
            count += 1;
        }
        write!(stdout, "[{}]{:.4},", i + 1, (sum / count as f64).exp()).context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    let mean = sum / count as f64;
    let ppl = mean.exp();
    let var = sum2 / count as f64 - mean * mean;
    let err = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    writeln!(stdout, "\nFinal estimate: PPL = {ppl:.4} +/- {err:.5}").context("writing to stdout")?;
    Ok(())
}
