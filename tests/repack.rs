//! Repacked dense weights (`Model::repacked`, ggml's CPU_REPACK buffer): the eligible Q4_0 matrices move (the
//! attention projections and the untied output of a model whose rows are whole 256-element groups), the logits
//! match the mapped model's to float rounding, and files without a repacked form are left as they are.

mod model_graph_util;

use std::path::Path;

use model_graph_util::nmse;
use smallthinker::convert::{convert, ConvertParams, OutType};
use smallthinker::gguf::GgufFile;
use smallthinker::graph::{CachePolicy, IoBackend};
use smallthinker::model::{BudgetParams, KvCache, KvParams, KvType, Model, MoeSetup, Rows, Session, SessionParams};
use smallthinker::synth::{synth, Shape, SynthDtype, SynthParams};

/// A tiny-shaped checkpoint widened to rows of 256 (the repack rule), converted to Q4_0-pure.
fn model(dir: &Path, out_type: OutType) -> std::path::PathBuf {
    model_routed(dir, out_type, false)
}

/// [`model`], with `token_routing`: tokens then choose different experts (without it most take the same few).
fn model_routed(dir: &Path, out_type: OutType, token_routing: bool) -> std::path::PathBuf {
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
        token_routing,
        gate_shift: 0.0,
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
    logits_with(model, None).0
}

/// [`logits`] on ggml's mul_mat_id graph (`--dense`), with the path's description.
fn dense_logits(model: &Model<'_>) -> (Vec<f32>, String) {
    let p = SessionParams {
        dense: true,
        ..SessionParams::default()
    };
    let (out, desc, _) = eval(model, None, p);
    (out, desc)
}

/// The logits (9 prompt tokens in one batch, then 3 decode steps), and with a budget `(bytes, interleave)`:
/// the path's description and the cache's loads.
fn logits_with(model: &Model<'_>, budget: Option<(u64, bool)>) -> (Vec<f32>, String, u64) {
    eval(model, budget, SessionParams::default())
}

fn eval(model: &Model<'_>, budget: Option<(u64, bool)>, params: SessionParams) -> (Vec<f32>, String, u64) {
    let kctx = KvCache::context(&model.hp).unwrap();
    let kvp = KvParams {
        n_ctx: 32,
        n_batch: 16,
        ty: KvType::F32,
    };
    let kv = KvCache::new(&kctx, &model.hp, kvp).unwrap();
    let mut s = match budget {
        None => Session::new(model, kv, params).unwrap(),
        Some((bytes, interleave)) => {
            let b = budget_params(bytes, interleave);
            let (moe, _) = MoeSetup::with_budget(model, kv.allocated_bytes(), &b).unwrap();
            Session::with_moe(model, kv, params, moe).unwrap()
        }
    };
    let tokens: Vec<u32> = (0..12).map(|i| 100 + 37 * i).collect();
    let mut out = s.eval(&tokens[..9], Rows::All).unwrap();
    for &t in &tokens[9..] {
        out.extend(s.eval(&[t], Rows::Last).unwrap());
    }
    let loads = s.cache_stats().map_or(0, |c| c.loads);
    (out, s.moe_path().to_string(), loads)
}

fn budget_params(bytes: u64, interleave: bool) -> BudgetParams {
    BudgetParams {
        bytes,
        policy: CachePolicy::Lru,
        io_threads: 2,
        io_backend: IoBackend::Auto,
        n_threads: 2,
        n_batch: 16,
        n_outputs: 16,
        frequencies: None,
        pinned: Vec::new(),
        // Tests run concurrently: the process's resident set moves under them.
        assume_resident: Some(64 << 20),
        interleave,
        lookahead: 0,
    }
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

/// Repacked experts take the sparse op on ggml's 8-row kernels (a GEMV per decode token, a GEMM over each
/// expert's tokens in the 9-token prompt): bit for bit the logits of ggml's mul_mat_id on the same tensors.
#[test]
fn repacked_experts_run_the_sparse_op_with_the_dense_paths_logits() {
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
        moe.description().starts_with("sparse on repacked experts"),
        "{}",
        moe.description()
    );
    let got = logits(&repacked);
    let e = nmse(&got, &want);
    assert!(e < 1e-10, "repacked experts vs mapped nmse {e:e}");
    let (dense, desc) = dense_logits(&repacked);
    assert!(desc.starts_with("dense"), "{desc}");
    let same = got.iter().zip(&dense).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same && got.len() == dense.len(),
        "sparse vs mul_mat_id on repacked experts: nmse {:e}",
        nmse(&got, &dense)
    );
}

/// A decode step's expert products are split into neuron chunks over all threads (`sparse_split`): with 1, 3 or
/// 8 threads (more than the k rows of a token, and splits that cut experts apart) the logits are the 2-thread
/// ones, bit for bit.
#[test]
fn repacked_experts_decode_alike_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_routed(dir.path(), OutType::Q4_0Pure, true);
    let file = GgufFile::open(&path).unwrap();
    let (wctx, rctx) = (Model::context(&file).unwrap(), Model::context(&file).unwrap());
    let (repacked, _) = Model::load(&wctx, &file).unwrap().repacked(&rctx, true).unwrap();
    let with = |n_threads| SessionParams {
        n_threads,
        ..SessionParams::default()
    };
    let (want, desc, _) = eval(&repacked, None, with(2));
    assert!(desc.starts_with("sparse on repacked experts"), "{desc}");
    for n in [1, 3, 8] {
        let (got, _, _) = eval(&repacked, None, with(n));
        let same = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{n} threads vs 2: nmse {:e}", nmse(&got, &want));
    }
    // A prompt that wants only its last row: the last layer's experts run for that row alone, which maps to
    // router row 8 (out_ids), on the split ops as on mul_mat_id.
    let last_row = |params: SessionParams| {
        let kctx = KvCache::context(&repacked.hp).unwrap();
        let kvp = KvParams {
            n_ctx: 32,
            n_batch: 16,
            ty: KvType::F32,
        };
        let mut s = Session::new(&repacked, KvCache::new(&kctx, &repacked.hp, kvp).unwrap(), params).unwrap();
        let tokens: Vec<u32> = (0..9).map(|i| 300 + 41 * i).collect();
        s.eval(&tokens, Rows::Last).unwrap()
    };
    let dense = SessionParams { dense: true, ..with(3) };
    let (got, want) = (last_row(with(3)), last_row(dense));
    let same = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "last-row prompt vs mul_mat_id: nmse {:e}", nmse(&got, &want));
}

/// Under a budget, the cache interleaves each expert slot as ggml repacks the uncapped experts, and the expert op
/// runs ggml's GEMV on them: the logits equal the uncapped `--repack all` path's bit for bit, prompt and decode,
/// with experts evicted and read again. Without interleaving, the slots keep the file's layout (the native op's
/// row dot products: close, not equal).
#[test]
fn budgeted_interleaved_slots_give_the_repacked_experts_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path(), OutType::Q4_0Pure);
    let file = GgufFile::open(&path).unwrap();
    let (wctx, rctx, dctx) = (
        Model::context(&file).unwrap(),
        Model::context(&file).unwrap(),
        Model::context(&file).unwrap(),
    );
    let mapped = Model::load(&wctx, &file).unwrap();
    let (uncapped, _) = mapped.repacked(&rctx, true).unwrap();
    let (want, desc) = dense_logits(&uncapped);
    assert!(desc.starts_with("dense"), "{desc}");
    // The capped model: dense matrices repacked, experts read from the file into slots.
    let (capped, _) = mapped.repacked(&dctx, false).unwrap();
    let hp = &capped.hp;
    let kctx = KvCache::context(hp).unwrap();
    let kv_bytes = KvCache::new(
        &kctx,
        hp,
        KvParams {
            n_ctx: 32,
            n_batch: 16,
            ty: KvType::F32,
        },
    )
    .unwrap()
    .allocated_bytes();
    let (_, r) = MoeSetup::with_budget(&capped, kv_bytes, &budget_params(64 << 30, true)).unwrap();
    // One layer's experts and two more: every layer evicts.
    let n = u64::from(hp.n_expert) + 2;
    let need = r.resident + r.kv + r.compute + (16 << 20) + n * r.slot + r.slot / 4;
    let bytes = (need as f64 * 32.0 / 31.0).ceil() as u64;
    let (got, desc, loads) = logits_with(&capped, Some((bytes, true)));
    assert!(desc.contains("slots interleaved"), "{desc}");
    assert!(
        loads > u64::from(hp.n_layer * hp.n_expert),
        "only {loads} loads: nothing was evicted"
    );
    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same && got.len() == want.len(),
        "interleaved slots vs repacked experts: nmse {:e}",
        nmse(&got, &want)
    );

    let (native, desc, _) = logits_with(&capped, Some((bytes, false)));
    assert!(desc.contains("slots in the GGUF layout"), "{desc}");
    let e = nmse(&native, &want);
    assert!(e < 1e-8, "file-layout slots vs repacked experts nmse {e:e}");
}
