//! VocabSpec::from_gguf on GGUF files written with our writer: a tiny working vocabulary, and each kind of bad
//! tokenizer metadata.
mod tokenizer_support;

use std::path::Path;

use smallthinker::gguf::{GgufFile, GgufWriter, Value};
use smallthinker::tokenizer::{Tokenizer, TokenizerError, VocabSpec};

/// The 256 byte-level characters, then "ab" and "abc" from two merges, then one control token.
fn tiny_kv() -> Vec<(&'static str, Value)> {
    // GPT-2's byte-level alphabet in byte order: printable bytes as themselves, the rest from U+0100 on.
    let mut next = 0x100u32;
    let mut tokens: Vec<String> = (0..=255u8)
        .map(|b| {
            if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
                char::from(b).to_string()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap().to_string()
            }
        })
        .collect();
    tokens.extend(["ab".to_string(), "abc".to_string(), "<|im_end|>".to_string()]);
    let mut types = vec![1i32; 258];
    types.push(3);
    vec![
        ("tokenizer.ggml.model", Value::from("gpt2")),
        ("tokenizer.ggml.pre", Value::from("qwen2")),
        ("tokenizer.ggml.tokens", Value::string_array(tokens)),
        ("tokenizer.ggml.token_type", Value::i32_array(types)),
        (
            "tokenizer.ggml.merges",
            Value::string_array(vec!["a b".into(), "ab c".into()]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::from(258u32)),
        ("tokenizer.ggml.add_bos_token", Value::from(false)),
        ("tokenizer.chat_template", Value::from("{{ messages[0].content }}")),
    ]
}

fn write(path: &Path, kv: Vec<(&'static str, Value)>) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::from("smallthinker"));
    for (k, v) in kv {
        w.add_kv(k, v);
    }
    w.write(path, |_, _, _| Ok::<(), std::io::Error>(())).unwrap();
    GgufFile::open(path).unwrap()
}

fn with(key: &'static str, value: Option<Value>) -> Vec<(&'static str, Value)> {
    let mut kv: Vec<_> = tiny_kv().into_iter().filter(|(k, _)| *k != key).collect();
    if let Some(v) = value {
        kv.push((key, v));
    }
    kv
}

#[test]
fn a_tiny_vocabulary_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir.path().join("tiny.gguf"), tiny_kv());
    let spec = VocabSpec::from_gguf(&file).unwrap();
    assert_eq!(spec.tokens.len(), 259);
    assert_eq!((spec.bos, spec.eos, spec.eot, spec.pad), (None, Some(258), None, None));
    assert_eq!(spec.chat_template.as_deref(), Some("{{ messages[0].content }}"));
    let tok = Tokenizer::new(&spec).unwrap();
    // "abc" by two merges; " ab" is byte 32 ('Ġ') then "ab" (no "Ġ ab" merge).
    assert_eq!(tok.encode("abc ab", false).unwrap(), [257, 32, 256]);
    assert_eq!(tok.encode("x<|im_end|>", true).unwrap(), [b'x' as u32, 258]);
    assert!(tok.is_eog(258));
}

fn err(kv: Vec<(&'static str, Value)>) -> TokenizerError {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir.path().join("bad.gguf"), kv);
    VocabSpec::from_gguf(&file).unwrap_err()
}

#[test]
fn bad_metadata_names_the_key() {
    let e = err(with("tokenizer.ggml.model", None));
    assert!(
        matches!(
            e,
            TokenizerError::MissingKey {
                key: "tokenizer.ggml.model"
            }
        ),
        "{e}"
    );
    let e = err(with("tokenizer.ggml.merges", None));
    assert!(
        matches!(
            e,
            TokenizerError::MissingKey {
                key: "tokenizer.ggml.merges"
            }
        ),
        "{e}"
    );
    let e = err(with("tokenizer.ggml.eos_token_id", Some(Value::from(258i32))));
    assert!(
        matches!(
            e,
            TokenizerError::WrongType {
                key: "tokenizer.ggml.eos_token_id",
                ..
            }
        ),
        "{e}"
    );
    let e = err(with("tokenizer.ggml.token_type", Some(Value::from(vec![1u32; 259]))));
    assert!(
        matches!(
            e,
            TokenizerError::WrongType {
                key: "tokenizer.ggml.token_type",
                ..
            }
        ),
        "{e}"
    );
    let e = err(with("tokenizer.ggml.tokens", Some(Value::from("x"))));
    assert!(e.to_string().contains("tokenizer.ggml.tokens"), "{e}");
    // No pre-tokenizer name: llama.cpp's "default", which is not the Qwen2 split.
    let e = err(with("tokenizer.ggml.pre", None));
    assert!(
        e.to_string().contains("tokenizer.ggml.pre") && e.to_string().contains("default"),
        "{e}"
    );
    let e = err(with("tokenizer.ggml.model", Some(Value::from("llama"))));
    assert!(
        matches!(
            e,
            TokenizerError::Unsupported {
                key: "tokenizer.ggml.model",
                ..
            }
        ),
        "{e}"
    );
    let e = err(with("tokenizer.ggml.eos_token_id", Some(Value::from(9999u32))));
    assert!(e.to_string().contains("9999"), "{e}");
}

#[test]
fn the_vendored_vocab_through_our_reader_equals_gguf_py() {
    let ours = tokenizer_support::spec();
    let py = tokenizer_support::spec_from_gguf_py();
    assert_eq!(ours, &py);
}
