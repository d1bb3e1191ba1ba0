//! Views, reshapes and copies: `view_*`, `reshape_*`, `permute`, `transpose`, `cont`, `cpy`, `get_rows`,
//! `set_rows`, `concat`. Views keep a read-only tensor read-only.

use super::{sys, Context, Tensor};
use crate::gguf::GgmlType;

fn is_float(t: GgmlType) -> bool {
    matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

impl Context {
    /// Checks that a view of `a` with dims `ne`, strides `nb` (nb[0] = element size) and byte `offset` stays
    /// inside `a`'s data, then wraps ggml's result.
    fn view_impl(&self, op: &str, a: Tensor<'_>, ne: [i64; 4], nb: [usize; 4], offset: usize) {
        let ty = a.ty();
        ensure!(
            ne.iter().all(|&d| d >= 0),
            op,
            "negative dim {ne:?} for a view of {a:?}"
        );
        ensure!(
            ne[0] as u64 % ty.block_size() == 0,
            op,
            "ne[0] = {} is not whole {ty} blocks ({a:?})",
            ne[0]
        );
        let row = ty.row_bytes(ne[0] as u64).unwrap() as usize;
        let empty = ne.contains(&0);
        let end = offset
            + if empty {
                0
            } else {
                row + (1..4).map(|i| (ne[i] as usize - 1) * nb[i]).sum::<usize>()
            };
        let dense = row * (ne[1] * ne[2] * ne[3]) as usize;
        ensure!(
            end <= a.nbytes() && offset + dense <= a.nbytes(),
            op,
            "view {ne:?} with strides {nb:?} at offset {offset} ends at byte {}, past the {} bytes of {a:?}",
            end.max(offset + dense),
            a.nbytes()
        );
        self.reserve_tensors(op, 1, None);
    }

    /// `[ne0]` elements of `a` from byte `offset`.
    pub fn view_1d<'a>(&'a self, a: Tensor<'a>, ne0: i64, offset: usize) -> Tensor<'a> {
        let es = a.ty().type_size() as usize;
        self.view_impl("view_1d", a, [ne0, 1, 1, 1], [es, 0, 0, 0], offset);
        // SAFETY: in bounds and room in the pool (view_impl).
        Tensor::from_raw(
            unsafe { sys::ggml_view_1d(self.as_ptr(), a.as_ptr(), ne0, offset) },
            a.is_readonly(),
        )
    }

    /// `[ne0, ne1]` with row stride `nb1` bytes.
    pub fn view_2d<'a>(&'a self, a: Tensor<'a>, ne0: i64, ne1: i64, nb1: usize, offset: usize) -> Tensor<'a> {
        let es = a.ty().type_size() as usize;
        self.view_impl("view_2d", a, [ne0, ne1, 1, 1], [es, nb1, 0, 0], offset);
        // SAFETY: in bounds and room in the pool (view_impl).
        let t = unsafe { sys::ggml_view_2d(self.as_ptr(), a.as_ptr(), ne0, ne1, nb1, offset) };
        Tensor::from_raw(t, a.is_readonly())
    }

    /// `[ne0, ne1, ne2]` with strides `nb1`, `nb2`.
    pub fn view_3d<'a>(&'a self, a: Tensor<'a>, ne: [i64; 3], nb1: usize, nb2: usize, offset: usize) -> Tensor<'a> {
        let es = a.ty().type_size() as usize;
        self.view_impl("view_3d", a, [ne[0], ne[1], ne[2], 1], [es, nb1, nb2, 0], offset);
        // SAFETY: in bounds and room in the pool (view_impl).
        let t = unsafe { sys::ggml_view_3d(self.as_ptr(), a.as_ptr(), ne[0], ne[1], ne[2], nb1, nb2, offset) };
        Tensor::from_raw(t, a.is_readonly())
    }

    /// `[ne0, ne1, ne2, ne3]` with strides `nb = [nb1, nb2, nb3]`.
    pub fn view_4d<'a>(&'a self, a: Tensor<'a>, ne: [i64; 4], nb: [usize; 3], offset: usize) -> Tensor<'a> {
        let es = a.ty().type_size() as usize;
        self.view_impl("view_4d", a, ne, [es, nb[0], nb[1], nb[2]], offset);
        // SAFETY: in bounds and room in the pool (view_impl).
        let t = unsafe {
            sys::ggml_view_4d(
                self.as_ptr(),
                a.as_ptr(),
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                nb[0],
                nb[1],
                nb[2],
                offset,
            )
        };
        Tensor::from_raw(t, a.is_readonly())
    }

    fn reshape_check(&self, op: &str, a: Tensor<'_>, ne: &[i64]) {
        ensure!(a.is_contiguous(), op, "{a:?} is not contiguous (cont it first)");
        ensure!(
            ne.iter().all(|&d| d >= 0) && ne.iter().product::<i64>() == a.nelements(),
            op,
            "{ne:?} has a different element count from {a:?}"
        );
        ensure!(
            ne[0] as u64 % a.ty().block_size() == 0,
            op,
            "ne[0] = {} is not whole {} blocks",
            ne[0],
            a.ty()
        );
        self.reserve_tensors(op, 1, None);
    }

    /// Same data as `[ne0, ne1]` (a must be contiguous).
    pub fn reshape_2d<'a>(&'a self, a: Tensor<'a>, ne0: i64, ne1: i64) -> Tensor<'a> {
        self.reshape_check("reshape_2d", a, &[ne0, ne1]);
        // SAFETY: contiguous, same element count, room in the pool (checked).
        Tensor::from_raw(
            unsafe { sys::ggml_reshape_2d(self.as_ptr(), a.as_ptr(), ne0, ne1) },
            a.is_readonly(),
        )
    }

    /// Same data as `[ne0, ne1, ne2]`.
    pub fn reshape_3d<'a>(&'a self, a: Tensor<'a>, ne0: i64, ne1: i64, ne2: i64) -> Tensor<'a> {
        self.reshape_check("reshape_3d", a, &[ne0, ne1, ne2]);
        // SAFETY: contiguous, same element count, room in the pool (checked).
        let t = unsafe { sys::ggml_reshape_3d(self.as_ptr(), a.as_ptr(), ne0, ne1, ne2) };
        Tensor::from_raw(t, a.is_readonly())
    }

    /// Same data as `[ne0, ne1, ne2, ne3]`.
    pub fn reshape_4d<'a>(&'a self, a: Tensor<'a>, ne0: i64, ne1: i64, ne2: i64, ne3: i64) -> Tensor<'a> {
        self.reshape_check("reshape_4d", a, &[ne0, ne1, ne2, ne3]);
        // SAFETY: contiguous, same element count, room in the pool (checked).
        let t = unsafe { sys::ggml_reshape_4d(self.as_ptr(), a.as_ptr(), ne0, ne1, ne2, ne3) };
        Tensor::from_raw(t, a.is_readonly())
    }

    /// Moves dim i of `a` to position `axes[i]` (ggml_permute's convention), as a strided view.
    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [usize; 4]) -> Tensor<'a> {
        let mut seen = [false; 4];
        for &x in &axes {
            ensure!(
                x < 4 && !seen[x],
                "permute",
                "axes {axes:?} are not a permutation of 0..4 ({a:?})"
            );
            seen[x] = true;
        }
        self.reserve_tensors("permute", 1, None);
        let [x0, x1, x2, x3] = axes.map(|x| x as i32);
        // SAFETY: valid permutation (checked) and room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_permute(self.as_ptr(), a.as_ptr(), x0, x1, x2, x3) },
            a.is_readonly(),
        )
    }

    /// Swaps dims 0 and 1 (a strided view).
    pub fn transpose<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.reserve_tensors("transpose", 1, None);
        // SAFETY: no preconditions beyond room in the pool (checked).
        Tensor::from_raw(
            unsafe { sys::ggml_transpose(self.as_ptr(), a.as_ptr()) },
            a.is_readonly(),
        )
    }

    /// A contiguous copy of `a`.
    pub fn cont<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        ensure!(
            a.is_contiguous_rows() || !a.ty().is_quantized(),
            "cont",
            "{a:?}: quantized rows must be contiguous"
        );
        self.reserve_tensors("cont", 1, Some((a.ty(), a.ne())));
        // SAFETY: room in the pool (checked); ggml_cont has no other preconditions.
        Tensor::from_raw(unsafe { sys::ggml_cont(self.as_ptr(), a.as_ptr()) }, false)
    }

    /// Copies `a` into `b` (same element count; float types convert) at compute time; returns the view of `b`
    /// to expand into the graph.
    pub fn cpy<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        ensure!(
            a.nelements() == b.nelements(),
            "cpy",
            "{a:?} and {b:?} differ in element count"
        );
        ensure!(
            !b.is_readonly(),
            "cpy",
            "destination {b:?} is read-only borrowed memory"
        );
        ensure!(
            (is_float(a.ty()) && is_float(b.ty())) || (a.ty() == b.ty() && a.is_contiguous() && b.is_contiguous()),
            "cpy",
            "unsupported copy {a:?} -> {b:?} (float types convert; other types need the same type, contiguous)"
        );
        self.reserve_tensors("cpy", 1, None);
        // SAFETY: same element count, supported type pair, writable destination, room (checked).
        Tensor::from_raw(unsafe { sys::ggml_cpy(self.as_ptr(), a.as_ptr(), b.as_ptr()) }, false)
    }

    /// Rows of `a` picked by the I32 ids `b` (`[n_rows, ne2]`), dequantized to F32:
    /// `a [ne0, n, ne2, ne3]`, `b [m, ne2, ne3]` -> `[ne0, m, ne2, ne3]`.
    pub fn get_rows<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        let (an, bn) = (a.ne(), b.ne());
        ensure!(b.ty() == GgmlType::I32, "get_rows", "ids {b:?} must be I32");
        ensure!(
            an[2] == bn[1] && an[3] == bn[2] && bn[3] == 1,
            "get_rows",
            "ids {b:?} do not match rows of {a:?}"
        );
        ensure!(a.is_contiguous_rows(), "get_rows", "{a:?} rows must be contiguous");
        ensure!(
            super::backend::has_to_float(a.ty()),
            "get_rows",
            "{a:?}: type has no CPU dequantization"
        );
        let ty = if a.ty() == GgmlType::I32 {
            GgmlType::I32
        } else {
            GgmlType::F32
        };
        self.reserve_tensors("get_rows", 1, Some((ty, [an[0], bn[0], bn[1], bn[2]])));
        // SAFETY: shapes and types checked as ggml_get_rows asserts; room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_get_rows(self.as_ptr(), a.as_ptr(), b.as_ptr()) },
            false,
        )
    }

    /// Writes the rows of `b` into `a` at the row ids `c` (I64 or I32) at compute time, converting to `a`'s type
    /// (the KV-cache store); returns the view of `a` to expand into the graph.
    /// `a [ne0, n, ne2, ne3]`, `b [ne0, m, ne2, ne3]`, `c [m, ...]`.
    pub fn set_rows<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, c: Tensor<'a>) -> Tensor<'a> {
        let (an, bn, cn) = (a.ne(), b.ne(), c.ne());
        let op = "set_rows";
        ensure!(!a.is_readonly(), op, "destination {a:?} is read-only borrowed memory");
        ensure!(
            an[0] == bn[0] && an[2] == bn[2] && an[3] == bn[3],
            op,
            "rows {b:?} do not fit {a:?}"
        );
        ensure!(
            bn[1] == cn[0],
            op,
            "{b:?} has {} rows but ids {c:?} have {}",
            bn[1],
            cn[0]
        );
        ensure!(
            cn[1] > 0 && cn[2] > 0 && bn[2] % cn[1] == 0 && bn[3] % cn[2] == 0 && cn[3] == 1,
            op,
            "ids {c:?} do not broadcast over {b:?}"
        );
        ensure!(
            matches!(b.ty(), GgmlType::F32 | GgmlType::F16),
            op,
            "source rows {b:?} must be F32 or F16"
        );
        ensure!(
            matches!(c.ty(), GgmlType::I64 | GgmlType::I32),
            op,
            "ids {c:?} must be I64 or I32"
        );
        ensure!(
            a.is_contiguous_rows() && b.is_contiguous_rows(),
            op,
            "{a:?} and {b:?} need contiguous rows"
        );
        ensure!(
            super::backend::has_from_float(a.ty()),
            op,
            "{a:?}: no CPU conversion from F32"
        );
        self.reserve_tensors(op, 1, None);
        // SAFETY: shapes and types checked as ggml_set_rows asserts; room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_set_rows(self.as_ptr(), a.as_ptr(), b.as_ptr(), c.as_ptr()) },
            false,
        )
    }

    /// `a` and `b` joined along `dim`; the other dims must match.
    pub fn concat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, dim: usize) -> Tensor<'a> {
        ensure!(dim < 4, "concat", "dim {dim} out of 0..4");
        ensure!(a.ty() == b.ty(), "concat", "{a:?} and {b:?} differ in type");
        let (an, bn) = (a.ne(), b.ne());
        let mut ne = an;
        for d in 0..4 {
            if d == dim {
                ne[d] = an[d] + bn[d];
            } else {
                ensure!(
                    an[d] == bn[d],
                    "concat",
                    "{a:?} and {b:?} differ in dim {d} (joining dim {dim})"
                );
            }
        }
        ensure!(
            !a.ty().is_quantized(),
            "concat",
            "{a:?}: quantized concat is not supported"
        );
        self.reserve_tensors("concat", 1, Some((a.ty(), ne)));
        // SAFETY: checked as ggml_concat asserts; room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_concat(self.as_ptr(), a.as_ptr(), b.as_ptr(), dim as i32) },
            false,
        )
    }
}
