//! The tokenizer.json that `synth` rebuilds from llama.cpp's Qwen2 vocab GGUF tokenizes llama.cpp's own test
//! vectors (vendor/qwen2-vocab/ggml-vocab-qwen2.gguf.inp/.out) exactly as llama.cpp does, and the converter turns
//! it back into the same token list the vocab GGUF holds.

mod convert_util;

use std::path::Path;

use smallthinker::synth::{tokenizer_json, Vocab};

fn vendor(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("vendor/qwen2-vocab")
            .join(name),
    )
    .unwrap()
}

#[test]
fn rebuilt_tokenizer_matches_llama_cpp_vectors() {
    let vocab = Vocab::load(&convert_util::vocab_gguf()).unwrap();
    assert_eq!(vocab.tokens.len(), 151936);
    let json = serde_json::to_string(&tokenizer_json(&vocab)).unwrap();
    let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
    let inputs = vendor("ggml-vocab-qwen2.gguf.inp");
    let outputs = vendor("ggml-vocab-qwen2.gguf.out");
    let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let outputs: Vec<&str> = outputs.split('\n').collect();
    assert!(inputs.len() >= 47, "{} inputs", inputs.len());
    for (i, text) in inputs.iter().enumerate().take(47) {
        let want: Vec<u32> = outputs[i].split_whitespace().map(|s| s.parse().unwrap()).collect();
        let got = tok.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "case {i}: {text:?}");
    }
}
