//! Expert profiles on the tiny model: counts from the route hook against a count made independently from the
//! traced router logits (`ffn_moe_logits-{il}`, top-k by value: gating is monotone), the file format and its
//! checks, and the CLI's error cases (no partial output file).

use std::path::{Path, PathBuf};
use std::process::Command;

use smallthinker::gguf::GgufFile;
use smallthinker::model::{
    profile_tokens, ExpertProfile, KvCache, KvParams, KvType, Model, ProfileError, Rows, Session, SessionParams,
};
use smallthinker::tokenizer::{EncodeOptions, Tokenizer, VocabSpec};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smallthinker-tiny/smallthinker-tiny-f32.gguf")
}

fn text() -> String {
    // Some varied English, repeated so that it spans several context chunks.
    let s = "In the beginning God created the heaven and the earth. And the earth was without form, and void; \
             and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. ";
    s.repeat(6)
}

fn tokens(file: &GgufFile) -> Vec<u32> {
    let tok = Tokenizer::new(&VocabSpec::from_gguf(file).unwrap()).unwrap();
    let opts = EncodeOptions {
        add_special: true,
        parse_special: false,
    };
    tok.encode_with(&text(), opts).unwrap()
}

/// Indices of the k largest values (ties: lower index first, as the router's stable ordering does).
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..row.len()).collect();
    ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    ids.truncate(k);
    ids
}

#[test]
fn counts_match_the_traced_router_logits() {
    let file = GgufFile::open(&tiny()).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let hp = &model.hp;
    let toks = tokens(&file);
    let n_ctx = 64u32;
    assert!(toks.len() > 2 * n_ctx as usize, "{} tokens", toks.len());
    let kctx = KvCache::context(hp).unwrap();
    let session = |kctx| {
        let kv = KvCache::new(
            kctx,
            hp,
            KvParams {
                n_ctx,
                n_batch: 32,
                ty: KvType::F32,
            },
        )
        .unwrap();
        let params = SessionParams {
            n_threads: 1,
            sparse_max_batch: 32,
            ..Default::default()
        };
        Session::new(&model, kv, params).unwrap()
    };
    let mut s = session(&kctx);
    let p = profile_tokens(&mut s, "tiny.gguf", hp, &toks).unwrap();
    assert_eq!(p.n_tokens, toks.len() as u64);
    assert_eq!(p.counts.len(), hp.n_layer as usize);

    // Independent count: the same chunks, the router logits traced, top-k taken here.
    let kctx2 = KvCache::context(hp).unwrap();
    let mut s2 = session(&kctx2);
    let names: Vec<String> = (0..hp.n_layer).map(|il| format!("ffn_moe_logits-{il}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (e, k) = (hp.n_expert as usize, hp.n_expert_used as usize);
    let mut want = vec![vec![0u64; e]; hp.n_layer as usize];
    let mut near_ties = 0;
    for chunk in toks.chunks(n_ctx as usize) {
        s2.reset();
        let (_, traced) = s2.eval_traced(chunk, Rows::Last, &refs).unwrap();
        for t in traced {
            let il: usize = t.name.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(t.ne[0] as usize, e, "{}", t.name);
            for row in t.values.chunks(e) {
                let top = top_k(row, k + 1);
                if (row[top[k - 1]] - row[top[k]]).abs() < 1e-6 {
                    near_ties += 1;
                }
                for &x in &top[..k] {
                    want[il][x] += 1;
                }
            }
        }
    }
    assert_eq!(near_ties, 0, "the check needs no near-ties at the k-th expert");
    assert_eq!(p.counts, want);
    for row in &p.counts {
        assert_eq!(row.iter().sum::<u64>(), toks.len() as u64 * k as u64);
    }
    // Not a degenerate routing: more than k experts used per layer.
    assert!(p.counts.iter().all(|r| r.iter().filter(|&&c| c > 0).count() > k));
}

#[test]
fn json_round_trip_frequencies_hottest_and_checks() {
    let file = GgufFile::open(&tiny()).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let mut hp = model.hp.clone();
    let mut p = ExpertProfile::new("m.gguf", &hp);
    p.n_tokens = 10;
    for (il, row) in p.counts.iter_mut().enumerate() {
        // 10 tokens × k selections, spread so that expert (il % E) is hottest and the rest tie.
        let total = 10 * hp.n_expert_used as u64;
        let n = row.len();
        for (x, c) in row.iter_mut().enumerate() {
            *c = if x == il % n { total - (n as u64 - 1) } else { 1 };
        }
    }
    let path = Path::new("p.json");
    let back = ExpertProfile::from_json(&p.to_json(), path).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.hottest(1, 2), vec![1, 0]);
    assert_eq!(back.hottest(0, 3), vec![0, 1, 2]);
    assert!(back.hottest(99, 2).is_empty());
    let f = back.frequencies();
    assert_eq!(f[1][1], (p.counts[1][1] as f64) / 10.0);
    back.check_model(&hp, path).unwrap();

    // The exact key layout other code reads.
    let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 6);
    for k in ["model", "n_layer", "n_expert", "n_expert_used", "n_tokens", "counts"] {
        assert!(v.get(k).is_some(), "{k}");
    }

    hp.n_expert += 1;
    let err = back.check_model(&hp, path).unwrap_err().to_string();
    assert!(err.contains("p.json") && err.contains("n_expert"), "{err}");
    // A row that does not sum to n_tokens × K, a short row, a missing layer.
    let mut q = p.clone();
    q.counts[2][0] += 1;
    let err = ExpertProfile::from_json(&q.to_json(), path).unwrap_err().to_string();
    assert!(err.contains("p.json") && err.contains("layer 2"), "{err}");
    let mut q = p.clone();
    q.counts[0].pop();
    assert!(matches!(
        ExpertProfile::from_json(&q.to_json(), path),
        Err(ProfileError::Bad { .. })
    ));
    let mut q = p.clone();
    q.counts.pop();
    assert!(ExpertProfile::from_json(&q.to_json(), path).is_err());
    assert!(ExpertProfile::from_json("{}", path).is_err());
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .arg("profile-experts")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_writes_the_profile_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = d.join("t.txt");
    std::fs::write(&text, text_of(3)).unwrap();
    let m = tiny();
    let m = m.to_str().unwrap();
    let out = d.join("p.json");
    let r = cli(&[
        "-m",
        m,
        "-f",
        text.to_str().unwrap(),
        "-n",
        "100",
        "--ctx",
        "40",
        "-t",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let p = ExpertProfile::load(&out).unwrap();
    assert_eq!(p.n_tokens, 100);
    assert_eq!(p.model, "smallthinker-tiny-f32.gguf");

    let empty = d.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let x = d.join("x.json");
    let x = x.to_str().unwrap();
    for (args, needle) in [
        (["-f", "/nonexistent/t.txt", "-o", x], "/nonexistent/t.txt"),
        (["-f", empty.to_str().unwrap(), "-o", x], "empty"),
        (
            ["-f", text.to_str().unwrap(), "-o", "/nonexistent/dir/x.json"],
            "/nonexistent/dir",
        ),
    ] {
        let mut a = vec!["-m", m];
        a.extend(args);
        let r = cli(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(needle), "{a:?}: {err}");
    }
    let mut left = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    left.sort();
    assert_eq!(left, ["empty.txt", "p.json", "t.txt"], "no partial output");
}

fn text_of(n: usize) -> String {
    text().repeat(n)
}

/// A skewed synthetic model (synth --routing-skew, written straight to GGUF): the profile finds the generator's
/// hot experts as each layer's most selected ones, and they take most selections.
#[test]
fn skewed_synthetic_model_routes_to_its_hot_experts() {
    use smallthinker::convert::{convert_from, ConvertParams, OutType};
    use smallthinker::synth::skew::hot_experts;
    use smallthinker::synth::{synth_meta, Shape, SynthDtype, SynthParams};

    let dir = tempfile::tempdir().unwrap();
    let serde_json::Value::Object(overrides) = serde_json::json!({
        "hidden_size": 128, "moe_num_primary_experts": 16, "moe_num_active_primary_experts": 2,
    }) else {
        unreachable!()
    };
    let p = SynthParams {
        shape: Shape::Tiny,
        overrides,
        seed: 3,
        dtype: SynthDtype::Bf16,
        shards: None,
        lm_head: true,
        vocab_gguf: Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/qwen2-vocab/ggml-vocab-qwen2.gguf"),
        routing_skew: 0.25,
        token_routing: false,
        gate_shift: 0.0,
    };
    let (source, _) = synth_meta(&dir.path().join("m"), &p).unwrap();
    let gguf = dir.path().join("m.gguf");
    let cp = ConvertParams {
        input: dir.path().join("m"),
        output: gguf.clone(),
        out_type: OutType::F32,
        n_threads: 1,
    };
    convert_from(&cp, &source, &mut |_| {}).unwrap();

    let file = GgufFile::open(&gguf).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let toks = tokens(&file);
    let kctx = KvCache::context(&model.hp).unwrap();
    let kv = KvCache::new(
        &kctx,
        &model.hp,
        KvParams {
            n_ctx: 128,
            n_batch: 64,
            ty: KvType::F32,
        },
    )
    .unwrap();
    let params = SessionParams {
        n_threads: 1,
        sparse_max_batch: 64,
        ..Default::default()
    };
    let mut s = Session::new(&model, kv, params).unwrap();
    let prof = profile_tokens(&mut s, "m.gguf", &model.hp, &toks).unwrap();
    for il in 0..model.hp.n_layer as usize {
        let hot = hot_experts(3, il as u64, 16, 0.25);
        let mut found: Vec<u64> = prof.hottest(il, 4).into_iter().map(u64::from).collect();
        found.sort_unstable();
        assert_eq!(found, hot, "layer {il}: counts {:?}", prof.counts[il]);
        let hot_share =
            hot.iter().map(|&e| prof.counts[il][e as usize]).sum::<u64>() as f64 / (prof.n_tokens * 2) as f64;
        assert!(
            hot_share > 0.7,
            "layer {il}: hot experts took {hot_share:.2} of the selections"
        );
    }
}

/// On a Q4_0 file the default `--repack all` would take the experts off the sparse path, whose router reports
/// them: profile-experts repacks only the dense matrices, and counts what `--repack none` counts.
#[test]
fn q4_0_file_is_profiled_with_the_default_repack() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, text_of(2)).unwrap();
    // Rows of 256, so that ggml repacks every Q4_0 matrix (the fixture GGUFs are too narrow).
    let m = dir.path().join("m.gguf");
    let config = r#"{"hidden_size": 256, "head_dim": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "moe_ffn_hidden_size": 256}"#;
    let synth = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .args([
            "synth",
            dir.path().join("ckpt").to_str().unwrap(),
            "--shape",
            "tiny",
            "--config",
            config,
        ])
        .args(["--gguf", m.to_str().unwrap(), "--type", "q4_0-pure", "--gguf-only"])
        .output()
        .unwrap();
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut a = vec![
            "-m",
            m.to_str().unwrap(),
            "-f",
            text.to_str().unwrap(),
            "-n",
            "60",
            "-t",
            "1",
        ];
        a.extend_from_slice(extra);
        a.extend(["-o", out.to_str().unwrap()]);
        let r = cli(&a);
        assert!(r.status.success(), "{a:?}: {}", String::from_utf8_lossy(&r.stderr));
        ExpertProfile::load(&out).unwrap()
    };
    let default = run("a.json", &[]);
    let none = run("b.json", &["--repack", "none"]);
    assert_eq!(default.n_tokens, 60);
    let total: u64 = default.counts.iter().flatten().sum();
    assert_eq!(total, 60 * u64::from(default.n_expert_used * default.n_layer));
    assert_eq!(default.counts, none.counts);
}
