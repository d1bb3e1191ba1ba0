//! Small kernels for the attention op (src/graph/attn_op.rs), picked at run time: Rust code is otherwise limited
//! to SSE2 whatever build.rs's `-march` choice for ggml. The scores and accumulate kernels are AVX2/FMA/F16C
//! intrinsics (module `x86`) that read f32 or f16 cache rows in place, with a portable fallback that converts
//! each row with ggml's `ggml_cpu_fp16_to_fp32`; the softmax exp is a polynomial, as AVX2/FMA intrinsics on 8
//! lanes with a scalar version for the tail and for other CPUs.

use super::sys;

/// Rows of a KV cache, read in place: `hd` values from each of `starts` (element offsets into the data).
#[derive(Clone, Copy)]
pub enum CacheRows<'a> {
    F32(&'a [f32]),
    /// `ggml_fp16_t` bits.
    F16(&'a [u16]),
}

impl CacheRows<'_> {
    fn len(&self) -> usize {
        match self {
            CacheRows::F32(d) => d.len(),
            CacheRows::F16(d) => d.len(),
        }
    }

    /// Panics unless every row `starts[c]..starts[c] + hd` lies inside the data (the kernels read them
    /// unchecked).
    fn check(&self, starts: &[usize], hd: usize, what: &str) {
        let len = self.len();
        assert!(
            starts.iter().all(|&s| s.checked_add(hd).is_some_and(|e| e <= len)),
            "{what}: a row of {hd} values lies outside the cache's {len}"
        );
    }

    /// Row `start` as f32 (the portable path).
    fn row(&self, start: usize, hd: usize, out: &mut Vec<f32>) {
        out.resize(hd, 0.0);
        match self {
            CacheRows::F32(d) => out.copy_from_slice(&d[start..start + hd]),
            CacheRows::F16(d) => f16_to_f32(&d[start..start + hd], out),
        }
    }
}

/// `out[j * n + c] = dot(q[j], row c)` for `g = q.len() / hd` query rows and the `n = starts.len()` cache rows.
/// While it reads row c it asks the CPU to fetch row `ahead[c]` (any length; rows outside `k` are skipped): the
/// rows of the next tile, spread over this one's work so that the fetches overlap the arithmetic.
pub fn attn_scores(q: &[f32], k: CacheRows, starts: &[usize], ahead: &[usize], hd: usize, out: &mut [f32]) {
    let (g, n) = (q.len() / hd.max(1), starts.len());
    assert!(
        hd > 0 && q.len() == g * hd && out.len() == g * n,
        "attn_scores: q {} out {} with hd {hd} and {n} rows",
        q.len(),
        out.len()
    );
    k.check(starts, hd, "attn_scores");
    #[cfg(target_arch = "x86_64")]
    if hd % 8 == 0 && x86::supported() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time); every row is inside `k` (checked above)
        // and hd is a multiple of the 8 lanes the kernel reads at a time.
        return unsafe { x86::scores(q, k, starts, ahead, hd, out) };
    }
    let mut row = Vec::new();
    for (c, &st) in starts.iter().enumerate() {
        prefetch_rows(k, ahead.get(c).copied().into_iter(), hd);
        k.row(st, hd, &mut row);
        for (j, qj) in q.chunks_exact(hd).enumerate() {
            out[j * n + c] = qj.iter().zip(&row).map(|(a, b)| a * b).sum();
        }
    }
}

/// `acc[j] += sum_c p[j * n + c] * row c` for `g = acc.len() / hd` rows and the `n = starts.len()` cache rows,
/// fetching rows `ahead` as [`attn_scores`] does.
pub fn attn_accumulate(acc: &mut [f32], p: &[f32], v: CacheRows, starts: &[usize], ahead: &[usize], hd: usize) {
    let (g, n) = (acc.len() / hd.max(1), starts.len());
    assert!(
        hd > 0 && acc.len() == g * hd && p.len() == g * n,
        "attn_accumulate: acc {} p {} with hd {hd} and {n} rows",
        acc.len(),
        p.len()
    );
    v.check(starts, hd, "attn_accumulate");
    #[cfg(target_arch = "x86_64")]
    if hd % 16 == 0 && x86::supported() {
        // SAFETY: as in attn_scores; hd is a multiple of the 16 values the kernel keeps per row.
        return unsafe { x86::accumulate(acc, p, v, starts, ahead, hd) };
    }
    let mut row = Vec::new();
    for (c, &st) in starts.iter().enumerate() {
        prefetch_rows(v, ahead.get(c).copied().into_iter(), hd);
        v.row(st, hd, &mut row);
        for (j, aj) in acc.chunks_exact_mut(hd).enumerate() {
            let w = p[j * n + c];
            aj.iter_mut().zip(&row).for_each(|(a, &x)| *a = x.mul_add(w, *a));
        }
    }
}

/// Asks the CPU to fetch the rows `starts` of `rows` (`hd` values each) into its L2 cache, without waiting: the
/// attention op reads a KV head's slice of each cell row, a short run at a large stride that the hardware
/// prefetchers do not follow, so the kernels fetch the next tile's rows one per row they compute on (a whole
/// tile's fetches at once filled the CPU's miss queue and stalled). Into L2, not L1: the next tile's K and V
/// slices (32 KiB for 64 cells of 128 f16) are as big as L1 and pushed out the rows and queries still in use;
/// `attn_op_speed 12 2 128 8192 32 2 5` went from 50-56 to 34-39 ms. Offsets outside the data are skipped.
pub fn prefetch_rows(rows: CacheRows, starts: impl Iterator<Item = usize>, hd: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let (base, size, len) = match rows {
            CacheRows::F32(d) => (d.as_ptr().cast::<u8>(), 4, d.len()),
            CacheRows::F16(d) => (d.as_ptr().cast::<u8>(), 2, d.len()),
        };
        for st in starts.filter(|&st| st.checked_add(hd).is_some_and(|e| e <= len)) {
            // SAFETY: the row lies inside the slice (checked above).
            prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T1 }>(unsafe { base.add(st * size) }, hd * size);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, starts, hd);
}

/// Asks the CPU to start fetching `bytes` into cache without waiting (rows read at irregular gaps, which the
/// hardware prefetchers pick up too late).
pub fn prefetch_bytes(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr(), bytes.len());
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// A prefetch (`_MM_HINT_*` `HINT`) of every 64-byte line of `len` bytes at `p`; the caller keeps them inside one
/// allocation.
#[cfg(target_arch = "x86_64")]
fn prefetch_lines<const HINT: i32>(p: *const u8, len: usize) {
    for line in (0..len).step_by(64) {
        // SAFETY: a prefetch never faults, and wrapping_add makes no claim that the address is in bounds.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.wrapping_add(line).cast()) };
    }
}

/// `x[i] = exp(x[i] - m)` for every element, returning their sum: the online softmax's inner step.
///
/// A polynomial exp over 8 lanes (Cody-Waite reduction by ln 2, Cephes' degree-7 expf polynomial, about 2 ulp),
/// because the scalar libm call was a third of the attention op's time at long context. Arguments below
/// -87 give exactly 0 (a score that far below the row's max weighs nothing in f32 anyway); NaN stays NaN.
pub fn exp_shifted_sum(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in attn_scores.
        return unsafe { exp_sum_avx2(x, m) };
    }
    exp_sum_body(x, m)
}

/// f16 bits (`ggml_fp16_t`) to f32, exactly, with ggml's CPU conversion.
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: lengths differ");
    if src.is_empty() {
        return;
    }
    // SAFETY: both slices hold src.len() elements; ggml_fp16_t is u16; the CPU backend's conversion reads and
    // writes exactly n elements.
    unsafe { sys::ggml_cpu_fp16_to_fp32(src.as_ptr(), dst.as_mut_ptr(), src.len() as i64) };
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// [`exp_poly`] on 8 lanes at a time. Written with intrinsics: LLVM left the plain loop scalar (perf showed
/// `vmovss`/`vaddss` throughout), which made the exp a fifth of the attention op.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(x: &mut [f32], m: f32) -> f32 {
    use std::arch::x86_64::*;
    let mv = _mm256_set1_ps(m);
    let (lo, hi) = (_mm256_set1_ps(EXP_LO), _mm256_set1_ps(EXP_HI));
    let magic = _mm256_set1_ps(EXP_MAGIC);
    let mut sum = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: c holds 8 floats; unaligned loads and stores.
        unsafe {
            let x = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv);
            // max/min return their second operand when either is NaN: this order keeps a NaN x.
            let xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
            let t = _mm256_fmadd_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
            let n = _mm256_sub_ps(t, magic);
            let k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
            let r = _mm256_fmadd_ps(
                n,
                _mm256_set1_ps(-EXP_LN2_LO),
                _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_LN2_HI), xc),
            );
            let mut p = _mm256_set1_ps(EXP_P[0]);
            for &cf in &EXP_P[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(cf));
            }
            let e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
            let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127))));
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
            let y = _mm256_andnot_ps(below, _mm256_mul_ps(e, scale));
            _mm256_storeu_ps(c.as_mut_ptr(), y);
            sum = _mm256_add_ps(sum, y);
        }
    }
    let tail: f32 = chunks
        .into_remainder()
        .iter_mut()
        .map(|v| {
            *v = exp_poly(*v - m);
            *v
        })
        .sum();
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum::<f32>() + tail
}

const EXP_LO: f32 = -87.0;
const EXP_HI: f32 = 88.0;
/// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
const EXP_MAGIC: f32 = 12_582_912.0;
/// ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
const EXP_LN2_HI: f32 = 0.693_359_4;
const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' expf polynomial, highest degree first.
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

#[inline(always)]
fn exp_sum_body(x: &mut [f32], m: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp_poly(c[i] - m);
            lanes[i] += c[i];
        }
    }
    let tail: f32 = chunks
        .into_remainder()
        .iter_mut()
        .map(|v| {
            *v = exp_poly(*v - m);
            *v
        })
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// exp(x), the scalar form of `exp_sum_avx2`'s lanes (same constants, same results): the tail and other CPUs.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    // clamp keeps NaN, which then poisons the result.
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc.mul_add(std::f32::consts::LOG2_E, EXP_MAGIC);
    let n = t - EXP_MAGIC;
    let k = t.to_bits().wrapping_sub(EXP_MAGIC.to_bits()) as i32; // n as an integer, in [-126, 127]
    let r = n.mul_add(-EXP_LN2_LO, n.mul_add(-EXP_LN2_HI, xc));
    let p = EXP_P[1..].iter().fold(EXP_P[0], |p, &c| p.mul_add(r, c));
    let e = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits((k.wrapping_add(127) as u32) << 23);
    if x < EXP_LO {
        0.0
    } else {
        e * scale
    }
}

/// The AVX2 kernels of the attention op. They read the cache rows in place (F16C converts f16 on load), so no
/// row is copied: converting each row into a scratch tile first cost more than the arithmetic.
#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::CacheRows;
    use std::arch::x86_64::*;

    /// Whether this CPU runs the kernels here (and those of `q4_axpy`): AVX2, FMA and F16C.
    pub fn supported() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    /// Eight values of a row at element `i` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(rows: CacheRows, i: usize) -> __m256 {
        // SAFETY: the callers keep i + 8 within the checked row.
        unsafe {
            match rows {
                CacheRows::F32(d) => _mm256_loadu_ps(d.as_ptr().add(i)),
                CacheRows::F16(d) => _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(i).cast())),
            }
        }
    }

    /// The eight horizontal sums of `a` as one vector, lane i = sum of a[i] (a tree of hadds: the scalar hsum
    /// of each accumulator cost as much as the dot products).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1); // lanes: a0 a1 a2 a3 (low halves) | a0 a1 a2 a3 (high halves)
        let u1 = _mm256_hadd_ps(t2, t3);
        let lo = _mm256_permute2f128_ps(u0, u1, 0x20);
        let hi = _mm256_permute2f128_ps(u0, u1, 0x31);
        _mm256_add_ps(lo, hi)
    }

    /// R query rows scored against C key rows at once (R * C <= 12 independent accumulators, so the FMAs do not
    /// wait on each other's latency; each key chunk is converted once for the R rows), written to
    /// `out[r * n + c]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn score_block<const R: usize, const C: usize>(
        q: *const f32,
        hd: usize,
        k: CacheRows,
        st: &[usize],
        (out, n): (*mut f32, usize),
    ) {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 16];
            for i in (0..hd).step_by(8) {
                let mut kv = [_mm256_setzero_ps(); C];
                for (c, kc) in kv.iter_mut().enumerate() {
                    *kc = load8(k, st[c] + i);
                }
                for r in 0..R {
                    let qv = _mm256_loadu_ps(q.add(r * hd + i));
                    for (c, kc) in kv.iter().enumerate() {
                        acc[r * C + c] = _mm256_fmadd_ps(qv, *kc, acc[r * C + c]);
                    }
                }
            }
            let mut sums = [0f32; 16];
            _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(acc[..8].try_into().expect("8")));
            if R * C > 8 {
                _mm256_storeu_ps(sums.as_mut_ptr().add(8), hsum8(acc[8..].try_into().expect("8")));
            }
            for r in 0..R {
                for c in 0..C {
                    *out.add(r * n + c) = sums[r * C + c];
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(q: &[f32], k: CacheRows, starts: &[usize], ahead: &[usize], hd: usize, out: &mut [f32]) {
        let (g, n) = (q.len() / hd, starts.len());
        let mut c = 0;
        while c < n {
            // Two key rows at a time (one for an odd last).
            let nc = (n - c).min(2);
            for a in c..c + nc {
                super::prefetch_rows(k, ahead.get(a).copied().into_iter(), hd);
            }
            let st = &starts[c..c + nc];
            let mut j = 0;
            while j < g {
                let r = row_block(g - j);
                // SAFETY: rows j..j + r of q and of out exist, column c + nc <= n; the key rows are inside k (both
                // checked by the caller).
                unsafe {
                    let (qj, o) = (q.as_ptr().add(j * hd), (out.as_mut_ptr().add(j * n + c), n));
                    match (r, nc) {
                        (1, 1) => score_block::<1, 1>(qj, hd, k, st, o),
                        (2, 1) => score_block::<2, 1>(qj, hd, k, st, o),
                        (3, 1) => score_block::<3, 1>(qj, hd, k, st, o),
                        (4, 1) => score_block::<4, 1>(qj, hd, k, st, o),
                        (5, 1) => score_block::<5, 1>(qj, hd, k, st, o),
                        (_, 1) => score_block::<6, 1>(qj, hd, k, st, o),
                        (1, _) => score_block::<1, 2>(qj, hd, k, st, o),
                        (2, _) => score_block::<2, 2>(qj, hd, k, st, o),
                        (3, _) => score_block::<3, 2>(qj, hd, k, st, o),
                        (4, _) => score_block::<4, 2>(qj, hd, k, st, o),
                        (5, _) => score_block::<5, 2>(qj, hd, k, st, o),
                        _ => score_block::<6, 2>(qj, hd, k, st, o),
                    }
                }
                j += r;
            }
            c += nc;
        }
    }

    /// Sixteen output values (`d..d + 16`) of R rows, accumulated in registers over every value row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate_rows<const R: usize>(
        acc: *mut f32,
        p: *const f32,
        v: CacheRows,
        (starts, ahead): (&[usize], &[usize]),
        hd: usize,
        d: usize,
    ) {
        let n = starts.len();
        unsafe {
            let mut a = [[_mm256_setzero_ps(); 2]; R];
            for (r, ar) in a.iter_mut().enumerate() {
                ar[0] = _mm256_loadu_ps(acc.add(r * hd + d));
                ar[1] = _mm256_loadu_ps(acc.add(r * hd + d + 8));
            }
            for (c, &st) in starts.iter().enumerate() {
                super::prefetch_rows(v, ahead.get(c).copied().into_iter(), hd);
                let (v0, v1) = (load8(v, st + d), load8(v, st + d + 8));
                for (r, ar) in a.iter_mut().enumerate() {
                    let w = _mm256_set1_ps(*p.add(r * n + c));
                    ar[0] = _mm256_fmadd_ps(v0, w, ar[0]);
                    ar[1] = _mm256_fmadd_ps(v1, w, ar[1]);
                }
            }
            for (r, ar) in a.iter().enumerate() {
                _mm256_storeu_ps(acc.add(r * hd + d), ar[0]);
                _mm256_storeu_ps(acc.add(r * hd + d + 8), ar[1]);
            }
        }
    }

    /// Query rows the score and accumulate kernels take at once out of `left`: at most 6 (12 accumulators, plus
    /// two cache vectors and a query or weight: 15 of the 16 registers), and as even a split as that allows.
    /// Each accumulator takes one FMA per pass, so a block of few rows waits on the FMA latency, and each block
    /// reads the cache rows again. Against blocks of at most 4 (a 4B decode block of 6 rows ran as 4 + 2), the
    /// kernels on a hot 64-cell tile went from about 7 to 12 (scores) and 9 to 14 (accumulate) MACs per cycle.
    fn row_block(left: usize) -> usize {
        match left {
            0..=6 => left,
            7..=11 => left.div_ceil(2),
            _ => 6,
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn accumulate(acc: &mut [f32], p: &[f32], v: CacheRows, starts: &[usize], ahead: &[usize], hd: usize) {
        let (g, n) = (acc.len() / hd, starts.len());
        let mut j = 0;
        while j < g {
            let r = row_block(g - j);
            // SAFETY: rows j..j + r of acc and p exist, every value row is inside v (checked by the caller), and
            // d + 16 <= hd.
            let (aj, pj) = unsafe { (acc.as_mut_ptr().add(j * hd), p.as_ptr().add(j * n)) };
            for d in (0..hd).step_by(16) {
                // The fetches go with the first pass over the rows only.
                let rows = (starts, if j == 0 && d == 0 { ahead } else { &[][..] });
                unsafe {
                    match r {
                        1 => accumulate_rows::<1>(aj, pj, v, rows, hd, d),
                        2 => accumulate_rows::<2>(aj, pj, v, rows, hd, d),
                        3 => accumulate_rows::<3>(aj, pj, v, rows, hd, d),
                        4 => accumulate_rows::<4>(aj, pj, v, rows, hd, d),
                        5 => accumulate_rows::<5>(aj, pj, v, rows, hd, d),
                        _ => accumulate_rows::<6>(aj, pj, v, rows, hd, d),
                    }
                }
            }
            j += r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_shifted_sum_matches_libm() {
        // Every lane position and a tail, arguments across the whole range the softmax sees.
        let src: Vec<f32> = (0..203).map(|i| -90.0 + i as f32 * 0.4567).collect();
        let m = 1.25;
        let mut x = src.clone();
        let sum = exp_shifted_sum(&mut x, m);
        let mut want_sum = 0.0f64;
        for (&s, &got) in src.iter().zip(&x) {
            let want = f64::from(s - m).exp();
            want_sum += if s - m < -87.0 { 0.0 } else { want };
            if s - m < -87.0 {
                assert_eq!(got, 0.0, "exp({}) below the cut", s - m);
            } else {
                let rel = (f64::from(got) - want).abs() / want;
                assert!(rel < 4e-7, "exp({}) = {got}, want {want} (rel {rel:e})", s - m);
            }
        }
        assert!(
            ((f64::from(sum) - want_sum) / want_sum).abs() < 1e-6,
            "sum {sum} vs {want_sum}"
        );
        let mut odd = [f32::NAN, 0.0, f32::NEG_INFINITY, 100.0];
        exp_shifted_sum(&mut odd, 0.0);
        assert!(odd[0].is_nan());
        assert_eq!(odd[1], 1.0);
        assert_eq!(odd[2], 0.0);
        assert_eq!(odd[3], 88f32.exp(), "clamped at 88");
    }
}
