//! GGUF v3: a defensive memory-mapped reader and a streaming writer, in pure Rust (no ggml).
mod types;

pub use types::GgmlType;
