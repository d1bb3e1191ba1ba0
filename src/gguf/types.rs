//! ggml tensor types as GGUF stores them (`enum ggml_type` in vendor/ggml/include/ggml.h, ggml 0.25.3).
//!
//! Pure Rust so that the GGUF reader does not depend on ggml; `crate::ggml` maps these to `sys::ggml_type`.

use std::fmt;

/// A ggml tensor element type. Ids are the on-disk values; removed ids (4, 5, 31-33, 36-38) are not representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
#[allow(non_camel_case_types, missing_docs)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

/// (type, name, elements per block, bytes per block), as ggml.c's `type_traits` table has them.
const TABLE: &[(GgmlType, &str, u64, u64)] = {
    use GgmlType::*;
    &[
        (F32, "f32", 1, 4),
        (F16, "f16", 1, 2),
        (Q4_0, "q4_0", 32, 18),
        (Q4_1, "q4_1", 32, 20),
        (Q5_0, "q5_0", 32, 22),
        (Q5_1, "q5_1", 32, 24),
        (Q8_0, "q8_0", 32, 34),
        (Q8_1, "q8_1", 32, 40),
        (Q2_K, "q2_K", 256, 84),
        (Q3_K, "q3_K", 256, 110),
        (Q4_K, "q4_K", 256, 144),
        (Q5_K, "q5_K", 256, 176),
        (Q6_K, "q6_K", 256, 210),
        (Q8_K, "q8_K", 256, 292),
        (IQ2_XXS, "iq2_xxs", 256, 66),
        (IQ2_XS, "iq2_xs", 256, 74),
        (IQ3_XXS, "iq3_xxs", 256, 98),
        (IQ1_S, "iq1_s", 256, 50),
        (IQ4_NL, "iq4_nl", 32, 18),
        (IQ3_S, "iq3_s", 256, 110),
        (IQ2_S, "iq2_s", 256, 82),
        (IQ4_XS, "iq4_xs", 256, 136),
        (I8, "i8", 1, 1),
        (I16, "i16", 1, 2),
        (I32, "i32", 1, 4),
        (I64, "i64", 1, 8),
        (F64, "f64", 1, 8),
        (IQ1_M, "iq1_m", 256, 56),
        (BF16, "bf16", 1, 2),
        (TQ1_0, "tq1_0", 256, 54),
        (TQ2_0, "tq2_0", 256, 66),
        (MXFP4, "mxfp4", 32, 17),
        (NVFP4, "nvfp4", 64, 36),
        (Q1_0, "q1_0", 128, 18),
        (Q2_0, "q2_0", 64, 18),
    ]
};

impl GgmlType {
    /// Every type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|e| e.0)
    }

    /// The type with this on-disk id, if ggml 0.25.3 knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|e| e.0 as u32 == id).map(|e| e.0)
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    fn entry(self) -> &'static (GgmlType, &'static str, u64, u64) {
        TABLE
            .iter()
            .find(|e| e.0 == self)
            .expect("every GgmlType has a table entry")
    }

    /// ggml's name (`ggml_type_name`): "f32", "q4_0", "q6_K", ...
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// The type for a ggml name, case-insensitive ("Q4_0", "q6_k", "bf16").
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TABLE.iter().find(|e| e.1.eq_ignore_ascii_case(name)).map(|e| e.0)
    }

    /// Elements per block (`ggml_blck_size`).
    pub fn block_size(self) -> u64 {
        self.entry().2
    }

    /// Bytes per block (`ggml_type_size`).
    pub fn type_size(self) -> u64 {
        self.entry().3
    }

    /// True for the block-quantized types (block size above 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of one row of `ne0` elements, or None if `ne0` is not a whole number of blocks.
    pub fn row_bytes(self, ne0: u64) -> Option<u64> {
        if ne0 % self.block_size() != 0 {
            return None;
        }
        (ne0 / self.block_size()).checked_mul(self.type_size())
    }

    /// Bytes of a tensor with these dims (ggml order, `ne[0]` first), or None on a partial block or overflow.
    pub fn tensor_bytes(self, ne: &[u64]) -> Option<u64> {
        let (first, rest) = ne.split_first().unwrap_or((&1, &[]));
        rest.iter()
            .try_fold(self.row_bytes(*first)?, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_are_ggmls() {
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(43), None);
        assert_eq!(GgmlType::Q4_0.tensor_bytes(&[64, 3]), Some(2 * 18 * 3));
        assert_eq!(GgmlType::Q6_K.row_bytes(255), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
        assert_eq!(GgmlType::Q6_K.to_string(), "Q6_K");
    }
}
