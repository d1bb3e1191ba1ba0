//! Errors of the GGUF reader and writer. Every variant names the section, key or tensor at fault.

use std::path::PathBuf;

use super::GgmlType;

/// Why a GGUF file could not be read, or a GGUF description could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Opening, mapping, writing or renaming a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The first four bytes are not "GGUF".
    #[error("not a GGUF file: magic is {:?}, expected \"GGUF\"", String::from_utf8_lossy(found))]
    BadMagic {
        /// The bytes found (fewer than 4 if the file is that short).
        found: Vec<u8>,
    },
    /// A version other than 2 or 3.
    #[error("unsupported GGUF version {version} (only 2 and 3 are read){}", endian_hint(*version))]
    UnsupportedVersion {
        /// The version field as read (little-endian).
        version: u32,
    },
    /// The file ends inside a field.
    #[error("file truncated: {what} needs {needed} bytes at offset {offset}, but only {available} remain")]
    Truncated {
        /// The field being read ("header: tensor count", "key 'general.name': value", ...).
        what: String,
        /// File offset of the field.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },
    /// A count that cannot fit in what is left of the file (or is negative, or above gguf.cpp's 2^30 cap).
    #[error("{what} is {count}, impossible: at most {max} fit in the {remaining} bytes left (truncated or corrupt?)")]
    TooMany {
        /// The count field ("tensor count", "KV count", "array length of key 'x'").
        what: String,
        /// The count as read (i64 counts are shown as read, so negatives show as negative).
        count: i128,
        /// The largest count the file could hold here.
        max: u64,
        /// Bytes left in the file where the entries start.
        remaining: u64,
    },
    /// A string longer than gguf.cpp's cap of 2^30 bytes.
    #[error("{what}: string length {len} exceeds the maximum of {max} bytes")]
    StringTooLong {
        /// The field.
        what: String,
        /// The declared length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A string whose declared length runs past the end of the file.
    #[error("{what}: string length {len} at offset {offset} runs past the end of the file ({available} bytes remain)")]
    StringPastEnd {
        /// The field.
        what: String,
        /// The declared length.
        len: u64,
        /// Offset of the string bytes.
        offset: u64,
        /// Bytes left from `offset`.
        available: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what}: string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        what: String,
        /// Offset of the string bytes.
        offset: u64,
    },
    /// A metadata key of length 0 (gguf.cpp rejects them).
    #[error("KV pair {index} has an empty key")]
    EmptyKey {
        /// Index of the KV pair.
        index: u64,
    },
    /// A value type id outside 0..=12.
    #[error("key '{key}': unknown value type id {id}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The id found.
        id: u32,
    },
    /// Arrays nested deeper than [`super::MAX_DEPTH`].
    #[error("key '{key}': arrays nested deeper than {max} levels")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// The cap.
        max: usize,
    },
    /// A key that appears twice.
    #[error("duplicate key '{key}'")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment is {alignment}, which is not a non-zero power of two")]
    BadAlignment {
        /// The value.
        alignment: u64,
    },
    /// A tensor name of 64 bytes or more (ggml's `GGML_MAX_NAME` includes the NUL).
    #[error("tensor name '{tensor}' is {len} bytes long; the maximum is {max}")]
    NameTooLong {
        /// The name.
        tensor: String,
        /// Its length in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// A tensor name that appears twice.
    #[error("duplicate tensor '{tensor}'")]
    DuplicateTensor {
        /// The name.
        tensor: String,
    },
    /// More than 4 dimensions.
    #[error("tensor '{tensor}' has {n_dims} dimensions; ggml allows at most 4")]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// The dimension count found.
        n_dims: u32,
    },
    /// A dimension above i64::MAX, or an element count or byte size that overflows.
    #[error("tensor '{tensor}': dimensions {dims:?} overflow (element count or byte size above i64::MAX)")]
    DimOverflow {
        /// The tensor.
        tensor: String,
        /// Its dimensions, ggml order.
        dims: Vec<u64>,
    },
    /// A ggml type id this ggml does not know.
    #[error("tensor '{tensor}': unknown ggml type id {id}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// The id found.
        id: u32,
    },
    /// `ne[0]` is not a whole number of the type's blocks.
    #[error("tensor '{tensor}': row length {ne0} is not a multiple of the {ty} block size {block}")]
    PartialBlock {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Its first dimension.
        ne0: u64,
        /// The type's block size.
        block: u64,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor '{tensor}': offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        /// The tensor.
        tensor: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor offset other than the padded running sum of the previous sizes (gguf.cpp requires it).
    #[error("tensor '{tensor}': offset {offset}, expected {expected} (tensors must be packed in order)")]
    OffsetMismatch {
        /// The tensor.
        tensor: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// The padded sum of the sizes of the tensors before it.
        expected: u64,
    },
    /// Tensor data past the end of the file.
    #[error(
        "tensor '{tensor}': {size} bytes at file offset {offset} run past the end of the file ({file_size} bytes)"
    )]
    TensorOutOfRange {
        /// The tensor.
        tensor: String,
        /// Absolute file offset of its data.
        offset: u64,
        /// Its size in bytes.
        size: u64,
        /// The file size.
        file_size: u64,
    },
    /// A key the caller needs is absent.
    #[error("missing key '{key}'")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A key has another type than the caller needs.
    #[error("key '{key}' has type {got}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type needed ("u32", "[str]", ...).
        expected: String,
        /// The type found.
        got: String,
    },
    /// A value the writer cannot encode so that readers accept it (too long a string or array, too deep).
    #[error("key '{key}': {why}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

fn endian_hint(version: u32) -> &'static str {
    // A v3 file written big-endian reads as 0x03000000: the low half is zero (gguf.cpp makes the same guess).
    if version != 0 && version & 0xFFFF == 0 {
        " (a big-endian file? only little-endian is supported)"
    } else {
        ""
    }
}

/// Why [`super::GgufWriter::write`] failed. `E` is the tensor-data callback's error type.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E = std::io::Error> {
    /// The file description is invalid, or writing failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The callback failed while writing a tensor's data.
    #[error("writing data of tensor '{tensor}': {error}")]
    Data {
        /// The tensor.
        tensor: String,
        /// The callback's error.
        error: E,
    },
    /// The callback wrote another number of bytes than the tensor's size.
    #[error("tensor '{tensor}': the data callback wrote {written} bytes, expected {expected}")]
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Bytes the tensor's type and shape need.
        expected: u64,
        /// Bytes written.
        written: u64,
    },
}
