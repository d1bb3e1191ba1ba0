//! The io_uring backend of the expert cache: one thread owns one ring ([`crate::ggml::uring`]) with room for
//! `3 x io_threads` reads, i.e. `io_threads` experts in flight. It takes queued jobs while there is room,
//! submits each expert's three matrix reads at once, and marks each expert ready as soon as its own three reads
//! have completed, not when the batch has. What a read means stays with [`ExpertFile`]: the ring only issues the
//! first read of each matrix; a short one is finished (and every read checked, and dropped from the page cache
//! when not O_DIRECT) by [`ExpertFile::finish`], so errors and their wording are those of the pread backend.

use std::io::ErrorKind;
use std::ops::Range;
use std::sync::RwLockWriteGuard;

use super::expert_cache::{CacheCore, Job};
use super::expert_io::{ExpertFile, ExpertReadError, ReadPlan};
use crate::ggml::rows::AlignedBytes;
use crate::ggml::uring::{GroupRead, ReadGroup, ReadResults, Uring};

/// What a group of reads is for: the job, and per matrix its plan and slot region.
struct Tag {
    job: Job,
    plans: [ReadPlan; 3],
    regions: [Range<usize>; 3],
}

type Group<'c> = ReadGroup<RwLockWriteGuard<'c, AlignedBytes>, Tag>;

/// The I/O thread's loop: until the cache is dropped, runs whatever is queued.
pub(super) fn run(core: &CacheCore, mut ring: Uring) {
    while core.wait_for_job() {
        ring.read_groups(core.file.fd(), || next(core), |g, r| finish(core, g, r));
    }
}

/// The next queued job as a group of three reads, holding its slot's write lock until they complete.
fn next(core: &CacheCore) -> Option<Group<'_>> {
    loop {
        let job = core.pop_job()?;
        // A slot being loaded is neither pinned nor in use, so a reader still holding it lets go soon.
        let buf = core.slots[job.slot].write().unwrap_or_else(|p| p.into_inner());
        let regions = core.regions(buf.as_slice());
        let x = core.extents[job.key];
        let e = (job.key % core.n_expert) as u32;
        let names = &core.names[job.key / core.n_expert];
        let plan = |i: usize, ext| core.file.plan(ext, regions[i].len(), (&names[i], e));
        let plans = match (plan(0, x.gate), plan(1, x.up), plan(2, x.down)) {
            (Ok(g), Ok(u), Ok(d)) => [g, u, d],
            (g, u, d) => {
                drop(buf);
                let err = [g, u, d].into_iter().find_map(Result::err).expect("one failed");
                core.complete(job, Err(err));
                continue;
            }
        };
        let reads = (0..3)
            .map(|i| GroupRead {
                offset: plans[i].start,
                range: regions[i].start..regions[i].start + plans[i].first_len,
            })
            .collect();
        return Some(ReadGroup {
            buf,
            reads,
            tag: Tag { job, plans, regions },
        });
    }
}

/// One job's reads have completed: finish short ones, check, release the slot, then mark it ready.
fn finish(core: &CacheCore, g: Group<'_>, results: ReadResults) {
    let ReadGroup { mut buf, tag, .. } = g;
    let Tag { job, plans, regions } = tag;
    let e = (job.key % core.n_expert) as u32;
    let names = &core.names[job.key / core.n_expert];
    let bytes = buf.as_mut_slice();
    let r = (|| {
        let mut total = 0u64;
        for (i, res) in results.into_iter().enumerate() {
            let what = (names[i].as_str(), e);
            let region = &mut bytes[regions[i].clone()];
            complete_read(&core.file, &plans[i], region, res, what)?;
            total += plans[i].ext.aligned().1;
        }
        core.prepare(job.key, bytes);
        Ok(total)
    })();
    drop(buf);
    core.complete(job, r);
}

/// The rest of one matrix's read after the ring's first read returned `res`.
fn complete_read(
    file: &ExpertFile,
    plan: &ReadPlan,
    region: &mut [u8],
    res: std::io::Result<usize>,
    what: (&str, u32),
) -> Result<usize, ExpertReadError> {
    match res {
        Ok(n) => file.finish(plan, region, n, what),
        // Transient: read it again, the pread way.
        Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {
            file.finish(plan, region, 0, what)
        }
        Err(e) => Err(file.failed(plan, e, what)),
    }
}
