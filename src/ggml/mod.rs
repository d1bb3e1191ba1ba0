//! Safe wrapper over the vendored ggml: the only module of the crate with `unsafe`.
//!
//! The mental model is ggml's own: a [`Context`] owns tensor *metadata* (and, unless `no_alloc`, the data too);
//! ops only record nodes, nothing is computed until a [`Graph`] built from an output tensor is computed explicitly.
//!
//! ```
//! use smallthinker::ggml::{Context, ContextParams};
//! use smallthinker::gguf::GgmlType;
//!
//! let ctx = Context::new(ContextParams { mem_size: 1 << 20, no_alloc: false }).unwrap();
//! let a = ctx.new_tensor_2d(GgmlType::F32, 2, 3); // [2, 3]: 3 rows of 2
//! let b = ctx.new_tensor_2d(GgmlType::F32, 2, 1); // [2, 1]
//! a.set_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
//! b.set_f32(&[10.0, 1.0]).unwrap();
//! let c = ctx.mul_mat(a, b); // [3, 1]: c[i] = dot(a row i, b)
//! let mut gf = ctx.new_graph(16);
//! gf.build_forward_expand(c);
//! gf.compute(2).unwrap(); // the only place where work happens
//! assert_eq!(c.to_f32_vec().unwrap(), vec![12.0, 34.0, 56.0]);
//! ```
//!
//! For a model: weights go in a long-lived `no_alloc` context, either pointing straight into a memory-mapped GGUF
//! ([`Context::new_tensor_from_bytes`], read-only, lifetime-bound to the mapping) or copied into one CPU buffer
//! ([`Context::alloc_cpu_buffer`]). Each evaluation builds its graph in a fresh `no_alloc` context whose
//! intermediates a graph allocator places ([`Context::allocate_graph`]); a `Tensor<'weights>` coerces to the
//! shorter lifetime of the compute context.
//!
//! ```
//! # use smallthinker::ggml::{Context, ContextParams, CpuBackend};
//! # use smallthinker::gguf::GgmlType;
//! let file: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect(); // "the mmap"
//! let wctx = Context::new(ContextParams { mem_size: 1 << 12, no_alloc: true }).unwrap();
//! let w = wctx.new_tensor_from_bytes("w", GgmlType::F32, &[2, 2], &file).unwrap(); // [2, 2], no copy
//!
//! let cctx = Context::new(ContextParams { mem_size: 1 << 16, no_alloc: true }).unwrap();
//! let x = cctx.new_tensor_1d(GgmlType::F32, 2).set_input(); // [2]
//! let y = cctx.mul_mat(w, x).format_name("y", 0).set_output(); // [2], named "y-0"
//! let mut gf = cctx.new_graph(8);
//! gf.build_forward_expand(y);
//! cctx.allocate_graph(&gf).unwrap();
//! x.set_f32(&[1.0, 1.0]).unwrap();
//! let backend = CpuBackend::new().unwrap();
//! backend.set_n_threads(2);
//! gf.compute_with_backend(&backend).unwrap();
//! assert_eq!(y.to_f32_vec().unwrap(), vec![3.0, 7.0]);
//! ```
//!
//! Misuse that ggml would answer with `GGML_ASSERT` (an abort) panics here first, naming the op and the shapes;
//! failures that depend on data or the machine (allocation, compute status, a panicking custom op) are
//! [`GgmlError`]s.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod mmap;
pub mod q4_axpy;
pub mod q4x8;
pub mod q4x8_gemm;
pub mod q4x8_gemv;
pub mod quant;
pub mod simd;
pub mod uring;
#[rustfmt::skip]
pub mod sys;

/// Panics with "ggml {op}: {message}" unless `cond`: the Rust-side twin of a `GGML_ASSERT`.
macro_rules! ensure {
    ($cond:expr, $op:expr, $($arg:tt)+) => {
        // `let` first: `!(x >= 0.0)` is deliberate (NaN fails like ggml's assert), so no partial_cmp lint
        let ok: bool = $cond;
        if !ok {
            panic!("ggml {}: {}", $op, format!($($arg)+));
        }
    };
}

mod backend;
mod context;
mod custom;
mod graph;
mod ops;
mod ops_attn;
mod ops_shape;
mod owned;
mod recycle;
mod repack;
pub mod rows;
mod tensor;

pub use backend::{from_float, vec_dot, vec_dot_type, CpuBackend};
pub use context::{Context, ContextParams};
pub use custom::{ClaimedRanges, CustomOpCtx, DstChunks, DstRows};
pub use graph::Graph;
pub use ops::{Prec, SortOrder};
pub use ops_attn::{RopeMode, RopeParams};
pub use owned::{Built, Env, OwnedGraph};
pub use repack::repackable;
pub use tensor::Tensor;

use crate::gguf::GgmlType;

/// Errors from ggml that depend on data, memory or compute, not on how the graph was written.
#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    /// `ggml_init` returned null.
    #[error("ggml_init failed for a context of {mem_size} bytes")]
    Init { mem_size: usize },
    /// A host read or write of tensor data with the wrong number of bytes or elements.
    #[error("tensor `{name}`: {got} bytes given, {expected} expected")]
    DataLength { name: String, expected: usize, got: usize },
    /// The tensor has no data yet (a `no_alloc` context that was not allocated).
    #[error("tensor `{name}` has no data (no_alloc context, not allocated)")]
    NoData { name: String },
    /// A typed read or write with the wrong element type.
    #[error("tensor `{name}` is {got}, not {expected}")]
    WrongType {
        name: String,
        expected: GgmlType,
        got: GgmlType,
    },
    /// Host access to a non-contiguous tensor (a view); `cont` it first.
    #[error("tensor `{name}` is not contiguous")]
    NotContiguous { name: String },
    /// A write to a tensor whose data is borrowed read-only memory (e.g. a memory-mapped GGUF).
    #[error("tensor `{name}` points into read-only borrowed memory")]
    ReadOnly { name: String },
    /// A `new_tensor_from_bytes` whose dims are not whole blocks of the type.
    #[error("tensor `{name}`: dims {ne:?} are not whole {ty} blocks")]
    BadDims { name: String, ty: GgmlType, ne: [i64; 4] },
    /// Borrowed tensor data not aligned for its element type.
    #[error("tensor `{name}`: data is not {align}-byte aligned")]
    Misaligned { name: String, align: usize },
    /// `compute` was asked for zero threads.
    #[error("compute needs at least one thread, got {n_threads}")]
    Threads { n_threads: i32 },
    /// A tensor of the graph has no data at compute time.
    #[error("graph tensor `{name}` has no data: allocate its context or the graph first")]
    Unallocated { name: String },
    /// A host-set id tensor holds an id outside `0..limit` (a token id past the vocabulary, a bad expert id).
    #[error("ids `{name}` of `{node}` hold {id}, outside 0..{limit}")]
    IdOutOfRange {
        name: String,
        node: String,
        id: i64,
        limit: i64,
    },
    /// ggml_graph_compute / ggml_backend_graph_compute returned a status other than success.
    #[error("ggml graph compute failed with status {status}")]
    Compute { status: i32 },
    /// A custom-op closure panicked on a worker thread; its output is garbage.
    #[error("custom op `{name}` panicked: {message}")]
    CustomOpPanicked { name: String, message: String },
    /// A backend object or buffer could not be created.
    #[error("ggml backend: {what} failed")]
    Backend { what: &'static str },
}

/// `sys::ggml_type` for a [`GgmlType`]: the ids are ggml's own.
pub(crate) fn to_sys_type(ty: GgmlType) -> sys::ggml_type {
    ty.id() as sys::ggml_type
}

/// [`GgmlType`] for a `sys::ggml_type` read back from a tensor.
pub(crate) fn from_sys_type(ty: sys::ggml_type) -> GgmlType {
    GgmlType::from_id(ty).unwrap_or_else(|| panic!("ggml tensor has type id {ty}, unknown to GgmlType"))
}

/// The CPU features ggml was compiled with, as ggml reports them.
pub fn cpu_features() -> Vec<&'static str> {
    // SAFETY: these ggml functions take no arguments and only read compile-time constants.
    let flags = unsafe {
        [
            ("AVX2", sys::ggml_cpu_has_avx2()),
            ("FMA", sys::ggml_cpu_has_fma()),
            ("F16C", sys::ggml_cpu_has_f16c()),
            ("BMI2", sys::ggml_cpu_has_bmi2()),
            ("AVX512", sys::ggml_cpu_has_avx512()),
            ("NEON", sys::ggml_cpu_has_neon()),
        ]
    };
    flags.iter().filter(|(_, on)| *on != 0).map(|(n, _)| *n).collect()
}
