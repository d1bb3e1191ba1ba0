//! Writer -> reader round trips (python-free): every value type, key order, alignment padding, the byte-identical
//! rewrite of a gguf-py-written fixture, writer-side validation, and no temporary or partial file after an error.
mod gguf_common;

use std::path::Path;

use gguf_common::*;
use smallthinker::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value, WriteError};

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_keeps_every_value_tensor_and_the_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.gguf");
    let expected = write_sample(&path, None);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(canon_file(&f, false), expected);
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let want: Vec<String> = sample_kv().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, want, "key order is file order");
    assert_eq!(dir_entries(dir.path()), ["s.gguf"], "no temporary file left behind");

    // Typed getters, and errors that name the key.
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1e-6);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("general.architecture").unwrap(), "smallthinker");
    assert_eq!(f.get_str_array("t.arr_str").unwrap(), ["Ġa", "", "多"]);
    assert_eq!(f.get("t.arr_i32").unwrap().as_i32_array(), Some(&[1, 3, -1][..]));
    let e = f.get_u32("t.i32").unwrap_err();
    assert!(
        matches!(&e, GgufError::WrongType { key, .. } if key == "t.i32"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "key 't.i32' has type i32, expected u32");
    let e = f.get_u32("llama.nope").unwrap_err();
    assert_eq!(e.to_string(), "missing key 'llama.nope'");

    // Tensor data is the mapped bytes, at aligned offsets.
    let t = f.tensor("w.q6_k").unwrap();
    assert_eq!(
        (t.dims.as_slice(), t.ty, t.size),
        (&[256u64, 2][..], GgmlType::Q6_K, 420)
    );
    assert_eq!(f.tensor_data(t), tensor_bytes(5, 420).as_slice());
    assert_eq!(f.tensor_data(f.tensor("w.empty").unwrap()), &[] as &[u8]);
}

#[test]
fn alignment_pads_the_data_section_and_every_tensor_with_zeros() {
    for alignment in [None, Some(1u32), Some(64), Some(4096)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gguf");
        write_sample(&path, alignment);
        let f = GgufFile::open(&path).unwrap();
        let a = u64::from(alignment.unwrap_or(32));
        assert_eq!(f.alignment(), a);
        assert_eq!(f.data_offset() % a, 0);
        let bytes = std::fs::read(&path).unwrap();
        let mut end = f.data_offset();
        for t in f.tensors() {
            assert_eq!(t.offset % a, 0, "{}", t.name);
            let start = f.data_offset() + t.offset;
            assert!(
                bytes[end as usize..start as usize].iter().all(|&b| b == 0),
                "padding before {}",
                t.name
            );
            assert!(start - end < a, "gap before {}", t.name);
            end = start + t.size;
        }
        // The last tensor is padded too, as gguf-py and gguf.cpp write it.
        assert_eq!(bytes.len() as u64, end.div_ceil(a) * a);
        assert!(bytes[end as usize..].iter().all(|&b| b == 0));
    }
}

#[test]
fn fixture_written_by_gguf_py_reads_as_its_manifest_and_rewrites_byte_identically() {
    let f = GgufFile::open(&fixture("pyref.gguf")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("pyref.json")).unwrap()).unwrap();
    assert_eq!(canon_file(&f, false), manifest);

    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add_kv(k.clone(), v.clone());
    }
    for t in f.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ty).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rewrite.gguf");
    w.write(&out, |i, _, o| o.write_all(f.tensor_data(&f.tensors()[i])))
        .unwrap();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(fixture("pyref.gguf")).unwrap(),
        "rewrite differs"
    );
}

fn small_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "x");
    w.add_tensor("a", &[8], GgmlType::F32).unwrap();
    w.add_tensor("b", &[32], GgmlType::Q8_0).unwrap();
    w
}

#[test]
fn a_failed_write_leaves_no_temporary_file_and_keeps_the_old_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, b"old contents").unwrap();

    // The callback fails on the second tensor.
    let r = small_writer().write(&path, |i, _, o| {
        if i == 1 {
            Err("disk on fire")
        } else {
            o.write_all(&[0; 32]).map_err(|_| "io")
        }
    });
    assert!(
        matches!(&r, Err(WriteError::Data { tensor, error: "disk on fire" }) if tensor == "b"),
        "{r:?}"
    );

    // The callback writes too few bytes.
    let r = small_writer().write(&path, |_, _, o| o.write_all(&[0; 3]));
    assert!(
        matches!(
            &r,
            Err(WriteError::SizeMismatch {
                expected: 32,
                written: 3,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        "tensor 'a': the data callback wrote 3 bytes, expected 32"
    );

    // The callback panics.
    let p =
        std::panic::catch_unwind(|| small_writer().write(&path, |_, _, _| -> std::io::Result<()> { panic!("boom") }));
    assert!(p.is_err());

    // A duplicate key is found before any file is created.
    let mut w = small_writer();
    w.add_kv("general.architecture", "y");
    let r = w.write(&path, |_, t, o| o.write_all(&vec![0; t.size as usize]));
    assert!(matches!(&r, Err(WriteError::Gguf(GgufError::DuplicateKey { key })) if key == "general.architecture"));

    assert_eq!(dir_entries(dir.path()), ["m.gguf"], "temporary files left behind");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"old contents",
        "target overwritten by a failed write"
    );

    // A directory that does not exist: an Io error naming the temporary path.
    let r = small_writer().write(&dir.path().join("no/such/dir/m.gguf"), |_, t, o| {
        o.write_all(&vec![0; t.size as usize])
    });
    assert!(
        matches!(&r, Err(WriteError::Gguf(GgufError::Io { path, .. })) if path.to_string_lossy().contains("m.gguf.tmp-"))
    );
}

#[test]
fn the_writer_rejects_what_the_reader_would_reject() {
    let mut w = GgufWriter::new();
    let e = |r: Result<(), GgufError>| r.unwrap_err().to_string();
    assert!(e(w.add_tensor("n".repeat(64), &[1], GgmlType::F32)).contains("64 bytes long"));
    w.add_tensor("t", &[1], GgmlType::F32).unwrap();
    assert_eq!(e(w.add_tensor("t", &[1], GgmlType::F32)), "duplicate tensor 't'");
    assert!(e(w.add_tensor("u", &[1; 5], GgmlType::F32)).contains("5 dimensions"));
    assert!(e(w.add_tensor("u", &[31], GgmlType::Q4_0)).contains("row length 31 is not a multiple"));
    assert!(e(w.add_tensor("u", &[1 << 40, 1 << 40], GgmlType::F32)).contains("overflow"));
    assert!(e(w.add_tensor("u", &[1 << 62], GgmlType::F32)).contains("overflow"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let write = |w: GgufWriter| {
        w.write(&path, |_, t, o| o.write_all(&vec![0; t.size as usize]))
            .unwrap_err()
            .to_string()
    };
    let mut w = GgufWriter::new();
    w.add_kv("general.alignment", 48u32);
    assert_eq!(
        write(w),
        "general.alignment is 48, which is not a non-zero power of two"
    );
    let mut w = GgufWriter::new();
    w.add_kv("general.alignment", 32u64);
    assert_eq!(write(w), "key 'general.alignment' has type u64, expected u32");
    let mut deep = smallthinker::gguf::Array::U8(vec![]);
    for _ in 0..64 {
        deep = smallthinker::gguf::Array::Array(vec![deep]);
    }
    let mut w = GgufWriter::new();
    w.add_kv("deep", Value::Array(deep));
    assert_eq!(write(w), "key 'deep': arrays nested deeper than 64 levels");
    assert!(!path.exists());
}

/// Measures `smallthinker inspect` on a ~2 GB GGUF with a real-sized tokenizer (151936 tokens): the header is all
/// it reads, so it takes milliseconds. Opt-in (writes 2 GB): `cargo test --release --test gguf_roundtrip -- --ignored`.
#[test]
#[ignore]
fn inspect_of_a_2gb_file_takes_milliseconds() {
    use std::time::Instant;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("big.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "smallthinker");
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::string_array((0..151_936).map(|i| format!("tok{i}")).collect()),
    );
    w.add_kv("tokenizer.ggml.token_type", Value::i32_array(vec![1; 151_936]));
    w.add_kv(
        "tokenizer.ggml.merges",
        Value::string_array((0..151_387).map(|i| format!("a{i} b{i}")).collect()),
    );
    for il in 0..52 {
        w.add_tensor(format!("blk.{il}.ffn_up_exps.weight"), &[1536, 768, 32], GgmlType::Q8_0)
            .unwrap();
    }
    let t0 = Instant::now();
    w.write(&path, |_, t, o| {
        std::io::copy(&mut std::io::Read::take(std::io::repeat(0), t.size), o).map(|_| ())
    })
    .unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!("wrote {size} bytes in {:?}", t0.elapsed());
    assert!(size > 2_000_000_000);

    let t0 = Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let open = t0.elapsed();
    assert_eq!(f.tensors().len(), 52);
    let t0 = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smallthinker"))
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    let inspect = t0.elapsed();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(151936 items)"),
        "long arrays are summarised"
    );
    eprintln!("GgufFile::open: {open:?}; smallthinker inspect (process): {inspect:?}");
    assert!(inspect.as_millis() < 2000, "inspect took {inspect:?}");
}
