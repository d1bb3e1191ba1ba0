//! Helpers of the model_graph* tests: load a GGUF, run a session, rewrite a GGUF with one thing broken.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use smallthinker::gguf::{GgufFile, GgufWriter, Value};
use smallthinker::model::{keys, KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};

/// Logits of `tokens` evaluated in `steps` (each a slice length and the rows wanted), concatenated.
pub fn run(path: &Path, n_ctx: u32, n_batch: u32, ty: KvType, steps: &[(&[u32], Rows)]) -> Vec<f32> {
    let file = GgufFile::open(path).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let kv = KvCache::new(&kctx, &model.hp, KvParams { n_ctx, n_batch, ty }).unwrap();
    let mut s = Session::new(
        &model,
        kv,
        SessionParams {
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut out = Vec::new();
    for (tokens, rows) in steps {
        out.extend(s.eval(tokens, *rows).unwrap());
    }
    out
}

/// All rows of `tokens` in one call.
pub fn all_rows(path: &Path, tokens: &[u32], n_batch: u32) -> Vec<f32> {
    run(path, tokens.len() as u32, n_batch, KvType::F32, &[(tokens, Rows::All)])
}

/// max |a - b| / range(b) over all of it.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let (lo, hi) = b
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    diff / (hi - lo)
}

/// ggml's test-backend-ops metric: sum (a - b)^2 / sum b^2.
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    num / den
}

pub fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap()
}

/// Copies `src` to `dst`, editing metadata (`kv` returns the value to write, or None to drop the key) and
/// tensors (`dims` returns the dims to declare, or None to drop the tensor; the bytes are copied as they are).
pub fn rewrite(
    src: &Path,
    dst: &Path,
    kv: impl Fn(&str, &Value) -> Option<Value>,
    dims: impl Fn(&str, &[u64]) -> Option<Vec<u64>>,
) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if let Some(v) = kv(k, v) {
            w.add_kv(k.clone(), v);
        }
    }
    let mut kept = Vec::new();
    for t in f.tensors() {
        if let Some(d) = dims(&t.name, &t.dims) {
            w.add_tensor(t.name.clone(), &d, t.ty).unwrap();
            kept.push(t.clone());
        }
    }
    w.write(dst, |i, _, out: &mut dyn Write| out.write_all(f.tensor_data(&kept[i])))
        .unwrap();
}

/// Copies `src` to `dst` with its sliding window set to `window` (small windows make ring caches wrap in
/// short tests).
pub fn with_sliding_window(src: &Path, dst: &Path, window: u32) {
    rewrite(
        src,
        dst,
        |k, v| {
            Some(if k == keys::SLIDING_WINDOW {
                Value::from(window)
            } else {
                v.clone()
            })
        },
        |_, d| Some(d.to_vec()),
    );
}
