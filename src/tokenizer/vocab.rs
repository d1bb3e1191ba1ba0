//! The tokenizer as stored in GGUF metadata (`tokenizer.ggml.*`), and its translation into a Hugging Face
//! `tokenizer.json` (the only format the `tokenizers` crate loads).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::TokenizerError;

/// `tokenizer.ggml.token_type` values (gguf-py `TokenType`, llama.cpp `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The Qwen2 pre-tokenizer split, exactly as in Qwen2's `tokenizer.json`. llama.cpp spells the case-insensitive
/// contractions out as `'[sS]|'[tT]|...` because its regex engine lacks `(?i:)`; Oniguruma has it, and the two
/// match the same strings.
pub const QWEN2_PRE_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values llama.cpp maps to `LLAMA_VOCAB_PRE_TYPE_QWEN2` (llama-vocab.cpp, `load`), all with
/// `clean_spaces = false` except "megrez", which keeps the default, false for BPE as well.
const QWEN2_PRE_NAMES: &[&str] = &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"];

/// The tokenizer part of a GGUF file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: "gpt2" is byte-level BPE, the only one supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name ("qwen2").
    pub pre: String,
    /// `tokenizer.ggml.tokens`: token text, indexed by id (byte-level BPE strings, `Ġ` for a space).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (see [`token_type`]); empty means every token is NORMAL, as in llama.cpp.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: "left right", highest priority first.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`; when absent, found by text like llama.cpp does.
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; llama.cpp's default for a BPE vocab is false.
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl VocabSpec {
    /// The type of token `id`, NORMAL when the file has no type array (llama.cpp's default).
    pub fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(token_type::NORMAL)
    }

    /// Checks that this is a vocabulary we can reproduce llama.cpp's tokenization for.
    pub fn validate(&self) -> Result<(), TokenizerError> {
        if self.model != "gpt2" {
            return Err(TokenizerError::Unsupported {
                key: "tokenizer.ggml.model",
                value: self.model.clone(),
                supported: "gpt2",
            });
        }
        if !QWEN2_PRE_NAMES.contains(&self.pre.as_str()) {
            return Err(TokenizerError::Unsupported {
                key: "tokenizer.ggml.pre",
                value: self.pre.clone(),
                supported: "qwen2, deepseek-r1-qwen, kormo, f2llmv2, megrez",
            });
        }
        if self.tokens.is_empty() || self.tokens.len() > u32::MAX as usize {
            return Err(TokenizerError::BadVocab {
                key: "tokenizer.ggml.tokens",
                detail: format!("{} tokens", self.tokens.len()),
            });
        }
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(TokenizerError::BadVocab {
                key: "tokenizer.ggml.token_type",
                detail: format!("{} types for {} tokens", self.token_types.len(), self.tokens.len()),
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(self.tokens.len());
        for (id, t) in self.tokens.iter().enumerate() {
            if !seen.insert(t.as_str()) {
                return Err(TokenizerError::BadVocab {
                    key: "tokenizer.ggml.tokens",
                    detail: format!("token {id} {t:?} appears twice"),
                });
            }
        }
        if self.merges.is_empty() {
            return Err(TokenizerError::BadVocab {
                key: "tokenizer.ggml.merges",
                detail: "no merges".into(),
            });
        }
        let n = self.tokens.len() as u32;
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos),
            ("tokenizer.ggml.eos_token_id", self.eos),
            ("tokenizer.ggml.eot_token_id", self.eot),
            ("tokenizer.ggml.padding_token_id", self.pad),
        ] {
            if let Some(id) = id.filter(|&id| id >= n) {
                return Err(TokenizerError::BadVocab {
                    key,
                    detail: format!("id {id} >= vocab size {n}"),
                });
            }
        }
        Ok(())
    }

    /// A `tokenizer.json` that Hugging Face `tokenizers` (and llama.cpp's converter, whose check-string hash
    /// resolves it to "qwen2") read as this vocabulary: see gguf-and-llamacpp-compat.md, last section. Converters
    /// writing a synthetic checkpoint use this; `tokenizer_config.json` is the caller's business.
    pub fn to_tokenizer_json(&self) -> Result<Value, TokenizerError> {
        use token_type::*;
        self.validate()?;
        let mut vocab = Map::with_capacity(self.tokens.len());
        let mut added = Vec::new();
        for (id, text) in self.tokens.iter().enumerate() {
            match self.token_type(id) {
                // Added tokens live outside the BPE model; UNUSED ones (the converter's `[PAD{i}]` fill) are left
                // out so that converting this file back refills them the same way.
                t @ (CONTROL | USER_DEFINED) => {
                    added.push(json!({
                        "id": id, "content": text, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": t == CONTROL,
                    }));
                }
                UNUSED => {}
                _ => {
                    vocab.insert(text.clone(), json!(id));
                }
            }
        }
        let merges = self
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                split_merge(m)
                    .map(|(a, b)| json!([a, b]))
                    .ok_or_else(|| bad_merge(i, m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let byte_level = json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
        });
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            // Qwen2's own tokenizer.json has NFC; llama.cpp (and so Tokenizer) does not normalise.
            "normalizer": { "type": "NFC" },
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": { "Regex": QWEN2_PRE_REGEX },
                        "behavior": "Isolated",
                        "invert": false
                    },
                    byte_level.clone()
                ]
            },
            "post_processor": byte_level.clone(),
            "decoder": byte_level,
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            }
        }))
    }
}

impl VocabSpec {
    /// The merges as (left, right) pairs.
    pub(crate) fn merge_pairs(&self) -> Result<Vec<(String, String)>, TokenizerError> {
        self.merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                split_merge(m)
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| bad_merge(i, m))
            })
            .collect()
    }

    /// The tokenizers-crate pipeline llama.cpp's BPE tokenizer amounts to for this vocabulary: Qwen2 regex split,
    /// byte-level mapping, BPE over every token that is not an added one. No normalizer (llama.cpp has none) and
    /// no added tokens: [`super::Tokenizer`] cuts those out itself first, in llama.cpp's order.
    pub(crate) fn bpe_pipeline(&self) -> Result<tokenizers::Tokenizer, TokenizerError> {
        use token_type::*;
        use tokenizers::models::bpe::{Vocab, BPE};
        use tokenizers::pre_tokenizers::{byte_level::ByteLevel, sequence::Sequence, split::Split};
        let backend = |e: tokenizers::Error| TokenizerError::Backend(e.to_string());
        let vocab: Vocab = self
            .tokens
            .iter()
            .enumerate()
            .filter(|&(id, _)| !matches!(self.token_type(id), CONTROL | USER_DEFINED | UNUSED))
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merge_pairs()?)
            .build()
            .map_err(backend)?;
        let split = Split::new(
            tokenizers::pre_tokenizers::split::SplitPattern::Regex(QWEN2_PRE_REGEX.into()),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(backend)?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])));
        Ok(tok)
    }
}

/// Splits "left right" at the first space after the first byte, as llama.cpp does (`word.find(' ', 1)`), so a left
/// part may itself start with a space.
fn split_merge(m: &str) -> Option<(&str, &str)> {
    // Searching bytes: byte 1 may be inside the first character, and a space is never part of one.
    let pos = m.as_bytes().get(1..)?.iter().position(|&b| b == b' ')? + 1;
    Some((&m[..pos], &m[pos + 1..]))
}

fn bad_merge(index: usize, merge: &str) -> TokenizerError {
    TokenizerError::BadVocab {
        key: "tokenizer.ggml.merges",
        detail: format!("merge {index} {merge:?} is not \"left right\""),
    }
}

/// GPT-2's byte-level alphabet: the printable bytes stand for themselves, the other 68 are shifted to U+0100 and up
/// in byte order. Returns the byte each of the 256 characters stands for.
pub(crate) fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
            };
            (c, b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_split_like_llama_cpp() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ", "t")));
        assert_eq!(split_merge("  a"), Some((" ", "a")));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge(" "), None);
        assert_eq!(split_merge("Ġ Ġ"), Some(("Ġ", "Ġ")));
    }

    #[test]
    fn byte_level_alphabet() {
        let d = byte_level_decoder();
        assert_eq!(d.len(), 256);
        assert_eq!(d[&'Ġ'], b' ');
        assert_eq!(d[&'Ċ'], b'\n');
        assert_eq!(d[&'A'], b'A');
        assert_eq!(d[&'\u{0100}'], 0);
        assert_eq!(d[&'\u{0143}'], 0xAD);
    }
}
