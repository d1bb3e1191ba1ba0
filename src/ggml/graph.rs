//! `Graph<'ctx>`: a `ggml_cgraph` (allocated in a context's pool) and its explicit computation.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::{custom, sys, Context, CpuBackend, GgmlError, Tensor};

/// A compute graph: lazy until [`Graph::compute`]. Its metadata lives in the context that created it, so it
/// needs no `Drop` of its own; it borrows that context (and every tensor it contains) for `'ctx`.
pub struct Graph<'ctx> {
    ptr: NonNull<sys::ggml_cgraph>,
    size: usize,
    n_nodes: usize,
    n_leafs: usize,
    /// Every tensor already in the graph (mirrors ggml's visited hash set), and the same as a list.
    visited: PtrSet,
    tensors: Vec<*mut sys::ggml_tensor>,
    _ctx: PhantomData<&'ctx Context>,
}

/// Tensor addresses as set keys, hashed by one multiply: the default SipHash made the sets most of the time a
/// decode step spends building its graph (about 0.25 of 0.5 ms for the 4B's thousand nodes).
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, p: usize) {
        // Tensors are at least 16-byte aligned: the low bits carry nothing; the high bits of the product do.
        self.0 = ((p as u64) >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type PtrSet = HashSet<usize, BuildHasherDefault<PtrHasher>>;

/// ggml wants its work buffer aligned; 64 bytes covers cache-line use.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

impl<'ctx> Graph<'ctx> {
    pub(crate) fn from_raw(ptr: *mut sys::ggml_cgraph, size: usize) -> Self {
        let ptr = NonNull::new(ptr).expect("ggml returned a null graph");
        Graph {
            ptr,
            size,
            n_nodes: 0,
            n_leafs: 0,
            // Sized for a full graph up front: growing them rehashed every tensor several times per build.
            visited: PtrSet::with_capacity_and_hasher(2 * size, Default::default()),
            tensors: Vec::with_capacity(2 * size),
            _ctx: PhantomData,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }

    /// Raw pointers of every tensor in the graph (nodes and leafs).
    pub(crate) fn raw_tensors(&self) -> &[*mut sys::ggml_tensor] {
        &self.tensors
    }

    /// Number of compute nodes so far.
    pub fn n_nodes(&self) -> usize {
        self.n_nodes
    }

    /// Number of leafs (inputs, weights) so far.
    pub fn n_leafs(&self) -> usize {
        self.n_leafs
    }

    /// Every tensor of the graph (nodes and leafs), for inspection and dumps by name (`"{name}-{il}"`). The
    /// handles are read-only: a node may be a view of borrowed read-only weights.
    pub fn tensors(&self) -> Vec<Tensor<'ctx>> {
        self.tensors.iter().map(|&p| Tensor::from_raw(p, true)).collect()
    }

    /// The graph tensor with this name, if any (read-only handle, as in [`Graph::tensors`]).
    pub fn get_tensor(&self, name: &str) -> Option<Tensor<'ctx>> {
        self.tensors().into_iter().find(|t| t.name() == name)
    }

    /// Adds `t` and everything it depends on (ggml_build_forward_expand). Panics, instead of ggml's abort, when
    /// the graph would exceed its size.
    pub fn build_forward_expand(&mut self, t: Tensor<'ctx>) {
        let (mut nodes, mut leafs) = (0usize, 0usize);
        let mut fresh = Vec::new();
        let mut stack = vec![t.as_ptr()];
        let mut seen = PtrSet::default();
        // Counts what ggml_visit_parents_graph will add: a leaf is op NONE (we never set PARAM), anything else a node.
        while let Some(p) = stack.pop() {
            if self.visited.contains(&(p as usize)) || !seen.insert(p as usize) {
                continue;
            }
            // SAFETY: `p` is `t` or a source of a tensor reachable from it; all live at least for 'ctx.
            let raw = unsafe { &*p };
            stack.extend(raw.src.iter().filter(|s| !s.is_null()).copied());
            if raw.op == sys::GGML_OP_NONE {
                leafs += 1;
            } else {
                nodes += 1;
            }
            fresh.push(p);
        }
        if self.n_nodes + nodes > self.size || self.n_leafs + leafs > self.size {
            panic!(
                "ggml build_forward_expand({t:?}): graph of size {} would hold {} nodes and {} leafs",
                self.size,
                self.n_nodes + nodes,
                self.n_leafs + leafs
            );
        }
        // SAFETY: valid graph and tensor; capacity checked above (ggml asserts n < size before each insert).
        unsafe { sys::ggml_build_forward_expand(self.as_ptr(), t.as_ptr()) };
        self.n_nodes += nodes;
        self.n_leafs += leafs;
        self.visited.extend(fresh.iter().map(|p| *p as usize));
        self.tensors.extend(fresh);
    }

    /// Every tensor must have data before compute: ggml would dereference null.
    fn check_allocated(&self) -> Result<(), GgmlError> {
        for &p in &self.tensors {
            let t = Tensor::from_raw(p, true);
            if t.raw().data.is_null() && t.nbytes() > 0 {
                return Err(GgmlError::Unallocated { name: t.name() });
            }
        }
        self.check_ids()
    }

    /// Row / expert ids set from the host must be in range: ggml asserts (get_rows, set_rows) or silently writes
    /// out of bounds (mul_mat_id). Ids computed inside the graph (argsort_top_k) are in range by construction when
    /// the shapes are, and are not checked here.
    fn check_ids(&self) -> Result<(), GgmlError> {
        for &p in &self.tensors {
            let node = Tensor::from_raw(p, true);
            let src = |i: usize| Tensor::from_raw(node.raw().src[i], true);
            let (ids, limit) = match node.op() {
                sys::GGML_OP_GET_ROWS => (src(1), src(0).ne()[1]),
                sys::GGML_OP_SET_ROWS => (src(1), node.ne()[1]),
                sys::GGML_OP_MUL_MAT_ID => (src(2), src(0).ne()[2]),
                _ => continue,
            };
            // Host-set ids are a leaf, or a view of one (llama.cpp's out_ids); computed ids are not checked.
            let mut root = ids;
            while matches!(
                root.op(),
                sys::GGML_OP_VIEW | sys::GGML_OP_RESHAPE | sys::GGML_OP_PERMUTE | sys::GGML_OP_TRANSPOSE
            ) {
                root = Tensor::from_raw(root.raw().src[0], true);
            }
            if root.op() != sys::GGML_OP_NONE || !ids.is_contiguous() {
                continue;
            }
            let bytes = ids.to_bytes()?;
            let values: Vec<i64> = match ids.ty() {
                crate::gguf::GgmlType::I64 => bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                _ => bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            };
            if let Some(&bad) = values.iter().find(|&&v| v < 0 || v >= limit) {
                return Err(GgmlError::IdOutOfRange {
                    name: ids.name(),
                    node: node.name(),
                    id: bad,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// Computes the graph on the CPU with `n_threads` threads (ggml_graph_plan + ggml_graph_compute, with the
    /// work buffer allocated here rather than in a context pool).
    pub fn compute(&self, n_threads: usize) -> Result<(), GgmlError> {
        let n = i32::try_from(n_threads).unwrap_or(i32::MAX);
        if n < 1 {
            return Err(GgmlError::Threads { n_threads: n });
        }
        self.check_allocated()?;
        custom::reset_states(self);
        // SAFETY: valid graph; a null threadpool makes ggml use a disposable one.
        let mut plan = unsafe { sys::ggml_graph_plan(self.as_ptr(), n, std::ptr::null_mut()) };
        let mut work = vec![Line([0; 64]); plan.work_size.div_ceil(64)];
        plan.work_data = work.as_mut_ptr().cast();
        // SAFETY: every tensor of the graph has data (checked) and custom-op closures are alive (owned by their
        // contexts, which outlive 'ctx); the work buffer has work_size bytes and outlives the call.
        let status = unsafe { sys::ggml_graph_compute(self.as_ptr(), &mut plan) };
        custom::take_panic(self)?;
        match status {
            sys::GGML_STATUS_SUCCESS => Ok(()),
            status => Err(GgmlError::Compute { status }),
        }
    }

    /// Computes the graph on a CPU backend, with the backend's thread count.
    pub fn compute_with_backend(&self, backend: &CpuBackend) -> Result<(), GgmlError> {
        self.check_allocated()?;
        custom::reset_states(self);
        backend.use_thread_pool();
        // SAFETY: as in `compute`; the backend is alive for the call.
        let status = unsafe { sys::ggml_backend_graph_compute(backend.as_ptr(), self.as_ptr()) };
        custom::take_panic(self)?;
        match status {
            sys::GGML_STATUS_SUCCESS => Ok(()),
            status => Err(GgmlError::Compute { status }),
        }
    }
}
