//! Memory a dropped context hands on to the next context built on the same thread: its pool (tensor metadata,
//! and data unless `no_alloc`) and its graph allocator with the allocator's buffer.
//!
//! A session builds a new context for every decode step, of the same size every time. Allocations of a few MiB
//! come fresh from the kernel (glibc maps them), so each step paid page faults on every page it touched: about
//! 1 ms of a 20 ms 4B decode step for the 2.3 MiB pool alone, and more for the allocator's buffer. Keeping the
//! last few on the thread turns that into a memset of the bytes the previous context used.

use std::alloc::Layout;
use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::thread::LocalKey;

use super::sys;

/// Spare pools and allocators kept per thread; more than this are freed (a session needs one of each, a batch
/// of sessions on one thread one more for the batch graph).
const KEEP: usize = 2;

/// Bigger pools are freed, not kept: a pool that holds tensor data (a context that is not `no_alloc`) can be
/// large, and keeping it would hold that memory for the thread's life.
const KEEP_POOL_BYTES: usize = 64 << 20;

thread_local! {
    static POOLS: RefCell<Vec<(Block, usize)>> = const { RefCell::new(Vec::new()) };
    static GALLOCRS: RefCell<Vec<RawGallocr>> = const { RefCell::new(Vec::new()) };
}

/// Puts `item` among the thread's spares, or drops it (frees it) when they are full or the thread is exiting.
fn keep<T>(spares: &'static LocalKey<RefCell<Vec<T>>>, item: T) {
    let mut item = Some(item);
    let _ = spares.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < KEEP {
                s.extend(item.take());
            }
        }
    });
}

/// Takes the first spare that `fits`.
fn take<T>(spares: &'static LocalKey<RefCell<Vec<T>>>, fits: impl Fn(&T) -> bool) -> Option<T> {
    spares
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let i = s.iter().position(&fits)?;
            Some(s.swap_remove(i))
        })
        .ok()
        .flatten()
}

/// A 64-byte aligned allocation, freed on drop.
struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated by alloc_zeroed with this layout in `Pool::new`, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A zeroed pool for a context: on drop it becomes a spare of this thread.
pub(super) struct Pool {
    block: ManuallyDrop<Block>,
    /// Bytes from the start that may be non-zero: set by the owning context before the pool is dropped.
    dirty: usize,
}

impl Pool {
    /// A zeroed pool of at least `mem_size` bytes: a spare of the same size, cleared, or a new allocation.
    pub(super) fn new(mem_size: usize) -> Option<Pool> {
        let layout = Layout::from_size_align(mem_size.max(64).checked_next_multiple_of(64)?, 64).ok()?;
        if let Some((block, dirty)) = take(&POOLS, |(b, _)| b.layout == layout) {
            // SAFETY: `dirty` <= the block's size (clamped in `set_dirty`), and the block is ours alone.
            unsafe { std::ptr::write_bytes(block.ptr.as_ptr(), 0, dirty) };
            return Some(Pool {
                block: ManuallyDrop::new(block),
                dirty: 0,
            });
        }
        // SAFETY: the layout has a non-zero size; a null result is handled.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Pool {
            block: ManuallyDrop::new(Block { ptr, layout }),
            dirty: 0,
        })
    }

    pub(super) fn ptr(&self) -> NonNull<u8> {
        self.block.ptr
    }

    pub(super) fn size(&self) -> usize {
        self.block.layout.size()
    }

    /// Records how much of the pool its context used.
    pub(super) fn set_dirty(&mut self, bytes: usize) {
        self.dirty = bytes.min(self.size());
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `block` is taken once, here, and `self` is not used after.
        let block = unsafe { ManuallyDrop::take(&mut self.block) };
        if block.layout.size() <= KEEP_POOL_BYTES {
            keep(&POOLS, (block, self.dirty));
        }
    }
}

/// A graph allocator (`ggml_gallocr_t`), freed on drop.
struct RawGallocr(NonNull<sys::ggml_gallocr>);

impl Drop for RawGallocr {
    fn drop(&mut self) {
        // SAFETY: from ggml_gallocr_new, freed once.
        unsafe { sys::ggml_gallocr_free(self.0.as_ptr()) };
    }
}

/// A graph allocator for the CPU buffer type, with the buffer it grew to: on drop it becomes a spare of this
/// thread. Its context's tensors, which pointed into the buffer, are gone by then (allocators are dropped with
/// their context), so the buffer can serve the next graph: ggml_gallocr_alloc_graph plans it anew and grows it
/// when a graph needs more.
pub(crate) struct Gallocr(ManuallyDrop<RawGallocr>);

impl Gallocr {
    /// A spare allocator of this thread, or a new one.
    pub(crate) fn new() -> Option<Gallocr> {
        if let Some(g) = take(&GALLOCRS, |_| true) {
            return Some(Gallocr(ManuallyDrop::new(g)));
        }
        // SAFETY: the CPU buffer type is a static; returns null on failure.
        let g = NonNull::new(unsafe { sys::ggml_gallocr_new(sys::ggml_backend_cpu_buffer_type()) })?;
        Some(Gallocr(ManuallyDrop::new(RawGallocr(g))))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_gallocr {
        self.0 .0.as_ptr()
    }
}

impl Drop for Gallocr {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and `self` is not used after.
        let g = unsafe { ManuallyDrop::take(&mut self.0) };
        keep(&GALLOCRS, g);
    }
}
