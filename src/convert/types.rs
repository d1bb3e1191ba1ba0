//! Per-tensor output types: llama.cpp's converter rules (`conversion/base.py`), and for Q4_0 those of
//! `llama-quantize` with default parameters applied to the converter's F32 output (`src/llama-quant.cpp`).

use crate::gguf::GgmlType;

use super::names::Kind;

/// `smallthinker convert --type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    Bf16,
    Q8_0,
    /// llama-quantize's Q4_0 mix (output Q6_K, ...).
    Q4_0,
    /// Every matrix but the router in Q4_0 (llama-quantize `--pure`).
    Q4_0Pure,
}

impl std::str::FromStr for OutType {
    type Err = String;
    fn from_str(s: &str) -> Result<OutType, String> {
        Ok(match s {
            "f32" => OutType::F32,
            "f16" => OutType::F16,
            "bf16" => OutType::Bf16,
            "q8_0" => OutType::Q8_0,
            "q4_0" => OutType::Q4_0,
            "q4_0-pure" => OutType::Q4_0Pure,
            _ => return Err(format!("unknown type {s:?} (f32, f16, bf16, q8_0, q4_0, q4_0-pure)")),
        })
    }
}

impl OutType {
    /// `general.file_type` (`enum llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Bf16 => 32,
            OutType::Q8_0 => 7,
            OutType::Q4_0 | OutType::Q4_0Pure => 2,
        }
    }
}

/// llama-quantize's `tensor_type_fallback`: a block type that does not divide the row length falls back (Q6_K →
/// Q8_0), and a 32-block type that still does not fit becomes F16.
fn fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    if ne0 % ty.block_size() == 0 {
        return ty;
    }
    let t = if ty == GgmlType::Q6_K { GgmlType::Q8_0 } else { ty };
    if ne0 % t.block_size() != 0 {
        GgmlType::F16
    } else {
        t
    }
}

/// The GGUF type of a tensor. `has_output` tells whether the file has `output.weight` (llama-quantize treats
/// token_embd as the output matrix when it does not).
pub fn tensor_type(out: OutType, kind: Kind, dims: &[u64], has_output: bool) -> GgmlType {
    // Converter: 1-D tensors, norms and the router are always F32.
    if dims.len() <= 1 || matches!(kind, Kind::Norm | Kind::Router) {
        return GgmlType::F32;
    }
    let ne0 = dims[0];
    match out {
        OutType::F32 => GgmlType::F32,
        OutType::F16 => GgmlType::F16,
        OutType::Bf16 => GgmlType::BF16,
        // gguf-py raises QuantError for a row that is not whole blocks and the converter falls back to F16.
        OutType::Q8_0 => {
            if ne0 % 32 == 0 {
                GgmlType::Q8_0
            } else {
                GgmlType::F16
            }
        }
        OutType::Q4_0Pure => fallback(GgmlType::Q4_0, ne0),
        OutType::Q4_0 => {
            let output_like = kind == Kind::Output || (kind == Kind::TokenEmbd && !has_output);
            let ty = if output_like {
                // llama_tensor_get_type_impl: Q8_0 if the row is not whole blocks of the default type, else Q6_K.
                if ne0 % GgmlType::Q4_0.block_size() != 0 {
                    GgmlType::Q8_0
                } else {
                    GgmlType::Q6_K
                }
            } else {
                GgmlType::Q4_0
            };
            fallback(ty, ne0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    #[test]
    fn llama_quantize_rules() {
        let t = |o, k, d: &[u64], out| tensor_type(o, k, d, out);
        assert_eq!(t(OutType::Q4_0, Kind::Output, &[1536, 151936], true), Q6_K);
        assert_eq!(t(OutType::Q4_0, Kind::Output, &[64, 151936], true), Q8_0); // 64 % 256: Q6_K falls back
        assert_eq!(t(OutType::Q4_0, Kind::TokenEmbd, &[1536, 151936], true), Q4_0);
        assert_eq!(t(OutType::Q4_0, Kind::TokenEmbd, &[1536, 151936], false), Q6_K);
        assert_eq!(t(OutType::Q4_0, Kind::Experts, &[48, 64, 4], true), F16);
        assert_eq!(t(OutType::Q4_0, Kind::Router, &[1536, 32], true), F32);
        assert_eq!(t(OutType::Q4_0Pure, Kind::Output, &[1536, 151936], true), Q4_0);
        assert_eq!(t(OutType::Q8_0, Kind::Attn, &[48, 64], true), F16);
        assert_eq!(t(OutType::Bf16, Kind::Norm, &[64], true), F32);
    }
}
