//! A decode step reuses the previous step's graph (src/model/step_graph.rs) while the cells it reads stay within
//! one multiple of 256. Its logits equal, bit for bit, those of a graph built afresh for every step (a traced
//! evaluation never reuses one, and reads the cells unpadded): across bucket boundaries, after `truncate` and
//! `reset`, sparse and dense, on full caches and on sliding-window rings that have wrapped. It builds one graph
//! per bucket, not one per step.

mod common;
mod model_graph_util;

use std::path::Path;

use common::fixtures;
use model_graph_util::with_sliding_window;
use smallthinker::gguf::GgufFile;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};

const N_BATCH: u32 = 4;

fn tokens(seed: usize, n: usize) -> Vec<u32> {
    (0..n).map(|j| ((seed * 131 + j * 17 + 5) % 1000) as u32).collect()
}

/// One step of both sessions: `kept` as a decode step, `fresh` traced; their logits must be identical.
fn step(kept: &mut Session<'_>, fresh: &mut Session<'_>, toks: &[u32], what: &str) {
    let a = kept.eval(toks, Rows::Last).unwrap();
    let (b, traced) = fresh.eval_traced(toks, Rows::Last, &["result_norm"]).unwrap();
    assert_eq!(traced.len(), 1, "{what}: the traced evaluation returns its tensor");
    assert_eq!(a.len(), b.len(), "{what}");
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x.to_bits() != y.to_bits()) {
        panic!("{what}: logit {i} is {} kept and {} fresh", a[i], b[i]);
    }
}

/// Runs both sessions through a prompt, 300 decode steps (cells 9 to 308: two buckets), a truncate to `back`
/// and 20 steps more, then a reset and 10 steps; checks the logits of every step, and that `kept` has built
/// `builds` graphs after the truncate's steps and after the reset's.
fn check(path: &Path, params: SessionParams, back: u32, builds: [u64; 2]) {
    let name = path.display();
    let file = GgufFile::open(path).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kv_params = KvParams {
        n_ctx: 600,
        n_batch: N_BATCH,
        ty: KvType::F32,
    };
    let (c1, c2) = (
        KvCache::context(&model.hp).unwrap(),
        KvCache::context(&model.hp).unwrap(),
    );
    let mut kept = Session::new(&model, KvCache::new(&c1, &model.hp, kv_params).unwrap(), params).unwrap();
    let mut fresh = Session::new(&model, KvCache::new(&c2, &model.hp, kv_params).unwrap(), params).unwrap();

    let prompt = tokens(1, 8);
    for c in prompt.chunks(N_BATCH as usize) {
        step(&mut kept, &mut fresh, c, &format!("{name}: prompt"));
    }
    assert_eq!(kept.graphs_built(), 2, "{name}: one graph per prompt batch");
    for (i, t) in tokens(2, 300).into_iter().enumerate() {
        step(&mut kept, &mut fresh, &[t], &format!("{name}: step {i}"));
    }
    assert_eq!(
        kept.graphs_built(),
        4,
        "{name}: one decode graph for cells ..256 and one for ..512"
    );
    assert_eq!(fresh.graphs_built(), 302);

    assert!(kept.truncate(back) && fresh.truncate(back));
    for (i, t) in tokens(3, 20).into_iter().enumerate() {
        step(
            &mut kept,
            &mut fresh,
            &[t],
            &format!("{name}: after truncate, step {i}"),
        );
    }
    assert_eq!(kept.graphs_built(), builds[0], "{name}: after truncate to {back}");

    kept.reset();
    fresh.reset();
    for (i, t) in tokens(4, 10).into_iter().enumerate() {
        step(&mut kept, &mut fresh, &[t], &format!("{name}: after reset, step {i}"));
    }
    // The full cache reads ..256 again; a ring reads all its cells still (padded: their positions are -1).
    assert_eq!(kept.graphs_built(), builds[1], "{name}: after reset");
}

fn one_thread() -> SessionParams {
    SessionParams {
        n_threads: 1,
        ..Default::default()
    }
}

#[test]
fn kept_decode_graphs_give_the_logits_of_fresh_ones() {
    // Back under 256 cells: one new graph, which the reset cache shares.
    let under = (100, [5, 5]);
    check(&fixtures::manifest("st4b").gguf("f32"), one_thread(), under.0, under.1);
    let dense = SessionParams {
        dense: true,
        ..one_thread()
    };
    check(&fixtures::manifest("st4b").gguf("f32"), dense, under.0, under.1);
    // Its SWA cells (600: the window of 4096 does not wrap here) keep their length through a truncate, as a
    // ring does, so only the reset brings them back under 256.
    check(&fixtures::manifest("st21b").gguf("q8_0"), one_thread(), 100, [5, 6]);
}

#[test]
fn kept_decode_graphs_on_wrapped_sliding_window_rings() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("st21b-swa6.gguf");
    // Window 6: rings of 6 + 4 cells, wrapped many times over 300 steps.
    with_sliding_window(&fixtures::manifest("st21b").gguf("f32"), &p, 6);
    // Back to 305 (the rings still hold what it sees): still over 256 cells, no new graph until the reset.
    let params = SessionParams {
        n_threads: 2,
        ..Default::default()
    };
    check(&p, params, 305, [4, 5]);
}
