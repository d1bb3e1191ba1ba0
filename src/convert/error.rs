//! Conversion errors: each names the file, tensor or key at fault.

use std::path::PathBuf;

/// Why a conversion failed. No output file is left behind on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: required file is missing")]
    MissingFile { path: PathBuf },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: key {key}: {why}")]
    BadKey { path: PathBuf, key: String, why: String },
    #[error("{path}: unsupported architecture {found:?} (expected SmallThinkerForCausalLM / model_type smallthinker)")]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error("layer layout not expressible for llama.cpp: {why}")]
    UnsupportedLayout { why: String },
    #[error("{path}: corrupt safetensors header: {why}")]
    BadSafetensors { path: PathBuf, why: String },
    #[error("{path}: tensor {tensor}: unsupported dtype {dtype} (expected BF16, F16 or F32)")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{index}: names shard {shard}, which does not exist")]
    MissingShard { index: PathBuf, shard: PathBuf },
    #[error("{index}: tensor {tensor} is listed for {shard} but that shard does not contain it")]
    IndexMismatch {
        index: PathBuf,
        tensor: String,
        shard: String,
    },
    #[error("tensor {tensor} appears in both {first} and {second}")]
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("checkpoint has no tensor {tensor} (required by config.json)")]
    MissingTensor { tensor: String },
    #[error("unexpected tensor {tensor} in {path}: no GGUF mapping for it")]
    UnmappedTensor { tensor: String, path: PathBuf },
    #[error("tensor {tensor}: shape {got:?} disagrees with config.json, which implies {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },
    #[error("tensor {tensor}: {source}")]
    Quantize {
        tensor: String,
        source: crate::quant::QuantError,
    },
    #[error("tensor {tensor}: produced {written} bytes, the GGUF needs {expected} (internal error)")]
    WrongSize {
        tensor: String,
        expected: u64,
        written: u64,
    },
    #[error("{path}: writing the GGUF failed: {source}")]
    Write {
        path: PathBuf,
        source: crate::gguf::GgufError,
    },
}

impl ConvertError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ConvertError {
        let path = path.into();
        move |source| ConvertError::Io { path, source }
    }
}
