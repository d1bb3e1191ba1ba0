//! Per-row kernels for hand-written ops (the sparse MoE): ggml's CPU dot product, f32 -> type conversion and
//! type -> f32 conversion of single rows, with the function pointers looked up once and the row lengths checked
//! on every call (cheap next to the row's work), plus an 8-byte-aligned byte buffer for quantized rows owned by
//! Rust (ggml's block structs need 2- or 4-byte alignment; `Vec<u8>` guarantees 1).

use super::backend::cpu_traits;
use super::{sys, to_sys_type};
use crate::gguf::GgmlType;

/// Bytes of one row of `n` elements of `ty`, panicking if `n` is not whole blocks (checked by callers up front).
fn row_len(ty: GgmlType, n: usize) -> usize {
    ty.row_bytes(n as u64)
        .unwrap_or_else(|| panic!("{n} elements are not whole {ty} blocks")) as usize
}

fn check(what: &str, ty: GgmlType, len: usize, bytes: &[u8]) {
    assert_eq!(
        bytes.len(),
        len,
        "{what}: {ty} row of {len} bytes expected, got {}",
        bytes.len()
    );
    let align = if ty == GgmlType::F32 { 4 } else { 2 };
    assert!(
        (bytes.as_ptr() as usize) % align == 0,
        "{what}: {ty} row not {align}-byte aligned"
    );
}

/// `dot(x, y)` of rows of `n` elements, `x` of `ty`, `y` of [`RowDot::y_type`] (ggml's `vec_dot_type`).
#[derive(Clone, Copy)]
pub struct RowDot {
    ty: GgmlType,
    y_ty: GgmlType,
    n: usize,
    x_len: usize,
    y_len: usize,
    f: unsafe extern "C" fn(i32, *mut f32, usize, *const std::ffi::c_void, usize, *const std::ffi::c_void, usize, i32),
}

impl RowDot {
    /// None if ggml has no CPU dot product for `ty` or `n` is not whole blocks of `ty` and its vec_dot type.
    pub fn new(ty: GgmlType, n: usize) -> Option<RowDot> {
        let tr = cpu_traits(ty);
        let f = tr.vec_dot?;
        let y_ty = super::from_sys_type(tr.vec_dot_type);
        let x_len = ty.row_bytes(n as u64)? as usize;
        let y_len = y_ty.row_bytes(n as u64)? as usize;
        i32::try_from(n).ok()?;
        Some(RowDot {
            ty,
            y_ty,
            n,
            x_len,
            y_len,
            f,
        })
    }

    /// The type the other operand must be converted to ([`RowQuant`]).
    pub fn y_type(&self) -> GgmlType {
        self.y_ty
    }

    /// Bytes of one `x` row.
    pub fn x_len(&self) -> usize {
        self.x_len
    }

    pub fn dot(&self, x: &[u8], y: &[u8]) -> f32 {
        check("RowDot x", self.ty, self.x_len, x);
        check("RowDot y", self.y_ty, self.y_len, y);
        let mut s = 0f32;
        // SAFETY: x and y hold exactly one row of n elements of their types, aligned for their blocks (checked);
        // nrc = 1 writes the single result to `s`, strides unused.
        unsafe { (self.f)(self.n as i32, &mut s, 0, x.as_ptr().cast(), 0, y.as_ptr().cast(), 0, 1) };
        s
    }
}

/// f32 rows of `n` -> rows of `ty` (ggml's CPU `from_float`, the activation quantiser of mul_mat).
#[derive(Clone, Copy)]
pub struct RowQuant {
    ty: GgmlType,
    n: usize,
    len: usize,
    f: sys::ggml_from_float_t,
}

impl RowQuant {
    /// None if the CPU cannot convert to `ty` or `n` is not whole blocks.
    pub fn new(ty: GgmlType, n: usize) -> Option<RowQuant> {
        let len = ty.row_bytes(n as u64)? as usize;
        let f = cpu_traits(ty).from_float;
        (ty == GgmlType::F32 || f.is_some()).then_some(RowQuant { ty, n, len, f })
    }

    /// Bytes of one output row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn run(&self, x: &[f32], out: &mut [u8]) {
        assert_eq!(x.len(), self.n, "RowQuant: {} values, expected {}", x.len(), self.n);
        check("RowQuant out", self.ty, self.len, out);
        match self.f {
            // SAFETY: x has n floats, out exactly one row of n elements of ty, aligned (checked).
            Some(f) => unsafe { f(x.as_ptr(), out.as_mut_ptr().cast(), self.n as i64) },
            None => {
                for (o, v) in out.chunks_exact_mut(4).zip(x) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// Rows of `n` elements of `ty` -> f32 (ggml's `to_float`; a copy for F32).
#[derive(Clone, Copy)]
pub struct RowDequant {
    ty: GgmlType,
    n: usize,
    len: usize,
    f: sys::ggml_to_float_t,
}

impl RowDequant {
    /// None if ggml cannot convert `ty` to f32 or `n` is not whole blocks.
    pub fn new(ty: GgmlType, n: usize) -> Option<RowDequant> {
        let len = ty.row_bytes(n as u64)? as usize;
        // SAFETY: every GgmlType id is a valid ggml type; ggml returns a pointer into its static table.
        let f = unsafe { (*sys::ggml_get_type_traits(to_sys_type(ty))).to_float };
        (ty == GgmlType::F32 || f.is_some()).then_some(RowDequant { ty, n, len, f })
    }

    /// Bytes of one input row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn run(&self, x: &[u8], out: &mut [f32]) {
        check("RowDequant x", self.ty, self.len, x);
        assert_eq!(
            out.len(),
            self.n,
            "RowDequant: {} outputs, expected {}",
            out.len(),
            self.n
        );
        match self.f {
            // SAFETY: x is one aligned row of n elements of ty (checked), out has n floats.
            Some(f) => unsafe { f(x.as_ptr().cast(), out.as_mut_ptr(), self.n as i64) },
            None => {
                for (o, b) in out.iter_mut().zip(x.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }
}

/// A zeroed byte buffer with 8-byte alignment, for rows of any ggml type.
#[derive(Clone, Default)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    /// Room for `n_rows` rows of `n` elements of `ty`.
    pub fn rows(ty: GgmlType, n: usize, n_rows: usize) -> AlignedBytes {
        AlignedBytes::zeroed(row_len(ty, n) * n_rows)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: u8 has no alignment or validity requirements; len <= 8 * words.len().
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; every byte pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// `out += h * row` for one row of `ty` (F32, Q8_0 or Q4_0: fused dequantise and accumulate, no f32 copy of the
/// row); other types go through `deq` and `tmp`. The inner loops are compiled for AVX2+FMA too and picked at
/// run time, since the crate is built for baseline x86-64 while ggml's C is built for the host.
pub fn axpy_row(deq: &RowDequant, h: f32, row: &[u8], out: &mut [f32], tmp: &mut [f32]) {
    check("axpy_row", deq.ty, deq.len, row);
    assert_eq!(out.len(), deq.n, "axpy_row: {} outputs, expected {}", out.len(), deq.n);
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { axpy_avx2(deq, h, row, out, tmp) };
        }
    }
    axpy_generic(deq, h, row, out, tmp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(deq: &RowDequant, h: f32, row: &[u8], out: &mut [f32], tmp: &mut [f32]) {
    axpy_generic(deq, h, row, out, tmp)
}

#[inline(always)]
fn axpy_generic(deq: &RowDequant, h: f32, row: &[u8], out: &mut [f32], tmp: &mut [f32]) {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match deq.ty {
        GgmlType::Q8_0 => {
            for (blk, o) in row.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let s = h * f16(blk);
                for (o, &q) in o.iter_mut().zip(&blk[2..34]) {
                    *o = (q as i8 as f32).mul_add(s, *o);
                }
            }
        }
        GgmlType::Q4_0 => {
            for (blk, o) in row.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let s = h * f16(blk);
                let (lo, hi) = o.split_at_mut(16);
                for ((l, hh), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[2..18]) {
                    *l = (((q & 0x0f) as i32 - 8) as f32).mul_add(s, *l);
                    *hh = (((q >> 4) as i32 - 8) as f32).mul_add(s, *hh);
                }
            }
        }
        _ => {
            deq.run(row, tmp);
            for (o, &d) in out.iter_mut().zip(tmp.iter()) {
                *o = d.mul_add(h, *o);
            }
        }
    }
}
