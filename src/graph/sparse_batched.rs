//! The batched expert op on interleaved Q4_0 experts (ggml's repacked tensors, or the expert cache's interleaved
//! slots), for batches of more than one token: prompts and the server's multi-sequence decode steps.
//!
//! ggml's repacked mul_mat_id runs a GEMV per (token, expert) row, so a prompt reads each expert's weights once
//! per token routed to it. Here the `k * n_out` (token, slot) rows are sorted by expert, and each expert's rows
//! go through our GEMM (`ggml::q4x8_gemm`, about twice ggml's) over chunks of [`CHUNK`] weight rows that stay in
//! cache: the weights are read once per expert and thread. The GEMM gives each row exactly what ggml's GEMV
//! gives it (`q4x8_gemm::tests::gemm_equals_ggml_gemv_per_token`), so the result equals the per-token path bit
//! for bit, and a run of one row simply takes the GEMV.
//!
//! Destination rows are in sorted order, so each expert's rows are one range; threads claim whole ranges
//! (`CustomOpCtx::claim_row_ranges`), the longest and the shortest alternately, so that every expert's weights
//! are read by one thread only, a long run's compute overlaps short runs' weight reads, and the threads finish
//! together. No row's result depends on the split. [`sorted_sum_op`] weights and sums
//! each token's k rows in slot order.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;

use super::expert_cache::ExpertCache;
use super::sparse_moe::LayerState;
use super::sparse_native::{interleaved_expert, Interleaved, Scratch};
use crate::ggml::q4x8::ROWS;
use crate::ggml::q4x8_gemm::{gemm, PackedRows};
use crate::ggml::rows::{AlignedBytes, RowQuant};
use crate::ggml::CustomOpCtx;

/// Interleaved weight rows per GEMM call: 64 rows of a 2560-wide Q4_0 matrix are 90 KiB, which stay in L2
/// while every activation group of the run passes over them.
const CHUNK: usize = 64;

/// The (token, slot) pairs `t * k + s` of the `n_out` output tokens, sorted by expert (stable). `ids` holds
/// `[n_tokens][k]` router choices, `out_ids` maps output tokens to router rows (None: the identity).
pub(super) fn expert_order(ids: &[i32], out_ids: Option<&[i32]>, n_out: usize, k: usize, n_expert: usize) -> Vec<u32> {
    let expert = |p: usize| {
        let (t, s) = (p / k, p % k);
        let r = out_ids.map_or(t, |o| o[t] as usize);
        ids[r * k + s] as usize
    };
    let mut start = vec![0usize; n_expert + 1];
    for p in 0..n_out * k {
        start[expert(p) + 1] += 1;
    }
    for e in 0..n_expert {
        start[e + 1] += start[e];
    }
    let mut order = vec![0u32; n_out * k];
    for p in 0..n_out * k {
        let e = expert(p);
        order[start[e]] = p as u32;
        start[e] += 1;
    }
    order
}

/// Sources: `cur [n_embd, n_out]`, gate and up `[n_embd, n_ff, n_expert]`, down `[n_ff, n_embd, n_expert]`
/// (interleaved), optional `out_ids [n_out]`. Destination `[n_embd, k * n_out]`: row i = the unweighted output
/// of pair `expert_order(..)[i]`.
/// `h_q` quantises the hidden vector of the GEMV tail.
pub(super) fn batched_expert_op(
    l: &LayerState,
    (x8, h_q): (&Interleaved, &RowQuant),
    cache: Option<&ExpertCache>,
    op: &CustomOpCtx,
) {
    let (n_embd, n_ff, k) = (l.n_embd, l.p.n_ff_exp as usize, l.p.n_expert_used as usize);
    let n_out = op.src_ne(0)[1] as usize;
    let out_ids = (op.n_srcs() > 4).then(|| op.src_i32(4));
    let ids = l.ids.read().unwrap_or_else(|p| p.into_inner());
    let order = expert_order(&ids, out_ids, n_out, k, l.p.n_expert as usize);
    let expert_of = |i: usize| {
        let (t, s) = (order[i] as usize / k, order[i] as usize % k);
        ids[out_ids.map_or(t, |o| o[t] as usize) * k + s] as u32
    };
    // The expert runs (rows a..b of one expert): resident experts first (a cache's missing ones last, so that
    // their reads can finish meanwhile), then by length, longest first.
    let mut runs: Vec<(bool, Reverse<usize>, usize)> = Vec::new();
    // (first row, expert) of each run, by first row.
    let mut run_expert: Vec<(usize, u32)> = Vec::new();
    let mut a = 0;
    while a < order.len() {
        let e = expert_of(a);
        let mut b = a + 1;
        while b < order.len() && expert_of(b) == e {
            b += 1;
        }
        let waiting = cache.is_some_and(|c| !c.is_ready(l.il, e));
        runs.push((waiting, Reverse(b - a), a));
        run_expert.push((a, e));
        a = b;
    }
    drop(ids);
    runs.sort_unstable();
    // Claimed longest and shortest alternately (resident and waiting each): one- and two-row runs are a weight
    // read each for little work, so while one thread computes a long run the other reads short ones, where
    // longest-first left both threads reading at the end. 21B prompt of 128, two sittings of alternating runs:
    // 65.1 -> 68.0 and 47.8 -> 50.0 tok/s (medians; faster at every rank); the 4B within noise (297 -> 304).
    let split = runs.partition_point(|r| !r.0);
    let ranges = [&runs[..split], &runs[split..]]
        .into_iter()
        .flat_map(ends_alternately)
        .map(|&(_, Reverse(m), a)| a..a + m)
        .collect();

    let mut s = BatchScratch::new(x8, n_embd, n_ff, l.gate_q.len());
    let (mut active, mut total) = (0u64, 0u64);
    let token = |i: usize| order[i] as usize / k;
    for (rows, y) in op.claim_row_ranges(ranges) {
        // The ranges may be another thread's order of the same runs: the expert comes from the rows.
        let e = match run_expert.binary_search_by_key(&rows.start, |r| r.0) {
            Ok(i) => run_expert[i].1 as usize,
            Err(_) => unreachable!("every claimed range is one of the runs"),
        };
        let guard;
        let [gate, up, down]: [&[u8]; 3] = match cache {
            Some(c) => match c.get(l.il, e as u32, op.ith() == 0) {
                Some(g) => {
                    guard = g;
                    guard.matrices()
                }
                // The read failed: the session reports the error and discards this evaluation.
                None => {
                    y.fill(0.0);
                    continue;
                }
            },
            None => {
                let (g, d) = (x8.gate_up.w_len(n_ff), x8.down.w_len(n_embd));
                [
                    &op.src_bytes(1)[e * g..(e + 1) * g],
                    &op.src_bytes(2)[e * g..(e + 1) * g],
                    &op.src_bytes(3)[e * d..(e + 1) * d],
                ]
            }
        };
        if rows.len() > 1 {
            let xs = rows.clone().map(|i| op.src_row(0, token(i)));
            active += s.gemm_rows(x8, [gate, up, down], xs);
            total += (rows.len() * n_ff) as u64;
            y.copy_from_slice(&s.y[..rows.len() * n_embd]);
        } else {
            // One row: the GEMV, which gives what the GEMM gives it.
            l.gate_q.run(op.src_row(0, token(rows.start)), s.xq.as_mut_slice());
            let scratch = Scratch {
                g: &mut s.g[..n_ff],
                h: &mut s.h[..n_ff],
                hq: &mut s.hq,
            };
            let xq = s.xq.as_slice();
            active += interleaved_expert(x8, [gate, up, down], [xq, xq], h_q, scratch, y);
            total += n_ff as u64;
        }
    }
    l.shared.active.fetch_add(active, Ordering::Relaxed);
    l.shared.total.fetch_add(total, Ordering::Relaxed);
}

/// Per-thread buffers of [`batched_expert_op`], grown to the largest run.
struct BatchScratch {
    n_embd: usize,
    n_ff: usize,
    /// The run's activations and hidden vectors, packed for the GEMM; gate and up outputs `[rows][n_ff]`, and
    /// the down outputs `[rows][n_embd]`.
    xp: PackedRows,
    hp: PackedRows,
    g: Vec<f32>,
    h: Vec<f32>,
    y: Vec<f32>,
    /// One quantised activation row and hidden vector for a one-row run.
    xq: AlignedBytes,
    hq: AlignedBytes,
}

impl BatchScratch {
    fn new(x8: &Interleaved, n_embd: usize, n_ff: usize, x_len: usize) -> BatchScratch {
        BatchScratch {
            n_embd,
            n_ff,
            xp: PackedRows::new(n_embd),
            hp: PackedRows::new(n_ff),
            g: vec![0.0; n_ff],
            h: vec![0.0; n_ff],
            y: Vec::new(),
            xq: AlignedBytes::zeroed(x_len),
            hq: AlignedBytes::zeroed(x8.down.x_len()),
        }
    }

    /// One expert on the activation rows `xs`: `y` gets the unweighted outputs. Returns the active neurons.
    fn gemm_rows<'a>(
        &mut self,
        x8: &Interleaved,
        [gate, up, down]: [&[u8]; 3],
        xs: impl ExactSizeIterator<Item = &'a [f32]>,
    ) -> u64 {
        let (n_embd, n_ff, n) = (self.n_embd, self.n_ff, xs.len());
        self.xp.pack(xs);
        self.g.resize(n * n_ff, 0.0);
        self.h.resize(n * n_ff, 0.0);
        let gu_group = x8.gate_up.w_len(ROWS);
        for c in (0..n_ff).step_by(CHUNK) {
            let m = CHUNK.min(n_ff - c);
            let w = c / ROWS * gu_group..(c + m) / ROWS * gu_group;
            gemm(&gate[w.clone()], m, &self.xp, &mut self.g[c..], n_ff);
            gemm(&up[w], m, &self.xp, &mut self.h[c..], n_ff);
        }
        let mut active = 0;
        for (hj, &gj) in self.h.iter_mut().zip(&self.g) {
            *hj = if gj > 0.0 {
                active += 1;
                gj * *hj
            } else {
                0.0
            };
        }
        self.hp.pack(self.h.chunks_exact(n_ff));
        self.y.resize(n * n_embd, 0.0);
        let d_group = x8.down.w_len(ROWS);
        for c in (0..n_embd).step_by(CHUNK) {
            let m = CHUNK.min(n_embd - c);
            let w = &down[c / ROWS * d_group..(c + m) / ROWS * d_group];
            gemm(w, m, &self.hp, &mut self.y[c..], n_embd);
        }
        active
    }
}

/// `v[0], v[n-1], v[1], v[n-2], ...`: the first and the last of what is left, alternately.
fn ends_alternately<T>(v: &[T]) -> impl Iterator<Item = &T> {
    let n = v.len();
    (0..n).map(move |i| &v[if i % 2 == 0 { i / 2 } else { n - 1 - i / 2 }])
}

/// Sources: `y [n_embd, k * n_out]` from [`batched_expert_op`] (sorted rows), `weights [k, n_tokens]`, optional
/// `out_ids [n_out]`. Destination `[n_embd, n_out]`: each token's k rows weighted and summed in slot order, as
/// `sparse_native::weighted_sum_op` sums them.
pub(super) fn sorted_sum_op(l: &LayerState, op: &CustomOpCtx) {
    let k = l.p.n_expert_used as usize;
    let y = op.src(0);
    let w = op.src(1);
    let n_embd = op.src_ne(0)[0] as usize;
    let n_out = op.dst_ne()[1] as usize;
    let out_ids = (op.n_srcs() > 2).then(|| op.src_i32(2));
    let ids = l.ids.read().unwrap_or_else(|p| p.into_inner());
    let order = expert_order(&ids, out_ids, n_out, k, l.p.n_expert as usize);
    drop(ids);
    let mut pos = vec![0usize; order.len()];
    for (i, &p) in order.iter().enumerate() {
        pos[p as usize] = i;
    }
    for (t, out) in op.dst_rows() {
        let r = out_ids.map_or(t, |o| o[t] as usize);
        out.fill(0.0);
        for s in 0..k {
            let ws = w[r * k + s];
            let i = pos[t * k + s];
            for (o, &v) in out.iter_mut().zip(&y[i * n_embd..(i + 1) * n_embd]) {
                *o += ws * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ends_alternately;

    #[test]
    fn ends_alternately_takes_every_item_once_from_both_ends() {
        let order = |n: usize| {
            ends_alternately(&(0..n).collect::<Vec<_>>())
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(order(0), Vec::<usize>::new());
        assert_eq!(order(1), [0]);
        assert_eq!(order(4), [0, 3, 1, 2]);
        assert_eq!(order(5), [0, 4, 1, 3, 2]);
    }
}
