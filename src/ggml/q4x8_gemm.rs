//! Our Q4_0 GEMM over ggml's interleaved 8-row layout ([`super::q4x8`]): the prompt path of the expert op. It
//! gives every (token, row) exactly the float that ggml's GEMV gives for that token alone, so a prompt equals
//! its tokens run one at a time, bit for bit, whatever the batch or the thread split.
//!
//! ggml's AVX2 GEMM sign-extends the nibbles through a table and multiplies signed by signed bytes with the
//! sign trick, plus a blend and shuffle per product. Here the nibbles stay unsigned (`q`, 0..15), so one
//! `maddubs` multiplies them by the signed activations, and the `-8` offset comes off the block's integer dot as
//! `8 * sum(a)`, computed once per token and block when the activations are packed. Each 32-byte load of weights
//! holds 8 bytes of 4 rows; four of them are one block of those rows, multiplied by four 8-byte broadcasts of the
//! activation block. Two tokens' sums meet in one `hadd`, which leaves each (row, token) block dot whole in a
//! lane, so the float step is ggml's: `acc = fma(float(dot), d_w * d_a, acc)`, block by block.
//!
//! Work is tiled as 4 rows (half a group) by up to 8 tokens: the weights are unpacked once per tile and block,
//! and the tile's activations (8 tokens of a 1536-wide row are 24 KiB packed) stay in L1 while the rows stream.

use super::rows::{AlignedBytes, RowQuant};
use crate::gguf::GgmlType;

/// Elements per block.
pub(super) const QK: usize = 32;
/// Bytes of one interleaved block of 8 rows: 8 f16 scales and 8 x 16 bytes of nibbles.
pub const GROUP_BLOCK: usize = 8 * 18;
/// Bytes of a Q8_0 block: an f16 scale and 32 signed bytes.
pub(super) const Q8_BLOCK: usize = 34;
/// Packed bytes per (token pair, block): both tokens' 32 quants, the scales as the kernel's lanes want them
/// (`[a0, a0, a1, a1]` twice, f32) and the offset corrections (`8 * sum(q)`, same lanes, i32).
const PAIR_BLOCK: usize = 128;
/// Token pairs per tile.
const PAIRS: usize = 4;

/// Activation rows quantised to Q8_0 (as ggml quantises a GEMV's activation) and packed in pairs for [`gemm`].
pub struct PackedRows {
    n: usize,
    tokens: usize,
    quant: RowQuant,
    row: AlignedBytes,
    bytes: Vec<u8>,
}

impl PackedRows {
    /// Rows of `n` elements (a multiple of 32).
    pub fn new(n: usize) -> PackedRows {
        assert!(n % QK == 0 && n > 0, "PackedRows: rows of {n} are not whole blocks");
        let quant = RowQuant::new(GgmlType::Q8_0, n).expect("ggml quantises Q8_0");
        PackedRows {
            n,
            tokens: 0,
            row: AlignedBytes::zeroed(quant.len()),
            quant,
            bytes: Vec::new(),
        }
    }

    /// Elements per row.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Rows packed.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    fn pairs(&self) -> usize {
        self.tokens.div_ceil(2)
    }

    /// Quantises and packs `rows` (each of `n` floats), replacing what was packed.
    pub fn pack<'a>(&mut self, rows: impl ExactSizeIterator<Item = &'a [f32]>) {
        let nb = self.n / QK;
        self.tokens = rows.len();
        self.bytes.clear();
        self.bytes.resize(self.pairs() * nb * PAIR_BLOCK, 0);
        for (t, x) in rows.enumerate() {
            assert_eq!(
                x.len(),
                self.n,
                "PackedRows::pack: row {t} has {} floats, not {}",
                x.len(),
                self.n
            );
            self.quant.run(x, self.row.as_mut_slice());
            let q = self.row.as_slice();
            let (pair, side) = (t / 2, t % 2);
            for b in 0..nb {
                let blk = &q[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
                let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let sum: i32 = blk[2..].iter().map(|&v| v as i8 as i32).sum();
                let out = &mut self.bytes[(pair * nb + b) * PAIR_BLOCK..][..PAIR_BLOCK];
                out[32 * side..32 * side + 32].copy_from_slice(&blk[2..]);
                for lane in [0, 1, 4, 5] {
                    let l = lane + 2 * side;
                    out[64 + 4 * l..68 + 4 * l].copy_from_slice(&d.to_ne_bytes());
                    out[96 + 4 * l..100 + 4 * l].copy_from_slice(&(8 * sum).to_ne_bytes());
                }
            }
        }
    }
}

/// `out[t * bs + j] = dot(row j of w, token t)` for the `rows` interleaved Q4_0 rows of `w` (whole groups of 8,
/// rows of `x.n()`) and every packed token of `x`.
pub fn gemm(w: &[u8], rows: usize, x: &PackedRows, out: &mut [f32], bs: usize) {
    let nb = x.n / QK;
    let t = x.tokens;
    assert!(
        rows % 8 == 0
            && w.len() == rows / 8 * nb * GROUP_BLOCK
            && bs >= rows
            && (t == 0 || out.len() >= (t - 1) * bs + rows),
        "q4x8 gemm: {} weight bytes for {rows} rows of {}, {} outputs for {t} tokens with stride {bs}",
        w.len(),
        x.n,
        out.len()
    );
    if rows == 0 || t == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::x86::supported() {
        let stride = nb * PAIR_BLOCK;
        for p0 in (0..x.pairs()).step_by(PAIRS) {
            let p = PAIRS.min(x.pairs() - p0);
            let xs = &x.bytes[p0 * stride..(p0 + p) * stride];
            let tokens = (t - 2 * p0).min(2 * p);
            let o = &mut out[2 * p0 * bs..];
            for r in (0..rows).step_by(4) {
                let wg = &w[r / 8 * nb * GROUP_BLOCK..(r / 8 + 1) * nb * GROUP_BLOCK];
                let tile = x86::Tile {
                    w: wg,
                    // The first pass over the rows reads them from memory, later ones from cache. Prefetching in
                    // the first pass (once per group) raised 4B prefill (128 tokens, 2 threads, 16 alternating
                    // runs) from medians of 208 and 197 to 221 and 215 tok/s on a 2-core EPYC.
                    prefetch: p0 == 0 && r % 8 == 0,
                    half: r / 4 % 2,
                    nb,
                    x: xs,
                    tokens,
                    row: r,
                    bs,
                };
                // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time); `wg` is one whole group of nb
                // blocks, `xs` holds p pairs of nb packed blocks, and `o` has room for `tokens` rows of stride bs
                // reaching column r + 4 <= rows <= bs (checked above).
                unsafe {
                    match p {
                        4 => tile.run::<4>(o),
                        3 => tile.run::<3>(o),
                        2 => tile.run::<2>(o),
                        _ => tile.run::<1>(o),
                    }
                }
            }
        }
        return;
    }
    portable(w, rows, x, out, bs);
}

/// `sum((q - 8) * a)` over row `r` of an interleaved block and 32 activation quants: byte i of the row sits in
/// chunk r (i < 8) or chunk 8 + r, its nibbles xored with 8.
pub(super) fn block_dot(blk: &[u8], r: usize, qa: &[u8]) -> i32 {
    let mut dot = 0i32;
    for i in 0..16 {
        let byte = blk[16 + 8 * (r + 8 * (i / 8)) + i % 8] ^ 0x88;
        dot += ((byte & 0x0f) as i32 - 8) * qa[i] as i8 as i32;
        dot += ((byte >> 4) as i32 - 8) * qa[i + 16] as i8 as i32;
    }
    dot
}

/// The same sums in the same order, one (token, row) at a time.
fn portable(w: &[u8], rows: usize, x: &PackedRows, out: &mut [f32], bs: usize) {
    let nb = x.n / QK;
    for t in 0..x.tokens {
        for j in 0..rows {
            let (g, r) = (j / 8, j % 8);
            let mut acc = 0f32;
            for b in 0..nb {
                let blk = &w[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
                let dw = half::f16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]).to_f32();
                let xb = &x.bytes[((t / 2) * nb + b) * PAIR_BLOCK..][..PAIR_BLOCK];
                let qa = &xb[32 * (t % 2)..32 * (t % 2) + 32];
                let da = f32::from_ne_bytes(xb[64 + 8 * (t % 2)..68 + 8 * (t % 2)].try_into().expect("4 bytes"));
                let dot = block_dot(blk, r, qa);
                acc = (dot as f32).mul_add(dw * da, acc);
            }
            out[t * bs + j] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::q4x8_gemv::x86::prefetch_ahead;
    use super::{GROUP_BLOCK, PAIR_BLOCK};
    use std::arch::x86_64::*;

    /// Four rows (half `half` of the 8-row group `w`) by the packed pairs of `x`, written to columns
    /// `row..row + 4` of the first `tokens` output rows.
    pub struct Tile<'a> {
        pub w: &'a [u8],
        /// Fetch ahead as the GEMV does, a group ahead of the rows read.
        pub prefetch: bool,
        pub half: usize,
        pub nb: usize,
        pub x: &'a [u8],
        pub tokens: usize,
        pub row: usize,
        pub bs: usize,
    }

    impl Tile<'_> {
        /// `P` pairs; the caller guarantees `x` holds them and `out` the outputs (see [`super::gemm`]).
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn run<const P: usize>(&self, out: &mut [f32]) {
            let m4 = _mm256_set1_epi8(0x0f);
            let x88 = _mm256_set1_epi8(0x88u8 as i8);
            let ones = _mm256_set1_epi16(1);
            let scale_lanes = _mm256_setr_epi32(0, 1, 0, 1, 2, 3, 2, 3);
            let stride = self.nb * PAIR_BLOCK;
            let mut acc = [_mm256_setzero_ps(); P];
            for b in 0..self.nb {
                // SAFETY (all loads): block b of the group is inside `w`, block b of pair p inside `x`.
                unsafe {
                    let blk = self.w.as_ptr().add(b * GROUP_BLOCK);
                    if self.prefetch {
                        prefetch_ahead(blk);
                    }
                    let d = _mm_cvtph_ps(_mm_loadl_epi64(blk.add(8 * self.half).cast()));
                    // [d0, d1, d0, d1, d2, d3, d2, d3]: the rows of the lanes that `hadd` leaves.
                    let dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), scale_lanes);
                    let v0 = _mm256_xor_si256(_mm256_loadu_si256(blk.add(16 + 32 * self.half).cast()), x88);
                    let v1 = _mm256_xor_si256(_mm256_loadu_si256(blk.add(80 + 32 * self.half).cast()), x88);
                    // Elements 0-7, 16-23, 8-15 and 24-31 of the 4 rows, 8 bytes per row.
                    let wq = [
                        _mm256_and_si256(v0, m4),
                        _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4),
                        _mm256_and_si256(v1, m4),
                        _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4),
                    ];
                    let dot = |q: *const u8| {
                        let a = |o: usize| _mm256_set1_epi64x((q.add(o) as *const i64).read_unaligned());
                        let s01 =
                            _mm256_add_epi16(_mm256_maddubs_epi16(wq[0], a(0)), _mm256_maddubs_epi16(wq[1], a(16)));
                        let s23 =
                            _mm256_add_epi16(_mm256_maddubs_epi16(wq[2], a(8)), _mm256_maddubs_epi16(wq[3], a(24)));
                        // Four 16-bit partial sums per row, rows 0, 1 | 2, 3; each at most 4 * 2 * 15 * 128, so
                        // that two of them still fit when `hadd` joins them.
                        _mm256_add_epi16(s01, s23)
                    };
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let xb = self.x.as_ptr().add(p * stride + b * PAIR_BLOCK);
                        // [r0 t0, r1 t0, r0 t1, r1 t1, r2 t0, r3 t0, r2 t1, r3 t1], less 8 * sum(a).
                        let sums = _mm256_madd_epi16(_mm256_hadd_epi16(dot(xb), dot(xb.add(32))), ones);
                        let i = _mm256_sub_epi32(sums, _mm256_loadu_si256(xb.add(96).cast()));
                        let s = _mm256_mul_ps(dw, _mm256_loadu_ps(xb.add(64).cast()));
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, *acc);
                    }
                }
            }
            let to_rows = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
            for (p, acc) in acc.iter().enumerate() {
                let v = _mm256_permutevar8x32_ps(*acc, to_rows);
                let t = 2 * p;
                // SAFETY: token rows below `tokens` have columns row..row + 4 inside `out` (the caller's check).
                unsafe {
                    if t < self.tokens {
                        _mm_storeu_ps(out.as_mut_ptr().add(t * self.bs + self.row), _mm256_castps256_ps128(v));
                    }
                    if t + 1 < self.tokens {
                        let hi = _mm256_extractf128_ps(v, 1);
                        _mm_storeu_ps(out.as_mut_ptr().add((t + 1) * self.bs + self.row), hi);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ggml::q4x8::tests::random;
    use crate::ggml::q4x8::{interleave, Gemv};

    /// `rows` random Q4_0 rows of `n`, interleaved.
    pub(crate) fn weights(gemv: &Gemv, n: usize, rows: usize) -> AlignedBytes {
        let wq = RowQuant::new(GgmlType::Q4_0, n).unwrap();
        let mut w = AlignedBytes::zeroed(gemv.w_len(rows));
        let wl = wq.len();
        for r in 0..rows {
            wq.run(&random(n, 1000 + r as u32), &mut w.as_mut_slice()[r * wl..(r + 1) * wl]);
        }
        interleave(w.as_mut_slice(), n, &mut Vec::new());
        w
    }

    /// Every token's outputs equal ggml's GEMV on that token alone, bit for bit, for odd and even token counts,
    /// partial tiles, and both kernels (AVX2 and portable).
    #[test]
    fn gemm_equals_ggml_gemv_per_token() {
        for (n, rows) in [(512, 24), (768, 16), (256, 8)] {
            let Some(gemv) = Gemv::new(GgmlType::Q4_0, n, rows) else {
                eprintln!("note: no Q4_0 repack on this CPU");
                return;
            };
            let w = weights(&gemv, n, rows);
            let xq = RowQuant::new(GgmlType::Q8_0, n).unwrap();
            let mut xr = AlignedBytes::zeroed(xq.len());
            for tokens in [1, 2, 3, 7, 8, 9, 17] {
                let xs: Vec<Vec<f32>> = (0..tokens).map(|t| random(n, 7 + t as u32)).collect();
                let mut packed = PackedRows::new(n);
                packed.pack(xs.iter().map(|x| x.as_slice()));
                let bs = rows + 5;
                let mut got = vec![f32::NAN; tokens * bs];
                gemm(w.as_slice(), rows, &packed, &mut got, bs);
                let mut slow = vec![f32::NAN; tokens * bs];
                portable(w.as_slice(), rows, &packed, &mut slow, bs);
                for (t, x) in xs.iter().enumerate() {
                    xq.run(x, xr.as_mut_slice());
                    let mut want = vec![0f32; rows];
                    gemv.run_ggml(w.as_slice(), xr.as_slice(), &mut want);
                    let row = t * bs..t * bs + rows;
                    assert_eq!(
                        &got[row.clone()],
                        &want[..],
                        "n {n}, {tokens} tokens, token {t}: gemm vs gemv"
                    );
                    assert_eq!(
                        &slow[row],
                        &want[..],
                        "n {n}, {tokens} tokens, token {t}: portable vs gemv"
                    );
                    assert!(
                        got[t * bs + rows..(t + 1) * bs].iter().all(|v| v.is_nan()),
                        "wrote past the rows"
                    );
                }
            }
        }
    }

    /// Activations at the Q8_0 extremes (+-127 everywhere) and weights at the nibble extremes (0 and 15) keep the
    /// 16-bit sums of the kernel inside range.
    #[test]
    fn gemm_extremes_do_not_saturate() {
        let (n, rows) = (256, 8);
        let Some(gemv) = Gemv::new(GgmlType::Q4_0, n, rows) else {
            return;
        };
        let wq = RowQuant::new(GgmlType::Q4_0, n).unwrap();
        let mut w = AlignedBytes::zeroed(gemv.w_len(rows));
        let wl = wq.len();
        for r in 0..rows {
            let sign = if r % 2 == 0 { 1.0 } else { -1.0 };
            let x: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { sign } else { -sign * 0.875 }).collect();
            wq.run(&x, &mut w.as_mut_slice()[r * wl..(r + 1) * wl]);
        }
        interleave(w.as_mut_slice(), n, &mut Vec::new());
        let xs = [
            vec![1.0f32; n],
            vec![-1.0f32; n],
            (0..n).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect(),
        ];
        let mut packed = PackedRows::new(n);
        packed.pack(xs.iter().map(|x| x.as_slice()));
        let mut got = vec![0f32; xs.len() * rows];
        gemm(w.as_slice(), rows, &packed, &mut got, rows);
        let xq = RowQuant::new(GgmlType::Q8_0, n).unwrap();
        let mut xr = AlignedBytes::zeroed(xq.len());
        for (t, x) in xs.iter().enumerate() {
            xq.run(x, xr.as_mut_slice());
            let mut want = vec![0f32; rows];
            gemv.run_ggml(w.as_slice(), xr.as_slice(), &mut want);
            assert_eq!(&got[t * rows..(t + 1) * rows], &want[..], "token {t}");
        }
    }

    #[test]
    #[should_panic(expected = "weight bytes")]
    fn gemm_refuses_a_short_matrix() {
        let mut packed = PackedRows::new(256);
        packed.pack([vec![0f32; 256].as_slice()].into_iter());
        gemm(&[0u8; 8 * 18 * 7], 8, &packed, &mut [0f32; 8], 8);
    }
}
