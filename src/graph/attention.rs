//! Multi-head attention with grouped KV heads, a KV cache and a host-built mask: llama.cpp's `build_attn`
//! (`build_attn_mha`, the non-flash path) for one layer.
//!
//! The new K and V rows are stored into the cache first (`set_rows` at the slots the cache chose), then the
//! queries attend over the first `n_kv` cache cells; which cells a query may see (causal, sliding window, empty)
//! is entirely the mask's business, so the same code serves full-length and ring-buffer caches.

use crate::ggml::{Context, Graph, Prec, RopeParams, Tensor};

/// The attention projections of one layer (no biases in SmallThinker).
#[derive(Clone, Copy)]
pub struct AttnWeights<'a> {
    /// `[n_embd, n_embd_head * n_head]`
    pub wq: Tensor<'a>,
    /// `[n_embd, n_embd_head * n_head_kv]`
    pub wk: Tensor<'a>,
    /// `[n_embd, n_embd_head * n_head_kv]`
    pub wv: Tensor<'a>,
    /// `[n_embd_head * n_head, n_embd]`
    pub wo: Tensor<'a>,
}

/// One layer's KV cache: a row of `n_embd_head * n_head_kv` values per cell.
#[derive(Clone, Copy)]
pub struct KvLayer<'a> {
    /// `[n_embd_k_gqa, kv_size]`
    pub k: Tensor<'a>,
    /// `[n_embd_v_gqa, kv_size]`
    pub v: Tensor<'a>,
}

/// Per-evaluation inputs shared by every layer with the same kind of cache.
#[derive(Clone, Copy)]
pub struct AttnInputs<'a> {
    /// I32 `[n_tokens]`: token positions (RoPE).
    pub pos: Tensor<'a>,
    /// I64 `[n_tokens]`: the cache cell each new token's K/V goes to.
    pub kv_idxs: Tensor<'a>,
    /// F32 `[n_kv, n_tokens]`: 0 where a query may see a cell, -inf elsewhere.
    pub kq_mask: Tensor<'a>,
}

/// How one layer attends.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub n_head: i64,
    pub n_head_kv: i64,
    pub n_embd_head: i64,
    /// RoPE on Q and K, or None for a NoPE layer.
    pub rope: Option<RopeParams>,
    /// Multiplies K·Q before the softmax (`1/sqrt(n_embd_head)`).
    pub kq_scale: f32,
}

/// `cur [n_embd, n_tokens]` (already normed) -> `[n_embd, n_tokens]`, the attention output after `wo`.
/// Expands the cache stores into `gf` first, so that they run before the cache is read.
#[allow(clippy::too_many_arguments)] // ctx, graph, input, weights, cache, inputs, params, layer: all distinct
pub fn attention<'a>(
    ctx: &'a Context,
    gf: &mut Graph<'a>,
    cur: Tensor<'a>,
    w: &AttnWeights<'a>,
    kv: KvLayer<'a>,
    inp: &AttnInputs<'a>,
    p: &AttnParams,
    il: i32,
) -> Tensor<'a> {
    let n_tokens = cur.ne()[1];
    let (hd, n_head, n_head_kv) = (p.n_embd_head, p.n_head, p.n_head_kv);
    let n_kv = inp.kq_mask.ne()[0];

    let q = ctx.reshape_3d(ctx.mul_mat(w.wq, cur), hd, n_head, n_tokens); // [hd, n_head, n_tokens]
    let k = ctx.reshape_3d(ctx.mul_mat(w.wk, cur), hd, n_head_kv, n_tokens); // [hd, n_head_kv, n_tokens]
    let v = ctx.mul_mat(w.wv, cur); // [hd * n_head_kv, n_tokens]
    let (q, k) = match p.rope {
        Some(rope) => (
            ctx.rope_ext(q, inp.pos, None, rope),
            ctx.rope_ext(k, inp.pos, None, rope),
        ),
        None => (q, k),
    };
    let q = q.format_name("Qcur", il);
    let k = k.format_name("Kcur", il);
    let v = v.format_name("Vcur", il);

    // Store the new rows, then read the cache back (the stores are earlier nodes of the graph).
    let k_rows = ctx.reshape_2d(k, hd * n_head_kv, n_tokens);
    gf.build_forward_expand(ctx.set_rows(kv.k, k_rows, inp.kv_idxs));
    gf.build_forward_expand(ctx.set_rows(kv.v, v, inp.kv_idxs));
    let cell = |t: Tensor<'a>| {
        let nb = t.nb();
        // [hd, n_head_kv, n_kv] over the first n_kv cells, then [hd, n_kv, n_head_kv]
        let heads = ctx.view_3d(t, [hd, n_head_kv, n_kv], nb[1] / n_head_kv as usize, nb[1], 0);
        ctx.permute(heads, [0, 2, 1, 3])
    };
    let k_cache = cell(kv.k); // [hd, n_kv, n_head_kv]
    let v_cache = ctx.cont(ctx.transpose(cell(kv.v))); // [n_kv, hd, n_head_kv]

    let q = ctx.permute(q, [0, 2, 1, 3]); // [hd, n_tokens, n_head]
                                          // GQA: mul_mat broadcasts KV head h / (n_head / n_head_kv) over the query heads.
    let kq = ctx.mul_mat(k_cache, q).format_name("kq", il); // [n_kv, n_tokens, n_head]
    ctx.mul_mat_set_prec(kq, Prec::F32);
    let kq = ctx
        .soft_max_ext(kq, Some(inp.kq_mask), p.kq_scale, 0.0)
        .format_name("kq_soft_max", il);
    let kqv = ctx.mul_mat(v_cache, kq); // [hd, n_tokens, n_head]
    let cur = ctx.cont(ctx.permute(kqv, [0, 2, 1, 3])); // [hd, n_head, n_tokens]
    let cur = ctx.reshape_2d(cur, hd * n_head, n_tokens).format_name("kqv_out", il);
    ctx.mul_mat(w.wo, cur).format_name("attn_out", il) // [n_embd, n_tokens]
}
