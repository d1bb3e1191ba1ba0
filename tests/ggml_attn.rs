//! rope_ext, soft_max_ext, flash_attn_ext and mul_mat_id vs naive Rust.
mod ggml_util;

use ggml_util::*;
use smallthinker::ggml::{Prec, RopeMode, RopeParams};
use smallthinker::gguf::GgmlType;

/// Naive RoPE of x [hd, n_head, n_tok] at `pos`: pairs (i, i + n_dims/2) for NEOX, (2i, 2i+1) for NORMAL.
fn naive_rope(x: &[f32], ne: [i64; 4], pos: &[i32], n_dims: usize, base: f32, neox: bool) -> Vec<f32> {
    let hd = ne[0] as usize;
    let mut out = x.to_vec();
    for (h, head) in out.chunks_mut(hd).enumerate() {
        let p = pos[h / ne[1] as usize] as f64;
        let src = &x[h * hd..(h + 1) * hd];
        for i in 0..n_dims / 2 {
            let theta = p * (base as f64).powf(-2.0 * i as f64 / n_dims as f64);
            let (s, c) = theta.sin_cos();
            let (i0, i1) = if neox { (i, i + n_dims / 2) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (src[i0] as f64, src[i1] as f64);
            head[i0] = (x0 * c - x1 * s) as f32;
            head[i1] = (x0 * s + x1 * c) as f32;
        }
    }
    out
}

#[test]
fn rope_ext_neox_and_normal_match_a_naive_rotation() {
    let ctx = ctx();
    let mut rng = Rng::new(11);
    let ne = [16, 3, 5, 1]; // [head_dim, n_head, n_tokens]
    let (x, xv) = rand_f32(&ctx, &ne[..3], &mut rng);
    let pos_v = [0, 1, 2, 7, 300];
    let pos = ctx.new_tensor_1d(GgmlType::I32, 5);
    pos.set_i32(&pos_v).unwrap();
    for (mode, neox) in [(RopeMode::Neox, true), (RopeMode::Normal, false)] {
        for n_dims in [16, 8] {
            let p = RopeParams {
                mode,
                ..RopeParams::neox(n_dims, 10000.0)
            };
            let got = run(&ctx, ctx.rope_ext(x, pos, None, p), 2);
            let want = naive_rope(&xv, ne, &pos_v, n_dims as usize, 10000.0, neox);
            assert_close(&format!("rope {mode:?} n_dims {n_dims}"), &want, &got, 1e-9);
            if n_dims < 16 {
                assert_eq!(got[15], xv[15], "dims past n_dims pass through");
            }
        }
    }
}

#[test]
fn soft_max_ext_with_mask_and_scale() {
    let ctx = ctx();
    let mut rng = Rng::new(12);
    let ne = [6, 4, 3, 1]; // [n_kv, n_q, n_head]
    let (a, av) = rand_f32(&ctx, &ne[..3], &mut rng);
    // causal mask over [n_kv, n_q], broadcast over heads; F16 like llama.cpp's KQ mask
    let mask_v: Vec<f32> = (0..4)
        .flat_map(|q| (0..6).map(move |k| if k > q + 2 { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    for mty in [GgmlType::F32, GgmlType::F16] {
        let mask = ctx.new_tensor_2d(mty, 6, 4);
        if mty == GgmlType::F32 {
            mask.set_f32(&mask_v).unwrap()
        } else {
            mask.set_f32_as_f16(&mask_v).unwrap()
        }
        let scale = 0.7;
        let pre: Vec<f32> = av.iter().enumerate().map(|(i, x)| x * scale + mask_v[i % 24]).collect();
        let got = run(&ctx, ctx.soft_max_ext(a, Some(mask), scale, 0.0), 2);
        assert_close(
            &format!("soft_max_ext mask {mty}"),
            &naive_softmax_rows(&pre, 6),
            &got,
            1e-10,
        );
        assert_eq!(got[5], 0.0, "masked entry");
    }
}

#[test]
fn flash_attn_ext_matches_naive_gqa_attention() {
    // llama.cpp's F16 cache, and F32 K/V
    flash_attn_case(GgmlType::F16);
    flash_attn_case(GgmlType::F32);
}

fn flash_attn_case(kv_ty: GgmlType) {
    let ctx = ctx();
    let mut rng = Rng::new(13);
    let (d, n_q, n_kv, n_head, n_head_kv) = (32i64, 3i64, 7i64, 4i64, 2i64);
    let (q, qv) = rand_f32(&ctx, &[d, n_q, n_head], &mut rng);
    let kv_vals = |rng: &mut Rng| -> Vec<f32> {
        rng.vec((d * n_kv * n_head_kv) as usize)
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect()
    };
    let (kv, vv) = (kv_vals(&mut rng), kv_vals(&mut rng));
    let k = ctx.new_tensor_3d(kv_ty, d, n_kv, n_head_kv);
    let v = ctx.new_tensor_3d(kv_ty, d, n_kv, n_head_kv);
    if kv_ty == GgmlType::F16 {
        k.set_f32_as_f16(&kv).unwrap();
        v.set_f32_as_f16(&vv).unwrap();
    } else {
        k.set_f32(&kv).unwrap();
        v.set_f32(&vv).unwrap();
    }
    // query i sees keys 0..=i+4 (the last 4 queries of a 7-token causal window)
    let mask_v: Vec<f32> = (0..n_q)
        .flat_map(|i| (0..n_kv).map(move |j| if j > i + 4 { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = ctx.new_tensor_2d(GgmlType::F16, n_kv, n_q);
    mask.set_f32_as_f16(&mask_v).unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    let out = ctx.flash_attn_ext(q, k, v, Some(mask), scale, 0.0, 0.0);
    ctx.flash_attn_ext_set_prec(out, Prec::F32);
    assert_eq!(out.ne(), [d, n_head, n_q, 1]);
    let got = run(&ctx, out, 2);

    let qn = [d, n_q, n_head, 1];
    let kn = [d, n_kv, n_head_kv, 1];
    let mut want = vec![0f32; got.len()];
    for h in 0..n_head {
        let hk = h / (n_head / n_head_kv);
        for i in 0..n_q {
            let s: Vec<f32> = (0..n_kv)
                .map(|j| {
                    let dot: f32 = (0..d).map(|c| qv[at(qn, c, i, h, 0)] * kv[at(kn, c, j, hk, 0)]).sum();
                    dot * scale + mask_v[(i * n_kv + j) as usize]
                })
                .collect();
            let p = naive_softmax_rows(&s, n_kv as usize);
            for c in 0..d {
                let o: f32 = (0..n_kv).map(|j| p[j as usize] * vv[at(kn, c, j, hk, 0)]).sum();
                want[at([d, n_head, n_q, 1], c, h, i, 0)] = o;
            }
        }
    }
    // Q is rounded to F16 for the F16 K dot product, and the CPU kernel accumulates V in F16: ~1e-6
    assert_close(&format!("flash_attn_ext {kv_ty}"), &want, &got, 5e-4);
}

#[test]
fn mul_mat_id_matches_naive_per_token_experts() {
    let ctx = ctx();
    let mut rng = Rng::new(14);
    let (k, n, n_expert, n_used, n_tok) = (16i64, 5i64, 4i64, 2i64, 3i64);
    let (w, wv) = rand_f32(&ctx, &[k, n, n_expert], &mut rng);
    let ids_v = [3, 0, 1, 3, 2, 1]; // [n_used, n_tok]
    let ids = ctx.new_tensor_2d(GgmlType::I32, n_used, n_tok);
    ids.set_i32(&ids_v).unwrap();
    // b [k, 1, n_tok] is broadcast to every selected expert (the up/gate case); [k, n_used, n_tok] for down
    for b_used in [1, n_used] {
        let bn = [k, b_used, n_tok, 1];
        let (b, bv) = rand_f32(&ctx, &bn[..3], &mut rng);
        let out = ctx.mul_mat_id(w, b, ids);
        assert_eq!(out.ne(), [n, n_used, n_tok, 1]);
        let got = run(&ctx, out, 2);
        let wn = [k, n, n_expert, 1];
        let mut want = vec![0f32; got.len()];
        for t in 0..n_tok {
            for e in 0..n_used {
                let ex = ids_v[(t * n_used + e) as usize] as i64;
                for i in 0..n {
                    want[at([n, n_used, n_tok, 1], i, e, t, 0)] = (0..k)
                        .map(|c| wv[at(wn, c, i, ex, 0)] * bv[at(bn, c, e % b_used, t, 0)])
                        .sum();
                }
            }
        }
        assert_close(&format!("mul_mat_id b_used {b_used}"), &want, &got, 1e-10);
    }
}
