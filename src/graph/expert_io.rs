//! Reading one expert's matrices from the GGUF into a cache slot, around the page cache: with O_DIRECT where the
//! file system allows it (whole 4 KiB-aligned ranges into a page-aligned buffer), else plain `pread` followed by
//! `POSIX_FADV_DONTNEED`, so that a memory cap (cgroup) sees only the slot, not a page-cache copy beside it.
//!
//! A short read, an I/O error, or a file whose identity (device, inode, size, mtime) differs from the one the
//! model was opened with is an error naming the file and the tensor; the slot is then never computed on.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::gguf::FileIdentity;

/// O_DIRECT alignment of offsets, lengths and buffer addresses.
pub const ALIGN: u64 = 4096;

/// How the expert cache reads: io_uring (several experts' reads in flight from one thread) or a pool of
/// threads each doing one expert's `pread`s at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring where the kernel allows it (the ring can be set up), else the pread pool.
    #[default]
    Auto,
    Uring,
    Pread,
}

impl std::str::FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<IoBackend, String> {
        match s {
            "auto" => Ok(IoBackend::Auto),
            "uring" | "io_uring" => Ok(IoBackend::Uring),
            "pread" => Ok(IoBackend::Pread),
            _ => Err(format!("unknown I/O backend {s:?} (auto, uring, pread)")),
        }
    }
}

/// Why an expert could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExpertReadError {
    #[error("{path}: cannot open for expert reads: {message}")]
    Open { path: PathBuf, message: String },
    #[error("io_uring is not available here ({message}); the pread backend works everywhere")]
    NoUring { message: String },
    #[error("{path}: the file changed on disk since it was opened (size, inode or modification time differ)")]
    Changed { path: PathBuf },
    #[error("{path}: reading {tensor} (expert {expert}, {len} bytes at offset {offset}): {message}")]
    Read {
        path: PathBuf,
        tensor: String,
        expert: u32,
        offset: u64,
        len: u64,
        message: String,
    },
}

/// One matrix of one expert in the file: `len` bytes at absolute offset `offset`.
#[derive(Clone, Copy, Debug)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl Extent {
    /// The 4 KiB-aligned range that covers it: (start, length).
    pub fn aligned(self) -> (u64, u64) {
        let start = self.offset / ALIGN * ALIGN;
        let end = (self.offset + self.len).div_ceil(ALIGN) * ALIGN;
        (start, end - start)
    }

    /// Bytes of a slot region that can hold it read aligned.
    pub fn region_len(self) -> usize {
        self.aligned().1 as usize
    }
}

/// How one extent is read: see [`ExpertFile::plan`].
#[derive(Clone, Copy, Debug)]
pub struct ReadPlan {
    pub ext: Extent,
    /// File offset of the aligned range.
    pub start: u64,
    /// Bytes the first read asks for (the aligned length with O_DIRECT, else the file's bytes of the range).
    pub first_len: usize,
    /// Bytes of the range that exist in the file.
    want: usize,
    /// Bytes up to the extent's end, which must be read.
    need: usize,
}

/// The opened model file for expert reads.
pub struct ExpertFile {
    file: File,
    path: PathBuf,
    direct: bool,
    identity: FileIdentity,
    len: u64,
}

impl ExpertFile {
    /// Opens `path` again (O_DIRECT if possible) and checks it is still the file the model was opened from.
    pub fn open(path: &Path, identity: FileIdentity) -> Result<ExpertFile, ExpertReadError> {
        let open_err = |e: std::io::Error| ExpertReadError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path);
        let (file, direct) = match direct {
            Ok(f) => (f, true),
            // tmpfs and some overlays refuse O_DIRECT: fall back to reads followed by DONTNEED.
            Err(_) => (File::open(path).map_err(open_err)?, false),
        };
        let meta = file.metadata().map_err(open_err)?;
        if FileIdentity::of(&meta) != identity {
            return Err(ExpertReadError::Changed {
                path: path.to_path_buf(),
            });
        }
        Ok(ExpertFile {
            file,
            path: path.to_path_buf(),
            direct,
            identity,
            len: meta.len(),
        })
    }

    /// Whether reads bypass the page cache with O_DIRECT (else they are dropped from it after each read).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, for reads issued elsewhere (the io_uring backend) that [`finish`](Self::finish) completes.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// Reads the aligned range of `ext` into `region` (page-aligned, `ext.region_len()` bytes) and returns the
    /// offset of the extent's first byte inside it. `what` names the tensor and expert for errors.
    pub fn read(&self, ext: Extent, region: &mut [u8], what: (&str, u32)) -> Result<usize, ExpertReadError> {
        let plan = self.plan(ext, region.len(), what)?;
        self.finish(&plan, region, 0, what)
    }

    /// What reading `ext` into a region of `region_len` bytes asks of the file: the first read covers
    /// `plan.start..plan.start + plan.first_len` into the region's first `first_len` bytes.
    pub fn plan(&self, ext: Extent, region_len: usize, what: (&str, u32)) -> Result<ReadPlan, ExpertReadError> {
        let (start, len) = ext.aligned();
        if region_len < len as usize {
            return Err(self.read_error(ext, what, format!("slot region of {region_len} bytes is too small")));
        }
        // The last aligned block may extend past the end of the file: only the file's bytes are read then.
        let want = len.min(self.len.saturating_sub(start)) as usize;
        Ok(ReadPlan {
            ext,
            start,
            // O_DIRECT wants aligned lengths too: read whole blocks and stop at EOF (a short final read).
            first_len: if self.direct { len as usize } else { want },
            want,
            need: (ext.offset + ext.len - start) as usize,
        })
    }

    /// Completes a read of which the first `done` bytes are already in `region` (by another backend; 0 for
    /// none): reads the rest with `pread`, checks that the extent is complete, drops the page-cache copy. Returns
    /// the offset of the extent's first byte in the region, as [`read`](Self::read).
    pub fn finish(
        &self,
        plan: &ReadPlan,
        region: &mut [u8],
        mut done: usize,
        what: (&str, u32),
    ) -> Result<usize, ExpertReadError> {
        let ReadPlan {
            ext,
            start,
            first_len: end,
            want,
            need,
        } = *plan;
        let err = |message: String| self.read_error(ext, what, message);
        while done < want {
            match self.file.read_at(&mut region[done..end], start + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.checked(err(e.to_string()))),
            }
        }
        if done < need {
            return Err(self.checked(err(format!("short read: {done} of {need} bytes"))));
        }
        if !self.direct {
            // Best effort: the data is in the slot now, the page-cache copy only hides memory from the budget.
            let _ = rustix::fs::fadvise(
                &self.file,
                start,
                std::num::NonZeroU64::new(ext.aligned().1),
                rustix::fs::Advice::DontNeed,
            );
        }
        Ok((ext.offset - start) as usize)
    }

    /// The error of a read of `plan` that failed with `e` (another backend's), as [`finish`](Self::finish)
    /// reports a failed `pread`.
    pub fn failed(&self, plan: &ReadPlan, e: std::io::Error, what: (&str, u32)) -> ExpertReadError {
        self.checked(self.read_error(plan.ext, what, e.to_string()))
    }

    fn read_error(&self, ext: Extent, (tensor, expert): (&str, u32), message: String) -> ExpertReadError {
        ExpertReadError::Read {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            expert,
            offset: ext.offset,
            len: ext.len,
            message,
        }
    }

    /// A failed read is reported as "changed on disk" when the path now names a different file or size.
    fn checked(&self, e: ExpertReadError) -> ExpertReadError {
        let now = std::fs::metadata(&self.path).map(|m| FileIdentity::of(&m));
        let fd = self.file.metadata().map(|m| FileIdentity::of(&m));
        match (now, fd) {
            (Ok(a), Ok(b)) if a == self.identity && b == self.identity => e,
            _ => ExpertReadError::Changed {
                path: self.path.clone(),
            },
        }
    }
}
