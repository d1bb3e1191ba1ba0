//! `smallthinker run -m M.gguf -p PROMPT`: generates a continuation, streaming each token's text to stdout, and
//! prints prompt and generation speed to stderr like llama.cpp. `--chat` renders the prompt through the GGUF's
//! chat template first. The generation loop here is shared with `chat`.
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context as _};
use smallthinker::chat::{ChatTemplate, Message};
use smallthinker::gguf::GgufFile;
use smallthinker::graph::{CacheStats, MoeStats};
use smallthinker::model::{KvCache, Model, Rows, Session};
use smallthinker::sampling::{Generation, Sampler, StopCriteria};
use smallthinker::tokenizer::{Tokenizer, VocabSpec};

use crate::common::{self, SamplingArgs, SessionArgs};

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The GGUF model (default: the tiny model shipped in models/smallthinker-tiny).
    #[arg(short = 'm', long = "model", default_value = common::DEFAULT_MODEL)]
    model: PathBuf,
    /// The prompt.
    #[arg(short = 'p', long)]
    prompt: String,
    /// Most tokens to generate (default: until an end-of-generation token or a full context).
    #[arg(short = 'n', long = "n-predict")]
    n_predict: Option<usize>,
    /// Stop when the output contains this text (repeatable); the text itself is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Render the prompt as a user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for `--chat`.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Print the prompt as evaluated (text and token ids) to stderr.
    #[arg(long)]
    verbose_prompt: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    session: SessionArgs,
}

/// Tokenizes `text` as a prompt ([`Tokenizer::encode_prompt`]).
pub fn tokenize_prompt(tok: &Tokenizer, text: &str) -> anyhow::Result<Vec<u32>> {
    Ok(tok.encode_prompt(text)?)
}

/// What a generation did.
pub struct GenStats {
    /// Tokens sampled (an end-of-generation token included).
    pub n_sampled: usize,
    /// Sampled tokens that were also evaluated, so are in the cache after the prompt.
    pub evaluated: Vec<u32>,
    /// The text printed.
    pub text: String,
    pub seconds: f64,
}

/// Samples from `logits` (of the last prompt token) until a stop, writing each token's text to `out` and
/// flushing. Stops early, with a message on stderr, when the context is full or `interrupt` gets set.
/// What can steer a generation besides the sampler.
#[derive(Clone, Copy, Default)]
pub struct GenControl<'a> {
    /// Set (by Ctrl-C) to stop at the next token.
    pub interrupt: Option<&'a AtomicBool>,
    /// `--stats`: a line per decode step on stderr.
    pub per_token_stats: bool,
}

/// `--stats` for one decode step: time, active neurons and, with a budget, the expert cache's figures.
fn token_stats(session: &Session<'_>, (cache0, moe0): (Option<CacheStats>, MoeStats), secs: f64) -> String {
    let moe = session.moe_stats();
    let (a, t) = (
        moe.active_neurons - moe0.active_neurons,
        moe.total_neurons - moe0.total_neurons,
    );
    let mut line = format!("[stats] pos {} {:.1} ms", session.n_past(), secs * 1e3);
    if t > 0 {
        line += &format!(", active neurons {:.3}", a as f64 / t as f64);
    }
    if let (Some(c), Some(c0)) = (session.cache_stats(), cache0) {
        let d = c.minus(&c0);
        line += &format!(
            ", cache hits {}/{} ({:.1}%), read {:.2} MiB, I/O wait {:.2} ms, prefetched {:.0}%, arrived in time {:.0}%, \
             lookahead loads {}",
            d.hits,
            d.lookups,
            100.0 * d.hit_rate(),
            d.bytes_read as f64 / (1 << 20) as f64,
            d.wait_ns as f64 / 1e6,
            100.0 * d.prefetch_coverage(),
            100.0 * d.hidden_rate(),
            d.loads_hinted
        );
    }
    line
}

pub fn generate(
    session: &mut Session<'_>,
    sampler: &mut Sampler,
    tok: &Tokenizer,
    criteria: StopCriteria,
    mut logits: Vec<f32>,
    ctl: GenControl<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<GenStats> {
    let GenControl {
        interrupt,
        per_token_stats,
    } = ctl;
    let n_ctx = session.kv().params().n_ctx;
    let mut gen = Generation::new(criteria);
    let mut stats = GenStats {
        n_sampled: 0,
        evaluated: Vec::new(),
        text: String::new(),
        seconds: 0.0,
    };
    let start = Instant::now();
    loop {
        if interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
            let tail = gen.finish();
            write_flush(out, &tail)?;
            stats.text.push_str(&tail);
            eprintln!("\n[interrupted]");
            break;
        }
        let id = sampler.sample(&logits)?;
        sampler.accept(id);
        stats.n_sampled += 1;
        let step = gen.push(tok, id)?;
        write_flush(out, &step.text)?;
        stats.text.push_str(&step.text);
        if step.stop.is_some() {
            break;
        }
        if session.n_past() >= n_ctx {
            let tail = gen.finish();
            write_flush(out, &tail)?;
            stats.text.push_str(&tail);
            eprintln!("\n[context full: {n_ctx} tokens (--ctx); stopping]");
            break;
        }
        let before = (session.cache_stats(), session.moe_stats());
        let t0 = Instant::now();
        logits = session.eval(&[id], Rows::Last)?;
        stats.evaluated.push(id);
        if per_token_stats {
            eprintln!("{}", token_stats(session, before, t0.elapsed().as_secs_f64()));
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

fn write_flush(out: &mut dyn Write, text: &str) -> anyhow::Result<()> {
    out.write_all(text.as_bytes()).context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// llama.cpp-style speed line.
pub fn print_speed(what: &str, n_tokens: usize, seconds: f64) {
    let ms = seconds * 1e3;
    let per_tok = if n_tokens > 0 { ms / n_tokens as f64 } else { 0.0 };
    let tps = if seconds > 0.0 { n_tokens as f64 / seconds } else { 0.0 };
    eprintln!(
        "{what:>11} = {ms:10.2} ms / {n_tokens:5} tokens ({per_tok:8.2} ms per token, {tps:8.2} tokens per second)"
    );
}

/// The vocabulary and tokenizer of `file`.
pub fn load_tokenizer(file: &GgufFile) -> anyhow::Result<(VocabSpec, Tokenizer)> {
    let spec = VocabSpec::from_gguf(file)?;
    let tok = Tokenizer::new(&spec)?;
    Ok((spec, tok))
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    if args.prompt.is_empty() {
        bail!("the prompt is empty (-p)");
    }
    let file = common::open(&args.model, &args.session)?;
    let (wctx, rctx) = (Model::context(&file)?, Model::context(&file)?);
    let model = common::load(&file, &wctx, &rctx, &args.session)?;
    let (spec, tok) = load_tokenizer(&file)?;
    let text = if args.chat {
        let template = ChatTemplate::for_vocab(&spec)?;
        template.render_with_system(args.system.as_deref(), &[Message::user(args.prompt.as_str())], true)?
    } else {
        args.prompt.clone()
    };
    let tokens = tokenize_prompt(&tok, &text)?;
    let n_ctx = common::n_ctx(&args.session, &model)?;
    if tokens.len() >= n_ctx as usize {
        bail!(
            "the prompt is {} tokens, which leaves no room in the context of {n_ctx} (--ctx)",
            tokens.len()
        );
    }
    if args.verbose_prompt {
        eprintln!("prompt: {text:?}");
        eprintln!("prompt tokens ({}): {tokens:?}", tokens.len());
    }
    let kctx = KvCache::context(&model.hp)?;
    let mut session = common::session(&args.session, &model, &kctx)?;
    let mut sampler = Sampler::new(args.sampling.params())?;
    for &t in &tokens {
        sampler.accept(t);
    }
    let start = Instant::now();
    let logits = session.eval(&tokens, Rows::Last)?;
    let prompt_secs = start.elapsed().as_secs_f64();
    let criteria = StopCriteria {
        max_tokens: args.n_predict,
        stop_strings: args.stop.clone(),
        ..StopCriteria::default()
    };
    if args.n_predict == Some(0) {
        print_speed("prompt eval", tokens.len(), prompt_secs);
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let ctl = GenControl {
        interrupt: None,
        per_token_stats: args.session.stats,
    };
    let stats = generate(&mut session, &mut sampler, &tok, criteria, logits, ctl, &mut stdout)?;
    eprintln!();
    print_speed("prompt eval", tokens.len(), prompt_secs);
    print_speed("generation", stats.n_sampled, stats.seconds);
    Ok(())
}
