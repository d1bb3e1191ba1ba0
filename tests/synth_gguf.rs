//! `synth --gguf-only` (weights generated straight into the converter) against the checkpoint + convert path:
//! the GGUF files must be byte-identical, for single-file and sharded checkpoints, bf16 and f32 sources, float
//! and quantized outputs, with and without a routing skew. Also the skew's edits to the weights.

mod convert_util;

use std::path::Path;

use serde_json::{json, Value};
use smallthinker::convert::{convert, convert_from, ConvertParams, OutType};
use smallthinker::gguf::GgufFile;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};
use smallthinker::synth::skew::{hot_experts, RouteDims, EMBED_BIAS};
use smallthinker::synth::{synth, synth_meta, Shape, SynthDtype, SynthParams};

fn params(dtype: SynthDtype, shards: Option<usize>, skew: f32, config: Value) -> SynthParams {
    let Value::Object(overrides) = config else {
        panic!("config must be an object")
    };
    SynthParams {
        shape: Shape::Tiny,
        overrides,
        seed: 5,
        dtype,
        shards,
        lm_head: true,
        vocab_gguf: convert_util::vocab_gguf(),
        routing_skew: skew,
        token_routing: false,
        gate_shift: 0.0,
    }
}

/// Both paths into `root/{ck,direct}/model` (the same directory name, since `general.name` comes from it).
fn both(root: &Path, p: &SynthParams, ty: OutType) -> (Vec<u8>, Vec<u8>) {
    let (ck, direct) = (root.join("ck/model"), root.join("direct/model"));
    synth(&ck, p).unwrap();
    let cp = |dir: &Path, out: &str| ConvertParams {
        input: dir.to_path_buf(),
        output: root.join(out),
        out_type: ty,
        n_threads: 1,
    };
    convert(&cp(&ck, "ck.gguf"), &mut |_| {}).unwrap();
    let (source, files) = synth_meta(&direct, p).unwrap();
    assert!(files.iter().all(|f| !f.to_string_lossy().ends_with(".safetensors")));
    convert_from(&cp(&direct, "direct.gguf"), &source, &mut |_| {}).unwrap();
    assert!(
        convert_util::files_in(&direct)
            .iter()
            .all(|f| !f.ends_with(".safetensors")),
        "--gguf-only wrote weights"
    );
    (
        std::fs::read(root.join("ck.gguf")).unwrap(),
        std::fs::read(root.join("direct.gguf")).unwrap(),
    )
}

#[test]
fn direct_gguf_is_byte_identical_to_checkpoint_then_convert() {
    let cases = [
        (SynthDtype::Bf16, None, 0.0, OutType::Q4_0Pure, json!({})),
        (SynthDtype::Bf16, Some(3), 0.25, OutType::F32, json!({})),
        (
            SynthDtype::F32,
            Some(2),
            0.5,
            OutType::Q4_0,
            json!({"tie_word_embeddings": false}),
        ),
        (
            SynthDtype::Bf16,
            Some(4),
            0.25,
            OutType::Bf16,
            json!({"num_hidden_layers": 8, "sliding_window_layout": [0, 1, 1, 1], "rope_layout": [0, 1, 1, 1]}),
        ),
    ];
    for (i, (dtype, shards, skew, ty, mut cfg)) in cases.into_iter().enumerate() {
        if skew > 0.0 {
            // The skew's reserved router dims need a hidden size of at least 128.
            cfg["hidden_size"] = json!(128);
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = both(dir.path(), &params(dtype, shards, skew, cfg), ty);
        assert!(a.len() > 100_000, "case {i}: {} bytes", a.len());
        assert!(a == b, "case {i}: GGUF differs ({} vs {} bytes)", a.len(), b.len());
    }
    // Token routing without a skew.
    let dir = tempfile::tempdir().unwrap();
    let mut p = params(SynthDtype::Bf16, Some(2), 0.0, json!({"hidden_size": 128}));
    p.token_routing = true;
    let (a, b) = both(dir.path(), &p, OutType::Q8_0);
    assert!(a == b, "token routing: GGUF differs");
}

/// The skew's edits, read back from the safetensors against the uniform model of the same seed: routers keep only
/// the route columns, hot experts (and only they) read the bias block; the embedding's bias block is constant;
/// o_proj and expert down write none of the reserved dims; everything else is the uniform model's bytes.
#[test]
fn skew_edits_only_the_routing_parts() {
    let dir = tempfile::tempdir().unwrap();
    let h = 128u64;
    let cfg = json!({"moe_num_primary_experts": 16, "moe_num_active_primary_experts": 2, "hidden_size": h});
    let (skewed, uniform) = (dir.path().join("s"), dir.path().join("u"));
    synth(&skewed, &params(SynthDtype::F32, None, 0.25, cfg.clone())).unwrap();
    let cfg_t = cfg.clone();
    synth(&uniform, &params(SynthDtype::F32, None, 0.0, cfg)).unwrap();
    let (hs, ds) = convert_util::read_st(&skewed.join("model.safetensors"));
    let (hu, du) = convert_util::read_st(&uniform.join("model.safetensors"));
    let get = |h: &serde_json::Map<String, Value>, d: &[u8], name: &str| -> Vec<f32> {
        let o = &h[name]["data_offsets"];
        let (a, b) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
        d[a..b]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let dims = RouteDims::of(h).unwrap();
    assert_eq!((dims.bias.clone(), dims.route.clone()), (64..96, 96..128));
    let at = |i: usize| ((i as u64) / h, (i as u64) % h);
    for il in 0..4u64 {
        let name = format!("model.layers.{il}.block_sparse_moe.primary_router.weight");
        let hot = hot_experts(5, il, 16, 0.25);
        assert_eq!(hot.len(), 4);
        let (rs, ru) = (get(&hs, &ds, &name), get(&hu, &du, &name));
        for (i, (a, b)) in rs.iter().zip(&ru).enumerate() {
            let (e, col) = at(i);
            let want = if dims.route.contains(&col) {
                *b
            } else if dims.bias.contains(&col) && hot.contains(&e) {
                dims.hot_bias_weight()
            } else {
                0.0
            };
            assert_eq!(*a, want, "layer {il} expert {e} col {col}");
        }
        for w in ["self_attn.o_proj", "block_sparse_moe.experts.3.down"] {
            let name = format!("model.layers.{il}.{w}.weight");
            let (s, u) = (get(&hs, &ds, &name), get(&hu, &du, &name));
            let row_len = u.len() / h as usize;
            for (i, (a, b)) in s.iter().zip(&u).enumerate() {
                let row = (i / row_len) as u64;
                assert_eq!(
                    *a,
                    if dims.reserved().contains(&row) { 0.0 } else { *b },
                    "{name} row {row}"
                );
            }
        }
    }
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let (s, u) = (get(&hs, &ds, name), get(&hu, &du, name));
        for (i, (a, b)) in s.iter().zip(&u).enumerate() {
            let col = at(i).1;
            assert_eq!(
                *a,
                if dims.bias.contains(&col) { EMBED_BIAS } else { *b },
                "{name} col {col}"
            );
        }
    }
    let other = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(get(&hs, &ds, other), get(&hu, &du, other));
    // Token routing without a skew: the same layout, no expert reads the bias block.
    let token = dir.path().join("t");
    let mut p = params(SynthDtype::F32, None, 0.0, cfg_t);
    p.token_routing = true;
    synth(&token, &p).unwrap();
    let (ht, dt) = convert_util::read_st(&token.join("model.safetensors"));
    let name = "model.layers.1.block_sparse_moe.primary_router.weight";
    let (rt, rs) = (get(&ht, &dt, name), get(&hs, &ds, name));
    for (i, (a, b)) in rt.iter().zip(&rs).enumerate() {
        let col = at(i).1;
        assert_eq!(*a, if dims.bias.contains(&col) { 0.0 } else { *b }, "col {col}");
    }
    assert_eq!(hs.len(), hu.len());
}

/// Share of active expert neurons over a few tokens on the sparse path, for the checkpoint in `dir`.
fn active_frac(dir: &Path) -> f64 {
    let out = dir.with_extension("gguf");
    let cp = ConvertParams {
        input: dir.to_path_buf(),
        output: out.clone(),
        out_type: OutType::F32,
        n_threads: 1,
    };
    convert(&cp, &mut |_| {}).unwrap();
    let file = GgufFile::open(&out).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let kv = KvParams {
        n_ctx: 32,
        n_batch: 32,
        ty: KvType::F32,
    };
    let p = SessionParams {
        sparse_max_batch: u32::MAX,
        ..Default::default()
    };
    let mut s = Session::new(&model, KvCache::new(&kctx, &model.hp, kv).unwrap(), p).unwrap();
    s.eval(&(100..116).collect::<Vec<u32>>(), Rows::Last).unwrap();
    s.moe_stats().active_frac()
}

/// The gate shift: every expert gate row reads the bias block with the same negative weight, nothing else
/// changes (against token routing, whose reserved dims it shares), and far fewer neurons are active.
#[test]
fn gate_shift_edits_only_the_gate_bias_columns_and_sparsifies() {
    let dir = tempfile::tempdir().unwrap();
    let h = 128u64;
    let cfg = json!({"hidden_size": h});
    let (shifted, base) = (dir.path().join("g"), dir.path().join("b"));
    let mut p = params(SynthDtype::F32, None, 0.0, cfg);
    p.gate_shift = 0.5;
    synth(&shifted, &p).unwrap();
    p.gate_shift = 0.0;
    p.token_routing = true;
    synth(&base, &p).unwrap();
    let (hs, ds) = convert_util::read_st(&shifted.join("model.safetensors"));
    let (hb, db) = convert_util::read_st(&base.join("model.safetensors"));
    assert_eq!(hs, hb, "same tensors at the same offsets");
    let dims = RouteDims::of(h).unwrap();
    let w = dims.gate_bias_weight(0.5);
    assert!((w * 32.0 * EMBED_BIAS + 0.5).abs() < 1e-6, "{w}");
    let (mut gates, mut edited) = (0, 0);
    for (name, v) in &hs {
        let Some(o) = v.get("data_offsets") else { continue };
        let (a, b) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
        let f = |d: &[u8]| -> Vec<f32> {
            d[a..b]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let (s, u) = (f(&ds), f(&db));
        if !name.ends_with(".gate.weight") {
            assert!(s == u, "{name} changed");
            continue;
        }
        gates += 1;
        for (i, (x, y)) in s.iter().zip(&u).enumerate() {
            let col = i as u64 % h;
            let want = if dims.bias.contains(&col) { w } else { *y };
            edited += usize::from(*x != *y);
            assert_eq!(*x, want, "{name} col {col}");
        }
    }
    // Tiny shape: 4 layers of 4 experts; 32 bias columns in each of the 64 rows of a gate.
    assert_eq!(gates, 16);
    assert_eq!(edited, gates * 64 * 32);
    let (fs, fb) = (active_frac(&shifted), active_frac(&base));
    assert!((0.35..0.65).contains(&fb), "unshifted active fraction {fb}");
    assert!(fs < 0.25, "shifted active fraction {fs} (unshifted {fb})");
}

#[test]
fn bad_skew_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let err = synth(&out, &params(SynthDtype::Bf16, None, 1.5, json!({}))).unwrap_err();
    assert!(err.to_string().contains("routing-skew 1.5"), "{err}");
    assert!(synth_meta(&out, &params(SynthDtype::Bf16, None, -0.1, json!({}))).is_err());
    // The tiny shape's hidden size (64) leaves no room for the router's reserved dims.
    let err = synth(&out, &params(SynthDtype::Bf16, None, 0.25, json!({}))).unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");
    let mut p = params(SynthDtype::Bf16, None, 0.0, json!({"hidden_size": 128}));
    for bad in [-0.5, f32::NAN] {
        p.gate_shift = bad;
        let err = synth(&out, &p).unwrap_err();
        assert!(err.to_string().contains("--gate-shift"), "{err}");
    }
    assert!(!out.exists());
}
