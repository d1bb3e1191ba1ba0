//! `synth --gguf-only` (weights generated straight into the converter) against the checkpoint + convert path:
//! the GGUF files must be byte-identical, for single-file and sharded checkpoints, bf16 and f32 sources, float
//! and quantized outputs, with and without a routing skew. Also the skew itself: hot router rows scaled.

mod convert_util;

use std::path::Path;

use serde_json::{json, Value};
use smallthinker::convert::{convert, convert_from, ConvertParams, OutType};
use smallthinker::synth::skew::{hot_experts, HOT_SCALE};
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
    for (i, (dtype, shards, skew, ty, cfg)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = both(dir.path(), &params(dtype, shards, skew, cfg), ty);
        assert!(a.len() > 100_000, "case {i}: {} bytes", a.len());
        assert!(a == b, "case {i}: GGUF differs ({} vs {} bytes)", a.len(), b.len());
    }
}

/// Router rows in the safetensors: hot rows (and only they) have HOT_SCALE times the spread of the others, and a
/// zero skew gives the uniform model's exact bytes.
#[test]
fn skew_scales_the_hot_router_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"moe_num_primary_experts": 16, "moe_num_active_primary_experts": 2});
    let (skewed, uniform) = (dir.path().join("s"), dir.path().join("u"));
    synth(&skewed, &params(SynthDtype::F32, None, 0.25, cfg.clone())).unwrap();
    synth(&uniform, &params(SynthDtype::F32, None, 0.0, cfg)).unwrap();
    let (hs, ds) = convert_util::read_st(&skewed.join("model.safetensors"));
    let (hu, du) = convert_util::read_st(&uniform.join("model.safetensors"));
    let rows = |h: &serde_json::Map<String, Value>, d: &[u8], name: &str| -> Vec<Vec<f32>> {
        let off = h[name]["data_offsets"][0].as_u64().unwrap() as usize;
        let f: Vec<f32> = d[off..off + 16 * 64 * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        f.chunks(64).map(<[f32]>::to_vec).collect()
    };
    for il in 0..4u64 {
        let name = format!("model.layers.{il}.block_sparse_moe.primary_router.weight");
        let hot = hot_experts(5, il, 16, 0.25);
        assert_eq!(hot.len(), 4);
        let (rs, ru) = (rows(&hs, &ds, &name), rows(&hu, &du, &name));
        for e in 0..16 {
            let f = if hot.contains(&(e as u64)) { HOT_SCALE } else { 1.0 };
            for (a, b) in rs[e].iter().zip(&ru[e]) {
                assert_eq!(*a, *b * f, "layer {il} expert {e}");
            }
        }
    }
    // Everything but the routers is the same.
    let other = "model.layers.0.self_attn.q_proj.weight";
    let (o1, o2) = (&hs[other]["data_offsets"], &hu[other]["data_offsets"]);
    let (a, b) = (o1[0].as_u64().unwrap() as usize, o1[1].as_u64().unwrap() as usize);
    assert_eq!(
        &ds[a..b],
        &du[o2[0].as_u64().unwrap() as usize..o2[1].as_u64().unwrap() as usize]
    );
}

#[test]
fn bad_skew_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let err = synth(&out, &params(SynthDtype::Bf16, None, 1.5, json!({}))).unwrap_err();
    assert!(err.to_string().contains("routing-skew 1.5"), "{err}");
    assert!(synth_meta(&out, &params(SynthDtype::Bf16, None, -0.1, json!({}))).is_err());
    assert!(!out.exists());
}
