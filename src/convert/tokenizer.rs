//! Tokenizer metadata from `tokenizer.json` + `tokenizer_config.json` (+ `config.json` ids), as llama.cpp's
//! `_set_vocab_gpt2` and gguf-py's `SpecialVocab` write it (compat doc §1.3).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::config::HfConfig;
use super::error::ConvertError;

/// Qwen2's pre-tokenizer split pattern; the only pre-tokenizer this converter recognises.
pub const QWEN2_SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token types (`enum llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Everything the GGUF `tokenizer.*` keys hold, in the order llama.cpp writes them.
#[derive(Clone, Debug)]
pub struct TokenizerMeta {
    pub pre: &'static str,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    /// (key suffix, id) in SpecialVocab's insertion order, e.g. ("eos", 151645).
    pub special_ids: Vec<(&'static str, u32)>,
    /// (key suffix, value): add_bos / add_eos.
    pub add_special: Vec<(&'static str, bool)>,
    pub chat_template: Option<String>,
}

fn read_json(path: &Path) -> Result<Value, ConvertError> {
    let text = super::config::read_input(path)?;
    serde_json::from_slice(&text).map_err(|source| ConvertError::Json {
        path: path.into(),
        source,
    })
}

fn key_err(path: &Path, key: &str, why: impl Into<String>) -> ConvertError {
    ConvertError::BadKey {
        path: path.into(),
        key: key.into(),
        why: why.into(),
    }
}

/// llama.cpp's `does_token_look_special`, for the tokens that matter here.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
}

/// Recognises the qwen2 pre-tokenizer by structure: llama.cpp's converter hashes a test tokenization instead,
/// which needs the tokenizer itself; a Split with exactly Qwen2's regex followed by a regex-less ByteLevel is what
/// produces the `qwen2` hash.
fn pre_tokenizer(path: &Path, tok: &Value) -> Result<&'static str, ConvertError> {
    let pt = &tok["pre_tokenizer"];
    let steps = pt["pretokenizers"].as_array().map(Vec::as_slice).unwrap_or_default();
    let ok = pt["type"] == "Sequence"
        && steps.len() == 2
        && steps[0]["type"] == "Split"
        && steps[0]["pattern"]["Regex"] == QWEN2_SPLIT_REGEX
        && steps[0]["behavior"] == "Isolated"
        && steps[0]["invert"] == false
        && steps[1]["type"] == "ByteLevel"
        && steps[1]["use_regex"] == false;
    if !ok {
        return Err(key_err(
            path,
            "pre_tokenizer",
            "not the Qwen2 pre-tokenizer (the only one SmallThinker uses)",
        ));
    }
    Ok("qwen2")
}

impl TokenizerMeta {
    /// Reads the tokenizer files of `dir`.
    pub fn load(dir: &Path, cfg: &HfConfig) -> Result<TokenizerMeta, ConvertError> {
        let tok_path: PathBuf = dir.join("tokenizer.json");
        let tok = read_json(&tok_path)?;
        let model = &tok["model"];
        if model["type"] != "BPE" {
            return Err(key_err(
                &tok_path,
                "model.type",
                format!("{} is not BPE", model["type"]),
            ));
        }
        let pre = pre_tokenizer(&tok_path, &tok)?;
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| key_err(&tok_path, "model.vocab", "missing or not an object"))?;
        let n_vocab = cfg.n_vocab as usize;
        let mut by_id: Vec<Option<(String, i32)>> = vec![None; n_vocab];
        let mut put = |id: &Value, s: &str, ty: i32, key: &str| -> Result<(), ConvertError> {
            let id = id
                .as_u64()
                .ok_or_else(|| key_err(&tok_path, key, format!("id of {s:?} is not an integer")))?
                as usize;
            let slot = by_id.get_mut(id).ok_or_else(|| {
                key_err(
                    &tok_path,
                    key,
                    format!("id {id} of {s:?} is not below vocab_size {n_vocab}"),
                )
            })?;
            *slot = Some((s.to_string(), ty));
            Ok(())
        };
        for (s, id) in vocab {
            put(id, s, NORMAL, "model.vocab")?;
        }
        let added = tok["added_tokens"].as_array().cloned().unwrap_or_default();
        for a in &added {
            let content = a["content"]
                .as_str()
                .ok_or_else(|| key_err(&tok_path, "added_tokens", "content is not a string"))?;
            let special = a["special"].as_bool().unwrap_or(false);
            let ty = if special || looks_special(content) {
                CONTROL
            } else {
                USER_DEFINED
            };
            put(&a["id"], content, ty, "added_tokens")?;
        }
        let (mut tokens, mut token_types) = (Vec::with_capacity(n_vocab), Vec::with_capacity(n_vocab));
        for (i, t) in by_id.into_iter().enumerate() {
            let (s, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
            tokens.push(s);
            token_types.push(ty);
        }
        let merges = merges(&tok_path, &model["merges"])?;

        // SpecialVocab: tokenizer.json post-processor, then tokenizer_config.json, then config.json ids.
        let mut add_special: Vec<(&'static str, bool)> = vec![];
        let pp = &tok["post_processor"];
        let procs = pp["processors"].as_array().cloned().unwrap_or_else(|| vec![pp.clone()]);
        if procs.iter().any(|p| p["type"] == "ByteLevel") {
            add_special = vec![("bos", false), ("eos", false)];
        }
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.is_file() {
            read_json(&tc_path)?
        } else {
            Value::Object(Map::new())
        };
        let mut special_ids: Vec<(&'static str, u32)> = vec![];
        let types = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
        let added_ids: HashMap<&str, u64> = added
            .iter()
            .rev() // the first match wins
            .filter_map(|a| Some((a["content"].as_str()?, a["id"].as_u64()?)))
            .collect();
        let set = |typ: &'static str, id: Option<u64>, ids: &mut Vec<(&'static str, u32)>| {
            if let Some(id) = id.filter(|&i| i < cfg.n_vocab) {
                if !ids.iter().any(|(t, _)| *t == typ) {
                    ids.push((typ, id as u32));
                }
            }
        };
        for typ in types {
            if let Some(b) = tc[format!("add_{typ}_token")].as_bool() {
                match add_special.iter_mut().find(|(t, _)| *t == typ) {
                    Some(_) => {} // the post-processor wins, as in SpecialVocab
                    None => add_special.push((typ, b)),
                }
            }
            let entry = &tc[format!("{typ}_token")];
            let content = entry.as_str().or_else(|| entry["content"].as_str());
            if let Some(c) = content {
                set(typ, added_ids.get(c).copied(), &mut special_ids);
            }
        }
        for typ in types {
            set(
                typ,
                cfg.raw.get(&format!("{typ}_token_id")).and_then(Value::as_u64),
                &mut special_ids,
            );
        }
        let chat_template = match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    Some(std::fs::read_to_string(&jinja).map_err(ConvertError::io(&jinja))?)
                } else {
                    None
                }
            }
            Some(_) => {
                return Err(key_err(
                    &tc_path,
                    "chat_template",
                    "not a string (template lists are not supported)",
                ))
            }
        };
        Ok(TokenizerMeta {
            pre,
            tokens,
            token_types,
            merges,
            special_ids,
            add_special,
            chat_template,
        })
    }
}

fn merges(path: &Path, m: &Value) -> Result<Vec<String>, ConvertError> {
    let list = m
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| key_err(path, "model.merges", "missing or empty"))?;
    list.iter()
        .map(|e| match e {
            Value::String(s) => Some(s.clone()),
            // Pair form (transformers >= 4.45): spaces inside a part are stored as U+0120, as gguf-py does.
            Value::Array(p) if p.len() == 2 => {
                let enc = |v: &Value| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                Some(format!("{} {}", enc(&p[0])?, enc(&p[1])?))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| key_err(path, "model.merges", "entries must be strings or [left, right] pairs"))
}
