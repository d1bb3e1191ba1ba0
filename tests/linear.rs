//! `graph::linear` on a matrix in ggml's CPU_REPACK buffer runs our kernels (a custom op) and gives, for one
//! row and for batches, exactly the floats of ggml's own `mul_mat` on the same tensor, at any thread count; a
//! matrix outside that buffer stays ggml's `mul_mat`.
mod ggml_util;

use ggml_util::*;
use smallthinker::ggml::rows::RowQuant;
use smallthinker::ggml::{repackable, sys, Context, ContextParams};
use smallthinker::gguf::GgmlType;
use smallthinker::graph::linear;

#[test]
fn linear_on_repacked_weights_equals_ggml_mul_mat_bit_for_bit() {
    let (n_in, n_out) = (512usize, 48usize);
    if !repackable(GgmlType::Q4_0, &[n_in as i64, n_out as i64]) {
        eprintln!("note: no Q4_0 repack on this CPU");
        return;
    }
    let mut rng = Rng::new(5);
    let q = RowQuant::new(GgmlType::Q4_0, n_in).unwrap();
    let mut bytes = vec![0u8; q.len() * n_out + 2];
    // RowQuant wants 2-byte aligned rows.
    let off = bytes.as_ptr() as usize % 2;
    for r in 0..n_out {
        q.run(&rng.vec(n_in), &mut bytes[off + r * q.len()..off + (r + 1) * q.len()]);
    }
    let file = &bytes[off..off + q.len() * n_out];
    let wctx = Context::new(ContextParams {
        mem_size: 1 << 20,
        no_alloc: true,
    })
    .unwrap();
    let w = wctx.new_tensor(GgmlType::Q4_0, &[n_in as i64, n_out as i64]);
    assert!(wctx.alloc_repack_buffer().unwrap());
    w.set_repacked(file).unwrap();
    assert!(w.is_repacked());

    let ctx = ctx();
    let plain = ctx.new_tensor(GgmlType::Q4_0, &[n_in as i64, n_out as i64]);
    plain.set_bytes(file).unwrap();
    assert!(!plain.is_repacked());
    for tokens in [1i64, 2, 5, 9] {
        let (x, _) = rand_f32(&ctx, &[n_in as i64, tokens], &mut rng);
        let ours = linear(&ctx, w, x);
        let want_op = if tokens == 1 {
            sys::GGML_OP_RESHAPE
        } else {
            sys::GGML_OP_CUSTOM
        };
        assert_eq!(ours.op(), want_op, "{tokens} tokens: our kernel's node");
        assert_eq!(ours.ne(), [n_out as i64, tokens, 1, 1]);
        assert_eq!(
            linear(&ctx, plain, x).op(),
            sys::GGML_OP_MUL_MAT,
            "outside the repack buffer"
        );
        let want = run(&ctx, ctx.mul_mat(w, x), 2);
        for threads in [1, 2, 3] {
            let got = run(&ctx, ours, threads);
            let same = got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{tokens} tokens, {threads} threads: nmse {:e}", nmse(&want, &got));
        }
        // And the mapped matrix (ggml's row dot products on the file layout) to float rounding.
        let mapped = run(&ctx, ctx.mul_mat(plain, x), 2);
        assert!(nmse(&mapped, &want) < 1e-10, "{tokens} tokens vs the file layout");
    }
}
