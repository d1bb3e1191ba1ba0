//! One test per bad-input case of `smallthinker convert`: each must fail with an error naming the file, tensor or
//! key, and leave no output (nor temporary) file behind.

mod convert_util;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use smallthinker::convert::{convert, ConvertError, ConvertParams, OutType};
use smallthinker::synth::SynthDtype;

use convert_util::{files_in, read_st, tiny, write_st};

struct Case {
    _tmp: tempfile::TempDir,
    hf: PathBuf,
    out_dir: PathBuf,
}

fn case(shards: Option<usize>) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    tiny(&hf, 9, SynthDtype::Bf16, shards, false, json!({}));
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    Case { _tmp: tmp, hf, out_dir }
}

impl Case {
    fn run(&self) -> ConvertError {
        self.run_to(&self.out_dir.join("m.gguf"))
    }

    fn run_to(&self, out: &Path) -> ConvertError {
        let p = ConvertParams {
            input: self.hf.clone(),
            output: out.into(),
            out_type: OutType::Q8_0,
            n_threads: 1,
        };
        let e = convert(&p, &mut |_| {}).expect_err("conversion must fail");
        assert_eq!(
            files_in(&self.out_dir),
            Vec::<String>::new(),
            "partial output left behind after: {e}"
        );
        e
    }

    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let path = self.hf.join("config.json");
        let mut c: serde_json::Map<String, Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
    }

    fn st(&self) -> PathBuf {
        self.hf.join("model.safetensors")
    }
}

fn assert_msg(e: &ConvertError, parts: &[&str]) {
    let m = e.to_string();
    for p in parts {
        assert!(m.contains(p), "error {m:?} should mention {p:?}");
    }
}

#[test]
fn a_good_checkpoint_converts() {
    // The baseline the other cases break: without an edit, conversion succeeds and leaves exactly the output.
    let c = case(None);
    let out = c.out_dir.join("m.gguf");
    let p = ConvertParams {
        input: c.hf.clone(),
        output: out.clone(),
        out_type: OutType::Q8_0,
        n_threads: 1,
    };
    let r = convert(&p, &mut |_| {}).unwrap();
    assert_eq!(r.n_tensors, 4 * 10 + 2); // tied, no lm_head: no output.weight
    assert_eq!(files_in(&c.out_dir), vec!["m.gguf".to_string()]);
}

#[test]
fn missing_config() {
    let c = case(None);
    std::fs::remove_file(c.hf.join("config.json")).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::MissingFile { .. }), "{e}");
    assert_msg(&e, &["config.json"]);
}

#[test]
fn missing_tokenizer() {
    let c = case(None);
    std::fs::remove_file(c.hf.join("tokenizer.json")).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::MissingFile { .. }), "{e}");
    assert_msg(&e, &["tokenizer.json"]);
}

#[test]
fn missing_weights() {
    let c = case(None);
    std::fs::remove_file(c.st()).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::MissingFile { .. }), "{e}");
    assert_msg(&e, &["model.safetensors"]);
}

#[test]
fn unknown_architecture() {
    let c = case(None);
    c.edit_config(|m| {
        m.insert("architectures".into(), json!(["Qwen2ForCausalLM"]));
    });
    let e = c.run();
    assert!(matches!(e, ConvertError::UnknownArchitecture { .. }), "{e}");
    assert_msg(&e, &["Qwen2ForCausalLM", "config.json"]);
}

#[test]
fn unknown_model_type() {
    let c = case(None);
    c.edit_config(|m| {
        m.insert("model_type".into(), json!("qwen3_moe"));
    });
    let e = c.run();
    assert!(matches!(e, ConvertError::UnknownArchitecture { .. }), "{e}");
    assert_msg(&e, &["qwen3_moe"]);
}

#[test]
fn missing_config_key() {
    let c = case(None);
    c.edit_config(|m| {
        m.remove("moe_ffn_hidden_size");
    });
    let e = c.run();
    assert!(matches!(e, ConvertError::BadKey { .. }), "{e}");
    assert_msg(&e, &["moe_ffn_hidden_size", "missing"]);
}

#[test]
fn missing_tensor() {
    let c = case(None);
    let (mut h, data) = read_st(&c.st());
    h.remove("model.layers.2.block_sparse_moe.experts.3.up.weight").unwrap();
    write_st(&c.st(), &h, &data);
    let e = c.run();
    assert!(matches!(e, ConvertError::MissingTensor { .. }), "{e}");
    assert_msg(&e, &["model.layers.2.block_sparse_moe.experts.3.up.weight"]);
}

#[test]
fn missing_attention_tensor() {
    let c = case(None);
    let (mut h, data) = read_st(&c.st());
    h.remove("model.layers.1.self_attn.k_proj.weight").unwrap();
    write_st(&c.st(), &h, &data);
    let e = c.run();
    assert!(matches!(e, ConvertError::MissingTensor { .. }), "{e}");
    assert_msg(&e, &["model.layers.1.self_attn.k_proj.weight"]);
}

#[test]
fn extra_tensor() {
    let c = case(None);
    let (mut h, data) = read_st(&c.st());
    let v = h["model.norm.weight"].clone();
    h.insert("model.layers.0.mlp.shared_expert.bias".into(), v);
    write_st(&c.st(), &h, &data);
    let e = c.run();
    assert!(matches!(e, ConvertError::UnmappedTensor { .. }), "{e}");
    assert_msg(&e, &["model.layers.0.mlp.shared_expert.bias", "model.safetensors"]);
}

#[test]
fn expert_index_beyond_config() {
    let c = case(None);
    let (mut h, data) = read_st(&c.st());
    let v = h["model.layers.0.block_sparse_moe.experts.0.up.weight"].clone();
    h.insert("model.layers.0.block_sparse_moe.experts.4.up.weight".into(), v);
    write_st(&c.st(), &h, &data);
    let e = c.run();
    assert!(matches!(e, ConvertError::UnmappedTensor { .. }), "{e}");
    assert_msg(&e, &["experts.4.up.weight"]);
}

#[test]
fn shape_disagrees_with_config() {
    let c = case(None);
    c.edit_config(|m| {
        m.insert("moe_ffn_hidden_size".into(), json!(32));
    });
    let e = c.run();
    assert!(matches!(e, ConvertError::ShapeMismatch { .. }), "{e}");
    assert_msg(&e, &["experts.0.down.weight", "[64, 64]", "[64, 32]"]);
}

#[test]
fn unsupported_dtype() {
    let c = case(None);
    let (mut h, data) = read_st(&c.st());
    h.get_mut("model.layers.0.self_attn.q_proj.weight").unwrap()["dtype"] = json!("F8_E4M3");
    write_st(&c.st(), &h, &data);
    let e = c.run();
    assert!(matches!(e, ConvertError::UnsupportedDtype { .. }), "{e}");
    assert_msg(
        &e,
        &["model.layers.0.self_attn.q_proj.weight", "F8_E4M3", "model.safetensors"],
    );
}

#[test]
fn truncated_header() {
    let c = case(None);
    let b = std::fs::read(c.st()).unwrap();
    std::fs::write(c.st(), &b[..200]).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::BadSafetensors { .. }), "{e}");
    assert_msg(&e, &["model.safetensors", "header length"]);
}

#[test]
fn truncated_data() {
    let c = case(None);
    let b = std::fs::read(c.st()).unwrap();
    std::fs::write(c.st(), &b[..b.len() - 100]).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::BadSafetensors { .. }), "{e}");
    assert_msg(&e, &["model.safetensors", "data_offsets"]);
}

#[test]
fn corrupt_header() {
    let c = case(None);
    let mut b = std::fs::read(c.st()).unwrap();
    b[8..16].copy_from_slice(b"{\"x\":[[[");
    std::fs::write(c.st(), &b).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::BadSafetensors { .. }), "{e}");
    assert_msg(&e, &["model.safetensors", "JSON"]);
}

#[test]
fn huge_header_length() {
    let c = case(None);
    let mut b = std::fs::read(c.st()).unwrap();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(c.st(), &b).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::BadSafetensors { .. }), "{e}");
}

#[test]
fn index_names_missing_shard() {
    let c = case(Some(3));
    let shard = c.hf.join("model-00002-of-00003.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::MissingShard { .. }), "{e}");
    assert_msg(
        &e,
        &["model.safetensors.index.json", "model-00002-of-00003.safetensors"],
    );
}

#[test]
fn index_disagrees_with_shards() {
    let c = case(Some(2));
    let path = c.hf.join("model.safetensors.index.json");
    let mut idx: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    idx["weight_map"]["model.norm.weight"] = json!("model-00001-of-00002.safetensors");
    std::fs::write(&path, serde_json::to_vec(&idx).unwrap()).unwrap();
    let e = c.run();
    assert!(matches!(e, ConvertError::IndexMismatch { .. }), "{e}");
    assert_msg(&e, &["model.norm.weight", "model-00001-of-00002.safetensors"]);
}

#[test]
fn layout_llama_cpp_cannot_express() {
    // NoPE on layer 0 without sliding-window layers: llama.cpp would run RoPE there.
    let c = case(None);
    c.edit_config(|m| {
        m.insert("rope_layout".into(), json!([0, 1, 1, 1]));
    });
    let e = c.run();
    assert!(matches!(e, ConvertError::UnsupportedLayout { .. }), "{e}");
    assert_msg(&e, &["NoPE"]);

    // Sliding windows on every layer: llama.cpp's pattern makes every 4th layer full attention.
    c.edit_config(|m| {
        m.insert("rope_layout".into(), json!([1, 1, 1, 1]));
        m.insert("sliding_window_layout".into(), json!([1, 1, 1, 1]));
    });
    let e = c.run();
    assert!(matches!(e, ConvertError::UnsupportedLayout { .. }), "{e}");
    assert_msg(&e, &["layer 0"]);
}

#[test]
fn unwritable_output() {
    let c = case(None);
    let e = c.run_to(&c.out_dir.join("no/such/dir/m.gguf"));
    assert!(matches!(e, ConvertError::Write { .. }), "{e}");
    assert_msg(&e, &["m.gguf"]);
}

/// Disk full: the CLI under a file-size limit (SIGXFSZ ignored, so writes fail with EFBIG part way through).
#[test]
fn disk_full_leaves_nothing_and_exits_nonzero() {
    let c = case(None);
    let out = c.out_dir.join("m.gguf");
    let script = format!(
        "trap '' XFSZ; ulimit -f 4096; exec {} convert {} -o {} --type f32 --quiet",
        env!("CARGO_BIN_EXE_smallthinker"),
        c.hf.display(),
        out.display()
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "must fail under a 4 MiB file-size limit");
    assert!(stderr.contains("m.gguf"), "stderr should name the output: {stderr}");
    assert_eq!(files_in(&c.out_dir), Vec::<String>::new());
}

#[test]
fn cli_exit_code_and_message() {
    let c = case(None);
    std::fs::remove_file(c.hf.join("config.json")).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args([
            "convert",
            c.hf.to_str().unwrap(),
            "-o",
            c.out_dir.join("m.gguf").to_str().unwrap(),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.json"));
    assert_eq!(files_in(&c.out_dir), Vec::<String>::new());
}
