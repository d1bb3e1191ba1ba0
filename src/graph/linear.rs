//! Dense products `w x` (attention projections, router, lm_head). A matrix that ggml repacked into its
//! interleaved 8-row Q4_0 layout runs our kernels (`ggml::q4x8_gemm`): the GEMM for a batch of rows (about
//! twice ggml's AVX2 GEMM on these shapes), the GEMV for one row (twice ggml's hot in cache, and it prefetches, so
//! it streams the lm_head faster from memory). Everything else stays ggml's `mul_mat`. Both give each row the
//! float ggml's GEMV gives it, so the choice never changes a result.

use crate::ggml::q4x8_gemm::{gemm, PackedRows, GROUP_BLOCK};
use crate::ggml::q4x8_gemv::gemv;
use crate::ggml::rows::{AlignedBytes, RowQuant};
use crate::ggml::{Context, Tensor};
use crate::gguf::GgmlType;

/// Weight rows per GEMM call: 64 rows of a 2560-wide Q4_0 matrix are 90 KiB, which stay in L2 while every
/// token of the thread passes over them.
const CHUNK: usize = 64;

/// `w [n_in, n_out]` times `x [n_in, n_tokens]` -> `[n_out, n_tokens]`.
pub fn linear<'a>(ctx: &'a Context, w: Tensor<'a>, x: Tensor<'a>) -> Tensor<'a> {
    let ([n_in, n_out, w2, w3], [x0, n_tokens, x2, x3]) = (w.ne(), x.ne());
    let ours = w.is_repacked()
        && w.ty() == GgmlType::Q4_0
        && [w2, w3, x2, x3] == [1; 4]
        && x.ty() == GgmlType::F32
        && x.is_contiguous()
        && x0 == n_in
        && n_in % 32 == 0
        && n_out % 8 == 0;
    if !ours {
        return ctx.mul_mat(w, x);
    }
    let (n_in, n_out) = (n_in as usize, n_out as usize);
    if n_tokens == 1 {
        // One destination row per group of 8 outputs, so that the threads split the matrix.
        let groups = ctx.custom_4d("linear_q4x8_gemv", [8, n_out as i64 / 8, 1, 1], &[w, x], move |op| {
            let (groups, out) = op.dst_rows().into_block();
            if groups.is_empty() {
                return;
            }
            let quant = RowQuant::new(GgmlType::Q8_0, n_in).expect("ggml quantises Q8_0");
            let mut xq = AlignedBytes::zeroed(quant.len());
            quant.run(op.src_row(1, 0), xq.as_mut_slice());
            let group = n_in / 32 * GROUP_BLOCK;
            gemv(
                &op.src_bytes(0)[groups.start * group..groups.end * group],
                n_in,
                xq.as_slice(),
                out,
            );
        });
        return ctx.reshape_2d(groups, n_out as i64, 1);
    }
    ctx.custom_4d("linear_q4x8", [n_out as i64, n_tokens, 1, 1], &[w, x], move |op| {
        // Threads split the tokens; each packs its own and reads the whole matrix.
        let (tokens, out) = op.dst_rows().into_block();
        if tokens.is_empty() {
            return;
        }
        let mut packed = PackedRows::new(n_in);
        packed.pack(tokens.map(|t| op.src_row(1, t)));
        let (w, group) = (op.src_bytes(0), n_in / 32 * GROUP_BLOCK);
        for c in (0..n_out).step_by(CHUNK) {
            let m = CHUNK.min(n_out - c);
            gemm(&w[c / 8 * group..(c + m) / 8 * group], m, &packed, &mut out[c..], n_out);
        }
    })
}
