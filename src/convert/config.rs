//! The parts of a SmallThinker `config.json` the converter uses (smallthinker-architecture.md §1), validated.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::error::ConvertError;

/// A validated SmallThinker config.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub path: PathBuf,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_vocab: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub n_ff_exp: u64,
    pub n_ctx: Option<u64>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: Option<f64>,
    pub softmax_gating: bool,
    pub tied: bool,
    /// `sliding_window_size` if any layer uses a sliding window, else None (llama.cpp's one switch).
    pub sliding_window: Option<u64>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
    /// The raw document, for keys read elsewhere.
    pub raw: Map<String, Value>,
}

/// Reads one input file of the checkpoint directory; a missing file is `MissingFile`, naming it.
pub(crate) fn read_input(path: &Path) -> Result<Vec<u8>, ConvertError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ConvertError::MissingFile { path: path.into() },
        _ => ConvertError::Io {
            path: path.into(),
            source: e,
        },
    })
}

fn key_err(path: &Path, key: &str, why: impl Into<String>) -> ConvertError {
    ConvertError::BadKey {
        path: path.into(),
        key: key.into(),
        why: why.into(),
    }
}

fn req_u64(path: &Path, c: &Map<String, Value>, key: &str) -> Result<u64, ConvertError> {
    match c.get(key) {
        None | Some(Value::Null) => Err(key_err(path, key, "missing")),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0 && n <= u32::MAX as u64)
            .ok_or_else(|| key_err(path, key, format!("{v} is not a positive u32"))),
    }
}

fn opt_u64(path: &Path, c: &Map<String, Value>, key: &str) -> Result<Option<u64>, ConvertError> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| key_err(path, key, format!("{v} is not an integer"))),
    }
}

fn opt_f64(path: &Path, c: &Map<String, Value>, key: &str) -> Result<Option<f64>, ConvertError> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| key_err(path, key, format!("{v} is not a number"))),
    }
}

fn layout(path: &Path, c: &Map<String, Value>, key: &str, n_layer: u64) -> Result<Option<Vec<u64>>, ConvertError> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            let v: Option<Vec<u64>> = a.iter().map(|x| x.as_u64().filter(|&b| b <= 1)).collect();
            let v = v.ok_or_else(|| key_err(path, key, "entries must be 0 or 1"))?;
            if v.len() as u64 != n_layer {
                return Err(key_err(
                    path,
                    key,
                    format!("has {} entries for {n_layer} layers", v.len()),
                ));
            }
            Ok(Some(v))
        }
        Some(v) => Err(key_err(path, key, format!("{v} is not a list"))),
    }
}

impl HfConfig {
    /// Reads and validates `config.json`.
    pub fn load(path: &Path) -> Result<HfConfig, ConvertError> {
        let text = read_input(path)?;
        let v: Value = serde_json::from_slice(&text).map_err(|source| ConvertError::Json {
            path: path.into(),
            source,
        })?;
        let Value::Object(c) = v else {
            return Err(key_err(path, "(top level)", "not a JSON object"));
        };
        HfConfig::from_map(path, c)
    }

    /// Validates an already parsed config document.
    pub fn from_map(path: &Path, c: Map<String, Value>) -> Result<HfConfig, ConvertError> {
        let arch: Vec<&str> = c
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let model_type = c.get("model_type").and_then(Value::as_str);
        if arch.first() != Some(&"SmallThinkerForCausalLM") || model_type.is_some_and(|m| m != "smallthinker") {
            let found = format!("architectures {arch:?}, model_type {model_type:?}");
            return Err(ConvertError::UnknownArchitecture {
                path: path.into(),
                found,
            });
        }
        let n_layer = req_u64(path, &c, "num_hidden_layers")?;
        let n_head = req_u64(path, &c, "num_attention_heads")?;
        let n_embd = req_u64(path, &c, "hidden_size")?;
        let n_head_kv = opt_u64(path, &c, "num_key_value_heads")?.unwrap_or(n_head);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(key_err(
                path,
                "num_key_value_heads",
                format!("{n_head_kv} does not divide num_attention_heads {n_head}"),
            ));
        }
        let head_dim = match opt_u64(path, &c, "head_dim")? {
            Some(d) => d,
            None => n_embd / n_head,
        };
        let n_expert = req_u64(path, &c, "moe_num_primary_experts")?;
        let n_expert_used = req_u64(path, &c, "moe_num_active_primary_experts")?;
        // llama.cpp asserts these at load (llama-model.cpp: n_expert <= 512, 0 < n_expert_used <= n_expert).
        if n_expert > 512 || n_expert_used > n_expert {
            return Err(key_err(
                path,
                "moe_num_active_primary_experts",
                format!("{n_expert_used} of {n_expert} experts (llama.cpp needs used <= experts <= 512)"),
            ));
        }
        let softmax_gating = match c.get("moe_primary_router_apply_softmax") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(key_err(
                    path,
                    "moe_primary_router_apply_softmax",
                    format!("{v} is not a bool"),
                ))
            }
        };
        let tied = match c.get("tie_word_embeddings") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(key_err(path, "tie_word_embeddings", format!("{v} is not a bool"))),
        };
        let rope = layout(path, &c, "rope_layout", n_layer)?;
        let swa = layout(path, &c, "sliding_window_layout", n_layer)?;
        let window = opt_u64(path, &c, "sliding_window_size")?;
        let sliding_window = check_layout(n_layer, rope.as_deref(), swa.as_deref(), window)?;
        let eos = match c.get("eos_token_id") {
            // A list form ([151643, 151645]) is ignored, as gguf-py's SpecialVocab ignores non-int ids.
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        Ok(HfConfig {
            path: path.into(),
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab: req_u64(path, &c, "vocab_size")?,
            n_expert,
            n_expert_used,
            n_ff_exp: req_u64(path, &c, "moe_ffn_hidden_size")?,
            n_ctx: opt_u64(path, &c, "max_position_embeddings")?,
            rope_theta: opt_f64(path, &c, "rope_theta")?,
            rms_norm_eps: opt_f64(path, &c, "rms_norm_eps")?,
            softmax_gating,
            tied,
            sliding_window,
            bos_token_id: c.get("bos_token_id").and_then(Value::as_u64),
            eos_token_id: eos,
            pad_token_id: c.get("pad_token_id").and_then(Value::as_u64),
            raw: c,
        })
    }
}

/// llama.cpp cannot store per-layer layouts: the presence of `sliding_window` turns on its one pattern
/// (layer il % 4 == 0: NoPE + full attention; others RoPE + SWA), and its absence means RoPE + full attention
/// everywhere (compat doc §3.2). Anything else is refused rather than silently run differently. The window is
/// written as the config gives it: our engine honours it, llama.cpp uses 4096 whatever the file says (so a smaller
/// window, like the tiny model's 64, matches llama.cpp only on sequences no longer than the window).
fn check_layout(
    n_layer: u64,
    rope: Option<&[u64]>,
    swa: Option<&[u64]>,
    window: Option<u64>,
) -> Result<Option<u64>, ConvertError> {
    let rope_all = |v: u64| rope.is_none_or(|r| r.iter().all(|&x| x == v));
    let any_swa = swa.is_some_and(|s| s.iter().any(|&x| x != 0));
    if !any_swa {
        if !rope_all(1) {
            return Err(ConvertError::UnsupportedLayout {
                why: "a NoPE layer (rope_layout 0) without sliding-window layers: llama.cpp applies RoPE to every layer when the GGUF has no sliding_window".into(),
            });
        }
        return Ok(None);
    }
    let want = |il: u64| u64::from(il % 4 != 0);
    let swa = swa.expect("any_swa");
    for il in 0..n_layer {
        let (r, s) = (rope.map_or(1, |r| r[il as usize]), swa[il as usize]);
        if r != want(il) || s != want(il) {
            return Err(ConvertError::UnsupportedLayout {
                why: format!(
                    "layer {il} has rope_layout {r}, sliding_window_layout {s}; llama.cpp's only sliding-window layout is NoPE + full attention on layers il % 4 == 0 and RoPE + window on the others"
                ),
            });
        }
    }
    // A 4-layer model is still converted, as llama.cpp's converter does, although llama.cpp (and so our engine)
    // then applies RoPE to layer 0 too (its NoPE step equals n_layer): the test fixtures st21b rely on that file.
    match window {
        Some(w) if w > 0 && w <= u64::from(u32::MAX) => Ok(Some(w)),
        Some(w) => Err(ConvertError::UnsupportedLayout {
            why: format!("sliding_window_size {w} is not a positive u32"),
        }),
        None => Err(ConvertError::UnsupportedLayout {
            why: "sliding_window_layout has window layers but sliding_window_size is missing".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_llama_cpp_can_express() {
        let all = |v: u64, n: usize| vec![v; n];
        let iswa: Vec<u64> = (0..8).map(|i| u64::from(i % 4 != 0)).collect();
        assert_eq!(
            check_layout(8, Some(&all(1, 8)), Some(&all(0, 8)), Some(4096)).unwrap(),
            None
        );
        assert_eq!(check_layout(8, None, None, None).unwrap(), None);
        assert_eq!(
            check_layout(8, Some(&iswa), Some(&iswa), Some(4096)).unwrap(),
            Some(4096)
        );
        // A window other than 4096 is kept (llama.cpp would use 4096; the engine honours it).
        assert_eq!(check_layout(8, Some(&iswa), Some(&iswa), Some(64)).unwrap(), Some(64));
        // NoPE without SWA, SWA on layer 0, a zero window, SWA with RoPE everywhere.
        assert!(check_layout(8, Some(&iswa), Some(&all(0, 8)), Some(4096)).is_err());
        assert!(check_layout(8, Some(&iswa), Some(&all(1, 8)), Some(4096)).is_err());
        assert!(check_layout(8, Some(&iswa), Some(&iswa), Some(0)).is_err());
        assert_eq!(
            check_layout(4, Some(&iswa[..4]), Some(&iswa[..4]), Some(4096)).unwrap(),
            Some(4096)
        );
        assert!(check_layout(8, Some(&all(1, 8)), Some(&iswa), Some(4096)).is_err());
    }
}
