//! Helpers shared by the convert tests: synthesize a tiny checkpoint, edit safetensors files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use smallthinker::synth::{synth, Shape, SynthDtype, SynthParams};

pub fn vocab_gguf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/qwen2-vocab/ggml-vocab-qwen2.gguf")
}

/// A tiny synthetic checkpoint in `dir`.
pub fn tiny(dir: &Path, seed: u64, dtype: SynthDtype, shards: Option<usize>, lm_head: bool, config: Value) {
    let Value::Object(overrides) = config else {
        panic!("config must be an object")
    };
    let p = SynthParams {
        shape: Shape::Tiny,
        overrides,
        seed,
        dtype,
        shards,
        lm_head,
        vocab_gguf: vocab_gguf(),
        routing_skew: 0.0,
        token_routing: false,
        gate_shift: 0.0,
    };
    synth(dir, &p).expect("synth");
}

/// Reads a safetensors file as (header, data bytes).
pub fn read_st(path: &Path) -> (Map<String, Value>, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    (h, b[8 + n..].to_vec())
}

/// Writes a safetensors file from a header and data (header padded to 8 bytes).
pub fn write_st(path: &Path, h: &Map<String, Value>, data: &[u8]) {
    let mut hb = serde_json::to_vec(h).unwrap();
    while hb.len() % 8 != 0 {
        hb.push(b' ');
    }
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// Files left in a directory (to check that no partial output remains).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}
