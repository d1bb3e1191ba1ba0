//! HF `config.json` documents for the synthetic shapes: the two released SmallThinker configurations
//! (smallthinker-architecture.md §1.1) and a tiny one, with JSON overrides merged on top.

use serde_json::{json, Map, Value};

/// Which configuration to start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Hidden 64, 4 layers, 4 experts: 4B-like layout by default, 21B-like through overrides.
    Tiny,
    /// SmallThinker-4BA0.6B-Instruct.
    FourB,
    /// SmallThinker-21BA3B-Instruct.
    TwentyOneB,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Shape, String> {
        match s {
            "tiny" => Ok(Shape::Tiny),
            "4b" => Ok(Shape::FourB),
            "21b" => Ok(Shape::TwentyOneB),
            _ => Err(format!("unknown shape {s:?} (tiny, 4b, 21b)")),
        }
    }
}

fn layout(n_layer: usize, pattern: &[u8]) -> Value {
    json!((0..n_layer).map(|i| pattern[i % pattern.len()]).collect::<Vec<_>>())
}

/// The base config of a shape.
pub fn base_config(shape: Shape) -> Map<String, Value> {
    // (hidden, layers, heads, kv heads, experts, active, ffn, ctx, tied, softmax, 21B-style layout)
    let (h, l, nh, nkv, e, k, f, ctx, tied, softmax, iswa) = match shape {
        Shape::Tiny => (64, 4, 4, 2, 4, 2, 64, 32768, true, false, false),
        Shape::FourB => (1536, 32, 12, 2, 32, 4, 768, 32768, true, false, false),
        Shape::TwentyOneB => (2560, 52, 28, 4, 64, 6, 768, 16384, false, true, true),
    };
    let head_dim = if shape == Shape::Tiny { 16 } else { 128 };
    let pattern: &[u8] = if iswa { &[0, 1, 1, 1] } else { &[1] };
    let swa: &[u8] = if iswa { &[0, 1, 1, 1] } else { &[0] };
    let mut c = json!({
        "architectures": ["SmallThinkerForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": [151643, 151645],
        "head_dim": head_dim,
        "hidden_size": h,
        "initializer_range": 0.02,
        "max_position_embeddings": ctx,
        "model_type": "smallthinker",
        "moe_ffn_hidden_size": f,
        "moe_num_active_primary_experts": k,
        "moe_num_primary_experts": e,
        "norm_topk_prob": true,
        "num_attention_heads": nh,
        "num_hidden_layers": l,
        "num_key_value_heads": nkv,
        "output_router_logits": false,
        "rms_norm_eps": 1e-6,
        "rope_layout": layout(l, pattern),
        "rope_scaling": null,
        "rope_theta": 1.5e6,
        "sliding_window_layout": layout(l, swa),
        "sliding_window_size": 4096,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.53.3",
        "use_cache": false,
        "vocab_size": 151936,
    });
    let m = c.as_object_mut().expect("object literal");
    if softmax {
        m.insert("moe_primary_router_apply_softmax".into(), json!(true));
    }
    m.clone()
}

/// Merges `overrides` (a JSON object) into the shape's base config. When the layer count changes and a layout is
/// not overridden, the layout is regenerated with the base shape's period so that it stays valid.
pub fn config_with_overrides(shape: Shape, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut c = base_config(shape);
    let base_layers = c["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
    for (k, v) in overrides {
        if v.is_null() {
            c.remove(k);
        } else {
            c.insert(k.clone(), v.clone());
        }
    }
    let n_layer = c.get("num_hidden_layers").and_then(Value::as_u64).unwrap_or(0) as usize;
    for key in ["rope_layout", "sliding_window_layout"] {
        let Some(Value::Array(old)) = c.get(key).cloned() else {
            continue;
        };
        if overrides.contains_key(key) || old.len() == n_layer || base_layers == 0 {
            // An override of a period shorter than the layer count is repeated (e.g. [0,1,1,1]).
            if overrides.contains_key(key) && !old.is_empty() && old.len() < n_layer {
                let rep: Vec<Value> = (0..n_layer).map(|i| old[i % old.len()].clone()).collect();
                c.insert(key.into(), Value::Array(rep));
            }
            continue;
        }
        let period = if old.iter().all(|x| *x == old[0]) { 1 } else { 4 };
        let rep: Vec<Value> = (0..n_layer).map(|i| old[i % period].clone()).collect();
        c.insert(key.into(), Value::Array(rep));
    }
    c
}
