//! The streaming GGUF writer: offsets are planned up front, then the header, KV pairs and tensor infos are written,
//! then each tensor's bytes come from a callback one tensor at a time, so a model never has to be in memory whole.
//!
//! The output goes to `PATH.tmp-PID-N` in the same directory and is renamed over `PATH` only once complete; on any
//! error (or a panic in the callback) the temporary file is removed, so a failed write never leaves a partial file.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read as _, Write};
use std::path::{Path, PathBuf};

use super::reader::tensor_size;
use super::value::{Array, Value};
use super::{GgmlType, GgufError, TensorInfo, WriteError, DEFAULT_ALIGNMENT, MAX_ARRAY_LEN, MAX_DEPTH};
use super::{MAX_NAME_LEN, MAX_STRING_LEN};

/// Collects metadata and tensor descriptions, then writes a GGUF v3 file.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// An empty file description. The alignment is 32 unless a `general.alignment` u32 is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a KV pair; order is kept. A duplicate key is reported by [`GgufWriter::write`].
    ///
    /// Mind the type: an unsuffixed integer literal is an i32, but llama.cpp wants u32 for counts and ids and
    /// rejects a key of the wrong type, so write `32u32`.
    ///
    /// ```
    /// # use smallthinker::gguf::{GgmlType, GgufFile, GgufWriter, Value};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("m.gguf");
    /// let mut w = GgufWriter::new();
    /// w.add_kv("general.architecture", "smallthinker");
    /// w.add_kv("smallthinker.block_count", 32u32);
    /// w.add_kv("tokenizer.ggml.tokens", Value::string_array(vec!["a".into(), "b".into()]));
    /// w.add_tensor("output_norm.weight", &[8], GgmlType::F32).unwrap();
    /// w.write(&path, |_i, t, out| out.write_all(&vec![0u8; t.size as usize])).unwrap();
    ///
    /// let f = GgufFile::open(&path).unwrap();
    /// assert_eq!(f.get_u32("smallthinker.block_count").unwrap(), 32);
    /// assert_eq!(f.tensor_data(f.tensor("output_norm.weight").unwrap()), &[0u8; 32]);
    /// ```
    pub fn add_kv(&mut self, key: impl Into<String>, v: impl Into<Value>) {
        self.kv.push((key.into(), v.into()));
    }

    /// Appends a tensor (dims in ggml order, `ne[0]` first), checking what the reader will check.
    pub fn add_tensor(&mut self, name: impl Into<String>, dims: &[u64], ty: GgmlType) -> Result<(), GgufError> {
        let name = name.into();
        if name.len() > MAX_NAME_LEN {
            return Err(GgufError::NameTooLong {
                len: name.len(),
                tensor: name,
                max: MAX_NAME_LEN,
            });
        }
        if self.names.contains(&name) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        if dims.len() > 4 {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n_dims: dims.len() as u32,
            });
        }
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
        if n.is_none() || dims.iter().any(|&d| d > i64::MAX as u64) {
            return Err(GgufError::DimOverflow {
                tensor: name,
                dims: dims.to_vec(),
            });
        }
        let size = tensor_size(&name, dims, ty)?;
        self.names.insert(name.clone());
        // The offset is planned in write(), once the alignment is known.
        self.tensors.push(TensorInfo {
            name,
            dims: dims.to_vec(),
            ty,
            offset: 0,
            size,
        });
        Ok(())
    }

    /// The alignment the file will use, or the reason `general.alignment` is unusable.
    pub fn alignment(&self) -> Result<u64, GgufError> {
        match self.kv.iter().find(|(k, _)| k == "general.alignment").map(|(_, v)| v) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some(Value::U32(a)) => Err(GgufError::BadAlignment {
                alignment: u64::from(*a),
            }),
            Some(v) => Err(GgufError::WrongType {
                key: "general.alignment".into(),
                expected: "u32".into(),
                got: v.type_label(),
            }),
        }
    }

    /// The tensor infos with the offsets they will have in the file.
    pub fn tensor_infos(&self) -> Result<Vec<TensorInfo>, GgufError> {
        let alignment = self.alignment()?;
        let mut offset = 0u64;
        let mut out = self.tensors.clone();
        for t in &mut out {
            t.offset = offset;
            offset = offset
                .checked_add(t.size.div_ceil(alignment) * alignment)
                .ok_or_else(|| GgufError::DimOverflow {
                    tensor: t.name.clone(),
                    dims: t.dims.clone(),
                })?;
        }
        Ok(out)
    }

    /// Validates the description, then writes the file. `data(i, info, out)` must write exactly `info.size` bytes
    /// of tensor `i` (in `add_tensor` order) to `out`.
    pub fn write<E>(
        self,
        path: &Path,
        mut data: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> Result<(), E>,
    ) -> Result<(), WriteError<E>> {
        let alignment = self.alignment()?;
        let infos = self.tensor_infos()?;
        let mut seen = HashSet::new();
        for (k, v) in &self.kv {
            if k.is_empty() {
                return Err(GgufError::BadValue {
                    key: k.clone(),
                    why: "empty key".into(),
                }
                .into());
            }
            if !seen.insert(k.as_str()) {
                return Err(GgufError::DuplicateKey { key: k.clone() }.into());
            }
            check_value(k, v)?;
        }

        let tmp = TempFile::create(path)?;
        let io_err = |source| GgufError::Io {
            path: tmp.path.clone(),
            source,
        };
        let mut out = Counting {
            inner: BufWriter::with_capacity(1 << 20, &tmp.file),
            n: 0,
        };
        self.write_header(&mut out, &infos).map_err(io_err)?;
        pad(&mut out, alignment).map_err(io_err)?;
        for (i, t) in infos.iter().enumerate() {
            let start = out.n;
            data(i, t, &mut out).map_err(|error| WriteError::Data {
                tensor: t.name.clone(),
                error,
            })?;
            let written = out.n - start;
            if written != t.size {
                return Err(WriteError::SizeMismatch {
                    tensor: t.name.clone(),
                    expected: t.size,
                    written,
                });
            }
            pad(&mut out, alignment).map_err(io_err)?;
        }
        out.inner.flush().map_err(io_err)?;
        drop(out);
        tmp.persist(path)?;
        Ok(())
    }

    fn write_header(&self, out: &mut impl Write, infos: &[TensorInfo]) -> io::Result<()> {
        out.write_all(b"GGUF")?;
        out.write_all(&3u32.to_le_bytes())?;
        out.write_all(&(infos.len() as u64).to_le_bytes())?;
        out.write_all(&(self.kv.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kv {
            write_str(out, k)?;
            out.write_all(&v.value_type().id().to_le_bytes())?;
            write_value(out, v)?;
        }
        for t in infos {
            write_str(out, &t.name)?;
            out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.write_all(&d.to_le_bytes())?;
            }
            out.write_all(&t.ty.id().to_le_bytes())?;
            out.write_all(&t.offset.to_le_bytes())?;
        }
        Ok(())
    }
}

/// Rejects what the reader would reject: over-long strings and arrays, too deep nesting.
fn check_value(key: &str, v: &Value) -> Result<(), GgufError> {
    fn check_str(key: &str, s: &str) -> Result<(), GgufError> {
        if s.len() as u64 > MAX_STRING_LEN {
            return Err(GgufError::BadValue {
                key: key.into(),
                why: format!("string of {} bytes", s.len()),
            });
        }
        Ok(())
    }
    fn check_arr(key: &str, a: &Array, depth: usize) -> Result<(), GgufError> {
        if depth > MAX_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.into(),
                max: MAX_DEPTH,
            });
        }
        if a.len() as u64 > MAX_ARRAY_LEN {
            return Err(GgufError::BadValue {
                key: key.into(),
                why: format!("array of {} elements", a.len()),
            });
        }
        match a {
            Array::String(v) => v.iter().try_for_each(|s| check_str(key, s)),
            Array::Array(v) => v.iter().try_for_each(|a| check_arr(key, a, depth + 1)),
            _ => Ok(()),
        }
    }
    match v {
        Value::String(s) => check_str(key, s),
        Value::Array(a) => check_arr(key, a, 1),
        _ => Ok(()),
    }
}

fn write_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn write_value(out: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => out.write_all(&[*x]),
        Value::I8(x) => out.write_all(&x.to_le_bytes()),
        Value::U16(x) => out.write_all(&x.to_le_bytes()),
        Value::I16(x) => out.write_all(&x.to_le_bytes()),
        Value::U32(x) => out.write_all(&x.to_le_bytes()),
        Value::I32(x) => out.write_all(&x.to_le_bytes()),
        Value::F32(x) => out.write_all(&x.to_le_bytes()),
        Value::Bool(x) => out.write_all(&[u8::from(*x)]),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => write_array(out, a),
        Value::U64(x) => out.write_all(&x.to_le_bytes()),
        Value::I64(x) => out.write_all(&x.to_le_bytes()),
        Value::F64(x) => out.write_all(&x.to_le_bytes()),
    }
}

fn write_array(out: &mut impl Write, a: &Array) -> io::Result<()> {
    fn each<T: Copy, const N: usize>(out: &mut impl Write, v: &[T], f: fn(T) -> [u8; N]) -> io::Result<()> {
        v.iter().try_for_each(|&x| out.write_all(&f(x)))
    }
    out.write_all(&a.elem_type().id().to_le_bytes())?;
    out.write_all(&(a.len() as u64).to_le_bytes())?;
    match a {
        Array::U8(v) => out.write_all(v),
        Array::I8(v) => each(out, v, i8::to_le_bytes),
        Array::U16(v) => each(out, v, u16::to_le_bytes),
        Array::I16(v) => each(out, v, i16::to_le_bytes),
        Array::U32(v) => each(out, v, u32::to_le_bytes),
        Array::I32(v) => each(out, v, i32::to_le_bytes),
        Array::F32(v) => each(out, v, f32::to_le_bytes),
        Array::Bool(v) => each(out, v, |b| [u8::from(b)]),
        Array::String(v) => v.iter().try_for_each(|s| write_str(out, s)),
        Array::Array(v) => v.iter().try_for_each(|a| write_array(out, a)),
        Array::U64(v) => each(out, v, u64::to_le_bytes),
        Array::I64(v) => each(out, v, i64::to_le_bytes),
        Array::F64(v) => each(out, v, f64::to_le_bytes),
    }
}

/// Zero bytes up to the next multiple of `alignment` (alignments are absolute file offsets, as in gguf.cpp).
fn pad<W: Write>(out: &mut Counting<W>, alignment: u64) -> io::Result<()> {
    let n = out.n.div_ceil(alignment) * alignment - out.n;
    io::copy(&mut io::repeat(0).take(n), out)?;
    Ok(())
}

/// Counts the bytes written through it, to check each tensor's size and place the padding.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A temporary file next to the target, removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl TempFile {
    fn create(target: &Path) -> Result<TempFile, GgufError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out.gguf".into());
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut n = 0u32;
        loop {
            let path = dir.join(format!("{name}.tmp-{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        keep: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(source) => return Err(GgufError::Io { path, source }),
            }
        }
    }

    fn persist(mut self, target: &Path) -> Result<(), GgufError> {
        self.file.sync_all().map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        fs::rename(&self.path, target).map_err(|source| GgufError::Io {
            path: target.to_path_buf(),
            source,
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}
