//! Attention over the cache cells as one custom op: for each query token and head, softmax(scale · K·q) · V
//! over the cells whose position the query may see (causal, within the sliding window), with an online softmax.
//!
//! Unlike the `soft_max_ext` path it needs no `[n_kv, n_tokens]` mask: the visibility of a cell comes from the
//! position it holds (`cell_pos`, -1 when empty) and the query's position, so a ring buffer that has wrapped
//! around needs nothing special. K and V are read in the cache's own layout (a row of `n_embd_head * n_head_kv`
//! per cell), so V is never transposed. Work items are blocks of query rows that share a KV head:
//! its heads (GQA) over a few consecutive tokens score each K row and accumulate each V row together, so each
//! is converted once per block; a row's scores of cells it may not see (a later token's, one past the window's
//! edge) are masked to -inf.

use crate::ggml::simd::{attn_accumulate, attn_scores, exp_shifted_sum, prefetch_rows, CacheRows};
use crate::ggml::{Context, CustomOpCtx, Tensor};
use crate::gguf::GgmlType;

/// Cells scored per online-softmax step: the running max and sum are rescaled once per tile.
const TILE: usize = 64;

/// The shape and rule of one layer's attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CellAttnParams {
    pub n_head: i64,
    pub n_head_kv: i64,
    pub n_embd_head: i64,
    /// Multiplies K·q before the softmax.
    pub kq_scale: f32,
    /// Sliding window: a key at `p_k` is hidden from a query at `p_q` when `p_q - p_k >= n_swa`.
    pub n_swa: Option<u32>,
}

/// True if a query at `p_q` sees a cell holding `p_k` (-1: empty), as in llama.cpp's masks.
#[inline]
pub fn visible(p_k: i64, p_q: i64, n_swa: Option<u32>) -> bool {
    p_k >= 0 && p_k <= p_q && n_swa.is_none_or(|w| p_q - p_k < i64::from(w))
}

/// `q [hd, n_head, n_tokens]` (F32, RoPE applied), `k`/`v [hd * n_head_kv, kv_size]` (F16 or F32, the same type),
/// `cell_pos` I32 `[n_kv]` (`n_kv <= kv_size`, the cells read), `q_pos` I32 `[n_tokens]` ->
/// `[hd, n_head, n_tokens]`. Pass the `set_rows` results as `k`/`v` so the stores run first.
pub fn attn_cells<'a>(
    ctx: &'a Context,
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    cell_pos: Tensor<'a>,
    q_pos: Tensor<'a>,
    p: &CellAttnParams,
) -> Tensor<'a> {
    let (hd, n_head, n_head_kv) = (p.n_embd_head, p.n_head, p.n_head_kv);
    let n_tokens = q.ne()[2];
    assert!(
        hd > 0 && n_head_kv > 0 && n_head % n_head_kv == 0,
        "attn_cells: {n_head} heads over {n_head_kv} KV heads"
    );
    assert!(
        q.ty() == GgmlType::F32 && q.ne() == [hd, n_head, n_tokens, 1],
        "attn_cells: q {q:?} is not F32 [{hd}, {n_head}, n_tokens]"
    );
    for t in [k, v] {
        assert!(
            matches!(t.ty(), GgmlType::F16 | GgmlType::F32) && t.ty() == k.ty() && t.ne()[0] == hd * n_head_kv,
            "attn_cells: cache {t:?} is not F16/F32 [{}, kv_size] like k",
            hd * n_head_kv
        );
        assert!(
            t.ne()[1] == k.ne()[1] && t.ne()[2] == 1 && t.ne()[3] == 1,
            "attn_cells: cache {t:?} is not 2-D"
        );
    }
    let n_kv = cell_pos.ne()[0];
    assert!(
        cell_pos.ty() == GgmlType::I32 && cell_pos.nelements() == n_kv && n_kv <= k.ne()[1],
        "attn_cells: cell_pos {cell_pos:?} is not I32 [n_kv <= {}]",
        k.ne()[1]
    );
    assert!(
        q_pos.ty() == GgmlType::I32 && q_pos.nelements() == n_tokens,
        "attn_cells: q_pos {q_pos:?} is not I32 [{n_tokens}]"
    );
    let p = *p;
    // Head-major rows, so that ggml's contiguous split gives each thread whole heads over every token: split by
    // token, a causal prompt's later half (one thread's share) has three times the cells of the first.
    let heads = ctx.custom_4d(
        "attn_cells",
        [hd, n_tokens, n_head, 1],
        &[q, k, v, cell_pos, q_pos],
        move |op| run(op, &p),
    ); // [hd, n_tokens, n_head]
    if n_tokens == 1 {
        return ctx.reshape_3d(heads, hd, n_head, 1);
    }
    ctx.cont(ctx.permute(heads, [0, 2, 1, 3])) // [hd, n_head, n_tokens]
}

/// Query rows attended together at most (whole (token, KV head) groups, at least one): a block's rows share each
/// K and V row of a tile, converted from the cache once, so a prompt converts each cell once per block rather
/// than once per token.
const BLOCK_ROWS: usize = 32;

/// Per-thread scratch for one block of query rows.
struct Scratch {
    q: Vec<f32>,
    p_q: Vec<i64>,
    s: Vec<f32>,
    acc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    cells: Vec<usize>,
    /// Where each of `cells`' rows of the KV head starts in the cache.
    starts: Vec<usize>,
    /// The same for the next tile's cells, fetched into cache during this tile.
    ahead: Vec<usize>,
}

fn cache<'s>(op: &'s CustomOpCtx, i: usize) -> CacheRows<'s> {
    match op.src_ty(i) {
        GgmlType::F16 => CacheRows::F16(op.src_f16(i)),
        _ => CacheRows::F32(op.src(i)),
    }
}

fn run(op: &CustomOpCtx, p: &CellAttnParams) {
    let hd = p.n_embd_head as usize;
    let n_head = p.n_head as usize;
    let g = n_head / p.n_head_kv as usize;
    let rows_max = BLOCK_ROWS.max(g);
    let q_all = op.src(0);
    let (k, v) = (cache(op, 1), cache(op, 2));
    let cell_pos = op.src_i32(3);
    let q_pos = op.src_i32(4);
    let mut sc = Scratch {
        q: vec![0.0; rows_max * hd],
        p_q: vec![0; rows_max],
        s: vec![0.0; rows_max * TILE],
        acc: vec![0.0; rows_max * hd],
        m: vec![0.0; rows_max],
        l: vec![0.0; rows_max],
        cells: Vec::with_capacity(TILE),
        starts: Vec::with_capacity(TILE),
        ahead: Vec::with_capacity(TILE),
    };
    let ctx = Item {
        hd,
        row_len: hd * p.n_head_kv as usize,
        n_swa: p.n_swa,
        scale: p.kq_scale,
    };
    // This thread's rows (one per (head, token), head-major), ordered by the KV head their heads share, then
    // token: a block is then a run of consecutive tokens of one KV head.
    let n_tokens = q_pos.len();
    let token = |r: usize| r % n_tokens;
    let kv_head = |r: usize| r / n_tokens / g;
    // The row of q [hd, n_head, n_tokens] for destination row r.
    let q_row = |r: usize| token(r) * n_head + r / n_tokens;
    let mut rows: Vec<(usize, &mut [f32])> = op.dst_rows().collect();
    rows.sort_by_key(|&(r, _)| (kv_head(r), token(r), r));
    let mut rest = rows.as_mut_slice();
    while let Some(&(r0, _)) = rest.first() {
        let kh = kv_head(r0);
        // Whole (token, KV head) groups while they fit, and always the first.
        let mut n = 0;
        while n < rest.len() && kv_head(rest[n].0) == kh {
            let t = token(rest[n].0);
            let len = rest[n..]
                .iter()
                .take_while(|(r, _)| token(*r) == t && kv_head(*r) == kh)
                .count();
            if n > 0 && n + len > rows_max {
                break;
            }
            n += len;
        }
        let (block, tail) = rest.split_at_mut(n);
        for (j, (r, _)) in block.iter().enumerate() {
            let qr = q_row(*r);
            sc.q[j * hd..(j + 1) * hd].copy_from_slice(&q_all[qr * hd..(qr + 1) * hd]);
            sc.p_q[j] = i64::from(q_pos[token(*r)]);
        }
        attend(&ctx, kh * hd, k, v, cell_pos, &mut sc, block);
        rest = tail;
    }
}

struct Item {
    hd: usize,
    row_len: usize,
    n_swa: Option<u32>,
    scale: f32,
}

/// Attention of one block of query rows (`sc.q`, `sc.p_q` hold their queries and positions) over the KV head at
/// offset `off` of a cache row, written to `out`.
fn attend(
    it: &Item,
    off: usize,
    k: CacheRows,
    v: CacheRows,
    cell_pos: &[i32],
    sc: &mut Scratch,
    out: &mut [(usize, &mut [f32])],
) {
    let hd = it.hd;
    let nr = out.len();
    let q = &mut sc.q[..nr * hd];
    q.iter_mut().for_each(|x| *x *= it.scale);
    let p_q = &sc.p_q[..nr];
    let p_min = p_q.iter().copied().min().unwrap_or(0);
    let p_max = p_q.iter().copied().max().unwrap_or(-1);
    let acc = &mut sc.acc[..nr * hd];
    acc.fill(0.0);
    let (m, l) = (&mut sc.m[..nr], &mut sc.l[..nr]);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    for (tile, pos) in cell_pos.chunks(TILE).enumerate() {
        // The cells some row of the block sees; a row's scores of the others are masked below.
        sc.cells.clear();
        let base = tile * TILE;
        let mut all_see = true;
        for (c, &pk) in pos.iter().enumerate() {
            let pk = i64::from(pk);
            // Seen by a query between p_min and p_max: written, not after p_max, in the window of p_min.
            if pk >= 0 && pk <= p_max && it.n_swa.is_none_or(|w| p_min - pk < i64::from(w)) {
                // ...and by all of them.
                all_see &= visible(pk, p_min, it.n_swa) && visible(pk, p_max, it.n_swa);
                sc.cells.push(base + c);
            }
        }
        let nv = sc.cells.len();
        if nv == 0 {
            continue;
        }
        // The next tile's rows, fetched while this one is computed (not its empty cells: a decode step's cells
        // are padded to a multiple of 256).
        sc.ahead.clear();
        sc.ahead.extend(
            (base + TILE..(base + 2 * TILE).min(cell_pos.len()))
                .filter(|&c| cell_pos[c] >= 0)
                .map(|c| c * it.row_len + off),
        );
        if sc.ahead.len() > nv {
            // Fewer cells to compute on than rows to fetch (a tile at the window's edge): the rest at once.
            prefetch_rows(k, sc.ahead[nv..].iter().copied(), hd);
            prefetch_rows(v, sc.ahead[nv..].iter().copied(), hd);
        }
        sc.starts.clear();
        sc.starts.extend(sc.cells.iter().map(|&c| c * it.row_len + off));
        let s = &mut sc.s[..nr * nv];
        attn_scores(q, k, &sc.starts, &sc.ahead, hd, s);
        for j in 0..nr {
            let sj = &mut s[j * nv..(j + 1) * nv];
            if !all_see {
                for (x, &c) in sj.iter_mut().zip(&sc.cells) {
                    if !visible(i64::from(cell_pos[c]), p_q[j], it.n_swa) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            let m_new = sj.iter().fold(m[j], |a, &b| a.max(b));
            if m_new == f32::NEG_INFINITY {
                // This row sees none of the tile's cells (nor any before): it weighs them all 0.
                sj.fill(0.0);
                continue;
            }
            // m_new is finite: some score is (a visible cell), unless K or q held inf/NaN.
            let rescale = (m[j] - m_new).exp();
            if rescale != 1.0 {
                l[j] *= rescale;
                acc[j * hd..(j + 1) * hd].iter_mut().for_each(|a| *a *= rescale);
            }
            m[j] = m_new;
            l[j] += exp_shifted_sum(sj, m_new);
        }
        attn_accumulate(acc, s, v, &sc.starts, &sc.ahead, hd);
    }
    for (j, (_, o)) in out.iter_mut().enumerate() {
        // l > 0 whenever a cell was visible (a query always sees its own); else the row is all zeros.
        let inv = if l[j] > 0.0 { 1.0 / l[j] } else { 0.0 };
        for (d, a) in o.iter_mut().zip(&acc[j * hd..(j + 1) * hd]) {
            *d = a * inv;
        }
    }
}
