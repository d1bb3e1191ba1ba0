//! Our Q4_0 GEMV over ggml's interleaved 8-row layout ([`super::q4x8`]): one activation row, the decode path
//! of the expert op, the attention projections and the lm_head. It gives ggml's GEMV results bit for bit, with
//! the kernel of [`super::q4x8_gemm`] (unsigned nibbles times signed activations in one `maddubs`, the `-8`
//! offset taken off as `8 * sum(a)`), and it prefetches ahead, since a decode step streams every byte from
//! memory.

use super::q4x8_gemm::{block_dot, GROUP_BLOCK, Q8_BLOCK, QK};
use super::rows::{AlignedBytes, RowQuant};
use crate::gguf::GgmlType;

/// `out[j] = dot(row j of w, x)` for the `out.len()` interleaved Q4_0 rows of `w` (whole groups of 8, rows of
/// `n`) and one Q8_0 row `x` of `n`: ggml's GEMV (`q4x8::Gemv::run_ggml`), bit for bit. Each group's two halves meet
/// in the `hadd` that two tokens share in [`super::q4x8_gemm::gemm`].
pub fn gemv(w: &[u8], n: usize, x: &[u8], out: &mut [f32]) {
    let (nb, rows) = (n / QK, out.len());
    assert!(
        n % QK == 0 && rows % 8 == 0 && w.len() == rows / 8 * nb * GROUP_BLOCK && x.len() == nb * Q8_BLOCK,
        "q4x8 gemv: {} weight bytes for {rows} rows of {n}, {} activation bytes",
        w.len(),
        x.len()
    );
    if rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::x86::supported() {
        let blocks = block_terms(x);
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time); w holds rows / 8 groups of nb blocks, x
        // nb Q8_0 blocks, `blocks` nb entries and out `rows` floats (checked above).
        unsafe { x86::gemv(w, nb, x, &blocks, out) };
        return;
    }
    gemv_portable(w, nb, x, out);
}

/// Per Q8_0 block of `x`: the activation scale and the offset correction `8 * sum(q)` the GEMV applies.
fn block_terms(x: &[u8]) -> Vec<(f32, i32)> {
    x.chunks_exact(Q8_BLOCK)
        .map(|b| {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            (d, 8 * b[2..].iter().map(|&v| v as i8 as i32).sum::<i32>())
        })
        .collect()
}

/// One activation row quantised to Q8_0 with its per-block terms, for the many [`gemv_row`] calls of a product
/// split into row chunks (computing the terms on every call would cost a tenth of a 64-row chunk's work).
pub struct GemvRow {
    quant: RowQuant,
    q: AlignedBytes,
    blocks: Vec<(f32, i32)>,
}

impl GemvRow {
    /// Rows of `n` elements (a multiple of 32).
    pub fn new(n: usize) -> GemvRow {
        assert!(n % QK == 0 && n > 0, "GemvRow: rows of {n} are not whole blocks");
        let quant = RowQuant::new(GgmlType::Q8_0, n).expect("ggml quantises Q8_0");
        GemvRow {
            q: AlignedBytes::zeroed(quant.len()),
            quant,
            blocks: Vec::new(),
        }
    }

    /// Quantises `x` (as ggml quantises a GEMV's activation), replacing the row held.
    pub fn set(&mut self, x: &[f32]) {
        self.quant.run(x, self.q.as_mut_slice());
        self.blocks = block_terms(self.q.as_slice());
    }
}

/// [`gemv`] on a prepared row: the same floats, bit for bit.
pub fn gemv_row(w: &[u8], x: &GemvRow, out: &mut [f32]) {
    let (q, nb, rows) = (x.q.as_slice(), x.blocks.len(), out.len());
    assert!(
        rows % 8 == 0 && w.len() == rows / 8 * nb * GROUP_BLOCK && nb * Q8_BLOCK == q.len(),
        "q4x8 gemv_row: {} weight bytes for {rows} rows of {} blocks (row set: {})",
        w.len(),
        q.len() / Q8_BLOCK,
        nb * Q8_BLOCK == q.len()
    );
    if rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::x86::supported() {
        // SAFETY: as in `gemv`: AVX2, FMA and F16C checked; w holds rows / 8 groups of nb blocks, q nb Q8_0
        // blocks, `blocks` nb entries and out `rows` floats (checked above).
        unsafe { x86::gemv(w, nb, q, &x.blocks, out) };
        return;
    }
    gemv_portable(w, nb, q, out);
}

/// [`gemv`]'s sums in its order, one row at a time.
fn gemv_portable(w: &[u8], nb: usize, x: &[u8], out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        let (g, r) = (j / 8, j % 8);
        let mut acc = 0f32;
        for (b, xb) in x.chunks_exact(Q8_BLOCK).enumerate().take(nb) {
            let blk = &w[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
            let dw = half::f16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]).to_f32();
            let da = half::f16::from_le_bytes([xb[0], xb[1]]).to_f32();
            acc = (block_dot(blk, r, &xb[2..]) as f32).mul_add(dw * da, acc);
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{GROUP_BLOCK, Q8_BLOCK};
    use std::arch::x86_64::*;

    /// Bytes ahead of the block being read that the GEMV asks the CPU to fetch. Two threads streaming at once
    /// (a decode step) see a longer memory latency than one: 4B decode on a 2-core EPYC (about 33 GB/s), 2
    /// threads, 16 alternating runs over two sittings, had medians of 45.6 / 51.0 tok/s at 1536 bytes, 49.0 /
    /// 52.9 at 3072 and 51.3 / 56.2 at 6144 (21B: 15.3 against 15.4). One thread alone (the gemm_speed example
    /// from memory) cannot tell these apart: 27-40 GMAC/s for all of 1536-12288 there, and on a Sapphire Rapids
    /// 17.7 and 16.0 GMAC/s at 1536 and 3072 in one sitting.
    const PREFETCH: usize = 6144;

    /// The lines of the block `PREFETCH` bytes ahead of `blk` (a hint: past the end of the matrix it is dropped).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::ggml) fn prefetch_ahead(blk: *const u8) {
        for line in [0, 64, 128] {
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH + line).cast());
        }
    }

    /// [`super::gemv`]: one group of 8 rows at a time; `blocks[b]` is block b's activation scale and offset
    /// correction. The caller guarantees the lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemv(w: &[u8], nb: usize, x: &[u8], blocks: &[(f32, i32)], out: &mut [f32]) {
        let m4 = _mm256_set1_epi8(0x0f);
        let x88 = _mm256_set1_epi8(0x88u8 as i8);
        let ones = _mm256_set1_epi16(1);
        // The order `hadd` leaves the rows in, [r0, r1, r4, r5, r2, r3, r6, r7]; it is its own inverse.
        let lanes = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
        for (g, o) in out.chunks_exact_mut(8).enumerate() {
            let mut acc = _mm256_setzero_ps();
            for (b, &(da, corr)) in blocks.iter().enumerate().take(nb) {
                // SAFETY (all loads): block b of group g is inside `w` and block b inside `x`.
                unsafe {
                    let blk = w.as_ptr().add((g * nb + b) * GROUP_BLOCK);
                    prefetch_ahead(blk);
                    let q = x.as_ptr().add(b * Q8_BLOCK + 2);
                    let a = |o: usize| _mm256_set1_epi64x((q.add(o) as *const i64).read_unaligned());
                    let (a0, a8, a16, a24) = (a(0), a(8), a(16), a(24));
                    // Rows 4h..4h + 4: four 16-bit partial sums per row, as in `Tile::run`.
                    let half = |h: usize| {
                        let v0 = _mm256_xor_si256(_mm256_loadu_si256(blk.add(16 + 32 * h).cast()), x88);
                        let v1 = _mm256_xor_si256(_mm256_loadu_si256(blk.add(80 + 32 * h).cast()), x88);
                        let s01 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(_mm256_and_si256(v0, m4), a0),
                            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), m4), a16),
                        );
                        let s23 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(_mm256_and_si256(v1, m4), a8),
                            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), m4), a24),
                        );
                        _mm256_add_epi16(s01, s23)
                    };
                    let sums = _mm256_madd_epi16(_mm256_hadd_epi16(half(0), half(1)), ones);
                    let i = _mm256_sub_epi32(sums, _mm256_set1_epi32(corr));
                    let d = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128(blk.cast())), lanes);
                    let s = _mm256_mul_ps(d, _mm256_set1_ps(da));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc);
                }
            }
            // SAFETY: `o` is 8 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), _mm256_permutevar8x32_ps(acc, lanes)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::q4x8::tests::random;
    use crate::ggml::q4x8::Gemv;
    use crate::ggml::q4x8_gemm::tests::weights;

    /// Our GEMV equals ggml's bit for bit, and so does its portable loop.
    #[test]
    fn gemv_equals_ggml_gemv() {
        for (n, rows) in [(512, 24), (768, 16), (256, 8)] {
            let Some(ggml) = Gemv::new(GgmlType::Q4_0, n, rows) else {
                return;
            };
            let w = weights(&ggml, n, rows);
            let xq = RowQuant::new(GgmlType::Q8_0, n).unwrap();
            let mut xr = AlignedBytes::zeroed(xq.len());
            for seed in 0..4 {
                xq.run(&random(n, 50 + seed), xr.as_mut_slice());
                let mut want = vec![0f32; rows];
                ggml.run_ggml(w.as_slice(), xr.as_slice(), &mut want);
                let mut got = vec![f32::NAN; rows];
                gemv(w.as_slice(), n, xr.as_slice(), &mut got);
                assert_eq!(got, want, "n {n}, seed {seed}");
                let mut slow = vec![f32::NAN; rows];
                gemv_portable(w.as_slice(), n / QK, xr.as_slice(), &mut slow);
                assert_eq!(slow, want, "n {n}, seed {seed}: portable");
            }
        }
    }

    /// A row chunk of a prepared row gives that chunk of the whole product, so a product may be split by rows.
    #[test]
    fn gemv_row_chunks_equal_the_whole_gemv() {
        let (n, rows) = (512, 40);
        let Some(ggml) = Gemv::new(GgmlType::Q4_0, n, rows) else {
            return;
        };
        let w = weights(&ggml, n, rows);
        let x = random(n, 7);
        let xq = RowQuant::new(GgmlType::Q8_0, n).unwrap();
        let mut xr = AlignedBytes::zeroed(xq.len());
        xq.run(&x, xr.as_mut_slice());
        let mut want = vec![0f32; rows];
        ggml.run_ggml(w.as_slice(), xr.as_slice(), &mut want);
        let mut row = GemvRow::new(n);
        row.set(&x);
        for chunk in [8, 16, 24, 40] {
            let mut got = vec![f32::NAN; rows];
            for c in (0..rows).step_by(chunk) {
                let m = chunk.min(rows - c);
                gemv_row(
                    &w.as_slice()[ggml.w_len(c)..ggml.w_len(c + m)],
                    &row,
                    &mut got[c..c + m],
                );
            }
            assert_eq!(got, want, "chunks of {chunk}");
        }
    }
}
