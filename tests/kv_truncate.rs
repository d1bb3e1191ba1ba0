//! `Session::truncate` (the server's prompt cache going back to a shared prefix): after evaluating a prompt and
//! decoding, going back to position `m` and evaluating another continuation gives the logits of a fresh session
//! that evaluates the same tokens; on a sliding-window ring that has overwritten what position `m` needs, it
//! refuses and leaves the session as it was.

mod common;
mod model_graph_util;

use std::path::{Path, PathBuf};

use common::fixtures;
use model_graph_util::{rel_diff, with_sliding_window};
use smallthinker::gguf::GgufFile;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};

const N_CTX: u32 = 64;
const N_BATCH: u32 = 4;

fn params() -> SessionParams {
    SessionParams {
        n_threads: 1,
        ..Default::default()
    }
}

/// Token ids below 1000 (the fixtures' vocabularies are 1024 and more).
fn tokens(seed: usize, n: usize) -> Vec<u32> {
    (0..n).map(|j| ((seed * 131 + j * 17 + 5) % 1000) as u32).collect()
}

/// Evaluates `toks` in chunks of `N_BATCH` and returns the last row's logits.
fn feed(s: &mut Session<'_>, toks: &[u32]) -> Vec<f32> {
    let mut last = Vec::new();
    for c in toks.chunks(N_BATCH as usize) {
        last = s.eval(c, Rows::Last).unwrap();
    }
    last
}

/// A session that has seen `first` (prompt and decoded tokens) goes back to `keep` and evaluates `then`;
/// returns (whether it could, its logits vs a fresh session's on `first[..keep] + then`).
fn back_and_on(path: &Path, first: &[u32], keep: usize, then: &[u32]) -> (bool, f32) {
    let file = GgufFile::open(path).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kv_params = KvParams {
        n_ctx: N_CTX,
        n_batch: N_BATCH,
        ty: KvType::F32,
    };
    let (c1, c2) = (
        KvCache::context(&model.hp).unwrap(),
        KvCache::context(&model.hp).unwrap(),
    );
    let mut a = Session::new(&model, KvCache::new(&c1, &model.hp, kv_params).unwrap(), params()).unwrap();
    let mut b = Session::new(&model, KvCache::new(&c2, &model.hp, kv_params).unwrap(), params()).unwrap();
    // The prompt in chunks, then single decode steps, as the server does.
    let split = first.len() / 2;
    feed(&mut a, &first[..split]);
    for &t in &first[split..] {
        a.eval(&[t], Rows::Last).unwrap();
    }
    if !a.truncate(keep as u32) {
        assert_eq!(a.n_past() as usize, first.len(), "a refused truncate changes nothing");
        // It still goes on from where it was, as if nothing happened.
        let got = feed(&mut a, then);
        let mut all = first.to_vec();
        all.extend_from_slice(then);
        feed(&mut b, &first[..split]);
        for &t in &first[split..] {
            b.eval(&[t], Rows::Last).unwrap();
        }
        return (false, rel_diff(&got, &feed(&mut b, then)));
    }
    assert_eq!(a.n_past() as usize, keep);
    let got = feed(&mut a, then);
    let mut want_toks = first[..keep].to_vec();
    want_toks.extend_from_slice(then);
    let want = feed(&mut b, &want_toks);
    (true, rel_diff(&got, &want))
}

fn small_window(dir: &tempfile::TempDir, window: u32) -> PathBuf {
    let p = dir.path().join(format!("st21b-swa{window}.gguf"));
    with_sliding_window(&fixtures::manifest("st21b").gguf("f32"), &p, window);
    p
}

#[test]
fn truncated_session_equals_a_fresh_one() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smallthinker-tiny/smallthinker-tiny-f32.gguf");
    for path in [
        fixtures::manifest("st4b").gguf("f32"),
        fixtures::manifest("st21b").gguf("q8_0"),
        tiny,
    ] {
        let first = tokens(1, 20);
        for (keep, then_len) in [(12, 5), (19, 1), (0, 3), (20, 2)] {
            let (ok, d) = back_and_on(&path, &first, keep, &tokens(2, then_len));
            eprintln!("{}: keep {keep}: {d:.2e}", path.display());
            assert!(
                ok,
                "{}: a full-attention or unwrapped cache can always go back",
                path.display()
            );
            assert!(d <= 1e-5, "{}: keep {keep}: {d:.3e}", path.display());
        }
    }
}

#[test]
fn sliding_window_ring_goes_back_only_while_it_holds_the_window() {
    let dir = tempfile::tempdir().unwrap();
    // Window 6, ring of 6 + 4 cells; 20 positions written, so the ring holds positions 10..20.
    let p = small_window(&dir, 6);
    let first = tokens(3, 20);
    let then = tokens(4, 6);
    // A query at 15 sees 10..=15: still held.
    let (ok, d) = back_and_on(&p, &first, 15, &then);
    assert!(ok && d <= 1e-5, "keep 15: {ok} {d:.3e}");
    // A query at 14 would see 9, which position 19 overwrote.
    let (ok, d) = back_and_on(&p, &first, 14, &then);
    assert!(!ok && d <= 1e-5, "keep 14: {ok} {d:.3e}");
    let (ok, _) = back_and_on(&p, &first, 3, &then);
    assert!(!ok);
}
