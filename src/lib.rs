//! smallthinker: inference engine and toolchain for SmallThinker models on a vendored ggml.
#![deny(unsafe_code)]

pub mod ggml;
