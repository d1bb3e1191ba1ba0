//! The llama.cpp fixtures in tests/fixtures/model/ (written by tools/ref/llama_fixtures.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smallthinker::model::{Gating, Hparams};

/// The configs, one folder each.
pub const CONFIGS: &[&str] = &["st4b", "st21b", "stmha"];

#[derive(Deserialize)]
pub struct Config {
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    pub n_ff_exp: u32,
    pub gating: u32,
    pub tied: bool,
    pub sliding_window: Option<u32>,
    pub rope_base: Option<f32>,
    pub eps: f32,
    pub n_ctx_train: u32,
    pub clamp_tokens: Vec<u32>,
}

#[derive(Deserialize)]
pub struct ModelFile {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub tensor_types: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub struct Logits {
    pub model: String,
    pub sequence: String,
    pub file: String,
    /// Positions of the saved rows within the sequence.
    pub rows: Vec<usize>,
    pub shape: [usize; 2],
}

#[derive(Deserialize)]
pub struct Greedy {
    pub model: String,
    pub prompt: Vec<u32>,
    pub tokens: Vec<u32>,
    /// top1 - top2 logit of each step.
    pub margins: Vec<f32>,
}

#[derive(Deserialize)]
pub struct Manifest {
    pub config: Config,
    pub n_vocab: u32,
    pub models: BTreeMap<String, ModelFile>,
    pub sequences: BTreeMap<String, Vec<u32>>,
    pub logits: Vec<Logits>,
    pub greedy: Vec<Greedy>,
    #[serde(skip)]
    pub dir: PathBuf,
}

pub fn dir(config: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(config)
}

pub fn manifest(config: &str) -> Manifest {
    let d = dir(config);
    let text = std::fs::read_to_string(d.join("manifest.json")).expect("read manifest.json");
    let mut m: Manifest = serde_json::from_str(&text).expect("parse manifest.json");
    m.dir = d;
    m
}

impl Manifest {
    pub fn gguf(&self, model: &str) -> PathBuf {
        self.dir.join(&self.models[model].file)
    }

    /// The saved rows of one logits file, row-major `[rows][n_vocab]`.
    pub fn read_logits(&self, l: &Logits) -> Vec<f32> {
        let raw = std::fs::read(self.dir.join(&l.file)).expect("read logits");
        assert_eq!(raw.len(), l.shape[0] * l.shape[1] * 4, "{}: size", l.file);
        assert_eq!(l.shape, [l.rows.len(), self.n_vocab as usize]);
        raw.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// The hyperparameters the generator used, independent of any GGUF parsing.
    pub fn hparams(&self) -> Hparams {
        let c = &self.config;
        let base = c.rope_base.unwrap_or(10000.0);
        Hparams {
            n_layer: c.n_layer,
            n_ctx_train: c.n_ctx_train,
            n_embd: c.n_embd,
            n_ff: Some(c.n_ff_exp),
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            n_embd_head_k: c.head_dim,
            n_embd_head_v: c.head_dim,
            rope_freq_base: base,
            rope_freq_base_swa: base,
            rms_norm_eps: c.eps,
            n_expert: c.n_expert,
            n_expert_used: c.n_expert_used,
            n_ff_exp: c.n_ff_exp,
            gating: Gating::from_id(c.gating).expect("gating id"),
            swa: c.sliding_window.filter(|&w| w > 0),
            n_vocab: self.n_vocab,
        }
    }
}

/// max |a - b| and the value range of `b` (the reference).
pub fn max_diff_and_range(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let (lo, hi) = b.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    (diff, hi - lo)
}
