//! The sparse expert op on the GGUF's own layout (`DownType::Native`): no transposed down copy, so each expert is
//! exactly the bytes the file stores, which is what the expert cache reads into its slots.
//!
//! Per (token, selected expert) row: gate rows densely (quantised dot products), `up` only where
//! `relu(gate) > 0`, then `down` as a dense product with the (mostly zero) hidden vector quantised as ggml's
//! mul_mat would, so the down rows are read whole. Threads split the `k * n_out` rows (ggml's contiguous split);
//! within its rows a thread groups by expert, takes resident experts first, and reads each expert's matrices
//! once for all its rows of that expert. A second op sums the k rows of each token with the routing weights in
//! slot order, so results do not depend on the thread count or on the order reads arrive.
//!
//! Interleaved experts in memory (no cache) take `sparse_split` instead, which also splits one row's neurons.

use std::sync::atomic::Ordering;

use super::expert_cache::ExpertCache;
use super::sparse_moe::LayerState;
use crate::ggml::q4x8::{Gemv, ROWS};
use crate::ggml::rows::{AlignedBytes, RowDot, RowQuant};
use crate::ggml::CustomOpCtx;

/// The native-layout down product: its dot product and the quantiser of the hidden vector.
pub(super) struct NativeDown {
    pub dot: RowDot,
    pub h_q: RowQuant,
    /// Set when the expert cache interleaves its slots: the products run as the 8-row GEMV instead.
    pub x8: Option<Interleaved>,
}

/// The GEMVs over interleaved experts: gate and up (rows of `n_embd`), down (rows of `n_ff`).
pub(super) struct Interleaved {
    pub gate_up: Gemv,
    pub down: Gemv,
}

/// Sources: `cur [n_embd, n_out]`, gate and up `[n_embd, n_ff, n_expert]`, down `[n_ff, n_embd, n_expert]`,
/// optional `out_ids [n_out]`. Destination: `[n_embd, k * n_out]`, row `t * k + s` = expert slot s of token t,
/// unweighted.
pub(super) fn native_expert_op(l: &LayerState, nd: &NativeDown, cache: Option<&ExpertCache>, op: &CustomOpCtx) {
    let n_embd = l.n_embd;
    let n_ff = l.p.n_ff_exp as usize;
    let k = l.p.n_expert_used as usize;
    let mut rows: Vec<(usize, &mut [f32])> = op.dst_rows().collect();
    if rows.is_empty() {
        return;
    }
    let out_ids = (op.n_srcs() > 4).then(|| op.src_i32(4));
    let ids = l.ids.read().unwrap_or_else(|p| p.into_inner());
    // (expert, index into `rows`) for this thread's rows, grouped by expert, resident ones first.
    let mut mine: Vec<(bool, usize, usize)> = rows
        .iter()
        .enumerate()
        .map(|(i, &(row, _))| {
            let (t, s) = (row / k, row % k);
            let r = out_ids.map_or(t, |o| o[t] as usize);
            let e = ids[r * k + s] as usize;
            let waiting = cache.is_some_and(|c| !c.is_ready(l.il, e as u32));
            (waiting, e, i)
        })
        .collect();
    drop(ids);
    mine.sort_unstable();

    let (gl, ul) = (l.gate_q.len(), l.up_q.len());
    let (wl, uxl, dl) = (l.gate.x_len(), l.up.x_len(), nd.dot.x_len());
    let mut xg = AlignedBytes::zeroed(gl);
    let mut xu = AlignedBytes::zeroed(ul);
    let mut h = vec![0f32; n_ff];
    let mut g = vec![0f32; if nd.x8.is_some() { n_ff } else { 0 }];
    let mut hq = AlignedBytes::zeroed(nd.h_q.len());
    let (mut active, mut total) = (0u64, 0u64);
    let timed = op.ith() == 0;
    for group in mine.chunk_by(|a, b| a.1 == b.1) {
        let e = group[0].1;
        let guard;
        let [gate, up, down]: [&[u8]; 3] = match cache {
            Some(c) => match c.get(l.il, e as u32, timed) {
                Some(g) => {
                    guard = g;
                    guard.matrices()
                }
                // The read failed: the session reports the error and discards this evaluation.
                None => {
                    for &(_, _, i) in group {
                        rows[i].1.fill(0.0);
                    }
                    continue;
                }
            },
            None => {
                let (g, u, d) = (n_ff * wl, n_ff * uxl, n_embd * dl);
                [
                    &op.src_bytes(1)[e * g..(e + 1) * g],
                    &op.src_bytes(2)[e * u..(e + 1) * u],
                    &op.src_bytes(3)[e * d..(e + 1) * d],
                ]
            }
        };
        for &(_, _, i) in group {
            let t = rows[i].0 / k;
            let x = op.src_row(0, t);
            l.gate_q.run(x, xg.as_mut_slice());
            let xu = if l.up.y_type() == l.gate.y_type() {
                xg.as_slice()
            } else {
                l.up_q.run(x, xu.as_mut_slice());
                xu.as_slice()
            };
            if let Some(x8) = &nd.x8 {
                let scratch = Scratch {
                    g: &mut g,
                    h: &mut h,
                    hq: &mut hq,
                };
                active += interleaved_expert(x8, [gate, up, down], [xg.as_slice(), xu], &nd.h_q, scratch, rows[i].1);
                total += n_ff as u64;
                continue;
            }
            for (j, hj) in h.iter_mut().enumerate() {
                let g = l.gate.dot(&gate[j * wl..(j + 1) * wl], xg.as_slice());
                *hj = if g > 0.0 {
                    active += 1;
                    g * l.up.dot(&up[j * uxl..(j + 1) * uxl], xu)
                } else {
                    0.0
                };
            }
            total += n_ff as u64;
            nd.h_q.run(&h, hq.as_mut_slice());
            for (r, y) in rows[i].1.iter_mut().enumerate() {
                *y = nd.dot.dot(&down[r * dl..(r + 1) * dl], hq.as_slice());
            }
        }
    }
    l.shared.active.fetch_add(active, Ordering::Relaxed);
    l.shared.total.fetch_add(total, Ordering::Relaxed);
}

/// Per-thread buffers of [`interleaved_expert`]: gate outputs and hidden vector (`n_ff` each), its quantised copy.
pub(super) struct Scratch<'s> {
    pub g: &'s mut [f32],
    pub h: &'s mut [f32],
    pub hq: &'s mut AlignedBytes,
}

/// One (token, expert) row on interleaved matrices: [`reglu_groups`], then `down` on the hidden vector quantised
/// by `h_q`, as ggml's repacked mul_mat_id graph computes it. Returns the active neurons.
pub(super) fn interleaved_expert(
    x8: &Interleaved,
    [gate, up, down]: [&[u8]; 3],
    [xg, xu]: [&[u8]; 2],
    h_q: &RowQuant,
    Scratch { g, h, hq }: Scratch<'_>,
    out: &mut [f32],
) -> u64 {
    let (gate_x, up_x) = (
        |w: &[u8], o: &mut [f32]| x8.gate_up.run(w, xg, o),
        |w: &[u8], o: &mut [f32]| x8.gate_up.run(w, xu, o),
    );
    let active = reglu_groups(x8.gate_up.w_len(ROWS), [gate, up], [&mut *g, &mut *h], gate_x, up_x);
    h_q.run(h, hq.as_mut_slice());
    x8.down.run(down, hq.as_slice(), out);
    active
}

/// `h = relu(g) * up` for the `h.len()` interleaved rows of `gate` and `up` (`group` bytes per 8 rows):
/// `g = gate_x(gate)` densely, then `up_x` only on the runs of 8-row groups with an active neuron, since the
/// kernel reads whole groups. Returns the active neurons.
pub(super) fn reglu_groups(
    group: usize,
    [gate, up]: [&[u8]; 2],
    [g, h]: [&mut [f32]; 2],
    gate_x: impl Fn(&[u8], &mut [f32]),
    up_x: impl Fn(&[u8], &mut [f32]),
) -> u64 {
    let n = h.len();
    gate_x(gate, g);
    let live = |j: usize| g[j..j + ROWS].iter().any(|&v| v > 0.0);
    let mut j = 0;
    while j < n {
        if !live(j) {
            h[j..j + ROWS].fill(0.0);
            j += ROWS;
            continue;
        }
        let start = j;
        while j < n && live(j) {
            j += ROWS;
        }
        up_x(&up[start / ROWS * group..j / ROWS * group], &mut h[start..j]);
    }
    let mut active = 0;
    for (hj, &gj) in h.iter_mut().zip(g.iter()) {
        *hj = if gj > 0.0 {
            active += 1;
            gj * *hj
        } else {
            0.0
        };
    }
    active
}

/// Sources: `y [n_embd, k * n_out]` from [`native_expert_op`], `weights [k, n_tokens]`, optional
/// `out_ids [n_out]`. Destination `[n_embd, n_out]`: each token's k rows weighted and summed in slot order.
pub(super) fn weighted_sum_op(k: usize, op: &CustomOpCtx) {
    let y = op.src(0);
    let w = op.src(1);
    let n_embd = op.src_ne(0)[0] as usize;
    let out_ids = (op.n_srcs() > 2).then(|| op.src_i32(2));
    for (t, out) in op.dst_rows() {
        let r = out_ids.map_or(t, |o| o[t] as usize);
        out.fill(0.0);
        for s in 0..k {
            let ws = w[r * k + s];
            let row = &y[(t * k + s) * n_embd..(t * k + s + 1) * n_embd];
            for (o, &v) in out.iter_mut().zip(row) {
                *o += ws * v;
            }
        }
    }
}
