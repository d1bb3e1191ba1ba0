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
