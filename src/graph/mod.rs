//! Reusable transformer blocks over the safe ggml wrapper, each configured by a params struct instead of
//! llama.cpp's positional flags: [`attention`] (`build_attn` without flash attention) and [`moe_ffn`]
//! (`build_moe_ffn`). Intermediates are named as llama.cpp names them (`"{name}-{il}"`), so a dump can be diffed
//! against llama.cpp's eval callback.
//!
//! Shapes in comments are in ggml order (innermost first), the reverse of PyTorch's.

pub mod attention;
pub mod attn_op;
pub mod expert_cache;
pub mod expert_io;
mod expert_uring;
pub mod linear;
pub mod moe;
mod sparse_batched;
mod sparse_kernel;
pub mod sparse_moe;
mod sparse_native;
mod sparse_split;

pub use attention::{attention, AttnInputs, AttnKernel, AttnParams, AttnWeights, KvLayer, KvRead, SeqAttn};
pub use attn_op::{attn_cells, CellAttnParams};
pub use expert_cache::{CacheParams, CachePolicy, CacheStats, ExpertCache, ExpertExtents};
pub use expert_io::{ExpertFile, ExpertReadError, Extent, IoBackend, ReadPlan};
pub use linear::linear;
pub use moe::{moe_ffn, MoeWeights};
pub use sparse_moe::{DownType, MoeStats, RouteEvent, RouteHook, SparseMoe, SparseMoeError, SparseParams, N_PARTS};

use crate::ggml::{Context, Tensor};

/// `rms_norm(x) * w` (llama.cpp's `build_norm` with `LLM_NORM_RMS`): `x [n, ...]`, `w [n]`.
pub fn rms_norm_w<'a>(ctx: &'a Context, x: Tensor<'a>, w: Tensor<'a>, eps: f32) -> Tensor<'a> {
    ctx.mul(ctx.rms_norm(x, eps), w)
}
