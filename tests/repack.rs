//! Repacked dense weights (`Model::repacked`, ggml's CPU_REPACK buffer): the eligible Q4_0 matrices move (the
//! attention projections and the untied output of a model whose rows are whole 256-element groups), the logits
//! match the mapped model's to float rounding, and files without a repacked form are left as they are.

mod model_graph_util;

use std::path::Path;

use model_graph_util::nmse;
use smallthinker::convert::{convert, ConvertParams, OutType};
use smallthinker::gguf::GgufFile;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};
use smallthinker::synth::{synth, Shape, SynthDtype, SynthParams};

/// A tiny-shaped checkpoint widened to rows of 256 (the repack rule), converted to Q4_0-pure.
fn model(dir: &Path, out_type: OutType) -> std::path::PathBuf {
    let overrides = serde_json::json!({
        "hidden_size": 256, "head_dim": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "moe_ffn_hidden_size": 256, "tie_word_embeddings": false
    });
    let p = SynthParams {
        shape: Shape::Tiny,
        overrides: overrides.as_object().unwrap().clone(),
        seed: 3,
        dtype: SynthDtype::F32,
        shards: None,
        lm_head: true,
        vocab_gguf: concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/qwen2-vocab/ggml-vocab-qwen2.gguf").into(),
        routing_skew: 0.0,
        token_routing: false,
    };
    synth(&dir.join("ckpt"), &p).unwrap();
    let out = dir.join("m.gguf");
    let c = ConvertParams {
        input: dir.join("ckpt"),
        output: out.clone(),
        out_type,
        n_threads: 2,
    };
    convert(&c, &mut |_| {}).unwrap();
    out
}

fn logits(model: &Model<'_>) -> Vec<f32> {
    let kctx = KvCache::context(&model.hp).unwrap();
    let kvp = KvParams {
        n_ctx: 32,
        n_batch: 8,
        ty: KvType::F32,
    };
    let mut s = Session::new(
        model,
        KvCache::new(&kctx, &model.hp, kvp).unwrap(),
        SessionParams::default(),
    )
    .unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| 100 + 37 * i).collect();
    let mut out = s.eval(&tokens[..9], Rows::All).unwrap();
    for &t in &tokens[9..] {
        out.extend(s.eval(&[t], Rows::Last).unwrap());
    }
    out
}

#[test]
fn repacked_dense_weights_give_the_mapped_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path(), OutType::Q4_0Pure);
    let file = GgufFile::open(&path).unwrap();
    let (wctx, rctx) = (Model::context(&file).unwrap(), Model::context(&file).unwrap());
    let mapped = Model::load(&wctx, &file).unwrap();
    let want = logits(&mapped);
    let (repacked, bytes) = mapped.repacked(&rctx, false).unwrap();
    let expect: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.name.contains(".attn_") && !t.name.contains("norm") || t.name == "output.weight")
        .map(|t| t.size)
        .sum();
    assert_eq!(bytes, expect, "every attention projection and the output moved");
    let got = logits(&repacked);
    let e = nmse(&got, &want);
    // The interleaved kernels sum the same integer products in another order: float rounding only.
    assert!(e < 1e-10, "repacked vs mapped nmse {e:e}");
}

#[test]
fn files_without_a_repacked_form_are_left_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path(), OutType::Q8_0);
    let file = GgufFile::open(&path).unwrap();
    let (wctx, rctx) = (Model::context(&file).unwrap(), Model::context(&file).unwrap());
    let mapped = Model::load(&wctx, &file).unwrap();
    let want = logits(&mapped);
    let (same, bytes) = mapped.repacked(&rctx, false).unwrap();
    assert_eq!(bytes, 0);
    assert!(logits(&same) == want);
}

#[test]
fn repacked_experts_run_the_dense_path_with_the_mapped_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path(), OutType::Q4_0Pure);
    let file = GgufFile::open(&path).unwrap();
    let (wctx, rctx) = (Model::context(&file).unwrap(), Model::context(&file).unwrap());
    let mapped = Model::load(&wctx, &file).unwrap();
    let want = logits(&mapped);
    let (repacked, bytes) = mapped.repacked(&rctx, true).unwrap();
    let exps: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.name.contains("_exps."))
        .map(|t| t.size)
        .sum();
    assert!(exps > 0 && bytes > exps, "{bytes} bytes moved, experts alone {exps}");
    let moe = smallthinker::model::MoeSetup::new(&repacked, &SessionParams::default());
    assert!(
        moe.description().starts_with("dense on repacked experts"),
        "{}",
        moe.description()
    );
    let got = logits(&repacked);
    let e = nmse(&got, &want);
    assert!(e < 1e-10, "repacked experts vs mapped nmse {e:e}");
}
