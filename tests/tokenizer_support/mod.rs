//! Shared by the tokenizer and chat tests: the vendored Qwen2 vocabulary and llama.cpp's test vectors for it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use smallthinker::tokenizer::{Tokenizer, VocabSpec};

pub fn vendor(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vendor/qwen2-vocab")
        .join(file)
}

pub fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

/// The vocabulary of vendor/qwen2-vocab/ggml-vocab-qwen2.gguf through our GGUF reader, read once per test binary.
pub fn spec() -> &'static VocabSpec {
    static SPEC: OnceLock<VocabSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let file = smallthinker::gguf::GgufFile::open(&vendor("ggml-vocab-qwen2.gguf")).expect("open the vocab GGUF");
        VocabSpec::from_gguf(&file).expect("read the tokenizer metadata")
    })
}

pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::new(spec()).expect("build the Qwen2 tokenizer"))
}

/// The same vocabulary as gguf-py ($SMALLTHINKER_PYTHON) reads it, to cross-check our reader.
pub fn spec_from_gguf_py() -> VocabSpec {
    let py = std::env::var("SMALLTHINKER_PYTHON")
        .expect("SMALLTHINKER_PYTHON must point to a python with gguf==0.19 (tools/test.sh sets it)");
    let script = r#"
import json, sys, gguf
r = gguf.GGUFReader(sys.argv[1])
f = lambda k: r.fields[k].contents() if k in r.fields else None
json.dump({
    "model": f("tokenizer.ggml.model"), "pre": f("tokenizer.ggml.pre"),
    "tokens": f("tokenizer.ggml.tokens"), "token_types": f("tokenizer.ggml.token_type") or [],
    "merges": f("tokenizer.ggml.merges"), "bos": f("tokenizer.ggml.bos_token_id"),
    "eos": f("tokenizer.ggml.eos_token_id"), "eot": f("tokenizer.ggml.eot_token_id"),
    "pad": f("tokenizer.ggml.padding_token_id"), "add_bos": bool(f("tokenizer.ggml.add_bos_token")),
    "add_eos": bool(f("tokenizer.ggml.add_eos_token")), "chat_template": f("tokenizer.chat_template"),
}, sys.stdout)
"#;
    let out = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(vendor("ggml-vocab-qwen2.gguf"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
    assert!(
        out.status.success(),
        "gguf-py dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parse the vocab dump")
}

/// llama.cpp's test vectors, split exactly like tests/test-tokenizer-0.cpp does.
pub fn test_vectors() -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(vendor("ggml-vocab-qwen2.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(vendor("ggml-vocab-qwen2.gguf.out")).unwrap();
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(p) => {
                inputs.push(rest[..p].to_string());
                rest = &rest[p + sep.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "inp and out disagree on the number of tests"
    );
    inputs.into_iter().zip(outputs).collect()
}
