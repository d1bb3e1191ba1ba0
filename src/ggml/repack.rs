//! ggml's CPU_REPACK buffer type: Q4_0 matrices stored as interleaved 8-row blocks (`block_q4_0x8`), which its
//! AVX2 GEMV/GEMM kernels multiply several rows at a time. llama.cpp puts every eligible weight there by
//! default (and keeps the mapped file beside it); we use it for the dense matrices only, since the sparse expert
//! op reads rows of the file's layout.
//!
//! ggml asserts inside `set_tensor` when a tensor has no repacked form, so eligibility is checked here first,
//! with the same rules as `ggml_repack_get_optimal_repack_type` for this CPU.

use std::ffi::CStr;
use std::ptr::NonNull;

use super::backend::BufferOwner;
use super::{sys, Context, GgmlError, Tensor};
use crate::gguf::GgmlType;

/// The CPU_REPACK buffer type of the CPU backend, if ggml offers one on this machine.
fn repack_buft() -> Option<sys::ggml_backend_buffer_type_t> {
    // SAFETY: the CPU registry and its device are statics; the proc address, when present, has the documented
    // ggml_backend_dev_get_extra_bufts_t signature and returns a null-terminated array of static buffer types.
    unsafe {
        let reg = sys::ggml_backend_cpu_reg();
        let dev = sys::ggml_backend_reg_dev_get(reg, 0);
        let f = sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_dev_get_extra_bufts".as_ptr());
        if f.is_null() || dev.is_null() {
            return None;
        }
        let f: sys::ggml_backend_dev_get_extra_bufts_t = std::mem::transmute(f);
        let mut p = f?(dev);
        while !p.is_null() && !(*p).is_null() {
            if CStr::from_ptr(sys::ggml_backend_buft_name(*p)).to_bytes() == b"CPU_REPACK" {
                return Some(*p);
            }
            p = p.add(1);
        }
        None
    }
}

/// Whether a matrix of this type and `[ne0, ne1]` gets a repacked form on this CPU (Q4_0 with AVX2, ne1 a
/// multiple of 8, rows of whole 256-element groups: ggml's rule for its x86 kernels).
pub fn repackable(ty: GgmlType, ne: &[i64]) -> bool {
    // SAFETY: a plain feature query.
    let avx2 = unsafe { sys::ggml_cpu_has_avx2() } != 0;
    avx2 && ty == GgmlType::Q4_0 && ne.len() == 2 && ne[0] % 256 == 0 && ne[1] % 8 == 0 && repack_buft().is_some()
}

impl Context {
    /// Places every data-less tensor of this `no_alloc` context in one new CPU_REPACK buffer; each must be
    /// [`repackable`]. Fill them with [`Tensor::set_repacked`]. Returns false (allocating nothing) when ggml has
    /// no repack buffer here.
    pub fn alloc_repack_buffer(&self) -> Result<bool, GgmlError> {
        assert!(
            self.no_alloc(),
            "ggml alloc_repack_buffer: the context must be no_alloc"
        );
        let Some(buft) = repack_buft() else { return Ok(false) };
        for t in self.raw_tensors() {
            let t = Tensor::from_raw(t, false);
            let ne = t.ne();
            // 3-d: stacked matrices (experts), repacked row group by row group like one of ne1 * ne2 rows.
            if !repackable(t.ty(), &ne[..2]) || ne[3] != 1 {
                return Err(GgmlError::Backend {
                    what: "alloc_repack_buffer: a tensor without a repacked form",
                });
            }
        }
        // SAFETY: valid no_alloc context whose tensors all have a repacked form (checked above).
        let buf = unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(self.as_ptr(), buft) };
        let buf = NonNull::new(buf).ok_or(GgmlError::Backend {
            what: "ggml_backend_alloc_ctx_tensors_from_buft (CPU_REPACK)",
        })?;
        self.buffers.borrow_mut().push(BufferOwner::Buffer(buf));
        Ok(true)
    }
}

impl Tensor<'_> {
    /// Fills a tensor of a CPU_REPACK buffer from the file layout's bytes (ggml interleaves them on the way in).
    pub fn set_repacked(self, bytes: &[u8]) -> Result<(), GgmlError> {
        if bytes.len() != self.nbytes() {
            return Err(GgmlError::DataLength {
                name: self.name(),
                expected: self.nbytes(),
                got: bytes.len(),
            });
        }
        let t = self.raw();
        // SAFETY: a live tensor; the checks below are those ggml's repack set_tensor asserts.
        let in_repack =
            !t.buffer.is_null() && Some(unsafe { sys::ggml_backend_buffer_get_type(t.buffer) }) == repack_buft();
        if !in_repack || t.extra.is_null() {
            return Err(GgmlError::Backend {
                what: "set_repacked: the tensor is not in a CPU_REPACK buffer",
            });
        }
        // SAFETY: offset 0 and size == nbytes (checked), tensor in a repack buffer with its traits set.
        unsafe {
            sys::ggml_backend_tensor_set(self.as_ptr(), bytes.as_ptr().cast(), 0, bytes.len());
        }
        Ok(())
    }
}
