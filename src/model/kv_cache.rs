//! The KV cache of one sequence: full length for full-attention layers, a ring buffer for sliding-window layers.
//!
//! A SWA layer never looks further back than `n_swa - 1` positions, so its cells can be reused: position `p`
//! lives in cell `p % size_swa`. While a batch of up to `n_batch` tokens is written, its first query still needs
//! the `n_swa - 1` positions before it, so the ring holds `n_swa + n_batch` cells (llama.cpp's iSWA cache sizes
//! it the same way). Each cell remembers the position it holds, and the attention (or its mask) decides what a
//! query sees from those positions, so it stays right after the ring wraps around.

use super::Hparams;
use crate::ggml::{Context, ContextParams, GgmlError, Tensor};
use crate::gguf::GgmlType;
use crate::graph::KvLayer;

/// Element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// llama.cpp's default: K and V rounded to f16.
    #[default]
    F16,
    /// Exact (llama.cpp's parity setting).
    F32,
}

impl KvType {
    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F16 => GgmlType::F16,
            KvType::F32 => GgmlType::F32,
        }
    }
}

/// How big a cache to make.
#[derive(Clone, Copy, Debug)]
pub struct KvParams {
    /// Most positions the sequence may reach.
    pub n_ctx: u32,
    /// Most tokens per graph (sizes the SWA ring); used as `n_batch.clamp(1, n_ctx)`.
    pub n_batch: u32,
    pub ty: KvType,
}

impl KvParams {
    fn clamped(self) -> KvParams {
        KvParams {
            n_batch: self.n_batch.clamp(1, self.n_ctx.max(1)),
            ..self
        }
    }
}

/// Cells per layer and bytes, computed without allocating anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Cells of a full-attention layer (`n_ctx`).
    pub size_full: u32,
    /// Cells of a SWA layer (`min(n_ctx, n_swa + n_batch)`), or `size_full` if the model has no SWA.
    pub size_swa: u32,
    /// K + V bytes of every layer as allocated.
    pub bytes: u64,
    /// K + V bytes if every layer had `n_ctx` cells.
    pub bytes_full_length: u64,
}

impl KvLayout {
    pub fn new(hp: &Hparams, p: &KvParams) -> KvLayout {
        let p = p.clamped();
        let size_full = p.n_ctx;
        let size_swa = hp.n_swa().map_or(size_full, |w| size_full.min(w + p.n_batch));
        let row =
            p.ty.ggml()
                .row_bytes(u64::from(hp.n_embd_k_gqa()))
                .expect("F16/F32 rows");
        let cells: u64 = (0..hp.n_layer)
            .map(|il| u64::from(if hp.is_swa(il) { size_swa } else { size_full }))
            .sum();
        KvLayout {
            size_full,
            size_swa,
            bytes: 2 * row * cells,
            bytes_full_length: 2 * row * u64::from(size_full) * u64::from(hp.n_layer),
        }
    }
}

/// Positions held by the cells of one kind of cache (-1: empty).
#[derive(Clone, Debug)]
struct Cells {
    pos: Vec<i64>,
    /// Sliding window, for SWA cells.
    n_swa: Option<i64>,
    /// Cells in use so far (a prefix: cells fill in order, then the ring wraps).
    used: usize,
}

impl Cells {
    fn new(size: u32, n_swa: Option<u32>) -> Cells {
        Cells {
            pos: vec![-1; size as usize],
            n_swa: n_swa.map(i64::from),
            used: 0,
        }
    }

    /// Places positions `n_past..n_past + n_tokens`; returns their cells and the positions of the used cells,
    /// and of the empty cells after them up to a multiple of `pad` cells (or the whole cache).
    fn place(&mut self, n_past: u32, n_tokens: u32, pad: usize) -> BatchCells {
        let size = self.pos.len() as i64;
        let positions = (i64::from(n_past)..i64::from(n_past + n_tokens)).collect::<Vec<_>>();
        let idxs: Vec<i64> = positions.iter().map(|p| p % size).collect();
        for (&c, &p) in idxs.iter().zip(&positions) {
            self.pos[c as usize] = p;
        }
        self.used = self.used.max(idxs.iter().map(|&c| c as usize + 1).max().unwrap_or(0));
        // Cells at and after `used` are empty (-1).
        let n_kv = self.used.next_multiple_of(pad.max(1)).min(self.pos.len());
        BatchCells {
            idxs,
            n_kv: n_kv as i64,
            // Positions stay below n_ctx (a u32 the session bounds by what fits i32 tensors).
            cell_pos: self.pos[..n_kv].iter().map(|&p| p as i32).collect(),
            q_pos: positions,
            n_swa: self.n_swa.map(|w| w as u32),
        }
    }
}

impl Cells {
    /// Whether every position a query at `n` still sees (`n - n_swa + 1 .. n` for a ring, all of `..n`
    /// otherwise) is held, so that the cache can go on from `n` after dropping the later positions.
    fn can_keep(&self, n: u32) -> bool {
        let size = self.pos.len() as i64;
        let n = i64::from(n);
        let first = self.n_swa.map_or(0, |w| (n - w + 1).max(0));
        (first..n).all(|p| self.pos[(p % size) as usize] == p)
    }

    /// Drops positions `n..` (their cells become empty). Left in place they would stay invisible (a query never
    /// sees a later position, and each position's cell is rewritten before a query gets there); emptied, the
    /// full cache reads only `..n` again.
    fn keep(&mut self, n: u32) {
        for p in self.pos.iter_mut().filter(|p| **p >= i64::from(n)) {
            *p = -1;
        }
        // A full cache never wraps, so its used cells are exactly `..n` again; a ring keeps its used length
        // (cells before the wrap point hold positions the window still needs).
        if self.n_swa.is_none() {
            self.used = self.used.min(n as usize);
        }
    }
}

/// Where one batch goes in one kind of cache, and what each of its queries may see.
#[derive(Clone, Debug)]
pub struct BatchCells {
    /// Cell of each new token.
    pub idxs: Vec<i64>,
    /// Cells the attention reads (the mask's row length).
    pub n_kv: i64,
    /// Position held by each of the `n_kv` cells read (-1: empty), after this batch is stored.
    pub cell_pos: Vec<i32>,
    /// Position of each new token.
    pub q_pos: Vec<i64>,
    /// The pool's sliding window (None: full attention).
    pub n_swa: Option<u32>,
}

impl BatchCells {
    /// `[n_kv, n_tokens]` row-major: 0 visible, -inf masked (for the `soft_max_ext` path only).
    pub fn mask(&self) -> Vec<f32> {
        let n_kv = self.n_kv as usize;
        let mut mask = vec![f32::NEG_INFINITY; n_kv * self.q_pos.len()];
        for (row, &p_q) in mask.chunks_exact_mut(n_kv.max(1)).zip(&self.q_pos) {
            for (m, &p_k) in row.iter_mut().zip(&self.cell_pos) {
                if crate::graph::attn_op::visible(i64::from(p_k), p_q, self.n_swa) {
                    *m = 0.0;
                }
            }
        }
        mask
    }
}

/// Cell placement for one batch: the full-attention layers' and the SWA layers'.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    pub full: BatchCells,
    pub swa: Option<BatchCells>,
}

/// The cache tensors (in a caller-owned context, see [`KvCache::context`]) and the cell bookkeeping.
pub struct KvCache<'k> {
    layers: Vec<KvLayer<'k>>,
    full: Cells,
    swa: Option<Cells>,
    layout: KvLayout,
    params: KvParams,
}

impl<'k> KvCache<'k> {
    /// A `no_alloc` context with room for the cache's tensor metadata.
    pub fn context(hp: &Hparams) -> Result<Context, GgmlError> {
        Context::new(ContextParams {
            mem_size: (2 * hp.n_layer as usize + 2) * Context::tensor_overhead(),
            no_alloc: true,
        })
    }

    /// Allocates (zeroed) K and V of every layer in `ctx`, which must come from [`KvCache::context`].
    pub fn new(ctx: &'k Context, hp: &Hparams, params: KvParams) -> Result<KvCache<'k>, GgmlError> {
        let params = params.clamped();
        let layout = KvLayout::new(hp, &params);
        let n_embd_gqa = i64::from(hp.n_embd_k_gqa());
        let layers = (0..hp.n_layer)
            .map(|il| {
                let size = if hp.is_swa(il) {
                    layout.size_swa
                } else {
                    layout.size_full
                };
                let t = |name: &str| -> Tensor<'k> {
                    ctx.new_tensor_2d(params.ty.ggml(), n_embd_gqa, i64::from(size))
                        .format_name(name, il as i32)
                };
                KvLayer {
                    k: t("cache_k_l"),
                    v: t("cache_v_l"),
                }
            })
            .collect();
        ctx.alloc_cpu_buffer()?;
        Ok(KvCache {
            layers,
            full: Cells::new(layout.size_full, None),
            swa: hp.n_swa().map(|w| Cells::new(layout.size_swa, Some(w))),
            layout,
            params,
        })
    }

    pub fn layer(&self, il: u32) -> KvLayer<'k> {
        self.layers[il as usize]
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn params(&self) -> KvParams {
        self.params
    }

    /// Bytes of K and V actually allocated (the tensors' sizes).
    pub fn allocated_bytes(&self) -> u64 {
        self.layers.iter().map(|l| (l.k.nbytes() + l.v.nbytes()) as u64).sum()
    }

    /// Records that positions `n_past..n_past + n_tokens` are being written; `n_tokens <= n_batch` and
    /// `n_past + n_tokens <= n_ctx` (the session checks both).
    pub fn place(&mut self, n_past: u32, n_tokens: u32) -> BatchPlan {
        self.place_padded(n_past, n_tokens, 1)
    }

    /// [`place`](Self::place), reading the cells up to a multiple of `pad` (empty ones included), so that
    /// consecutive steps read the same number of cells and can share a graph.
    pub fn place_padded(&mut self, n_past: u32, n_tokens: u32, pad: usize) -> BatchPlan {
        debug_assert!(n_tokens <= self.params.n_batch && n_past + n_tokens <= self.params.n_ctx);
        BatchPlan {
            full: self.full.place(n_past, n_tokens, pad),
            swa: self.swa.as_mut().map(|c| c.place(n_past, n_tokens, pad)),
        }
    }

    /// Keeps positions `..n` and forgets the later ones, so that the sequence can go on from `n` (a chat turn
    /// that shares only part of the cached tokens). Returns false and changes nothing when a sliding-window
    /// ring has already overwritten positions that a query at `n` would see; the caller must then start over.
    pub fn truncate(&mut self, n: u32) -> bool {
        let cells = || std::iter::once(&self.full).chain(self.swa.as_ref());
        if !cells().all(|c| c.can_keep(n)) {
            return false;
        }
        for c in std::iter::once(&mut self.full).chain(self.swa.as_mut()) {
            c.keep(n);
        }
        true
    }

    /// Forgets every position (the tensors keep stale values, which the mask hides).
    pub fn clear(&mut self) {
        for c in std::iter::once(&mut self.full).chain(self.swa.as_mut()) {
            c.pos.fill(-1);
            c.used = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_mask_after_wrap_around() {
        // window 4, batches of up to 2: 6 cells
        let mut c = Cells::new(6, Some(4));
        c.place(0, 2, 1);
        c.place(2, 2, 1);
        c.place(4, 2, 1);
        let b = c.place(6, 2, 1); // positions 6, 7 go to cells 0, 1 (they held 0, 1)
        assert_eq!(b.idxs, [0, 1]);
        assert_eq!(b.n_kv, 6);
        assert_eq!(b.cell_pos, [6, 7, 2, 3, 4, 5]);
        // cells hold positions [6, 7, 2, 3, 4, 5]
        let mask = b.mask();
        let m = |row: usize| -> Vec<bool> { mask[row * 6..][..6].iter().map(|v| *v == 0.0).collect() };
        assert_eq!(m(0), [true, false, false, true, true, true]); // query 6 sees 3..=6
        assert_eq!(m(1), [true, true, false, false, true, true]); // query 7 sees 4..=7
    }

    #[test]
    fn full_cells_are_causal() {
        let mut c = Cells::new(8, None);
        let b = c.place(0, 3, 1);
        assert_eq!(b.n_kv, 3);
        let vis: Vec<bool> = b.mask().iter().map(|v| *v == 0.0).collect();
        assert_eq!(vis, [true, false, false, true, true, false, true, true, true]);
        let b = c.place(3, 1, 1);
        assert_eq!((b.idxs.as_slice(), b.n_kv), ([3i64].as_slice(), 4));
        assert!(b.mask().iter().all(|v| *v == 0.0));
    }

    #[test]
    fn padded_placement_reads_empty_cells_up_to_the_multiple_and_the_cache_size() {
        let mut c = Cells::new(10, None);
        let b = c.place(0, 3, 4);
        assert_eq!((b.n_kv, b.cell_pos.as_slice()), (4, [0, 1, 2, -1].as_slice()));
        assert_eq!(b.idxs, [0, 1, 2]);
        assert_eq!(c.place(3, 1, 4).cell_pos, [0, 1, 2, 3]); // exactly a multiple: no padding
        assert_eq!(c.place(4, 1, 4).n_kv, 8);
        c.place(5, 4, 4);
        // 9 used cells round to 12, beyond the cache: the cache's 10.
        let b = c.place(9, 1, 4);
        assert_eq!((b.n_kv, b.cell_pos.len()), (10, 10));
        // The padded cells are invisible to every query, as empty cells are.
        let mut r = Cells::new(6, Some(4));
        let b = r.place(0, 1, 4);
        assert_eq!(b.mask(), [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY]);
    }

    #[test]
    fn truncate_keeps_a_prefix_until_the_ring_lost_it() {
        // window 4, batches of up to 2: 6 cells; positions 0..8 written, cells hold [6, 7, 2, 3, 4, 5]
        let mut c = Cells::new(6, Some(4));
        for n in [0, 2, 4, 6] {
            c.place(n, 2, 1);
        }
        // A query at 6 sees 3..=6: 3, 4, 5 are held (6 is rewritten), so the ring can go on from 6.
        assert!(c.can_keep(6));
        // A query at 5 sees 2..=5: all held. At 4 it sees 1..=4, and 1 was overwritten by 7.
        assert!(c.can_keep(5));
        assert!(!c.can_keep(4));
        c.keep(5);
        assert_eq!(c.pos, [-1, -1, 2, 3, 4, -1]);
        let b = c.place(5, 1, 1);
        assert_eq!(b.idxs, [5]);
        assert_eq!(b.cell_pos, [-1, -1, 2, 3, 4, 5]);
        let vis: Vec<bool> = b.mask().iter().map(|v| *v == 0.0).collect();
        assert_eq!(vis, [false, false, true, true, true, true]); // query 5 sees 2..=5

        let mut f = Cells::new(8, None);
        f.place(0, 5, 1);
        assert!(f.can_keep(3) && f.can_keep(0));
        f.keep(3);
        assert_eq!((f.used, &f.pos[..5]), (3, [0, 1, 2, -1, -1].as_slice()));
        assert_eq!(f.place(3, 1, 1).cell_pos, [0, 1, 2, 3]);
    }

    fn hp(n_layer: u32, n_embd_head: u32, n_head_kv: u32) -> Hparams {
        Hparams {
            n_layer,
            n_ctx_train: 16384,
            n_embd: 2560,
            n_ff: Some(768),
            n_head: 28,
            n_head_kv,
            n_embd_head_k: n_embd_head,
            n_embd_head_v: n_embd_head,
            rope_freq_base: 1.5e6,
            rope_freq_base_swa: 1.5e6,
            rms_norm_eps: 1e-6,
            n_expert: 64,
            n_expert_used: 6,
            n_ff_exp: 768,
            gating: crate::model::Gating::Softmax,
            swa: Some(4096),
            n_vocab: 151936,
        }
    }

    #[test]
    fn allocation_matches_the_layout() {
        // A small SWA model whose ring is shorter than the context.
        let hp = hp(5, 8, 2);
        for ty in [KvType::F16, KvType::F32] {
            let p = KvParams {
                n_ctx: 4200,
                n_batch: 64,
                ty,
            };
            let ctx = KvCache::context(&hp).unwrap();
            let kv = KvCache::new(&ctx, &hp, p).unwrap();
            let l = kv.layout();
            assert_eq!((l.size_full, l.size_swa), (4200, 4160));
            assert_eq!(kv.allocated_bytes(), l.bytes);
            let row = 16 * ty.ggml().type_size();
            assert_eq!(l.bytes, 2 * row * (2 * 4200 + 3 * 4160));
            assert_eq!(kv.layer(1).k.ne(), [16, 4160, 1, 1]);
            assert_eq!(kv.layer(4).v.ne(), [16, 4200, 1, 1]);
        }
    }

    /// The 21B at 16K context with the default f16 cache and n_batch 512: 13 full layers of 16384 cells and
    /// 39 SWA layers of 4608, against 52 full-length layers.
    #[test]
    fn memory_saved_for_the_21b_at_16k() {
        let hp = hp(52, 128, 4);
        let p = KvParams {
            n_ctx: 16384,
            n_batch: 512,
            ty: KvType::F16,
        };
        let l = KvLayout::new(&hp, &p);
        assert_eq!(l.size_swa, 4608);
        assert_eq!(l.bytes_full_length, 2 * 1024 * 52 * 16384); // 1664 MiB
        assert_eq!(l.bytes, 2 * 1024 * (13 * 16384 + 39 * 4608)); // 767 MiB
        assert_eq!(l.bytes_full_length - l.bytes, 940_572_672); // 897 MiB saved, 53.9%
    }
}
