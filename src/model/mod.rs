//! The SmallThinker model description: hyperparameters read from GGUF metadata ([`Hparams`]) and the declared
//! weight table ([`tensors`]), both following llama.cpp's `src/models/smallthinker.cpp` (load_arch_hparams,
//! load_arch_tensors). The forward graph builds on these.
//!
//! Shapes are in ggml order (`ne[0]` first, the fastest-varying dimension), the reverse of PyTorch's.

mod batch;
mod budget;
mod hparams;
pub mod kv_cache;
pub mod profile;
mod repack;
pub mod session;
pub mod smallthinker;
mod step_graph;
pub mod tensors;
pub mod weights;

pub use batch::decode_batch;
pub use budget::{resident_bytes, BudgetError, BudgetParams, BudgetReport};
pub use hparams::{keys, Gating, Hparams, MoeParams, NO_ROPE_LAYER_STEP, N_SWA, SWA_PATTERN, WEIGHTS_SUM_MIN};
pub use kv_cache::{BatchCells, BatchPlan, KvCache, KvLayout, KvParams, KvType};
pub use profile::{profile_tokens, ExpertProfile, ProfileError};
pub use session::{EvalError, MoeSetup, Rows, Session, SessionParams, Traced};
pub use tensors::{TensorKind, TensorSpec, Weight};
pub use weights::{LayerWeights, LoadError, Model};

use crate::gguf::GgmlType;

/// Why a GGUF file is not a SmallThinker model this crate can run. Every variant names the key or tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A required metadata key is absent.
    #[error("GGUF key `{key}` is missing")]
    MissingKey { key: String },
    /// A metadata key has a different GGUF value type than llama.cpp reads it as.
    #[error("GGUF key `{key}` has type {got}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        got: String,
    },
    /// A metadata key holds a value that is out of range, inconsistent with another key, or not supported.
    #[error("GGUF key `{key}` = {value}: {reason}")]
    BadValue { key: String, value: String, reason: String },
    /// A declared, required weight is absent.
    #[error("tensor `{name}` is missing")]
    MissingTensor { name: String },
    /// A weight has a different shape than the hyperparameters imply (both in ggml order).
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?} (ggml order)")]
    ShapeMismatch {
        name: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },
    /// The file holds a tensor that is not part of a SmallThinker model (llama.cpp rejects such files).
    #[error("tensor `{name}` is not part of a SmallThinker model")]
    UnexpectedTensor { name: String },
    /// A weight is stored in a type the CPU backend cannot use for it.
    #[error("tensor `{name}` has type {ty}: {reason}")]
    UnsupportedType {
        name: String,
        ty: GgmlType,
        reason: &'static str,
    },
}
