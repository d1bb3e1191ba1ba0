//! The GGUF-built tokenizer against llama.cpp: its own test vectors for the vendored Qwen2 vocabulary, plus a
//! fixture of extra cases produced by llama.cpp (tools/py/gen_tokenizer_fixture.py).
mod tokenizer_support;

use smallthinker::tokenizer::{EncodeOptions, StreamDecoder, Tokenizer, TokenizerError, VocabSpec};
use tokenizer_support::{fixture, spec, test_vectors, tokenizer};

#[test]
fn llama_cpp_test_vectors_exactly() {
    let tok = tokenizer();
    let vectors = test_vectors();
    assert_eq!(vectors.len(), 46);
    let mut failures = Vec::new();
    for (text, want) in &vectors {
        // tests/test-tokenizer-0.cpp: common_tokenize(ctx, text, add_special = false, parse_special = false)
        let got = tok.encode(text, false).unwrap();
        if &got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn decode_round_trips_the_test_vectors() {
    let tok = tokenizer();
    for (text, ids) in test_vectors() {
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
    }
}

#[derive(serde::Deserialize)]
struct LlamaCppFixture {
    encode: Vec<EncodeCase>,
    decode: Vec<DecodeCase>,
    eog: Vec<u32>,
    eot: u32,
    bos: u32,
    eos: u32,
}

#[derive(serde::Deserialize)]
struct EncodeCase {
    text: String,
    parse_special: bool,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    special: bool,
    hex: String,
}

fn llama_cpp_fixture() -> LlamaCppFixture {
    let text = std::fs::read_to_string(fixture("tokenizer_llamacpp.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn matches_llama_cpp_on_special_tokens_and_unnormalised_text() {
    let tok = tokenizer();
    let fx = llama_cpp_fixture();
    assert!(fx.encode.len() >= 20);
    for case in &fx.encode {
        let got = tok.encode(&case.text, case.parse_special).unwrap();
        assert_eq!(got, case.ids, "{:?} parse_special={}", case.text, case.parse_special);
    }
    for case in &fx.decode {
        let got = tok.decode_bytes(&case.ids, case.special).unwrap();
        assert_eq!(got, unhex(&case.hex), "{:?} special={}", case.ids, case.special);
    }
}

#[test]
fn special_ids_and_end_of_generation_match_llama_cpp() {
    let tok = tokenizer();
    let fx = llama_cpp_fixture();
    assert_eq!(tok.bos(), Some(fx.bos));
    assert_eq!(tok.eos(), Some(fx.eos));
    assert_eq!(tok.eot(), Some(fx.eot));
    assert_eq!(tok.eog_ids().collect::<Vec<_>>(), fx.eog);
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.is_eog(im_end));
    assert!(!tok.is_eog(tok.token_id("<|im_start|>").unwrap()));
    assert!(!tok.is_eog(tok.token_id("Hello").unwrap()));
    assert_eq!(tok.n_vocab(), 151936);
}

#[test]
fn add_special_follows_the_vocab_flags() {
    let tok = tokenizer();
    // The Qwen2 vocab has no add_bos_token key: llama.cpp's BPE default is false, so nothing is added.
    assert!(!tok.add_bos());
    let opts = EncodeOptions {
        add_special: true,
        parse_special: false,
    };
    assert_eq!(tok.encode_with("Hello", opts).unwrap(), vec![9707]);

    let mut with_bos = spec().clone();
    with_bos.add_bos = true;
    with_bos.add_eos = true;
    let tok = Tokenizer::new(&with_bos).unwrap();
    assert_eq!(tok.encode_with("Hello", opts).unwrap(), vec![151643, 9707, 151643]);
    assert_eq!(tok.encode("Hello", false).unwrap(), vec![9707]);
}

#[test]
fn stream_decoder_holds_back_a_character_split_across_tokens() {
    let tok = tokenizer();
    // " this is 🦙.cpp" from the test vectors: the llama is three byte-level tokens (" \xF0\x9F", "\xA6", "\x99").
    let ids = [419, 374, 11162, 99, 247, 13, 10821];
    assert_eq!(tok.token_to_piece_bytes(11162, false).unwrap(), b" \xF0\x9F");
    assert_eq!(tok.token_to_piece_bytes(99, false).unwrap(), b"\xA6");
    let mut d = StreamDecoder::new(false);
    let outs: Vec<String> = ids.iter().map(|&id| d.push(tok, id).unwrap()).collect();
    assert_eq!(outs, [" this", " is", " ", "", "🦙", ".", "cpp"]);
    assert!(d.pending().is_empty());
    assert_eq!(d.finish(), "");

    // A stream cut inside the character: the partial bytes stay pending and become one U+FFFD at the end.
    let mut d = StreamDecoder::new(false);
    assert_eq!(d.push(tok, 11162).unwrap(), " ");
    assert_eq!(d.push(tok, 99).unwrap(), "");
    assert_eq!(d.pending(), b"\xF0\x9F\xA6");
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn stream_decoder_renders_control_tokens_only_when_asked() {
    let tok = tokenizer();
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    let run = |render| {
        let mut d = StreamDecoder::new(render);
        ids.iter().map(|&id| d.push(tok, id).unwrap()).collect::<String>()
    };
    assert_eq!(run(false), "user\nhi");
    assert_eq!(run(true), "<|im_start|>user\nhi<|im_end|>");
}

#[test]
fn out_of_range_ids_are_errors() {
    let tok = tokenizer();
    let err = tok.decode(&[9707, 151936], false).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::TokenOutOfRange {
                id: 151936,
                n_vocab: 151936
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_unsupported_models_and_pre_tokenizers_naming_the_key() {
    let mut s = spec().clone();
    s.model = "llama".into();
    let err = Tokenizer::new(&s).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.ggml.model") && err.contains("\"llama\""),
        "{err}"
    );

    let mut s = spec().clone();
    s.pre = "llama-bpe".into();
    let err = Tokenizer::new(&s).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.pre") && err.contains("llama-bpe"), "{err}");

    let mut s = spec().clone();
    s.token_types.pop();
    let err = Tokenizer::new(&s).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.token_type"), "{err}");

    let mut s = spec().clone();
    s.merges[7] = "nospace".into();
    let err = Tokenizer::new(&s).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.ggml.merges") && err.contains("nospace"),
        "{err}"
    );

    let mut s = spec().clone();
    s.eos = Some(200_000);
    let err = Tokenizer::new(&s).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.eos_token_id"), "{err}");

    let mut s: VocabSpec = spec().clone();
    let dup = s.tokens[5].clone();
    s.tokens[6] = dup;
    let err = Tokenizer::new(&s).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");
}

#[test]
fn tokenizer_json_reproduces_the_test_vectors_in_the_tokenizers_crate() {
    let spec = spec();
    let json = spec.to_tokenizer_json().unwrap();
    let added = json["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 3 + 290);
    assert_eq!(added[1]["content"], "<|im_start|>");
    assert_eq!(added[1]["id"], 151644);
    assert_eq!(added[1]["special"], true);
    assert_eq!(added[3]["special"], false);
    assert_eq!(json["normalizer"]["type"], "NFC");
    assert_eq!(json["model"]["vocab"].as_object().unwrap().len(), 151643);
    assert_eq!(json["model"]["merges"].as_array().unwrap().len(), spec.merges.len());

    // Through a file, as a checkpoint would ship it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let hf = tokenizers::Tokenizer::from_file(&path).unwrap();
    for (text, want) in test_vectors() {
        let got = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(hf.decode(&want, false).unwrap(), text);
    }
    let ids = hf
        .encode("<|im_start|>user<|im_end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, [151644, 872, 151645]);
}
