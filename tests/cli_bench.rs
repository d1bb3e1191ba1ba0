//! `smallthinker bench` driven as a user would, on the fixture GGUFs in tests/fixtures/model/: flag validation
//! and the shape of the `--json` line (no timing assertions: the machine may be busy).
use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(config: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/model/{config}/f32.gguf"))
}

fn bench(extra: &[&str]) -> Output {
    let model = fixture("st4b");
    let mut args = vec!["bench", "-m", model.to_str().unwrap(), "-t", "1"];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args(&args)
        .output()
        .expect("spawning smallthinker")
}

/// Runs `bench` with `extra` flags, expects failure, and returns stderr.
fn bench_err(extra: &[&str]) -> String {
    let out = bench(extra);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "bench {extra:?} should fail; stderr: {stderr}");
    assert!(out.stdout.is_empty(), "bench {extra:?} printed to stdout on error");
    stderr
}

#[test]
fn json_line_has_every_field() {
    let out = bench(&["--prompt", "9", "--gen", "5", "--depth", "7", "--json"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stdout:?}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("bench --json prints JSON");
    assert_eq!(v["engine"], "smallthinker");
    for k in ["prefill_tps", "decode_tps", "peak_rss_mb"] {
        let x = v[k].as_f64().unwrap_or_else(|| panic!("{k} is not a number in {v}"));
        assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
    }
    assert_eq!(v["threads"], 1);
    assert_eq!(v["prompt"], 9);
    assert_eq!(v["gen"], 5);
    assert_eq!(v["depth"], 7);
    // Decode steps take the sparse expert op by default, which counts the neurons it computed.
    assert_eq!(v["path"], "sparse");
    let frac = v["active_neuron_frac"]
        .as_f64()
        .unwrap_or_else(|| panic!("no active_neuron_frac in {v}"));
    assert!(frac > 0.0 && frac < 1.0, "active_neuron_frac = {frac}");
}

#[test]
fn dense_switch_reports_the_dense_path() {
    let out = bench(&["--prompt", "4", "--gen", "3", "--dense", "--json"]);
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    assert_eq!(v["path"], "dense");
    assert!(v["active_neuron_frac"].is_null(), "dense run counted neurons: {v}");
}

#[test]
fn text_output_names_both_phases() {
    let out = bench(&["--prompt", "3", "--gen", "2"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("prefill") && stdout.contains("decode") && stdout.contains("peak RSS"),
        "{stdout}"
    );
}

#[test]
fn zero_counts_are_refused() {
    assert!(bench_err(&["--prompt", "0"]).contains("--prompt and --gen must be at least 1"));
    assert!(bench_err(&["--gen", "0"]).contains("--prompt and --gen must be at least 1"));
    let model = fixture("st4b");
    let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args(["bench", "-m", model.to_str().unwrap(), "-t", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads 0"));
    assert!(bench_err(&["--batch", "0"]).contains("--batch and --ctx must be positive"));
}

#[test]
fn absurd_values_are_refused() {
    let e = bench_err(&["--prompt", "100", "--gen", "20", "--depth", "10", "--ctx", "129"]);
    assert!(e.contains("= 130 tokens do not fit --ctx 129"), "{e}");
    let e = bench_err(&["--depth", "4000000000"]);
    assert!(e.contains("exceed the model's training context"), "{e}");
    let model = fixture("st4b");
    let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args(["bench", "-m", model.to_str().unwrap(), "-t", "100000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be 1..=512"));
}

#[test]
fn missing_model_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args(["bench", "-m", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.gguf"));
}

/// `weight_mb_per_token` against the file's tensor sizes: every tensor whole except the experts (`n_expert_used`
/// of `n_expert`) and the embedding (one row, unless it is also the output matrix).
#[test]
fn weight_bytes_per_token_follow_the_file() {
    use smallthinker::gguf::{GgufFile, Value};
    for config in ["st4b", "st21b"] {
        let path = fixture(config);
        let file = GgufFile::open(&path).unwrap();
        let int = |key: &str| match file.get(key) {
            Some(Value::U32(v)) => u64::from(*v),
            other => panic!("{key}: {other:?}"),
        };
        let (k, e) = (int("smallthinker.expert_used_count"), int("smallthinker.expert_count"));
        let tied = file.tensor("output.weight").is_none();
        let want: u64 = file
            .tensors()
            .iter()
            .map(|t| match t.name.as_str() {
                n if n.contains("_exps.") => t.size * k / e,
                "token_embd.weight" => t.size / t.dims[1] + if tied { t.size } else { 0 },
                _ => t.size,
            })
            .sum();
        let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
            .args([
                "bench",
                "-m",
                path.to_str().unwrap(),
                "-t",
                "1",
                "--prompt",
                "2",
                "--gen",
                "1",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = v["weight_mb_per_token"].as_f64().unwrap();
        assert!(
            (got - want as f64 / 1e6).abs() < 1e-9,
            "{config}: {got} MB, file says {want} bytes"
        );
        assert!(
            want < file.tensors().iter().map(|t| t.size).sum::<u64>(),
            "{config}: k < n_expert"
        );
    }
}

#[test]
fn read_bandwidth_needs_no_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args(["bench", "--read-bandwidth", "-t", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gbps = v["read_gbps"].as_f64().unwrap();
    // Any machine that runs this reads memory at more than 0.5 GB/s and less than 10 TB/s.
    assert!(gbps > 0.5 && gbps < 1e4, "{gbps}");
    assert_eq!(v["threads"], 1);
    // Neither a model nor --read-bandwidth: a usage error naming --model.
    let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .arg("bench")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
}

/// A transposed down copy (`--moe-down q8_0/q4_0/f32`) exists only for experts the sparse op reads in the file's
/// layout: where the flag would be ignored (dense path, expert cache, experts repacked by the default
/// `--repack all`) it is refused; with `--repack dense` the copy is built and the start-up line says so.
#[test]
fn moe_down_copies_are_refused_where_they_would_be_ignored() {
    let e = bench_err(&["--dense", "--moe-down", "q8_0"]);
    assert!(e.contains("--moe-down q8_0 is for the sparse path"), "{e}");
    let e = bench_err(&["--mem-budget", "1G", "--moe-down", "q4_0"]);
    assert!(e.contains("--moe-down q4_0: with --mem-budget"), "{e}");
    // Rows of 256, so that ggml repacks the Q4_0 experts (the fixture GGUFs are F32 and too narrow).
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.gguf");
    let config = r#"{"hidden_size": 256, "head_dim": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "moe_ffn_hidden_size": 256}"#;
    let synth = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args(["synth", dir.path().join("ckpt").to_str().unwrap(), "--config", config])
        .args(["--gguf", m.to_str().unwrap(), "--type", "q4_0-pure", "--gguf-only"])
        .output()
        .unwrap();
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "-m",
            m.to_str().unwrap(),
            "-t",
            "1",
            "--prompt",
            "4",
            "--gen",
            "2",
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_smallthinker"))
            .args(&args)
            .output()
            .unwrap()
    };
    let out = run(&["--moe-down", "f32"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{e}");
    assert!(
        e.contains("--moe-down f32 needs the experts in the file's layout: add --repack dense"),
        "{e}"
    );
    let out = run(&["--moe-down", "q4_0", "--repack", "dense"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{e}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(format!("{e}{text}").contains("down transposed to Q4_0"), "{e}{text}");
}

/// A budget without a unit is bytes; one below 1 MiB is a forgotten unit and is refused before the model loads,
/// naming the value and the likely meaning, instead of failing later as "0 MiB is too small".
#[test]
fn a_budget_below_one_mib_is_refused_with_a_unit_hint() {
    let e = bench_err(&["--mem-budget", "1200"]);
    assert!(
        e.contains("\"1200\" is 1200 bytes, below 1 MiB (for MiB write 1200M)"),
        "{e}"
    );
    let e = bench_err(&["--mem-budget", "512K"]);
    assert!(e.contains("\"512K\" is 524288 bytes, below 1 MiB"), "{e}");
    assert!(!e.contains("write"), "{e}");
    let e = bench_err(&["--mem-budget", "1048576", "--moe-down", "q4_0"]);
    assert!(
        e.contains("--moe-down q4_0: with --mem-budget"),
        "1 MiB in bytes is a size: {e}"
    );
}
