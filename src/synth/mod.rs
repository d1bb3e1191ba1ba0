//! Random-weight SmallThinker checkpoints in Hugging Face format, for tests and benchmarks: `config.json`,
//! safetensors (one file or shards + `model.safetensors.index.json`), `tokenizer.json` and `tokenizer_config.json`
//! with the real Qwen2 vocabulary, and `generation_config.json`.
//!
//! Weights are seeded and deterministic: every tensor draws from its own stream (seed mixed with the tensor name),
//! so the bytes do not depend on sharding. Matrices ~ N(0, 0.02), norms ~ 1 + N(0, 0.02)·2.5. With a routing
//! skew a few values are overwritten after they are drawn (so every other value stays): the routers read a
//! reserved part of the residual stream and favour a few "hot" experts per layer ([`skew`]).
//!
//! The same values can go to safetensors files ([`synth`]) or, without them, straight into the converter
//! ([`SynthSource`], `synth --gguf-only`), which is how the 12 GB 21B shape is made without a 42 GB checkpoint.

mod config;
mod rng;
pub mod skew;
mod source;
mod tokenizer;
pub mod vocab;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

pub use config::{base_config, config_with_overrides, Shape};
pub use rng::Rng;
use skew::RouteDims;
pub use source::SynthSource;
pub use tokenizer::{tokenizer_config_json, tokenizer_json, QWEN2_SPLIT_REGEX};
pub use vocab::{Vocab, VocabError};

/// Element type of the synthetic safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthDtype {
    Bf16,
    F32,
}

impl std::str::FromStr for SynthDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<SynthDtype, String> {
        match s {
            "bf16" => Ok(SynthDtype::Bf16),
            "f32" => Ok(SynthDtype::F32),
            _ => Err(format!("unknown dtype {s:?} (bf16, f32)")),
        }
    }
}

/// What to synthesize.
#[derive(Clone, Debug)]
pub struct SynthParams {
    pub shape: Shape,
    /// Merged into the shape's config.json (a JSON object).
    pub overrides: Map<String, Value>,
    pub seed: u64,
    pub dtype: SynthDtype,
    /// Exactly this many shards (equal tensor counts); None = one file for tiny, 5 GB shards (HF's default) for
    /// the big shapes.
    pub shards: Option<usize>,
    /// Store `lm_head.weight` (the released 4B stores it although it is tied; for a tied config it equals the
    /// embedding). False omits it for a tied config.
    pub lm_head: bool,
    /// The Qwen2 vocab GGUF (vendor/qwen2-vocab/ggml-vocab-qwen2.gguf).
    pub vocab_gguf: PathBuf,
    /// Share of each layer's experts made "hot" (their router rows scaled, see [`skew`]); 0 = uniform routing,
    /// the weights of before the option existed.
    pub routing_skew: f32,
    /// Route on the reserved token dims (as a skew does) even without a skew: near-uniform routing. Without it
    /// and without a skew, the routers read the whole residual stream, whose common component sends most
    /// tokens to a few arbitrary experts per layer (the weights of before these options existed).
    pub token_routing: bool,
    /// ReGLU neuron sparsity like the trained models' (engine-notes.md: median sparsity above 0.6 in every layer,
    /// 0.9-1.0 in the first ones), where random weights leave half the neurons active: every expert gate row
    /// reads the constant bias block of the reserved dims (reserving them as `token_routing` does) with a
    /// negative weight that lowers its pre-activation by `gate_shift` at a residual rms of 1. The shift goes
    /// with `1 / rms` of the residual, which grows with depth, so sparsity is highest in the first layers, as
    /// in the trained models. 0: none (the weights of before the option existed).
    pub gate_shift: f32,
}

/// Why synthesis failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config key {key}: {why}")]
    Config { key: &'static str, why: String },
    #[error(transparent)]
    Vocab(#[from] VocabError),
    #[error("--routing-skew {skew}: {why}")]
    BadSkew { skew: f32, why: String },
    #[error("--gate-shift {shift}: {why}")]
    BadGateShift { shift: f32, why: String },
}

/// One tensor to generate.
#[derive(Clone, Debug)]
pub struct SynthTensor {
    pub name: String,
    /// PyTorch order (`[out_features, in_features]`).
    pub shape: Vec<u64>,
    kind: Init,
    edit: Edit,
}

#[derive(Clone, Copy, Debug)]
enum Init {
    /// N(0, 0.02), stream keyed by this name (so tied lm_head can reuse the embedding's stream).
    Matrix(&'static str),
    Norm,
}

/// Values overwritten after drawing, for a routing skew (`skew` module docs); rows and columns in PyTorch order.
#[derive(Clone, Debug)]
enum Edit {
    None,
    /// Columns in the range set to the value (the embedding's bias block).
    Columns(Range<u64>, f32),
    /// Rows in the range zeroed (o_proj, expert down: the residual dims no layer may write).
    ZeroRows(Range<u64>),
    /// A router: only `dims.route` columns kept, `dims.bias` columns set to `bias_weight[row]`, the rest 0.
    Router {
        dims: RouteDims,
        bias_weight: Vec<f32>,
    },
}

fn get_u64(c: &Map<String, Value>, key: &'static str) -> Result<u64, SynthError> {
    c.get(key).and_then(Value::as_u64).ok_or_else(|| SynthError::Config {
        key,
        why: "missing or not an integer".into(),
    })
}

/// The tensors of config `c`, in state-dict order (embedding, layers, final norm, lm_head), as `p` asks: a
/// routing skew reserves residual dims for the routers and favours hot experts (hot set drawn from the seed;
/// [`skew`]); token routing reserves them without hot experts; a gate shift makes the gates read their bias block.
pub fn tensor_list(c: &Map<String, Value>, p: &SynthParams) -> Result<Vec<SynthTensor>, SynthError> {
    let (seed, routing_skew, gate_shift) = (p.seed, p.routing_skew, p.gate_shift);
    let bad = |why: String| SynthError::BadSkew {
        skew: routing_skew,
        why,
    };
    if !(0.0..1.0).contains(&routing_skew) {
        return Err(bad("must be in [0, 1)".into()));
    }
    if !(p.gate_shift.is_finite() && p.gate_shift >= 0.0) {
        return Err(SynthError::BadGateShift {
            shift: p.gate_shift,
            why: "must be a finite number >= 0".into(),
        });
    }
    let h = get_u64(c, "hidden_size")?;
    let n_layer = get_u64(c, "num_hidden_layers")?;
    let n_head = get_u64(c, "num_attention_heads")?;
    let n_kv = get_u64(c, "num_key_value_heads")?;
    let hd = get_u64(c, "head_dim")?;
    let n_vocab = get_u64(c, "vocab_size")?;
    let n_expert = get_u64(c, "moe_num_primary_experts")?;
    let n_ff = get_u64(c, "moe_ffn_hidden_size")?;
    let tied = c.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true);
    let dims = if p.gate_shift > 0.0 && routing_skew == 0.0 {
        let bad = |why| SynthError::BadGateShift {
            shift: p.gate_shift,
            why,
        };
        Some(RouteDims::of(h).map_err(bad)?)
    } else if routing_skew > 0.0 || p.token_routing {
        Some(RouteDims::of(h).map_err(bad)?)
    } else {
        None
    };
    let m = |name: String, shape: Vec<u64>| SynthTensor {
        name,
        shape,
        kind: Init::Matrix(""),
        edit: Edit::None,
    };
    let norm = |name: String| SynthTensor {
        name,
        shape: vec![h],
        kind: Init::Norm,
        edit: Edit::None,
    };
    let zero_rows = |mut t: SynthTensor| {
        if let Some(d) = &dims {
            t.edit = Edit::ZeroRows(d.reserved());
        }
        t
    };
    let embed_edit = match &dims {
        Some(d) => Edit::Columns(d.bias.clone(), skew::EMBED_BIAS),
        None => Edit::None,
    };
    let mut v = vec![SynthTensor {
        edit: embed_edit.clone(),
        ..m("model.embed_tokens.weight".into(), vec![n_vocab, h])
    }];
    for il in 0..n_layer {
        let p = format!("model.layers.{il}");
        v.push(norm(format!("{p}.input_layernorm.weight")));
        v.push(m(format!("{p}.self_attn.q_proj.weight"), vec![n_head * hd, h]));
        v.push(m(format!("{p}.self_attn.k_proj.weight"), vec![n_kv * hd, h]));
        v.push(m(format!("{p}.self_attn.v_proj.weight"), vec![n_kv * hd, h]));
        v.push(zero_rows(m(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, n_head * hd],
        )));
        v.push(norm(format!("{p}.post_attention_layernorm.weight")));
        let mut router = m(format!("{p}.block_sparse_moe.primary_router.weight"), vec![n_expert, h]);
        if let Some(d) = &dims {
            router.edit = Edit::Router {
                bias_weight: if routing_skew > 0.0 {
                    skew::router_bias_weights(d, seed, il, n_expert, routing_skew)
                } else {
                    vec![0.0; n_expert as usize]
                },
                dims: d.clone(),
            };
        }
        v.push(router);
        for e in 0..n_expert {
            let q = format!("{p}.block_sparse_moe.experts.{e}");
            let mut gate = m(format!("{q}.gate.weight"), vec![n_ff, h]);
            if let (Some(d), true) = (&dims, gate_shift > 0.0) {
                gate.edit = Edit::Columns(d.bias.clone(), d.gate_bias_weight(gate_shift));
            }
            v.push(gate);
            v.push(m(format!("{q}.up.weight"), vec![n_ff, h]));
            v.push(zero_rows(m(format!("{q}.down.weight"), vec![h, n_ff])));
        }
    }
    v.push(norm("model.norm.weight".into()));
    if p.lm_head || !tied {
        let kind = Init::Matrix(if tied { "model.embed_tokens.weight" } else { "" });
        v.push(SynthTensor {
            name: "lm_head.weight".into(),
            shape: vec![n_vocab, h],
            kind,
            // A tied head stays the embedding; an untied one is an ordinary matrix.
            edit: if tied { embed_edit } else { Edit::None },
        });
    }
    Ok(v)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl SynthTensor {
    fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    fn n_bytes(&self, dtype: SynthDtype) -> u64 {
        self.n_elements() * if dtype == SynthDtype::Bf16 { 2 } else { 4 }
    }

    /// The generator of this tensor's values, positioned at its first element.
    fn stream(&self, seed: u64) -> ValueStream<'_> {
        let key = match self.kind {
            Init::Matrix(s) if !s.is_empty() => s,
            _ => self.name.as_str(),
        };
        ValueStream {
            t: self,
            rng: Rng::new(seed ^ fnv1a(key)),
            pos: 0,
        }
    }

    /// Streams the tensor's bytes into `out`, generated in bounded chunks.
    fn write_data(&self, seed: u64, dtype: SynthDtype, out: &mut impl Write) -> std::io::Result<()> {
        let mut s = self.stream(seed);
        let mut left = self.n_elements();
        let mut vals = Vec::with_capacity(1 << 18);
        let mut buf = Vec::with_capacity(1 << 20);
        while left > 0 {
            let n = left.min(1 << 18);
            s.fill(n as usize, &mut vals);
            buf.clear();
            for &x in &vals {
                match dtype {
                    SynthDtype::Bf16 => buf.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                    SynthDtype::F32 => buf.extend_from_slice(&x.to_le_bytes()),
                }
            }
            out.write_all(&buf)?;
            left -= n;
        }
        Ok(())
    }
}

/// A tensor's values in order: one seeded stream per tensor, so any chunking yields the same values.
struct ValueStream<'t> {
    t: &'t SynthTensor,
    rng: Rng,
    /// Elements produced so far.
    pos: u64,
}

impl ValueStream<'_> {
    /// Replaces `out` with the next `n` values (f32, before any storage rounding).
    fn fill(&mut self, n: usize, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(n);
        match self.t.kind {
            Init::Matrix(_) => out.extend((0..n).map(|_| 0.02 * self.rng.normal())),
            Init::Norm => out.extend((0..n).map(|_| 1.0 + 0.05 * self.rng.normal())),
        }
        let row_len = self.t.shape.last().copied().unwrap_or(1);
        let at = |i: usize| ((self.pos + i as u64) / row_len, (self.pos + i as u64) % row_len);
        match &self.t.edit {
            Edit::None => {}
            Edit::Columns(cols, value) => {
                for (i, x) in out.iter_mut().enumerate() {
                    if cols.contains(&at(i).1) {
                        *x = *value;
                    }
                }
            }
            Edit::ZeroRows(rows) => {
                for (i, x) in out.iter_mut().enumerate() {
                    if rows.contains(&at(i).0) {
                        *x = 0.0;
                    }
                }
            }
            Edit::Router { dims, bias_weight } => {
                for (i, x) in out.iter_mut().enumerate() {
                    let (row, col) = at(i);
                    if dims.bias.contains(&col) {
                        *x = bias_weight[row as usize];
                    } else if !dims.route.contains(&col) {
                        *x = 0.0;
                    }
                }
            }
        }
        self.pos += n as u64;
    }

    /// Skips `n` values.
    fn skip(&mut self, n: u64) {
        let mut scratch = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(1 << 18);
            self.fill(k as usize, &mut scratch);
            left -= k;
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct SynthReport {
    pub files: Vec<PathBuf>,
    pub n_tensors: usize,
    pub n_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.into(),
        source,
    }
}

fn write_json(path: &Path, v: &Value) -> Result<(), SynthError> {
    let f = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::new(f);
    serde_json::to_writer_pretty(&mut w, v).map_err(|e| SynthError::Io {
        path: path.into(),
        source: e.into(),
    })?;
    w.write_all(b"\n").and_then(|_| w.flush()).map_err(io_err(path))
}

/// Writes one safetensors file: header (sorted names, padded to 8 bytes), then the data in header order.
fn write_safetensors(path: &Path, tensors: &[&SynthTensor], p: &SynthParams) -> Result<(), SynthError> {
    let sorted = sorted_by_name(tensors);
    let dtype = if p.dtype == SynthDtype::Bf16 { "BF16" } else { "F32" };
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0u64;
    for t in &sorted {
        let end = off + t.n_bytes(p.dtype);
        header.insert(
            t.name.clone(),
            json!({"dtype": dtype, "shape": t.shape, "data_offsets": [off, end]}),
        );
        off = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("JSON of plain values");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let f = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 22, f);
    let mut go = || -> std::io::Result<()> {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for t in &sorted {
            t.write_data(p.seed, p.dtype, &mut w)?;
        }
        w.flush()
    };
    go().map_err(io_err(path))
}

/// A shard's tensors in file order (safetensors headers are sorted by name; so is llama.cpp's reading order).
fn sorted_by_name<'t>(tensors: &[&'t SynthTensor]) -> Vec<&'t SynthTensor> {
    let mut sorted = tensors.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
}

/// Groups tensors (in state-dict order) into shards: `Count(n)` makes exactly n shards of about equal tensor
/// counts (so a layer's experts straddle shard boundaries, as in real checkpoints); `Bytes(limit)` fills shards up
/// to `limit` bytes like HF's `max_shard_size` (a tensor never splits).
fn shard_plan(tensors: &[SynthTensor], dtype: SynthDtype, split: Split) -> Vec<Vec<&SynthTensor>> {
    match split {
        Split::Count(n) => {
            let per = tensors.len().div_ceil(n.clamp(1, tensors.len()));
            tensors.chunks(per).map(|c| c.iter().collect()).collect()
        }
        Split::Bytes(limit) => {
            let mut shards: Vec<Vec<&SynthTensor>> = vec![vec![]];
            let mut size = 0;
            for t in tensors {
                let n = t.n_bytes(dtype);
                if size > 0 && size + n > limit {
                    shards.push(vec![]);
                    size = 0;
                }
                shards.last_mut().expect("non-empty").push(t);
                size += n;
            }
            shards
        }
    }
}

#[derive(Clone, Copy)]
enum Split {
    Count(usize),
    Bytes(u64),
}

/// What a synthetic checkpoint consists of: its config, its tensors, and how they are split into files.
struct Layout {
    cfg: Map<String, Value>,
    tensors: Vec<SynthTensor>,
    split: Split,
}

impl Layout {
    fn of(p: &SynthParams) -> Result<Layout, SynthError> {
        let cfg = config_with_overrides(p.shape, &p.overrides);
        let tensors = tensor_list(&cfg, p)?;
        let split = match (p.shards, p.shape) {
            (Some(n), _) => Split::Count(n),
            (None, Shape::Tiny) => Split::Count(1),
            (None, _) => Split::Bytes(5_000_000_000),
        };
        Ok(Layout { cfg, tensors, split })
    }

    /// (file name, tensors in state-dict order) per safetensors file.
    fn files(&self, dtype: SynthDtype) -> Vec<(String, Vec<&SynthTensor>)> {
        let shards = shard_plan(&self.tensors, dtype, self.split);
        let n = shards.len();
        shards
            .into_iter()
            .enumerate()
            .map(|(i, shard)| {
                let name = if n == 1 {
                    "model.safetensors".to_string()
                } else {
                    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
                };
                (name, shard)
            })
            .collect()
    }
}

/// Writes a synthetic checkpoint into `out_dir` (created if needed).
pub fn synth(out_dir: &Path, p: &SynthParams) -> Result<SynthReport, SynthError> {
    let layout = Layout::of(p)?;
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let total: u64 = layout.tensors.iter().map(|t| t.n_bytes(p.dtype)).sum();
    let shards = layout.files(p.dtype);
    let mut files = vec![];
    let cfg_path = out_dir.join("config.json");
    write_json(&cfg_path, &Value::Object(layout.cfg.clone()))?;
    files.push(cfg_path);
    for (name, shard) in &shards {
        let path = out_dir.join(name);
        write_safetensors(&path, shard, p)?;
        files.push(path);
    }
    if shards.len() > 1 {
        let mut weight_map = Map::new();
        for (name, shard) in &shards {
            for t in shard {
                weight_map.insert(t.name.clone(), json!(name));
            }
        }
        let path = out_dir.join("model.safetensors.index.json");
        write_json(
            &path,
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
        files.push(path);
    }
    files.extend(write_tokenizer_files(out_dir, p)?);
    Ok(SynthReport {
        files,
        n_tensors: layout.tensors.len(),
        n_bytes: total,
    })
}

/// Writes only the small files of a checkpoint (config.json, tokenizer and generation config), which the
/// converter reads besides the weights; the weights come from [`SynthSource`]. Returns the source and the files.
pub fn synth_meta(out_dir: &Path, p: &SynthParams) -> Result<(SynthSource, Vec<PathBuf>), SynthError> {
    let layout = Layout::of(p)?;
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let cfg_path = out_dir.join("config.json");
    write_json(&cfg_path, &Value::Object(layout.cfg.clone()))?;
    let mut files = vec![cfg_path];
    files.extend(write_tokenizer_files(out_dir, p)?);
    let shards: Vec<(PathBuf, Vec<SynthTensor>)> = layout
        .files(p.dtype)
        .into_iter()
        .map(|(name, shard)| {
            let sorted = sorted_by_name(&shard).into_iter().cloned().collect();
            (out_dir.join(name), sorted)
        })
        .collect();
    Ok((SynthSource::new(shards, p.seed, p.dtype), files))
}

fn write_tokenizer_files(out_dir: &Path, p: &SynthParams) -> Result<Vec<PathBuf>, SynthError> {
    let vocab = Vocab::load(&p.vocab_gguf)?;
    let mut files = vec![];
    for (name, doc) in [
        ("tokenizer.json", tokenizer_json(&vocab)),
        ("tokenizer_config.json", tokenizer_config_json(&vocab)),
        (
            "generation_config.json",
            json!({"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151643, 151645],
                   "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
                   "transformers_version": "4.53.3"}),
        ),
    ] {
        let path = out_dir.join(name);
        write_json(&path, &doc)?;
        files.push(path);
    }
    Ok(files)
}
