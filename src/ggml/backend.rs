//! The CPU backend, backend buffers and graph allocators (for `no_alloc` contexts), and ggml's CPU type traits.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use super::recycle::Gallocr;
use super::{from_sys_type, sys, to_sys_type, Context, GgmlError, Graph};
use crate::gguf::GgmlType;

/// Owns a CPU `ggml_backend_t`; computes graphs with [`Graph::compute_with_backend`].
pub struct CpuBackend {
    ptr: NonNull<sys::ggml_backend>,
    n_threads: Cell<usize>,
}

/// Owns a `ggml_threadpool`: worker threads that live from one graph to the next. Without one, ggml creates and
/// joins its threads for every graph, which is a thread start per decoded token, and on a busy or virtual machine
/// a new thread can wait milliseconds for a core.
struct Threadpool {
    ptr: NonNull<sys::ggml_threadpool>,
    n_threads: usize,
}

impl Drop for Threadpool {
    fn drop(&mut self) {
        // SAFETY: created by ggml_threadpool_new and freed once; no graph computes on it (it is this thread's and
        // the thread is leaving). A backend that still names it never computes again on this thread.
        unsafe { sys::ggml_threadpool_free(self.ptr.as_ptr()) };
    }
}

/// How long an idle worker spins before it sleeps, in ggml's units of 128 Ki `pause`s. ggml's default, 50, keeps
/// a core busy for a tenth of a second or more after every graph, which the process's other work (the expert
/// reads, the server) or a parallel test would lose. 2 is a few milliseconds, about what libgomp spins by default
/// (llama.cpp's threads are OpenMP's): it bridges the gap between decode steps (sampling, the next graph's build),
/// and a longer idle time pays one wake-up.
const POLL: u32 = 2;

thread_local! {
    /// This thread's pools, one per thread count asked for. Backends are not `Send`, so a backend always computes
    /// on the thread that made it, and all the backends of a thread (the server's slots) share one pool: an idle
    /// pool's spinning worker never competes with another backend's graph.
    static POOLS: RefCell<Vec<Threadpool>> = const { RefCell::new(Vec::new()) };
}

/// This thread's pool of `n_threads` (at least 2), made on first use; None if ggml cannot make one.
fn thread_pool(n_threads: usize) -> Option<NonNull<sys::ggml_threadpool>> {
    POOLS.with_borrow_mut(|pools| {
        if let Some(p) = pools.iter().find(|p| p.n_threads == n_threads) {
            return Some(p.ptr);
        }
        let n = i32::try_from(n_threads).ok()?;
        // SAFETY: plain constructors; ggml_threadpool_new returns null on failure.
        let ptr = unsafe {
            let mut params = sys::ggml_threadpool_params_default(n);
            params.poll = POLL;
            NonNull::new(sys::ggml_threadpool_new(&mut params))?
        };
        pools.push(Threadpool { ptr, n_threads });
        Some(ptr)
    })
}

/// ggml's messages below WARN (e.g. a line per repacked tensor) are dropped; warnings and errors go to stderr.
unsafe extern "C" fn log_filter(
    level: sys::ggml_log_level,
    text: *const std::os::raw::c_char,
    _: *mut std::ffi::c_void,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static KEPT: AtomicBool = AtomicBool::new(false);
    let keep = match level {
        sys::GGML_LOG_LEVEL_WARN | sys::GGML_LOG_LEVEL_ERROR => true,
        sys::GGML_LOG_LEVEL_CONT => KEPT.load(Ordering::Relaxed),
        _ => false,
    };
    if level != sys::GGML_LOG_LEVEL_CONT {
        KEPT.store(keep, Ordering::Relaxed);
    }
    if keep && !text.is_null() {
        // SAFETY: ggml passes a NUL-terminated message.
        let msg = unsafe { std::ffi::CStr::from_ptr(text) };
        eprint!("{}", msg.to_string_lossy());
    }
}

/// Installs [`log_filter`] once; every entry into ggml (a context, a backend) calls it first.
pub(crate) fn install_log_filter() {
    static LOG: std::sync::Once = std::sync::Once::new();
    // SAFETY: the callback is a plain function valid for the program's life; no user data.
    LOG.call_once(|| unsafe { sys::ggml_log_set(Some(log_filter), std::ptr::null_mut()) });
}

impl CpuBackend {
    /// ggml_backend_cpu_init.
    pub fn new() -> Result<Self, GgmlError> {
        install_log_filter();
        // SAFETY: no preconditions; returns null on failure.
        let ptr = unsafe { sys::ggml_backend_cpu_init() };
        Ok(CpuBackend {
            ptr: NonNull::new(ptr).ok_or(GgmlError::Backend {
                what: "ggml_backend_cpu_init",
            })?,
            n_threads: Cell::new(1),
        })
    }

    pub(crate) fn as_ptr(&self) -> sys::ggml_backend_t {
        self.ptr.as_ptr()
    }

    /// Threads used by `compute_with_backend` (at least 1).
    pub fn set_n_threads(&self, n_threads: usize) {
        let n = i32::try_from(n_threads.max(1)).unwrap_or(i32::MAX);
        self.n_threads.set(n as usize);
        // SAFETY: valid CPU backend.
        unsafe { sys::ggml_backend_cpu_set_n_threads(self.as_ptr(), n) };
    }

    /// Before each graph: the calling thread's pool for this backend's thread count (none for one thread, or if
    /// ggml could not make one: then ggml makes threads for the graph, as it would without pools).
    pub(crate) fn use_thread_pool(&self) {
        let pool = match self.n_threads.get() {
            n if n > 1 => thread_pool(n),
            _ => None,
        };
        // SAFETY: valid CPU backend; the pool is alive until this thread ends, and the backend (not Send) is
        // used only on this thread. ggml pauses the backend's previous pool, also this thread's, if it differs.
        unsafe {
            sys::ggml_backend_cpu_set_threadpool(self.as_ptr(), pool.map_or(std::ptr::null_mut(), NonNull::as_ptr))
        };
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: created by ggml_backend_cpu_init, freed once. Buffers do not refer to the backend.
        unsafe { sys::ggml_backend_free(self.as_ptr()) };
    }
}

/// A backend buffer or graph allocator whose memory holds some context's tensor data; owned by that context.
pub(crate) enum BufferOwner {
    Buffer(NonNull<sys::ggml_backend_buffer>),
    /// Dropped with the context: it becomes a spare of the thread (`recycle`).
    Gallocr {
        _owned: Gallocr,
    },
}

impl Drop for BufferOwner {
    fn drop(&mut self) {
        // SAFETY: each pointer came from its ggml constructor and is freed exactly once, when its context drops
        // (no Tensor handle of that context is alive then).
        unsafe {
            match self {
                BufferOwner::Buffer(b) => sys::ggml_backend_buffer_free(b.as_ptr()),
                BufferOwner::Gallocr { .. } => {}
            }
        }
    }
}

impl Context {
    /// Gives every tensor of this `no_alloc` context that has no data yet a place in one new CPU buffer
    /// (ggml_backend_alloc_ctx_tensors_from_buft). The buffer lives as long as the context.
    pub fn alloc_cpu_buffer(&self) -> Result<(), GgmlError> {
        assert!(self.no_alloc(), "ggml alloc_cpu_buffer: the context must be no_alloc");
        // ggml returns null both on failure and when there is nothing to allocate: tell them apart first.
        let pending = self.raw_tensors().into_iter().any(|t| {
            // SAFETY: tensors of this live context.
            unsafe { (*t).data.is_null() && (*t).view_src.is_null() && sys::ggml_nbytes(t) > 0 }
        });
        if !pending {
            return Ok(());
        }
        // SAFETY: valid no_alloc context; the CPU buffer type is a static.
        let buf = unsafe {
            sys::ggml_backend_alloc_ctx_tensors_from_buft(self.as_ptr(), sys::ggml_backend_cpu_buffer_type())
        };
        let buf = NonNull::new(buf).ok_or(GgmlError::Backend {
            what: "ggml_backend_alloc_ctx_tensors_from_buft",
        })?;
        // SAFETY: a live buffer; zeroing makes never-written tensor data defined (it reads as zeros).
        unsafe { sys::ggml_backend_buffer_clear(buf.as_ptr(), 0) };
        self.buffers.borrow_mut().push(BufferOwner::Buffer(buf));
        Ok(())
    }

    /// Allocates the graph's data-less tensors (intermediates and inputs) with a new graph allocator
    /// (ggml_gallocr_alloc_graph) whose buffer lives as long as this context. Every such tensor must belong to this
    /// context, so that no tensor of a longer-lived context can point into a buffer freed before it.
    /// Intermediates may share memory: read only outputs (`Tensor::set_output`) after compute.
    pub fn allocate_graph(&self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        for &t in graph.raw_tensors() {
            // SAFETY: tensors of a live graph.
            let unallocated = unsafe { (*t).data.is_null() };
            if unallocated && !self.owns(t) {
                let t = super::Tensor::from_raw(t, true);
                panic!("ggml allocate_graph: tensor {t:?} has no data and belongs to another context");
            }
        }
        let galloc = Gallocr::new().ok_or(GgmlError::Backend {
            what: "ggml_gallocr_new",
        })?;
        // SAFETY: valid allocator and graph; it only assigns data to tensors without data (all ours, checked).
        let ok = unsafe { sys::ggml_gallocr_alloc_graph(galloc.as_ptr(), graph.as_ptr()) };
        if !ok {
            return Err(GgmlError::Backend {
                what: "ggml_gallocr_alloc_graph",
            });
        }
        self.buffers.borrow_mut().push(BufferOwner::Gallocr { _owned: galloc });
        Ok(())
    }
}

pub(crate) fn cpu_traits(ty: GgmlType) -> &'static sys::ggml_type_traits_cpu {
    // SAFETY: ggml returns a pointer into its static per-type table for any valid type id.
    unsafe { &*sys::ggml_get_type_traits_cpu(to_sys_type(ty)) }
}

/// The type ggml converts the other operand to for `vec_dot` with `ty` (F32 for F32, Q8_0 for Q4_0, ...).
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    from_sys_type(cpu_traits(ty).vec_dot_type)
}

fn check_row(what: &str, ty: GgmlType, n: usize, bytes: &[u8]) {
    let want = ty
        .row_bytes(n as u64)
        .unwrap_or_else(|| panic!("ggml {what}: n = {n} is not whole {ty} blocks"));
    assert_eq!(
        bytes.len() as u64,
        want,
        "ggml {what}: {ty} row of {n} needs {want} bytes, got {}",
        bytes.len()
    );
    let align = if ty.type_size() >= 4 && !ty.is_quantized() {
        4
    } else {
        2
    };
    assert!(
        (bytes.as_ptr() as usize) % align == 0,
        "ggml {what}: {ty} data not {align}-byte aligned"
    );
}

/// ggml's CPU dot product of `n` elements: `x` a row of `ty`, `y` a row of `vec_dot_type(ty)`.
pub fn vec_dot(ty: GgmlType, n: usize, x: &[u8], y: &[u8]) -> f32 {
    let tr = cpu_traits(ty);
    let f = tr
        .vec_dot
        .unwrap_or_else(|| panic!("ggml vec_dot: type {ty} has no CPU vec_dot"));
    check_row("vec_dot x", ty, n, x);
    check_row("vec_dot y", vec_dot_type(ty), n, y);
    let n = i32::try_from(n).expect("vec_dot n fits i32");
    let mut s = 0f32;
    // SAFETY: x and y hold exactly one row of n elements of their types (checked), suitably aligned; nrc = 1
    // computes one value into `s` (the strides are then unused).
    unsafe { f(n, &mut s, 0, x.as_ptr().cast(), 0, y.as_ptr().cast(), 0, 1) };
    s
}

/// ggml's CPU conversion of a row of f32 into `ty` (e.g. Q8_0 activations for a Q4_0 dot).
pub fn from_float(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let f = cpu_traits(ty)
        .from_float
        .unwrap_or_else(|| panic!("ggml from_float: type {ty} has no CPU from_float"));
    let n = x.len() as u64;
    let len = ty
        .row_bytes(n)
        .unwrap_or_else(|| panic!("ggml from_float: {n} is not whole {ty} blocks"));
    let mut out = vec![0u8; len as usize];
    // SAFETY: x has n floats; out has exactly the bytes of one row of n elements of `ty`.
    unsafe { f(x.as_ptr(), out.as_mut_ptr().cast(), n as i64) };
    out
}

/// True if the CPU can convert rows of f32 into `ty` (set_rows, cpy into `ty`).
pub(crate) fn has_from_float(ty: GgmlType) -> bool {
    ty == GgmlType::F32 || cpu_traits(ty).from_float.is_some()
}

/// True if ggml can dequantize `ty` to f32 (get_rows).
pub(crate) fn has_to_float(ty: GgmlType) -> bool {
    // SAFETY: ggml returns a pointer into its static per-type table for any valid type id.
    matches!(ty, GgmlType::F32 | GgmlType::I32)
        || unsafe { (*sys::ggml_get_type_traits(to_sys_type(ty))).to_float.is_some() }
}

/// True if the CPU has a dot product for rows of `ty` (mul_mat's first operand).
pub(crate) fn has_vec_dot(ty: GgmlType) -> bool {
    cpu_traits(ty).vec_dot.is_some()
}
