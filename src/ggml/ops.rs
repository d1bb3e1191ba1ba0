//! Arithmetic, normalisation, activation and selection ops. Each checks in Rust what ggml.c (graph build) and
//! ggml-cpu (compute) would `GGML_ASSERT`, and panics with the op name and the shapes instead.

use super::{sys, Context, Tensor};
use crate::gguf::GgmlType;

/// Accumulation precision hint for `mul_mat` / `flash_attn_ext` (ggml_prec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prec {
    /// Backend default.
    Default,
    /// Force F32 accumulation (llama.cpp sets it on KQ).
    F32,
}

impl Prec {
    pub(crate) fn to_sys(self) -> sys::ggml_prec {
        match self {
            Prec::Default => sys::GGML_PREC_DEFAULT,
            Prec::F32 => sys::GGML_PREC_F32,
        }
    }
}

/// Order of `argsort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// `a` is F32 with contiguous rows: the CPU kernels of most ops read rows with unit stride.
fn f32_rows(op: &str, what: &str, t: Tensor<'_>) {
    ensure!(t.ty() == GgmlType::F32, op, "{what} {t:?} must be F32");
    ensure!(
        t.is_contiguous_rows(),
        op,
        "{what} {t:?} must have contiguous rows (nb[0] = 4)"
    );
}

/// ggml_can_repeat(b, a): each dim of `a` is a whole multiple of `b`'s.
fn can_repeat(b: [i64; 4], a: [i64; 4]) -> bool {
    (0..4).all(|i| b[i] > 0 && a[i] % b[i] == 0) || (a.contains(&0) && b.contains(&0))
}

impl Context {
    fn binary(&self, op: &str, a: Tensor<'_>, b: Tensor<'_>) {
        f32_rows(op, "a", a);
        f32_rows(op, "b", b);
        ensure!(can_repeat(b.ne(), a.ne()), op, "b {b:?} does not broadcast to a {a:?}");
        self.reserve_tensors(op, 1, Some((GgmlType::F32, a.ne())));
    }

    /// `a + b`, `b` broadcast over `a`.
    pub fn add<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.binary("add", a, b);
        // SAFETY: types, strides and broadcast checked; room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_add(self.as_ptr(), a.as_ptr(), b.as_ptr()) }, false)
    }

    /// `a * b` elementwise, `b` broadcast over `a`.
    pub fn mul<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.binary("mul", a, b);
        // SAFETY: as in `add`.
        Tensor::from_raw(unsafe { sys::ggml_mul(self.as_ptr(), a.as_ptr(), b.as_ptr()) }, false)
    }

    /// `a / b` elementwise, `b` broadcast over `a`.
    pub fn div<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.binary("div", a, b);
        // SAFETY: as in `add`.
        Tensor::from_raw(unsafe { sys::ggml_div(self.as_ptr(), a.as_ptr(), b.as_ptr()) }, false)
    }

    /// `a * s`.
    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Tensor<'a> {
        ensure!(
            a.ty() == GgmlType::F32 && a.is_contiguous(),
            "scale",
            "{a:?} must be contiguous F32"
        );
        self.reserve_tensors("scale", 1, Some((GgmlType::F32, a.ne())));
        // SAFETY: contiguous F32 (the CPU kernel's assert); room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_scale(self.as_ptr(), a.as_ptr(), s) }, false)
    }

    /// `a` clamped to `[min, max]`.
    pub fn clamp<'a>(&'a self, a: Tensor<'a>, min: f32, max: f32) -> Tensor<'a> {
        f32_rows("clamp", "a", a);
        self.reserve_tensors("clamp", 1, Some((GgmlType::F32, a.ne())));
        // SAFETY: F32 rows (CPU assert); room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_clamp(self.as_ptr(), a.as_ptr(), min, max) }, false)
    }

    /// Each row divided by its root mean square (plus `eps`); no weight (multiply by one with `mul`).
    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Tensor<'a> {
        f32_rows("rms_norm", "a", a);
        ensure!(eps >= 0.0, "rms_norm", "eps = {eps} must be >= 0");
        self.reserve_tensors("rms_norm", 1, Some((GgmlType::F32, a.ne())));
        // SAFETY: F32 rows and eps >= 0 (CPU asserts); room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_rms_norm(self.as_ptr(), a.as_ptr(), eps) }, false)
    }

    /// Each row normalised to zero mean and unit variance (plus `eps`).
    pub fn norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Tensor<'a> {
        f32_rows("norm", "a", a);
        ensure!(eps >= 0.0, "norm", "eps = {eps} must be >= 0");
        self.reserve_tensors("norm", 1, Some((GgmlType::F32, a.ne())));
        // SAFETY: as in rms_norm.
        Tensor::from_raw(unsafe { sys::ggml_norm(self.as_ptr(), a.as_ptr(), eps) }, false)
    }

    fn unary(&self, op: &str, a: Tensor<'_>) {
        ensure!(
            matches!(a.ty(), GgmlType::F32 | GgmlType::F16),
            op,
            "{a:?} must be F32 or F16"
        );
        ensure!(
            a.is_contiguous_1(),
            op,
            "{a:?} must have contiguous rows without gaps (ggml_is_contiguous_1)"
        );
        self.reserve_tensors(op, 1, Some((a.ty(), a.ne())));
    }

    /// `1 / (1 + exp(-a))`.
    pub fn sigmoid<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.unary("sigmoid", a);
        // SAFETY: type and contiguity checked (ggml_unary_impl's assert); room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_sigmoid(self.as_ptr(), a.as_ptr()) }, false)
    }

    /// `max(a, 0)`.
    pub fn relu<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.unary("relu", a);
        // SAFETY: as in sigmoid.
        Tensor::from_raw(unsafe { sys::ggml_relu(self.as_ptr(), a.as_ptr()) }, false)
    }

    /// `a * sigmoid(a)`.
    pub fn silu<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.unary("silu", a);
        // SAFETY: as in sigmoid.
        Tensor::from_raw(unsafe { sys::ggml_silu(self.as_ptr(), a.as_ptr()) }, false)
    }

    /// `relu(a) * b` (ggml_reglu_split; SmallThinker's expert FFN with a = gate, b = up).
    pub fn reglu_split<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        let op = "reglu_split";
        ensure!(
            matches!(a.ty(), GgmlType::F32 | GgmlType::F16) && a.ty() == b.ty(),
            op,
            "{a:?} and {b:?} must be both F32 or both F16"
        );
        ensure!(a.ne() == b.ne(), op, "{a:?} and {b:?} differ in shape");
        ensure!(
            a.is_contiguous_1() && b.is_contiguous_1(),
            op,
            "{a:?} and {b:?} need contiguous rows without gaps"
        );
        self.reserve_tensors(op, 1, Some((a.ty(), a.ne())));
        // SAFETY: checked as ggml_glu_impl asserts; room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_reglu_split(self.as_ptr(), a.as_ptr(), b.as_ptr()) },
            false,
        )
    }

    /// Softmax of each row.
    pub fn softmax<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        ensure!(
            a.ty() == GgmlType::F32 && a.is_contiguous(),
            "softmax",
            "{a:?} must be contiguous F32"
        );
        self.reserve_tensors("softmax", 1, Some((GgmlType::F32, a.ne())));
        // SAFETY: contiguous F32 (ggml_soft_max_impl's assert); room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_soft_max(self.as_ptr(), a.as_ptr()) }, false)
    }

    /// Sum of each row: `[ne0, ne1, ne2, ne3]` -> `[1, ne1, ne2, ne3]`.
    pub fn sum_rows<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        f32_rows("sum_rows", "a", a);
        let ne = a.ne();
        self.reserve_tensors("sum_rows", 1, Some((GgmlType::F32, [1, ne[1], ne[2], ne[3]])));
        // SAFETY: F32 rows (CPU assert); room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_sum_rows(self.as_ptr(), a.as_ptr()) }, false)
    }

    /// Entries above the diagonal (column > row + n_past) set to -inf.
    pub fn diag_mask_inf<'a>(&'a self, a: Tensor<'a>, n_past: i32) -> Tensor<'a> {
        ensure!(
            a.ty() == GgmlType::F32 && a.is_contiguous(),
            "diag_mask_inf",
            "{a:?} must be contiguous F32"
        );
        ensure!(n_past >= 0, "diag_mask_inf", "n_past = {n_past} must be >= 0");
        self.reserve_tensors("diag_mask_inf", 1, Some((GgmlType::F32, a.ne())));
        // SAFETY: contiguous F32 and n_past >= 0 (CPU asserts); room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_diag_mask_inf(self.as_ptr(), a.as_ptr(), n_past) },
            false,
        )
    }

    fn sort_check(&self, op: &str, a: Tensor<'_>, k: i64) {
        f32_rows(op, "a", a);
        ensure!(
            a.ne()[0] <= i32::MAX as i64,
            op,
            "{a:?}: rows too long to index with I32"
        );
        ensure!(
            k >= 0 && a.ne()[0] >= k,
            op,
            "k = {k} out of 0..={} for {a:?}",
            a.ne()[0]
        );
    }

    /// I32 indices that sort each row.
    pub fn argsort<'a>(&'a self, a: Tensor<'a>, order: SortOrder) -> Tensor<'a> {
        self.sort_check("argsort", a, 0);
        self.reserve_tensors("argsort", 1, Some((GgmlType::I32, a.ne())));
        let order = match order {
            SortOrder::Asc => sys::GGML_SORT_ORDER_ASC,
            SortOrder::Desc => sys::GGML_SORT_ORDER_DESC,
        };
        // SAFETY: F32 rows, length fits I32; room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_argsort(self.as_ptr(), a.as_ptr(), order) }, false)
    }

    /// I32 indices of the `k` largest entries of each row, largest first (argsort + view): `[k, ne1, ne2, ne3]`.
    pub fn argsort_top_k<'a>(&'a self, a: Tensor<'a>, k: i64) -> Tensor<'a> {
        self.sort_check("argsort_top_k", a, k);
        self.reserve_tensors("argsort_top_k", 2, Some((GgmlType::I32, a.ne())));
        // SAFETY: checked as ggml_argsort_top_k asserts; room for the argsort and its view.
        Tensor::from_raw(
            unsafe { sys::ggml_argsort_top_k(self.as_ptr(), a.as_ptr(), k as i32) },
            false,
        )
    }

    /// I32 indices of the `k` largest entries of each row, in no particular order: `[k, ne1, ne2, ne3]`.
    pub fn top_k<'a>(&'a self, a: Tensor<'a>, k: i64) -> Tensor<'a> {
        self.sort_check("top_k", a, k);
        let ne = a.ne();
        self.reserve_tensors("top_k", 1, Some((GgmlType::I32, [k, ne[1], ne[2], ne[3]])));
        // SAFETY: checked as ggml_top_k asserts; room in the pool.
        Tensor::from_raw(unsafe { sys::ggml_top_k(self.as_ptr(), a.as_ptr(), k as i32) }, false)
    }

    /// `a [k, n, ne2, ne3]`, `b [k, m, ...]` -> `[n, m, ...]`: each output is a dot of a row of `a` with a row of
    /// `b` (ggml's "a^T b"); `a` broadcast over dims 2 and 3 of `b`. `b` must be F32.
    pub fn mul_mat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        let (an, bn) = (a.ne(), b.ne());
        ensure!(an[0] == bn[0], "mul_mat", "ne[0] differs: a {a:?}, b {b:?}");
        ensure!(
            an[2] > 0 && an[3] > 0 && bn[2] % an[2] == 0 && bn[3] % an[3] == 0,
            "mul_mat",
            "a {a:?} does not broadcast over b {b:?}"
        );
        ensure!(
            !a.is_transposed() && a.is_contiguous_rows(),
            "mul_mat",
            "a {a:?} must have contiguous rows (not transposed)"
        );
        f32_rows("mul_mat", "b", b);
        ensure!(
            super::backend::has_vec_dot(a.ty()),
            "mul_mat",
            "a {a:?}: type has no CPU dot product"
        );
        self.reserve_tensors("mul_mat", 1, Some((GgmlType::F32, [an[1], bn[1], bn[2], bn[3]])));
        // SAFETY: checked as ggml_mul_mat / the CPU kernel assert; room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_mul_mat(self.as_ptr(), a.as_ptr(), b.as_ptr()) },
            false,
        )
    }

    /// Sets the accumulation precision of a `mul_mat` result.
    pub fn mul_mat_set_prec(&self, t: Tensor<'_>, prec: Prec) {
        ensure!(
            t.op() == sys::GGML_OP_MUL_MAT,
            "mul_mat_set_prec",
            "{t:?} is not a mul_mat result"
        );
        // SAFETY: a MUL_MAT node (ggml's assert); only its op params change.
        unsafe { sys::ggml_mul_mat_set_prec(t.as_ptr(), prec.to_sys()) };
    }

    /// Per-token expert matmul: `as [k, n, n_expert]`, `b [k, n_used_or_1, n_tokens]`, `ids [n_used, n_tokens]`
    /// (I32 expert ids) -> `[n, n_used, n_tokens]`, where output (·, e, t) = as[ids[e, t]] · b[·, e % b.ne1, t].
    pub fn mul_mat_id<'a>(&'a self, as_: Tensor<'a>, b: Tensor<'a>, ids: Tensor<'a>) -> Tensor<'a> {
        let (an, bn, idn) = (as_.ne(), b.ne(), ids.ne());
        let op = "mul_mat_id";
        ensure!(
            !as_.is_transposed() && as_.is_contiguous_rows(),
            op,
            "as {as_:?} must have contiguous rows"
        );
        ensure!(ids.ty() == GgmlType::I32, op, "ids {ids:?} must be I32");
        ensure!(an[3] == 1 && bn[3] == 1, op, "as {as_:?} and b {b:?} must be 3d");
        ensure!(idn[2] == 1 && idn[3] == 1, op, "ids {ids:?} must be 2d");
        ensure!(
            idn[1] == bn[2],
            op,
            "ids {ids:?} need one expert list per b token: b {b:?}"
        );
        ensure!(an[0] == bn[0], op, "ne[0] differs: as {as_:?}, b {b:?}");
        ensure!(
            bn[1] > 0 && idn[0] % bn[1] == 0,
            op,
            "ids {ids:?} do not broadcast over b {b:?}"
        );
        f32_rows(op, "b", b);
        ensure!(
            super::backend::has_vec_dot(as_.ty()),
            op,
            "as {as_:?}: type has no CPU dot product"
        );
        self.reserve_tensors(op, 1, Some((GgmlType::F32, [an[1], idn[0], bn[2], 1])));
        // SAFETY: checked as ggml_mul_mat_id asserts; room in the pool.
        Tensor::from_raw(
            unsafe { sys::ggml_mul_mat_id(self.as_ptr(), as_.as_ptr(), b.as_ptr(), ids.as_ptr()) },
            false,
        )
    }
}
