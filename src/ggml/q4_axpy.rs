//! `out += sum_i c[i] * row_i` over Q4_0 rows: the down product of the sparse expert op on a neuron-major copy,
//! where each active neuron adds its column of `down`, scaled by its hidden value, into the output. Up to four rows
//! go through the output at once, so the output is loaded and stored once per four neurons instead of once per
//! neuron (the f32 output, not the 4-bit rows, was what a one-row loop spent its time on). AVX2/FMA picked at run
//! time, with a portable loop otherwise.

/// Bytes of a Q4_0 block: an f16 scale and 16 bytes of nibbles (element i low nibble, element i + 16 high).
const BLOCK: usize = 18;

/// Rows processed together.
pub const ROWS: usize = 4;

/// `out[x] += sum_i c[i] * row_i[x]` for `c.len() == rows.len() <= 4` Q4_0 rows of `out.len()` elements.
pub fn q4_0_axpy(out: &mut [f32], c: &[f32], rows: &[&[u8]]) {
    let nb = out.len() / 32;
    assert!(
        out.len() % 32 == 0
            && c.len() == rows.len()
            && rows.len() <= ROWS
            && rows.iter().all(|r| r.len() == nb * BLOCK),
        "q4_0_axpy: {} rows for {} coefficients and {} outputs (rows of {} bytes expected)",
        rows.len(),
        c.len(),
        out.len(),
        nb * BLOCK
    );
    if rows.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::supported() {
        let mut p = [rows[0].as_ptr(); ROWS];
        let mut cc = [0f32; ROWS];
        for (i, (r, &ci)) in rows.iter().zip(c).enumerate() {
            p[i] = r.as_ptr();
            cc[i] = ci;
        }
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time); every row holds nb blocks (checked above),
        // and the unused slots repeat row 0 with coefficient 0, so the kernel reads only valid rows.
        return unsafe { x86::axpy4(out, &cc, &p, nb) };
    }
    for (row, &ci) in rows.iter().zip(c) {
        for (blk, o) in row.chunks_exact(BLOCK).zip(out.chunks_exact_mut(32)) {
            let s = ci * half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            for (i, &q) in blk[2..].iter().enumerate() {
                o[i] += s * ((q & 0x0f) as f32 - 8.0);
                o[i + 16] += s * ((q >> 4) as f32 - 8.0);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, ROWS};
    use std::arch::x86_64::*;

    pub use crate::ggml::simd::x86::supported;

    /// Eight unsigned bytes at the bottom of `v` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn u8x8(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    /// Each block's nibbles are scaled by c[i] * d; the -8 offset of every element is folded into one
    /// `-8 * sum_i c[i] * d_i` added to all 32 outputs of the block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy4(out: &mut [f32], c: &[f32; ROWS], p: &[*const u8; ROWS], nb: usize) {
        let mask = _mm_set1_epi8(0x0f);
        let o = out.as_mut_ptr();
        for b in 0..nb {
            // SAFETY: block b of every row is inside it and outputs 32 * b .. 32 * b + 32 exist (checked by the
            // caller); loads are unaligned.
            unsafe {
                let mut acc = [
                    _mm256_loadu_ps(o.add(32 * b)),
                    _mm256_loadu_ps(o.add(32 * b + 8)),
                    _mm256_loadu_ps(o.add(32 * b + 16)),
                    _mm256_loadu_ps(o.add(32 * b + 24)),
                ];
                let mut bias = _mm256_setzero_ps();
                for i in 0..ROWS {
                    let blk = p[i].add(b * BLOCK);
                    let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                        blk.cast::<u16>().read_unaligned(),
                    ))));
                    let s = _mm256_set1_ps(c[i] * d);
                    bias = _mm256_add_ps(bias, s);
                    let q = _mm_loadu_si128(blk.add(2).cast());
                    let lo = _mm_and_si128(q, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
                    acc[0] = _mm256_fmadd_ps(u8x8(lo), s, acc[0]);
                    acc[1] = _mm256_fmadd_ps(u8x8(_mm_srli_si128(lo, 8)), s, acc[1]);
                    acc[2] = _mm256_fmadd_ps(u8x8(hi), s, acc[2]);
                    acc[3] = _mm256_fmadd_ps(u8x8(_mm_srli_si128(hi, 8)), s, acc[3]);
                }
                let bias = _mm256_mul_ps(bias, _mm256_set1_ps(-8.0));
                for (k, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(32 * b + 8 * k), _mm256_add_ps(*a, bias));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::rows::{AlignedBytes, RowDequant, RowQuant};
    use crate::gguf::GgmlType;

    /// Against dequantise-then-accumulate, for 1 to 4 rows (the kernel pads with zero-weight rows).
    #[test]
    fn matches_dequantised_rows() {
        let n = 96;
        let q = RowQuant::new(GgmlType::Q4_0, n).unwrap();
        let deq = RowDequant::new(GgmlType::Q4_0, n).unwrap();
        let mut s = 7u32;
        let mut rnd = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let rows: Vec<AlignedBytes> = (0..4)
            .map(|_| {
                let v: Vec<f32> = (0..n).map(|_| rnd()).collect();
                let mut b = AlignedBytes::zeroed(q.len());
                q.run(&v, b.as_mut_slice());
                b
            })
            .collect();
        let c = [0.75f32, -1.5, 2.0, 0.125];
        let base: Vec<f32> = (0..n).map(|_| rnd()).collect();
        for k in 1..=4 {
            let mut want = base.clone();
            let mut t = vec![0f32; n];
            for (r, &ci) in rows[..k].iter().zip(&c) {
                deq.run(r.as_slice(), &mut t);
                for (w, x) in want.iter_mut().zip(&t) {
                    *w += ci * x;
                }
            }
            let mut got = base.clone();
            let refs: Vec<&[u8]> = rows[..k].iter().map(|r| r.as_slice()).collect();
            q4_0_axpy(&mut got, &c[..k], &refs);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{k} rows, element {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "q4_0_axpy")]
    fn refuses_short_rows() {
        q4_0_axpy(&mut [0.0; 32], &[1.0], &[&[0u8; 17]]);
    }
}
