//! The cell-attention op (src/graph/attn_op.rs) against a naive f64 reference and against llama.cpp's
//! mul_mat + soft_max_ext path with a mask, on random Q/K/V: sliding windows over a wrapped ring, empty cells,
//! GQA, f16/f32 caches, multi-token batches, several thread counts.
mod ggml_util;

use ggml_util::*;
use smallthinker::ggml::{Context, Prec, Tensor};
use smallthinker::gguf::GgmlType;
use smallthinker::graph::attn_op::visible;
use smallthinker::graph::{attn_cells, CellAttnParams};

struct Case {
    name: &'static str,
    hd: i64,
    n_head: i64,
    n_head_kv: i64,
    /// Ring cells (the cache tensor's kv_size).
    size: usize,
    /// Positions written before this batch.
    n_past: usize,
    n_tokens: usize,
    n_swa: Option<u32>,
    /// Scales q, to push the scores far from 0 (online-softmax stability).
    q_scale: f32,
}

impl Case {
    /// Cell positions after storing positions 0..n_past + n_tokens at `p % size` (the cache's placement), over
    /// the cells used so far; the batch's cells.
    fn cells(&self) -> (Vec<i32>, Vec<i32>) {
        let end = self.n_past + self.n_tokens;
        let mut pos = vec![-1i32; self.size];
        for p in 0..end {
            pos[p % self.size] = p as i32;
        }
        pos.truncate(end.min(self.size));
        let q_pos = (self.n_past..end).map(|p| p as i32).collect();
        (pos, q_pos)
    }
}

/// Naive attention: `q [hd, n_head, n_tok]`, `k`/`v [hd * n_head_kv, n_kv]` rows.
fn naive(c: &Case, q: &[f32], k: &[f32], v: &[f32], cell_pos: &[i32], q_pos: &[i32]) -> Vec<f32> {
    let (hd, nh, nkv) = (c.hd as usize, c.n_head as usize, c.n_head_kv as usize);
    let g = nh / nkv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f32; hd * nh * q_pos.len()];
    for (t, &pq) in q_pos.iter().enumerate() {
        for h in 0..nh {
            let qh = &q[(t * nh + h) * hd..][..hd];
            let off = (h / g) * hd;
            let cells: Vec<usize> = (0..cell_pos.len())
                .filter(|&i| visible(i64::from(cell_pos[i]), i64::from(pq), c.n_swa))
                .collect();
            let s: Vec<f64> = cells
                .iter()
                .map(|&i| {
                    let kr = &k[i * hd * nkv + off..][..hd];
                    scale * qh.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = w.iter().sum();
            let o = &mut out[(t * nh + h) * hd..][..hd];
            for (d, od) in o.iter_mut().enumerate() {
                let acc: f64 = cells
                    .iter()
                    .zip(&w)
                    .map(|(&i, wi)| wi * v[i * hd * nkv + off + d] as f64)
                    .sum();
                *od = (acc / sum) as f32;
            }
        }
    }
    out
}

/// llama.cpp's non-flash attention (src/graph/attention.rs `attn_masked`) built from ggml ops.
#[allow(clippy::too_many_arguments)]
fn softmax_path<'a>(
    ctx: &'a Context,
    c: &Case,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    cell_pos: &[i32],
    q_pos: &[i32],
) -> Tensor<'a> {
    let (hd, nkv) = (c.hd, c.n_head_kv);
    let n_kv = cell_pos.len() as i64;
    let mut mask = vec![f32::NEG_INFINITY; cell_pos.len() * q_pos.len()];
    for (row, &pq) in mask.chunks_exact_mut(cell_pos.len()).zip(q_pos) {
        for (m, &pk) in row.iter_mut().zip(cell_pos) {
            if visible(i64::from(pk), i64::from(pq), c.n_swa) {
                *m = 0.0;
            }
        }
    }
    let kq_mask = ctx.new_tensor(GgmlType::F32, &[n_kv, q_pos.len() as i64]);
    kq_mask.set_f32(&mask).unwrap();
    let cell = |t: Tensor<'a>| {
        let nb = t.nb();
        let heads = ctx.view_3d(t, [hd, nkv, n_kv], nb[1] / nkv as usize, nb[1], 0);
        ctx.permute(heads, [0, 2, 1, 3])
    };
    let kq = ctx.mul_mat(cell(k), ctx.permute(q, [0, 2, 1, 3]));
    ctx.mul_mat_set_prec(kq, Prec::F32);
    let kq = ctx.soft_max_ext(kq, Some(kq_mask), 1.0 / (hd as f32).sqrt(), 0.0);
    let kqv = ctx.mul_mat(ctx.cont(ctx.transpose(cell(v))), kq);
    ctx.cont(ctx.permute(kqv, [0, 2, 1, 3]))
}

fn check(c: &Case, ty: GgmlType, seed: u64) {
    let ctx = ctx();
    let mut rng = Rng::new(seed);
    let (cell_pos, q_pos) = c.cells();
    let row = c.hd * c.n_head_kv;
    let (q, mut qv) = rand_f32(&ctx, &[c.hd, c.n_head, c.n_tokens as i64], &mut rng);
    qv.iter_mut().for_each(|x| *x *= c.q_scale);
    q.set_f32(&qv).unwrap();
    let cache = |rng: &mut Rng| {
        let vals = rng.vec(row as usize * c.size);
        let t = ctx.new_tensor(ty, &[row, c.size as i64]);
        let stored: Vec<f32> = match ty {
            GgmlType::F16 => {
                t.set_f32_as_f16(&vals).unwrap();
                vals.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
            }
            _ => {
                t.set_f32(&vals).unwrap();
                vals
            }
        };
        (t, stored)
    };
    let ((k, kv), (v, vv)) = (cache(&mut rng), cache(&mut rng));
    let cp = ctx.new_tensor(GgmlType::I32, &[cell_pos.len() as i64]);
    cp.set_i32(&cell_pos).unwrap();
    let qp = ctx.new_tensor(GgmlType::I32, &[q_pos.len() as i64]);
    qp.set_i32(&q_pos).unwrap();
    let p = CellAttnParams {
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        n_embd_head: c.hd,
        kq_scale: 1.0 / (c.hd as f32).sqrt(),
        n_swa: c.n_swa,
    };
    let want = naive(c, &qv, &kv, &vv, &cell_pos, &q_pos);
    for n_threads in [1, 2, 3] {
        let got = run(&ctx, attn_cells(&ctx, q, k, v, cp, qp, &p), n_threads);
        assert_close(
            &format!("{} {ty} op vs naive, {n_threads} threads", c.name),
            &want,
            &got,
            1e-10,
        );
    }
    let old = run(&ctx, softmax_path(&ctx, c, q, k, v, &cell_pos, &q_pos), 2);
    let got = run(&ctx, attn_cells(&ctx, q, k, v, cp, qp, &p), 2);
    // The soft_max path rounds q to f16 for an f16 K (mul_mat's vec_dot type), the op keeps it f32.
    let tol = if ty == GgmlType::F16 { 1e-5 } else { 1e-10 };
    assert_close(&format!("{} {ty} op vs soft_max path", c.name), &old, &got, tol);
}

const CASES: &[Case] = &[
    // A SWA ring (window 40, batches of up to 8: 48 cells) that has wrapped around twice; GQA 3.
    Case {
        name: "ring wrap, prefill",
        hd: 64,
        n_head: 6,
        n_head_kv: 2,
        size: 48,
        n_past: 100,
        n_tokens: 8,
        n_swa: Some(40),
        q_scale: 1.0,
    },
    Case {
        name: "ring wrap, decode",
        hd: 128,
        n_head: 7,
        n_head_kv: 1,
        size: 200,
        n_past: 517,
        n_tokens: 1,
        n_swa: Some(190),
        q_scale: 1.0,
    },
    // A full-length cache partly used: several tiles, the last one partial, MHA.
    Case {
        name: "full causal, MHA",
        hd: 32,
        n_head: 4,
        n_head_kv: 4,
        size: 300,
        n_past: 150,
        n_tokens: 13,
        n_swa: None,
        q_scale: 1.0,
    },
    // Scores of magnitude ~100: the online softmax must rescale, not overflow.
    Case {
        name: "large scores",
        hd: 128,
        n_head: 8,
        n_head_kv: 2,
        size: 1024,
        n_past: 700,
        n_tokens: 3,
        n_swa: None,
        q_scale: 60.0,
    },
    // GQA 5 over two tokens (blocks of 5 + 5 rows) and an odd number of cells (a last single key row): the
    // kernels' other block shapes.
    Case {
        name: "GQA 5, odd cells",
        hd: 32,
        n_head: 10,
        n_head_kv: 2,
        size: 101,
        n_past: 97,
        n_tokens: 2,
        n_swa: None,
        q_scale: 1.0,
    },
];

#[test]
fn op_matches_naive_and_softmax_path_f32() {
    for (i, c) in CASES.iter().enumerate() {
        check(c, GgmlType::F32, 10 + i as u64);
    }
}

#[test]
fn op_matches_naive_and_softmax_path_f16() {
    for (i, c) in CASES.iter().enumerate() {
        check(c, GgmlType::F16, 20 + i as u64);
    }
}

/// An empty cell inside n_kv (position -1) and cells ahead of the query stay invisible: changing their K/V
/// changes nothing.
#[test]
fn hidden_cells_do_not_contribute() {
    let ctx = ctx();
    let mut rng = Rng::new(5);
    let (hd, nh) = (16i64, 2i64);
    let cell_pos = [0, -1, 1, 2, 9, 3]; // query at 3 sees cells 0, 2, 3, 5
    let (q, _) = rand_f32(&ctx, &[hd, nh, 1], &mut rng);
    let (k, mut kv) = rand_f32(&ctx, &[hd, 6], &mut rng);
    let (v, mut vv) = rand_f32(&ctx, &[hd, 6], &mut rng);
    let cp = ctx.new_tensor(GgmlType::I32, &[6]);
    cp.set_i32(&cell_pos).unwrap();
    let qp = ctx.new_tensor(GgmlType::I32, &[1]);
    qp.set_i32(&[3]).unwrap();
    let p = CellAttnParams {
        n_head: nh,
        n_head_kv: 1,
        n_embd_head: hd,
        kq_scale: 0.25,
        n_swa: Some(3), // window 3 also hides position 0
    };
    let before = run(&ctx, attn_cells(&ctx, q, k, v, cp, qp, &p), 1);
    for i in [0usize, 1, 4] {
        kv[i * hd as usize..][..hd as usize].iter_mut().for_each(|x| *x = 50.0);
        vv[i * hd as usize..][..hd as usize].iter_mut().for_each(|x| *x = -50.0);
    }
    k.set_f32(&kv).unwrap();
    v.set_f32(&vv).unwrap();
    let after = run(&ctx, attn_cells(&ctx, q, k, v, cp, qp, &p), 1);
    assert_eq!(before, after);
    // ...while a visible cell does.
    vv[3 * hd as usize] += 1.0;
    v.set_f32(&vv).unwrap();
    assert_ne!(before, run(&ctx, attn_cells(&ctx, q, k, v, cp, qp, &p), 1));
}

/// In a prompt's block of tokens, a cell that one token sees and the next does not (past the window's edge, or
/// after the token) changes only the rows of the token that sees it, and bit for bit nothing else.
#[test]
fn block_rows_see_only_their_own_cells() {
    let ctx = ctx();
    let mut rng = Rng::new(7);
    let (hd, nh) = (16i64, 4i64);
    // Positions 0..6 in cells 0..6; queries at 3, 4, 5 (window 3): 3 sees 1..=3, 4 sees 2..=4, 5 sees 3..=5.
    let cell_pos = [0, 1, 2, 3, 4, 5];
    let (q, _) = rand_f32(&ctx, &[hd, nh, 3], &mut rng);
    let (k, mut kv) = rand_f32(&ctx, &[hd * 2, 6], &mut rng);
    let (v, mut vv) = rand_f32(&ctx, &[hd * 2, 6], &mut rng);
    let cp = ctx.new_tensor(GgmlType::I32, &[6]);
    cp.set_i32(&cell_pos).unwrap();
    let qp = ctx.new_tensor(GgmlType::I32, &[3]);
    qp.set_i32(&[3, 4, 5]).unwrap();
    let p = CellAttnParams {
        n_head: nh,
        n_head_kv: 2,
        n_embd_head: hd,
        kq_scale: 0.25,
        n_swa: Some(3),
    };
    let token_rows = |out: &[f32], t: usize| out[t * (hd * nh) as usize..][..(hd * nh) as usize].to_vec();
    for n_threads in [1, 2] {
        let before = run(&ctx, attn_cells(&ctx, q, k, v, cp, qp, &p), n_threads);
        let one = |rows: &mut Vec<f32>, cell: usize, x: f32| {
            rows[cell * (2 * hd) as usize..][..(2 * hd) as usize]
                .iter_mut()
                .for_each(|r| *r = x)
        };
        // Cell 1 (position 1): only the query at 3 sees it. Cell 5: only the query at 5.
        let (k0, v0) = (kv.clone(), vv.clone());
        for (cell, sees) in [(1usize, 0usize), (5, 2)] {
            kv.clone_from(&k0);
            vv.clone_from(&v0);
            one(&mut kv, cell, 3.0);
            one(&mut vv, cell, -7.0);
            k.set_f32(&kv).unwrap();
            v.set_f32(&vv).unwrap();
            let after = run(&ctx, attn_cells(&ctx, q, k, v, cp, qp, &p), n_threads);
            for t in 0..3 {
                let (b, a) = (token_rows(&before, t), token_rows(&after, t));
                if t == sees {
                    assert_ne!(b, a, "cell {cell}: token {t} sees it");
                } else {
                    assert_eq!(b, a, "cell {cell}: token {t} does not see it ({n_threads} threads)");
                }
            }
        }
        k.set_f32(&k0).unwrap();
        v.set_f32(&v0).unwrap();
        kv = k0;
        vv = v0;
    }
}
