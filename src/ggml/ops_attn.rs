//! Attention ops: `rope_ext` (with [`RopeParams`]), `soft_max_ext`, `flash_attn_ext`.

use super::{sys, Context, Prec, Tensor};
use crate::gguf::GgmlType;

/// Which dims RoPE pairs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs `(2i, 2i + 1)` (GPT-J / original LLaMA).
    Normal,
    /// Half-split pairs `(i, i + n_dims/2)` (GPT-NeoX, HF `rotate_half`; SmallThinker).
    Neox,
}

/// The scalar arguments of `ggml_rope_ext`, by name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    /// Rotated dims from the start of each head (even, at most `ne[0]`).
    pub n_dims: i32,
    /// Pairing of the rotated dims.
    pub mode: RopeMode,
    /// Training context length (YaRN only).
    pub n_ctx_orig: i32,
    /// theta base (e.g. 1.5e6 for SmallThinker).
    pub freq_base: f32,
    /// Position scale (1 = none).
    pub freq_scale: f32,
    /// YaRN extrapolation mix (0 = none).
    pub ext_factor: f32,
    /// Magnitude scale (1 = none).
    pub attn_factor: f32,
    /// YaRN low correction dim.
    pub beta_fast: f32,
    /// YaRN high correction dim.
    pub beta_slow: f32,
}

impl RopeParams {
    /// Plain NeoX RoPE over `n_dims` with base `freq_base`, no scaling or YaRN (llama.cpp's defaults).
    pub fn neox(n_dims: i32, freq_base: f32) -> Self {
        RopeParams {
            n_dims,
            mode: RopeMode::Neox,
            n_ctx_orig: 0,
            freq_base,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        }
    }
}

impl Context {
    /// Rotates `a [head_dim, n_head, n_tokens]` by the I32 positions `pos [n_tokens]`; `freq_factors`
    /// (`[n_dims/2]` F32) optionally divide the per-pair frequencies.
    pub fn rope_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        freq_factors: Option<Tensor<'a>>,
        p: RopeParams,
    ) -> Tensor<'a> {
        let (an, pn) = (a.ne(), pos.ne());
        let op = "rope_ext";
        ensure!(
            matches!(a.ty(), GgmlType::F32 | GgmlType::F16),
            op,
            "a {a:?} must be F32 or F16"
        );
        ensure!(a.is_contiguous_rows(), op, "a {a:?} must have contiguous rows");
        ensure!(
            pos.ty() == GgmlType::I32 && pn[1] == 1 && pn[2] == 1 && pn[3] == 1,
            op,
            "pos {pos:?} must be an I32 vector"
        );
        ensure!(
            an[2] == pn[0],
            op,
            "a {a:?} has {} tokens (ne[2]) but pos {pos:?} has {}",
            an[2],
            pn[0]
        );
        ensure!(
            p.n_dims > 0 && p.n_dims % 2 == 0 && p.n_dims as i64 <= an[0],
            op,
            "n_dims = {} must be even and in 1..={} for {a:?}",
            p.n_dims,
            an[0]
        );
        if let Some(c) = freq_factors {
            ensure!(
                c.ty() == GgmlType::F32 && c.ne()[0] >= (p.n_dims / 2) as i64,
                op,
                "freq_factors {c:?} must be F32 with >= n_dims/2 values"
            );
        }
        self.reserve_tensors(op, 1, Some((a.ty(), an)));
        let mode = match p.mode {
            RopeMode::Normal => sys::GGML_ROPE_TYPE_NORMAL,
            RopeMode::Neox => sys::GGML_ROPE_TYPE_NEOX,
        } as i32;
        let c = freq_factors.map_or(std::ptr::null_mut(), |c| c.as_ptr());
        // SAFETY: checked as ggml_rope_impl and the CPU kernel assert; room in the pool.
        let t = unsafe {
            sys::ggml_rope_ext(
                self.as_ptr(),
                a.as_ptr(),
                pos.as_ptr(),
                c,
                p.n_dims,
                mode,
                p.n_ctx_orig,
                p.freq_base,
                p.freq_scale,
                p.ext_factor,
                p.attn_factor,
                p.beta_fast,
                p.beta_slow,
            )
        };
        Tensor::from_raw(t, false)
    }

    /// `softmax(a * scale + mask)` per row (plus an ALiBi slope times the mask when `max_bias > 0`).
    /// `a [n_kv, n_q, n_head, ne3]`, `mask [n_kv, >= n_q, n_head / r, ne3 / s]` F32 or F16.
    pub fn soft_max_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
        max_bias: f32,
    ) -> Tensor<'a> {
        let op = "soft_max_ext";
        ensure!(
            a.ty() == GgmlType::F32 && a.is_contiguous(),
            op,
            "a {a:?} must be contiguous F32"
        );
        if let Some(m) = mask {
            let (an, mn) = (a.ne(), m.ne());
            ensure!(
                matches!(m.ty(), GgmlType::F32 | GgmlType::F16) && m.is_contiguous(),
                op,
                "mask {m:?} must be contiguous F32 or F16"
            );
            ensure!(
                mn[0] == an[0] && mn[1] >= an[1],
                op,
                "mask {m:?} does not cover a {a:?}"
            );
            ensure!(
                mn[2] > 0 && mn[3] > 0 && an[2] % mn[2] == 0 && an[3] % mn[3] == 0,
                op,
                "mask {m:?} does not broadcast over a {a:?}"
            );
        }
        ensure!(
            max_bias <= 0.0 || mask.is_some(),
            op,
            "max_bias = {max_bias} needs a mask"
        );
        self.reserve_tensors(op, 1, Some((GgmlType::F32, a.ne())));
        let m = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        // SAFETY: checked as ggml_soft_max_impl asserts; room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_soft_max_ext(self.as_ptr(), a.as_ptr(), m, scale, max_bias) },
            false,
        )
    }

    /// Fused attention `softmax(scale * K·Q + mask) · V`:
    /// `q [d, n_q, n_head, 1]` F32, `k [d, n_kv, n_head_kv, 1]`, `v [d_v, n_kv, n_head_kv, 1]` (F16 or F32),
    /// `mask [n_kv, >= n_q, 1, 1]` F16 -> `[d_v, n_head, n_q, 1]` F32 (note the permuted result).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_ext<'a>(
        &'a self,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
        max_bias: f32,
        logit_softcap: f32,
    ) -> Tensor<'a> {
        let (qn, kn, vn) = (q.ne(), k.ne(), v.ne());
        let op = "flash_attn_ext";
        ensure!(qn[0] == kn[0], op, "head dims differ: q {q:?}, k {k:?}");
        ensure!(
            kn[2] > 0 && qn[2] % kn[2] == 0 && kn[3] > 0 && qn[3] % kn[3] == 0,
            op,
            "k {k:?} heads do not broadcast over q {q:?}"
        );
        ensure!(
            qn[3] == kn[3] && qn[3] == vn[3],
            op,
            "ne[3] differs: q {q:?}, k {k:?}, v {v:?}"
        );
        ensure!(vn[1] == kn[1] && vn[2] == kn[2], op, "v {v:?} does not match k {k:?}");
        ensure!(
            q.ty() == GgmlType::F32 && q.is_contiguous_rows(),
            op,
            "q {q:?} must be F32 with contiguous rows"
        );
        for (what, t) in [("k", k), ("v", v)] {
            ensure!(
                matches!(t.ty(), GgmlType::F32 | GgmlType::F16) && t.is_contiguous_rows(),
                op,
                "{what} {t:?} must be F16 or F32 with contiguous rows"
            );
        }
        if let Some(m) = mask {
            let mn = m.ne();
            ensure!(
                m.ty() == GgmlType::F16 && m.is_contiguous(),
                op,
                "mask {m:?} must be contiguous F16"
            );
            ensure!(
                mn[0] >= kn[1] && mn[1] >= qn[1],
                op,
                "mask {m:?} does not cover {} keys x {} queries",
                kn[1],
                qn[1]
            );
            ensure!(
                mn[2] > 0 && mn[3] > 0 && qn[2] % mn[2] == 0 && qn[3] % mn[3] == 0,
                op,
                "mask {m:?} does not broadcast over q {q:?}"
            );
        }
        ensure!(
            max_bias <= 0.0 || mask.is_some(),
            op,
            "max_bias = {max_bias} needs a mask"
        );
        self.reserve_tensors(op, 1, Some((GgmlType::F32, [vn[0], qn[2], qn[1], qn[3]])));
        let m = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        // SAFETY: checked as ggml_flash_attn_ext and the CPU kernel assert; room in the pool.
        let t = unsafe {
            sys::ggml_flash_attn_ext(
                self.as_ptr(),
                q.as_ptr(),
                k.as_ptr(),
                v.as_ptr(),
                m,
                scale,
                max_bias,
                logit_softcap,
            )
        };
        Tensor::from_raw(t, false)
    }

    /// Sets the accumulation precision of a `flash_attn_ext` result.
    pub fn flash_attn_ext_set_prec(&self, t: Tensor<'_>, prec: Prec) {
        ensure!(
            t.op() == sys::GGML_OP_FLASH_ATTN_EXT,
            "flash_attn_ext_set_prec",
            "{t:?} is not a flash_attn_ext result"
        );
        // SAFETY: a FLASH_ATTN_EXT node (ggml's assert); only its op params change.
        unsafe { sys::ggml_flash_attn_ext_set_prec(t.as_ptr(), prec.to_sys()) };
    }
}
