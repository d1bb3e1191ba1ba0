//! Prompt-shaped expert products: one random interleaved Q4_0 matrix of ROWS rows of N, hot in cache, times
//! TOKENS activation rows, by ggml's GEMM (`q4x8::Gemv::gemm`, 4-row activation groups; a leftover below 4 rows
//! goes through its GEMV, as the expert op did) and by ours (`q4x8_gemm`). Quantising the activations is
//! included in both, as the op pays it. TOKENS = 1 compares the GEMVs instead (ggml's `Gemv::run` and
//! `q4x8_gemv::gemv`, on an activation quantised once). COPIES (default 1) cycles through that many copies of
//! the matrix, so that with enough of them every call reads its weights from memory. Prints ms per call and
//! GMAC/s, 1 thread.
//!
//!     cargo run --release --example gemm_speed -- N ROWS TOKENS ROUNDS [COPIES]
//!
//! 4B expert shapes: gate/up `1536 768 16 2000`, down `768 1536 16 2000`; decode from memory `1536 768 1 200 256`.

use std::time::Instant;

use smallthinker::ggml::q4x8::{interleave, Gemv, XROWS};
use smallthinker::ggml::q4x8_gemm::{gemm, PackedRows};
use smallthinker::ggml::q4x8_gemv::gemv;
use smallthinker::ggml::rows::{AlignedBytes, RowQuant};
use smallthinker::gguf::GgmlType;

fn random(n: usize, seed: &mut u32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("numbers")).collect();
    let (n, rows, tokens, rounds, copies) = match a[..] {
        [n, r, t, k] => (n, r, t, k, 1),
        [n, r, t, k, c] => (n, r, t, k, c.max(1)),
        _ => panic!("usage: gemm_speed N ROWS TOKENS ROUNDS [COPIES]"),
    };
    let ggml_gemv = Gemv::new(GgmlType::Q4_0, n, rows).expect("a CPU with ggml's Q4_0 repack");
    let wq = RowQuant::new(GgmlType::Q4_0, n).unwrap();
    let mut seed = 1;
    let mut w = AlignedBytes::zeroed(ggml_gemv.w_len(rows));
    for r in 0..rows {
        wq.run(
            &random(n, &mut seed),
            &mut w.as_mut_slice()[r * wq.len()..(r + 1) * wq.len()],
        );
    }
    interleave(w.as_mut_slice(), n, &mut Vec::new());
    let ws: Vec<Vec<u8>> = (0..copies).map(|_| w.as_slice().to_vec()).collect();
    let mut turn = 0;
    let mut next = move || {
        turn = (turn + 1) % copies;
        turn
    };
    let mut next2 = next;
    let x: Vec<f32> = random(n * tokens, &mut seed);
    let xq = RowQuant::new(GgmlType::Q8_0, n).unwrap();
    let mut xr = AlignedBytes::zeroed(xq.len());
    let mut ggml_out = vec![0f32; tokens * rows];
    if tokens == 1 {
        xq.run(&x[..n], xr.as_mut_slice());
    }
    let mut x4 = vec![0u8; ggml_gemv.x4_len(tokens / XROWS)];
    let mut ggml = || {
        let w = &ws[next()];
        if tokens == 1 {
            ggml_gemv.run_ggml(w, xr.as_slice(), &mut ggml_out);
            return;
        }
        let full = tokens / XROWS * XROWS;
        for (g, o) in x4.chunks_exact_mut(ggml_gemv.x4_len(1)).enumerate() {
            ggml_gemv.quantize_x4(&x[g * XROWS * n..(g + 1) * XROWS * n], o);
        }
        ggml_gemv.gemm(w, &x4, rows, &mut ggml_out, rows);
        for t in full..tokens {
            xq.run(&x[t * n..(t + 1) * n], xr.as_mut_slice());
            ggml_gemv.run_ggml(w, xr.as_slice(), &mut ggml_out[t * rows..(t + 1) * rows]);
        }
    };
    let mut ours_out = vec![0f32; tokens * rows];
    let mut packed = PackedRows::new(n);
    let mut x1 = AlignedBytes::zeroed(xq.len());
    xq.run(&x[..n], x1.as_mut_slice());
    let mut ours = || {
        let w = &ws[next2()];
        if tokens == 1 {
            gemv(w, n, x1.as_slice(), &mut ours_out);
            return;
        }
        packed.pack(x.chunks_exact(n));
        gemm(w, rows, &packed, &mut ours_out, rows);
    };
    let macs = (n * rows * tokens) as f64;
    for round in 0..3 {
        for (name, f) in [("ggml", &mut ggml as &mut dyn FnMut()), ("ours", &mut ours)] {
            f();
            let t = Instant::now();
            for _ in 0..rounds {
                f();
            }
            let s = t.elapsed().as_secs_f64() / rounds as f64;
            println!("round {round} {name}: {:.4} ms, {:.1} GMAC/s", s * 1e3, macs / s / 1e9);
        }
    }
    let same = ggml_out.iter().zip(&ours_out).all(|(a, b)| a.to_bits() == b.to_bits());
    println!("outputs identical: {same}");
}
