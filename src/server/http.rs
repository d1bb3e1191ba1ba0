//! The routes: OpenAI chat and text completions (streaming as server-sent events), models, health,
//! llama-server's tokenize/detokenize, and the chat page.
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::{self, ApiError, ChatRequest, CommonParams, CompletionRequest, Content, Prompt, Stop};
use super::engine::{Engine, EngineError, Event, Finish, Job, TokenLogprob};
use crate::chat::{ChatTemplate, Message};
use crate::sampling::{Sampler, SamplerParams, StopCriteria};
use crate::tokenizer::{EncodeOptions, Tokenizer};

const INDEX_HTML: &str = include_str!("static/index.html");

pub struct AppState {
    pub engine: Engine,
    pub tok: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub model_id: String,
    pub api_key: Option<String>,
}

pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .fallback(|| async { ApiError::invalid("no such endpoint").status(StatusCode::NOT_FOUND) })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn require_key(State(st): State<Arc<AppState>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "invalid or missing API key".into(),
                kind: "authentication_error",
                param: None,
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    next.run(req).await
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| ApiError::invalid(r.body_text()).status(r.status()))
}

async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    let s = &st.engine.stats;
    Json(json!({
        "status": "ok",
        "slots_processing": s.processing.load(Ordering::SeqCst),
        "slots_idle": st.engine.info.n_parallel.saturating_sub(s.processing.load(Ordering::SeqCst)),
        "queued": s.queued.load(Ordering::SeqCst),
        "decode_graphs": s.decode_graphs.load(Ordering::SeqCst),
        "decode_tokens": s.decode_tokens.load(Ordering::SeqCst),
    }))
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": st.model_id, "object": "model", "created": now(), "owned_by": "smallthinker",
        "meta": {"n_ctx": st.engine.info.n_ctx, "n_vocab": st.engine.info.n_vocab},
    }]}))
}

async fn tokenize(State(st): State<Arc<AppState>>, b: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let req: api::TokenizeRequest = api::parse(&body(b)?)?;
    let opts = EncodeOptions {
        add_special: req.add_special,
        parse_special: true,
    };
    let ids = st
        .tok
        .encode_with(&req.content, opts)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if !req.with_pieces {
        return Ok(Json(json!({ "tokens": ids })));
    }
    let tokens: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let bytes = st.tok.token_to_piece_bytes(id, true).unwrap_or_default();
            let piece = match std::str::from_utf8(bytes) {
                Ok(s) => json!(s),
                Err(_) => json!(bytes),
            };
            json!({"id": id, "piece": piece})
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

async fn detokenize(
    State(st): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: api::DetokenizeRequest = api::parse(&body(b)?)?;
    let text = st
        .tok
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid(e.to_string()).param("tokens"))?;
    Ok(Json(json!({ "content": text })))
}

/// Tokenizes `text` as a prompt, as `smallthinker run` does ([`Tokenizer::encode_prompt`]).
fn tokenize_prompt(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tok.encode_prompt(text)
        .map_err(|e| ApiError::invalid(e.to_string()).param("prompt"))
}

async fn chat(State(st): State<Arc<AppState>>, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: ChatRequest = api::parse(&body(b)?)?;
    let template = st
        .template
        .as_ref()
        .ok_or_else(|| ApiError::invalid("the model has no chat template; use /v1/completions"))?;
    let messages: Vec<Message> = req
        .messages
        .iter()
        .map(|m| {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(p)) => p
                    .iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text.clone())
                    .collect(),
            };
            Message::new(m.role.clone(), content)
        })
        .collect();
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty").param("messages"));
    }
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid(format!("chat template: {e}")).param("messages"))?;
    let prompt = tokenize_prompt(&st.tok, &text)?;
    let n_probs = match (req.logprobs, req.top_logprobs) {
        (Some(true), n) => Some(n.unwrap_or(0).min(20) as usize),
        (_, Some(_)) => return Err(ApiError::invalid("top_logprobs needs logprobs: true").param("top_logprobs")),
        _ => None,
    };
    start(&st, Kind::Chat, prompt, &req.common, n_probs).await
}

async fn completions(State(st): State<Arc<AppState>>, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: CompletionRequest = api::parse(&body(b)?)?;
    let prompt = match &req.prompt {
        Prompt::Text(t) => tokenize_prompt(&st.tok, t)?,
        Prompt::Texts(t) if t.len() == 1 => tokenize_prompt(&st.tok, &t[0])?,
        Prompt::Texts(_) => return Err(ApiError::invalid("only one prompt per request is supported").param("prompt")),
        Prompt::Tokens(t) => t.clone(),
    };
    if let Some(&bad) = prompt.iter().find(|&&t| t >= st.engine.info.n_vocab) {
        return Err(ApiError::invalid(format!("token {bad} is outside the vocabulary")).param("prompt"));
    }
    let n_probs = req.logprobs.map(|n| n.min(20) as usize);
    start(&st, Kind::Completion, prompt, &req.common, n_probs).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

fn sampler(c: &CommonParams) -> Result<Sampler, ApiError> {
    let d = SamplerParams::default();
    let params = SamplerParams {
        temperature: c.temperature.unwrap_or(d.temperature),
        top_k: c.top_k.unwrap_or(d.top_k),
        top_p: c.top_p.unwrap_or(d.top_p),
        min_p: c.min_p.unwrap_or(d.min_p),
        repeat_penalty: c.repeat_penalty.or(c.repetition_penalty).unwrap_or(d.repeat_penalty),
        frequency_penalty: c.frequency_penalty.unwrap_or(d.frequency_penalty),
        presence_penalty: c.presence_penalty.unwrap_or(d.presence_penalty),
        seed: c.seed.map(|s| s as u64),
        ..d
    };
    Sampler::new(params).map_err(|e| ApiError::invalid(e.to_string()))
}

async fn start(
    st: &Arc<AppState>,
    kind: Kind,
    prompt: Vec<u32>,
    c: &CommonParams,
    n_probs: Option<usize>,
) -> Result<Response, ApiError> {
    let n_ctx = st.engine.info.n_ctx as usize;
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty").param("prompt"));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::invalid(format!(
            "the prompt is {} tokens, which leaves no room in the context of {n_ctx}",
            prompt.len()
        ))
        .code("context_length_exceeded"));
    }
    let max_tokens = c.max_completion_tokens.or(c.max_tokens);
    if let Some(m) = max_tokens {
        if m == 0 || m > n_ctx as u64 {
            return Err(
                ApiError::invalid(format!("max_tokens is {m}; it must be in 1..={n_ctx} (the context)"))
                    .param("max_tokens"),
            );
        }
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n = 1 is supported").param("n"));
    }
    let stop_strings = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    let stop_strings: Vec<String> = stop_strings.into_iter().filter(|s| !s.is_empty()).collect();
    let criteria = StopCriteria {
        max_tokens: max_tokens.map(|m| m as usize),
        stop_strings,
        ..StopCriteria::default()
    };
    let (tx, rx) = unbounded_channel();
    let n_prompt = prompt.len();
    let job = Job {
        prompt,
        sampler: sampler(c)?,
        criteria,
        n_probs,
        events: tx,
    };
    st.engine.submit(job).map_err(|e| match e {
        EngineError::Busy(_) => ApiError::server(e.to_string()).status(StatusCode::SERVICE_UNAVAILABLE),
        _ => ApiError::server(e.to_string()),
    })?;
    let fmt = Format {
        kind,
        id: format!("{}-{}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, next_id()),
        model: st.model_id.clone(),
        created: now(),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        first: true,
    };
    if c.stream.unwrap_or(false) {
        Ok(stream_response(rx, fmt).into_response())
    } else {
        collect(rx, fmt, n_prompt).await
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct Format {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    first: bool,
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": f.cached_tokens},
    })
}

fn timings(f: &Finish) -> Value {
    json!({"prompt_n": f.prompt_tokens - f.cached_tokens, "prompt_ms": f.prompt_ms,
           "predicted_n": f.completion_tokens, "predicted_ms": f.gen_ms, "cache_n": f.cached_tokens})
}

fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let top: Vec<Value> = l
                .top
                .iter()
                .map(|(t, b, p)| json!({"token": t, "logprob": p, "bytes": b}))
                .collect();
            json!({"token": l.token, "logprob": l.logprob, "bytes": l.bytes, "top_logprobs": top})
        })
        .collect();
    json!({ "content": content })
}

fn completion_logprobs(lps: &[TokenLogprob]) -> Value {
    let top: Vec<Value> = lps
        .iter()
        .map(|l| Value::Object(l.top.iter().map(|(t, _, p)| (t.clone(), json!(p))).collect()))
        .collect();
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
    })
}

impl Format {
    fn logprobs(&self, lps: &[TokenLogprob]) -> Value {
        match self.kind {
            Kind::Chat => chat_logprobs(lps),
            Kind::Completion => completion_logprobs(lps),
        }
    }

    fn chunk(&self, choice: Value, usage: Option<Value>) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let choices = if choice.is_null() { json!([]) } else { json!([choice]) };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
                           "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }

    /// The SSE data lines for one event, and whether the stream is over.
    fn stream_event(&mut self, ev: Event) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        if self.first && self.kind == Kind::Chat {
            let delta = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null});
            out.push(self.chunk(delta, None).to_string());
        }
        self.first = false;
        match ev {
            Event::Token { text, logprob } => {
                let lp = logprob.map(|l| self.logprobs(&[l]));
                let choice = match self.kind {
                    Kind::Chat => {
                        json!({"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
                    }
                    Kind::Completion => json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": null}),
                };
                out.push(self.chunk(choice, None).to_string());
                (out, false)
            }
            Event::Done(f) => {
                let choice = match self.kind {
                    Kind::Chat => json!({"index": 0, "delta": {}, "finish_reason": f.reason.as_str()}),
                    Kind::Completion => json!({"index": 0, "text": "", "finish_reason": f.reason.as_str()}),
                };
                let mut last = self.chunk(choice, None);
                last["timings"] = timings(&f);
                out.push(last.to_string());
                if self.include_usage {
                    out.push(self.chunk(Value::Null, Some(usage(&f))).to_string());
                }
                out.push("[DONE]".into());
                (out, true)
            }
            Event::Failed(msg) => {
                out.push(ApiError::server(msg).body().to_string());
                out.push("[DONE]".into());
                (out, true)
            }
        }
    }
}

/// Server-sent events; dropping the stream (a client that went away) drops `rx`, which cancels the job.
fn stream_response(
    rx: UnboundedReceiver<Event>,
    fmt: Format,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let s = stream::unfold(Some((rx, fmt)), |state| async move {
        let (mut rx, mut fmt) = state?;
        let ev = rx
            .recv()
            .await
            .unwrap_or_else(|| Event::Failed("the scheduler dropped the request".into()));
        let (lines, done) = fmt.stream_event(ev);
        Some((lines, if done { None } else { Some((rx, fmt)) }))
    })
    .flat_map(|lines| stream::iter(lines.into_iter().map(|l| Ok(SseEvent::default().data(l)))));
    Sse::new(s)
}

async fn collect(mut rx: UnboundedReceiver<Event>, fmt: Format, n_prompt: usize) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut lps = Vec::new();
    let finish = loop {
        match rx.recv().await {
            Some(Event::Token { text: t, logprob }) => {
                text.push_str(&t);
                lps.extend(logprob);
            }
            Some(Event::Done(f)) => break f,
            Some(Event::Failed(msg)) => return Err(ApiError::server(msg)),
            None => {
                return Err(ApiError::server(format!(
                    "the scheduler dropped a {n_prompt}-token request"
                )))
            }
        }
    };
    let has_lp = !lps.is_empty();
    let lp = if has_lp { fmt.logprobs(&lps) } else { Value::Null };
    let (object, choice) = match fmt.kind {
        Kind::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                   "finish_reason": finish.reason.as_str()}),
        ),
        Kind::Completion => (
            "text_completion",
            json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish.reason.as_str()}),
        ),
    };
    Ok(Json(json!({
        "id": fmt.id, "object": object, "created": fmt.created, "model": fmt.model,
        "choices": [choice], "usage": usage(&finish), "timings": timings(&finish),
    }))
    .into_response())
}
