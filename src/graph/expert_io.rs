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

/// Why an expert could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExpertReadError {
    #[error("{path}: cannot open for expert reads: {message}")]
    Open { path: PathBuf, message: String },
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

    /// Reads the aligned range of `ext` into `region` (page-aligned, `ext.region_len()` bytes) and returns the
    /// offset of the extent's first byte inside it. `what` names the tensor and expert for errors.
    pub fn read(&self, ext: Extent, region: &mut [u8], what: (&str, u32)) -> Result<usize, ExpertReadError> {
        let (start, len) = ext.aligned();
        let err = |message: String| self.read_error(ext, what, message);
        if region.len() < len as usize {
            return Err(err(format!("slot region of {} bytes is too small", region.len())));
        }
        // The last aligned block may extend past the end of the file: only the file's bytes are read then.
        let want = len.min(self.len.saturating_sub(start)) as usize;
        let need = (ext.offset + ext.len - start) as usize;
        let mut done = 0usize;
        while done < want {
            // O_DIRECT wants aligned lengths too: read whole blocks and stop at EOF (a short final read).
            let end = if self.direct { len as usize } else { want };
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
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::DontNeed,
            );
        }
        Ok((ext.offset - start) as usize)
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
