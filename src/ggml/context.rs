//! `Context`: owner of one `ggml_context` (tensor metadata, and tensor data unless `no_alloc`).

use std::any::Any;
use std::cell::RefCell;
use std::ptr::NonNull;

use super::recycle::Pool;
use super::{sys, to_sys_type, GgmlError, Graph, Tensor};
use crate::gguf::GgmlType;

/// How to create a [`Context`].
#[derive(Clone, Copy, Debug)]
pub struct ContextParams {
    /// Bytes of the context's pool: per tensor `Context::tensor_overhead()`, plus its data unless `no_alloc`,
    /// plus `Context::graph_overhead(size)` per graph.
    pub mem_size: usize,
    /// Tensors get metadata only; their data comes from [`Context::alloc_cpu_buffer`], [`Context::allocate_graph`]
    /// or [`Context::new_tensor_from_bytes`].
    pub no_alloc: bool,
}

/// Owns a `ggml_context`. Tensors ([`Tensor<'ctx>`]) borrow it; ops are methods on it.
///
/// It also owns everything whose address ggml keeps in its tensors: CPU buffers allocated for its tensors,
/// graph allocators, and the closures of custom ops, so that all of them live exactly as long as the tensors.
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
    no_alloc: bool,
    /// Backend buffers holding this context's tensors (ggml_backend_buffer_t) and graph allocators
    /// (ggml_gallocr_t), freed after the context in `Drop`.
    pub(crate) buffers: RefCell<Vec<super::backend::BufferOwner>>,
    /// Custom-op closures; ggml holds raw pointers to them in op params.
    pub(crate) keep_alive: RefCell<Vec<Box<dyn Any>>>,
    /// The memory behind `ptr`'s pool (declared last: dropped after ggml_free in `Drop`).
    pool: Pool,
}

impl Context {
    /// `ggml_init` over a zeroed pool of `mem_size` bytes (allocated here, or a spare of a context dropped on
    /// this thread: `recycle`), so that an allocation failure is an error rather than ggml's abort, and
    /// never-written tensor data reads as zeros.
    pub fn new(params: ContextParams) -> Result<Self, GgmlError> {
        super::backend::install_log_filter();
        // SAFETY: ggml_cpu_init only fills ggml's global lookup tables (guarded by a critical section inside, so
        // calling it more than once or from several threads is fine); CPU ops need it before any compute.
        unsafe { sys::ggml_cpu_init() };
        let pool = Pool::new(params.mem_size).ok_or(GgmlError::Init {
            mem_size: params.mem_size,
        })?;
        let init = sys::ggml_init_params {
            mem_size: pool.size(),
            mem_buffer: pool.ptr().as_ptr().cast(),
            no_alloc: params.no_alloc,
        };
        // SAFETY: the pool is mem_size writable bytes, 64-byte aligned (ggml asserts 16), owned by the Context and
        // freed only after ggml_free; ggml_init returns null on failure.
        let ptr = unsafe { sys::ggml_init(init) };
        let ptr = NonNull::new(ptr).ok_or(GgmlError::Init {
            mem_size: params.mem_size,
        })?;
        Ok(Context {
            ptr,
            no_alloc: params.no_alloc,
            buffers: RefCell::new(Vec::new()),
            keep_alive: RefCell::new(Vec::new()),
            pool,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    /// True if tensors get no data from the pool.
    pub fn no_alloc(&self) -> bool {
        self.no_alloc
    }

    /// Pool bytes one tensor's metadata takes (ggml_tensor_overhead).
    pub fn tensor_overhead() -> usize {
        // SAFETY: pure function of compile-time sizes.
        unsafe { sys::ggml_tensor_overhead() }
    }

    /// Pool bytes a graph of `size` nodes takes (ggml_graph_overhead_custom, no gradients).
    pub fn graph_overhead(size: usize) -> usize {
        // SAFETY: pure function of its argument.
        unsafe { sys::ggml_graph_overhead_custom(size, false) }
    }

    /// Bytes of the pool in use.
    pub fn used_mem(&self) -> usize {
        // SAFETY: valid context.
        unsafe { sys::ggml_used_mem(self.as_ptr()) }
    }

    /// Bytes of the pool.
    pub fn mem_size(&self) -> usize {
        // SAFETY: valid context.
        unsafe { sys::ggml_get_mem_size(self.as_ptr()) }
    }

    /// Panics (instead of letting ggml abort on a null object) unless the pool has room for `bytes` more.
    pub(crate) fn reserve(&self, op: &str, bytes: usize) {
        let (used, size) = (self.used_mem(), self.mem_size());
        if used.saturating_add(bytes) > size {
            panic!("ggml {op}: context pool exhausted: needs {bytes} more bytes, {used} of {size} used");
        }
    }

    /// Reserves room for `n` tensors, the first of which gets `ty`/`ne` data if this context allocates.
    pub(crate) fn reserve_tensors(&self, op: &str, n: usize, data: Option<(GgmlType, [i64; 4])>) {
        if let Some((_, ne)) = data {
            check_dims(op, ne);
        }
        let data_bytes = match data {
            Some((ty, ne)) if !self.no_alloc => {
                let ne = ne.map(|d| u64::try_from(d).unwrap_or_else(|_| panic!("ggml {op}: negative dim in {ne:?}")));
                let bytes = ty
                    .tensor_bytes(&ne)
                    .unwrap_or_else(|| panic!("ggml {op}: {ty} {ne:?} is not whole blocks or overflows"));
                usize::try_from(bytes)
                    .expect("tensor size fits usize")
                    .next_multiple_of(sys::GGML_MEM_ALIGN as usize)
            }
            _ => 0,
        };
        self.reserve(op, n * Self::tensor_overhead() + data_bytes);
    }

    fn new_tensor_impl(&self, op: &str, ty: GgmlType, ne: &[i64]) -> Tensor<'_> {
        assert!(
            (1..=4).contains(&ne.len()),
            "ggml {op}: {} dims, ggml has 1 to 4",
            ne.len()
        );
        let mut ne4 = [1i64; 4];
        ne4[..ne.len()].copy_from_slice(ne);
        check_dims(op, ne4);
        assert!(
            ne4[0] as u64 % ty.block_size() == 0,
            "ggml {op}: ne[0] = {} is not a multiple of the {ty} block size {}",
            ne4[0],
            ty.block_size()
        );
        self.reserve_tensors(op, 1, Some((ty, ne4)));
        // SAFETY: valid context with room for the tensor (checked), 1-4 dims, non-negative dims in whole blocks
        // (ggml_new_tensor_impl's asserts); ggml copies `ne`.
        let t = unsafe { sys::ggml_new_tensor(self.as_ptr(), to_sys_type(ty), ne.len() as i32, ne4.as_ptr()) };
        Tensor::from_raw(t, false)
    }

    /// A new tensor with 1 to 4 dims (ggml order) of any type; `ne[0]` must be whole blocks of the type.
    pub fn new_tensor(&self, ty: GgmlType, ne: &[i64]) -> Tensor<'_> {
        self.new_tensor_impl("new_tensor", ty, ne)
    }

    /// `[ne0]`
    pub fn new_tensor_1d(&self, ty: GgmlType, ne0: i64) -> Tensor<'_> {
        self.new_tensor_impl("new_tensor_1d", ty, &[ne0])
    }

    /// `[ne0, ne1]`
    pub fn new_tensor_2d(&self, ty: GgmlType, ne0: i64, ne1: i64) -> Tensor<'_> {
        self.new_tensor_impl("new_tensor_2d", ty, &[ne0, ne1])
    }

    /// `[ne0, ne1, ne2]`
    pub fn new_tensor_3d(&self, ty: GgmlType, ne0: i64, ne1: i64, ne2: i64) -> Tensor<'_> {
        self.new_tensor_impl("new_tensor_3d", ty, &[ne0, ne1, ne2])
    }

    /// `[ne0, ne1, ne2, ne3]`
    pub fn new_tensor_4d(&self, ty: GgmlType, ne0: i64, ne1: i64, ne2: i64, ne3: i64) -> Tensor<'_> {
        self.new_tensor_impl("new_tensor_4d", ty, &[ne0, ne1, ne2, ne3])
    }

    /// A tensor whose data is `bytes` itself (e.g. a weight inside a memory-mapped GGUF), without a copy.
    ///
    /// The handle's lifetime is bounded by both the context borrow and `bytes`, so no graph can use the tensor
    /// after the mapping is gone. The tensor is read-only: host writes, `cpy` into it and `set_rows` into it are
    /// refused. In an allocating context the tensor takes no pool data either.
    pub fn new_tensor_from_bytes<'a>(
        &'a self,
        name: &str,
        ty: GgmlType,
        ne: &[i64],
        bytes: &'a [u8],
    ) -> Result<Tensor<'a>, GgmlError> {
        let mut ne4 = [1i64; 4];
        if !(1..=4).contains(&ne.len()) {
            return Err(GgmlError::BadDims {
                name: name.to_string(),
                ty,
                ne: ne4,
            });
        }
        ne4[..ne.len()].copy_from_slice(ne);
        let bad = || GgmlError::BadDims {
            name: name.to_string(),
            ty,
            ne: ne4,
        };
        let dims: Option<Vec<u64>> = ne4.iter().map(|&d| u64::try_from(d).ok()).collect();
        let expected = dims.and_then(|d| ty.tensor_bytes(&d)).ok_or_else(bad)?;
        if expected != bytes.len() as u64 {
            return Err(GgmlError::DataLength {
                name: name.to_string(),
                expected: expected as usize,
                got: bytes.len(),
            });
        }
        // The CPU kernels read elements through typed pointers.
        let align = ty.type_size().min(4) as usize;
        if (bytes.as_ptr() as usize) % align != 0 {
            return Err(GgmlError::Misaligned {
                name: name.to_string(),
                align,
            });
        }
        self.reserve("new_tensor_from_bytes", Self::tensor_overhead());
        // SAFETY: valid context with room for the metadata (checked); dims checked as in new_tensor_impl. no_alloc is
        // set around the call so the pool gives no data, then restored.
        let t = unsafe {
            let was = sys::ggml_get_no_alloc(self.as_ptr());
            sys::ggml_set_no_alloc(self.as_ptr(), true);
            let t = sys::ggml_new_tensor(self.as_ptr(), to_sys_type(ty), ne.len() as i32, ne4.as_ptr());
            sys::ggml_set_no_alloc(self.as_ptr(), was);
            t
        };
        let t = Tensor::from_raw(t, true);
        // SAFETY: `bytes` holds exactly nbytes() bytes and outlives every handle to this tensor ('a). ggml takes a
        // `void *` but only reads through it: the tensor is marked read-only, so no wrapper op writes to it.
        unsafe { (*t.as_ptr()).data = bytes.as_ptr() as *mut std::ffi::c_void };
        Ok(t.set_name(name))
    }

    /// A graph of up to `size` nodes (and `size` leafs), allocated in this context's pool.
    pub fn new_graph(&self, size: usize) -> Graph<'_> {
        assert!(
            size > 0 && size <= 1 << 24,
            "ggml new_graph: size {size} out of 1..=2^24"
        );
        self.reserve("new_graph", Self::graph_overhead(size));
        // SAFETY: valid context with room for the graph (checked); no gradients.
        let g = unsafe { sys::ggml_new_graph_custom(self.as_ptr(), size, false) };
        Graph::from_raw(g, size)
    }

    /// Iterates the context's tensors (raw), for allocation checks.
    pub(crate) fn raw_tensors(&self) -> Vec<*mut sys::ggml_tensor> {
        let mut out = Vec::new();
        // SAFETY: valid context; ggml walks its own object list and returns null at the end.
        let mut t = unsafe { sys::ggml_get_first_tensor(self.as_ptr()) };
        while !t.is_null() {
            out.push(t);
            // SAFETY: `t` came from this context's object list.
            t = unsafe { sys::ggml_get_next_tensor(self.as_ptr(), t) };
        }
        out
    }

    /// True if the tensor's metadata lives in this context's pool.
    pub(crate) fn owns(&self, t: *const sys::ggml_tensor) -> bool {
        // SAFETY: valid context; only addresses are compared.
        let base = unsafe { sys::ggml_get_mem_buffer(self.as_ptr()) } as usize;
        (base..base + self.mem_size()).contains(&(t as usize))
    }
}

/// Dims are non-negative and their product fits i64 (ggml_new_tensor_impl asserts both).
pub(crate) fn check_dims(op: &str, ne: [i64; 4]) {
    assert!(ne.iter().all(|&d| d >= 0), "ggml {op}: negative dim in {ne:?}");
    let n = ne.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d));
    assert!(n.is_some(), "ggml {op}: element count of {ne:?} overflows i64");
}

impl Drop for Context {
    fn drop(&mut self) {
        // The next context of this thread to take the pool clears what this one used.
        self.pool.set_dirty(self.used_mem());
        // SAFETY: the context came from ggml_init and is freed once; no Tensor<'_> outlives the borrow of self.
        // Buffers and closures (fields) are dropped after it, and ggml_free does not touch tensor data.
        unsafe { sys::ggml_free(self.as_ptr()) };
    }
}
