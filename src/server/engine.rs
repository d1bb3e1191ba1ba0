//! The scheduler: one thread owns the model and `n_parallel` slots (each a [`Session`] with its own KV cache).
//! Requests wait in a bounded queue. Every loop turn admits queued jobs into free slots, evaluates one chunk of
//! `n_batch` tokens of one pending prompt (the oldest), then steps every decoding slot together: each samples
//! its next token and all those tokens go through one batched graph ([`decode_batch`]), so the weights are read
//! once per step for all slots. A long prompt thus delays the decoding slots by one chunk per turn, not by its
//! whole length. Tokens go back to the HTTP side on a channel; a closed channel (the client went away) cancels
//! the job and frees its slot.
//!
//! Prompt cache: each slot remembers the tokens its cache holds. A job goes to the free slot that shares the
//! longest prefix with its prompt, as long as that keeps at least half of what the slot holds (so one chat does
//! not take over another's cache for a shared system prompt); else to the least recently used free slot. The
//! slot's cache goes back to the shared prefix and only the rest of the prompt is evaluated. The shared part is
//! usually shorter than the cached tokens: the next chat turn re-tokenizes the previous answer, which need not
//! give the ids that were sampled. When a sliding-window ring no longer holds what the shared prefix needs, the
//! slot starts over.
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::gguf::GgufFile;
use crate::model::{
    decode_batch, BudgetParams, KvCache, KvParams, KvType, Model, MoeSetup, Rows, Session, SessionParams,
};
use crate::sampling::{Generation, Sampler, StopCriteria, StopReason};
use crate::tokenizer::{Tokenizer, VocabSpec};

/// How to run the model.
#[derive(Clone, Debug)]
pub struct EngineParams {
    pub model: PathBuf,
    pub n_parallel: usize,
    /// Context per slot (default: the model's training context).
    pub n_ctx: Option<u32>,
    pub n_batch: u32,
    pub n_threads: usize,
    pub kv_type: KvType,
    /// Jobs that may wait for a slot before new ones are refused.
    pub queue: usize,
    /// Run the MoE with plain ggml ops instead of the sparse path.
    pub dense: bool,
    /// Most slots whose decode steps share one graph (1: a graph per slot, as before batching).
    pub max_decode_batch: usize,
    /// Move the Q4_0 matrices (with `mem_budget`, only the dense ones) to ggml's repacked layout at load.
    pub repack: bool,
    /// Cap the process's memory: experts come from an expert cache (`MoeSetup::with_budget`). Its `n_batch`
    /// and `n_outputs` are taken from here.
    pub mem_budget: Option<BudgetParams>,
}

/// One generation request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub sampler: Sampler,
    pub criteria: StopCriteria,
    /// Report log-probabilities with this many alternatives.
    pub n_probs: Option<usize>,
    pub events: UnboundedSender<Event>,
}

/// A token's log-probability and the most likely alternatives (text, bytes, logprob).
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the scheduler reports for a job.
#[derive(Clone, Debug)]
pub enum Event {
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done(Finish),
    Failed(String),
}

#[derive(Clone, Copy, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the slot's cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_ms: f64,
    pub gen_ms: f64,
}

/// Counters the HTTP side shows on `/health`.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub queued: AtomicUsize,
    pub processing: AtomicUsize,
    /// Decode graphs run so far, and the tokens they decoded (their ratio is the mean decode batch).
    pub decode_graphs: AtomicUsize,
    pub decode_tokens: AtomicUsize,
}

/// What the model is, as the scheduler loaded it.
#[derive(Clone, Copy, Debug)]
pub struct ModelInfo {
    pub n_ctx: u32,
    pub n_vocab: u32,
    pub n_parallel: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("loading the model: {0}")]
    Load(String),
    #[error("the queue is full ({0} requests waiting)")]
    Busy(usize),
    #[error("the scheduler has stopped")]
    Stopped,
}

/// The HTTP side's handle on the scheduler thread.
pub struct Engine {
    tx: SyncSender<Job>,
    pub info: ModelInfo,
    pub stats: Arc<EngineStats>,
    queue: usize,
}

impl Engine {
    /// Starts the scheduler thread and waits until the model is loaded.
    pub fn start(params: EngineParams) -> Result<Engine, EngineError> {
        let (tx, rx) = mpsc::sync_channel(params.queue);
        let (ready_tx, ready_rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let thread_stats = stats.clone();
        let queue = params.queue;
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || scheduler(&params, &rx, &ready_tx, &thread_stats))
            .map_err(|e| EngineError::Load(e.to_string()))?;
        let info = ready_rx
            .recv()
            .map_err(|_| EngineError::Stopped)?
            .map_err(EngineError::Load)?;
        Ok(Engine { tx, info, stats, queue })
    }

    /// Queues `job`; refuses it when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), EngineError> {
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        let r = self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => EngineError::Busy(self.queue),
            TrySendError::Disconnected(_) => EngineError::Stopped,
        });
        if r.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
        }
        r
    }
}

struct Active {
    job: Job,
    gen: Generation,
    /// Logits of the last evaluated position; `None` until the prompt is evaluated.
    logits: Option<Vec<f32>>,
    /// The prompt's first chunk has been evaluated (cache reuse decided, sampler fed with the prompt).
    prompt_started: bool,
    cached_tokens: usize,
    completion_tokens: usize,
    start: Instant,
    prompt_ms: f64,
}

struct Slot<'a> {
    session: Session<'a>,
    /// The tokens the KV cache holds, in order.
    cached: Vec<u32>,
    active: Option<Active>,
    last_used: u64,
}

fn scheduler(
    p: &EngineParams,
    rx: &Receiver<Job>,
    ready: &mpsc::Sender<Result<ModelInfo, String>>,
    stats: &EngineStats,
) {
    let file = match GgufFile::open(&p.model) {
        Ok(f) => f,
        Err(e) => return drop(ready.send(Err(format!("{}: {e}", p.model.display())))),
    };
    if p.mem_budget.is_none() {
        // Only a speed-up (as `run` does): pages mapped in before the first request.
        let _ = file.prefault();
    }
    let (wctx, rctx) = match (Model::context(&file), Model::context(&file)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return drop(ready.send(Err(e.to_string()))),
    };
    let model = match Model::load(&wctx, &file) {
        Ok(m) => m,
        Err(e) => return drop(ready.send(Err(e.to_string()))),
    };
    let model = if p.repack {
        // The expert cache reads the file's layout: with a budget only the dense matrices move.
        match model.repacked(&rctx, p.mem_budget.is_none()) {
            Ok((m, _)) => m,
            Err(e) => return drop(ready.send(Err(e.to_string()))),
        }
    } else {
        model
    };
    let tok = match VocabSpec::from_gguf(&file)
        .map_err(|e| e.to_string())
        .and_then(|s| Tokenizer::new(&s).map_err(|e| e.to_string()))
    {
        Ok(t) => t,
        Err(e) => return drop(ready.send(Err(e))),
    };
    let n_ctx = p.n_ctx.unwrap_or(model.hp.n_ctx_train);
    let kv_params = KvParams {
        n_ctx,
        n_batch: p.n_batch.min(n_ctx),
        ty: p.kv_type,
    };
    let mut kctxs = Vec::new();
    for _ in 0..p.n_parallel {
        match KvCache::context(&model.hp) {
            Ok(c) => kctxs.push(c),
            Err(e) => return drop(ready.send(Err(e.to_string()))),
        }
    }
    let mut kvs = Vec::new();
    for kctx in &kctxs {
        match KvCache::new(kctx, &model.hp, kv_params) {
            Ok(kv) => kvs.push(kv),
            Err(e) => return drop(ready.send(Err(e.to_string()))),
        }
    }
    let session_params = SessionParams {
        n_threads: p.n_threads,
        dense: p.dense,
        ..Default::default()
    };
    // One sparse-path state (and expert cache) for all slots, not one per slot.
    let moe = match &p.mem_budget {
        None => MoeSetup::new(&model, &session_params),
        Some(b) => {
            let kv_bytes = kvs.iter().map(KvCache::allocated_bytes).sum();
            let b = BudgetParams {
                n_batch: kv_params.n_batch,
                n_outputs: p.n_parallel as u32,
                n_threads: p.n_threads,
                ..b.clone()
            };
            match MoeSetup::with_budget(&model, kv_bytes, &b) {
                Ok((m, _)) => m,
                Err(e) => return drop(ready.send(Err(e.to_string()))),
            }
        }
    };
    eprintln!("moe: {}", moe.description());
    let mut slots = Vec::new();
    for kv in kvs {
        match Session::with_moe(&model, kv, session_params, moe.clone()) {
            Ok(session) => slots.push(Slot {
                session,
                cached: Vec::new(),
                active: None,
                last_used: 0,
            }),
            Err(e) => return drop(ready.send(Err(e.to_string()))),
        }
    }
    let info = ModelInfo {
        n_ctx,
        n_vocab: model.hp.n_vocab,
        n_parallel: p.n_parallel,
    };
    if ready.send(Ok(info)).is_err() {
        return;
    }
    let mut clock = 0u64;
    loop {
        let idle = slots.iter().all(|s| s.active.is_none());
        if idle {
            match rx.recv() {
                Ok(job) => admit(&mut slots, job, stats, &mut clock),
                Err(_) => return,
            }
        }
        while slots.iter().any(|s| s.active.is_none()) {
            match rx.try_recv() {
                Ok(job) => admit(&mut slots, job, stats, &mut clock),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let busy = slots.iter().filter(|s| s.active.is_some()).count();
        turn(
            &mut slots,
            &tok,
            n_ctx,
            kv_params.n_batch,
            p.max_decode_batch.max(1),
            stats,
        );
        let still = slots.iter().filter(|s| s.active.is_some()).count();
        stats.processing.fetch_sub(busy - still, Ordering::SeqCst);
    }
}

/// One loop turn over the admitted jobs: cancellations, one prompt chunk, one batched decode step.
fn turn(
    slots: &mut [Slot<'_>],
    tok: &Tokenizer,
    n_ctx: u32,
    n_batch: u32,
    max_decode_batch: usize,
    stats: &EngineStats,
) {
    for slot in slots.iter_mut() {
        if slot.active.as_ref().is_some_and(|a| a.job.events.is_closed()) {
            // The client went away; the cache still holds exactly `cached`.
            slot.active = None;
        }
    }
    let prompting = slots
        .iter_mut()
        .filter(|s| s.active.as_ref().is_some_and(|a| a.logits.is_none()))
        .min_by_key(|s| s.last_used);
    if let Some(slot) = prompting {
        prompt_chunk(slot, n_batch as usize);
    }
    // Every decoding slot samples; the ones that go on feed their token to one batched step.
    let mut next = Vec::new();
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.active.as_ref().is_some_and(|a| a.logits.is_some()) {
            if let Some(id) = sample(slot, tok, n_ctx) {
                next.push((i, id));
            }
        }
    }
    for group in next.chunks(max_decode_batch) {
        stats.decode_graphs.fetch_add(1, Ordering::SeqCst);
        stats.decode_tokens.fetch_add(group.len(), Ordering::SeqCst);
        decode_group(slots, group);
    }
}

/// One graph for the decode steps of `group` (slot index, token), in slot order.
fn decode_group(slots: &mut [Slot<'_>], group: &[(usize, u32)]) {
    let ids: Vec<u32> = group.iter().map(|&(_, id)| id).collect();
    let mut sessions: Vec<&mut Session<'_>> = slots
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| group.iter().any(|(j, _)| j == i))
        .map(|(_, s)| &mut s.session)
        .collect();
    match decode_batch(&mut sessions, &ids) {
        Ok(logits) => {
            for (&(i, id), l) in group.iter().zip(logits) {
                let slot = &mut slots[i];
                slot.cached.push(id);
                if let Some(a) = slot.active.as_mut() {
                    a.logits = Some(l);
                }
            }
        }
        // One graph for all of them: every cache of the group is in doubt.
        Err(e) => {
            for &(i, _) in group {
                fail(&mut slots[i], &e.to_string());
            }
        }
    }
}

/// The cached tokens of `cached` that a prompt can keep: their common prefix, less one token when the prompt
/// is all cached (its last token must be evaluated again for the logits).
fn reusable(cached: &[u32], prompt: &[u32]) -> usize {
    let common = cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
    common.min(prompt.len().saturating_sub(1))
}

/// Puts `job` in the free slot that can keep the most of its cached tokens for this prompt, if that is at
/// least half of them; else in the least recently used free slot.
fn admit(slots: &mut [Slot<'_>], job: Job, stats: &EngineStats, clock: &mut u64) {
    stats.queued.fetch_sub(1, Ordering::SeqCst);
    let free = || slots.iter().enumerate().filter(|(_, s)| s.active.is_none());
    let best = free()
        .map(|(i, s)| (i, s, reusable(&s.cached, &job.prompt)))
        .filter(|&(_, s, n)| n > 0 && 2 * n >= s.cached.len())
        .max_by_key(|&(_, _, n)| n)
        .map(|(i, _, _)| i)
        .or_else(|| free().min_by_key(|(_, s)| s.last_used).map(|(i, _)| i));
    let Some(i) = best else { return };
    *clock += 1;
    let slot = &mut slots[i];
    slot.last_used = *clock;
    stats.processing.fetch_add(1, Ordering::SeqCst);
    slot.active = Some(Active {
        gen: Generation::new(job.criteria.clone()),
        job,
        logits: None,
        prompt_started: false,
        cached_tokens: 0,
        completion_tokens: 0,
        start: Instant::now(),
        prompt_ms: 0.0,
    });
}

/// Evaluates the next chunk of up to `n_batch` tokens of the slot's prompt; the last one leaves the logits.
fn prompt_chunk(slot: &mut Slot<'_>, n_batch: usize) {
    let Some(a) = slot.active.as_mut() else { return };
    let prompt = &a.job.prompt;
    if !a.prompt_started {
        let keep = reusable(&slot.cached, prompt);
        if slot.session.truncate(keep as u32) {
            slot.cached.truncate(keep);
        } else {
            slot.session.reset();
            slot.cached.clear();
        }
        a.cached_tokens = slot.cached.len();
        for &t in prompt {
            a.job.sampler.accept(t);
        }
        a.prompt_started = true;
    }
    // The cache holds a prefix of the prompt: the chunks evaluated so far.
    let done = slot.cached.len();
    let chunk = prompt[done..(done + n_batch).min(prompt.len())].to_vec();
    let last = done + chunk.len() == prompt.len();
    let t0 = Instant::now();
    match slot.session.eval(&chunk, Rows::Last) {
        Ok(l) => {
            slot.cached.extend_from_slice(&chunk);
            a.prompt_ms += t0.elapsed().as_secs_f64() * 1e3;
            if last {
                a.logits = Some(l);
                a.start = Instant::now();
            }
        }
        Err(e) => fail(slot, &e.to_string()),
    }
}

/// Samples the slot's next token from its logits and reports it; returns the token to evaluate next, or None
/// when the job is over (finished, failed or cancelled; `active` is then cleared).
fn sample(slot: &mut Slot<'_>, tok: &Tokenizer, n_ctx: u32) -> Option<u32> {
    let a = slot.active.as_mut()?;
    let logits = a.logits.take()?;
    let id = match a.job.sampler.sample(&logits) {
        Ok(id) => id,
        Err(e) => {
            fail(slot, &e.to_string());
            return None;
        }
    };
    a.job.sampler.accept(id);
    a.completion_tokens += 1;
    let logprob = a
        .job
        .n_probs
        .filter(|_| !tok.is_eog(id))
        .map(|n| token_logprob(tok, &logits, id, n));
    let s = match a.gen.push(tok, id) {
        Ok(s) => s,
        Err(e) => {
            fail(slot, &e.to_string());
            return None;
        }
    };
    let mut reason = s.stop.map(|r| match r {
        StopReason::MaxTokens => FinishReason::Length,
        StopReason::Eog(_) | StopReason::StopString(_) => FinishReason::Stop,
    });
    let mut text = s.text;
    if reason.is_none() && slot.session.n_past() >= n_ctx {
        text.push_str(&a.gen.finish());
        reason = Some(FinishReason::Length);
    }
    if (!text.is_empty() || logprob.is_some()) && a.job.events.send(Event::Token { text, logprob }).is_err() {
        slot.active = None;
        return None;
    }
    if let Some(reason) = reason {
        let finish = Finish {
            reason,
            prompt_tokens: a.job.prompt.len(),
            cached_tokens: a.cached_tokens,
            completion_tokens: a.completion_tokens,
            prompt_ms: a.prompt_ms,
            gen_ms: a.start.elapsed().as_secs_f64() * 1e3,
        };
        let _ = a.job.events.send(Event::Done(finish));
        slot.active = None;
        return None;
    }
    Some(id)
}

/// Reports a failure; the cache may be half-written, so the slot starts afresh next time.
fn fail(slot: &mut Slot<'_>, msg: &str) {
    if let Some(a) = slot.active.take() {
        let _ = a.job.events.send(Event::Failed(msg.to_string()));
    }
    slot.session.reset();
    slot.cached.clear();
}

fn piece(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok
        .token_to_piece_bytes(id, true)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Log-softmax of the model's raw logits for `id` and the `n` most likely tokens.
fn token_logprob(tok: &Tokenizer, logits: &[f32], id: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(order.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    }
    let mut top: Vec<u32> = order[..n].to_vec();
    top.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let (token, bytes) = piece(tok, id);
    TokenLogprob {
        token,
        bytes,
        logprob: logits[id as usize] - lse,
        top: top
            .into_iter()
            .map(|t| {
                let (s, b) = piece(tok, t);
                (s, b, logits[t as usize] - lse)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::reusable;

    #[test]
    fn reusable_prefix() {
        assert_eq!(reusable(&[1, 2, 3], &[1, 2, 4, 5]), 2); // diverges at the third token
        assert_eq!(reusable(&[1, 2], &[1, 2, 3]), 2); // the next turn: all of the cache
        assert_eq!(reusable(&[1, 2, 3], &[1, 2, 3]), 2); // the same prompt: its last token again
        assert_eq!(reusable(&[1, 2, 3, 4], &[1, 2]), 1); // a shorter prompt
        assert_eq!(reusable(&[], &[1]), 0);
        assert_eq!(reusable(&[7], &[1, 2]), 0);
    }
}
