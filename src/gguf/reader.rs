//! The GGUF parser: every count, length, offset and size is checked against the bytes that are really there before
//! anything is allocated or sliced, so a hostile file gets an error, never a panic or a huge allocation.
//!
//! Checks follow gguf.cpp (`gguf_init_from_reader`): magic, version 2 or 3, non-negative counts, non-empty unique
//! keys, `general.alignment` a u32 power of two, unique tensor names under 64 bytes, at most 4 dims, element counts
//! within i64, known types, whole blocks per row, and offsets equal to the padded running sum. On top of that every
//! tensor's bytes must lie inside the file, and strings must be UTF-8 (gguf-py decodes them as such).

use std::collections::HashMap;

use super::value::{Array, Value, ValueType};
use super::{
    GgmlType, GgufError, TensorInfo, DEFAULT_ALIGNMENT, MAX_ARRAY_LEN, MAX_DEPTH, MAX_NAME_LEN, MAX_STRING_LEN,
};

/// Everything in a GGUF file except the tensor data: what [`parse`] returns.
#[derive(Clone, Debug)]
pub struct Header {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl Header {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

/// Parses a whole GGUF file held in `bytes` (tensor data included, so that its ranges can be checked).
pub fn parse(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };

    let magic = c
        .take(4, || "magic".into())
        .map_err(|_| GgufError::BadMagic { found: bytes.to_vec() })?;
    if magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic.to_vec() });
    }
    let version = c.u32(|| "header: version".into())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = c.u64(|| "header: tensor count".into())? as i64;
    let n_kv = c.u64(|| "header: KV count".into())? as i64;
    // Each count is checked where its section starts, against the bytes left there, so a file cut inside the KV
    // section reports the cut there rather than an impossible tensor count.
    let n_kv = c.check_count(n_kv, 14, || "KV count".into())?;

    // Capacities are capped: a count passed the checks above, but the entries may still turn out shorter.
    let mut metadata = Vec::with_capacity(n_kv.min(1024));
    let mut key_index = HashMap::with_capacity(n_kv.min(1024));
    for index in 0..n_kv as u64 {
        let key = c.string(&|| format!("KV pair {index}: key"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index });
        }
        if key_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        let id = c.u32(|| format!("key '{key}': value type"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType { key: key.clone(), id })?;
        let value = c.value(&key, ty)?;
        key_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(GgufError::BadAlignment {
                alignment: u64::from(*a),
            })
        }
        Some(v) => {
            return Err(GgufError::WrongType {
                key: "general.alignment".into(),
                expected: "u32".into(),
                got: v.type_label(),
            })
        }
    };

    let n_tensors = c.check_count(n_tensors, 24, || "tensor count".into())?;
    let mut tensors = Vec::with_capacity(n_tensors.min(1024));
    let mut tensor_index = HashMap::with_capacity(n_tensors.min(1024));
    for i in 0..n_tensors {
        let t = c.tensor_info(i)?;
        if tensor_index.contains_key(&t.name) {
            return Err(GgufError::DuplicateTensor { tensor: t.name });
        }
        tensor_index.insert(t.name.clone(), tensors.len());
        tensors.push(t);
    }

    // The data section starts at the next multiple of the alignment (gguf.cpp seeks there only if there are tensors).
    let file_size = bytes.len() as u64;
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    if !tensors.is_empty() && data_offset > file_size {
        return Err(GgufError::Truncated {
            what: "padding before the data section".into(),
            offset: c.pos,
            needed: data_offset - c.pos,
            available: file_size - c.pos,
        });
    }
    let mut expected = 0u64;
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedOffset {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        if t.offset != expected {
            return Err(GgufError::OffsetMismatch {
                tensor: t.name.clone(),
                offset: t.offset,
                expected,
            });
        }
        let out_of_range = || GgufError::TensorOutOfRange {
            tensor: t.name.clone(),
            offset: data_offset.saturating_add(t.offset),
            size: t.size,
            file_size,
        };
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.size))
            .ok_or_else(out_of_range)?;
        if end > file_size {
            return Err(out_of_range());
        }
        // Cannot overflow: end <= file_size, and the padding adds less than the alignment (at most 2^31).
        expected = t.offset + t.size.div_ceil(alignment) * alignment;
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        key_index,
        tensor_index,
    })
}

/// A read position in the file; every read checks the bytes left first.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.bytes.len() as u64 - self.pos
    }

    /// The next `n` bytes. `what` names the field for the error and is only built on failure.
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        // In range: pos + n <= len, both fit in usize since they index a slice.
        let s = &self.bytes[self.pos as usize..(self.pos + n) as usize];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A header count (stored as i64), bounded by what the rest of the file could hold at `min_entry` bytes each
    /// (and by gguf.cpp's cap), so that no allocation sized by it can exceed the file.
    fn check_count(&self, n: i64, min_entry: u64, what: impl Fn() -> String) -> Result<usize, GgufError> {
        let max = (self.remaining() / min_entry).min(MAX_ARRAY_LEN);
        if n < 0 || n as u64 > max {
            return Err(GgufError::TooMany {
                what: what(),
                count: i128::from(n),
                max,
                remaining: self.remaining(),
            });
        }
        Ok(n as usize)
    }

    /// A u64-length-prefixed UTF-8 string.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("{}: string length", what()))?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::StringTooLong {
                what: what(),
                len,
                max: MAX_STRING_LEN,
            });
        }
        if len > self.remaining() {
            return Err(GgufError::StringPastEnd {
                what: what(),
                len,
                offset: self.pos,
                available: self.remaining(),
            });
        }
        let offset = self.pos;
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::InvalidUtf8 { what: what(), offset })
    }

    fn value(&mut self, key: &str, ty: ValueType) -> Result<Value, GgufError> {
        let what = || format!("key '{key}': value");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            // Any non-zero byte is true, as in gguf.cpp.
            ValueType::Bool => Value::Bool(self.array::<1>(what)?[0] != 0),
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => Value::Array(self.array_value(key, 1)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    /// An array body (element type, count, elements); `depth` is 1 for a top-level array.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array, GgufError> {
        if depth > MAX_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.into(),
                max: MAX_DEPTH,
            });
        }
        let id = self.u32(|| format!("key '{key}': array element type"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType { key: key.into(), id })?;
        let count = self.u64(|| format!("key '{key}': array length"))?;
        let max = (self.remaining() / ty.min_size()).min(MAX_ARRAY_LEN);
        if count > max {
            return Err(GgufError::TooMany {
                what: format!("array length of key '{key}'"),
                count: i128::from(count),
                max,
                remaining: self.remaining(),
            });
        }
        let n = count as usize;
        if let Some(size) = ty.fixed_size() {
            // One bounds check for the whole run of fixed-size elements, then plain decoding.
            let raw = self.take(count * size, || format!("key '{key}': array data"))?;
            return Ok(decode_fixed(ty, raw));
        }
        if ty == ValueType::String {
            let mut v = Vec::with_capacity(n);
            for i in 0..count {
                v.push(self.string(&|| format!("key '{key}': array element {i}"))?);
            }
            return Ok(Array::String(v));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..count {
            v.push(self.array_value(key, depth + 1)?);
        }
        Ok(Array::Array(v))
    }

    /// Tensor info `i`: name, dims, type, offset; the size is derived and checked here.
    fn tensor_info(&mut self, i: usize) -> Result<TensorInfo, GgufError> {
        let name = self.string(&|| format!("tensor info {i}: name"))?;
        if name.len() > MAX_NAME_LEN {
            return Err(GgufError::NameTooLong {
                len: name.len(),
                tensor: name,
                max: MAX_NAME_LEN,
            });
        }
        let n_dims = self.u32(|| format!("tensor '{name}': dimension count"))?;
        if n_dims > 4 {
            return Err(GgufError::TooManyDims { tensor: name, n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for j in 0..n_dims {
            dims.push(self.u64(|| format!("tensor '{name}': dimension {j}"))?);
        }
        // ggml counts elements in i64 (gguf.cpp rejects negative dims and products past INT64_MAX).
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
        if n_elements.is_none() || dims.iter().any(|&d| d > i64::MAX as u64) {
            return Err(GgufError::DimOverflow { tensor: name, dims });
        }
        let id = self.u32(|| format!("tensor '{name}': type"))?;
        let ty = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.clone(),
            id,
        })?;
        let size = tensor_size(&name, &dims, ty)?;
        let offset = self.u64(|| format!("tensor '{name}': data offset"))?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        })
    }
}

/// Byte size of a tensor, checking whole blocks per row and overflow (shared with the writer).
pub(super) fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % ty.block_size() != 0 {
        return Err(GgufError::PartialBlock {
            tensor: name.into(),
            ty,
            ne0,
            block: ty.block_size(),
        });
    }
    ty.tensor_bytes(dims)
        .filter(|&s| s <= i64::MAX as u64)
        .ok_or_else(|| GgufError::DimOverflow {
            tensor: name.into(),
            dims: dims.to_vec(),
        })
}

/// Decodes `raw` (a whole number of `ty` elements, little-endian) into a typed array.
fn decode_fixed(ty: ValueType, raw: &[u8]) -> Array {
    fn le<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
            .collect()
    }
    match ty {
        ValueType::U8 => Array::U8(raw.to_vec()),
        ValueType::I8 => Array::I8(le(raw, i8::from_le_bytes)),
        ValueType::U16 => Array::U16(le(raw, u16::from_le_bytes)),
        ValueType::I16 => Array::I16(le(raw, i16::from_le_bytes)),
        ValueType::U32 => Array::U32(le(raw, u32::from_le_bytes)),
        ValueType::I32 => Array::I32(le(raw, i32::from_le_bytes)),
        ValueType::F32 => Array::F32(le(raw, f32::from_le_bytes)),
        ValueType::Bool => Array::Bool(raw.iter().map(|&b| b != 0).collect()),
        ValueType::U64 => Array::U64(le(raw, u64::from_le_bytes)),
        ValueType::I64 => Array::I64(le(raw, i64::from_le_bytes)),
        ValueType::F64 => Array::F64(le(raw, f64::from_le_bytes)),
        ValueType::String | ValueType::Array => unreachable!("decode_fixed is only called for fixed-size types"),
    }
}
