//! The HF → GGUF tensor table for SmallThinker (compat doc §1.2) and the conversion plan: which source tensors
//! make each GGUF tensor, in the order llama.cpp's converter writes them.
//!
//! Order: llama.cpp iterates shards in name order and tensors in name order within a shard; expert tensors are
//! buffered per layer and the three stacked tensors (down, gate, up) are emitted when the layer's last expert
//! tensor arrives.

use std::collections::BTreeMap;

use super::config::HfConfig;
use super::error::ConvertError;
use super::safetensors::TensorSource;

/// What a GGUF tensor is, for the type rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    TokenEmbd,
    Output,
    Norm,
    Router,
    Attn,
    Experts,
}

/// One GGUF tensor of the plan.
#[derive(Clone, Debug)]
pub struct Planned {
    pub name: String,
    /// ggml order (`ne[0]` first = HF `in_features`).
    pub dims: Vec<u64>,
    pub kind: Kind,
    /// Indexes into `TensorSource::tensors`, concatenated in this order (one per expert for stacked tensors).
    pub sources: Vec<usize>,
}

/// Names the converter drops, as llama.cpp's does.
fn ignored(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
        || name.ends_with(".attention.masked_bias")
        || name.ends_with(".attention.bias")
}

const EXPERT_KINDS: [&str; 3] = ["down", "gate", "up"];

enum Mapped {
    Single { name: String, kind: Kind, shape: Vec<u64> },
    Expert { layer: u64, expert: u64, w: usize },
}

fn map_name(name: &str, c: &HfConfig) -> Option<Mapped> {
    let (h, v) = (c.n_embd, c.n_vocab);
    let single = |n: String, kind, shape: Vec<u64>| Some(Mapped::Single { name: n, kind, shape });
    match name {
        "model.embed_tokens.weight" => return single("token_embd.weight".into(), Kind::TokenEmbd, vec![v, h]),
        "model.norm.weight" => return single("output_norm.weight".into(), Kind::Norm, vec![h]),
        "lm_head.weight" => return single("output.weight".into(), Kind::Output, vec![v, h]),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (il, rest) = rest.split_once('.')?;
    let il: u64 = il
        .parse::<u64>()
        .ok()
        .filter(|&i| i < c.n_layer && il == i.to_string())?;
    let q = c.n_head * c.head_dim;
    let kv = c.n_head_kv * c.head_dim;
    let blk = |s: &str| format!("blk.{il}.{s}.weight");
    match rest {
        "input_layernorm.weight" => single(blk("attn_norm"), Kind::Norm, vec![h]),
        "self_attn.q_proj.weight" => single(blk("attn_q"), Kind::Attn, vec![q, h]),
        "self_attn.k_proj.weight" => single(blk("attn_k"), Kind::Attn, vec![kv, h]),
        "self_attn.v_proj.weight" => single(blk("attn_v"), Kind::Attn, vec![kv, h]),
        "self_attn.o_proj.weight" => single(blk("attn_output"), Kind::Attn, vec![h, q]),
        "post_attention_layernorm.weight" => single(blk("ffn_norm"), Kind::Norm, vec![h]),
        "block_sparse_moe.primary_router.weight" => single(blk("ffn_gate_inp"), Kind::Router, vec![c.n_expert, h]),
        _ => {
            let e = rest.strip_prefix("block_sparse_moe.experts.")?;
            let (xid, w) = e.split_once('.')?;
            let xid: u64 = xid
                .parse::<u64>()
                .ok()
                .filter(|&x| x < c.n_expert && xid == x.to_string())?;
            let w = EXPERT_KINDS
                .iter()
                .position(|k| w.strip_suffix(".weight") == Some(*k))?;
            Some(Mapped::Expert {
                layer: il,
                expert: xid,
                w,
            })
        }
    }
}

/// Torch shape of one expert matrix.
fn expert_shape(c: &HfConfig, w: usize) -> Vec<u64> {
    if EXPERT_KINDS[w] == "down" {
        vec![c.n_embd, c.n_ff_exp]
    } else {
        vec![c.n_ff_exp, c.n_embd]
    }
}

fn check_shape(tensor: &str, got: &[u64], expected: Vec<u64>) -> Result<(), ConvertError> {
    if got != expected.as_slice() {
        return Err(ConvertError::ShapeMismatch {
            tensor: tensor.into(),
            expected,
            got: got.into(),
        });
    }
    Ok(())
}

/// Builds the GGUF tensor list from the checkpoint, checking names, shapes and completeness.
pub fn plan(ck: &dyn TensorSource, c: &HfConfig) -> Result<Vec<Planned>, ConvertError> {
    let mut out = vec![];
    // layer -> (expert, w) -> source index
    let mut experts: BTreeMap<u64, BTreeMap<(u64, usize), usize>> = BTreeMap::new();
    for (i, t) in ck.tensors().iter().enumerate() {
        if ignored(&t.name) {
            continue;
        }
        let Some(m) = map_name(&t.name, c) else {
            return Err(ConvertError::UnmappedTensor {
                tensor: t.name.clone(),
                path: ck.origin(t).to_path_buf(),
            });
        };
        match m {
            Mapped::Single { name, kind, shape } => {
                check_shape(&t.name, &t.shape, shape)?;
                let dims = t.shape.iter().rev().copied().collect();
                out.push(Planned {
                    name,
                    dims,
                    kind,
                    sources: vec![i],
                });
            }
            Mapped::Expert { layer, expert, w } => {
                check_shape(&t.name, &t.shape, expert_shape(c, w))?;
                let layer_map = experts.entry(layer).or_default();
                layer_map.insert((expert, w), i);
                if layer_map.len() as u64 == 3 * c.n_expert {
                    let layer_map = experts.remove(&layer).expect("just inserted");
                    for (w, kind) in EXPERT_KINDS.iter().enumerate() {
                        let sources = (0..c.n_expert).map(|x| layer_map[&(x, w)]).collect();
                        let s = expert_shape(c, w);
                        out.push(Planned {
                            name: format!("blk.{layer}.ffn_{kind}_exps.weight"),
                            dims: vec![s[1], s[0], c.n_expert],
                            kind: Kind::Experts,
                            sources,
                        });
                    }
                }
            }
        }
    }
    // Experts left over: name the first missing one (llama.cpp: "Unprocessed experts").
    if let Some((layer, have)) = experts.iter().next() {
        let (x, w) = (0..c.n_expert)
            .flat_map(|x| (0..3).map(move |w| (x, w)))
            .find(|k| !have.contains_key(k))
            .expect("incomplete layer");
        return Err(ConvertError::MissingTensor {
            tensor: format!(
                "model.layers.{layer}.block_sparse_moe.experts.{x}.{}.weight",
                EXPERT_KINDS[w]
            ),
        });
    }
    let have = |n: &str| out.iter().any(|p| p.name == n);
    let mut required = vec![
        ("token_embd.weight", "model.embed_tokens.weight".to_string()),
        ("output_norm.weight", "model.norm.weight".into()),
    ];
    if !c.tied {
        required.push(("output.weight", "lm_head.weight".into()));
    }
    for (g, hf) in required {
        if !have(g) {
            return Err(ConvertError::MissingTensor { tensor: hf });
        }
    }
    for il in 0..c.n_layer {
        let per_layer = [
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_gate_inp", "block_sparse_moe.primary_router"),
        ];
        for (g, hf) in per_layer {
            if !have(&format!("blk.{il}.{g}.weight")) {
                return Err(ConvertError::MissingTensor {
                    tensor: format!("model.layers.{il}.{hf}.weight"),
                });
            }
        }
        if !have(&format!("blk.{il}.ffn_down_exps.weight")) {
            return Err(ConvertError::MissingTensor {
                tensor: format!("model.layers.{il}.block_sparse_moe.experts.0.down.weight"),
            });
        }
    }
    Ok(out)
}
