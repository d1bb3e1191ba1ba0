//! Elementwise, normalisation, activation, reduction and sort ops vs naive Rust (ggml's nmse metric).
mod ggml_util;

use ggml_util::*;
use smallthinker::ggml::{Prec, SortOrder};
use smallthinker::gguf::GgmlType;

#[test]
fn mul_mat_broadcasts_like_ggml_and_matches_naive() {
    let ctx = ctx();
    let mut rng = Rng::new(1);
    let (an, bn) = ([32, 7, 2, 1], [32, 5, 4, 3]); // a broadcast over b's dims 2 and 3
    let (a, av) = rand_f32(&ctx, &an, &mut rng);
    let (b, bv) = rand_f32(&ctx, &bn, &mut rng);
    let c = ctx.mul_mat(a, b);
    ctx.mul_mat_set_prec(c, Prec::F32);
    assert_eq!(c.ne(), [7, 5, 4, 3]);
    let got = run(&ctx, c, 2);
    assert_close("mul_mat", &naive_mul_mat(&av, an, &bv, bn), &got, 1e-10);
}

#[test]
fn mul_mat_with_f16_and_q8_0_weights() {
    let ctx = ctx();
    let mut rng = Rng::new(2);
    let (an, bn) = ([64, 6, 1, 1], [64, 3, 1, 1]);
    let av = rng.vec(6 * 64);
    let (b, bv) = rand_f32(&ctx, &bn, &mut rng);
    let a16 = ctx.new_tensor(GgmlType::F16, &an);
    a16.set_f32_as_f16(&av).unwrap();
    let q8 = smallthinker::ggml::from_float(GgmlType::Q8_0, &av);
    let aq = ctx.new_tensor(GgmlType::Q8_0, &an);
    aq.set_bytes(&q8).unwrap();
    let reference = naive_mul_mat(&av, an, &bv, bn);
    // F16 and Q8_0 dots round the activations to the weight's vec_dot type: ~1e-6 and ~1e-4 relative error
    assert_close("mul_mat f16", &reference, &run(&ctx, ctx.mul_mat(a16, b), 1), 1e-5);
    assert_close("mul_mat q8_0", &reference, &run(&ctx, ctx.mul_mat(aq, b), 1), 5e-4);
}

#[test]
fn binary_ops_broadcast() {
    let ctx = ctx();
    let mut rng = Rng::new(3);
    let (a, av) = rand_f32(&ctx, &[8, 3, 2], &mut rng);
    let (b, bv) = rand_f32(&ctx, &[8, 1, 2], &mut rng);
    let bv: Vec<f32> = bv.iter().map(|v| v + 2.0).collect(); // keep div away from 0
    b.set_f32(&bv).unwrap();
    let bi = |i: usize| bv[i % 8 + 8 * (i / 24)];
    let add: Vec<f32> = av.iter().enumerate().map(|(i, x)| x + bi(i)).collect();
    let mul: Vec<f32> = av.iter().enumerate().map(|(i, x)| x * bi(i)).collect();
    let div: Vec<f32> = av.iter().enumerate().map(|(i, x)| x / bi(i)).collect();
    assert_close("add", &add, &run(&ctx, ctx.add(a, b), 2), 1e-12);
    assert_close("mul", &mul, &run(&ctx, ctx.mul(a, b), 2), 1e-12);
    assert_close("div", &div, &run(&ctx, ctx.div(a, b), 2), 1e-12);
}

#[test]
fn scale_clamp_and_activations() {
    let ctx = ctx();
    let mut rng = Rng::new(4);
    let (a, av) = rand_f32(&ctx, &[16, 5], &mut rng);
    let map = |f: &dyn Fn(f32) -> f32| av.iter().map(|x| f(*x)).collect::<Vec<f32>>();
    assert_close("scale", &map(&|x| x * 0.25), &run(&ctx, ctx.scale(a, 0.25), 1), 1e-12);
    assert_close(
        "clamp",
        &map(&|x| x.clamp(-0.3, 0.5)),
        &run(&ctx, ctx.clamp(a, -0.3, 0.5), 1),
        1e-12,
    );
    assert_close("relu", &map(&|x| x.max(0.0)), &run(&ctx, ctx.relu(a), 1), 1e-12);
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    assert_close("sigmoid", &map(&sig), &run(&ctx, ctx.sigmoid(a), 1), 1e-9);
    assert_close("silu", &map(&|x| x * sig(x)), &run(&ctx, ctx.silu(a), 1), 1e-9);
}

#[test]
fn reglu_split_is_relu_gate_times_up() {
    let ctx = ctx();
    let mut rng = Rng::new(5);
    let (gate, gv) = rand_f32(&ctx, &[12, 4], &mut rng);
    let (up, uv) = rand_f32(&ctx, &[12, 4], &mut rng);
    let want: Vec<f32> = gv.iter().zip(&uv).map(|(g, u)| g.max(0.0) * u).collect();
    assert!(
        want.iter().filter(|v| **v == 0.0).count() > 10,
        "the test exercises the relu"
    );
    assert_close("reglu_split", &want, &run(&ctx, ctx.reglu_split(gate, up), 2), 1e-12);
}

#[test]
fn rms_norm_and_norm() {
    let ctx = ctx();
    let mut rng = Rng::new(6);
    let (a, av) = rand_f32(&ctx, &[32, 3], &mut rng);
    let eps = 1e-6f32;
    let mut rms = Vec::new();
    let mut norm = Vec::new();
    for row in av.chunks(32) {
        let ms = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / 32.0;
        rms.extend(row.iter().map(|x| (*x as f64 / (ms + eps as f64).sqrt()) as f32));
        let mean = row.iter().map(|x| *x as f64).sum::<f64>() / 32.0;
        let var = row.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / 32.0;
        norm.extend(
            row.iter()
                .map(|x| ((*x as f64 - mean) / (var + eps as f64).sqrt()) as f32),
        );
    }
    assert_close("rms_norm", &rms, &run(&ctx, ctx.rms_norm(a, eps), 2), 1e-10);
    assert_close("norm", &norm, &run(&ctx, ctx.norm(a, eps), 2), 1e-10);
}

#[test]
fn softmax_sum_rows_diag_mask() {
    let ctx = ctx();
    let mut rng = Rng::new(7);
    let (a, av) = rand_f32(&ctx, &[6, 4], &mut rng);
    assert_close(
        "softmax",
        &naive_softmax_rows(&av, 6),
        &run(&ctx, ctx.softmax(a), 2),
        1e-10,
    );
    let sums: Vec<f32> = av.chunks(6).map(|r| r.iter().sum()).collect();
    let s = ctx.sum_rows(a);
    assert_eq!(s.ne(), [1, 4, 1, 1]);
    assert_close("sum_rows", &sums, &run(&ctx, s, 1), 1e-12);
    let got = run(&ctx, ctx.diag_mask_inf(a, 1), 1);
    for (r, row) in got.chunks(6).enumerate() {
        for (c, v) in row.iter().enumerate() {
            if c > r + 1 {
                assert_eq!(*v, f32::NEG_INFINITY, "row {r} col {c}");
            } else {
                assert_eq!(*v, av[r * 6 + c], "row {r} col {c}");
            }
        }
    }
}

#[test]
fn argsort_and_top_k() {
    let ctx = ctx();
    let mut rng = Rng::new(8);
    let (a, av) = rand_f32(&ctx, &[10, 3], &mut rng);
    let sorted = |desc: bool| -> Vec<Vec<i32>> {
        av.chunks(10)
            .map(|row| {
                let mut idx: Vec<i32> = (0..10).collect();
                idx.sort_by(|&x, &y| row[x as usize].partial_cmp(&row[y as usize]).unwrap());
                if desc {
                    idx.reverse();
                }
                idx
            })
            .collect()
    };
    let mut g = ctx.new_graph(64);
    let asc = ctx.argsort(a, SortOrder::Asc);
    let desc = ctx.argsort(a, SortOrder::Desc);
    let top = ctx.argsort_top_k(a, 4);
    let topk = ctx.top_k(a, 4);
    for t in [asc, desc, top, topk] {
        g.build_forward_expand(t);
    }
    g.compute(2).unwrap();
    assert_eq!(asc.to_i32_vec().unwrap(), sorted(false).concat());
    assert_eq!(desc.to_i32_vec().unwrap(), sorted(true).concat());
    assert_eq!(top.ne(), [4, 3, 1, 1]);
    let top = ctx.cont(top);
    let mut g = ctx.new_graph(8);
    g.build_forward_expand(top);
    g.compute(1).unwrap();
    let want4: Vec<Vec<i32>> = sorted(true).iter().map(|r| r[..4].to_vec()).collect();
    assert_eq!(
        top.to_i32_vec().unwrap(),
        want4.concat(),
        "argsort_top_k: largest first"
    );
    // top_k: same set per row, any order
    for (row, want) in topk.to_i32_vec().unwrap().chunks(4).zip(&want4) {
        let (mut r, mut w) = (row.to_vec(), want.clone());
        r.sort();
        w.sort();
        assert_eq!(r, w);
    }
}
