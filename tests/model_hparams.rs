//! Hparams and the tensor table on the committed fixture GGUFs, and on byte-edited copies that break one thing
//! each (a missing or extra tensor, a wrong shape or type, a wrong key type, a missing or bad gating key).

mod common;

use std::io::Write;

use common::fixtures;
use smallthinker::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use smallthinker::model::{keys, tensors, Gating, Hparams, ModelError};

#[test]
fn fixture_hparams_match_the_generator_config() {
    for config in fixtures::CONFIGS {
        let m = fixtures::manifest(config);
        for model in m.models.keys() {
            let f = GgufFile::open(&m.gguf(model)).expect("open fixture");
            let hp = Hparams::from_gguf(&f).unwrap_or_else(|e| panic!("{config} {model}: {e}"));
            assert_eq!(hp, m.hparams(), "{config} {model}");
            tensors::validate_file(&hp, &f).unwrap_or_else(|e| panic!("{config} {model}: {e}"));
        }
    }
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    // stmha has no key_length/value_length/rope.freq_base.
    let m = fixtures::manifest("stmha");
    let f = GgufFile::open(&m.gguf("f32")).unwrap();
    assert!(f.get(keys::KEY_LENGTH).is_none() && f.get(keys::ROPE_FREQ_BASE).is_none());
    let hp = Hparams::from_gguf(&f).unwrap();
    assert_eq!((hp.n_embd_head_k, hp.n_embd_head_v), (32, 32));
    assert_eq!(hp.rope_freq_base, 10000.0);
    assert_eq!(hp.gating, Gating::Sigmoid);
    assert_eq!(hp.n_swa(), None);
}

#[test]
fn sliding_window_turns_on_swa_and_nope() {
    let f = GgufFile::open(&fixtures::manifest("st21b").gguf("f32")).unwrap();
    let hp = Hparams::from_gguf(&f).unwrap();
    assert_eq!(hp.n_swa(), Some(4096));
    assert_eq!(
        (0..5).map(|il| hp.use_rope(il)).collect::<Vec<_>>(),
        [false, true, true, true, false]
    );
    assert_eq!(
        (0..5).map(|il| hp.is_swa(il)).collect::<Vec<_>>(),
        [false, true, true, true, false]
    );
    assert_eq!(hp.gating, Gating::Softmax);
    assert!(f.tensor("output.weight").is_some());
    let f4 = GgufFile::open(&fixtures::manifest("st4b").gguf("f32")).unwrap();
    assert!(f4.tensor("output.weight").is_none(), "st4b is tied");
}

/// A GGUF string as stored: u64 length, then the bytes.
fn gguf_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// The offset just past the only occurrence of `needle`.
fn after_unique(bytes: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{:?} should occur once", String::from_utf8_lossy(needle));
    hits[0] + needle.len()
}

fn rename(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len(), "same-length edits keep every offset valid");
    let end = after_unique(bytes, &gguf_str(from));
    bytes[end - to.len()..end].copy_from_slice(to.as_bytes());
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn fixture_bytes(config: &str) -> Vec<u8> {
    std::fs::read(fixtures::manifest(config).gguf("f32")).unwrap()
}

/// Hparams and tensor validation of an edited file (the reader itself must accept it).
fn load(bytes: &[u8]) -> Result<Hparams, ModelError> {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(bytes).unwrap();
    let f = GgufFile::open(tmp.path()).expect("the edit keeps the file readable");
    let hp = Hparams::from_gguf(&f)?;
    tensors::validate_file(&hp, &f)?;
    Ok(hp)
}

#[test]
fn unedited_copy_loads() {
    load(&fixture_bytes("st4b")).unwrap();
}

#[test]
fn missing_tensor() {
    let mut b = fixture_bytes("st4b");
    rename(&mut b, "blk.1.ffn_up_exps.weight", "blk.1.ffn_up_expz.weight");
    assert_eq!(
        load(&b),
        Err(ModelError::MissingTensor {
            name: "blk.1.ffn_up_exps.weight".into()
        })
    );
}

#[test]
fn unexpected_tensor() {
    // output.weight is optional, so the renamed tensor is only an extra.
    let mut b = fixture_bytes("st21b");
    rename(&mut b, "output.weight", "outpux.weight");
    assert_eq!(
        load(&b),
        Err(ModelError::UnexpectedTensor {
            name: "outpux.weight".into()
        })
    );
}

#[test]
fn wrong_shape() {
    // swap ne0 and ne1 of attn_q: same size, transposed shape
    let mut b = fixture_bytes("st4b");
    let at = after_unique(&b, &gguf_str("blk.2.attn_q.weight"));
    assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 2, "n_dims");
    let (ne0, ne1) = (u64_at(&b, at + 4), u64_at(&b, at + 12));
    b[at + 4..at + 12].copy_from_slice(&ne1.to_le_bytes());
    b[at + 12..at + 20].copy_from_slice(&ne0.to_le_bytes());
    assert_eq!(
        load(&b),
        Err(ModelError::ShapeMismatch {
            name: "blk.2.attn_q.weight".into(),
            expected: vec![64, 384],
            got: vec![384, 64]
        })
    );
}

#[test]
fn wrong_tensor_type() {
    // F32 -> I32 keeps the byte size; ggml has no I32 matrix kernel and norms must be F32.
    for (name, n_dims) in [("blk.0.attn_v.weight", 2), ("output_norm.weight", 1)] {
        let mut b = fixture_bytes("stmha");
        let at = after_unique(&b, &gguf_str(name)) + 4 + 8 * n_dims;
        assert_eq!(
            u32::from_le_bytes(b[at..at + 4].try_into().unwrap()),
            0,
            "{name} is F32"
        );
        set_u32(&mut b, at, GgmlType::I32.id());
        match load(&b) {
            Err(ModelError::UnsupportedType {
                name: n,
                ty: GgmlType::I32,
                ..
            }) => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn wrong_key_type() {
    // u32 (4) -> i32 (5): llama.cpp rejects this too ("key has wrong type")
    let mut b = fixture_bytes("st4b");
    let at = after_unique(&b, &gguf_str(keys::EXPERT_COUNT));
    set_u32(&mut b, at, 5);
    assert_eq!(
        load(&b),
        Err(ModelError::WrongType {
            key: keys::EXPERT_COUNT.into(),
            expected: "u32",
            got: "i32".into()
        })
    );
}

#[test]
fn missing_expert_gating_func() {
    let mut b = fixture_bytes("st21b");
    rename(&mut b, keys::EXPERT_GATING_FUNC, "smallthinker.expert_gating_fund");
    assert_eq!(
        load(&b),
        Err(ModelError::MissingKey {
            key: keys::EXPERT_GATING_FUNC.into()
        })
    );
}

#[test]
fn bad_expert_gating_func() {
    let mut b = fixture_bytes("st21b");
    let at = after_unique(&b, &gguf_str(keys::EXPERT_GATING_FUNC));
    set_u32(&mut b, at + 4, 3); // SOFTMAX_WEIGHT: another architecture's gating
    match load(&b) {
        Err(ModelError::BadValue { key, value, .. }) => {
            assert_eq!((key.as_str(), value.as_str()), (keys::EXPERT_GATING_FUNC, "3"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_architecture() {
    let mut b = fixture_bytes("stmha");
    rename(&mut b, "smallthinker", "smallthinkez");
    assert!(matches!(load(&b), Err(ModelError::BadValue { key, .. }) if key == keys::ARCHITECTURE));
}

/// A copy of a fixture with its metadata edited, written by the crate's GGUF writer.
fn rewrite(config: &str, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> tempfile::TempPath {
    let src = GgufFile::open(&fixtures::manifest(config).gguf("f32")).unwrap();
    let mut kv: Vec<(String, Value)> = src.metadata().to_vec();
    edit(&mut kv);
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add_kv(k, v);
    }
    for t in src.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ty).unwrap();
    }
    let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    w.write(&path, |i, _, out| out.write_all(src.tensor_data(&src.tensors()[i])))
        .unwrap();
    path
}

fn set(kv: &mut Vec<(String, Value)>, key: &str, v: Value) {
    kv.retain(|(k, _)| k != key);
    kv.push((key.to_string(), v));
}

fn hparams_of(path: &std::path::Path) -> Result<Hparams, ModelError> {
    let f = GgufFile::open(path).unwrap();
    let hp = Hparams::from_gguf(&f)?;
    tensors::validate_file(&hp, &f)?;
    Ok(hp)
}

fn bad_key(r: Result<Hparams, ModelError>) -> String {
    match r {
        Err(ModelError::BadValue { key, .. }) => key,
        other => panic!("expected BadValue, got {other:?}"),
    }
}

#[test]
fn unsupported_rope_and_swa_settings_are_rejected() {
    let p = rewrite("st4b", |kv| set(kv, keys::ROPE_SCALING_TYPE, Value::from("yarn")));
    assert_eq!(bad_key(hparams_of(&p)), keys::ROPE_SCALING_TYPE);
    let p = rewrite("st4b", |kv| set(kv, keys::ROPE_SCALING_FACTOR, Value::from(4.0f32)));
    assert_eq!(bad_key(hparams_of(&p)), keys::ROPE_SCALING_FACTOR);
    let p = rewrite("st4b", |kv| set(kv, keys::ROPE_DIMENSION_COUNT, Value::from(32u32)));
    assert_eq!(bad_key(hparams_of(&p)), keys::ROPE_DIMENSION_COUNT);
    let p = rewrite("st21b", |kv| set(kv, keys::SLIDING_WINDOW_PATTERN, Value::from(2u32)));
    assert_eq!(bad_key(hparams_of(&p)), keys::SLIDING_WINDOW_PATTERN);
}

#[test]
fn neutral_optional_keys_are_accepted() {
    let p = rewrite("st4b", |kv| {
        set(kv, keys::ROPE_SCALING_TYPE, Value::from("none"));
        set(kv, keys::ROPE_DIMENSION_COUNT, Value::from(64u32));
    });
    assert_eq!(hparams_of(&p).unwrap(), fixtures::manifest("st4b").hparams());
    let p = rewrite("st21b", |kv| set(kv, keys::SLIDING_WINDOW_PATTERN, Value::from(4u32)));
    assert_eq!(hparams_of(&p).unwrap(), fixtures::manifest("st21b").hparams());
}

#[test]
fn swa_switches_and_swa_rope_base() {
    let p = rewrite("st21b", |kv| set(kv, keys::ROPE_FREQ_BASE_SWA, Value::from(5e4f32)));
    let hp = hparams_of(&p).unwrap();
    assert_eq!((hp.rope_freq_base(0), hp.rope_freq_base(1)), (1.5e6, 5e4));
    // sliding_window = 0 means no SWA (and so RoPE everywhere), as in llama.cpp
    let p = rewrite("st21b", |kv| set(kv, keys::SLIDING_WINDOW, Value::from(0u32)));
    let hp = hparams_of(&p).unwrap();
    assert_eq!(hp.n_swa(), None);
    assert!((0..5).all(|il| hp.use_rope(il) && !hp.is_swa(il)));
    // without SWA the SWA rope base is not read
    let p = rewrite("st4b", |kv| set(kv, keys::ROPE_FREQ_BASE_SWA, Value::from(5e4f32)));
    assert_eq!(hparams_of(&p).unwrap().rope_freq_base_swa, 1.5e6);
}

#[test]
fn head_count_kv_defaults_to_head_count() {
    // st4b has GQA 6: without the key the K/V projections no longer fit.
    let p = rewrite("st4b", |kv| kv.retain(|(k, _)| k != keys::HEAD_COUNT_KV));
    assert_eq!(
        hparams_of(&p),
        Err(ModelError::ShapeMismatch {
            name: "blk.0.attn_k.weight".into(),
            expected: vec![64, 384],
            got: vec![64, 64]
        })
    );
}

#[test]
fn token_list_must_be_strings() {
    let p = rewrite("stmha", |kv| set(kv, keys::TOKENS, Value::i32_array(vec![1, 2, 3])));
    assert_eq!(
        hparams_of(&p),
        Err(ModelError::WrongType {
            key: keys::TOKENS.into(),
            expected: "[str]",
            got: "[i32]".into()
        })
    );
}
