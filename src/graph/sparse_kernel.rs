//! The compute side of [`super::sparse_moe`]: the closures its custom ops run on ggml's threads.

use std::sync::atomic::Ordering;

use super::sparse_moe::{LayerState, RouteEvent, CHUNK, N_PARTS};
use crate::ggml::rows::{axpy_row, AlignedBytes};
use crate::ggml::CustomOpCtx;

/// One thread (`custom_4d_single`): top-k of each token's gated probabilities, renormalised with the lower
/// bound on the sum, as `moe_ffn` does with ggml ops; ids to the layer's slot, then to the hook.
pub(super) fn router_op(l: &LayerState, op: &CustomOpCtx) {
    let n_expert = l.p.n_expert as usize;
    let k = l.p.n_expert_used as usize;
    let probs = op.src(0);
    let n_tokens = probs.len() / n_expert;
    let mut ids = l.ids.write().unwrap_or_else(|p| p.into_inner());
    ids.clear();
    let mut order: Vec<usize> = (0..n_expert).collect();
    for (t, (_, w)) in op.dst_rows_all().enumerate() {
        let row = &probs[t * n_expert..(t + 1) * n_expert];
        // Descending probability, lower id first on ties.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let sum: f32 = order[..k].iter().map(|&e| row[e]).sum();
        let sum = sum.max(l.p.weights_sum_min);
        for (wi, &e) in w.iter_mut().zip(&order[..k]) {
            *wi = row[e] / sum;
            ids.push(e as i32);
        }
    }
    debug_assert_eq!(ids.len(), n_tokens * k);
    if let Some(cache) = &l.shared.cache {
        cache.route(l.il, &ids);
    }
    if let Some(hook) = l.shared.hook.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        hook(&RouteEvent {
            layer: l.il,
            n_tokens,
            k,
            expert_ids: &ids,
        });
    }
}

/// Sources: `cur [n_embd, n_out]`, `weights [k, n_tokens]`, gate and up `[n_embd, n_ff, n_expert]`, optional
/// `out_ids [n_out]`. Destination: partial sums `[n_embd, n_out, N_PARTS]`, this thread's whole planes.
pub(super) fn expert_op(l: &LayerState, op: &CustomOpCtx) {
    let n_embd = l.n_embd;
    let n_ff = l.p.n_ff_exp as usize;
    let n_expert = l.p.n_expert as usize;
    let k = l.p.n_expert_used as usize;
    let n_out = op.src_ne(0)[1] as usize;
    let mut planes: Vec<(usize, &mut [f32])> = op.dst_rows_grouped(n_out).collect();
    if planes.is_empty() {
        return;
    }
    let ids = l.ids.read().unwrap_or_else(|p| p.into_inner());
    let weights = op.src(1);
    let out_ids = (op.n_srcs() > 4).then(|| op.src_i32(4));

    // Tokens grouped by expert: (output row, routing weight of that token for that expert).
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_expert];
    for t in 0..n_out {
        let r = out_ids.map_or(t, |o| o[t] as usize);
        for s in 0..k {
            let e = ids[r * k + s] as usize;
            by_expert[e].push((t, weights[r * k + s]));
        }
    }
    drop(ids);

    // Activations converted once per thread to each weight's vec_dot type.
    let quant = |q: &crate::ggml::rows::RowQuant| {
        let mut b = AlignedBytes::zeroed(q.len() * n_out);
        for t in 0..n_out {
            q.run(op.src_row(0, t), &mut b.as_mut_slice()[t * q.len()..(t + 1) * q.len()]);
        }
        b
    };
    let xg = quant(&l.gate_q);
    let xu = if l.up_q.len() == l.gate_q.len() && l.up.y_type() == l.gate.y_type() {
        None
    } else {
        Some(quant(&l.up_q))
    };
    let (xg, xu) = (xg.as_slice(), xu.as_ref().map_or(xg.as_slice(), |b| b.as_slice()));
    let (gl, ul) = (l.gate_q.len(), l.up_q.len());

    // Items (expert, chunk) of the used experts in a fixed order, dealt round-robin to the parts.
    let n_chunks = n_ff.div_ceil(CHUNK);
    let items: Vec<(usize, usize)> = (0..n_expert)
        .filter(|&e| !by_expert[e].is_empty())
        .flat_map(|e| (0..n_chunks).map(move |c| (e, c)))
        .collect();

    let gate = op.src_bytes(2);
    let up = op.src_bytes(3);
    let down = l.down_t.as_slice();
    let (wl, dl) = (l.gate.x_len(), l.down.len());
    let (uxl,) = (l.up.x_len(),);
    let mut tmp = vec![0f32; n_embd];
    let mut h: Vec<(usize, f32)> = Vec::with_capacity(n_out);
    let (mut active, mut total) = (0u64, 0u64);
    for plane in planes.chunks_mut(n_out) {
        let part = plane[0].0 / n_out;
        for (_, row) in plane.iter_mut() {
            row.fill(0.0);
        }
        for &(e, c) in items.iter().skip(part).step_by(N_PARTS) {
            let toks = &by_expert[e];
            let neurons = c * CHUNK..((c + 1) * CHUNK).min(n_ff);
            total += (toks.len() * neurons.len()) as u64;
            for j in neurons {
                let r = e * n_ff + j;
                let g_row = &gate[r * wl..(r + 1) * wl];
                let u_row = &up[r * uxl..(r + 1) * uxl];
                h.clear();
                for &(t, w) in toks {
                    let g = l.gate.dot(g_row, &xg[t * gl..(t + 1) * gl]);
                    if g > 0.0 {
                        let u = l.up.dot(u_row, &xu[t * ul..(t + 1) * ul]);
                        h.push((t, g * u * w));
                    }
                }
                if h.is_empty() {
                    continue;
                }
                active += h.len() as u64;
                let d_row = &down[r * dl..(r + 1) * dl];
                for &(t, hv) in &h {
                    axpy_row(&l.down, hv, d_row, plane[t].1, &mut tmp);
                }
            }
        }
    }
    l.shared.active.fetch_add(active, Ordering::Relaxed);
    l.shared.total.fetch_add(total, Ordering::Relaxed);
}

/// `parts [n_embd, n_out, N_PARTS]` -> `[n_embd, n_out]`, summed in part order (deterministic).
pub(super) fn reduce_op(op: &CustomOpCtx) {
    let parts = op.src(0);
    let [n_embd, n_out, ..] = op.src_ne(0);
    let plane = (n_embd * n_out) as usize;
    for (t, row) in op.dst_rows() {
        let off = t * n_embd as usize;
        row.copy_from_slice(&parts[off..off + n_embd as usize]);
        for p in 1..N_PARTS {
            let src = &parts[p * plane + off..p * plane + off + n_embd as usize];
            for (o, s) in row.iter_mut().zip(src) {
                *o += s;
            }
        }
    }
}
