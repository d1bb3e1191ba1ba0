//! `model::decode_batch` (one graph for a decode step of several sessions) against each session's own
//! `eval(&[tok], Rows::Last)`, on the tiny fixture models, sparse and dense, with sessions at different
//! positions, a subset of sessions per step, a different attention kernel in one session, and a sliding window
//! small enough that the ring caches wrap; and the errors it refuses a batch with.

mod common;
mod model_graph_util;

use std::path::{Path, PathBuf};

use common::fixtures;
use model_graph_util::with_sliding_window;
use smallthinker::gguf::GgufFile;
use smallthinker::graph::AttnKernel;
use smallthinker::model::{
    decode_batch, EvalError, KvCache, KvParams, KvType, Model, MoeSetup, Rows, Session, SessionParams,
};

const N_CTX: u32 = 48;
const N_BATCH: u32 = 4;

/// One thread: single-token steps are barrier-bound on a loaded machine (and the tests run side by side).
fn sparse() -> SessionParams {
    SessionParams {
        n_threads: 1,
        ..Default::default()
    }
}

fn dense() -> SessionParams {
    SessionParams {
        dense: true,
        ..sparse()
    }
}

/// How far the batched logits are from the per-session ones: the worst row's max |a - b| / max |b|, and
/// whether every row was bit-identical.
#[derive(Debug, Default)]
struct Diff {
    worst: f32,
    identical: bool,
    rows: usize,
}

impl Diff {
    fn add(&mut self, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        self.worst = self.worst.max(d / scale);
        self.identical = (self.rows == 0 || self.identical) && got == want;
        self.rows += 1;
    }
}

/// Three sessions with prompts of different lengths, then `steps` decode steps, each over the sessions `who`
/// names for that step, batched and one by one. Session 1 uses the soft_max attention kernel.
fn compare(path: &Path, params: SessionParams, steps: &[&[usize]]) -> Diff {
    let file = GgufFile::open(path).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let moe = MoeSetup::new(&model, &params);
    let kv_params = KvParams {
        n_ctx: N_CTX,
        n_batch: N_BATCH,
        ty: KvType::F32,
    };
    let kctxs: Vec<_> = (0..6).map(|_| KvCache::context(&model.hp).unwrap()).collect();
    let mut sessions: Vec<Session<'_>> = kctxs
        .iter()
        .enumerate()
        .map(|(i, kctx)| {
            let kv = KvCache::new(kctx, &model.hp, kv_params).unwrap();
            let mut s = Session::with_moe(&model, kv, params, moe.clone()).unwrap();
            if i % 3 == 1 {
                s.set_attn_kernel(AttnKernel::SoftMax);
            }
            s
        })
        .collect();
    let (batched, alone) = sessions.split_at_mut(3);
    let n_vocab = model.hp.n_vocab;
    let token = |i: usize, step: usize| ((i * 131 + step * 17 + 5) as u32) % n_vocab;
    // Prompts of 2, 7 and 13 tokens: the sessions decode at different positions, over ring caches that wrap.
    for (i, len) in [2usize, 7, 13].into_iter().enumerate() {
        let prompt: Vec<u32> = (0..len).map(|j| token(i, 100 + j)).collect();
        let a = batched[i].eval(&prompt, Rows::Last).unwrap();
        let b = alone[i].eval(&prompt, Rows::Last).unwrap();
        assert_eq!(a, b, "the same prompt in two sessions");
    }
    let mut diff = Diff::default();
    for (step, who) in steps.iter().enumerate() {
        let toks: Vec<u32> = who.iter().map(|&i| token(i, step)).collect();
        // In `who`'s order, which need not be the sessions' order.
        let mut all: Vec<Option<&mut Session<'_>>> = batched.iter_mut().map(Some).collect();
        let mut group: Vec<&mut Session<'_>> = who.iter().map(|&i| all[i].take().unwrap()).collect();
        let got = decode_batch(&mut group, &toks).unwrap();
        assert_eq!(got.len(), who.len());
        for ((&i, &t), row) in who.iter().zip(&toks).zip(&got) {
            let want = alone[i].eval(&[t], Rows::Last).unwrap();
            diff.add(row, &want);
            assert_eq!(batched[i].n_past(), alone[i].n_past());
        }
    }
    diff
}

/// Every session in most steps, pairs and a single session in some.
const STEPS: &[&[usize]] = &[
    &[0, 1, 2],
    &[0, 1, 2],
    &[0, 2],
    &[1, 2],
    &[0, 1, 2],
    &[1],
    &[0, 1, 2],
    &[2, 0],
];

/// st21b with its 4096-token window cut to 6: SWA layers 1-3, ring caches of 6 + N_BATCH cells that wrap.
fn st21b_small_window(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("st21b-swa6.gguf");
    with_sliding_window(&fixtures::manifest("st21b").gguf("f32"), &p, 6);
    p
}

fn check(name: &str, path: &Path) {
    for (path_name, params) in [("sparse", sparse()), ("dense", dense())] {
        let d = compare(path, params, STEPS);
        eprintln!(
            "{name} {path_name}: {} rows, worst max|diff|/max|logit| {:.2e}, bit-identical: {}",
            d.rows, d.worst, d.identical
        );
        assert!(d.rows > 15);
        assert!(d.worst <= 1e-5, "{name} {path_name}: batched vs alone {:.3e}", d.worst);
    }
}

#[test]
fn batched_decode_equals_each_session_alone() {
    for config in ["st4b", "stmha"] {
        for model in ["f32", "q8_0"] {
            check(&format!("{config} {model}"), &fixtures::manifest(config).gguf(model));
        }
    }
}

#[test]
fn batched_decode_with_sliding_window_rings() {
    let dir = tempfile::tempdir().unwrap();
    let p = st21b_small_window(&dir);
    let file = GgufFile::open(&p).unwrap();
    let wctx = Model::context(&file).unwrap();
    let hp = Model::load(&wctx, &file).unwrap().hp;
    assert_eq!(hp.n_swa(), Some(6));
    // Positions reach 13 + 8 > 6 + N_BATCH cells: the rings have wrapped.
    check("st21b window 6", &p);
    check("st21b", &fixtures::manifest("st21b").gguf("f32"));
}

#[test]
fn trained_tiny_model_batched_decode() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smallthinker-tiny/smallthinker-tiny-f32.gguf");
    check("smallthinker-tiny f32", &p);
}

#[test]
fn bad_batches_are_refused_before_anything_runs() {
    let path = fixtures::manifest("st4b").gguf("f32");
    let file = GgufFile::open(&path).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let moe = MoeSetup::new(&model, &sparse());
    let kctxs: Vec<_> = (0..3).map(|_| KvCache::context(&model.hp).unwrap()).collect();
    let kv = |i: usize, n_ctx| {
        let p = KvParams {
            n_ctx,
            n_batch: N_BATCH,
            ty: KvType::F32,
        };
        KvCache::new(&kctxs[i], &model.hp, p).unwrap()
    };
    let mut a = Session::with_moe(&model, kv(0, N_CTX), sparse(), moe.clone()).unwrap();
    let mut b = Session::with_moe(&model, kv(1, 2), sparse(), moe.clone()).unwrap();
    // Its own MoeSetup: another sparse state, so not one graph with the others.
    let mut c = Session::new(&model, kv(2, N_CTX), sparse()).unwrap();

    let e = decode_batch(&mut [&mut a, &mut b], &[1]).unwrap_err();
    assert!(matches!(e, EvalError::BatchLength { sessions: 2, tokens: 1 }), "{e}");
    assert!(matches!(decode_batch(&mut [], &[]).unwrap_err(), EvalError::Empty));
    let e = decode_batch(&mut [&mut a, &mut c], &[1, 2]).unwrap_err();
    assert!(matches!(e, EvalError::BatchMismatch { index: 1, .. }), "{e}");
    let e = decode_batch(&mut [&mut a, &mut b], &[1, model.hp.n_vocab]).unwrap_err();
    assert!(matches!(e, EvalError::InBatch { index: 1, .. }), "{e}");
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    b.eval(&[1, 2], Rows::Last).unwrap();
    let e = decode_batch(&mut [&mut a, &mut b], &[1, 2]).unwrap_err();
    assert!(
        matches!(&e, EvalError::InBatch { index: 1, source } if matches!(**source, EvalError::ContextFull { .. })),
        "{e}"
    );
    // Nothing was placed or counted by the refused batches.
    assert_eq!((a.n_past(), b.n_past()), (0, 2));
    let got = decode_batch(&mut [&mut a, &mut c], &[3]).map(|_| ());
    assert!(got.is_err());
    assert_eq!(decode_batch(&mut [&mut a], &[3]).unwrap().len(), 1);
    assert_eq!(a.n_past(), 1);
}

/// Eight sessions, each attention kernel in turn (the soft_max path has the most nodes per sequence), one
/// batched step after prompts of different lengths: the graph fits and equals each session alone.
#[test]
fn eight_sessions_with_every_attention_kernel() {
    let path = fixtures::manifest("st21b").gguf("f32");
    let file = GgufFile::open(&path).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let params = sparse();
    let moe = MoeSetup::new(&model, &params);
    let kv_params = KvParams {
        n_ctx: N_CTX,
        n_batch: N_BATCH,
        ty: KvType::F32,
    };
    let kernels = [AttnKernel::Cells, AttnKernel::SoftMax, AttnKernel::Flash];
    let kctxs: Vec<_> = (0..16).map(|_| KvCache::context(&model.hp).unwrap()).collect();
    let mut sessions: Vec<Session<'_>> = kctxs
        .iter()
        .enumerate()
        .map(|(i, kctx)| {
            let kv = KvCache::new(kctx, &model.hp, kv_params).unwrap();
            let mut s = Session::with_moe(&model, kv, params, moe.clone()).unwrap();
            s.set_attn_kernel(kernels[i % 8 % 3]);
            let prompt: Vec<u32> = (0..1 + i % 8).map(|j| (7 * i % 8 + 11 * j) as u32).collect();
            s.eval(&prompt, Rows::Last).unwrap();
            s
        })
        .collect();
    let (batched, alone) = sessions.split_at_mut(8);
    let toks: Vec<u32> = (0..8).map(|i| 300 + i).collect();
    let mut group: Vec<&mut Session<'_>> = batched.iter_mut().collect();
    let got = decode_batch(&mut group, &toks).unwrap();
    let mut diff = Diff::default();
    for ((s, &t), row) in alone.iter_mut().zip(&toks).zip(&got) {
        diff.add(row, &s.eval(&[t], Rows::Last).unwrap());
    }
    eprintln!("8 sessions: worst {:.2e}, bit-identical {}", diff.worst, diff.identical);
    assert!(diff.worst <= 1e-5, "{:.3e}", diff.worst);
}
