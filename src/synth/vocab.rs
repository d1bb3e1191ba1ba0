//! The Qwen2 vocabulary as llama.cpp ships it (`vendor/qwen2-vocab/ggml-vocab-qwen2.gguf`), read into the pieces a
//! Hugging Face `tokenizer.json` needs.

use std::path::Path;

use crate::gguf::{GgufError, GgufFile};

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
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: tokenizer.ggml.token_type has {types} entries for {tokens} tokens")]
    TypeCount { path: String, types: usize, tokens: usize },
}

impl Vocab {
    /// Reads tokens, token types, merges and the chat template of a vocab GGUF.
    pub fn load(path: &Path) -> Result<Vocab, VocabError> {
        let f = GgufFile::open(path)?;
        let strings = |key| -> Result<Vec<String>, GgufError> {
            Ok(f.get_str_array(key)?.into_iter().map(str::to_string).collect())
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let token_types = match f.get("tokenizer.ggml.token_type").and_then(|v| v.as_i32_array()) {
            Some(t) => t.to_vec(),
            None => vec![],
        };
        if token_types.len() != tokens.len() {
            let path = path.display().to_string();
            return Err(VocabError::TypeCount {
                path,
                types: token_types.len(),
                tokens: tokens.len(),
            });
        }
        Ok(Vocab {
            tokens,
            token_types,
            merges: strings("tokenizer.ggml.merges")?,
            chat_template: f.get_str("tokenizer.chat_template")?.to_string(),
        })
    }
}
