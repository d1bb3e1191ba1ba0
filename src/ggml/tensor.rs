//! `Tensor<'ctx>`: a Copy handle to a `ggml_tensor` whose metadata lives in a [`Context`] borrowed for `'ctx`.

use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::{from_sys_type, sys, Context, GgmlError};
use crate::gguf::GgmlType;

/// A handle to a ggml tensor. Valid for as long as the context (and any borrowed data) it came from: the
/// lifetime makes use-after-free a compile error. Handles are `!Send`: a context is single-threaded.
///
/// ```compile_fail,E0597
/// # use smallthinker::ggml::{Context, ContextParams};
/// # use smallthinker::gguf::GgmlType;
/// let t = {
///     let ctx = Context::new(ContextParams { mem_size: 1 << 12, no_alloc: false }).unwrap();
///     ctx.new_tensor_1d(GgmlType::F32, 4)
/// }; // error: `ctx` does not live long enough
/// t.ne();
/// ```
///
/// ```compile_fail,E0597
/// # use smallthinker::ggml::{Context, ContextParams};
/// # use smallthinker::gguf::GgmlType;
/// let ctx = Context::new(ContextParams { mem_size: 1 << 12, no_alloc: true }).unwrap();
/// let w = {
///     let mapping = vec![0u8; 16];
///     ctx.new_tensor_from_bytes("w", GgmlType::F32, &[4], &mapping).unwrap()
/// }; // error: `mapping` does not live long enough
/// w.ne();
/// ```
#[derive(Clone, Copy)]
pub struct Tensor<'ctx> {
    ptr: NonNull<sys::ggml_tensor>,
    /// The data is borrowed read-only memory (`Context::new_tensor_from_bytes`), or a view of such a tensor:
    /// host writes, `cpy` into it and `set_rows` into it are refused.
    readonly: bool,
    _ctx: PhantomData<&'ctx Context>,
}

impl<'ctx> Tensor<'ctx> {
    /// Wraps a tensor ggml just returned. Panics on null, which ggml returns only when it is out of memory,
    /// a case the callers check beforehand.
    pub(crate) fn from_raw(ptr: *mut sys::ggml_tensor, readonly: bool) -> Self {
        let ptr = NonNull::new(ptr).expect("ggml returned a null tensor");
        Tensor {
            ptr,
            readonly,
            _ctx: PhantomData,
        }
    }

    pub(crate) fn as_ptr(self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }

    pub(crate) fn raw(&self) -> &sys::ggml_tensor {
        // SAFETY: the pointer is valid for 'ctx (the context that owns it is borrowed for 'ctx), and a context is
        // single-threaded, so nothing mutates the metadata while this shared reference is used.
        unsafe { self.ptr.as_ref() }
    }

    /// Whether the data is borrowed host memory (a mapped file), not a buffer ggml owns.
    pub fn is_borrowed(self) -> bool {
        self.readonly
    }

    /// Whether the data lives in ggml's CPU_REPACK buffer, i.e. in the interleaved 8-row layout of
    /// [`super::q4x8`] rather than the file's.
    pub fn is_repacked(self) -> bool {
        let b = self.raw().buffer;
        if b.is_null() {
            return false;
        }
        // SAFETY: a tensor's buffer lives as long as the tensor (it holds the data); buffer types and their
        // names are statics of the backend.
        let name = unsafe { CStr::from_ptr(sys::ggml_backend_buft_name(sys::ggml_backend_buffer_get_type(b))) };
        name.to_bytes() == b"CPU_REPACK"
    }

    pub(crate) fn is_readonly(self) -> bool {
        self.readonly
    }

    /// Dims in ggml order (`ne[0]` innermost).
    pub fn ne(self) -> [i64; 4] {
        self.raw().ne
    }

    /// Strides in bytes, ggml order.
    pub fn nb(self) -> [usize; 4] {
        self.raw().nb
    }

    /// Element type.
    pub fn ty(self) -> GgmlType {
        from_sys_type(self.raw().type_)
    }

    /// ggml_nelements.
    pub fn nelements(self) -> i64 {
        self.ne().iter().product()
    }

    /// ggml_nrows: elements of dims 1..3.
    pub fn nrows(self) -> i64 {
        let ne = self.ne();
        ne[1] * ne[2] * ne[3]
    }

    /// ggml_nbytes.
    pub fn nbytes(self) -> usize {
        // SAFETY: valid tensor pointer (see `raw`); ggml_nbytes only reads the metadata.
        unsafe { sys::ggml_nbytes(self.as_ptr()) }
    }

    /// ggml_is_contiguous.
    pub fn is_contiguous(self) -> bool {
        // SAFETY: valid tensor pointer; read-only metadata query.
        unsafe { sys::ggml_is_contiguous(self.as_ptr()) }
    }

    /// Rows contiguous, with no gaps between rows (ggml_is_contiguous_1).
    pub fn is_contiguous_1(self) -> bool {
        // SAFETY: valid tensor pointer; read-only metadata query.
        unsafe { sys::ggml_is_contiguous_1(self.as_ptr()) }
    }

    /// Each row contiguous (ggml_is_contiguous_rows): `nb[0]` is the element size.
    pub fn is_contiguous_rows(self) -> bool {
        self.nb()[0] == self.ty().type_size() as usize
    }

    /// ggml_is_transposed: `nb[0] > nb[1]`.
    pub fn is_transposed(self) -> bool {
        let nb = self.nb();
        nb[0] > nb[1]
    }

    /// The op that produces this tensor (`sys::GGML_OP_*`); `GGML_OP_NONE` for a leaf.
    pub fn op(self) -> sys::ggml_op {
        self.raw().op
    }

    /// The tensor's name ("" if unnamed). ggml names are at most 63 bytes.
    pub fn name(self) -> String {
        // SAFETY: ggml keeps `name` NUL-terminated (it always writes with strncpy + a final NUL).
        let name = unsafe { CStr::from_ptr(self.raw().name.as_ptr()) };
        name.to_string_lossy().into_owned()
    }

    /// Sets the name, truncated to 63 bytes as ggml does. Returns `self` for chaining.
    pub fn set_name(self, name: &str) -> Self {
        self.set_name_fmt(format_args!("{name}"))
    }

    /// Names an intermediate `"{name}-{il}"` like llama.cpp's callback (`il < 0` gives just `name`).
    pub fn format_name(self, name: &str, il: i32) -> Self {
        if il < 0 {
            self.set_name(name)
        } else {
            self.set_name_fmt(format_args!("{name}-{il}"))
        }
    }

    /// Sets the name from `args` without allocating (a decode step names a thousand tensors): its bytes, NULs
    /// left out, cut at ggml's 63, as ggml_set_name cuts them.
    fn set_name_fmt(self, args: std::fmt::Arguments<'_>) -> Self {
        struct Name {
            buf: [u8; sys::GGML_MAX_NAME as usize],
            len: usize,
        }
        impl std::fmt::Write for Name {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                for &b in s.as_bytes().iter().filter(|&&b| b != 0) {
                    if self.len + 1 < self.buf.len() {
                        self.buf[self.len] = b;
                        self.len += 1;
                    }
                }
                Ok(())
            }
        }
        let mut name = Name {
            buf: [0; sys::GGML_MAX_NAME as usize],
            len: 0,
        };
        // Writing into `Name` cannot fail (it only truncates).
        let _ = std::fmt::Write::write_fmt(&mut name, args);
        // SAFETY: valid tensor; `buf` is NUL-terminated (at most GGML_MAX_NAME - 1 bytes written into zeros), and
        // ggml_set_name copies at most GGML_MAX_NAME - 1 bytes and NUL-terminates.
        unsafe { sys::ggml_set_name(self.as_ptr(), name.buf.as_ptr().cast()) };
        self
    }

    /// Marks the tensor as a graph input (ggml_set_input): a graph allocator gives it its own memory first.
    pub fn set_input(self) -> Self {
        // SAFETY: valid tensor; only sets a flag bit.
        unsafe { sys::ggml_set_input(self.as_ptr()) };
        self
    }

    /// Marks the tensor as a graph output (ggml_set_output): a graph allocator never reuses its memory.
    pub fn set_output(self) -> Self {
        // SAFETY: valid tensor; only sets a flag bit.
        unsafe { sys::ggml_set_output(self.as_ptr()) };
        self
    }

    fn data_ptr(self) -> Result<*mut u8, GgmlError> {
        let data = self.raw().data as *mut u8;
        if data.is_null() {
            return Err(GgmlError::NoData { name: self.name() });
        }
        Ok(data)
    }

    /// Checks that the tensor can be read or written on the host as one contiguous run of `nbytes` bytes.
    fn host_bytes(self, len: usize, write: bool) -> Result<*mut u8, GgmlError> {
        if write && self.readonly {
            return Err(GgmlError::ReadOnly { name: self.name() });
        }
        if !self.is_contiguous() {
            return Err(GgmlError::NotContiguous { name: self.name() });
        }
        let data = self.data_ptr()?;
        if len != self.nbytes() {
            return Err(GgmlError::DataLength {
                name: self.name(),
                expected: self.nbytes(),
                got: len,
            });
        }
        Ok(data)
    }

    fn expect_type(self, want: GgmlType) -> Result<(), GgmlError> {
        if self.ty() != want {
            return Err(GgmlError::WrongType {
                name: self.name(),
                expected: want,
                got: self.ty(),
            });
        }
        Ok(())
    }

    /// Copies raw bytes (ggml's layout for the type) into the tensor; `bytes.len()` must be `nbytes()`.
    pub fn set_bytes(self, bytes: &[u8]) -> Result<(), GgmlError> {
        let data = self.host_bytes(bytes.len(), true)?;
        // SAFETY: `data` is host memory of exactly nbytes() == bytes.len() bytes owned by ggml (a context pool or
        // a CPU backend buffer), writable (not borrowed read-only), and not aliased by any Rust reference: reads
        // only ever copy out.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
        Ok(())
    }

    /// A copy of the tensor's bytes. (A copy rather than a borrowed slice: compute and other handles may write
    /// the same memory while a slice would still be alive.)
    pub fn to_bytes(self) -> Result<Vec<u8>, GgmlError> {
        let n = self.nbytes();
        let data = self.host_bytes(n, false)?;
        let mut out = vec![0u8; n];
        // SAFETY: `data` points to nbytes() readable host bytes (checked above); `out` has the same length.
        unsafe { std::ptr::copy_nonoverlapping(data, out.as_mut_ptr(), n) };
        Ok(out)
    }

    /// Writes F32 values (the tensor must be F32 and contiguous, `values.len() == nelements()`).
    pub fn set_f32(self, values: &[f32]) -> Result<(), GgmlError> {
        self.expect_type(GgmlType::F32)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.set_bytes(&bytes)
    }

    /// Writes I32 values (ids for get_rows, positions for rope, ...).
    pub fn set_i32(self, values: &[i32]) -> Result<(), GgmlError> {
        self.expect_type(GgmlType::I32)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.set_bytes(&bytes)
    }

    /// Writes I64 values (row ids for set_rows).
    pub fn set_i64(self, values: &[i64]) -> Result<(), GgmlError> {
        self.expect_type(GgmlType::I64)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.set_bytes(&bytes)
    }

    /// Writes F32 values rounded to F16 (for masks and F16 caches).
    pub fn set_f32_as_f16(self, values: &[f32]) -> Result<(), GgmlError> {
        self.expect_type(GgmlType::F16)?;
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        self.set_bytes(&bytes)
    }

    /// Reads the values as f32: F32 as is, F16/BF16 widened. Other types are a `WrongType` error.
    pub fn to_f32_vec(self) -> Result<Vec<f32>, GgmlError> {
        if self.ty() == GgmlType::F32 {
            // One copy straight into the result (a decode step reads 150k logits this way).
            let n = self.nbytes();
            let data = self.host_bytes(n, false)?;
            let mut out = vec![0f32; n / 4];
            // SAFETY: `data` points to nbytes() readable host bytes (checked above) of host-order floats; `out`
            // has room for n / 4 floats, and any 4 bytes are a valid f32.
            unsafe { std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().cast::<u8>(), n / 4 * 4) };
            return Ok(out);
        }
        let bytes = match self.ty() {
            GgmlType::F16 | GgmlType::BF16 => self.to_bytes()?,
            got => {
                return Err(GgmlError::WrongType {
                    name: self.name(),
                    expected: GgmlType::F32,
                    got,
                })
            }
        };
        Ok(match self.ty() {
            GgmlType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    /// Reads I32 values (argsort / top_k results).
    pub fn to_i32_vec(self) -> Result<Vec<i32>, GgmlError> {
        self.expect_type(GgmlType::I32)?;
        Ok(self
            .to_bytes()?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

impl fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        let name = if name.is_empty() { "<unnamed>" } else { &name };
        write!(f, "`{name}` {} {:?}", self.ty(), self.ne())
    }
}
