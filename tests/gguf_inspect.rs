//! `smallthinker inspect`: the table summarises long arrays, `--json` gives every value in full.
mod gguf_common;

use std::process::Command;

use gguf_common::*;
use smallthinker::gguf::{GgmlType, GgufWriter, Value};

fn inspect(args: &[&std::ffi::OsStr]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "inspect failed: {e}");
    (o, e)
}

#[test]
fn table_and_json_views() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.gguf");
    let tokens: Vec<String> = (0..151_936).map(|i| format!("t{i}")).collect();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "smallthinker");
    w.add_kv("tokenizer.ggml.tokens", Value::string_array(tokens));
    w.add_kv("tokenizer.chat_template", "x".repeat(5000));
    w.add_kv("smallthinker.rope.freq_base", 1.5e6f32);
    w.add_tensor("token_embd.weight", &[64, 151_936], GgmlType::Q4_0)
        .unwrap();
    w.write(&path, |_, t, o| o.write_all(&vec![0; t.size as usize]))
        .unwrap();

    let (table, _) = inspect(&[path.as_os_str()]);
    assert!(table.contains("4 metadata keys"), "{table}");
    assert!(table.contains(r#"[str]    tokenizer.ggml.tokens       = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", ... (151936 items)]"#), "{table}");
    assert!(table.contains("... (5000 chars)"), "long strings are cut");
    assert!(table.contains("rope.freq_base = 1500000\n"), "{table}");
    assert!(table.contains("token_embd.weight  Q4_0     [64, 151936]"), "{table}");
    assert!(table.len() < 4000, "the table is a summary: {} bytes", table.len());

    let (json, _) = inspect(&[path.as_os_str(), "--json".as_ref()]);
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["version"], 3);
    assert_eq!(j["metadata"][1]["key"], "tokenizer.ggml.tokens");
    assert_eq!(j["metadata"][1]["type"], "[str]");
    assert_eq!(j["metadata"][1]["value"].as_array().unwrap().len(), 151_936);
    assert_eq!(j["metadata"][1]["value"][151_935], "t151935");
    assert_eq!(j["metadata"][3]["value"], 1.5e6);
    assert_eq!(j["tensors"][0]["dims"], serde_json::json!([64, 151_936]));
    assert_eq!(j["tensors"][0]["type"], "q4_0");
    assert_eq!(j["tensors"][0]["size"], 64 / 32 * 18 * 151_936);
}

#[test]
fn json_of_the_fixture_has_every_key_in_order() {
    let (json, _) = inspect(&[fixture("pyref.gguf").as_os_str(), "--json".as_ref()]);
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("pyref.json")).unwrap()).unwrap();
    let keys: Vec<&str> = j["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = manifest["kv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv[0].as_str().unwrap())
        .collect();
    assert_eq!(keys, want);
    let nan = j["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "t.f32_nan")
        .unwrap();
    assert_eq!(nan["value"], "nan", "non-finite floats become strings");
    let nested = j["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "t.nested")
        .unwrap();
    assert_eq!(nested["value"], serde_json::json!([[1, 2], [3], [4, 5, 6]]));
    assert_eq!(nested["type"], "[[i32]]");
}
