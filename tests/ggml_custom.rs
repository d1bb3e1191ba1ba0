//! Custom ops over Rust closures: threading, row split, column chunks, claimed row ranges, panics.
mod ggml_util;

use std::sync::{Arc, Mutex};

use ggml_util::*;
use smallthinker::ggml::GgmlError;

#[test]
fn a_custom_op_written_as_a_rust_closure_inside_a_ggml_graph_computed_with_2_threads_matches_the_naive_result() {
    // Issue test, verbatim: "A custom op written as a Rust closure, inside a ggml graph computed with 2 threads,
    // matches the naive result."
    let ctx = ctx();
    let mut rng = Rng::new(31);
    let (a, av) = rand_f32(&ctx, &[16, 9], &mut rng);
    let (w, wv) = rand_f32(&ctx, &[16], &mut rng);
    let threads_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = threads_seen.clone();
    // out = relu(a) * w + row index, inside a graph: mul_mat(a, relu(a)·w) follows it
    let custom = ctx.map_custom2("relu_mul_w", a, w, move |op| {
        let w = op.src(1);
        seen.lock().unwrap().push((op.ith(), op.nth(), op.rows()));
        for (r, out) in op.dst_rows() {
            for (i, o) in out.iter_mut().enumerate() {
                *o = op.src_row(0, r)[i].max(0.0) * w[i] + r as f32;
            }
        }
    });
    let out = ctx.mul_mat(a, custom); // [9, 9]
    let got = run(&ctx, out, 2);

    let custom_ref: Vec<f32> = av
        .iter()
        .enumerate()
        .map(|(i, x)| x.max(0.0) * wv[i % 16] + (i / 16) as f32)
        .collect();
    assert_close("custom op", &custom_ref, &custom.to_f32_vec().unwrap(), 1e-12);
    let want = naive_mul_mat(&av, [16, 9, 1, 1], &custom_ref, [16, 9, 1, 1]);
    assert_close("graph with custom op", &want, &got, 1e-10);

    let mut seen = threads_seen.lock().unwrap().clone();
    seen.sort_by_key(|s| s.0);
    assert_eq!(
        seen,
        vec![(0, 2, 0..5), (1, 2, 5..9)],
        "both threads ran, rows split ceil(9/2)"
    );
}

#[test]
fn custom_4d_with_three_sources_and_its_own_shape() {
    let ctx = ctx();
    let mut rng = Rng::new(32);
    let (a, av) = rand_f32(&ctx, &[4, 3], &mut rng);
    let (b, bv) = rand_f32(&ctx, &[4, 3], &mut rng);
    let (c, cv) = rand_f32(&ctx, &[4, 3], &mut rng);
    // one value per row: Σ a·b + max c, dst [1, 3]
    let t = ctx.custom_4d("row_stat", [1, 3, 1, 1], &[a, b, c], |op| {
        assert_eq!(op.n_srcs(), 3);
        for (r, out) in op.dst_rows() {
            let dot: f32 = op.src_row(0, r).iter().zip(op.src_row(1, r)).map(|(x, y)| x * y).sum();
            out[0] = dot + op.src_row(2, r).iter().cloned().fold(f32::MIN, f32::max);
        }
    });
    let got = run(&ctx, t, 4); // more threads than rows: some get none
    let want: Vec<f32> = (0..3)
        .map(|r| {
            let dot: f32 = (0..4).map(|i| av[r * 4 + i] * bv[r * 4 + i]).sum();
            dot + cv[r * 4..r * 4 + 4].iter().cloned().fold(f32::MIN, f32::max)
        })
        .collect();
    assert_close("custom_4d", &want, &got, 1e-12);
}

/// More threads than rows: rows cut into column chunks give every thread a share, and every value is written
/// once, by the thread `chunk_items` names.
#[test]
fn column_chunks_share_two_rows_between_five_threads() {
    let ctx = ctx();
    let mut rng = Rng::new(33);
    let (a, av) = rand_f32(&ctx, &[10, 2], &mut rng);
    let shares = Arc::new(Mutex::new(Vec::new()));
    let seen = shares.clone();
    // out[r][c] = 2 a[r][c] + 100 * (the thread that wrote it)
    let t = ctx.custom_4d("chunks", [10, 2, 1, 1], &[a], move |op| {
        let mut items = Vec::new();
        for (r, cols, out) in op.dst_chunks(4) {
            assert_eq!(out.len(), cols.len());
            for (o, c) in out.iter_mut().zip(cols.clone()) {
                *o = 2.0 * op.src_row(0, r)[c] + 100.0 * op.ith() as f32;
            }
            items.push((r, cols));
        }
        seen.lock().unwrap().push((op.ith(), op.chunk_items(4), items));
    });
    let got = run(&ctx, t, 5);
    let mut shares = shares.lock().unwrap().clone();
    shares.sort_by_key(|s| s.0);
    // 2 rows of 3 chunks (4, 4, 2 columns) = 6 items, ceil(6 / 5) = 2 per thread: threads 0-2 work, 3-4 idle.
    let want_items = [
        vec![(0, 0..4), (0, 4..8)],
        vec![(0, 8..10), (1, 0..4)],
        vec![(1, 4..8), (1, 8..10)],
        vec![],
        vec![],
    ];
    for (i, (ith, range, items)) in shares.iter().enumerate() {
        assert_eq!(*ith, i);
        assert_eq!(*items, want_items[i], "thread {i}'s items ({range:?})");
    }
    let writer = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2];
    let want: Vec<f32> = av.iter().zip(writer).map(|(x, w)| 2.0 * x + 100.0 * w as f32).collect();
    assert_close("chunks", &want, &got, 1e-12);
}

/// Claimed row ranges: each range is computed once per compute by one thread, whatever the thread count and
/// whichever thread's order is published, rows in no range are left alone, and a second compute of the same
/// graph claims everything again. Overlapping or outside ranges fail the op.
#[test]
fn claimed_row_ranges_are_each_computed_once_per_compute() {
    let ranges = [0..9, 9..10, 10..14, 14..15, 16..20];
    for threads in [1, 2, 3, 5] {
        let ctx = ctx();
        let mut rng = Rng::new(35);
        let (a, av) = rand_f32(&ctx, &[6, 20], &mut rng);
        let claimed = Arc::new(Mutex::new(Vec::new()));
        let seen = claimed.clone();
        let theirs = ranges.clone();
        // out[r] += 2 a[r] + 1, on a destination that starts zeroed: a range computed twice would show.
        let t = ctx.custom_4d("claims", [6, 20, 1, 1], &[a], move |op| {
            let mut mine = theirs.to_vec();
            if op.ith() % 2 == 1 {
                mine.reverse();
            }
            for (rows, out) in op.claim_row_ranges(mine) {
                assert_eq!(out.len(), rows.len() * 6);
                for (r, o) in rows.clone().zip(out.chunks_exact_mut(6)) {
                    for (v, x) in o.iter_mut().zip(op.src_row(0, r)) {
                        *v += 2.0 * x + 1.0;
                    }
                }
                seen.lock().unwrap().push(rows);
            }
        });
        let mut g = ctx.new_graph(16);
        g.build_forward_expand(t);
        for compute in 1..=2 {
            claimed.lock().unwrap().clear();
            g.compute(threads).unwrap();
            let mut got = claimed.lock().unwrap().clone();
            got.sort_by_key(|r| r.start);
            assert_eq!(got, ranges, "{threads} threads, compute {compute}: the ranges claimed");
            let want: Vec<f32> = av
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    if i / 6 == 15 {
                        0.0
                    } else {
                        compute as f32 * (2.0 * x + 1.0)
                    }
                })
                .collect();
            assert_close(
                &format!("{threads} threads, compute {compute}"),
                &want,
                &t.to_f32_vec().unwrap(),
                1e-12,
            );
        }
    }
    for (bad, why) in [(vec![0..5, 4..8], "overlap"), (vec![0..5, 18..21], "not inside")] {
        let ctx = ctx();
        let mut rng = Rng::new(36);
        let (a, _) = rand_f32(&ctx, &[6, 20], &mut rng);
        let t = ctx.custom_4d("bad_claims", [6, 20, 1, 1], &[a], move |op| {
            for (_, out) in op.claim_row_ranges(bad.clone()) {
                out.fill(1.0);
            }
        });
        let mut g = ctx.new_graph(16);
        g.build_forward_expand(t);
        match g.compute(2) {
            Err(GgmlError::CustomOpPanicked { message, .. }) => assert!(message.contains(why), "{message}"),
            other => panic!("expected CustomOpPanicked ({why}), got {other:?}"),
        }
    }
}

/// Two threads that cut the destination differently could write the same values at once: the second to take
/// its share fails the op instead, whichever way it differs.
#[test]
fn threads_that_split_the_destination_differently_fail_the_op() {
    type Take = fn(&smallthinker::ggml::CustomOpCtx);
    let chunks4: Take = |op| op.dst_chunks(4).for_each(|(_, _, o)| o.fill(1.0));
    let chunks8: Take = |op| op.dst_chunks(8).for_each(|(_, _, o)| o.fill(1.0));
    let rows: Take = |op| op.dst_rows().for_each(|(_, o)| o.fill(1.0));
    let ranges: Take = |op| op.claim_row_ranges(vec![0..1, 1..4]).for_each(|(_, o)| o.fill(1.0));
    for (what, first, other) in [
        ("chunks of 4 and 8", chunks4, chunks8),
        ("rows and chunks", rows, chunks4),
        ("chunks and claimed ranges", chunks4, ranges),
    ] {
        let ctx = ctx();
        let mut rng = Rng::new(37);
        let (a, _) = rand_f32(&ctx, &[16, 4], &mut rng);
        let t = ctx.custom_4d("split", [16, 4, 1, 1], &[a], move |op| {
            if op.ith() == 0 {
                first(op)
            } else {
                other(op)
            }
        });
        let mut g = ctx.new_graph(16);
        g.build_forward_expand(t);
        match g.compute(2) {
            Err(GgmlError::CustomOpPanicked { message, .. }) => {
                assert!(message.contains("another thread otherwise"), "{what}: {message}")
            }
            other => panic!("{what}: expected CustomOpPanicked, got {other:?}"),
        }
    }
}

#[test]
fn a_panicking_closure_gives_an_err_from_compute_not_an_abort() {
    let ctx = ctx();
    let mut rng = Rng::new(33);
    let (a, _) = rand_f32(&ctx, &[8, 4], &mut rng);
    let t = ctx.map_custom1("boom", a, |op| {
        if op.ith() == 1 {
            panic!("kernel bug on thread {}", op.ith());
        }
        for (_, out) in op.dst_rows() {
            out.fill(1.0);
        }
    });
    let mut g = ctx.new_graph(8);
    g.build_forward_expand(ctx.scale(t, 2.0));
    match g.compute(2) {
        Err(GgmlError::CustomOpPanicked { name, message }) => {
            assert_eq!(name, "boom");
            assert_eq!(message, "kernel bug on thread 1");
        }
        other => panic!("expected CustomOpPanicked, got {other:?}"),
    }
    // the panic is not sticky: a compute where the closure behaves again is Ok (here with 1 thread, ith 0 only)
    g.compute(1).unwrap();
}

#[test]
fn calling_dst_rows_twice_is_reported_as_a_panic() {
    let ctx = ctx();
    let a = ctx.new_tensor_1d(smallthinker::gguf::GgmlType::F32, 4);
    a.set_f32(&[1.0; 4]).unwrap();
    let t = ctx.map_custom1("twice", a, |op| {
        let _first = op.dst_rows();
        let _second = op.dst_rows();
    });
    let mut g = ctx.new_graph(4);
    g.build_forward_expand(t);
    let err = g.compute(1).unwrap_err();
    assert!(err.to_string().contains("dst_rows called twice"), "{err}");
}

#[test]
fn a_custom_op_over_quantized_rows_with_vec_dot_matches_mul_mat() {
    // the shape of a later sparse kernel: dot only selected Q8_0 weight rows with the quantized input
    use smallthinker::ggml::{from_float, vec_dot};
    use smallthinker::gguf::GgmlType;
    let ctx = ctx();
    let mut rng = Rng::new(34);
    let (n_in, n_out) = (64i64, 6i64);
    let w = ctx.new_tensor_2d(GgmlType::Q8_0, n_in, n_out);
    w.set_bytes(&from_float(GgmlType::Q8_0, &rng.vec((n_in * n_out) as usize)))
        .unwrap();
    let (x, _) = rand_f32(&ctx, &[n_in], &mut rng);
    let skip = [false, true, false, false, true, false]; // "predicted zero" rows
    let sparse = ctx.custom_4d("sparse_matvec", [n_out, 1, 1, 1], &[w, x], move |op| {
        assert_eq!(op.src_ty(0), GgmlType::Q8_0);
        let xq = from_float(GgmlType::Q8_0, op.src(1));
        // one output row of 6 values: thread 0 does all of it, the others have no rows
        for (_, out) in op.dst_rows() {
            for (r, o) in out.iter_mut().enumerate() {
                *o = if skip[r] {
                    0.0
                } else {
                    vec_dot(GgmlType::Q8_0, 64, op.src_row_bytes(0, r), &xq)
                };
            }
        }
    });
    let dense = ctx.mul_mat(w, x);
    let mut g = ctx.new_graph(8);
    g.build_forward_expand(sparse);
    g.build_forward_expand(dense);
    g.compute(2).unwrap();
    let want: Vec<f32> = dense
        .to_f32_vec()
        .unwrap()
        .iter()
        .zip(&skip)
        .map(|(v, s)| if *s { 0.0 } else { *v })
        .collect();
    assert_close("sparse vs masked dense", &want, &sparse.to_f32_vec().unwrap(), 1e-12);
}
