//! smallthinker::quant against committed reference bytes (tests/fixtures/quant, made by
//! tools/py/quant_fixtures.py from gguf-py and llama.cpp's own ggml), ggml's error bounds, and its preconditions.
mod quant_gen;

use std::path::Path;

use serde_json::Value;
use smallthinker::gguf::GgmlType;
use smallthinker::quant::{self, QuantError};

fn fixture_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant"))
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture_dir().join("manifest.json")).expect("read manifest.json");
    let m: Value = serde_json::from_str(&text).expect("parse manifest.json");
    m["cases"].as_array().expect("cases").clone()
}

fn case(name: &str) -> Value {
    manifest()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no fixture case {name}"))
}

fn case_bytes(c: &Value) -> Vec<u8> {
    let bytes = std::fs::read(fixture_dir().join(c["file"].as_str().unwrap())).expect("read fixture");
    assert_eq!(
        bytes.len() as u64,
        c["bytes"].as_u64().unwrap(),
        "{} truncated",
        c["name"]
    );
    bytes
}

fn u(c: &Value, key: &str) -> usize {
    c[key].as_u64().unwrap_or_else(|| panic!("{}: no {key}", c["name"])) as usize
}

fn ty_of(c: &Value) -> GgmlType {
    GgmlType::from_name(c["type"].as_str().unwrap()).expect("known type")
}

/// The f32 inputs of a "bits" case: the fixed specials, then the seeded patterns.
fn bit_inputs(c: &Value) -> Vec<f32> {
    let specials = c["specials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32);
    specials
        .chain(quant_gen::bits(u(c, "seed") as u64, u(c, "n")))
        .map(f32::from_bits)
        .collect()
}

/// Panics naming the first differing block and its input, so a failure can be replayed.
fn assert_same_blocks(name: &str, ty: GgmlType, input: &[f32], got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (bs, ts) = (ty.block_size() as usize, ty.type_size() as usize);
    let bad: Vec<usize> = (0..want.len() / ts)
        .filter(|&b| got[b * ts..][..ts] != want[b * ts..][..ts])
        .collect();
    if let Some(&b) = bad.first() {
        panic!(
            "{name}: {} of {} blocks differ; first is block {b}\n got  {:02x?}\n want {:02x?}\n input {:?}",
            bad.len(),
            want.len() / ts,
            &got[b * ts..][..ts],
            &want[b * ts..][..ts],
            &input[b * bs..][..bs]
        );
    }
}

#[test]
fn q4_0_and_q8_0_equal_gguf_py_on_seeded_rows() {
    for name in ["q4_0_gguf_py", "q8_0_gguf_py"] {
        let c = case(name);
        let (ty, n_per_row) = (ty_of(&c), u(&c, "n_per_row"));
        let x = quant_gen::values(u(&c, "seed") as u64, u(&c, "rows") * n_per_row);
        // The generator must produce the special blocks this test is about.
        assert!(x.chunks(32).any(|b| b.iter().all(|&v| v == 0.0)), "no all-zero block");
        assert!(
            x.chunks(32).any(|b| b.iter().filter(|&&v| v != 0.0).count() == 1),
            "no single-spike block"
        );
        let got = quant::quantize(ty, &x, n_per_row).unwrap();
        assert_same_blocks(name, ty, &x, &got, &case_bytes(&c));
    }
}

#[test]
fn other_types_equal_llama_cpp_ggml() {
    let cases: Vec<_> = manifest()
        .into_iter()
        .filter(|c| c["name"].as_str().unwrap().ends_with("_llama_cpp"))
        .collect();
    assert!(cases.len() >= 18, "fixture lost cases");
    for c in &cases {
        let (ty, n_per_row) = (ty_of(c), u(c, "n_per_row"));
        assert!(quant::can_quantize(ty), "{ty}");
        let x = quant_gen::values(u(c, "seed") as u64, u(c, "rows") * n_per_row);
        let got = quant::quantize(ty, &x, n_per_row).unwrap();
        assert_same_blocks(c["name"].as_str().unwrap(), ty, &x, &got, &case_bytes(c));
    }
}

#[test]
fn bf16_equals_gguf_py_including_nan_inf_subnormals() {
    let c = case("bf16_gguf_py");
    let x = bit_inputs(&c);
    assert!(x.iter().any(|v| v.is_nan()) && x.iter().any(|v| v.is_infinite()) && x.iter().any(|v| v.is_subnormal()));
    let want = case_bytes(&c);
    assert_same_blocks(
        "f32_to_bf16_bytes",
        GgmlType::BF16,
        &x,
        &quant::f32_to_bf16_bytes(&x),
        &want,
    );
    let via_ggml = quant::quantize(GgmlType::BF16, &x, x.len()).unwrap();
    assert_same_blocks("quantize(BF16)", GgmlType::BF16, &x, &via_ggml, &want);
}

#[test]
fn f16_equals_gguf_py_and_ggml_differs_only_on_nan_payloads() {
    let c = case("f16_gguf_py");
    let x = bit_inputs(&c);
    let want = case_bytes(&c);
    assert_same_blocks(
        "f32_to_f16_bytes",
        GgmlType::F16,
        &x,
        &quant::f32_to_f16_bytes(&x),
        &want,
    );

    // quantize(F16) is ggml's conversion (llama-quantize's): canonical NaN, so it differs from numpy exactly on the
    // NaN inputs the generator found llama.cpp's ggml to differ on.
    let via_ggml = quant::quantize(GgmlType::F16, &x, x.len()).unwrap();
    let differ: Vec<u32> = (0..x.len())
        .filter(|&i| via_ggml[2 * i..][..2] != want[2 * i..][..2])
        .map(|i| x[i].to_bits())
        .collect();
    let expected: Vec<u32> = c["ggml_differs_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(differ, expected);
    for i in (0..x.len()).filter(|&i| x[i].is_nan()) {
        let h = u16::from_le_bytes([via_ggml[2 * i], via_ggml[2 * i + 1]]);
        assert_eq!(h & 0x7FFF, 0x7E00, "ggml NaN for {:#010x}", x[i].to_bits());
    }
}

#[test]
fn f16_conversions_agree_with_the_half_crate() {
    // Every f16 converts exactly to f32 and back (NaN aside, see the module docs).
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let f = quant::f16_bytes_to_f32(&all).unwrap();
    for (h, v) in (0..=u16::MAX).zip(&f) {
        let want = half::f16::from_bits(h).to_f32();
        assert!(
            v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()),
            "{h:#06x}: {v} vs {want}"
        );
    }
    let back = quant::f32_to_f16_bytes(&f);
    for h in (0..=u16::MAX).filter(|&h| !half::f16::from_bits(h).is_nan()) {
        assert_eq!(u16::from_le_bytes([back[2 * h as usize], back[2 * h as usize + 1]]), h);
    }
    // Rounding of arbitrary f32 is round-to-nearest-even, as half implements it independently.
    let x: Vec<f32> = quant_gen::bits(7, 1 << 16)
        .into_iter()
        .map(f32::from_bits)
        .filter(|v| !v.is_nan())
        .collect();
    let got = quant::f32_to_f16_bytes(&x);
    for (i, v) in x.iter().enumerate() {
        assert_eq!(
            u16::from_le_bytes([got[2 * i], got[2 * i + 1]]),
            half::f16::from_f32(*v).to_bits(),
            "{v:e}"
        );
    }
}

#[test]
fn bf16_to_f32_is_a_shift_for_every_pattern() {
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let f = quant::bf16_bytes_to_f32(&all).unwrap();
    for (h, v) in (0..=u16::MAX).zip(&f) {
        assert_eq!(v.to_bits(), (h as u32) << 16);
    }
}

#[test]
fn q6_k_dequantize_equals_gguf_py() {
    let q = case("q6_k_llama_cpp");
    let want_c = case("q6_k_dequant_gguf_py");
    let n = u(&q, "rows") * u(&q, "n_per_row");
    let got = quant::dequantize(GgmlType::Q6_K, &case_bytes(&q), n).unwrap();
    let want: Vec<f32> = case_bytes(&want_c)
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "element {i}: {g:e} vs {w:e}"
        );
    }
}

#[test]
fn golden_q4_0_of_0_to_127() {
    let c = case("q4_0_arange_golden");
    let x: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let q = quant::quantize(GgmlType::Q4_0, &x, 128).unwrap();
    assert_eq!(q, case_bytes(&c));
    let got = quant::dequantize(GgmlType::Q4_0, &q, 128).unwrap();
    let want: Vec<f32> = c["dequantized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // The first block's scale is -31/8 (its max is 31), so 0 dequantizes to -0.0 and 2 to 3.875.
    assert_eq!((got[0].to_bits(), got[2]), ((-0.0f32).to_bits(), 3.875));
}

/// ggml's tests/test-quantize-fns.cpp thresholds for `sqrt(Σ(x-y)²)/n` on its synthetic data.
fn max_total_error(ty: GgmlType) -> f32 {
    use GgmlType::*;
    match ty {
        Q1_0 => 0.025,
        TQ1_0 | TQ2_0 | Q2_0 => 0.01,
        Q2_K | IQ2_S => 0.0075,
        Q3_K | IQ3_S => 0.0040,
        IQ3_XXS => 0.0050,
        NVFP4 => 0.0030,
        _ => 0.002,
    }
}

#[test]
fn round_trip_error_within_ggml_bounds() {
    let x = quant_gen::ggml_synthetic(0.0, 32 * 128, 2.0);
    let mut checked = Vec::new();
    for ty in GgmlType::all().filter(|&t| quant::can_quantize(t) && t != GgmlType::F32) {
        let q = quant::quantize(ty, &x, x.len()).unwrap();
        let y = quant::dequantize(ty, &q, x.len()).unwrap();
        let sum: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let err = sum.sqrt() as f32 / x.len() as f32;
        assert!(err < max_total_error(ty), "{ty}: total error {err}");
        checked.push((ty, err));
    }
    let q4 = checked.iter().find(|c| c.0 == GgmlType::Q4_0).unwrap().1;
    // Q4_0 is lossy: an error of zero would mean nothing was quantized.
    assert!(q4 > 1e-4, "Q4_0 error {q4}");
    assert!(checked.len() >= 20, "{checked:?}");
}

#[test]
fn f32_quantize_and_dequantize_are_copies() {
    let x = quant_gen::values(3, 256);
    let q = quant::quantize(GgmlType::F32, &x, 64).unwrap();
    assert_eq!(q, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let y = quant::dequantize(GgmlType::F32, &q, x.len()).unwrap();
    assert_eq!(
        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn parallel_and_misaligned_equal_serial() {
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q6_K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::IQ3_S,
    ] {
        let (rows, n_per_row) = (37, 512);
        let x = quant_gen::values(11, rows * n_per_row);
        let serial = quant::quantize(ty, &x, n_per_row).unwrap();
        for threads in [0, 1, 2, 3, 8, 64] {
            let mut par = vec![0xAAu8; serial.len()];
            quant::quantize_parallel(ty, &x, n_per_row, &mut par, threads).unwrap();
            assert!(par == serial, "{ty} with {threads} threads");
        }
        // An odd destination address goes through an aligned scratch buffer.
        let mut buf = vec![0u8; serial.len() + 1];
        quant::quantize_into(ty, &x, n_per_row, &mut buf[1..]).unwrap();
        assert!(buf[1..] == serial[..], "{ty} misaligned");
        buf[1..].copy_from_slice(&serial);
        let bits = |q: &[u8]| {
            quant::dequantize(ty, q, x.len())
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert!(bits(&buf[1..]) == bits(&serial), "{ty} misaligned dequantize");
    }
}

#[test]
fn preconditions_give_specific_errors() {
    use GgmlType::*;
    let x = vec![1.0f32; 512];
    assert_eq!(
        quant::quantize(Q4_0, &x[..48], 48),
        Err(QuantError::PartialBlock {
            ty: Q4_0,
            n_per_row: 48
        })
    );
    assert_eq!(
        quant::quantize(Q6_K, &x[..128], 128),
        Err(QuantError::PartialBlock {
            ty: Q6_K,
            n_per_row: 128
        })
    );
    assert_eq!(
        quant::quantize(Q8_0, &x, 0),
        Err(QuantError::PartialBlock { ty: Q8_0, n_per_row: 0 })
    );
    assert_eq!(
        quant::quantize(Q4_0, &x[..100], 32),
        Err(QuantError::LengthMismatch {
            expected: 128,
            got: 100
        })
    );
    let mut dst = vec![0u8; 35];
    assert_eq!(
        quant::quantize_into(Q4_0, &x[..64], 64, &mut dst),
        Err(QuantError::LengthMismatch { expected: 36, got: 35 })
    );
    assert_eq!(
        quant::quantize_parallel(Q8_0, &x[..64], 32, &mut dst, 2),
        Err(QuantError::LengthMismatch { expected: 68, got: 35 })
    );
    for ty in [IQ2_XXS, IQ2_XS, IQ1_S, IQ2_S, IQ1_M] {
        assert_eq!(
            quant::quantize(ty, &x[..256], 256),
            Err(QuantError::RequiresImatrix { ty })
        );
        assert!(!quant::can_quantize(ty));
    }
    for ty in [Q8_1, Q8_K, I8, I16, I32, I64, F64] {
        assert_eq!(quant::quantize(ty, &x[..256], 256), Err(QuantError::Unsupported { ty }));
    }
    assert_eq!(
        quant::dequantize(Q4_0, &[0; 17], 32),
        Err(QuantError::LengthMismatch { expected: 18, got: 17 })
    );
    assert_eq!(
        quant::dequantize(Q4_0, &[0; 18], 33),
        Err(QuantError::PartialBlock {
            ty: Q4_0,
            n_per_row: 33
        })
    );
    assert_eq!(
        quant::dequantize(I32, &[0; 8], 2),
        Err(QuantError::Unsupported { ty: I32 })
    );
    assert_eq!(
        quant::f16_bytes_to_f32(&[0; 3]),
        Err(QuantError::LengthMismatch { expected: 4, got: 3 })
    );
    let msg = QuantError::PartialBlock {
        ty: Q6_K,
        n_per_row: 128,
    }
    .to_string();
    assert!(
        msg.contains("Q6_K") && msg.contains("128") && msg.contains("256"),
        "{msg}"
    );
    // Empty input is zero rows, not an error.
    assert_eq!(quant::quantize(Q4_0, &[], 32), Ok(vec![]));
    assert_eq!(quant::dequantize(Q4_0, &[], 0), Ok(vec![]));
}

#[test]
fn can_quantize_covers_the_converter_types() {
    use GgmlType::*;
    for ty in [F32, F16, BF16, Q4_0, Q8_0, Q6_K] {
        assert!(quant::can_quantize(ty), "{ty}");
    }
}
