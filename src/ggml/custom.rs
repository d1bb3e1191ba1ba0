//! Custom ops over Rust closures: `ggml_custom_4d` with one `extern "C"` trampoline.
//!
//! ggml calls the trampoline once per thread with `(ith, nth)`; the closure sees a [`CustomOpCtx`] with typed,
//! read-only access to its sources and mutable access to *its own* share of the destination rows (rows split as
//! in ggml's test-customop.c: chunk = ceil(nrows / nth), start = chunk * ith), or of column chunks or claimed row
//! ranges. All threads of a compute must take their shares the same way, or two could write the same values:
//! the first to take its share publishes the split, and a thread that takes it otherwise panics before writing.
//! A panic is caught on the worker thread, recorded, and turned into [`GgmlError::CustomOpPanicked`] by
//! `Graph::compute`.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{sys, Context, GgmlError, Graph, Tensor};
use crate::gguf::GgmlType;

type CustomFn = dyn Fn(&CustomOpCtx) + Send + Sync;

/// What ggml's `userdata` points at. Boxed and owned by the context, so its address is stable and it lives as
/// long as the op's tensor.
struct CustomState {
    name: String,
    f: Box<CustomFn>,
    panic: Mutex<Option<String>>,
    /// Built with n_tasks = 1: ggml then calls thread 0 only but still passes the graph's thread count as nth.
    single: bool,
    /// What its threads share in the current compute (reset before each): the split, and claimed work.
    claims: Claims,
}

/// What the threads of one compute of an op share about its destination: how they split it ([`Split`], as
/// the first thread to take its share published it; 0 until then), and for claimed work the ranges, as the
/// first thread to ask published them, and how many items have been handed out.
#[derive(Default)]
struct Claims {
    split: AtomicU64,
    plan: Mutex<Option<Arc<[Range<usize>]>>>,
    next: AtomicUsize,
}

/// How a thread takes its share of the destination. Every thread of a compute must take it the same way, or
/// two threads' shares could overlap: the first one publishes its split and another one panics (the op fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Rows,
    Grouped(usize),
    All,
    Chunks(usize),
    Ranges,
}

impl Split {
    /// A non-zero code per split and parameter.
    fn code(self) -> u64 {
        let (kind, n) = match self {
            Split::Rows => (1, 0),
            Split::Grouped(g) => (2, g),
            Split::All => (3, 0),
            Split::Chunks(c) => (4, c),
            Split::Ranges => (5, 0),
        };
        // Parameters this large all exceed any destination (a chunk wider than a row, a group of more rows than
        // memory holds), so they split alike and may share a code.
        kind << 56 | (n as u64).min((1 << 56) - 1)
    }
}

/// Mirror of `struct ggml_custom_op_params` (vendor/ggml/src/ggml-impl.h), which ggml_custom_4d stores in the
/// result's op_params; read back to find the closure state of a node after compute.
#[repr(C)]
struct CustomOpParams {
    fun: sys::ggml_custom_op_t,
    n_tasks: c_int,
    userdata: *mut c_void,
}
const _: () = assert!(std::mem::size_of::<CustomOpParams>() <= 16 * 4, "fits ggml's op_params");

/// One thread's view of a custom op invocation.
pub struct CustomOpCtx {
    ith: usize,
    nth: usize,
    dst: *mut sys::ggml_tensor,
    dst_taken: Cell<bool>,
    /// The op's claims (in its `CustomState`, which outlives this invocation).
    claims: *const Claims,
}

/// This thread's destination rows: yields `(row index, row)` for the rows in [`CustomOpCtx::rows`].
pub struct DstRows<'a> {
    data: *mut f32,
    ne0: usize,
    rows: Range<usize>,
    _op: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Iterator for DstRows<'a> {
    type Item = (usize, &'a mut [f32]);

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.rows.next()?;
        // SAFETY: dst is a contiguous F32 tensor of nrows * ne0 values; `rows` is this thread's disjoint share and
        // each row is yielded once, so no two live `&mut` overlap, across threads or within this iterator.
        Some((r, unsafe {
            std::slice::from_raw_parts_mut(self.data.add(r * self.ne0), self.ne0)
        }))
    }
}

impl<'a> DstRows<'a> {
    /// The rows not yet yielded as one slice `[rows][ne0]` (they are consecutive in the destination), with
    /// their indices.
    pub fn into_block(self) -> (Range<usize>, &'a mut [f32]) {
        // SAFETY: as for `next`: the rows are this thread's disjoint share of the contiguous destination, and
        // `self` is consumed, so none of them is yielded again.
        let block = unsafe {
            std::slice::from_raw_parts_mut(self.data.add(self.rows.start * self.ne0), self.rows.len() * self.ne0)
        };
        (self.rows, block)
    }
}

/// This thread's share of a destination cut into column chunks: yields `(row, columns, values)` for the
/// (row, chunk) items in [`CustomOpCtx::chunk_items`], in row-major order.
pub struct DstChunks<'a> {
    data: *mut f32,
    ne0: usize,
    chunk: usize,
    items: Range<usize>,
    _op: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Iterator for DstChunks<'a> {
    type Item = (usize, Range<usize>, &'a mut [f32]);

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.items.next()?;
        let per_row = self.ne0.div_ceil(self.chunk);
        let (row, c) = (i / per_row, i % per_row);
        let cols = c * self.chunk..((c + 1) * self.chunk).min(self.ne0);
        // SAFETY: dst is a contiguous F32 tensor of nrows * ne0 values; each item is a distinct (row, column
        // range) inside it, as every thread cuts the rows with the same `chunk` (the split they agreed on), and
        // `items` is this thread's disjoint share, each item yielded once.
        let values = unsafe { std::slice::from_raw_parts_mut(self.data.add(row * self.ne0 + cols.start), cols.len()) };
        Some((row, cols, values))
    }
}

/// Destination row ranges claimed one at a time while the op runs ([`CustomOpCtx::claim_row_ranges`]): yields
/// `(rows, values [rows][ne0])`.
pub struct ClaimedRanges<'a> {
    data: *mut f32,
    ne0: usize,
    plan: Arc<[Range<usize>]>,
    next: &'a AtomicUsize,
    _op: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Iterator for ClaimedRanges<'a> {
    type Item = (Range<usize>, &'a mut [f32]);

    fn next(&mut self) -> Option<Self::Item> {
        // Relaxed is enough: read-modify-writes of one atomic are totally ordered, so each index is handed out
        // once; what the ranges' rows receive is published by ggml's barrier after the op.
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let rows = self.plan.get(i)?.clone();
        // SAFETY: every thread of this compute claims from the same published plan, whose ranges lie inside the
        // contiguous F32 destination and are pairwise disjoint (checked when published); the counter hands each
        // index out once per compute (it is zeroed before each), so no two live `&mut` overlap.
        let values =
            unsafe { std::slice::from_raw_parts_mut(self.data.add(rows.start * self.ne0), rows.len() * self.ne0) };
        Some((rows, values))
    }
}

impl CustomOpCtx {
    /// This thread's index, `0..nth`.
    pub fn ith(&self) -> usize {
        self.ith
    }

    /// Number of threads running the op.
    pub fn nth(&self) -> usize {
        self.nth
    }

    fn dst(&self) -> Tensor<'_> {
        Tensor::from_raw(self.dst, false)
    }

    fn src_tensor(&self, i: usize) -> Tensor<'_> {
        // SAFETY: `dst` is the live custom node; its sources are live tensors set at graph-build time.
        let s = unsafe { (*self.dst).src[i] };
        assert!(
            i < sys::GGML_MAX_SRC as usize && !s.is_null(),
            "custom op has no source {i}"
        );
        Tensor::from_raw(s, true)
    }

    /// Number of sources.
    pub fn n_srcs(&self) -> usize {
        (0..sys::GGML_MAX_SRC as usize)
            .take_while(|&i| !self.dst().raw().src[i].is_null())
            .count()
    }

    /// Dims of the destination (ggml order).
    pub fn dst_ne(&self) -> [i64; 4] {
        self.dst().ne()
    }

    /// Dims of source `i`.
    pub fn src_ne(&self, i: usize) -> [i64; 4] {
        self.src_tensor(i).ne()
    }

    /// Element type of source `i`.
    pub fn src_ty(&self, i: usize) -> GgmlType {
        self.src_tensor(i).ty()
    }

    /// The raw bytes of source `i` (any type, contiguous: checked when the op was built), e.g. quantized weight
    /// rows for [`super::vec_dot`].
    pub fn src_bytes(&self, i: usize) -> &[u8] {
        let t = self.src_tensor(i);
        // SAFETY: a contiguous tensor with data (checked at build and compute time) of nbytes bytes; no thread
        // writes a source during this node (gallocr never runs GGML_OP_CUSTOM in place, and dst is a new tensor).
        unsafe { std::slice::from_raw_parts(t.raw().data as *const u8, t.nbytes()) }
    }

    /// Bytes of row `r` (flattened over dims 1..3) of source `i`.
    pub fn src_row_bytes(&self, i: usize, r: usize) -> &[u8] {
        let t = self.src_tensor(i);
        let row = t.ty().row_bytes(t.ne()[0] as u64).expect("whole blocks") as usize;
        &self.src_bytes(i)[r * row..(r + 1) * row]
    }

    fn typed<T>(&self, i: usize, ty: GgmlType) -> &[T] {
        let t = self.src_tensor(i);
        assert!(t.ty() == ty, "custom op source {i} {t:?} is not {ty}");
        let data = t.raw().data as *const T;
        assert!(
            data.is_aligned(),
            "custom op source {i} {t:?} data is not aligned for {ty}"
        );
        // SAFETY: as in src_bytes, and the type and alignment match T (checked).
        unsafe { std::slice::from_raw_parts(data, t.nelements() as usize) }
    }

    /// All values of F32 source `i` (panics, i.e. the op fails, if it is not F32).
    pub fn src(&self, i: usize) -> &[f32] {
        self.typed(i, GgmlType::F32)
    }

    /// All values of F16 source `i`, as `ggml_fp16_t` bits (e.g. an f16 KV cache; see [`super::simd::f16_to_f32`]).
    pub fn src_f16(&self, i: usize) -> &[u16] {
        self.typed(i, GgmlType::F16)
    }

    /// All values of I32 source `i` (ids, positions).
    pub fn src_i32(&self, i: usize) -> &[i32] {
        self.typed(i, GgmlType::I32)
    }

    /// Row `r` (flattened over dims 1..3) of F32 source `i`.
    pub fn src_row(&self, i: usize, r: usize) -> &[f32] {
        let ne0 = self.src_ne(i)[0] as usize;
        &self.src(i)[r * ne0..(r + 1) * ne0]
    }

    /// The destination rows this thread computes: ggml's split `chunk = ceil(nrows / nth)`.
    pub fn rows(&self) -> Range<usize> {
        let nrows = self.dst().nrows() as usize;
        let chunk = nrows.div_ceil(self.nth);
        let start = (chunk * self.ith).min(nrows);
        start..(start + chunk).min(nrows)
    }

    /// This thread's rows when they are split in whole groups of `group` consecutive rows (e.g. one plane of a
    /// 3-d destination per group): `chunk = ceil(n_groups / nth)` groups from `chunk * ith`.
    pub fn rows_grouped(&self, group: usize) -> Range<usize> {
        let nrows = self.dst().nrows() as usize;
        assert!(
            group > 0 && nrows % group == 0,
            "{nrows} rows are not groups of {group}"
        );
        let n_groups = nrows / group;
        let chunk = n_groups.div_ceil(self.nth);
        let start = (chunk * self.ith).min(n_groups);
        start * group..(start + chunk).min(n_groups) * group
    }

    /// Mutable access to this thread's destination rows. Callable once per invocation (a second call panics,
    /// since two live iterators would alias the same rows).
    pub fn dst_rows(&self) -> DstRows<'_> {
        self.dst_rows_in(Split::Rows, self.rows())
    }

    /// [`dst_rows`](Self::dst_rows) over [`rows_grouped`](Self::rows_grouped)`(group)`. Callable once per
    /// invocation, and not together with `dst_rows`.
    pub fn dst_rows_grouped(&self, group: usize) -> DstRows<'_> {
        self.dst_rows_in(Split::Grouped(group), self.rows_grouped(group))
    }

    /// Disjoint ranges of destination rows, each computed whole by whichever thread claims it first, in list
    /// order: so that work of uneven cost (a prompt's experts: one row or sixty) can be shared out by claiming
    /// the costly ranges first, and no thread waits at the barrier after the op while another has a queue.
    ///
    /// The first thread to call publishes its list and every thread claims from that one, so threads may order
    /// the same ranges differently (by what each saw, e.g. which experts a cache holds) but should not pass
    /// different ranges: another thread's would not be computed. Panics if a range leaves the destination or two
    /// overlap. Callable once per invocation, and not together with `dst_rows`.
    pub fn claim_row_ranges(&self, ranges: Vec<Range<usize>>) -> ClaimedRanges<'_> {
        let nrows = self.dst().nrows() as usize;
        let mut sorted = ranges.clone();
        // Checked on every thread's list, so that the published one is checked whichever it is.
        sorted.sort_by_key(|r| r.start);
        for (i, r) in sorted.iter().enumerate() {
            assert!(
                r.start <= r.end && r.end <= nrows,
                "claim_row_ranges: rows {r:?} are not inside the {nrows} of the destination"
            );
            if let Some(prev) = i.checked_sub(1).map(|j| &sorted[j]) {
                assert!(prev.end <= r.start, "claim_row_ranges: rows {prev:?} and {r:?} overlap");
            }
        }
        let rows = self.dst_rows_in(Split::Ranges, 0..0);
        let claims = self.claims();
        let plan = {
            let mut published = claims.plan.lock().unwrap_or_else(|p| p.into_inner());
            published.get_or_insert_with(|| ranges.into()).clone()
        };
        ClaimedRanges {
            data: rows.data,
            ne0: rows.ne0,
            plan,
            next: &claims.next,
            _op: std::marker::PhantomData,
        }
    }

    /// Every row of the destination: only for ops built with [`Context::custom_4d_single`] (one thread).
    pub fn dst_rows_all(&self) -> DstRows<'_> {
        assert!(
            self.nth == 1,
            "dst_rows_all needs a single-threaded op, running on {}",
            self.nth
        );
        self.dst_rows_in(Split::All, 0..self.dst().nrows() as usize)
    }

    /// The (row, column chunk) items this thread computes when every row is cut into chunks of `chunk` columns
    /// (the last one shorter) and the `nrows * ceil(ne0 / chunk)` items are split as ggml splits rows: so that
    /// more threads than rows still share the work, e.g. one token's expert products.
    pub fn chunk_items(&self, chunk: usize) -> Range<usize> {
        assert!(chunk > 0, "column chunks of 0");
        let dst = self.dst();
        let n = dst.nrows() as usize * (dst.ne()[0] as usize).div_ceil(chunk);
        let per = n.div_ceil(self.nth);
        let start = (per * self.ith).min(n);
        start..(start + per).min(n)
    }

    /// Mutable access to this thread's [`chunk_items`](Self::chunk_items). Callable once per invocation, and not
    /// together with `dst_rows`.
    pub fn dst_chunks(&self, chunk: usize) -> DstChunks<'_> {
        self.chunks_in(Split::Chunks(chunk), chunk, self.chunk_items(chunk))
    }

    fn chunks_in(&self, split: Split, chunk: usize, items: Range<usize>) -> DstChunks<'_> {
        let rows = self.dst_rows_in(split, 0..0);
        DstChunks {
            data: rows.data,
            ne0: rows.ne0,
            chunk,
            items,
            _op: std::marker::PhantomData,
        }
    }

    fn claims(&self) -> &Claims {
        // SAFETY: `claims` points into the op's CustomState, which lives as long as the op's context and so
        // outlives this invocation (and `self`).
        unsafe { &*self.claims }
    }

    /// `rows` must be this thread's disjoint share under `split`, which every thread of this compute must use:
    /// the first to get here publishes it, and a thread with another split panics before it can write.
    fn dst_rows_in(&self, split: Split, rows: Range<usize>) -> DstRows<'_> {
        assert!(
            !self.dst_taken.replace(true),
            "CustomOpCtx::dst_rows called twice in one invocation"
        );
        let code = split.code();
        match self
            .claims()
            .split
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {}
            Err(c) if c == code => {}
            Err(_) => panic!(
                "custom op: thread {} of {} takes its destination as {split:?}, another thread otherwise",
                self.ith, self.nth
            ),
        }
        let dst = self.dst();
        assert!(
            (dst.raw().data as *const f32).is_aligned(),
            "custom op destination is not 4-byte aligned"
        );
        DstRows {
            data: dst.raw().data.cast(),
            ne0: dst.ne()[0] as usize,
            rows,
            _op: std::marker::PhantomData,
        }
    }
}

unsafe extern "C" fn trampoline(dst: *mut sys::ggml_tensor, ith: c_int, nth: c_int, userdata: *mut c_void) {
    // SAFETY: userdata is the Box<CustomState> registered by `custom_4d`, owned by the context that owns `dst`,
    // hence alive while ggml computes `dst`. Shared access only: `f` is Sync and `panic` is a Mutex.
    let state = unsafe { &*(userdata as *const CustomState) };
    if state.single && ith != 0 {
        return;
    }
    let op = CustomOpCtx {
        ith: ith as usize,
        nth: if state.single { 1 } else { nth.max(1) as usize },
        dst,
        dst_taken: Cell::new(false),
        claims: &state.claims,
    };
    // Unwinding into C is undefined behaviour: catch everything here and report it after compute.
    if let Err(e) = catch_unwind(AssertUnwindSafe(|| (state.f)(&op))) {
        let msg = e
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        let mut slot = state.panic.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(msg);
    }
}

/// The closure state of a graph node, if it is one of our custom ops.
fn state_of(t: *mut sys::ggml_tensor) -> Option<&'static CustomState> {
    // SAFETY: `t` is a live graph tensor. For GGML_OP_CUSTOM, op_params holds a ggml_custom_op_params. Safe code
    // can create GGML_OP_CUSTOM nodes only through `custom_4d` (calling `sys` needs `unsafe`, denied outside this
    // module), so `userdata` is a CustomState kept alive by its context; the 'static never escapes the compute call
    // that uses it. (Comparing `fun` with `trampoline` would not do: function addresses are not unique.)
    unsafe {
        if (*t).op != sys::GGML_OP_CUSTOM {
            return None;
        }
        let p = (*t).op_params.as_ptr() as *const CustomOpParams;
        let p = std::ptr::read_unaligned(p);
        (p.fun.is_some() && !p.userdata.is_null()).then(|| &*(p.userdata as *const CustomState))
    }
}

/// Before a compute: no panic recorded and nothing claimed, on every custom op of the graph.
pub(crate) fn reset_states(g: &Graph<'_>) {
    for &t in g.raw_tensors() {
        if let Some(s) = state_of(t) {
            *s.panic.lock().unwrap_or_else(|p| p.into_inner()) = None;
            *s.claims.plan.lock().unwrap_or_else(|p| p.into_inner()) = None;
            s.claims.next.store(0, Ordering::Relaxed);
            s.claims.split.store(0, Ordering::Relaxed);
        }
    }
}

pub(crate) fn take_panic(g: &Graph<'_>) -> Result<(), GgmlError> {
    for &t in g.raw_tensors() {
        if let Some(s) = state_of(t) {
            if let Some(message) = s.panic.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(GgmlError::CustomOpPanicked {
                    name: s.name.clone(),
                    message,
                });
            }
        }
    }
    Ok(())
}

impl Context {
    /// A custom op with a new F32 destination of dims `ne` and sources `args` (contiguous, any type, at most 9).
    /// `f` runs on every compute thread; it must fill its [`CustomOpCtx::dst_rows`].
    pub fn custom_4d<'a, F>(&'a self, name: &str, ne: [i64; 4], args: &[Tensor<'a>], f: F) -> Tensor<'a>
    where
        F: Fn(&CustomOpCtx) + Send + Sync + 'static,
    {
        self.custom_4d_tasks(name, ne, args, sys::GGML_N_TASKS_MAX, f)
    }

    /// [`custom_4d`](Self::custom_4d) run by one thread only (`nth == 1`), for small ops that must see all
    /// their output at once (e.g. to publish it): [`CustomOpCtx::dst_rows_all`].
    pub fn custom_4d_single<'a, F>(&'a self, name: &str, ne: [i64; 4], args: &[Tensor<'a>], f: F) -> Tensor<'a>
    where
        F: Fn(&CustomOpCtx) + Send + Sync + 'static,
    {
        self.custom_4d_tasks(name, ne, args, 1, f)
    }

    fn custom_4d_tasks<'a, F>(
        &'a self,
        name: &str,
        ne: [i64; 4],
        args: &[Tensor<'a>],
        n_tasks: c_int,
        f: F,
    ) -> Tensor<'a>
    where
        F: Fn(&CustomOpCtx) + Send + Sync + 'static,
    {
        assert!(
            args.len() < sys::GGML_MAX_SRC as usize,
            "ggml custom_4d `{name}`: {} args, at most 9",
            args.len()
        );
        for (i, a) in args.iter().enumerate() {
            assert!(
                a.is_contiguous(),
                "ggml custom_4d `{name}`: arg {i} {a:?} must be contiguous"
            );
        }
        super::context::check_dims("custom_4d", ne);
        self.reserve_tensors("custom_4d", 1, Some((GgmlType::F32, ne)));
        let state = Box::new(CustomState {
            name: name.to_string(),
            f: Box::new(f),
            panic: Mutex::new(None),
            single: n_tasks == 1,
            claims: Claims::default(),
        });
        let userdata = &*state as *const CustomState as *mut c_void;
        self.keep_alive.borrow_mut().push(state);
        let mut srcs: Vec<*mut sys::ggml_tensor> = args.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: valid context with room (checked); < GGML_MAX_SRC args; userdata lives as long as the context
        // (kept in keep_alive, a Box so the address is stable); n_tasks is -1 ("all threads") or 1.
        let t = unsafe {
            sys::ggml_custom_4d(
                self.as_ptr(),
                sys::GGML_TYPE_F32,
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                srcs.as_mut_ptr(),
                srcs.len() as c_int,
                Some(trampoline),
                n_tasks,
                userdata,
            )
        };
        Tensor::from_raw(t, false).set_name(name)
    }

    /// A custom op whose destination has the shape of `a` (ggml_map_custom1's contract).
    pub fn map_custom1<'a, F>(&'a self, name: &str, a: Tensor<'a>, f: F) -> Tensor<'a>
    where
        F: Fn(&CustomOpCtx) + Send + Sync + 'static,
    {
        self.custom_4d(name, a.ne(), &[a], f)
    }

    /// Two sources, destination shaped like `a`.
    pub fn map_custom2<'a, F>(&'a self, name: &str, a: Tensor<'a>, b: Tensor<'a>, f: F) -> Tensor<'a>
    where
        F: Fn(&CustomOpCtx) + Send + Sync + 'static,
    {
        self.custom_4d(name, a.ne(), &[a, b], f)
    }

    /// Three sources, destination shaped like `a`.
    pub fn map_custom3<'a, F>(&'a self, name: &str, a: Tensor<'a>, b: Tensor<'a>, c: Tensor<'a>, f: F) -> Tensor<'a>
    where
        F: Fn(&CustomOpCtx) + Send + Sync + 'static,
    {
        self.custom_4d(name, a.ne(), &[a, b, c], f)
    }
}
