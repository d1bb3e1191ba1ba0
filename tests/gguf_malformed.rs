//! Malformed GGUF files built byte by byte (candle's gguf_tests.rs style): each gets its specific error from the
//! parser, and `smallthinker inspect` exits non-zero printing that error.
use std::process::Command;

use smallthinker::gguf::{parse, GgufError};

/// A little-endian byte builder.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, v: u32) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn i64(self, v: i64) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A u32 KV pair.
    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info with dims in ggml order.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut b = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of 32.
    fn pad(self) -> Self {
        let n = self.0.len().div_ceil(32) * 32 - self.0.len();
        self.raw(&vec![0; n])
    }
    fn zeros(self, n: usize) -> Self {
        self.raw(&vec![0; n])
    }
}

fn header(version: u32, n_tensors: i64, n_kv: i64) -> B {
    B::default().raw(b"GGUF").u32(version).i64(n_tensors).i64(n_kv)
}

const KEY: &str = "general.a_fairly_long_key_name"; // 30 bytes
const NAME: &str = "blk.0.a_tensor_name_of_exactly_40_bytes_"; // 40 bytes

/// A valid file: one u32 KV pair and one [4, 2] F32 tensor. Byte offsets: header 0..24; KV: key length 24, key
/// 32..62, value type 62, value 66..70; tensor info: name length 70, name 78..118, n_dims 118, dims 122 and 130,
/// type 138, offset 142..150; padding to 160; data 160..192.
fn valid() -> B {
    header(3, 1, 1)
        .kv_u32(KEY, 7)
        .tensor(NAME, &[4, 2], 0, 0)
        .pad()
        .zeros(32)
}

fn err(b: &B) -> GgufError {
    match parse(&b.0) {
        Ok(_) => panic!("parse accepted a malformed file"),
        Err(e) => e,
    }
}

/// Each case: a name, the bytes, a check on the error variant, and text its message must contain.
type Case = (&'static str, B, fn(&GgufError) -> bool, &'static str);

fn cases() -> Vec<Case> {
    use GgufError::*;
    let v = valid();
    let n = v.0.len();
    let trunc = |k: usize| B(v.0[..k].to_vec());
    vec![
        (
            "empty file",
            B::default(),
            |e| matches!(e, BadMagic { .. }),
            "not a GGUF file",
        ),
        (
            "bad magic",
            B::default().raw(b"GGML").zeros(20),
            |e| matches!(e, BadMagic { .. }),
            "\"GGML\"",
        ),
        (
            "version 1",
            header(1, 0, 0),
            |e| matches!(e, UnsupportedVersion { version: 1 }),
            "version 1",
        ),
        (
            "version 4",
            header(4, 0, 0),
            |e| matches!(e, UnsupportedVersion { version: 4 }),
            "version 4",
        ),
        (
            "big-endian",
            header(0x0300_0000, 0, 0),
            |e| matches!(e, UnsupportedVersion { .. }),
            "big-endian",
        ),
        // Truncation inside every section. A count is checked against the bytes left where its section starts, so a
        // cut within the first entry's minimum size (14 bytes for a KV pair, 24 for a tensor info) reports the count.
        (
            "cut in version",
            trunc(6),
            |e| matches!(e, Truncated { .. }),
            "header: version",
        ),
        (
            "cut in tensor count",
            trunc(10),
            |e| matches!(e, Truncated { .. }),
            "header: tensor count",
        ),
        (
            "cut in KV count",
            trunc(20),
            |e| matches!(e, Truncated { .. }),
            "header: KV count",
        ),
        (
            "cut in key length",
            trunc(26),
            |e| matches!(e, TooMany { max: 0, .. }),
            "KV count is 1, impossible",
        ),
        (
            "cut in key",
            trunc(42),
            |e| matches!(e, StringPastEnd { len: 30, .. }),
            "KV pair 0: key",
        ),
        (
            "cut in value type",
            trunc(64),
            |e| matches!(e, Truncated { .. }),
            "value type",
        ),
        (
            "cut in value",
            trunc(68),
            |e| {
                matches!(
                    e,
                    Truncated {
                        needed: 4,
                        available: 2,
                        ..
                    }
                )
            },
            "long_key_name': value",
        ),
        (
            "cut in name length",
            trunc(72),
            |e| matches!(e, TooMany { .. }),
            "tensor count is 1, impossible",
        ),
        (
            "cut in name",
            trunc(100),
            |e| matches!(e, StringPastEnd { len: 40, .. }),
            "tensor info 0: name",
        ),
        (
            "cut in n_dims",
            trunc(120),
            |e| matches!(e, Truncated { .. }),
            "_40_bytes_': dimension count",
        ),
        (
            "cut in dims",
            trunc(134),
            |e| matches!(e, Truncated { .. }),
            "_40_bytes_': dimension 1",
        ),
        (
            "cut in type",
            trunc(140),
            |e| matches!(e, Truncated { .. }),
            "_40_bytes_': type",
        ),
        (
            "cut in offset",
            trunc(146),
            |e| matches!(e, Truncated { .. }),
            "_40_bytes_': data offset",
        ),
        (
            "cut in padding",
            trunc(155),
            |e| matches!(e, Truncated { .. }),
            "padding before the data section",
        ),
        (
            "cut in data",
            trunc(n - 1),
            |e| matches!(e, TensorOutOfRange { .. }),
            "_40_bytes_': 32 bytes",
        ),
        // Absurd counts.
        (
            "tensor count -1",
            header(3, -1, 0),
            |e| matches!(e, TooMany { count: -1, .. }),
            "tensor count is -1",
        ),
        (
            "tensor count max",
            header(3, i64::MAX, 0),
            |e| matches!(e, TooMany { .. }),
            "tensor count",
        ),
        (
            "KV count 2^40",
            header(3, 0, 1 << 40),
            |e| matches!(e, TooMany { .. }),
            "KV count is 1099511627776",
        ),
        (
            "array count",
            header(3, 0, 1).str("arr").u32(9).u32(4).u64(1 << 40).zeros(16),
            |e| matches!(e, TooMany { .. }),
            "array length of key 'arr' is 1099511627776",
        ),
        (
            "string array count",
            header(3, 0, 1).str("arr").u32(9).u32(8).u64(3).str("x"),
            |e| {
                matches!(
                    e,
                    TooMany {
                        count: 3,
                        max: 1,
                        remaining: 9,
                        ..
                    }
                )
            },
            "array length of key 'arr' is 3",
        ),
        // Strings.
        (
            "key past end",
            header(3, 0, 1).u64(1000).raw(b"abc").zeros(20),
            |e| matches!(e, StringPastEnd { len: 1000, .. }),
            "string length 1000",
        ),
        (
            "string too long",
            header(3, 0, 1).str("s").u32(8).u64((1 << 30) + 1).zeros(8),
            |e| matches!(e, StringTooLong { .. }),
            "key 's': value: string length 1073741825 exceeds",
        ),
        (
            "string value past end",
            header(3, 0, 1).str("s").u32(8).u64(64).raw(b"short"),
            |e| matches!(e, StringPastEnd { .. }),
            "key 's': value: string length 64",
        ),
        (
            "invalid utf-8",
            header(3, 0, 1).u64(2).raw(&[0xC3, 0x28]).u32(4).u32(0),
            |e| matches!(e, InvalidUtf8 { .. }),
            "UTF-8",
        ),
        (
            "empty key",
            header(3, 0, 1).str("").u32(4).u32(0),
            |e| matches!(e, EmptyKey { index: 0 }),
            "empty key",
        ),
        (
            "duplicate key",
            header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2),
            |e| matches!(e, DuplicateKey { .. }),
            "duplicate key 'k'",
        ),
        // Tensor data placement.
        (
            "data out of range",
            header(3, 1, 0).tensor("big", &[1024], 0, 0).pad().zeros(100),
            |e| matches!(e, TensorOutOfRange { size: 4096, .. }),
            "tensor 'big': 4096 bytes",
        ),
        (
            "offset overflow",
            header(3, 2, 0)
                .tensor("a", &[8], 0, 0)
                .tensor("b", &[8], 0, u64::MAX - 31)
                .pad()
                .zeros(64),
            |e| matches!(e, OffsetMismatch { .. }),
            "tensor 'b': offset 18446744073709551584, expected 32",
        ),
        (
            "misaligned offset",
            header(3, 2, 0)
                .tensor("a", &[1], 0, 0)
                .tensor("b", &[1], 0, 4)
                .pad()
                .zeros(64),
            |e| {
                matches!(
                    e,
                    MisalignedOffset {
                        offset: 4,
                        alignment: 32,
                        ..
                    }
                )
            },
            "tensor 'b': offset 4 is not a multiple of the alignment 32",
        ),
        (
            "gap before a tensor",
            header(3, 2, 0)
                .tensor("a", &[1], 0, 0)
                .tensor("b", &[1], 0, 64)
                .pad()
                .zeros(128),
            |e| {
                matches!(
                    e,
                    OffsetMismatch {
                        offset: 64,
                        expected: 32,
                        ..
                    }
                )
            },
            "tensor 'b': offset 64, expected 32",
        ),
        // Unknown type ids.
        (
            "value type 13",
            header(3, 0, 1).str("k").u32(13).u32(0),
            |e| matches!(e, UnknownValueType { id: 13, .. }),
            "key 'k': unknown value type id 13",
        ),
        (
            "array element type 99",
            header(3, 0, 1).str("k").u32(9).u32(99).u64(0),
            |e| matches!(e, UnknownValueType { id: 99, .. }),
            "key 'k': unknown value type id 99",
        ),
        (
            "ggml type 4 (removed)",
            header(3, 1, 0).tensor("t", &[32], 4, 0).pad().zeros(32),
            |e| matches!(e, UnknownTensorType { id: 4, .. }),
            "tensor 't': unknown ggml type id 4",
        ),
        (
            "ggml type 1000",
            header(3, 1, 0).tensor("t", &[32], 1000, 0).pad().zeros(32),
            |e| matches!(e, UnknownTensorType { id: 1000, .. }),
            "unknown ggml type id 1000",
        ),
        // Shapes.
        (
            "element count overflow",
            header(3, 1, 0).tensor("t", &[1 << 32, 1 << 32], 0, 0).pad(),
            |e| matches!(e, DimOverflow { .. }),
            "tensor 't': dimensions [4294967296, 4294967296] overflow",
        ),
        (
            "negative dim",
            header(3, 1, 0).tensor("t", &[u64::MAX, 0], 0, 0).pad(),
            |e| matches!(e, DimOverflow { .. }),
            "tensor 't': dimensions",
        ),
        (
            "byte size overflow",
            header(3, 1, 0).tensor("t", &[1 << 62], 0, 0).pad(),
            |e| matches!(e, DimOverflow { .. }),
            "tensor 't': dimensions [4611686018427387904]",
        ),
        (
            "5 dims",
            header(3, 1, 0).tensor("t", &[1; 5], 0, 0).pad(),
            |e| matches!(e, TooManyDims { n_dims: 5, .. }),
            "5 dimensions",
        ),
        (
            "partial block",
            header(3, 1, 0).tensor("q", &[33], 2, 0).pad().zeros(64),
            |e| matches!(e, PartialBlock { ne0: 33, block: 32, .. }),
            "tensor 'q': row length 33 is not a multiple of the Q4_0 block size 32",
        ),
        (
            "name too long",
            header(3, 1, 0).tensor(&"n".repeat(64), &[1], 0, 0).pad().zeros(32),
            |e| matches!(e, NameTooLong { len: 64, .. }),
            "is 64 bytes long",
        ),
        (
            "duplicate tensor",
            header(3, 2, 0)
                .tensor("t", &[1], 0, 0)
                .tensor("t", &[1], 0, 32)
                .pad()
                .zeros(64),
            |e| matches!(e, DuplicateTensor { .. }),
            "duplicate tensor 't'",
        ),
        // Alignment and nesting.
        (
            "alignment 3",
            header(3, 0, 1).kv_u32("general.alignment", 3),
            |e| matches!(e, BadAlignment { alignment: 3 }),
            "general.alignment is 3",
        ),
        (
            "alignment as u64",
            header(3, 0, 1).str("general.alignment").u32(10).u64(32),
            |e| matches!(e, WrongType { .. }),
            "key 'general.alignment' has type u64, expected u32",
        ),
        (
            "nesting 65",
            nested(65),
            |e| matches!(e, NestingTooDeep { max: 64, .. }),
            "nested deeper than 64",
        ),
    ]
}

/// A key whose value is `depth` arrays nested in each other, the innermost empty.
fn nested(depth: usize) -> B {
    let mut b = header(3, 0, 1).str("deep").u32(9);
    for _ in 1..depth {
        b = b.u32(9).u64(1);
    }
    b.u32(4).u64(0)
}

#[test]
fn the_valid_base_file_parses() {
    let v = valid();
    assert_eq!(v.0.len(), 192);
    let h = parse(&v.0).unwrap();
    assert_eq!(h.get(KEY).and_then(|v| v.as_u32()), Some(7));
    assert_eq!(h.data_offset, 160);
    assert_eq!(h.tensor(NAME).unwrap().size, 32);
    assert!(parse(&nested(64).0).is_ok(), "64 levels are allowed");
}

#[test]
fn each_malformed_file_gets_its_specific_error() {
    for (name, bytes, check, text) in cases() {
        let e = err(&bytes);
        assert!(check(&e), "{name}: wrong variant {e:?}");
        assert!(
            e.to_string().contains(text),
            "{name}: message {:?} lacks {text:?}",
            e.to_string()
        );
    }
}

#[test]
fn every_prefix_of_a_valid_file_is_rejected_without_panic() {
    let v = valid().0;
    for k in 0..v.len() {
        assert!(parse(&v[..k]).is_err(), "prefix of {k} bytes accepted");
    }
}

#[test]
fn inspect_exits_nonzero_with_the_readers_message() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, _, _) in cases() {
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, &bytes.0).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
            .arg("inspect")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: inspect succeeded");
        assert!(out.stdout.is_empty(), "{name}: inspect printed a partial table");
        assert!(stderr.contains(&err(&bytes).to_string()), "{name}: stderr {stderr:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .arg("inspect")
        .arg(dir.path().join("nope"))
        .output();
    let out = out.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
}
