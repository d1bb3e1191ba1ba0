//! `smallthinker chat -m M.gguf`: interactive multi-turn chat on stdin/stdout. Each turn renders the whole
//! conversation through the chat template and evaluates only the tokens past what the KV cache already holds
//! (if the cached tokens are not a prefix of the new rendering, the cache is reset and everything re-evaluated).
//! `/exit` or end of input ends it; Ctrl-C stops the answer being generated, or exits at the prompt.
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use smallthinker::chat::{ChatTemplate, Message};
use smallthinker::model::{KvCache, Model, Rows};
use smallthinker::sampling::{Sampler, StopCriteria};

use crate::common::{self, SamplingArgs, SessionArgs};
use crate::run::{generate, load_tokenizer, print_speed, tokenize_prompt, GenControl};

/// Arguments of `chat`.
#[derive(clap::Args)]
pub struct ChatArgs {
    /// The GGUF model (default: the tiny model shipped in models/smallthinker-tiny).
    #[arg(short = 'm', long = "model", default_value = common::DEFAULT_MODEL)]
    model: PathBuf,
    /// System message put before the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer (default: until an end-of-generation token or a full context).
    #[arg(short = 'n', long = "n-predict")]
    n_predict: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    session: SessionArgs,
}

/// Ctrl-C handling: while generating, a press only sets `interrupt`; at the prompt it exits.
fn install_ctrlc(generating: Arc<AtomicBool>, interrupt: Arc<AtomicBool>) -> anyhow::Result<()> {
    ctrlc::set_handler(move || {
        if generating.load(Ordering::SeqCst) {
            interrupt.store(true, Ordering::SeqCst);
        } else {
            eprintln!();
            std::process::exit(0);
        }
    })
    .context("installing the Ctrl-C handler")
}

pub fn run(args: &ChatArgs) -> anyhow::Result<()> {
    let file = common::open(&args.model, &args.session)?;
    let (wctx, rctx) = (Model::context(&file)?, Model::context(&file)?);
    let model = common::load(&file, &wctx, &rctx, &args.session)?;
    let (spec, tok) = load_tokenizer(&file)?;
    let template = ChatTemplate::for_vocab(&spec)?;
    let kctx = KvCache::context(&model.hp)?;
    let mut session = common::session(&args.session, &model, &kctx)?;
    let n_ctx = session.kv().params().n_ctx as usize;
    let mut sampler = Sampler::new(args.sampling.params())?;
    let generating = Arc::new(AtomicBool::new(false));
    let interrupt = Arc::new(AtomicBool::new(false));
    install_ctrlc(generating.clone(), interrupt.clone())?;

    let mut messages: Vec<Message> = Vec::new();
    // The tokens in the KV cache, in order.
    let mut cached: Vec<u32> = Vec::new();
    let mut stdin = std::io::stdin().lock();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.read_line(&mut line).context("reading stdin")? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim() == "/exit" {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        messages.push(Message::user(line));
        let text = template.render_with_system(args.system.as_deref(), &messages, true)?;
        let tokens = tokenize_prompt(&tok, &text)?;
        if tokens.len() >= n_ctx {
            eprintln!(
                "[the conversation is {} tokens, the context {n_ctx} (--ctx): it cannot go on]",
                tokens.len()
            );
            break;
        }
        if !(tokens.len() > cached.len() && tokens.starts_with(&cached)) {
            session.reset();
            cached.clear();
        }
        let new = &tokens[cached.len()..];
        eprintln!("[prompt: {} new tokens, {} cached]", new.len(), cached.len());
        sampler.reset();
        for &t in &tokens {
            sampler.accept(t);
        }
        let start = Instant::now();
        let logits = session.eval(new, Rows::Last)?;
        let prompt_secs = start.elapsed().as_secs_f64();
        cached.extend_from_slice(new);

        let criteria = StopCriteria {
            max_tokens: args.n_predict,
            ..StopCriteria::default()
        };
        interrupt.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let mut stdout = std::io::stdout().lock();
        let result = generate(
            &mut session,
            &mut sampler,
            &tok,
            criteria,
            logits,
            GenControl {
                interrupt: Some(&interrupt),
                per_token_stats: args.session.stats,
            },
            &mut stdout,
        );
        generating.store(false, Ordering::SeqCst);
        let stats = result?;
        writeln!(stdout).context("writing to stdout")?;
        cached.extend_from_slice(&stats.evaluated);
        messages.push(Message::assistant(stats.text));
        print_speed("prompt eval", new.len(), prompt_secs);
        print_speed("generation", stats.n_sampled, stats.seconds);
    }
    Ok(())
}
