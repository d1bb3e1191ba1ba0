//! Views, reshapes, copies, get_rows (F32/F16/Q8_0), set_rows and concat vs naive index arithmetic.
mod ggml_util;

use ggml_util::*;
use smallthinker::gguf::GgmlType;

#[test]
fn views_reshape_permute_transpose_cont() {
    let ctx = ctx();
    let mut rng = Rng::new(21);
    let ne = [4, 3, 2, 1];
    let (a, av) = rand_f32(&ctx, &ne[..3], &mut rng);
    // view_1d from element 5
    assert_eq!(run(&ctx, ctx.cont(ctx.view_1d(a, 6, 5 * 4)), 1), av[5..11].to_vec());
    // view_2d: columns 1..3 of every row of the first matrix
    let v2 = ctx.view_2d(a, 2, 3, a.nb()[1], 4);
    let want: Vec<f32> = (0..3).flat_map(|r| av[r * 4 + 1..r * 4 + 3].to_vec()).collect();
    assert_eq!(run(&ctx, ctx.cont(v2), 1), want);
    // view_3d / view_4d of the whole tensor are the identity
    let nb = a.nb();
    assert_eq!(run(&ctx, ctx.cont(ctx.view_3d(a, [4, 3, 2], nb[1], nb[2], 0)), 1), av);
    assert_eq!(
        run(
            &ctx,
            ctx.cont(ctx.view_4d(a, [4, 3, 2, 1], [nb[1], nb[2], nb[3]], 0)),
            1
        ),
        av
    );
    // reshape keeps the data
    let r = ctx.reshape_3d(a, 2, 6, 2);
    assert_eq!(r.ne(), [2, 6, 2, 1]);
    assert_eq!(run(&ctx, ctx.cont(ctx.reshape_2d(a, 12, 2)), 1), av);
    assert_eq!(ctx.reshape_4d(a, 2, 2, 3, 2).ne(), [2, 2, 3, 2]);
    // transpose: out[j, i] = a[i, j] of the first matrix
    let t = ctx.cont(ctx.transpose(ctx.view_2d(a, 4, 3, nb[1], 0)));
    let want: Vec<f32> = (0..4)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .map(|(i, j)| av[j * 4 + i])
        .collect();
    assert_eq!(run(&ctx, t, 1), want);
    // permute(0, 2, 1, 3) as in attention: out [4, 2, 3]; out[i, k, j] = a[i, j, k]
    let p = ctx.permute(a, [0, 2, 1, 3]);
    assert_eq!(p.ne(), [4, 2, 3, 1]);
    assert!(!p.is_contiguous());
    let got = run(&ctx, ctx.cont(p), 2);
    for j in 0..3 {
        for k in 0..2 {
            for i in 0..4 {
                assert_eq!(got[at([4, 2, 3, 1], i, k, j, 0)], av[at(ne, i, j, k, 0)]);
            }
        }
    }
}

#[test]
fn cpy_converts_and_concat_joins() {
    let ctx = ctx();
    let mut rng = Rng::new(22);
    let (a, av) = rand_f32(&ctx, &[8, 2], &mut rng);
    let h = ctx.new_tensor_2d(GgmlType::F16, 8, 2);
    let c = ctx.cpy(a, h);
    let mut g = ctx.new_graph(16);
    g.build_forward_expand(c);
    g.compute(1).unwrap();
    let want: Vec<f32> = av.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
    assert_eq!(h.to_f32_vec().unwrap(), want, "cpy F32 -> F16 rounds like half");

    let (b, bv) = rand_f32(&ctx, &[8, 3], &mut rng);
    let cat1 = run(&ctx, ctx.concat(a, b, 1), 1);
    assert_eq!(cat1, [av.clone(), bv.clone()].concat());
    let (b0, b0v) = rand_f32(&ctx, &[3, 2], &mut rng);
    let cat0 = run(&ctx, ctx.concat(a, b0, 0), 1);
    let want: Vec<f32> = (0..2)
        .flat_map(|r| [&av[r * 8..r * 8 + 8], &b0v[r * 3..r * 3 + 3]].concat())
        .collect();
    assert_eq!(cat0, want);
}

#[test]
fn get_rows_on_f32_f16_and_q8_0_data() {
    let ctx = ctx();
    let mut rng = Rng::new(23);
    let (n_embd, n_vocab) = (64i64, 5i64);
    let emb = rng.vec((n_embd * n_vocab) as usize);
    let ids_v = [4, 0, 4, 2];
    let ids = ctx.new_tensor_1d(GgmlType::I32, 4);
    ids.set_i32(&ids_v).unwrap();
    let pick = |table: &[f32]| -> Vec<f32> {
        ids_v
            .iter()
            .flat_map(|&i| table[i as usize * 64..(i as usize + 1) * 64].to_vec())
            .collect()
    };

    let f32t = ctx.new_tensor_2d(GgmlType::F32, n_embd, n_vocab);
    f32t.set_f32(&emb).unwrap();
    assert_eq!(run(&ctx, ctx.get_rows(f32t, ids), 1), pick(&emb));

    let f16t = ctx.new_tensor_2d(GgmlType::F16, n_embd, n_vocab);
    f16t.set_f32_as_f16(&emb).unwrap();
    let emb16: Vec<f32> = emb.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
    assert_eq!(run(&ctx, ctx.get_rows(f16t, ids), 2), pick(&emb16));

    let q8 = smallthinker::ggml::from_float(GgmlType::Q8_0, &emb);
    let q8t = ctx.new_tensor_2d(GgmlType::Q8_0, n_embd, n_vocab);
    q8t.set_bytes(&q8).unwrap();
    let got = run(&ctx, ctx.get_rows(q8t, ids), 2);
    assert_eq!(got.len(), 4 * 64);
    assert_eq!(got, pick(&dequant_q8_0(&q8)), "dequantized exactly as Q8_0 blocks say");
    assert_close("q8_0 vs original", &pick(&emb), &got, 5e-4);
}

#[test]
fn set_rows_writes_a_kv_cache() {
    let ctx = ctx();
    let mut rng = Rng::new(24);
    let cache = ctx.new_tensor_2d(GgmlType::F16, 8, 6); // [n_embd_k, kv_size]
    cache.set_f32_as_f16(&[0.0; 48]).unwrap();
    let (cur, cv) = rand_f32(&ctx, &[8, 2], &mut rng); // 2 new tokens
    for ids_ty in [GgmlType::I64, GgmlType::I32] {
        let idx = ctx.new_tensor_1d(ids_ty, 2);
        if ids_ty == GgmlType::I64 {
            idx.set_i64(&[4, 1]).unwrap()
        } else {
            idx.set_i32(&[4, 1]).unwrap()
        }
        let mut g = ctx.new_graph(16);
        g.build_forward_expand(ctx.set_rows(cache, cur, idx));
        g.compute(2).unwrap();
        let got = cache.to_f32_vec().unwrap();
        let h = |v: f32| half::f16::from_f32(v).to_f32();
        for r in 0..6 {
            let want: Vec<f32> = match r {
                4 => cv[..8].iter().map(|v| h(*v)).collect(),
                1 => cv[8..].iter().map(|v| h(*v)).collect(),
                _ => vec![0.0; 8],
            };
            assert_eq!(got[r * 8..r * 8 + 8], want[..], "row {r} with {ids_ty} ids");
        }
    }
}

#[test]
fn names_and_format_name() {
    let ctx = ctx();
    let t = ctx.new_tensor_1d(GgmlType::F32, 4).format_name("attn_norm", 3);
    assert_eq!(t.name(), "attn_norm-3");
    assert_eq!(t.format_name("result_norm", -1).name(), "result_norm");
    let long = "x".repeat(100);
    assert_eq!(t.set_name(&long).name().len(), 63, "ggml truncates names to 63 bytes");
    let want = format!("{}-12", "y".repeat(60));
    assert_eq!(
        t.format_name(&"y".repeat(60), 12).name(),
        want[..63],
        "the layer suffix is cut the same way"
    );
    assert_eq!(t.set_name("a\0b-\0c").name(), "ab-c", "NULs are left out");
    assert_eq!(t.nbytes(), 16);
    assert!(t.is_contiguous());
    assert_eq!(t.ty(), GgmlType::F32);
    assert_eq!(t.nb(), [4, 16, 16, 16]);

    // named intermediates can be found and read back after compute, like llama.cpp's eval callback
    t.set_f32(&[1.0, -2.0, 3.0, -4.0]).unwrap();
    let r = ctx.relu(t).format_name("ffn_out", 7);
    let mut g = ctx.new_graph(8);
    g.build_forward_expand(ctx.scale(r, 2.0));
    g.compute(1).unwrap();
    assert_eq!((g.n_nodes(), g.n_leafs()), (2, 1));
    let found = g.get_tensor("ffn_out-7").expect("named node");
    assert_eq!(found.to_f32_vec().unwrap(), vec![1.0, 0.0, 3.0, 0.0]);
    assert!(matches!(
        found.set_f32(&[0.0; 4]),
        Err(smallthinker::ggml::GgmlError::ReadOnly { .. })
    ));
    assert!(g.get_tensor("nope").is_none());
}
