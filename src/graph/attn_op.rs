//! Attention over the cache cells as one custom op: for each query token and head, softmax(scale · K·q) · V
//! over the cells whose position the query may see (causal, within the sliding window), with an online softmax.
//!
//! Unlike the `soft_max_ext` path it needs no `[n_kv, n_tokens]` mask: the visibility of a cell comes from the
//! position it holds (`cell_pos`, -1 when empty) and the query's position, so a ring buffer that has wrapped
//! around needs nothing special. K and V are read in the cache's own layout (a row of `n_embd_head * n_head_kv`
//! per cell), so V is never transposed. Work items are (query token, KV head) groups of query heads: the heads
//! sharing a KV head (GQA) score each K row and accumulate each V row together, so each is converted once.

use crate::ggml::simd::{attn_accumulate, attn_scores, exp_shifted_sum, f16_to_f32};
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
    ctx.custom_4d(
        "attn_cells",
        [hd, n_head, n_tokens, 1],
        &[q, k, v, cell_pos, q_pos],
        move |op| run(op, &p),
    )
}

/// Per-thread scratch for one work item.
struct Scratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
    acc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    cells: Vec<usize>,
}

/// The cache rows of one KV head: `hd` values at `row * row_len + off`.
enum Cache<'s> {
    F16(&'s [u16]),
    F32(&'s [f32]),
}

impl Cache<'_> {
    fn load(&self, start: usize, out: &mut [f32]) {
        match self {
            Cache::F16(d) => f16_to_f32(&d[start..start + out.len()], out),
            Cache::F32(d) => out.copy_from_slice(&d[start..start + out.len()]),
        }
    }
}

fn cache<'s>(op: &'s CustomOpCtx, i: usize) -> Cache<'s> {
    match op.src_ty(i) {
        GgmlType::F16 => Cache::F16(op.src_f16(i)),
        _ => Cache::F32(op.src(i)),
    }
}

fn run(op: &CustomOpCtx, p: &CellAttnParams) {
    let hd = p.n_embd_head as usize;
    let n_head = p.n_head as usize;
    let g = n_head / p.n_head_kv as usize;
    let row_len = hd * p.n_head_kv as usize;
    let q_all = op.src(0);
    let (k, v) = (cache(op, 1), cache(op, 2));
    let cell_pos = op.src_i32(3);
    let q_pos = op.src_i32(4);
    let mut sc = Scratch {
        q: vec![0.0; g * hd],
        k: vec![0.0; TILE * hd],
        v: vec![0.0; TILE * hd],
        s: vec![0.0; g * TILE],
        acc: vec![0.0; g * hd],
        m: vec![0.0; g],
        l: vec![0.0; g],
        cells: Vec::with_capacity(TILE),
    };
    // This thread's rows (one per (head, token)), grouped by the KV head they share.
    let mut rows: Vec<(usize, &mut [f32])> = op.dst_rows().collect();
    let mut rest = rows.as_mut_slice();
    while let Some(&(r0, _)) = rest.first() {
        let (t, kh) = (r0 / n_head, r0 % n_head / g);
        let n = rest
            .iter()
            .take_while(|(r, _)| r / n_head == t && r % n_head / g == kh)
            .count();
        let (group, tail) = rest.split_at_mut(n);
        let qs = &q_all[r0 * hd..(r0 + n) * hd];
        let ctx = Item {
            hd,
            off: kh * hd,
            row_len,
            p_q: i64::from(q_pos[t]),
            n_swa: p.n_swa,
            scale: p.kq_scale,
        };
        attend(&ctx, qs, &k, &v, cell_pos, &mut sc, group);
        rest = tail;
    }
}

struct Item {
    hd: usize,
    /// Offset of the KV head in a cache row.
    off: usize,
    row_len: usize,
    p_q: i64,
    n_swa: Option<u32>,
    scale: f32,
}

/// Attention of the `g = qs.len() / hd` heads of one (token, KV head) item, written to `out`.
fn attend(
    it: &Item,
    qs: &[f32],
    k: &Cache,
    v: &Cache,
    cell_pos: &[i32],
    sc: &mut Scratch,
    out: &mut [(usize, &mut [f32])],
) {
    let hd = it.hd;
    let g = qs.len() / hd;
    let q = &mut sc.q[..g * hd];
    for (d, s) in q.iter_mut().zip(qs) {
        *d = s * it.scale;
    }
    let acc = &mut sc.acc[..g * hd];
    acc.fill(0.0);
    let (m, l) = (&mut sc.m[..g], &mut sc.l[..g]);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    for (tile, pos) in cell_pos.chunks(TILE).enumerate() {
        sc.cells.clear();
        let base = tile * TILE;
        sc.cells.extend(
            pos.iter()
                .enumerate()
                .filter(|(_, &pk)| visible(i64::from(pk), it.p_q, it.n_swa))
                .map(|(c, _)| base + c),
        );
        let nv = sc.cells.len();
        if nv == 0 {
            continue;
        }
        let (kt, vt) = (&mut sc.k[..nv * hd], &mut sc.v[..nv * hd]);
        for (&c, row) in sc.cells.iter().zip(kt.chunks_exact_mut(hd)) {
            k.load(c * it.row_len + it.off, row);
        }
        let s = &mut sc.s[..g * nv];
        attn_scores(q, kt, hd, s);
        for j in 0..g {
            let sj = &mut s[j * nv..(j + 1) * nv];
            let m_new = sj.iter().fold(m[j], |a, &b| a.max(b));
            // m_new is finite: every score is (a visible cell), unless K or q held inf/NaN.
            let rescale = (m[j] - m_new).exp();
            if rescale != 1.0 {
                l[j] *= rescale;
                acc[j * hd..(j + 1) * hd].iter_mut().for_each(|a| *a *= rescale);
            }
            m[j] = m_new;
            l[j] += exp_shifted_sum(sj, m_new);
        }
        for (&c, row) in sc.cells.iter().zip(vt.chunks_exact_mut(hd)) {
            v.load(c * it.row_len + it.off, row);
        }
        attn_accumulate(acc, s, vt, hd);
    }
    for (j, (_, o)) in out.iter_mut().enumerate() {
        // l > 0 whenever a cell was visible (a query always sees its own); else the row is all zeros.
        let inv = if l[j] > 0.0 { 1.0 / l[j] } else { 0.0 };
        for (d, a) in o.iter_mut().zip(&acc[j * hd..(j + 1) * hd]) {
            *d = a * inv;
        }
    }
}
