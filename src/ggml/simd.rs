//! Small f32 kernels for the attention op (src/graph/attn_op.rs), compiled twice: once for the baseline ISA and
//! once with AVX2+FMA enabled, picked at run time. The Rust code outside build.rs's `-march` choice would
//! otherwise be limited to SSE2; the bodies are plain loops over 8-lane accumulators that LLVM vectorises.
//! f16 rows are converted with ggml's own (F16C when available) `ggml_cpu_fp16_to_fp32`.

use super::sys;

/// `out[j * n + c] = dot(q[j], k[c])` for `g = q.len() / hd` query rows and `n = k.len() / hd` key rows.
pub fn attn_scores(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
    let (g, n) = (q.len() / hd, k.len() / hd);
    assert!(
        hd > 0 && q.len() == g * hd && k.len() == n * hd && out.len() == g * n,
        "attn_scores: q {} k {} out {} with hd {hd}",
        q.len(),
        k.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time), all the body needs.
        return unsafe { scores_avx2(q, k, hd, out) };
    }
    scores_body(q, k, hd, out)
}

/// `acc[j] += sum_c p[j * n + c] * v[c]` for `g = acc.len() / hd` rows and `n = v.len() / hd` value rows.
pub fn attn_accumulate(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    let (g, n) = (acc.len() / hd, v.len() / hd);
    assert!(
        hd > 0 && acc.len() == g * hd && v.len() == n * hd && p.len() == g * n,
        "attn_accumulate: acc {} p {} v {} with hd {hd}",
        acc.len(),
        p.len(),
        v.len()
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as in attn_scores.
        return unsafe { accumulate_avx2(acc, p, v, hd) };
    }
    accumulate_body(acc, p, v, hd)
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
    scores_body(q, k, hd, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    accumulate_body(acc, p, v, hd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(x: &mut [f32], m: f32) -> f32 {
    exp_sum_body(x, m)
}

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

/// exp(x) without branches, so that a loop over it vectorises.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    const LO: f32 = -87.0;
    const HI: f32 = 88.0;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // clamp keeps NaN, which then poisons the result.
    let xc = x.clamp(LO, HI);
    let t = xc.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32; // n as an integer, in [-126, 127]
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits((k.wrapping_add(127) as u32) << 23);
    if x < LO {
        0.0
    } else {
        e * scale
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] = x[i].mul_add(y[i], lanes[i]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn scores_body(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
    let n = k.len() / hd;
    for (qj, oj) in q.chunks_exact(hd).zip(out.chunks_exact_mut(n.max(1))) {
        for (o, kc) in oj.iter_mut().zip(k.chunks_exact(hd)) {
            *o = dot(qj, kc);
        }
    }
}

#[inline(always)]
fn accumulate_body(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
    let n = v.len() / hd;
    if n == 0 {
        return;
    }
    for (aj, pj) in acc.chunks_exact_mut(hd).zip(p.chunks_exact(n)) {
        for (&w, vc) in pj.iter().zip(v.chunks_exact(hd)) {
            for (a, &x) in aj.iter_mut().zip(vc) {
                *a = x.mul_add(w, *a);
            }
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
