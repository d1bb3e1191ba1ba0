//! Q4_0 matrices in ggml's interleaved 8-row layout (`block_q4_0x8`, what its CPU_REPACK buffer holds), built
//! here from the file's bytes, and the GEMV and GEMM over that layout: ggml's, and ours (`q4x8_gemm`, the same
//! results bit for bit). The expert cache interleaves each slot once it is read, so capped experts run the kernel
//! (and give the results) of the uncapped path, whose experts ggml repacks at load: eight rows per pass share
//! each activation block, where a row-at-a-time `vec_dot` reloads it.
//!
//! The layout, per group of 8 rows and per block column `x`: the 8 rows' f16 scales, then 16 chunks of 8 bytes,
//! chunk `c` being bytes `(c / 8) * 8 ..` of row `c % 8`'s quants, each nibble offset by 8 (xor 0x88), so
//! the kernel reads them as signed values.

use super::repack::repackable;
use crate::gguf::GgmlType;

/// Rows per interleaved group.
pub const ROWS: usize = 8;
const BLOCK: usize = 18;
const QS: usize = 16;
const GROUP_BLOCK: usize = ROWS * BLOCK;

extern "C" {
    // ggml-cpu's repack kernel (src/ggml-cpu/repack.h, C linkage; not in the public headers that sys.rs is
    // generated from). n: elements per row; s: nc outputs; vx: nc / 8 interleaved groups; vy: one q8_0 row.
    fn ggml_gemv_q4_0_8x8_q8_0(
        n: std::ffi::c_int,
        s: *mut f32,
        bs: usize,
        vx: *const std::ffi::c_void,
        vy: *const std::ffi::c_void,
        nr: std::ffi::c_int,
        nc: std::ffi::c_int,
    );
    // Its GEMM: nr activation rows (a multiple of 4, as nr / 4 groups of block_q8_0x4) by nc interleaved rows;
    // s[r * bs + j] = dot(row j, activation r).
    fn ggml_gemm_q4_0_8x8_q8_0(
        n: std::ffi::c_int,
        s: *mut f32,
        bs: usize,
        vx: *const std::ffi::c_void,
        vy: *const std::ffi::c_void,
        nr: std::ffi::c_int,
        nc: std::ffi::c_int,
    );
    // Quantises 4 consecutive rows of k floats into k / 32 block_q8_0x4 (the GEMM's activation layout).
    fn ggml_quantize_mat_q8_0_4x8(x: *const f32, vy: *mut std::ffi::c_void, k: i64);
}

/// Activation rows per block_q8_0x4 group of [`Gemv::gemm`].
pub const XROWS: usize = 4;
/// Bytes of one block_q8_0x4: 4 f16 scales and 4 x 32 quants.
const X4_BLOCK: usize = XROWS * 2 + XROWS * 32;

/// Rewrites `bytes` (whole rows of `n` Q4_0 elements, a multiple of 8 rows) into the interleaved layout, in
/// place (the two layouts take the same bytes per group of 8 rows). `tmp` is scratch.
pub fn interleave(bytes: &mut [u8], n: usize, tmp: &mut Vec<u8>) {
    let nb = n / 32;
    let group = nb * GROUP_BLOCK;
    assert!(
        n % 32 == 0 && group > 0 && bytes.len() % group == 0,
        "interleave: {} bytes are not whole groups of 8 Q4_0 rows of {n}",
        bytes.len()
    );
    for g in bytes.chunks_exact_mut(group) {
        tmp.clear();
        tmp.extend_from_slice(g);
        for x in 0..nb {
            let out = &mut g[x * GROUP_BLOCK..(x + 1) * GROUP_BLOCK];
            let src = |r: usize| &tmp[(r * nb + x) * BLOCK..(r * nb + x + 1) * BLOCK];
            for r in 0..ROWS {
                out[2 * r..2 * r + 2].copy_from_slice(&src(r)[..2]);
            }
            for c in 0..ROWS * QS / 8 {
                // Eight bytes at a time: the expert cache runs this on every slot it reads.
                let from: [u8; 8] = src(c % ROWS)[2 + (c / ROWS) * 8..][..8].try_into().expect("8 bytes");
                let v = u64::from_ne_bytes(from) ^ 0x8888_8888_8888_8888;
                out[2 * ROWS + c * 8..][..8].copy_from_slice(&v.to_ne_bytes());
            }
        }
    }
}

/// `out[r] = dot(row r, x)` for an interleaved Q4_0 matrix with rows of `n` and a Q8_0 activation row.
#[derive(Clone, Copy, Debug)]
pub struct Gemv {
    n: usize,
}

impl Gemv {
    /// Whether matrices `[n, rows]` of `ty` get this kernel on this CPU: ggml's rule for repacking them
    /// ([`repackable`]), so that the uncapped path, which ggml repacks, runs the same kernel.
    pub fn new(ty: GgmlType, n: usize, rows: usize) -> Option<Gemv> {
        repackable(ty, &[n as i64, rows as i64]).then_some(Gemv { n })
    }

    /// Bytes of one Q8_0 activation row.
    pub fn x_len(&self) -> usize {
        self.n / 32 * 34
    }

    /// Bytes of a matrix of `rows` rows.
    pub fn w_len(&self, rows: usize) -> usize {
        rows * self.n / 32 * BLOCK
    }

    /// `w` holds `out.len()` interleaved rows (whole groups); `x` one Q8_0 row of `n`. Runs our GEMV
    /// ([`super::q4x8_gemv::gemv`]), which gives ggml's results bit for bit at about twice its speed hot in cache.
    pub fn run(&self, w: &[u8], x: &[u8], out: &mut [f32]) {
        super::q4x8_gemv::gemv(w, self.n, x, out)
    }

    /// [`run`](Self::run) on ggml's own kernel (the reference the tests and the speed tools compare with).
    pub fn run_ggml(&self, w: &[u8], x: &[u8], out: &mut [f32]) {
        let rows = out.len();
        assert!(
            rows % ROWS == 0 && w.len() == self.w_len(rows) && x.len() == self.x_len(),
            "Gemv: {} weight bytes, {} activation bytes for {rows} rows of {}",
            w.len(),
            x.len(),
            self.n
        );
        if rows == 0 {
            return;
        }
        // SAFETY: w holds rows / 8 groups of n / 32 block_q4_0x8 (2-byte aligned fields; the kernel uses
        // unaligned loads), x one row of n / 32 block_q8_0, out rows floats (all checked above); nr = 1 row.
        unsafe {
            ggml_gemv_q4_0_8x8_q8_0(
                self.n as std::ffi::c_int,
                out.as_mut_ptr(),
                rows,
                w.as_ptr().cast(),
                x.as_ptr().cast(),
                1,
                rows as std::ffi::c_int,
            )
        }
    }

    /// Bytes of `groups` groups of [`XROWS`] quantised activation rows.
    pub fn x4_len(&self, groups: usize) -> usize {
        groups * self.n / 32 * X4_BLOCK
    }

    /// Quantises [`XROWS`] rows of `n` (`x`, row-major) into one activation group (`out`, [`x4_len`](Self::x4_len)
    /// `(1)` bytes), as ggml's repacked mul_mat quantises its activations.
    pub fn quantize_x4(&self, x: &[f32], out: &mut [u8]) {
        assert!(
            x.len() == XROWS * self.n && out.len() == self.x4_len(1),
            "quantize_x4: {} floats into {} bytes for rows of {}",
            x.len(),
            out.len(),
            self.n
        );
        // SAFETY: x holds 4 rows of n floats and out n / 32 block_q8_0x4 (checked above; unaligned access).
        unsafe { ggml_quantize_mat_q8_0_4x8(x.as_ptr(), out.as_mut_ptr().cast(), self.n as i64) }
    }

    /// `out[r * bs + j] = dot(row j of w, activation r)` for the `x4.len() / x4_len(1) * 4` activation rows of `x4`
    /// (groups from [`quantize_x4`](Self::quantize_x4)) and the `rows` interleaved rows of `w` (whole groups).
    pub fn gemm(&self, w: &[u8], x4: &[u8], rows: usize, out: &mut [f32], bs: usize) {
        let one = self.x4_len(1);
        let nr = x4.len() / one * XROWS;
        assert!(
            rows % ROWS == 0
                && w.len() == self.w_len(rows)
                && x4.len() % one == 0
                && bs >= rows
                && (nr == 0 || out.len() >= (nr - 1) * bs + rows),
            "Gemv::gemm: {} weight bytes for {rows} rows of {}, {} activation bytes, {} outputs with stride {bs}",
            w.len(),
            self.n,
            x4.len(),
            out.len()
        );
        if rows == 0 || nr == 0 {
            return;
        }
        // SAFETY: w holds rows / 8 groups of block_q4_0x8 and x4 nr / 4 groups of block_q8_0x4 over rows of n;
        // out has room for nr rows of stride bs of which `rows` are written (all checked above).
        unsafe {
            ggml_gemm_q4_0_8x8_q8_0(
                self.n as std::ffi::c_int,
                out.as_mut_ptr(),
                bs,
                w.as_ptr().cast(),
                x4.as_ptr().cast(),
                nr as std::ffi::c_int,
                rows as std::ffi::c_int,
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ggml::rows::{AlignedBytes, RowDot, RowQuant};

    /// Deterministic values in [-0.5, 0.5) (also used by `q4x8_gemm`'s tests).
    pub(crate) fn random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The interleaved product equals ggml's row-at-a-time dot product on the file layout, to float rounding
    /// (the kernels sum the same integer products, with the scales applied in a different order).
    #[test]
    fn interleaved_gemv_matches_row_dots() {
        let (n, rows) = (512, 24);
        let Some(gemv) = Gemv::new(GgmlType::Q4_0, n, rows) else {
            eprintln!("note: no Q4_0 repack on this CPU");
            return;
        };
        let wq = RowQuant::new(GgmlType::Q4_0, n).unwrap();
        let mut w = AlignedBytes::zeroed(gemv.w_len(rows));
        let wl = wq.len();
        for r in 0..rows {
            wq.run(&random(n, r as u32), &mut w.as_mut_slice()[r * wl..(r + 1) * wl]);
        }
        let file = w.as_slice().to_vec();
        let dot = RowDot::new(GgmlType::Q4_0, n).unwrap();
        let xq = RowQuant::new(dot.y_type(), n).unwrap();
        let mut x = AlignedBytes::zeroed(xq.len());
        xq.run(&random(n, 99), x.as_mut_slice());
        let want: Vec<f32> = (0..rows)
            .map(|r| dot.dot(&file[r * wl..(r + 1) * wl], x.as_slice()))
            .collect();
        interleave(w.as_mut_slice(), n, &mut Vec::new());
        assert_ne!(w.as_slice(), &file[..], "the layout changed");
        let mut got = vec![0f32; rows];
        gemv.run_ggml(w.as_slice(), x.as_slice(), &mut got);
        for (r, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!((g - e).abs() <= 1e-4 * e.abs().max(1.0), "row {r}: {g} vs {e}");
        }
    }

    /// ggml's GEMM gives, for every activation row, exactly what its GEMV gives for that row alone, whether
    /// the rows go in one call (its 16-row path) or 4 at a time: the batched expert op relies on this, so that
    /// a row's result depends neither on the batch nor on the thread split.
    #[test]
    fn gemm_rows_equal_gemv() {
        let (n, rows, nr) = (512, 32, 20);
        let Some(gemv) = Gemv::new(GgmlType::Q4_0, n, rows) else {
            eprintln!("note: no Q4_0 repack on this CPU");
            return;
        };
        let wq = RowQuant::new(GgmlType::Q4_0, n).unwrap();
        let mut w = AlignedBytes::zeroed(gemv.w_len(rows));
        let wl = wq.len();
        for r in 0..rows {
            wq.run(&random(n, r as u32), &mut w.as_mut_slice()[r * wl..(r + 1) * wl]);
        }
        interleave(w.as_mut_slice(), n, &mut Vec::new());
        let xs = random(n * nr, 7);
        let one = gemv.x4_len(1);
        let mut x4 = vec![0u8; gemv.x4_len(nr / XROWS)];
        for (g, out) in x4.chunks_exact_mut(one).enumerate() {
            gemv.quantize_x4(&xs[g * XROWS * n..(g + 1) * XROWS * n], out);
        }
        let bs = rows + 3;
        let mut all = vec![f32::NAN; nr * bs];
        gemv.gemm(w.as_slice(), &x4, rows, &mut all, bs);
        let xq = RowQuant::new(GgmlType::Q8_0, n).unwrap();
        let mut xr = AlignedBytes::zeroed(xq.len());
        for r in 0..nr {
            xq.run(&xs[r * n..(r + 1) * n], xr.as_mut_slice());
            let mut want = vec![0f32; rows];
            gemv.run_ggml(w.as_slice(), xr.as_slice(), &mut want);
            assert_eq!(
                &all[r * bs..r * bs + rows],
                &want[..],
                "activation row {r}: gemm vs gemv"
            );
            let g = r / XROWS;
            let mut four = vec![0f32; XROWS * rows];
            gemv.gemm(w.as_slice(), &x4[g * one..(g + 1) * one], rows, &mut four, rows);
            let m = r % XROWS;
            assert_eq!(
                &four[m * rows..(m + 1) * rows],
                &want[..],
                "activation row {r}: 4-row gemm"
            );
        }
    }

    #[test]
    #[should_panic(expected = "whole groups")]
    fn interleave_refuses_partial_groups() {
        interleave(&mut [0u8; 7 * 18], 32, &mut Vec::new());
    }
}
