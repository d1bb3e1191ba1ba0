//! smallthinker: inference engine and toolchain for SmallThinker models on a vendored ggml.
//!
//! Shapes in comments are in ggml order (innermost, fastest-varying dimension first), the reverse of PyTorch's.
#![deny(unsafe_code)]

pub mod chat;
pub mod convert;
pub mod ggml;
pub mod gguf;
pub mod graph;
pub mod model;
pub mod sampling;
pub mod server;
pub mod synth;
pub mod tokenizer;

pub use ggml::quant;
