//! TEMPORARY stand-in for `crate::quant` (quantize_parallel) until the quant branch lands: F16, BF16, Q8_0 and
//! Q4_0 reference rows after ggml-quants.c; Q6_K is refused.
#![allow(dead_code)]

use crate::gguf::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("stand-in quantizer cannot produce {0}")]
    Unsupported(GgmlType),
}

fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if (b & 0x7fff_ffff) > 0x7f80_0000 {
        return ((b >> 16) | 64) as u16;
    }
    ((b + (0x7fff + ((b >> 16) & 1))) >> 16) as u16
}

pub fn quantize_into(ty: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) -> Result<(), QuantError> {
    let _ = n_per_row;
    match ty {
        GgmlType::F16 => {
            for (x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::f16::from_f32(*x).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
                o.copy_from_slice(&bf16(*x).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            for (x, o) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                o[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
                for j in 0..32 {
                    o[2 + j] = (x[j] * id).round() as i8 as u8;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (x, o) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in x {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                o[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
                    let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
                    o[2 + j] = q0 | (q1 << 4);
                }
            }
        }
        t => return Err(QuantError::Unsupported(t)),
    }
    Ok(())
}

pub fn quantize_parallel(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
    _n_threads: usize,
) -> Result<(), QuantError> {
    quantize_into(ty, src, n_per_row, dst)
}
