//! `smallthinker serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of the scheduler thread
//! ([`engine`]) that runs the model's slots. [`Server::bind`] loads the model and binds; [`Server::run`] serves
//! until Ctrl-C.
pub mod api;
pub mod engine;
pub mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use engine::{Engine, EngineError, EngineParams};

use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
use crate::tokenizer::{Tokenizer, VocabSpec};

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServerParams {
    pub engine: EngineParams,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    pub max_body: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {detail}")]
    Model { path: PathBuf, detail: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound server with its model loaded.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    app: axum::Router,
}

impl Server {
    pub fn bind(p: ServerParams) -> Result<Server, ServeError> {
        let path = p.engine.model.clone();
        let model_err = |detail: String| ServeError::Model {
            path: path.clone(),
            detail,
        };
        let file = GgufFile::open(&path).map_err(|e| model_err(e.to_string()))?;
        let spec = VocabSpec::from_gguf(&file).map_err(|e| model_err(e.to_string()))?;
        let tok = Tokenizer::new(&spec).map_err(|e| model_err(e.to_string()))?;
        // A model without a template still serves text completions.
        let template = ChatTemplate::for_vocab(&spec).ok();
        drop(file);
        let engine = Engine::start(p.engine.clone())?;
        let model_id = path
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        let state = Arc::new(http::AppState {
            engine,
            tok,
            template,
            model_id,
            api_key: p.api_key.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let addr = format!("{}:{}", p.host, p.port);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&addr))
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server {
            runtime,
            listener,
            app: http::router(state, p.max_body),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until Ctrl-C.
    pub fn run(self) -> Result<(), ServeError> {
        let Server { runtime, listener, app } = self;
        runtime.block_on(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        })?;
        Ok(())
    }
}
