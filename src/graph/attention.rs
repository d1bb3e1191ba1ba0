//! Multi-head attention with grouped KV heads, a KV cache and a host-built mask: llama.cpp's `build_attn`
//! (`build_attn_mha`, the non-flash path) for one layer.
//!
//! The new K and V rows are stored into the cache first (`set_rows` at the slots the cache chose), then the
//! queries attend over the first `n_kv` cache cells. Which cells a query may see (causal, sliding window, empty)
//! comes either from the positions the cells hold ([`KvRead::Cells`], the custom op of [`super::attn_op`], the
//! default) or from a host-built mask ([`KvRead::Mask`], llama.cpp's non-flash path with `soft_max_ext`, kept as
//! the reference the op is tested against). Both serve full-length and ring-buffer caches alike.
//!
//! A batch may hold rows of several sequences ([`SeqAttn`], the server's decode steps): the projections and
//! `wo` run over all rows, the store and read run per sequence against its own cache, on views of its rows.

use super::attn_op::{attn_cells, CellAttnParams};
use super::linear::linear;
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

/// Per-evaluation inputs of one sequence, shared by every layer with the same kind of cache.
#[derive(Clone, Copy)]
pub struct AttnInputs<'a> {
    /// I32 `[n_tokens]`: the sequence's token positions (which cells each query sees).
    pub pos: Tensor<'a>,
    /// I64 `[n_tokens]`: the cache cell each new token's K/V goes to.
    pub kv_idxs: Tensor<'a>,
    /// What a query may see.
    pub read: KvRead<'a>,
}

/// How the attention learns which cells each query sees.
#[derive(Clone, Copy)]
pub enum KvRead<'a> {
    /// F32 `kq_mask [n_kv, n_tokens]`: 0 where a query may see a cell, -inf elsewhere (`soft_max_ext` path).
    Mask(Tensor<'a>),
    /// The same mask in F16, for ggml's `flash_attn_ext`.
    FlashMask(Tensor<'a>),
    /// I32 `cell_pos [n_kv]`: the position each cell holds (-1: empty), and the pool's sliding window.
    Cells { cell_pos: Tensor<'a>, n_swa: Option<u32> },
}

/// Which attention implementation a session builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttnKernel {
    /// The custom op over cell positions (no mask, V read in place).
    #[default]
    Cells,
    /// llama.cpp's `mul_mat` + `soft_max_ext` with a mask, V transposed per layer.
    SoftMax,
    /// ggml's `flash_attn_ext` with an F16 mask (llama.cpp's `-fa` path; for speed comparisons).
    Flash,
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

/// One sequence's rows of a batch and what they attend to: its own cache and cells.
#[derive(Clone, Copy)]
pub struct SeqAttn<'a> {
    /// First row of the batch that belongs to this sequence.
    pub first: i64,
    /// Its rows (consecutive from `first`).
    pub n_tokens: i64,
    pub kv: KvLayer<'a>,
    /// Its inputs; `pos` holds the positions of its rows only.
    pub inp: AttnInputs<'a>,
}

/// `cur [n_embd, n_tokens]` (already normed) -> `[n_embd, n_tokens]`, the attention output after `wo`.
/// `pos` I32 `[n_tokens]` are the positions of all rows (RoPE); `seqs` split the rows into sequences, each
/// stored into and read from its own cache. The projections and `wo` run once over all rows (weights read once
/// per batch), only the cache store and read are per sequence; one sequence covering every row is the plain
/// single-sequence graph (no views). Expands the cache stores into `gf` first, so that they run before the
/// cache is read.
#[allow(clippy::too_many_arguments)] // ctx, graph, input, weights, positions, sequences, params, layer: all distinct
pub fn attention<'a>(
    ctx: &'a Context,
    gf: &mut Graph<'a>,
    cur: Tensor<'a>,
    w: &AttnWeights<'a>,
    pos: Tensor<'a>,
    seqs: &[SeqAttn<'a>],
    p: &AttnParams,
    il: i32,
) -> Tensor<'a> {
    let n_tokens = cur.ne()[1];
    let (hd, n_head, n_head_kv) = (p.n_embd_head, p.n_head, p.n_head_kv);
    // The callers build the split; a wrong one is a bug in the graph code, not bad input.
    let covered = seqs
        .iter()
        .try_fold(0, |next, s| (s.first == next).then_some(next + s.n_tokens));
    assert!(
        covered == Some(n_tokens) && !seqs.is_empty(),
        "attention: the sequences do not cover the {n_tokens} rows in order"
    );

    let q = ctx.reshape_3d(linear(ctx, w.wq, cur), hd, n_head, n_tokens); // [hd, n_head, n_tokens]
    let k = ctx.reshape_3d(linear(ctx, w.wk, cur), hd, n_head_kv, n_tokens); // [hd, n_head_kv, n_tokens]
    let v = linear(ctx, w.wv, cur); // [hd * n_head_kv, n_tokens]
    let (q, k) = match p.rope {
        Some(rope) => (ctx.rope_ext(q, pos, None, rope), ctx.rope_ext(k, pos, None, rope)),
        None => (q, k),
    };
    let q = q.format_name("Qcur", il);
    let k = k.format_name("Kcur", il);
    let v = v.format_name("Vcur", il);

    let kqv = match seqs {
        [s] => attend(ctx, gf, q, k, v, s, p, il),
        _ => {
            // Each sequence's rows as views (contiguous: whole token slices), attended against its own cache,
            // then the outputs joined again in row order.
            let rows = |t: Tensor<'a>, s: &SeqAttn<'a>| {
                let nb = t.nb();
                ctx.view_3d(
                    t,
                    [t.ne()[0], t.ne()[1], s.n_tokens],
                    nb[1],
                    nb[2],
                    s.first as usize * nb[2],
                )
            };
            let outs = seqs.iter().map(|s| {
                let nb = v.nb();
                let vs = ctx.view_2d(v, v.ne()[0], s.n_tokens, nb[1], s.first as usize * nb[1]);
                attend(ctx, gf, rows(q, s), rows(k, s), vs, s, p, il)
            });
            outs.reduce(|acc, o| ctx.concat(acc, o, 2))
                .expect("at least two sequences")
        }
    };
    let cur = ctx.reshape_2d(kqv, hd * n_head, n_tokens).format_name("kqv_out", il);
    linear(ctx, w.wo, cur).format_name("attn_out", il) // [n_embd, n_tokens]
}

/// One sequence: `q [hd, n_head, n]`, `k [hd, n_head_kv, n]`, `v [hd * n_head_kv, n]` -> `[hd, n_head, n]`.
/// Stores K and V into the sequence's cache, then reads it back (the stores are earlier nodes of the graph).
#[allow(clippy::too_many_arguments)] // ctx, graph, q, k, v, sequence, params, layer: all distinct
fn attend<'a>(
    ctx: &'a Context,
    gf: &mut Graph<'a>,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    s: &SeqAttn<'a>,
    p: &AttnParams,
    il: i32,
) -> Tensor<'a> {
    let (hd, n_head, n_head_kv) = (p.n_embd_head, p.n_head, p.n_head_kv);
    let (kv, inp) = (s.kv, &s.inp);
    let k_rows = ctx.reshape_2d(k, hd * n_head_kv, s.n_tokens);
    let k_stored = ctx.set_rows(kv.k, k_rows, inp.kv_idxs);
    let v_stored = ctx.set_rows(kv.v, v, inp.kv_idxs);
    gf.build_forward_expand(k_stored);
    gf.build_forward_expand(v_stored);
    match inp.read {
        KvRead::Mask(kq_mask) => attn_masked(ctx, q, kv, kq_mask, p, il),
        KvRead::FlashMask(kq_mask) => {
            let n_kv = kq_mask.ne()[0];
            let (k, v) = (cache_heads(ctx, kv.k, p, n_kv), cache_heads(ctx, kv.v, p, n_kv));
            let q = ctx.permute(q, [0, 2, 1, 3]); // [hd, n_tokens, n_head]
            let out = ctx.flash_attn_ext(q, k, v, Some(kq_mask), p.kq_scale, 0.0, 0.0); // [hd, n_head, n_tokens]
            ctx.flash_attn_ext_set_prec(out, Prec::F32);
            out
        }
        KvRead::Cells { cell_pos, n_swa } => {
            let cp = CellAttnParams {
                n_head,
                n_head_kv,
                n_embd_head: hd,
                kq_scale: p.kq_scale,
                n_swa,
            };
            // The stores' results (views of the cache) as sources: the op depends on them.
            attn_cells(ctx, q, k_stored, v_stored, cell_pos, inp.pos, &cp) // [hd, n_head, n_tokens]
        }
    }
}

/// `q [hd, n_head, n_tokens]` over the first `n_kv` cells with a mask -> `[hd, n_head, n_tokens]`.
fn attn_masked<'a>(
    ctx: &'a Context,
    q: Tensor<'a>,
    kv: KvLayer<'a>,
    kq_mask: Tensor<'a>,
    p: &AttnParams,
    il: i32,
) -> Tensor<'a> {
    let n_kv = kq_mask.ne()[0];
    let k_cache = cache_heads(ctx, kv.k, p, n_kv); // [hd, n_kv, n_head_kv]
    let v_cache = ctx.cont(ctx.transpose(cache_heads(ctx, kv.v, p, n_kv))); // [n_kv, hd, n_head_kv]

    let q = ctx.permute(q, [0, 2, 1, 3]); // [hd, n_tokens, n_head]
                                          // GQA: mul_mat broadcasts KV head h / (n_head / n_head_kv) over the query heads.
    let kq = ctx.mul_mat(k_cache, q).format_name("kq", il); // [n_kv, n_tokens, n_head]
    ctx.mul_mat_set_prec(kq, Prec::F32);
    let kq = ctx
        .soft_max_ext(kq, Some(kq_mask), p.kq_scale, 0.0)
        .format_name("kq_soft_max", il);
    let kqv = ctx.mul_mat(v_cache, kq); // [hd, n_tokens, n_head]
    ctx.cont(ctx.permute(kqv, [0, 2, 1, 3])) // [hd, n_head, n_tokens]
}

/// The first `n_kv` cells of a cache tensor as `[hd, n_kv, n_head_kv]` (a view).
fn cache_heads<'a>(ctx: &'a Context, t: Tensor<'a>, p: &AttnParams, n_kv: i64) -> Tensor<'a> {
    let (hd, n_head_kv) = (p.n_embd_head, p.n_head_kv);
    let nb = t.nb();
    // [hd, n_head_kv, n_kv], then [hd, n_kv, n_head_kv]
    let heads = ctx.view_3d(t, [hd, n_head_kv, n_kv], nb[1] / n_head_kv as usize, nb[1], 0);
    ctx.permute(heads, [0, 2, 1, 3])
}
