//! TEMPORARY stand-in for `crate::gguf` (Value, GgufWriter) with the agreed API, until the gguf branch lands.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::gguf::GgmlType;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    Strings(Vec<String>),
    I32(Vec<i32>),
}

impl Value {
    pub fn string_array(v: Vec<String>) -> Value {
        Value::Array(Array::Strings(v))
    }
    pub fn i32_array(v: Vec<i32>) -> Value {
        Value::Array(Array::I32(v))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::U32(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::I32(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::F32(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.into())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::String(v)
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    #[error(transparent)]
    Gguf(GgufError),
    #[error("tensor data callback failed")]
    Callback(E),
}

#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    next: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    let (ty, bytes): (u32, Vec<u8>) = match v {
        Value::U32(x) => (4, x.to_le_bytes().into()),
        Value::I32(x) => (5, x.to_le_bytes().into()),
        Value::F32(x) => (6, x.to_le_bytes().into()),
        Value::Bool(x) => (7, vec![*x as u8]),
        Value::String(s) => {
            let mut b = vec![];
            put_str(&mut b, s);
            (8, b)
        }
        Value::Array(Array::Strings(v)) => {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v {
                put_str(&mut b, s);
            }
            (9, b)
        }
        Value::Array(Array::I32(v)) => {
            let mut b = 5u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for x in v {
                b.extend_from_slice(&x.to_le_bytes());
            }
            (9, b)
        }
        _ => unimplemented!("stand-in writer"),
    };
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&bytes);
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }
    pub fn add_kv(&mut self, key: &str, v: impl Into<Value>) {
        self.kv.push((key.into(), v.into()));
    }
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> Result<(), GgufError> {
        let size = ty
            .tensor_bytes(dims)
            .ok_or_else(|| GgufError::Invalid(format!("{name}: bad dims")))?;
        self.tensors.push(TensorInfo {
            name: name.into(),
            dims: dims.into(),
            ty,
            offset: self.next,
            size,
        });
        self.next += size.div_ceil(32) * 32;
        Ok(())
    }
    pub fn write<E>(
        &self,
        path: &Path,
        mut f: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> Result<(), E>,
    ) -> Result<(), WriteError<E>> {
        let tmp: PathBuf = path.with_extension("gguf.tmp");
        let r = (|| {
            let mut h = b"GGUF".to_vec();
            h.extend_from_slice(&3u32.to_le_bytes());
            h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            h.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
            for (k, v) in &self.kv {
                put_str(&mut h, k);
                put_value(&mut h, v);
            }
            for t in &self.tensors {
                put_str(&mut h, &t.name);
                h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
                for d in &t.dims {
                    h.extend_from_slice(&d.to_le_bytes());
                }
                h.extend_from_slice(&t.ty.id().to_le_bytes());
                h.extend_from_slice(&t.offset.to_le_bytes());
            }
            while h.len() % 32 != 0 {
                h.push(0);
            }
            let file = std::fs::File::create(&tmp).map_err(|e| WriteError::Gguf(e.into()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 22, file);
            w.write_all(&h).map_err(|e| WriteError::Gguf(e.into()))?;
            for (i, t) in self.tensors.iter().enumerate() {
                let mut c = Counter { inner: &mut w, n: 0 };
                f(i, t, &mut c).map_err(WriteError::Callback)?;
                if c.n != t.size {
                    return Err(WriteError::Gguf(GgufError::Invalid(format!(
                        "{}: wrote {} of {}",
                        t.name, c.n, t.size
                    ))));
                }
                let pad = (t.size.div_ceil(32) * 32 - t.size) as usize;
                w.write_all(&vec![0; pad]).map_err(|e| WriteError::Gguf(e.into()))?;
            }
            w.flush().map_err(|e| WriteError::Gguf(e.into()))?;
            std::fs::rename(&tmp, path).map_err(|e| WriteError::Gguf(e.into()))
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}

struct Counter<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}
impl Write for Counter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
