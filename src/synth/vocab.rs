//! The Qwen2 vocabulary as llama.cpp ships it (`vendor/qwen2-vocab/ggml-vocab-qwen2.gguf`), read into the pieces a
//! Hugging Face `tokenizer.json` needs.
//!
//! Stand-in: a minimal GGUF KV reader private to synth until `crate::gguf::GgufFile` lands; it reads only the
//! tokenizer keys, and every length is checked against the file size.

use std::path::{Path, PathBuf};

/// Token types as llama.cpp stores them (`tokenizer.ggml.token_type`).
pub const TOKEN_NORMAL: i32 = 1;
/// Special tokens (`<|im_end|>` etc.).
pub const TOKEN_CONTROL: i32 = 3;
/// Added tokens that are not special.
pub const TOKEN_USER_DEFINED: i32 = 4;

/// The tokenizer data of a vocab-only GGUF.
pub struct Vocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub chat_template: String,
}

/// Why the vocabulary file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a GGUF v3 vocabulary ({what})")]
    Format { path: PathBuf, what: String },
    #[error("{path}: key {key} is missing or has the wrong type")]
    Key { path: PathBuf, key: &'static str },
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u64()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

enum Kv {
    Strings(Vec<String>),
    I32s(Vec<i32>),
    Str(String),
    Other,
}

/// Size in bytes of a scalar GGUF value type, or None for string/array.
fn scalar_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn read_value(c: &mut Cursor, ty: u32) -> Option<Kv> {
    match ty {
        8 => Some(Kv::Str(c.string()?)),
        9 => {
            let ety = c.u32()?;
            let n = c.u64()?;
            match ety {
                8 => {
                    // Every string takes at least its 8-byte length: bound the allocation by the file size.
                    if n > (c.buf.len() as u64) / 8 {
                        return None;
                    }
                    (0..n).map(|_| c.string()).collect::<Option<Vec<_>>>().map(Kv::Strings)
                }
                5 => {
                    let raw = c.take(n.checked_mul(4)?)?;
                    Some(Kv::I32s(
                        raw.chunks_exact(4)
                            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                            .collect(),
                    ))
                }
                _ => {
                    c.take(n.checked_mul(scalar_size(ety)?)?)?;
                    Some(Kv::Other)
                }
            }
        }
        _ => {
            c.take(scalar_size(ty)?)?;
            Some(Kv::Other)
        }
    }
}

impl Vocab {
    /// Reads tokens, token types, merges and the chat template of a vocab GGUF.
    pub fn load(path: &Path) -> Result<Vocab, VocabError> {
        let buf = std::fs::read(path).map_err(|source| VocabError::Io {
            path: path.into(),
            source,
        })?;
        let bad = |what: &str| VocabError::Format {
            path: path.into(),
            what: what.into(),
        };
        let mut c = Cursor { buf: &buf, pos: 0 };
        if c.take(4) != Some(b"GGUF".as_slice()) || c.u32() != Some(3) {
            return Err(bad("magic/version"));
        }
        let _n_tensors = c.u64().ok_or_else(|| bad("header"))?;
        let n_kv = c.u64().ok_or_else(|| bad("header"))?;
        let (mut tokens, mut types, mut merges, mut template) = (None, None, None, None);
        for _ in 0..n_kv {
            let key = c.string().ok_or_else(|| bad("key"))?;
            let ty = c.u32().ok_or_else(|| bad("value type"))?;
            let v = read_value(&mut c, ty).ok_or_else(|| bad(&format!("value of {key}")))?;
            match (key.as_str(), v) {
                ("tokenizer.ggml.tokens", Kv::Strings(s)) => tokens = Some(s),
                ("tokenizer.ggml.token_type", Kv::I32s(t)) => types = Some(t),
                ("tokenizer.ggml.merges", Kv::Strings(s)) => merges = Some(s),
                ("tokenizer.chat_template", Kv::Str(s)) => template = Some(s),
                _ => {}
            }
        }
        let key = |key| VocabError::Key { path: path.into(), key };
        let tokens = tokens.ok_or_else(|| key("tokenizer.ggml.tokens"))?;
        let token_types = types.ok_or_else(|| key("tokenizer.ggml.token_type"))?;
        if token_types.len() != tokens.len() {
            return Err(key("tokenizer.ggml.token_type"));
        }
        Ok(Vocab {
            tokens,
            token_types,
            merges: merges.ok_or_else(|| key("tokenizer.ggml.merges"))?,
            chat_template: template.ok_or_else(|| key("tokenizer.chat_template"))?,
        })
    }
}
