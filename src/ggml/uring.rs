//! A small safe owner of one io_uring instance, shaped for the expert cache: positioned reads into caller
//! buffers, several in flight, each group of reads (one expert's matrices) handed back as soon as its own reads
//! have completed. It lives under `src/ggml/` because that is the one place of the crate where `unsafe` is
//! allowed (raw OS interfaces): handing the kernel a pointer it writes to later is exactly such a thing.
//!
//! Built on the `io-uring` crate (tokio-rs) rather than rustix's `io_uring` module: rustix only wraps the three
//! system calls, so the ring mappings and the head/tail memory ordering would be ours to get right; io-uring
//! does that part and leaves to us only what is specific to our use (which buffers may be in flight, and when).
//!
//! Why this is sound: [`Uring::read_groups`] does not return, not even by unwinding, while any read it
//! submitted is in flight. Buffers are moved into the call and given back (to its `done` callback) only after
//! every read into them has completed, so nothing else can touch them meanwhile; a drop guard waits for the
//! remaining completions if a callback panics; and a submission is never left queued in the ring between calls.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::RwLockWriteGuard;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use super::rows::AlignedBytes;

/// Memory a read may target while its owner sits in the ring.
///
/// # Safety
/// `bytes` returns the same memory on every call, valid and reachable only through this value until it is
/// dropped, whether or not the value is moved in between (heap memory or memory behind a held lock, never inline
/// bytes). Implemented here, for the buffer types the crate reads into.
pub unsafe trait ReadBuf {
    fn bytes(&mut self) -> &mut [u8];
}

// SAFETY: the heap allocation of a Vec does not move when the owner moves.
unsafe impl ReadBuf for Vec<u8> {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
}

// SAFETY: AlignedBytes is a Vec<u64> underneath: heap memory, unmoved by moving the owner.
unsafe impl ReadBuf for AlignedBytes {
    fn bytes(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

// SAFETY: the guard keeps the lock (and so its contents) borrowed and exclusively held while it lives; the
// contents' own bytes are stable by T's contract.
unsafe impl<T: ReadBuf> ReadBuf for RwLockWriteGuard<'_, T> {
    fn bytes(&mut self) -> &mut [u8] {
        (**self).bytes()
    }
}

/// One positioned read: bytes `range` of the group's buffer from file offset `offset`.
#[derive(Clone, Debug)]
pub struct GroupRead {
    pub offset: u64,
    pub range: Range<usize>,
}

/// Reads into one buffer that complete together (one expert's three matrices), with the caller's `tag`.
pub struct ReadGroup<B, T> {
    pub buf: B,
    pub reads: Vec<GroupRead>,
    pub tag: T,
}

/// Per read of a group: the bytes the one read returned (a short count is not retried: the caller knows what
/// a short read at the end of the file means for it) or the error.
pub type ReadResults = Vec<io::Result<usize>>;

/// user_data of the read on the wake-up eventfd (read ids are `index << 16 | read`, far below it).
const WAKE: u64 = u64::MAX;

/// One io_uring instance with room for `depth` reads in flight, and a read on an eventfd kept armed in it so
/// that new work wakes a thread waiting for completions ([`Waker`]). A timed wait would do instead, but on two
/// cores its thousands of wake-ups a second take the CPU from the compute threads at their barriers.
pub struct Uring {
    ring: IoUring,
    depth: usize,
    wake: Arc<OwnedFd>,
    /// Where the armed eventfd read writes: heap memory owned here, kept until that read has completed (Drop).
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
}

/// Wakes the thread of a [`Uring`] that waits for completions, so that it takes new work at once.
#[derive(Clone)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    pub fn wake(&self) {
        // Best effort: a full counter (2^64 - 2 wake-ups unread) still wakes the reader.
        let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
    }
}

impl Uring {
    /// Sets up a ring for `depth` reads in flight, or says why not: io_uring_setup fails with ENOSYS on old
    /// kernels, EPERM under a seccomp filter or with `kernel.io_uring_disabled`, and a kernel older than 5.6 has
    /// no IORING_OP_READ. The caller then reads another way.
    pub fn new(depth: usize) -> io::Result<Uring> {
        let depth = depth.clamp(1, 4096);
        // One entry more than the reads, for the eventfd read.
        let ring = IoUring::new(depth as u32 + 1)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Read::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring has no positioned read (IORING_OP_READ, Linux 5.6)",
            ));
        }
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        Ok(Uring {
            ring,
            depth,
            wake: Arc::new(wake),
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
        })
    }

    /// A handle that wakes this ring's thread when it waits for completions in [`read_groups`](Self::read_groups).
    pub fn waker(&self) -> Waker {
        Waker(self.wake.clone())
    }

    /// Reads in flight at most.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Runs groups of reads from `fd`: takes groups from `next` while there is room for their reads (`next`
    /// must not block: None means "nothing now"), and hands each to `done` with its results as soon as its own
    /// reads have completed. Returns once nothing is in flight and `next` has nothing, having handed back every
    /// group it took. A group with more reads than the depth, or a range outside its buffer or over 4 GiB, is
    /// handed back unread with InvalidInput errors.
    pub fn read_groups<B: ReadBuf, T>(
        &mut self,
        fd: BorrowedFd<'_>,
        mut next: impl FnMut() -> Option<ReadGroup<B, T>>,
        mut done: impl FnMut(ReadGroup<B, T>, ReadResults),
    ) {
        let fd = types::Fd(fd.as_raw_fd());
        // Groups in flight, by index (user_data = index << 16 | read). Never grown past `depth`, so entries do
        // not move while the kernel writes into their buffers (the ReadBuf contract would allow it anyway).
        let mut slab: Vec<Option<InFlight<B, T>>> = Vec::with_capacity(self.depth);
        let mut free: Vec<usize> = Vec::new();
        // Declared after `slab`, so dropped (and drained) before it, on unwinding too.
        let mut flight = Flight {
            ring: &mut self.ring,
            ops: 0,
            wake_armed: &mut self.wake_armed,
        };
        let mut waiting: Option<ReadGroup<B, T>> = None;
        loop {
            // Take and queue as much new work as fits.
            loop {
                let Some(mut g) = waiting.take().or_else(&mut next) else {
                    break;
                };
                if let Err(e) = check(&mut g, self.depth) {
                    let n = g.reads.len();
                    done(
                        g,
                        (0..n)
                            .map(|_| Err(io::Error::new(io::ErrorKind::InvalidInput, e.clone())))
                            .collect(),
                    );
                    continue;
                }
                if g.reads.is_empty() {
                    done(g, Vec::new());
                    continue;
                }
                if flight.ops + g.reads.len() > self.depth {
                    waiting = Some(g);
                    break;
                }
                let idx = free.pop().unwrap_or_else(|| {
                    slab.push(None);
                    slab.len() - 1
                });
                let n = g.reads.len();
                let f = slab[idx].insert(InFlight {
                    group: g,
                    results: (0..n).map(|_| None).collect(),
                    left: n,
                });
                let base = f.group.buf.bytes().as_mut_ptr();
                for (i, r) in f.group.reads.iter().enumerate() {
                    // In bounds and under 4 GiB: checked above.
                    let ptr = base.wrapping_add(r.range.start);
                    let entry = opcode::Read::new(fd, ptr, r.range.len() as u32)
                        .offset(r.offset)
                        .build()
                        .user_data(((idx as u64) << 16) | i as u64);
                    // SAFETY: the buffer belongs to the slab entry until this read's completion has been reaped
                    // (only then is the group handed back), and `flight` waits for every completion before the
                    // slab can drop, so the memory stays valid and untouched while the kernel writes it. There is
                    // room: at most `depth` entries are queued or in flight, and the ring holds at least `depth`.
                    let pushed = unsafe { flight.ring.submission().push(&entry) };
                    pushed.expect("the ring has room for `depth` reads");
                    flight.ops += 1;
                }
            }
            if flight.ops == 0 {
                return;
            }
            // Wait until a read completes or new work is announced (the eventfd read completes).
            if !*flight.wake_armed {
                let entry = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                    .build()
                    .user_data(WAKE);
                // SAFETY: `wake_buf` is heap memory owned by `self`, written only by this read, and Drop waits
                // for this read to complete before it frees the buffer. There is room: the ring holds `depth`
                // reads plus this one.
                let pushed = unsafe { flight.ring.submission().push(&entry) };
                pushed.expect("the ring has room for the eventfd read");
                *flight.wake_armed = true;
            }
            flight.submit_and_wait();
            let mut cqes: Vec<(u64, i32)> = flight.ring.completion().map(|c| (c.user_data(), c.result())).collect();
            if let Some(at) = cqes.iter().position(|c| c.0 == WAKE) {
                cqes.swap_remove(at);
                *flight.wake_armed = false;
            }
            // Counted off before any `done` runs: if one panics, the drain waits only for reads still in flight.
            flight.ops -= cqes.len();
            for (ud, res) in cqes {
                let (idx, i) = ((ud >> 16) as usize, (ud & 0xffff) as usize);
                let f = slab[idx].as_mut().expect("a completion for a group in flight");
                f.results[i] = Some(if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                });
                f.left -= 1;
                if f.left == 0 {
                    let f = slab[idx].take().expect("in flight");
                    free.push(idx);
                    let results = f
                        .results
                        .into_iter()
                        .map(|r| r.expect("every read completed"))
                        .collect();
                    done(f.group, results);
                }
            }
        }
    }
}

struct InFlight<B, T> {
    group: ReadGroup<B, T>,
    results: Vec<Option<io::Result<usize>>>,
    left: usize,
}

fn check<B: ReadBuf, T>(g: &mut ReadGroup<B, T>, depth: usize) -> Result<(), String> {
    if g.reads.len() > depth {
        return Err(format!("{} reads in one group, the ring holds {depth}", g.reads.len()));
    }
    let len = g.buf.bytes().len();
    for r in &g.reads {
        if r.range.start > r.range.end || r.range.end > len || r.range.len() > u32::MAX as usize {
            return Err(format!("read range {:?} does not fit a buffer of {len} bytes", r.range));
        }
    }
    Ok(())
}

/// The ring with a count of reads submitted and not yet reaped; dropping it waits for them.
struct Flight<'r> {
    ring: &'r mut IoUring,
    ops: usize,
    /// Whether the eventfd read is in the ring (its completion is not one of `ops`).
    wake_armed: &'r mut bool,
}

impl Flight<'_> {
    /// Submits what is queued and waits for a completion. Interruptions and a temporary lack of kernel
    /// resources are retried by the caller's loop; anything else means the ring is broken while reads into
    /// caller memory may be in flight, and stopping the process is the only safe answer (returning would hand
    /// back buffers the kernel may still write).
    fn submit_and_wait(&mut self) {
        wait_one(self.ring)
    }
}

/// [`Flight::submit_and_wait`] on a bare ring.
fn wait_one(ring: &mut IoUring) {
    use rustix::io::Errno;
    if let Err(e) = ring.submit_and_wait(1) {
        match Errno::from_io_error(&e) {
            Some(Errno::INTR | Errno::TIME) => {}
            Some(Errno::AGAIN | Errno::BUSY | Errno::NOMEM) => std::thread::sleep(Duration::from_millis(1)),
            _ => {
                eprintln!("io_uring_enter failed with reads in flight ({e}): aborting");
                std::process::abort();
            }
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let Flight { ring, ops, wake_armed } = self;
        while *ops > 0 {
            wait_one(ring);
            for c in ring.completion() {
                if c.user_data() == WAKE {
                    **wake_armed = false;
                } else {
                    *ops -= 1;
                }
            }
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The armed eventfd read writes into `wake_buf`: have it complete before the buffer is freed.
        if self.wake_armed {
            Waker(self.wake.clone()).wake();
            while self.wake_armed {
                wait_one(&mut self.ring);
                if self.ring.completion().filter(|c| c.user_data() == WAKE).count() > 0 {
                    self.wake_armed = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn ring() -> Option<Uring> {
        match Uring::new(8) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}): skipping");
                None
            }
        }
    }

    #[test]
    fn reads_known_bytes_and_stops_short_at_the_end_of_the_file() {
        let Some(mut ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // Group 0: two reads inside the file; group 1: a read that runs 2288 bytes past its end.
        let groups = vec![
            ReadGroup {
                buf: vec![0u8; 8192],
                reads: vec![
                    GroupRead {
                        offset: 100,
                        range: 0..4000,
                    },
                    GroupRead {
                        offset: 5000,
                        range: 4096..8192,
                    },
                ],
                tag: 0usize,
            },
            ReadGroup {
                buf: vec![0u8; 4096],
                reads: vec![GroupRead {
                    offset: 8192,
                    range: 0..4096,
                }],
                tag: 1,
            },
        ];
        let mut it = groups.into_iter();
        let mut got: Vec<(usize, Vec<u8>, Vec<usize>)> = Vec::new();
        ring.read_groups(
            file.as_fd(),
            || it.next(),
            |g, r| got.push((g.tag, g.buf, r.into_iter().map(|r| r.unwrap()).collect())),
        );
        got.sort_by_key(|g| g.0);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].2, vec![4000, 4096]);
        assert_eq!(&got[0].1[..4000], &bytes[100..4100]);
        assert_eq!(&got[0].1[4096..], &bytes[5000..9096]);
        assert_eq!(got[1].2, vec![10_000 - 8192], "a short read at the end of the file");
        assert_eq!(&got[1].1[..1808], &bytes[8192..]);
        assert!(got[1].1[1808..].iter().all(|&b| b == 0), "nothing past the end");
    }

    /// Work queued while the thread waits for a read that cannot complete yet (a pipe nobody has written) is
    /// taken at once when the waker is called, not when that read completes.
    #[test]
    fn the_waker_brings_in_new_work_while_a_read_waits() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Mutex;
        let Some(mut ring) = ring() else { return };
        let (rd, wr) = rustix::pipe::pipe().unwrap();
        let waker = ring.waker();
        let group = |tag: usize| ReadGroup {
            buf: vec![0u8; 4],
            reads: vec![GroupRead {
                offset: u64::MAX,
                range: 0..4,
            }], // offset -1: the current position (a pipe)
            tag,
        };
        let queue = Mutex::new(vec![group(0)]);
        let written = AtomicBool::new(false);
        let taken_before_write = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                queue.lock().unwrap().push(group(1));
                waker.wake();
                std::thread::sleep(Duration::from_millis(300));
                written.store(true, Ordering::SeqCst);
                rustix::io::write(&wr, b"abcdefgh").unwrap();
            });
            let mut done_tags = Vec::new();
            while done_tags.len() < 2 {
                ring.read_groups(
                    rd.as_fd(),
                    || {
                        let g = queue.lock().unwrap().pop();
                        if g.as_ref().is_some_and(|g| g.tag == 1) && !written.load(Ordering::SeqCst) {
                            taken_before_write.store(true, Ordering::SeqCst);
                        }
                        g
                    },
                    |g, r| {
                        assert_eq!(*r[0].as_ref().unwrap(), 4);
                        done_tags.push(g.tag);
                    },
                );
            }
        });
        assert!(
            taken_before_write.load(Ordering::SeqCst),
            "the second group waited for the first read"
        );
    }

    #[test]
    fn more_groups_than_the_depth_all_come_back_and_bad_ones_unread() {
        let Some(mut ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let bytes: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // 40 groups of 3 reads through a ring of 8, plus one with a range outside its buffer.
        let mut groups: Vec<ReadGroup<Vec<u8>, usize>> = (0..40)
            .map(|g| ReadGroup {
                buf: vec![0u8; 300],
                reads: (0..3)
                    .map(|i| GroupRead {
                        offset: (g * 1000 + i * 100) as u64,
                        range: i * 100..i * 100 + 100,
                    })
                    .collect(),
                tag: g,
            })
            .collect();
        groups.push(ReadGroup {
            buf: vec![0u8; 10],
            reads: vec![GroupRead {
                offset: 0,
                range: 5..20,
            }],
            tag: 99,
        });
        let mut it = groups.into_iter();
        let mut seen = Vec::new();
        ring.read_groups(
            file.as_fd(),
            || it.next(),
            |g, r| {
                if g.tag == 99 {
                    assert_eq!(r[0].as_ref().unwrap_err().kind(), io::ErrorKind::InvalidInput);
                    assert!(g.buf.iter().all(|&b| b == 0));
                } else {
                    assert!(r.iter().all(|r| *r.as_ref().unwrap() == 100));
                    for i in 0..3 {
                        let at = g.tag * 1000 + i * 100;
                        assert_eq!(&g.buf[i * 100..i * 100 + 100], &bytes[at..at + 100], "group {}", g.tag);
                    }
                }
                seen.push(g.tag);
            },
        );
        seen.sort_unstable();
        let want: Vec<usize> = (0..40).chain([99]).collect();
        assert_eq!(seen, want);
    }
}
