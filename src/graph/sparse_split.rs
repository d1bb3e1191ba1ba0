//! The decode expert ops on interleaved experts held in memory (ggml's repacked tensors): one token's expert
//! products split over every thread, whatever the thread count.
//!
//! [`native_expert_op`](super::sparse_native::native_expert_op) gives each thread whole (token, expert) rows, so
//! a decode step (k rows) keeps at most k threads busy: 4 of 8 on the 4B. Here the work is cut into neuron
//! chunks, as the (expert x neuron chunk) split asks, in two ops:
//! - [`hidden_op`]: the hidden vectors `relu(gate) * up` of the token's k rows; threads split the
//!   (row, [`CHUNK`]-neuron chunk) items;
//! - the graph's barrier between the ops is the hand-off that `down` needs (every output needs the whole hidden
//!   vector);
//! - [`down_sum_op`]: threads split the (token, [`CHUNK`]-output chunk) items; each runs the chunk's down rows
//!   of the token's k experts and sums them with the routing weights in slot order.
//!
//! Each output is the same GEMV row and the same weighted sum as in `interleaved_expert` plus `weighted_sum_op`,
//! so the results are those of ggml's mul_mat_id graph bit for bit, for any split.

use std::sync::atomic::Ordering;

use super::sparse_moe::LayerState;
use super::sparse_native::{reglu_groups, Interleaved};
use crate::ggml::q4x8::ROWS;
use crate::ggml::q4x8_gemv::{gemv_row, GemvRow};
use crate::ggml::CustomOpCtx;

/// Rows (neurons, or outputs of `down`) per work item: 8 interleaved groups. 768 neurons make 12 items per
/// expert, and each GEMV call still streams 54 KiB of a 1536-wide matrix.
pub const CHUNK: usize = 64;

/// Sources: `cur [n_embd, n_out]`, gate and up `[n_embd, n_ff, n_expert]` (interleaved), optional
/// `out_ids [n_out]`. Destination `[n_ff, k * n_out]`: row `t * k + s` = the hidden vector of expert slot s of
/// token t.
pub(super) fn hidden_op(l: &LayerState, x8: &Interleaved, op: &CustomOpCtx) {
    let (n_ff, k) = (l.p.n_ff_exp as usize, l.p.n_expert_used as usize);
    let out_ids = (op.n_srcs() > 3).then(|| op.src_i32(3));
    let ids = l.ids.read().unwrap_or_else(|p| p.into_inner());
    let (group, per_expert) = (x8.gate_up.w_len(ROWS), x8.gate_up.w_len(n_ff));
    let mut x = GemvRow::new(l.n_embd);
    let mut x_token = None;
    let mut g = vec![0f32; CHUNK];
    let (mut active, mut total) = (0u64, 0u64);
    for (row, cols, h) in op.dst_chunks(CHUNK) {
        let (t, s) = (row / k, row % k);
        if x_token != Some(t) {
            x.set(op.src_row(0, t));
            x_token = Some(t);
        }
        let e = ids[out_ids.map_or(t, |o| o[t] as usize) * k + s] as usize;
        let rows = |i: usize| &op.src_bytes(i)[e * per_expert..][cols.start / ROWS * group..cols.end / ROWS * group];
        let gemv = |w: &[u8], o: &mut [f32]| gemv_row(w, &x, o);
        let g = &mut g[..cols.len()];
        active += reglu_groups(group, [rows(1), rows(2)], [g, h], gemv, gemv);
        total += cols.len() as u64;
    }
    l.shared.active.fetch_add(active, Ordering::Relaxed);
    l.shared.total.fetch_add(total, Ordering::Relaxed);
}

/// Sources: `h [n_ff, k * n_out]` from [`hidden_op`], `weights [k, n_tokens]`, down `[n_ff, n_embd, n_expert]`
/// (interleaved), optional `out_ids [n_out]`. Destination `[n_embd, n_out]`: each token's k down products
/// weighted and summed in slot order.
pub(super) fn down_sum_op(l: &LayerState, x8: &Interleaved, op: &CustomOpCtx) {
    let k = l.p.n_expert_used as usize;
    let weights = op.src(1);
    let out_ids = (op.n_srcs() > 3).then(|| op.src_i32(3));
    let ids = l.ids.read().unwrap_or_else(|p| p.into_inner());
    let (group, per_expert) = (x8.down.w_len(ROWS), x8.down.w_len(l.n_embd));
    let n_ff = op.src_ne(0)[0] as usize;
    let mut hs: Vec<GemvRow> = (0..k).map(|_| GemvRow::new(n_ff)).collect();
    let mut h_token = None;
    let mut y = vec![0f32; CHUNK];
    for (t, cols, out) in op.dst_chunks(CHUNK) {
        if h_token != Some(t) {
            for (s, h) in hs.iter_mut().enumerate() {
                h.set(op.src_row(0, t * k + s));
            }
            h_token = Some(t);
        }
        let r = out_ids.map_or(t, |o| o[t] as usize);
        let y = &mut y[..cols.len()];
        out.fill(0.0);
        for (s, h) in hs.iter().enumerate() {
            let e = ids[r * k + s] as usize;
            let w = &op.src_bytes(2)[e * per_expert..][cols.start / ROWS * group..cols.end / ROWS * group];
            gemv_row(w, h, y);
            let ws = weights[r * k + s];
            for (o, &v) in out.iter_mut().zip(y.iter()) {
                *o += ws * v;
            }
        }
    }
}
