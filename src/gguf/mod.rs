//! GGUF v3: a defensive memory-mapped reader and a streaming writer, in pure Rust (no ggml).
//!
//! Layout (little-endian; gguf.h, and `docs/gguf-and-llamacpp-compat.md` §4):
//! `"GGUF" u32 version  i64 n_tensors  i64 n_kv`, then `n_kv × {string key; u32 type; value}`, then
//! `n_tensors × {string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type; u64 offset}`, zero padding to the alignment,
//! and the data section: each tensor at its offset (relative to the section), padded to the alignment.
//! Dims are in ggml order (`ne[0]`, the fastest-varying dimension, first): the reverse of PyTorch/numpy.
//!
//! The reader validates everything against the file's real size before it allocates or slices (see `reader.rs`);
//! tensor data is never copied: [`GgufFile::tensor_data`] is a slice of the map.
mod error;
mod reader;
mod types;
mod value;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use error::{GgufError, WriteError};
pub use reader::{parse, Header};
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

use crate::ggml::mmap::{map_readonly, Mmap};

/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest string gguf.cpp reads (`GGUF_MAX_STRING_LENGTH`).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most array elements (and tensors, and KV pairs) gguf.cpp and gguf-py read (`GGUF_MAX_ARRAY_ELEMENTS`).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Deepest array nesting read or written. gguf.cpp allows none, gguf-py any; candle caps at 64 and so do we, so that
/// recursion stays shallow.
pub const MAX_DEPTH: usize = 64;
/// Longest tensor name: ggml's `GGML_MAX_NAME` is 64 including the terminating NUL.
pub const MAX_NAME_LEN: usize = 63;

/// One tensor's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in ggml order (`ne[0]` first), as many dims as the file stores.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data relative to the data section.
    pub offset: u64,
    /// Size of the data in bytes (without padding).
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file, memory-mapped and validated.
pub struct GgufFile {
    path: PathBuf,
    header: Header,
    mmap: Mmap,
    identity: FileIdentity,
}

/// What identifies the file's contents as opened: device, inode, size and modification time. A later open of
/// the same path with a different identity means the file was replaced or rewritten in the meantime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

impl GgufFile {
    /// Opens, maps and validates `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let identity = FileIdentity::of(&file.metadata().map_err(io)?);
        let mmap = map_readonly(&file).map_err(io)?;
        let header = parse(&mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            header,
            mmap,
            identity,
        })
    }

    /// The file's identity when it was opened (see [`FileIdentity`]).
    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    /// Prefaults only the pages of these tensors (rounded out to whole pages), and turns off readahead for the
    /// rest of the map: with an expert cache the expert tensors are read with O_DIRECT, and faulting them in
    /// through the map (or its readahead) would fill the page cache behind the memory budget's back.
    pub fn prefault_only(&self, tensors: &[&TensorInfo]) -> std::io::Result<()> {
        use memmap2::Advice;
        self.mmap.advise(Advice::Random)?;
        const PAGE: usize = 4096;
        for t in tensors {
            let start = self.header.data_offset.saturating_add(t.offset) as usize;
            let end = start.saturating_add(t.size as usize).min(self.mmap.len());
            let (a, b) = (start / PAGE * PAGE, end.div_ceil(PAGE) * PAGE);
            let b = b.min(self.mmap.len());
            if b > a {
                self.mmap
                    .advise_range(Advice::PopulateRead, a, b - a)
                    .or_else(|_| self.mmap.advise_range(Advice::WillNeed, a, b - a))?;
            }
        }
        Ok(())
    }

    /// Drops the file's pages from the page cache, except those mapped by a process (the kernel keeps them). Once
    /// the dense tensors are prefaulted, the rest is what loading left behind (the sources of repacked copies,
    /// readahead): a second copy that a memory cap (a cgroup counts the page cache) charges to the process.
    pub fn drop_page_cache(&self) -> std::io::Result<()> {
        let f = std::fs::File::open(&self.path)?;
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }

    /// Drops this process's mapped pages of these tensors (they stay readable, from the file); used once their
    /// data lives in a repacked copy.
    pub fn release(&self, tensors: &[&TensorInfo]) -> std::io::Result<()> {
        for t in tensors {
            let start = self.header.data_offset.saturating_add(t.offset) as usize;
            crate::ggml::mmap::release_range(&self.mmap, start, t.size as usize)?;
        }
        Ok(())
    }

    /// Absolute file offset of a tensor's data.
    pub fn tensor_file_offset(&self, t: &TensorInfo) -> u64 {
        self.header.data_offset.saturating_add(t.offset)
    }

    /// Maps every page of the tensor data into the process now (MADV_POPULATE_READ, falling back to
    /// MADV_WILLNEED readahead on kernels before 5.14), as llama.cpp's MAP_POPULATE does at load: otherwise the
    /// first evaluations pay a page fault per page of weights they touch. Only worth it before running a model.
    pub fn prefault(&self) -> std::io::Result<()> {
        use memmap2::Advice;
        // The whole map: the header is a few pages, and advise_range would want a page-aligned offset.
        self.mmap
            .advise(Advice::PopulateRead)
            .or_else(|_| self.mmap.advise(Advice::WillNeed))
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Data alignment (`general.alignment`, or 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// File size in bytes.
    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// The parsed header (metadata and tensor infos).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.get(key)
    }

    fn typed<T>(&self, key: &str, expected: &str, f: impl Fn(&Value) -> Option<T>) -> Result<T, GgufError> {
        let v = self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })?;
        f(v).ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            expected: expected.into(),
            got: v.type_label(),
        })
    }

    /// The u32 value of `key`; `MissingKey` or `WrongType` (no integer conversions, like llama.cpp's loader).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.typed(key, "u32", Value::as_u32)
    }

    /// The f32 value of `key`.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.typed(key, "f32", Value::as_f32)
    }

    /// The bool value of `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.typed(key, "bool", Value::as_bool)
    }

    /// The string value of `key`.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })?;
        v.as_str().ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            expected: "str".into(),
            got: v.type_label(),
        })
    }

    /// The array of strings at `key`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })?;
        v.as_str_array().ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            expected: "[str]".into(),
            got: v.type_label(),
        })
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The bytes of `t`, a slice of the map. `t` must come from this file (its range was checked at open);
    /// a `TensorInfo` from elsewhere whose range lies outside this file panics.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.header.data_offset.saturating_add(t.offset);
        let range = start as usize..start.saturating_add(t.size) as usize;
        self.mmap
            .get(range)
            .unwrap_or_else(|| panic!("tensor '{}' is not in {}", t.name, self.path.display()))
    }
}
