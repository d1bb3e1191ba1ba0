//! A Hugging Face `tokenizer.json` + `tokenizer_config.json` rebuilt from llama.cpp's Qwen2 vocab GGUF, laid out as
//! gguf-and-llamacpp-compat.md ("Rebuilding a Qwen2 tokenizer.json") says: the `tokenizers` library then tokenizes
//! llama.cpp's test vectors exactly as llama.cpp does, and llama.cpp's converter hashes it to the `qwen2`
//! pre-tokenizer.

use serde_json::{json, Map, Value};

use super::vocab::{Vocab, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED};

/// Qwen2's pre-tokenizer split pattern.
pub const QWEN2_SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level() -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
}

fn added_tokens(vocab: &Vocab) -> Vec<(usize, &str, bool)> {
    let kinds = vocab.token_types.iter().zip(&vocab.tokens).enumerate();
    kinds
        .filter(|(_, (t, _))| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
        .map(|(id, (t, s))| (id, s.as_str(), *t == TOKEN_CONTROL))
        .collect()
}

/// The `tokenizer.json` document.
pub fn tokenizer_json(vocab: &Vocab) -> Value {
    let mut model_vocab = Map::new();
    for (id, (tok, ty)) in vocab.tokens.iter().zip(&vocab.token_types).enumerate() {
        if *ty == TOKEN_NORMAL {
            model_vocab.insert(tok.clone(), json!(id));
        }
    }
    let added: Vec<Value> = added_tokens(vocab)
        .into_iter()
        .map(|(id, content, special)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level(),
        ]},
        "post_processor": byte_level(),
        "decoder": byte_level(),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": model_vocab, "merges": vocab.merges},
    })
}

/// The `tokenizer_config.json` document: Qwen2Tokenizer, eos `<|im_end|>`, pad `<|endoftext|>`, no bos.
pub fn tokenizer_config_json(vocab: &Vocab) -> Value {
    let mut decoder = Map::new();
    for (id, content, special) in added_tokens(vocab) {
        decoder.insert(
            id.to_string(),
            json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": special}),
        );
    }
    json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": null,
        "chat_template": vocab.chat_template,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null,
    })
}
