//! Misuse is a Rust panic or error, not a ggml abort; no_alloc contexts with CPU buffers and graph allocators;
//! weights borrowed from a read-only memory map; backends' worker pools; pools and allocators handed from a dropped
//! context to the next; vec_dot.
mod ggml_util;

use std::panic::{catch_unwind, AssertUnwindSafe};

use ggml_util::*;
use smallthinker::ggml::{self, Context, ContextParams, CpuBackend, GgmlError};
use smallthinker::gguf::GgmlType;

#[test]
#[should_panic(expected = "ggml mul_mat: ne[0] differs: a `a` F32 [4, 3, 1, 1], b `b` F32 [5, 2, 1, 1]")]
fn mul_mat_with_mismatched_ne0_panics_naming_the_op_and_shapes() {
    let ctx = ctx();
    let a = ctx.new_tensor_2d(GgmlType::F32, 4, 3).set_name("a");
    let b = ctx.new_tensor_2d(GgmlType::F32, 5, 2).set_name("b");
    ctx.mul_mat(a, b);
}

fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("should panic");
    err.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn other_preconditions_panic_with_rust_messages() {
    let ctx = ctx();
    let a = ctx.new_tensor_2d(GgmlType::F32, 8, 4).set_name("a");
    let f = ctx.new_tensor_1d(GgmlType::F32, 4).set_name("ids");
    let msg = panic_message(|| {
        ctx.get_rows(a, f);
    });
    assert_eq!(msg, "ggml get_rows: ids `ids` F32 [4, 1, 1, 1] must be I32");
    let msg = panic_message(|| {
        ctx.reshape_2d(ctx.transpose(a), 4, 8);
    });
    assert!(
        msg.starts_with("ggml reshape_2d: ") && msg.contains("not contiguous"),
        "{msg}"
    );
    let msg = panic_message(|| {
        ctx.view_1d(a, 8, 30 * 4);
    });
    assert!(
        msg.starts_with("ggml view_1d: ") && msg.contains("past the 128 bytes"),
        "{msg}"
    );
    let msg = panic_message(|| {
        ctx.add(a, ctx.new_tensor_2d(GgmlType::F32, 3, 4));
    });
    assert!(
        msg.starts_with("ggml add: b ") && msg.contains("does not broadcast"),
        "{msg}"
    );
    let msg = panic_message(|| {
        ctx.new_tensor_1d(GgmlType::Q4_0, 33);
    });
    assert!(msg.contains("not a multiple of the Q4_0 block size 32"), "{msg}");
    let msg = panic_message(|| {
        ctx.permute(a, [0, 1, 1, 3]);
    });
    assert!(msg.starts_with("ggml permute: axes [0, 1, 1, 3]"), "{msg}");
}

#[test]
fn graph_and_pool_limits_panic_instead_of_aborting() {
    let ctx = ctx();
    let a = ctx.new_tensor_1d(GgmlType::F32, 4);
    let mut cur = a;
    for _ in 0..5 {
        cur = ctx.scale(cur, 2.0);
    }
    let mut g = ctx.new_graph(4);
    let msg = panic_message(|| g.build_forward_expand(cur));
    assert!(msg.contains("graph of size 4 would hold 5 nodes"), "{msg}");

    let small = Context::new(ContextParams {
        mem_size: 4 * Context::tensor_overhead(),
        no_alloc: true,
    })
    .unwrap();
    let msg = panic_message(|| {
        for _ in 0..5 {
            small.new_tensor_1d(GgmlType::F32, 4);
        }
    });
    assert!(msg.starts_with("ggml new_tensor_1d: context pool exhausted"), "{msg}");
}

#[test]
fn data_errors_are_errors() {
    // ggml_init would abort on a failed malloc; the pool is allocated in Rust instead
    let huge = Context::new(ContextParams {
        mem_size: 1 << 62,
        no_alloc: false,
    });
    assert!(matches!(huge, Err(GgmlError::Init { .. })));
    let ctx = ctx();
    let z = ctx.new_tensor_1d(GgmlType::F32, 3);
    assert_eq!(z.to_f32_vec().unwrap(), vec![0.0; 3], "fresh data reads as zeros");
    let t = ctx.new_tensor_1d(GgmlType::F32, 4).set_name("t");
    assert!(matches!(
        t.set_f32(&[1.0; 3]),
        Err(GgmlError::DataLength {
            expected: 16,
            got: 12,
            ..
        })
    ));
    assert!(matches!(t.set_i32(&[1; 4]), Err(GgmlError::WrongType { .. })));
    let mut g = ctx.new_graph(4);
    g.build_forward_expand(ctx.scale(t, 1.0));
    assert!(matches!(g.compute(0), Err(GgmlError::Threads { n_threads: 0 })));

    // token ids past the vocabulary: ggml would abort in get_rows
    let emb = ctx.new_tensor_2d(GgmlType::F32, 4, 10);
    let ids = ctx.new_tensor_1d(GgmlType::I32, 2).set_name("inp_tokens");
    ids.set_i32(&[3, 10]).unwrap();
    let mut g = ctx.new_graph(4);
    g.build_forward_expand(ctx.get_rows(emb, ids));
    let err = g.compute(1).unwrap_err();
    assert!(
        matches!(err, GgmlError::IdOutOfRange { id: 10, limit: 10, .. }),
        "{err}"
    );

    // a no_alloc tensor without data
    let meta = Context::new(ContextParams {
        mem_size: 1 << 16,
        no_alloc: true,
    })
    .unwrap();
    let x = meta.new_tensor_1d(GgmlType::F32, 4).set_name("x");
    assert!(matches!(x.set_f32(&[0.0; 4]), Err(GgmlError::NoData { .. })));
    let mut g = meta.new_graph(4);
    g.build_forward_expand(meta.scale(x, 1.0));
    assert!(matches!(g.compute(1), Err(GgmlError::Unallocated { .. })));
}

#[test]
fn no_alloc_contexts_with_a_cpu_buffer_and_a_graph_allocator() {
    let mut rng = Rng::new(41);
    // weights: metadata first, then one CPU buffer for all of them (the model-loading pattern)
    let wctx = Context::new(ContextParams {
        mem_size: 8 * Context::tensor_overhead(),
        no_alloc: true,
    })
    .unwrap();
    let w = wctx.new_tensor_2d(GgmlType::F32, 32, 6).set_name("w");
    let norm_w = wctx.new_tensor_1d(GgmlType::F32, 6).set_name("norm_w");
    wctx.alloc_cpu_buffer().unwrap();
    let (wv, nv) = (rng.vec(32 * 6), rng.vec(6));
    w.set_f32(&wv).unwrap();
    norm_w.set_f32(&nv).unwrap();

    // compute: a fresh no_alloc context per evaluation; the graph allocator places inputs and intermediates
    let cctx = Context::new(ContextParams {
        mem_size: 16 * Context::tensor_overhead() + Context::graph_overhead(64),
        no_alloc: true,
    })
    .unwrap();
    let x = cctx.new_tensor_2d(GgmlType::F32, 32, 3).set_input();
    let cur = cctx.mul_mat(w, x); // [6, 3]
    let cur = cctx.mul(cctx.rms_norm(cur, 1e-5), norm_w).set_output();
    let mut g = cctx.new_graph(64);
    g.build_forward_expand(cur);
    cctx.allocate_graph(&g).unwrap();
    let xv = rng.vec(32 * 3);
    x.set_f32(&xv).unwrap();
    let backend = CpuBackend::new().unwrap();
    backend.set_n_threads(2);
    g.compute_with_backend(&backend).unwrap();

    let mm = naive_mul_mat(&wv, [32, 6, 1, 1], &xv, [32, 3, 1, 1]);
    let want: Vec<f32> = mm
        .chunks(6)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / 6.0;
            row.iter()
                .zip(&nv)
                .map(move |(v, n)| v / (ms + 1e-5).sqrt() * n)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close("backend graph", &want, &cur.to_f32_vec().unwrap(), 1e-10);
    // the plain compute path gives the same result on the same allocated graph
    g.compute(1).unwrap();
    assert_close("compute after backend", &want, &cur.to_f32_vec().unwrap(), 1e-10);
}

/// `w [256, 64] x [256, 8]` on a CPU buffer and a graph allocator; returns its result for each thread count in
/// `threads`, computed in that order on one backend, and then on a second backend of this thread.
fn mul_mat_on_backends(seed: u64, threads: &[usize]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut rng = Rng::new(seed);
    let wctx = Context::new(ContextParams {
        mem_size: 2 * Context::tensor_overhead(),
        no_alloc: true,
    })
    .unwrap();
    let w = wctx.new_tensor_2d(GgmlType::F32, 256, 64).set_name("w");
    wctx.alloc_cpu_buffer().unwrap();
    let wv = rng.vec(256 * 64);
    w.set_f32(&wv).unwrap();
    let cctx = Context::new(ContextParams {
        mem_size: 8 * Context::tensor_overhead() + Context::graph_overhead(16),
        no_alloc: true,
    })
    .unwrap();
    let x = cctx.new_tensor_2d(GgmlType::F32, 256, 8).set_input();
    let y = cctx.mul_mat(w, x).set_output();
    let mut g = cctx.new_graph(16);
    g.build_forward_expand(y);
    cctx.allocate_graph(&g).unwrap();
    let xv = rng.vec(256 * 8);
    x.set_f32(&xv).unwrap();
    let want = naive_mul_mat(&wv, [256, 64, 1, 1], &xv, [256, 8, 1, 1]);
    let (a, b) = (CpuBackend::new().unwrap(), CpuBackend::new().unwrap());
    let mut got = Vec::new();
    for &n in threads {
        a.set_n_threads(n);
        g.compute_with_backend(&a).unwrap();
        got.push(y.to_f32_vec().unwrap());
    }
    b.set_n_threads(2);
    g.compute_with_backend(&b).unwrap();
    got.push(y.to_f32_vec().unwrap());
    (want, got)
}

/// Backends keep worker threads from one graph to the next (a pool per thread and thread count): switching a
/// backend between counts, back to a pool it left (which ggml paused), to one thread, and two backends sharing
/// a pool all compute the right product, and so do threads computing at the same time with pools of their own.
#[test]
fn backends_reuse_worker_pools_across_graphs_and_thread_counts() {
    let (want, got) = mul_mat_on_backends(7, &[2, 2, 3, 2, 1, 2]);
    for (i, y) in got.iter().enumerate() {
        assert_close(&format!("compute {i}"), &want, y, 1e-10);
    }
    let workers: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                (0..20)
                    .map(|r| mul_mat_on_backends(100 * t + r, &[2]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, h) in workers.into_iter().enumerate() {
        for (r, (want, got)) in h.join().unwrap().into_iter().enumerate() {
            for y in &got {
                assert_close(&format!("thread {t}, round {r}"), &want, y, 1e-10);
            }
        }
    }
}

#[test]
fn weights_borrowed_from_a_read_only_memory_map() {
    let mut rng = Rng::new(42);
    let wv = rng.vec(16 * 4);
    // stands in for a memory-mapped GGUF (mapping needs `unsafe`, which stays in src/ggml): a 32-byte "header",
    // then the tensor data
    let mut file = vec![0u8; 32];
    file.extend(wv.iter().flat_map(|v| v.to_le_bytes()));
    let before = file.clone();
    let bytes = &file[32..];

    let wctx = Context::new(ContextParams {
        mem_size: 4 * Context::tensor_overhead(),
        no_alloc: true,
    })
    .unwrap();
    let w = wctx
        .new_tensor_from_bytes("blk.0.w", GgmlType::F32, &[16, 4], bytes)
        .unwrap();
    assert!(matches!(
        wctx.new_tensor_from_bytes("short", GgmlType::F32, &[16, 5], bytes),
        Err(GgmlError::DataLength {
            expected: 320,
            got: 256,
            ..
        })
    ));
    assert!(
        matches!(w.set_f32(&wv), Err(GgmlError::ReadOnly { .. })),
        "no writes into the map"
    );
    assert_eq!(w.to_f32_vec().unwrap(), wv);

    let ctx = ctx();
    let (x, xv) = rand_f32(&ctx, &[16, 2], &mut rng);
    let got = run(&ctx, ctx.mul_mat(w, x), 2);
    assert_close(
        "mmap weights",
        &naive_mul_mat(&wv, [16, 4, 1, 1], &xv, [16, 2, 1, 1]),
        &got,
        1e-10,
    );
    let msg = panic_message(|| {
        ctx.cpy(x, ctx.view_1d(w, 32, 0));
    });
    assert!(msg.contains("read-only"), "{msg}");
    drop(ctx);
    drop(wctx);
    assert_eq!(file, before, "ggml never wrote into the borrowed bytes");
}

#[test]
fn vec_dot_matches_a_naive_dot_for_q8_0_and_f32() {
    let mut rng = Rng::new(43);
    let (x, y) = (rng.vec(64), rng.vec(64));
    assert_eq!(ggml::vec_dot_type(GgmlType::Q4_0), GgmlType::Q8_0);
    assert_eq!(ggml::vec_dot_type(GgmlType::F32), GgmlType::F32);
    let (xq, yq) = (
        ggml::from_float(GgmlType::Q8_0, &x),
        ggml::from_float(GgmlType::Q8_0, &y),
    );
    let naive: f32 = dequant_q8_0(&xq)
        .iter()
        .zip(dequant_q8_0(&yq))
        .map(|(a, b)| a * b)
        .sum();
    let got = ggml::vec_dot(GgmlType::Q8_0, 64, &xq, &yq);
    assert!(
        (got - naive).abs() < 1e-3 * naive.abs().max(1.0),
        "q8_0 dot {got} vs {naive}"
    );
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
    assert!((ggml::vec_dot(GgmlType::F32, 64, &xb, &yb) - f).abs() < 1e-5);
    let msg = panic_message(|| {
        ggml::vec_dot(GgmlType::Q8_0, 64, &xq[..33], &yq);
    });
    assert!(msg.contains("needs 68 bytes, got 33"), "{msg}");
}

/// A context dropped on a thread hands its pool and graph allocator to the next one (`ggml::recycle`): the next
/// pool must still read as zeros where the last one held data, and a reused allocator must place a bigger,
/// differently shaped graph correctly.
#[test]
fn contexts_reuse_a_dropped_contexts_pool_and_allocator_cleanly() {
    let params = ContextParams {
        mem_size: 4 * Context::tensor_overhead() + 4096 * 4 + 1024,
        no_alloc: false,
    };
    for round in 0..3 {
        let ctx = Context::new(params).unwrap();
        let t = ctx.new_tensor_1d(GgmlType::F32, 4096);
        let v = t.to_f32_vec().unwrap();
        assert!(
            v.iter().all(|&x| x == 0.0),
            "round {round}: a new pool holds non-zero data"
        );
        t.set_f32(&vec![7.5; 4096]).unwrap();
    }

    let mut rng = Rng::new(43);
    let backend = CpuBackend::new().unwrap();
    backend.set_n_threads(2);
    // Small, big, small graphs in turn: the second has to grow the first one's buffer.
    for (round, (k, m, n)) in [(32, 6, 3), (256, 64, 40), (64, 8, 2)].into_iter().enumerate() {
        let ctx = Context::new(ContextParams {
            mem_size: 8 * Context::tensor_overhead() + Context::graph_overhead(16),
            no_alloc: true,
        })
        .unwrap();
        let w = ctx.new_tensor_2d(GgmlType::F32, k, m).set_input();
        let x = ctx.new_tensor_2d(GgmlType::F32, k, n).set_input();
        let y = ctx.scale(ctx.mul_mat(w, x), 0.5).set_output();
        let mut g = ctx.new_graph(16);
        g.build_forward_expand(y);
        ctx.allocate_graph(&g).unwrap();
        let (wv, xv) = (rng.vec((k * m) as usize), rng.vec((k * n) as usize));
        w.set_f32(&wv).unwrap();
        x.set_f32(&xv).unwrap();
        g.compute_with_backend(&backend).unwrap();
        let want: Vec<f32> = naive_mul_mat(&wv, [k, m, 1, 1], &xv, [k, n, 1, 1])
            .iter()
            .map(|v| v * 0.5)
            .collect();
        assert_close(&format!("graph {round}"), &want, &y.to_f32_vec().unwrap(), 1e-10);
    }
}
