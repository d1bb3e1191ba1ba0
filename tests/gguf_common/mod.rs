//! Helpers shared by the GGUF tests: the canonical JSON form that tools/py/gguf_canon_dump.py prints, a sample
//! writer covering every value type, and the gguf-py runner.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use smallthinker::gguf::{Array, GgmlType, GgufFile, GgufWriter, TensorInfo, Value};

/// Canonical encoding of a value (see tools/py/gguf_canon_dump.py): floats as bit patterns.
pub fn canon_value(v: &Value) -> Json {
    let t = v.value_type().name();
    match v {
        Value::U8(x) => json!([t, x]),
        Value::I8(x) => json!([t, x]),
        Value::U16(x) => json!([t, x]),
        Value::I16(x) => json!([t, x]),
        Value::U32(x) => json!([t, x]),
        Value::I32(x) => json!([t, x]),
        Value::F32(x) => json!([t, x.to_bits()]),
        Value::Bool(x) => json!([t, x]),
        Value::String(x) => json!([t, x]),
        Value::Array(a) => canon_array(a),
        Value::U64(x) => json!([t, x]),
        Value::I64(x) => json!([t, x]),
        Value::F64(x) => json!([t, x.to_bits()]),
    }
}

fn canon_array(a: &Array) -> Json {
    let items = match a {
        Array::U8(v) => json!(v),
        Array::I8(v) => json!(v),
        Array::U16(v) => json!(v),
        Array::I16(v) => json!(v),
        Array::U32(v) => json!(v),
        Array::I32(v) => json!(v),
        Array::F32(v) => json!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
        Array::Bool(v) => json!(v),
        Array::String(v) => json!(v),
        Array::Array(v) => Json::Array(v.iter().map(canon_array).collect()),
        Array::U64(v) => json!(v),
        Array::I64(v) => json!(v),
        Array::F64(v) => json!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
    };
    json!(["arr", a.elem_type().name(), items])
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn canon_tensor(t: &TensorInfo, bytes: &[u8]) -> Json {
    json!({"name": t.name, "type": t.ty.id(), "dims": t.dims, "offset": t.offset, "size": t.size,
           "sha256": sha256_hex(bytes)})
}

/// Our reader's view of `f` in the canonical form (kv, tensors, version, alignment; `data_offset` too if asked).
pub fn canon_file(f: &GgufFile, with_data_offset: bool) -> Json {
    let kv: Vec<Json> = f.metadata().iter().map(|(k, v)| json!([k, canon_value(v)])).collect();
    let tensors: Vec<Json> = f.tensors().iter().map(|t| canon_tensor(t, f.tensor_data(t))).collect();
    let mut j = json!({"version": f.version(), "alignment": f.alignment(), "kv": kv, "tensors": tensors});
    if with_data_offset {
        j["data_offset"] = json!(f.data_offset());
    }
    j
}

/// Drops `data_offset` (the gguf-py writer's manifest cannot know it).
pub fn without_data_offset(mut j: Json) -> Json {
    j.as_object_mut().unwrap().remove("data_offset");
    j
}

/// Deterministic tensor bytes: an LCG seeded by the tensor index.
pub fn tensor_bytes(i: usize, n: u64) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// Every value type, typed and nested arrays, including what gguf-py's writer cannot produce (empty arrays and
/// strings, an array of arrays of different element types).
pub fn sample_kv() -> Vec<(String, Value)> {
    let v: Vec<(&str, Value)> = vec![
        ("general.architecture", "smallthinker".into()),
        ("t.u8", 250u8.into()),
        ("t.i8", (-7i8).into()),
        ("t.u16", 65535u16.into()),
        ("t.i16", (-32768i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-123_456i32).into()),
        ("t.f32", 1e-6f32.into()),
        ("t.f32_nan", f32::NAN.into()),
        ("t.f32_neg_zero", (-0.0f32).into()),
        ("t.bool", true.into()),
        ("t.str", "ünïcode \"quoted\"\n<|im_start|>".into()),
        ("t.empty_str", "".into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f64", std::f64::consts::E.into()),
        ("t.arr_u8", vec![1u8, 2, 255].into()),
        ("t.arr_i8", vec![-128i8, 127].into()),
        ("t.arr_u16", vec![0u16, 65535].into()),
        ("t.arr_i16", vec![-2i16, 3].into()),
        ("t.arr_u32", vec![1u32, u32::MAX].into()),
        ("t.arr_i32", Value::i32_array(vec![1, 3, -1])),
        ("t.arr_f32", vec![0.25f32, -1e38, f32::INFINITY].into()),
        ("t.arr_bool", vec![false, true].into()),
        (
            "t.arr_str",
            Value::string_array(vec!["Ġa".into(), "".into(), "多".into()]),
        ),
        ("t.arr_u64", vec![u64::MAX, 0].into()),
        ("t.arr_i64", vec![i64::MIN].into()),
        ("t.arr_f64", vec![1.0f64 / 3.0].into()),
        ("t.arr_empty", Vec::<u32>::new().into()),
        (
            "t.nested",
            vec![
                Array::from(vec![1i32, 2]),
                Array::from(vec!["x".to_string()]),
                Array::U8(vec![]),
            ]
            .into(),
        ),
        ("t.nested3", vec![Array::Array(vec![Array::from(vec![7u64])])].into()),
    ];
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Tensors of many ggml types (dims in ggml order), including a zero-element one.
pub fn sample_tensors() -> Vec<(&'static str, Vec<u64>, GgmlType)> {
    use GgmlType::*;
    vec![
        ("token_embd.weight", vec![64, 3], Q4_0),
        ("w.f32", vec![5, 3], F32),
        ("w.f16", vec![7], F16),
        ("w.bf16", vec![3, 2, 2], BF16),
        ("w.q8_0", vec![32, 2], Q8_0),
        ("w.q6_k", vec![256, 2], Q6_K),
        ("w.q4_k", vec![256], Q4_K),
        ("w.iq4_nl", vec![32], IQ4_NL),
        ("w.mxfp4", vec![32, 1, 1, 2], MXFP4),
        ("w.i8", vec![9], I8),
        ("w.i16", vec![3], I16),
        ("w.i32", vec![2, 2], I32),
        ("w.i64", vec![1], I64),
        ("w.f64", vec![2], F64),
        ("w.empty", vec![0, 4], F32),
    ]
}

/// Writes the sample (optionally with `general.alignment`) to `path` and returns the expected canonical form.
pub fn write_sample(path: &Path, alignment: Option<u32>) -> Json {
    let mut w = GgufWriter::new();
    let mut kv = sample_kv();
    if let Some(a) = alignment {
        kv.insert(1, ("general.alignment".into(), a.into()));
    }
    for (k, v) in &kv {
        w.add_kv(k.clone(), v.clone());
    }
    for (name, dims, ty) in sample_tensors() {
        w.add_tensor(name, &dims, ty).unwrap();
    }
    let infos = w.tensor_infos().unwrap();
    w.write(path, |i, t, out| out.write_all(&tensor_bytes(i, t.size)))
        .unwrap();
    let tensors: Vec<Json> = infos
        .iter()
        .enumerate()
        .map(|(i, t)| canon_tensor(t, &tensor_bytes(i, t.size)))
        .collect();
    let kv: Vec<Json> = kv.iter().map(|(k, v)| json!([k, canon_value(v)])).collect();
    json!({"version": 3, "alignment": alignment.unwrap_or(32), "kv": kv, "tensors": tensors})
}

/// The reference Python (gguf-py 0.19), from $SMALLTHINKER_PYTHON. Panics, never skips, when it is unusable.
pub fn python() -> PathBuf {
    let py = std::env::var_os("SMALLTHINKER_PYTHON").unwrap_or_else(|| {
        panic!("SMALLTHINKER_PYTHON is not set: the gguf-py cross-checks need a python3 with gguf==0.19.0 and numpy (tools/test.sh sets it up)")
    });
    let out = Command::new(&py)
        .args([
            "-c",
            "import importlib.metadata as m, numpy, gguf; print(m.version('gguf'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run SMALLTHINKER_PYTHON={py:?}: {e}"));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && version.starts_with("0.19."),
        "SMALLTHINKER_PYTHON={py:?} lacks gguf 0.19 or numpy (got {version:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(py)
}

/// Runs tools/py/SCRIPT with `args` and parses its stdout as JSON.
pub fn run_py(script: &str, args: &[&Path]) -> Json {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/py").join(script);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("script output is JSON")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}
