//! The expert cache of memory-capped inference (engine-notes §3): a fixed number of slots, each holding one
//! expert's gate, up and down matrices as the GGUF stores them (or, for Q4_0, rewritten once read into ggml's
//! interleaved 8-row layout: [`CacheParams::interleave`]), read from storage by one io_uring
//! thread with several experts in flight (`expert_uring.rs`) or by a pool of `pread` threads
//! ([`super::expert_io`]).
//!
//! Timeline of one layer: the router op calls [`ExpertCache::route`] with the layer's expert ids before the
//! layer's attention runs; experts not resident get a slot (evicting by the policy) and their reads are queued at
//! once, so storage works while attention computes. The expert op then calls [`ExpertCache::get`], which waits
//! only for reads that have not finished. A layer's experts stay pinned from its `route` until the next `route`
//! (the next layer's router runs after this layer's expert op, by graph order), so a batch never loses an expert
//! it still needs; this is why the cache needs at least `n_expert` slots.
//!
//! A slot's memory is written only by the I/O side and only while its state is `Loading`: the reader holds the
//! slot's write lock from before its reads are issued until after they have completed, and [`CacheCore::get`]
//! hands out a read lock only once the state is `Ready`, which is set after the write lock is released.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Instant;

mod hint;
mod stats;

pub use stats::{CachePolicy, CacheStats};

use super::expert_io::{ExpertFile, ExpertReadError, Extent, IoBackend, ALIGN};
use crate::ggml::q4x8;
use crate::ggml::rows::AlignedBytes;
use crate::ggml::uring::{Uring, Waker};

/// Where one expert's three matrices are in the file.
#[derive(Clone, Copy, Debug)]
pub struct ExpertExtents {
    pub gate: Extent,
    pub up: Extent,
    pub down: Extent,
}

/// What the cache is built with.
#[derive(Clone, Debug)]
pub struct CacheParams {
    pub n_slots: usize,
    pub policy: CachePolicy,
    /// Experts read at once: pread threads, or experts in flight on the io_uring (3 reads each).
    pub io_threads: usize,
    pub backend: IoBackend,
    /// Per (layer, expert), layer-major: initial frequencies for [`CachePolicy::Frequency`] (e.g. a profile).
    pub frequencies: Option<Vec<f32>>,
    /// Elements per row of gate, up and down: each slot is interleaved once read ([`q4x8::interleave`], all
    /// three Q4_0 with whole groups of 8 rows), for [`q4x8::Gemv`].
    pub interleave: Option<[usize; 3]>,
}

/// One expert's bytes, borrowed from its slot while the guard lives.
pub struct ExpertGuard<'c> {
    buf: RwLockReadGuard<'c, AlignedBytes>,
    /// Offset of each matrix's first byte in the slot.
    offs: [usize; 3],
    lens: [usize; 3],
}

impl ExpertGuard<'_> {
    /// `[gate, up, down]`, each as the GGUF stores the expert's slice (or interleaved, see
    /// [`CacheParams::interleave`]).
    pub fn matrices(&self) -> [&[u8]; 3] {
        let b = self.buf.as_slice();
        let m = |i: usize| &b[self.offs[i]..self.offs[i] + self.lens[i]];
        [m(0), m(1), m(2)]
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Empty,
    Loading { prefetched: bool },
    Ready,
}

#[derive(Clone, Copy)]
struct Meta {
    key: Option<usize>,
    state: State,
    last_use: u64,
    /// Pinned for the batch's current layer.
    pinned: bool,
    /// Pre-warmed from a profile: never evicted.
    permanent: bool,
    /// Loaded on a lookahead hint and its layer not routed since: evicted only when nothing else can be.
    hinted: bool,
    /// The first `get` after the load has been counted.
    used: bool,
}

struct Inner {
    meta: Vec<Meta>,
    /// Slot of each (layer, expert) key.
    slot_of: Vec<Option<usize>>,
    tick: u64,
    freq: Vec<f32>,
    pinned: Vec<usize>,
    /// Slots with `hinted` set.
    hinted: Vec<usize>,
    stats: CacheStats,
    error: Option<ExpertReadError>,
}

pub(super) struct Job {
    pub(super) slot: usize,
    pub(super) key: usize,
}

/// The backend the cache runs, as resolved from [`IoBackend`].
#[derive(Clone, Copy, Debug)]
enum Reader {
    Uring { depth: usize },
    Pread { threads: usize },
}

/// See the module docs. Owns the I/O threads: dropping it stops them (pending reads are abandoned).
pub struct ExpertCache {
    core: Arc<CacheCore>,
    workers: Vec<JoinHandle<()>>,
}

impl std::ops::Deref for ExpertCache {
    type Target = CacheCore;
    fn deref(&self) -> &CacheCore {
        &self.core
    }
}

impl Drop for ExpertCache {
    fn drop(&mut self) {
        *lock(&self.core.queue) = None;
        self.core.queued.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The state the I/O threads share with the compute side.
pub struct CacheCore {
    inner: Mutex<Inner>,
    ready: Condvar,
    pub(super) slots: Vec<RwLock<AlignedBytes>>,
    pub(super) extents: Vec<ExpertExtents>,
    pub(super) names: Vec<[String; 3]>,
    pub(super) n_expert: usize,
    policy: CachePolicy,
    pub(super) file: ExpertFile,
    queue: Mutex<Option<VecDeque<Job>>>,
    queued: Condvar,
    /// Bytes of the gate and up regions of a slot (the down region follows them).
    region_gate_up: [usize; 2],
    reader: Reader,
    /// Wakes the io_uring thread when a read is queued while it waits for completions.
    wake: Option<Waker>,
    interleave: Option<[usize; 3]>,
}

impl ExpertCache {
    /// Bytes one slot takes for these extents (all experts' regions, 4 KiB-aligned, plus alignment slack).
    pub fn slot_bytes(extents: &[ExpertExtents]) -> usize {
        region(extents, |x| x.gate) + region(extents, |x| x.up) + region(extents, |x| x.down) + ALIGN as usize
    }

    /// `extents` and `names` (the three tensor names of each layer) are layer-major, `n_expert` per layer.
    /// Fails only for [`IoBackend::Uring`] where io_uring cannot be set up.
    pub fn new(
        file: ExpertFile,
        extents: Vec<ExpertExtents>,
        names: Vec<[String; 3]>,
        n_expert: usize,
        p: CacheParams,
    ) -> Result<ExpertCache, ExpertReadError> {
        let slot_len = ExpertCache::slot_bytes(&extents);
        let (rg, ru) = (region(&extents, |x| x.gate), region(&extents, |x| x.up));
        let slots = (0..p.n_slots)
            .map(|_| RwLock::new(AlignedBytes::zeroed(slot_len)))
            .collect();
        let n_io = p.io_threads.max(1);
        let ring = match p.backend {
            IoBackend::Pread => None,
            IoBackend::Auto => Uring::new(3 * n_io).ok(),
            IoBackend::Uring => {
                Some(Uring::new(3 * n_io).map_err(|e| ExpertReadError::NoUring { message: e.to_string() })?)
            }
        };
        let wake = ring.as_ref().map(Uring::waker);
        let reader = match &ring {
            Some(r) => Reader::Uring { depth: r.depth() },
            None => Reader::Pread { threads: n_io },
        };
        let n_keys = extents.len();
        let core = Arc::new(CacheCore {
            inner: Mutex::new(Inner {
                meta: vec![
                    Meta {
                        key: None,
                        state: State::Empty,
                        last_use: 0,
                        pinned: false,
                        permanent: false,
                        hinted: false,
                        used: true,
                    };
                    p.n_slots
                ],
                slot_of: vec![None; n_keys],
                tick: 0,
                freq: p
                    .frequencies
                    .filter(|f| f.len() == n_keys)
                    .unwrap_or_else(|| vec![0.0; n_keys]),
                pinned: Vec::new(),
                hinted: Vec::new(),
                stats: CacheStats::default(),
                error: None,
            }),
            ready: Condvar::new(),
            slots,
            extents,
            names,
            n_expert,
            policy: p.policy,
            file,
            queue: Mutex::new(Some(VecDeque::new())),
            queued: Condvar::new(),
            region_gate_up: [rg, ru],
            reader,
            wake,
            interleave: p.interleave,
        });
        let workers = match ring {
            Some(ring) => {
                let c = core.clone();
                vec![std::thread::spawn(move || super::expert_uring::run(&c, ring))]
            }
            None => (0..n_io)
                .map(|_| {
                    let c = core.clone();
                    std::thread::spawn(move || c.worker())
                })
                .collect(),
        };
        Ok(ExpertCache { core, workers })
    }
}

impl CacheCore {
    pub fn n_slots(&self) -> usize {
        self.slots.len()
    }

    pub fn is_direct(&self) -> bool {
        self.file.is_direct()
    }

    /// The backend in use: [`IoBackend::Uring`] or [`IoBackend::Pread`], never `Auto`.
    pub fn io_backend(&self) -> IoBackend {
        match self.reader {
            Reader::Uring { .. } => IoBackend::Uring,
            Reader::Pread { .. } => IoBackend::Pread,
        }
    }

    /// How experts are read, for logs: e.g. "io_uring, depth 12, O_DIRECT" or "pread x4, O_DIRECT".
    pub fn io_description(&self) -> String {
        let how = match self.reader {
            Reader::Uring { depth } => format!("io_uring, depth {depth}"),
            Reader::Pread { threads } => format!("pread x{threads}"),
        };
        let cache = if self.is_direct() {
            "O_DIRECT"
        } else {
            "buffered+DONTNEED"
        };
        format!("{how}, {cache}")
    }

    pub fn stats(&self) -> CacheStats {
        lock(&self.inner).stats
    }

    /// The first read error since the last call (the evaluation that hit it must not be trusted).
    pub fn take_error(&self) -> Option<ExpertReadError> {
        lock(&self.inner).error.take()
    }

    /// The router of layer `il` chose `ids` (any number of tokens x k): pins them, queues reads for the
    /// missing ones. Unpins the previous layer's experts.
    pub fn route(&self, il: u32, ids: &[i32]) {
        let base = il as usize * self.n_expert;
        let mut want: Vec<usize> = ids.iter().map(|&e| base + e as usize).collect();
        want.sort_unstable();
        want.dedup();
        let mut g = lock(&self.inner);
        for s in std::mem::take(&mut g.pinned) {
            g.meta[s].pinned = false;
        }
        self.end_hints(&mut g, il as usize);
        self.decay(&mut g, il as usize);
        for &key in &want {
            g.tick += 1;
            let tick = g.tick;
            g.freq[key] += 1.0;
            g.stats.lookups += 1;
            let slot = match g.slot_of[key] {
                Some(s) => {
                    if g.meta[s].state == State::Ready {
                        g.stats.hits += 1;
                    }
                    s
                }
                None => {
                    let (s, guard) = self.claim(g, key, true);
                    g = guard;
                    s
                }
            };
            g.meta[slot].pinned = true;
            g.meta[slot].last_use = tick;
            g.pinned.push(slot);
        }
    }

    /// Halves a layer's counts now and then, so that the frequency policy follows the current text.
    fn decay(&self, g: &mut Inner, il: usize) {
        let layer = &mut g.freq[il * self.n_expert..(il + 1) * self.n_expert];
        if layer.iter().sum::<f32>() > 64.0 * self.n_expert as f32 {
            layer.iter_mut().for_each(|f| *f *= 0.5);
        }
    }

    /// Gives `key` a slot (evicting one) and queues its read; waits when every slot is pinned or loading.
    fn claim<'g>(
        &'g self,
        mut g: MutexGuard<'g, Inner>,
        key: usize,
        prefetched: bool,
    ) -> (usize, MutexGuard<'g, Inner>) {
        let slot = loop {
            if let Some(s) = self.victim(&g, false).or_else(|| self.victim(&g, true)) {
                break s;
            }
            g = self.ready.wait(g).unwrap_or_else(|p| p.into_inner());
        };
        self.load_into(&mut g, slot, key, prefetched);
        (slot, g)
    }

    /// Gives `slot` (a victim) to `key` and queues the read.
    fn load_into(&self, g: &mut Inner, slot: usize, key: usize, prefetched: bool) {
        if g.meta[slot].hinted {
            g.meta[slot].hinted = false;
            g.hinted.retain(|&s| s != slot);
        }
        if let Some(old) = g.meta[slot].key {
            g.slot_of[old] = None;
        }
        g.slot_of[key] = Some(slot);
        g.meta[slot].key = Some(key);
        g.meta[slot].state = State::Loading { prefetched };
        // Only prefetches are scored for arriving in time.
        g.meta[slot].used = !prefetched;
        g.stats.loads += 1;
        if prefetched {
            g.stats.loads_prefetched += 1;
        }
        if let Some(q) = lock(&self.queue).as_mut() {
            q.push_back(Job { slot, key });
        }
        self.queued.notify_one();
        if let Some(w) = &self.wake {
            w.wake();
        }
    }

    /// The slot to evict: never a pinned, permanent or loading one, and a hinted one only `with_hinted`.
    fn victim(&self, g: &Inner, with_hinted: bool) -> Option<usize> {
        let free = |m: &Meta| {
            !m.pinned && !m.permanent && (with_hinted || !m.hinted) && !matches!(m.state, State::Loading { .. })
        };
        let cands = g.meta.iter().enumerate().filter(|(_, m)| free(m));
        if let Some((s, _)) = g.meta.iter().enumerate().find(|(_, m)| free(m) && m.key.is_none()) {
            return Some(s);
        }
        match self.policy {
            CachePolicy::Lru => cands.min_by_key(|(_, m)| m.last_use).map(|(s, _)| s),
            CachePolicy::Frequency => cands
                .min_by(|(_, a), (_, b)| {
                    let f = |m: &Meta| m.key.map_or(0.0, |k| g.freq[k]);
                    f(a).total_cmp(&f(b)).then(a.last_use.cmp(&b.last_use))
                })
                .map(|(s, _)| s),
        }
    }

    /// Loads these (layer, expert) keys and keeps them for good (pre-warming from a profile); blocks until read.
    pub fn pin_permanent(&self, keys: &[usize]) -> Result<(), ExpertReadError> {
        for &key in keys {
            let mut g = lock(&self.inner);
            if g.slot_of[key].is_none() {
                g = self.claim(g, key, false).1;
            }
            let s = g.slot_of[key].expect("claimed");
            g.meta[s].permanent = true;
        }
        for &key in keys {
            let il = (key / self.n_expert) as u32;
            if self.get(il, (key % self.n_expert) as u32, false).is_none() {
                return Err(self.take_error().expect("a failed get records its error"));
            }
        }
        Ok(())
    }

    /// Whether (il, e) is resident and read.
    pub fn is_ready(&self, il: u32, e: u32) -> bool {
        let g = lock(&self.inner);
        let key = il as usize * self.n_expert + e as usize;
        g.slot_of[key].is_some_and(|s| g.meta[s].state == State::Ready)
    }

    /// Waits for expert `e` of layer `il` (routed by [`route`](Self::route)) and borrows its bytes; None if its
    /// read failed (the error is kept for [`take_error`](Self::take_error)). `timed`: count the wait in stats.
    pub fn get(&self, il: u32, e: u32, timed: bool) -> Option<ExpertGuard<'_>> {
        let key = il as usize * self.n_expert + e as usize;
        let t0 = Instant::now();
        let mut g = lock(&self.inner);
        let mut waited = false;
        let slot = loop {
            match g.slot_of[key] {
                // Not routed (or its read failed): load it now, which is not a prefetch.
                None if g.error.is_some() => return None,
                None => g = self.claim(g, key, false).1,
                Some(s) => match g.meta[s].state {
                    State::Ready => break s,
                    State::Loading { .. } => {
                        waited = true;
                        g = self.ready.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    State::Empty => return None,
                },
            }
        };
        if !g.meta[slot].used {
            g.meta[slot].used = true;
            if !waited && matches!(g.meta[slot].state, State::Ready) {
                g.stats.loads_ready_on_use += 1;
            }
        }
        if timed && waited {
            g.stats.wait_ns += t0.elapsed().as_nanos() as u64;
        }
        drop(g);
        let x = &self.extents[key];
        let buf = self.slots[slot].read().unwrap_or_else(|p| p.into_inner());
        let r = self.regions(buf.as_slice());
        let inner = |i: usize, e: Extent| r[i].start + (e.offset % ALIGN) as usize;
        Some(ExpertGuard {
            offs: [inner(0, x.gate), inner(1, x.up), inner(2, x.down)],
            buf,
            lens: [x.gate.len as usize, x.up.len as usize, x.down.len as usize],
        })
    }

    /// The gate, up and down regions of a slot's bytes. They start page-aligned in memory: the slack at the
    /// front of the buffer absorbs its address.
    pub(super) fn regions(&self, bytes: &[u8]) -> [Range<usize>; 3] {
        let lead = bytes.as_ptr().align_offset(ALIGN as usize);
        let [rg, ru] = self.region_gate_up;
        [lead..lead + rg, lead + rg..lead + rg + ru, lead + rg + ru..bytes.len()]
    }

    /// Whether slots hold interleaved matrices ([`CacheParams::interleave`]).
    pub fn is_interleaved(&self) -> bool {
        self.interleave.is_some()
    }

    /// After `key`'s reads into its slot's `bytes` succeeded, with the write lock still held: interleaves them
    /// when the cache does. On the I/O thread, so the compute threads never wait on it for a hit.
    pub(super) fn prepare(&self, key: usize, bytes: &mut [u8]) {
        let Some(n) = self.interleave else { return };
        let x = self.extents[key];
        let regions = self.regions(bytes);
        let mut tmp = Vec::new();
        for (i, ext) in [x.gate, x.up, x.down].into_iter().enumerate() {
            let at = regions[i].start + (ext.offset % ALIGN) as usize;
            q4x8::interleave(&mut bytes[at..at + ext.len as usize], n[i], &mut tmp);
        }
    }

    /// Waits for a queued read; false once the cache is dropped.
    pub(super) fn wait_for_job(&self) -> bool {
        let mut q = lock(&self.queue);
        loop {
            match q.as_ref() {
                None => return false,
                Some(q2) if !q2.is_empty() => return true,
                Some(_) => q = self.queued.wait(q).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// The next queued read, if any, without waiting.
    pub(super) fn pop_job(&self) -> Option<Job> {
        lock(&self.queue).as_mut()?.pop_front()
    }

    /// Records the outcome of a job's reads (`Ok`: bytes read) and wakes whoever waits for it. The slot's write
    /// lock must be released by then: a `Ready` slot can be read at once.
    pub(super) fn complete(&self, job: Job, r: Result<u64, ExpertReadError>) {
        let mut g = lock(&self.inner);
        match r {
            Ok(n) => {
                g.stats.bytes_read += n;
                g.meta[job.slot].state = State::Ready;
            }
            Err(e) => {
                g.error.get_or_insert(e);
                g.meta[job.slot].state = State::Empty;
                g.meta[job.slot].key = None;
                g.slot_of[job.key] = None;
            }
        }
        drop(g);
        self.ready.notify_all();
    }

    fn worker(&self) {
        while self.wait_for_job() {
            let Some(job) = self.pop_job() else { continue };
            let r = self.load(job.slot, job.key);
            self.complete(job, r);
        }
    }

    fn load(&self, slot: usize, key: usize) -> Result<u64, ExpertReadError> {
        let mut buf = self.slots[slot].write().unwrap_or_else(|p| p.into_inner());
        let x = self.extents[key];
        let e = (key % self.n_expert) as u32;
        let names = &self.names[key / self.n_expert];
        let bytes = buf.as_mut_slice();
        let regions = self.regions(bytes);
        let mut total = 0u64;
        for (i, ext) in [x.gate, x.up, x.down].into_iter().enumerate() {
            self.file.read(ext, &mut bytes[regions[i].clone()], (&names[i], e))?;
            total += ext.aligned().1;
        }
        self.prepare(key, bytes);
        Ok(total)
    }
}

/// Bytes of a slot region that holds matrix `f` of any of these experts, read aligned.
fn region(extents: &[ExpertExtents], f: fn(&ExpertExtents) -> Extent) -> usize {
    extents.iter().map(|x| f(x).region_len()).max().unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
