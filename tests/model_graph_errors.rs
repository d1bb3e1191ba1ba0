//! Bad input to the loader, the session and the `logits` command: clear errors naming what is wrong, never a
//! ggml abort or a partial output file.

mod common;
mod model_graph_util;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures;
use model_graph_util::{rewrite, run};
use smallthinker::gguf::{GgufFile, Value};
use smallthinker::model::{
    keys, EvalError, KvCache, KvParams, KvType, LoadError, Model, ModelError, Rows, Session, SessionParams,
};

fn st21b() -> PathBuf {
    fixtures::manifest("st21b").gguf("f32")
}

fn load_error(path: &Path) -> ModelError {
    let file = GgufFile::open(path).unwrap();
    let ctx = Model::context(&file).unwrap();
    match Model::load(&ctx, &file) {
        Err(LoadError::Model { error, .. }) => error,
        Err(e) => panic!("expected a model error, got {e}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

fn broken(
    dir: &tempfile::TempDir,
    kv: impl Fn(&str, &Value) -> Option<Value>,
    dims: impl Fn(&str, &[u64]) -> Option<Vec<u64>>,
) -> PathBuf {
    let p = dir.path().join("broken.gguf");
    rewrite(&st21b(), &p, kv, dims);
    p
}

#[test]
fn loader_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let keep_kv = |_: &str, v: &Value| Some(v.clone());
    let keep_t = |_: &str, d: &[u64]| Some(d.to_vec());

    // An unmodified copy loads: the rewrite itself breaks nothing.
    let file = GgufFile::open(&broken(&dir, keep_kv, keep_t)).unwrap();
    let ctx = Model::context(&file).unwrap();
    assert!(Model::load(&ctx, &file).is_ok());

    let p = broken(&dir, keep_kv, |n, d| {
        (n != "blk.1.ffn_up_exps.weight").then(|| d.to_vec())
    });
    assert_eq!(
        load_error(&p),
        ModelError::MissingTensor {
            name: "blk.1.ffn_up_exps.weight".into()
        }
    );

    let p = broken(&dir, keep_kv, |n, d| {
        Some(if n == "blk.0.attn_q.weight" {
            d.iter().rev().copied().collect()
        } else {
            d.to_vec()
        })
    });
    assert!(matches!(load_error(&p), ModelError::ShapeMismatch { name, .. } if name == "blk.0.attn_q.weight"));

    let p = broken(
        &dir,
        |k, v| {
            Some(if k == keys::ARCHITECTURE {
                Value::String("llama".into())
            } else {
                v.clone()
            })
        },
        keep_t,
    );
    assert!(matches!(load_error(&p), ModelError::BadValue { key, .. } if key == keys::ARCHITECTURE));

    let p = broken(
        &dir,
        |k, v| {
            Some(if k == keys::BLOCK_COUNT {
                Value::I32(5)
            } else {
                v.clone()
            })
        },
        keep_t,
    );
    assert!(matches!(load_error(&p), ModelError::WrongType { key, .. } if key == keys::BLOCK_COUNT));
}

#[test]
fn session_refuses_bad_tokens_and_overlong_prompts() {
    let file = GgufFile::open(&st21b()).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let params = KvParams {
        n_ctx: 8,
        n_batch: 4,
        ty: KvType::F16,
    };
    let kv = KvCache::new(&kctx, &model.hp, params).unwrap();
    let mut s = Session::new(
        &model,
        kv,
        SessionParams {
            n_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        s.eval(&[1, 1024], Rows::Last),
        Err(EvalError::TokenOutOfRange {
            index: 1,
            token: 1024,
            n_vocab: 1024
        })
    ));
    assert!(matches!(s.eval(&[], Rows::Last), Err(EvalError::Empty)));
    assert!(matches!(
        s.eval(&[1; 9], Rows::Last),
        Err(EvalError::ContextFull {
            n_past: 0,
            n_tokens: 9,
            n_ctx: 8
        })
    ));
    assert_eq!(s.n_past(), 0, "refused input changes nothing");
    assert_eq!(s.eval(&[1; 6], Rows::All).unwrap().len(), 6 * 1024);
    assert!(matches!(
        s.eval(&[1; 3], Rows::Last),
        Err(EvalError::ContextFull {
            n_past: 6,
            n_tokens: 3,
            n_ctx: 8
        })
    ));
    assert_eq!(s.eval(&[1; 2], Rows::Last).unwrap().len(), 1024);
    // n_batch 0 means one token per graph rather than a division by zero.
    assert_eq!(
        run(&st21b(), 8, 0, KvType::F32, &[(&[1, 2, 3], Rows::All)]).len(),
        3 * 1024
    );
}

fn logits_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .arg("logits")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn logits_command_writes_the_rows_and_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = st21b();
    let model = model.to_str().unwrap();
    let out = dir.path().join("l.bin");
    let out_s = out.to_str().unwrap();
    let tokens = [3u32, 14, 15, 92, 65];
    let list = "3,14,15,92,65";
    for (all, n_rows) in [(false, 1usize), (true, tokens.len())] {
        let mut args = vec![
            "-m",
            model,
            "--tokens",
            list,
            "--out",
            out_s,
            "--kv-type",
            "f32",
            "-t",
            "2",
            "--batch",
            "2",
        ];
        if all {
            args.push("--all");
        }
        let o = logits_cmd(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8(o.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["shape"], serde_json::json!([n_rows, 1024]));
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len(), n_rows * 1024 * 4);
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let rows = if all { Rows::All } else { Rows::Last };
        let want = run(&st21b(), 8192, 2, KvType::F32, &[(&tokens, rows)]);
        assert_eq!(got, want, "the file holds the library's logits");
    }
}

#[test]
fn logits_command_fails_cleanly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = st21b();
    let model = model.to_str().unwrap();
    let out = dir.path().join("l.bin");
    let out_s = out.to_str().unwrap();
    let missing = dir.path().join("missing.gguf");
    rewrite(
        &st21b(),
        &missing,
        |_, v| Some(v.clone()),
        |n, d| (n != "output_norm.weight").then(|| d.to_vec()),
    );
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["-m", model, "--tokens", "1,1024"], "outside the vocabulary"),
        (
            vec!["-m", model, "--tokens", "1,2,3", "--ctx", "2"],
            "do not fit the context",
        ),
        (
            vec!["-m", missing.to_str().unwrap(), "--tokens", "1"],
            "output_norm.weight",
        ),
        (vec!["-m", "/nonexistent.gguf", "--tokens", "1"], "nonexistent"),
    ];
    for (mut args, message) in cases {
        args.extend(["--out", out_s]);
        let o = logits_cmd(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?}: an output file was written");
    }
}
