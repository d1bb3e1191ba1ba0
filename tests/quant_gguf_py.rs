//! Live cross-checks of smallthinker::quant against gguf-py's numpy (de)quantizers, run through
//! $SMALLTHINKER_PYTHON and tools/py/quant_crosscheck.py on ~1e5 seeded blocks per type. Fails loudly without them.
mod quant_gen;

use std::path::{Path, PathBuf};
use std::process::Command;

use smallthinker::gguf::GgmlType;
use smallthinker::quant;

fn python() -> PathBuf {
    let py = std::env::var_os("SMALLTHINKER_PYTHON").unwrap_or_else(|| {
        panic!("SMALLTHINKER_PYTHON is not set: these tests need a python with gguf==0.19.0 and numpy (tools/test.sh)")
    });
    PathBuf::from(py)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/py/quant_crosscheck.py")
}

fn run(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run $SMALLTHINKER_PYTHON: {e}"));
    assert!(
        out.status.success(),
        "quant_crosscheck.py {args:?} failed (is gguf==0.19.0 installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn gguf_py_quantize(ty: GgmlType, x: &[f32], n_per_row: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in.f32"), dir.path().join("out.bin"));
    std::fs::write(&src, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()).unwrap();
    let name = ty.to_string();
    run(&[
        "quantize",
        &name,
        &n_per_row.to_string(),
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    std::fs::read(dst).unwrap()
}

fn gguf_py_dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in.bin"), dir.path().join("out.f32"));
    std::fs::write(&src, q).unwrap();
    run(&[
        "dequantize",
        &ty.to_string(),
        &n.to_string(),
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    std::fs::read(dst)
        .unwrap()
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn first_diff(got: &[u8], want: &[u8], unit: usize) -> Option<usize> {
    assert_eq!(got.len(), want.len());
    (0..got.len() / unit).find(|&i| got[i * unit..][..unit] != want[i * unit..][..unit])
}

#[test]
fn gguf_py_is_0_19_0() {
    assert_eq!(run(&["version"]).trim(), "0.19.0");
}

#[test]
fn q4_0_and_q8_0_bytes_equal_gguf_py_on_1e5_blocks() {
    let n_per_row = 256;
    let x = quant_gen::values(2024, (1 << 17) * 32); // 131072 blocks of 32
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
        let ours = quant::quantize(ty, &x, n_per_row).unwrap();
        let theirs = gguf_py_quantize(ty, &x, n_per_row);
        if let Some(b) = first_diff(&ours, &theirs, ty.type_size() as usize) {
            panic!("{ty}: block {b} differs; input {:?}", &x[b * 32..][..32]);
        }
    }
}

#[test]
fn f16_and_bf16_bytes_equal_gguf_py_on_1e6_patterns() {
    let x: Vec<f32> = quant_gen::bits(99, 1 << 20).into_iter().map(f32::from_bits).collect();
    for (ty, ours) in [
        (GgmlType::F16, quant::f32_to_f16_bytes(&x)),
        (GgmlType::BF16, quant::f32_to_bf16_bytes(&x)),
    ] {
        let theirs = gguf_py_quantize(ty, &x, x.len());
        if let Some(i) = first_diff(&ours, &theirs, 2) {
            panic!(
                "{ty}: input {:#010x} gives {:02x?}, gguf-py {:02x?}",
                x[i].to_bits(),
                &ours[2 * i..][..2],
                &theirs[2 * i..][..2]
            );
        }
    }
}

/// Dequantization of (a) our quantization of seeded values and (b) random bytes, bit for bit (any NaN matches any
/// NaN: random scales can be NaN, and NaN payloads are not part of the format).
#[test]
fn dequantize_equals_gguf_py() {
    use GgmlType::*;
    let x = quant_gen::values(5, 1 << 16);
    let mut r = quant_gen::SplitMix64::new(17);
    for ty in [
        F16, BF16, Q4_0, Q8_0, Q6_K, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0,
    ] {
        let quantized = quant::quantize(ty, &x, 1 << 12).unwrap();
        let random: Vec<u8> = (0..quantized.len()).map(|_| r.next() as u8).collect();
        for (what, q) in [("quantized", &quantized), ("random bytes", &random)] {
            let ours = quant::dequantize(ty, q, x.len()).unwrap();
            let theirs = gguf_py_dequantize(ty, q, x.len());
            assert_eq!(ours.len(), theirs.len());
            let bad = ours
                .iter()
                .zip(&theirs)
                .position(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()));
            if let Some(i) = bad {
                panic!("{ty} {what}: element {i}: {:e} vs gguf-py {:e}", ours[i], theirs[i]);
            }
        }
    }
}
