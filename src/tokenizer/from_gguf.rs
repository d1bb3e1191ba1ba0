//! Reading a [`VocabSpec`] from a GGUF file's `tokenizer.*` keys (gguf-py `Keys.Tokenizer`, llama-vocab.cpp `load`).

use super::{TokenizerError, VocabSpec};
use crate::gguf::{GgufFile, Value};

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const BOS: &str = "tokenizer.ggml.bos_token_id";
const EOS: &str = "tokenizer.ggml.eos_token_id";
const EOT: &str = "tokenizer.ggml.eot_token_id";
const PAD: &str = "tokenizer.ggml.padding_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

impl VocabSpec {
    /// Reads the vocabulary from GGUF metadata. Absent optional keys keep llama.cpp's defaults (no token types =
    /// all NORMAL, add_bos/add_eos false, `pre` "default"), except that absent BOS/EOS ids stay `None` where
    /// llama.cpp would fall back to id 11. The result is checked with [`VocabSpec::validate`].
    pub fn from_gguf(file: &GgufFile) -> Result<VocabSpec, TokenizerError> {
        let spec = VocabSpec {
            model: required(file, MODEL, "string", Value::as_str)?.to_owned(),
            pre: optional(file, PRE, "string", Value::as_str)?
                .unwrap_or("default")
                .to_owned(),
            tokens: strings(file, TOKENS)?,
            token_types: optional(file, TOKEN_TYPE, "array of i32", Value::as_i32_array)?
                .map(<[i32]>::to_vec)
                .unwrap_or_default(),
            merges: strings(file, MERGES)?,
            bos: optional(file, BOS, "u32", Value::as_u32)?,
            eos: optional(file, EOS, "u32", Value::as_u32)?,
            eot: optional(file, EOT, "u32", Value::as_u32)?,
            pad: optional(file, PAD, "u32", Value::as_u32)?,
            add_bos: optional(file, ADD_BOS, "bool", Value::as_bool)?.unwrap_or(false),
            add_eos: optional(file, ADD_EOS, "bool", Value::as_bool)?.unwrap_or(false),
            chat_template: optional(file, CHAT_TEMPLATE, "string", Value::as_str)?.map(str::to_owned),
        };
        spec.validate()?;
        Ok(spec)
    }
}

fn optional<'f, T>(
    file: &'f GgufFile,
    key: &'static str,
    expected: &'static str,
    get: impl Fn(&'f Value) -> Option<T>,
) -> Result<Option<T>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| TokenizerError::WrongType {
            key,
            expected,
            got: v.type_label(),
        }),
    }
}

fn required<'f, T>(
    file: &'f GgufFile,
    key: &'static str,
    expected: &'static str,
    get: impl Fn(&'f Value) -> Option<T>,
) -> Result<T, TokenizerError> {
    optional(file, key, expected, get)?.ok_or(TokenizerError::MissingKey { key })
}

fn strings(file: &GgufFile, key: &'static str) -> Result<Vec<String>, TokenizerError> {
    let v = required(file, key, "array of strings", Value::as_str_array)?;
    Ok(v.into_iter().map(str::to_owned).collect())
}
