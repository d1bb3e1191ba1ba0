//! The GGUF metadata (KV) llama.cpp's converter writes for SmallThinker, in its order (compat doc §1.1, §1.3).

use std::path::Path;

use serde_json::Value;

use super::config::HfConfig;
use super::tokenizer::TokenizerMeta;
use super::types::OutType;
use crate::gguf::Value as Kv;

/// Parameter counts as gguf-py's `get_total_parameter_count` makes them (for `general.size_label`).
pub struct ParamCounts {
    pub shared: u64,
    pub expert: u64,
    pub expert_count: u64,
}

impl ParamCounts {
    /// From (GGUF name, ggml dims) of every tensor.
    pub fn of(tensors: &[(&str, &[u64])], _total: u64) -> ParamCounts {
        let (mut shared, mut expert, mut sum, mut n) = (0, 0, 0, 0);
        for (name, dims) in tensors {
            let size: u64 = dims.iter().product();
            if name.contains("_exps.") && dims.len() >= 3 {
                let e = dims[dims.len() - 1];
                expert += size / e;
                sum += e;
                n += 1;
            } else {
                shared += size;
            }
        }
        ParamCounts {
            shared,
            expert,
            expert_count: sum.checked_div(n).unwrap_or(0),
        }
    }

    /// gguf-py's `size_label`: e.g. "4x4.2M".
    pub fn size_label(&self) -> String {
        let count = self.shared + self.expert;
        let x = count as f64;
        let (scaled, suffix) = if x > 1e12 {
            (x * 1e-12, "T")
        } else if x > 1e9 {
            (x * 1e-9, "B")
        } else if x > 1e6 {
            (x * 1e-6, "M")
        } else {
            (x * 1e-3, "K")
        };
        // Python: max(min_digits - len(str(round(scaled)).lstrip('0')), 0), round() ties to even.
        let digits = (scaled.round_ties_even() as u64)
            .to_string()
            .trim_start_matches('0')
            .len();
        let fix = 2usize.saturating_sub(digits);
        let pretty = format!("{scaled:.fix$}{suffix}");
        if self.expert_count > 0 {
            format!("{}x{pretty}", self.expert_count)
        } else {
            pretty
        }
    }
}

/// Python's `str.title()`: upper-case a cased character after an uncased one, lower-case the others.
fn title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_cased = false;
    for ch in w.chars() {
        let cased = ch.is_alphabetic();
        if cased && !prev_cased {
            out.extend(ch.to_uppercase());
        } else {
            out.extend(ch.to_lowercase());
        }
        prev_cased = cased;
    }
    out
}

/// `general.name` from the model directory's name, as gguf-py's `Metadata.id_to_title` makes it ("tiny4b_bf16" →
/// "Tiny4B_Bf16"). Approximation: gguf-py also splits names like "Org/Model-4B-Instruct" into basename, size label
/// and finetune; those keys are not written here.
fn model_name(dir: &Path) -> String {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let id = canon
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let version_like = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_digit())
            || (w.starts_with('v')
                && w[1..]
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    };
    let is_lower = |w: &str| w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            if is_lower(w) && !version_like(w) {
                title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sampling keys from `generation_config.json` (gguf-py Metadata.load), in its order.
fn sampling(dir: &Path) -> Vec<(String, Kv)> {
    let Ok(text) = std::fs::read(dir.join("generation_config.json")) else {
        return vec![];
    };
    let Ok(Value::Object(g)) = serde_json::from_slice::<Value>(&text) else {
        return vec![];
    };
    let mut out = vec![];
    let f = |v: &Value| v.as_f64().map(|x| Kv::F32(x as f32));
    let i = |v: &Value| v.as_i64().map(|x| Kv::I32(x as i32));
    // (generation_config key, GGUF key suffix, conversion)
    type Conv<'a> = &'a dyn Fn(&Value) -> Option<Kv>;
    let keys: [(&str, &str, Conv); 11] = [
        ("top_k", "top_k", &i),
        ("top_p", "top_p", &f),
        ("min_p", "min_p", &f),
        ("xtc_probability", "xtc_probability", &f),
        ("xtc_threshold", "xtc_threshold", &f),
        ("temperature", "temp", &f),
        ("penalty_last_n", "penalty_last_n", &i),
        ("penalty_repeat", "penalty_repeat", &f),
        ("mirostat", "mirostat", &i),
        ("mirostat_tau", "mirostat_tau", &f),
        ("mirostat_eta", "mirostat_eta", &f),
    ];
    if let Some(Value::String(s)) = g.get("sequence") {
        out.push(("general.sampling.sequence".into(), Kv::String(s.clone())));
    }
    for (src, key, conv) in keys {
        let v = match (src, g.get(src)) {
            ("penalty_repeat", None) => g.get("repetition_penalty"),
            (_, v) => v,
        };
        if let Some(kv) = v.and_then(conv) {
            out.push((format!("general.sampling.{key}"), kv));
        }
    }
    out
}

/// Every KV pair, in llama.cpp's converter order.
pub fn kvs(dir: &Path, c: &HfConfig, tok: &TokenizerMeta, out: OutType, counts: &ParamCounts) -> Vec<(String, Kv)> {
    let a = |k: &str| format!("smallthinker.{k}");
    let u = |v: u64| Kv::U32(v as u32);
    let mut kv: Vec<(String, Kv)> = vec![
        ("general.architecture".into(), Kv::from("smallthinker")),
        ("general.type".into(), Kv::from("model")),
    ];
    kv.extend(sampling(dir));
    kv.push(("general.name".into(), Kv::from(model_name(dir))));
    kv.push(("general.size_label".into(), Kv::from(counts.size_label())));
    kv.push((a("block_count"), u(c.n_layer)));
    if let Some(n) = c.n_ctx {
        kv.push((a("context_length"), u(n)));
    }
    kv.push((a("embedding_length"), u(c.n_embd)));
    kv.push((a("attention.head_count"), u(c.n_head)));
    kv.push((a("attention.head_count_kv"), u(c.n_head_kv)));
    if let Some(t) = c.rope_theta {
        kv.push((a("rope.freq_base"), Kv::F32(t as f32)));
    }
    if let Some(e) = c.rms_norm_eps {
        kv.push((a("attention.layer_norm_rms_epsilon"), Kv::F32(e as f32)));
    }
    kv.push((a("attention.key_length"), u(c.head_dim)));
    kv.push((a("attention.value_length"), u(c.head_dim)));
    kv.push(("general.file_type".into(), Kv::U32(out.file_type())));
    kv.push((a("expert_count"), u(c.n_expert)));
    kv.push((a("expert_used_count"), u(c.n_expert_used)));
    kv.push((a("expert_feed_forward_length"), u(c.n_ff_exp)));
    kv.push((a("feed_forward_length"), u(c.n_ff_exp)));
    kv.push((a("expert_gating_func"), Kv::U32(if c.softmax_gating { 1 } else { 2 })));
    if let Some(w) = c.sliding_window {
        kv.push((a("attention.sliding_window"), u(w)));
    }
    kv.push(("general.quantization_version".into(), Kv::U32(2)));
    kv.push(("tokenizer.ggml.model".into(), Kv::from("gpt2")));
    kv.push(("tokenizer.ggml.pre".into(), Kv::from(tok.pre)));
    kv.push(("tokenizer.ggml.tokens".into(), Kv::string_array(tok.tokens.clone())));
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Kv::i32_array(tok.token_types.clone()),
    ));
    kv.push(("tokenizer.ggml.merges".into(), Kv::string_array(tok.merges.clone())));
    for (typ, id) in &tok.special_ids {
        let key = match *typ {
            "unk" => "unknown",
            "sep" => "seperator", // sic: gguf-py's key name
            "pad" => "padding",
            t => t,
        };
        kv.push((format!("tokenizer.ggml.{key}_token_id"), Kv::U32(*id)));
    }
    for (typ, b) in &tok.add_special {
        kv.push((format!("tokenizer.ggml.add_{typ}_token"), Kv::Bool(*b)));
    }
    if let Some(t) = &tok.chat_template {
        kv.push(("tokenizer.chat_template".into(), Kv::from(t.as_str())));
    }
    kv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_size_label_like_gguf_py() {
        // Values gguf-py produced for the fixtures (tests/fixtures/convert/tiny4b_bf16.json) and for id_to_title.
        assert_eq!(model_name(Path::new("/x/tiny4b_bf16")), "Tiny4B_Bf16");
        assert_eq!(model_name(Path::new("/x/smallthinker-4b-v1.2")), "Smallthinker 4b v1.2");
        assert_eq!(
            model_name(Path::new("/x/SmallThinker-4BA0.6B-Instruct")),
            "SmallThinker 4BA0.6B Instruct"
        );
        let c = ParamCounts {
            shared: 19_460_000,
            expert: 49_152,
            expert_count: 4,
        };
        assert_eq!(c.size_label(), "4x20M");
        let c = ParamCounts {
            shared: 1_234,
            expert: 0,
            expert_count: 0,
        };
        assert_eq!(c.size_label(), "1.2K");
    }
}
