//! One sequence being evaluated: the prompt in batches of `n_batch` tokens per graph, then decode one token at
//! a time, through the KV cache. Each batch builds its graph in a fresh `no_alloc` compute context whose
//! intermediates a graph allocator places, except that a decode step reuses the previous step's graph when it
//! has the same shape (`step_graph.rs`); inputs are checked before any graph is built.
//!
//! The caller owns the contexts, so that the weights borrow the map and the cache borrows its context:
//!
//! ```no_run
//! use smallthinker::gguf::GgufFile;
//! use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = GgufFile::open("model.gguf".as_ref())?;
//! let wctx = Model::context(&file)?;
//! let model = Model::load(&wctx, &file)?; // hparams and every tensor validated
//! let kctx = KvCache::context(&model.hp)?;
//! let kv = KvCache::new(&kctx, &model.hp, KvParams { n_ctx: 4096, n_batch: 512, ty: KvType::F16 })?;
//! let mut session = Session::new(&model, kv, SessionParams { n_threads: 2, ..Default::default() })?;
//! let prompt = session.eval(&[1, 2, 3], Rows::Last)?; // [n_vocab]
//! let next = session.eval(&[4], Rows::Last)?; // one decode step
//! # Ok(()) }
//! ```

use std::sync::Arc;

use super::step_graph::{StepGraph, StepKey, KV_PAD};
use super::{KvCache, Model};
use crate::ggml::{CpuBackend, GgmlError};
use crate::gguf::GgmlType;
use crate::graph::{AttnKernel, CacheStats, DownType, ExpertReadError, MoeStats, RouteHook, SparseMoe, SparseParams};

/// Which logits an evaluation returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The last position only.
    Last,
    /// Every position evaluated.
    All,
}

/// Why an evaluation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("no tokens to evaluate")]
    Empty,
    #[error("token {index} is {token}, outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { index: usize, token: u32, n_vocab: u32 },
    #[error("{n_tokens} tokens after {n_past} do not fit the context of {n_ctx}")]
    ContextFull { n_past: u32, n_tokens: usize, n_ctx: u32 },
    /// An expert could not be read into the cache: this evaluation's results are discarded.
    #[error(transparent)]
    ExpertRead(#[from] ExpertReadError),
    /// A batched decode step got a different number of tokens than sessions.
    #[error("a batch of {sessions} sessions got {tokens} tokens (one per session)")]
    BatchLength { sessions: usize, tokens: usize },
    /// A session of a batch cannot join the others in one graph.
    #[error("session {index} of the batch is on another {what} than session 0")]
    BatchMismatch { index: usize, what: &'static str },
    /// A session of a batch refused its token.
    #[error("session {index} of the batch: {source}")]
    InBatch { index: usize, source: Box<EvalError> },
    #[error(transparent)]
    Ggml(#[from] GgmlError),
}

/// One named intermediate read back after a batch (llama.cpp's eval callback, for bisecting mismatches).
#[derive(Clone, Debug)]
pub struct Traced {
    /// llama.cpp's name, e.g. `ffn_moe_logits-3`.
    pub name: String,
    /// Index of the batch (of `n_batch` tokens) it comes from.
    pub batch: usize,
    /// ggml shape.
    pub ne: [i64; 4],
    /// Values in ggml order (I32 tensors such as `ffn_moe_topk` converted to f32).
    pub values: Vec<f32>,
}

/// Evaluation settings.
#[derive(Clone, Copy, Debug)]
pub struct SessionParams {
    /// Threads of the CPU backend.
    pub n_threads: usize,
    /// Run the MoE with plain ggml ops (mul_mat_id, llama.cpp's graph) instead of the sparse path.
    pub dense: bool,
    /// Type of the sparse path's transposed down copy.
    pub down_type: DownType,
    /// Batches of more tokens than this take the dense path even when `dense` is false (default 1: decode
    /// sparse, prompts through ggml's expert-grouped mul_mat_id, which keeps llama.cpp's numerics for prompts).
    /// Repacked experts ignore it: their batched op gives mul_mat_id's results for every batch.
    pub sparse_max_batch: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            n_threads: 2,
            dense: false,
            down_type: DownType::Auto,
            sparse_max_batch: 1,
        }
    }
}

/// The MoE path of a session: the sparse-path state (None: dense) and how it was chosen. Built once per model
/// and cloned into every session that shares it (the server's slots), so that the transposed down copies and
/// the expert cache exist once.
#[derive(Clone)]
pub struct MoeSetup {
    sparse: Option<Arc<SparseMoe>>,
    pub(super) sparse_max_batch: u32,
    description: String,
}

impl MoeSetup {
    /// The path `params` ask for: dense with `dense`, else sparse when the model's types allow it (else dense,
    /// and the description says why).
    pub fn new(model: &Model<'_>, params: &SessionParams) -> MoeSetup {
        let n = params.sparse_max_batch;
        let dense = |description| MoeSetup {
            sparse: None,
            sparse_max_batch: n,
            description,
        };
        if params.dense {
            return dense("dense (--dense)".to_string());
        }
        // Repacked experts (the default --repack all on Q4_0) are in ggml's interleaved layout: the op runs our
        // 8-row kernels (ggml::q4x8_gemm) on them, for every batch size, with the results of ggml's mul_mat_id.
        let repacked = model.layers.iter().any(|l| !l.experts.gate_exps.is_borrowed());
        let hp = &model.hp;
        let experts: Vec<_> = model.layers.iter().map(|l| l.experts).collect();
        let sp = SparseParams {
            down: params.down_type,
            n_threads: params.n_threads,
            cache: None,
            repacked,
            lookahead: 0,
        };
        if repacked {
            return match SparseMoe::new(&experts, &hp.moe(), hp.n_embd as usize, sp) {
                Ok(s) => MoeSetup {
                    sparse: Some(Arc::new(s)),
                    sparse_max_batch: u32::MAX,
                    description: "sparse on repacked experts (interleaved 8-row Q4_0 kernels: a token's \
                                  experts as GEMVs in 64-row chunks over all threads, a GEMM over each expert's \
                                  tokens in a batch)"
                        .into(),
                },
                Err(e) => dense(format!(
                    "dense on repacked experts (ggml's mul_mat_id; sparse path unavailable: {e})"
                )),
            };
        }
        match SparseMoe::new(&experts, &hp.moe(), hp.n_embd as usize, sp) {
            Ok(s) => {
                let mib = s.down_bytes() as f64 / (1024.0 * 1024.0);
                let layout = if s.is_native() {
                    format!("down on the GGUF layout ({})", s.down_type())
                } else {
                    format!("down transposed to {}, {mib:.0} MiB", s.down_type())
                };
                let description = format!("sparse ({layout}; batches of up to {n} tokens, larger ones dense)");
                MoeSetup {
                    sparse: Some(Arc::new(s)),
                    sparse_max_batch: n,
                    description,
                }
            }
            Err(e) => dense(format!("dense (sparse path unavailable: {e})")),
        }
    }

    pub(super) fn from_parts(sparse: Option<Arc<SparseMoe>>, sparse_max_batch: u32, description: String) -> MoeSetup {
        MoeSetup {
            sparse,
            sparse_max_batch,
            description,
        }
    }

    /// After a compute: the expert cache's first read error, if any. Its rows were zeros, so the KV caches now
    /// hold positions computed from them and the evaluation must fail.
    pub(super) fn check_reads(&self) -> Result<(), ExpertReadError> {
        match self.sparse().and_then(|s| s.cache()).and_then(|c| c.take_error()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// For the start-up log: "sparse (down transposed to Q8_0, N MiB ...)" or "dense (...)".
    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn sparse(&self) -> Option<&Arc<SparseMoe>> {
        self.sparse.as_ref()
    }

    /// True if both run the same MoE path: one shared sparse state (or both dense) and the same batch limit.
    pub fn same_as(&self, other: &MoeSetup) -> bool {
        let same_sparse = match (&self.sparse, &other.sparse) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_sparse && self.sparse_max_batch == other.sparse_max_batch
    }
}

/// A model, its KV cache and the position reached.
pub struct Session<'a> {
    pub(super) model: &'a Model<'a>,
    pub(super) kv: KvCache<'a>,
    pub(super) backend: CpuBackend,
    pub(super) n_past: u32,
    pub(super) moe: MoeSetup,
    pub(super) attn: AttnKernel,
    /// The last decode step's graph, for the next step if it has the same shape.
    step: Option<StepGraph<'a>>,
    graphs_built: u64,
}

impl<'a> Session<'a> {
    /// A session with its own MoE path, built from `params` ([`MoeSetup::new`]).
    pub fn new(model: &'a Model<'a>, kv: KvCache<'a>, params: SessionParams) -> Result<Session<'a>, GgmlError> {
        Session::with_moe(model, kv, params, MoeSetup::new(model, &params))
    }

    /// A session on a MoE path shared with other sessions of the same model (`params.dense`, `down_type` and
    /// `sparse_max_batch` are then the setup's, not `params`').
    pub fn with_moe(
        model: &'a Model<'a>,
        kv: KvCache<'a>,
        params: SessionParams,
        moe: MoeSetup,
    ) -> Result<Session<'a>, GgmlError> {
        let backend = CpuBackend::new()?;
        backend.set_n_threads(params.n_threads);
        Ok(Session {
            model,
            kv,
            backend,
            n_past: 0,
            moe,
            attn: AttnKernel::default(),
            step: None,
            graphs_built: 0,
        })
    }

    /// Which MoE path runs, for the start-up log: "sparse (down transposed to Q8_0, N MiB)" or "dense (...)".
    pub fn moe_path(&self) -> &str {
        self.moe.description()
    }

    /// Neuron counters of the sparse path since the last [`reset_moe_stats`](Self::reset_moe_stats) (zero on
    /// the dense path).
    pub fn moe_stats(&self) -> MoeStats {
        self.moe.sparse().map(|s| s.stats()).unwrap_or_default()
    }

    /// The expert cache's counters, with a memory budget.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.moe.sparse().and_then(|s| s.cache()).map(|c| c.stats())
    }

    pub fn reset_moe_stats(&self) {
        if let Some(s) = self.moe.sparse() {
            s.reset_stats();
        }
    }

    /// Installs the hook the sparse path's router calls with each layer's expert ids before that layer's
    /// attention (see [`RouteHook`]). Returns false (and drops it) on the dense path, which has no router op.
    pub fn set_route_hook(&self, hook: Option<RouteHook>) -> bool {
        match self.moe.sparse() {
            Some(s) => {
                s.set_route_hook(hook);
                true
            }
            None => false,
        }
    }

    /// Positions evaluated so far.
    pub fn n_past(&self) -> u32 {
        self.n_past
    }

    pub fn kv(&self) -> &KvCache<'a> {
        &self.kv
    }

    /// Graphs this session has built: one per batch, except decode steps that reused the previous step's.
    pub fn graphs_built(&self) -> u64 {
        self.graphs_built
    }

    /// Chooses the attention implementation of later evaluations (the default is [`AttnKernel::Cells`]).
    pub fn set_attn_kernel(&mut self, kernel: AttnKernel) {
        self.attn = kernel;
    }

    /// Goes back to position `n` (keeping the first `n` positions), so that the next `eval` continues from
    /// there. Returns false, and changes nothing, when `n` is past the positions seen or a sliding-window ring
    /// no longer holds what position `n` needs (then `reset` and evaluate from the start).
    pub fn truncate(&mut self, n: u32) -> bool {
        if n > self.n_past || !self.kv.truncate(n) {
            return false;
        }
        self.n_past = n;
        true
    }

    /// Starts a new sequence.
    pub fn reset(&mut self) {
        self.kv.clear();
        self.n_past = 0;
    }

    /// Evaluates `tokens` after the positions already seen and returns the logits of `rows`, row-major
    /// `[n_rows][n_vocab]`. A failed compute leaves the cache in an unknown state: `reset` before reuse.
    pub fn eval(&mut self, tokens: &[u32], rows: Rows) -> Result<Vec<f32>, EvalError> {
        self.eval_traced(tokens, rows, &[]).map(|(logits, _)| logits)
    }

    /// [`eval`](Self::eval), also returning the graph tensors named in `trace` (kept out of the allocator's
    /// memory reuse), one entry per batch that has them. Strided views (`ffn_moe_topk`) are not returned.
    pub fn eval_traced(
        &mut self,
        tokens: &[u32],
        rows: Rows,
        trace: &[&str],
    ) -> Result<(Vec<f32>, Vec<Traced>), EvalError> {
        self.check(tokens)?;
        let kvp = self.kv.params();
        let batches: Vec<&[u32]> = tokens.chunks(kvp.n_batch as usize).collect();
        let mut logits = Vec::new();
        let mut traced = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            let out_rows: Vec<i32> = match rows {
                Rows::All => (0..batch.len() as i32).collect(),
                // Earlier batches still need one output row for the graph; it is discarded.
                Rows::Last => vec![batch.len() as i32 - 1],
            };
            let out = self.eval_batch(batch, &out_rows, trace, &mut |t| traced.push(Traced { batch: i, ..t }))?;
            if rows == Rows::All || i + 1 == batches.len() {
                // The first batch's logits are moved, not copied: a decode step's 150k floats would be a fresh
                // 600 KB allocation to fault in.
                if logits.is_empty() {
                    logits = out;
                } else {
                    logits.extend(out);
                }
            }
        }
        Ok((logits, traced))
    }

    /// Refuses `tokens` before anything is built or placed: empty, out of the vocabulary, or past the context.
    pub(super) fn check(&self, tokens: &[u32]) -> Result<(), EvalError> {
        let n_vocab = self.model.hp.n_vocab;
        let n_ctx = self.kv.params().n_ctx;
        if tokens.is_empty() {
            return Err(EvalError::Empty);
        }
        if let Some((index, &token)) = tokens.iter().enumerate().find(|(_, &t)| t >= n_vocab) {
            return Err(EvalError::TokenOutOfRange { index, token, n_vocab });
        }
        if tokens.len() > (n_ctx - self.n_past) as usize {
            return Err(EvalError::ContextFull {
                n_past: self.n_past,
                n_tokens: tokens.len(),
                n_ctx,
            });
        }
        Ok(())
    }

    fn eval_batch(
        &mut self,
        tokens: &[u32],
        out_rows: &[i32],
        trace: &[&str],
        traced: &mut dyn FnMut(Traced),
    ) -> Result<Vec<f32>, EvalError> {
        let n_tokens = tokens.len() as u32;
        // Decode steps keep their graph for the next step (step_graph.rs): the cell-position attention reads
        // the padding's empty cells at no cost, so it gives the same floats. The mask kernels (the reference
        // paths) and traced evaluations build every graph afresh, unpadded.
        let keep = n_tokens == 1 && trace.is_empty() && self.attn == AttnKernel::Cells;
        let plan = self
            .kv
            .place_padded(self.n_past, n_tokens, if keep { KV_PAD } else { 1 });
        let sparse = self
            .moe
            .sparse()
            .map(|s| &**s)
            .filter(|_| n_tokens <= self.moe.sparse_max_batch);
        let key = StepKey::new(tokens.len(), out_rows.len(), &plan, sparse.is_some(), self.attn);
        // A prompt batch leaves the kept step graph alone, for the decode steps after it.
        let kept = if keep {
            self.step.take().filter(|s| s.key == key)
        } else {
            None
        };
        let step = match kept {
            Some(step) => step,
            None => {
                self.graphs_built += 1;
                StepGraph::build(self.model, &self.kv, &plan, sparse, key, trace)?
            }
        };
        step.set_inputs(tokens, out_rows, self.n_past, &plan)?;
        step.compute(&self.backend)?;
        self.moe.check_reads()?;
        self.n_past += n_tokens;
        for t in step.traced() {
            let values = match t.ty() {
                GgmlType::I32 => t.to_i32_vec()?.into_iter().map(|v| v as f32).collect(),
                _ => t.to_f32_vec()?,
            };
            traced(Traced {
                name: t.name(),
                batch: 0,
                ne: t.ne(),
                values,
            });
        }
        let logits = step.logits()?;
        if keep {
            self.step = Some(step);
        }
        Ok(logits)
    }
}
