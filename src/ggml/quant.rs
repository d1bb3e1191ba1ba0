//! Quantization and dequantization through ggml's own row functions, so the bytes are llama.cpp's.
//!
//! - [`quantize`] / [`quantize_into`] / [`quantize_parallel`] call `ggml_quantize_chunk` without an importance
//!   matrix: exactly what `llama-quantize` writes without `--imatrix` (Q4_0, Q8_0 and Q6_K use ggml's `*_ref`
//!   routines; gguf-py's numpy Q4_0/Q8_0 quantizers give the same bytes, tests/quant.rs checks both).
//! - [`dequantize`] calls the type's `to_float` from `ggml_get_type_traits`.
//! - [`f32_to_f16_bytes`] / [`f32_to_bf16_bytes`] give the bytes gguf-py (and so `convert_hf_to_gguf.py`) writes.
//!
//! Bit identity depends on build.rs compiling ggml-quants.c as ISO C (`-std=c11`, hence `-ffp-contract=off`): with
//! `-std=gnu11 -mfma` gcc fuses `x*id + 8.5f` in `quantize_row_q4_0_ref` into an FMA, which rounds differently from
//! llama.cpp (whose ggml-base has no FMA flags) and gguf-py in rare blocks.
//!
//! Every precondition is checked here first: ggml asserts abort the process, and `to_float` does not check its
//! length at all (NDEBUG).
//!
//! ## F16 and BF16 conversions versus gguf-py
//! - BF16: ggml's `ggml_fp32_to_bf16_row_ref` (round to nearest even, NaN → `(bits >> 16) | 0x40`) equals gguf-py's
//!   `BF16.quantize_blocks`: the same formula (gguf-py writes the NaN branch differently, to the same bits); the
//!   tests check the edge cases and 2^20 seeded patterns. We never call `ggml_fp32_to_bf16_row`: built with
//!   AVX512-BF16 (`SMALLTHINKER_NATIVE=1` on such a CPU) it flushes subnormals.
//! - F16: ggml's `ggml_fp32_to_fp16_row` and numpy's `astype(float16)` agree on non-NaN input (RNE, overflow to
//!   inf, subnormals; checked on the edge cases, 2^20 seeded patterns, and against the `half` crate). They differ
//!   on NaN: ggml writes `sign | 0x7E00` for any NaN; numpy keeps the top 10 payload bits unquieted,
//!   `sign | (0x7C00 + (mantissa >> 13))`, bumped to `0x7C01` when that would read as inf (numpy 2.4.6 on x86-64,
//!   as tools/py/quant_fixtures.py records). [`f32_to_f16_bytes`] follows numpy (the converter's reference);
//!   [`quantize`] with `F16` is ggml's (`llama-quantize`'s). Real checkpoints hold no NaN, so the two agree on
//!   every real tensor.
//! - F16 → F32: ggml quiets a signalling NaN (`0x7C01` → `0x7FC02000`); numpy keeps it (`0x7F802000`). Every other
//!   input converts exactly in both.

use std::ffi::c_void;
use std::sync::Once;

use super::sys;
use crate::gguf::GgmlType;

/// Why a buffer could not be (de)quantized. Checked before ggml sees the buffers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The row length (or element count) is zero or not a whole number of the type's blocks.
    #[error("{ty}: {n_per_row} elements is not a whole number of {}-element blocks", ty.block_size())]
    PartialBlock { ty: GgmlType, n_per_row: usize },
    /// ggml cannot produce (or read) this type without extra input, or has no routine for it.
    #[error("{ty} is not supported here")]
    Unsupported { ty: GgmlType },
    /// A buffer has the wrong length: f32 elements for a source to quantize, bytes otherwise.
    #[error("buffer length mismatch: expected {expected}, got {got}")]
    LengthMismatch { expected: usize, got: usize },
    /// This type is only usable with an importance matrix, which smallthinker does not compute.
    #[error("{ty} needs an importance matrix (llama-quantize --imatrix)")]
    RequiresImatrix { ty: GgmlType },
}

fn sys_type(ty: GgmlType) -> sys::ggml_type {
    ty.id() as sys::ggml_type
}

/// True if [`quantize`] supports `ty`: every type ggml quantizes without an importance matrix.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | IQ3_XXS
            | IQ3_S
            | IQ4_NL
            | IQ4_XS
            | TQ1_0
            | TQ2_0
            | MXFP4
            | NVFP4
            | Q1_0
            | Q2_0
    )
}

/// ggml's own list (`ggml_quantize_requires_imatrix`) plus IQ2_S and IQ1_M, which llama-quantize also refuses
/// to make without an imatrix because the result is unusable.
fn requires_imatrix(ty: GgmlType) -> bool {
    // SAFETY: a pure function of the type id; every GgmlType id is below GGML_TYPE_COUNT.
    let ggml_says = unsafe { sys::ggml_quantize_requires_imatrix(sys_type(ty)) };
    ggml_says || matches!(ty, GgmlType::IQ2_S | GgmlType::IQ1_M)
}

fn check_quantizable(ty: GgmlType) -> Result<(), QuantError> {
    if requires_imatrix(ty) {
        return Err(QuantError::RequiresImatrix { ty });
    }
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported { ty });
    }
    Ok(())
}

/// Bytes of one row of `n` elements, or PartialBlock.
fn row_bytes(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let partial = QuantError::PartialBlock { ty, n_per_row: n };
    if n == 0 {
        return Err(partial);
    }
    let bytes = ty.row_bytes(n as u64).ok_or(partial)?;
    // A row of n f32 is already in memory, and no type is wider than 4 bytes per element, so this fits.
    Ok(usize::try_from(bytes).expect("row bytes fit in usize"))
}

/// (rows, bytes per row) of `src` split into rows of `n_per_row`.
fn shape(ty: GgmlType, src_len: usize, n_per_row: usize) -> Result<(usize, usize), QuantError> {
    check_quantizable(ty)?;
    let rb = row_bytes(ty, n_per_row)?;
    if src_len % n_per_row != 0 {
        return Err(QuantError::LengthMismatch {
            expected: src_len.div_ceil(n_per_row) * n_per_row,
            got: src_len,
        });
    }
    Ok((src_len / n_per_row, rb))
}

/// The strictest alignment of ggml's block structs for `ty` (most hold a `ggml_half`, Q8_K a float).
/// ggml casts buffers to these struct pointers; a misaligned one is UB the vectorizer may act on.
fn block_align(ty: GgmlType) -> usize {
    use GgmlType::*;
    match ty {
        F64 | I64 => 8,
        F32 | I32 | Q8_K => 4,
        _ => 2,
    }
}

fn is_aligned(ptr: *const u8, align: usize) -> bool {
    (ptr as usize) % align == 0
}

/// `ggml_quantize_init` builds lookup grids for some IQ types. ggml_quantize_chunk calls it on every chunk under
/// a global mutex (ggml_critical_section_start), so it is thread-safe; doing it once per type up front keeps the
/// grid build out of the worker threads.
fn init_once(ty: GgmlType) {
    static INIT: [Once; sys::GGML_TYPE_COUNT as usize] = [const { Once::new() }; sys::GGML_TYPE_COUNT as usize];
    // SAFETY: ggml_quantize_init takes the global critical section and is a no-op for types without grids.
    INIT[ty.id() as usize].call_once(|| unsafe { sys::ggml_quantize_init(sys_type(ty)) });
}

/// Quantizes `src` (rows of `n_per_row` f32) to `ty`; returns `rows * ty.row_bytes(n_per_row)` bytes.
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>, QuantError> {
    let (rows, rb) = shape(ty, src.len(), n_per_row)?;
    let mut dst = vec![0u8; rows * rb];
    quantize_into(ty, src, n_per_row, &mut dst)?;
    Ok(dst)
}

/// Quantizes `src` (rows of `n_per_row` f32) into `dst`, which must be exactly `rows * row_bytes` long.
pub fn quantize_into(ty: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) -> Result<(), QuantError> {
    let (rows, rb) = shape(ty, src.len(), n_per_row)?;
    let expected = rows * rb;
    if dst.len() != expected {
        return Err(QuantError::LengthMismatch {
            expected,
            got: dst.len(),
        });
    }
    if rows == 0 {
        return Ok(());
    }
    init_once(ty);
    if is_aligned(dst.as_ptr(), block_align(ty)) {
        quantize_chunk(ty, src, rows, n_per_row, dst.as_mut_ptr());
    } else {
        // A u64 buffer is aligned for every block struct.
        let mut tmp = vec![0u64; expected.div_ceil(8)];
        quantize_chunk(ty, src, rows, n_per_row, tmp.as_mut_ptr().cast());
        dst.copy_from_slice(&as_bytes(&tmp)[..expected]);
    }
    Ok(())
}

/// Calls ggml_quantize_chunk on validated arguments: `src` is `rows * n_per_row` long, `dst` points to
/// `rows * row_bytes` writable bytes aligned for `ty`'s blocks, and `ty` is quantizable without an imatrix.
fn quantize_chunk(ty: GgmlType, src: &[f32], rows: usize, n_per_row: usize, dst: *mut u8) {
    debug_assert_eq!(src.len(), rows * n_per_row);
    // SAFETY: the caller checked the lengths, the block size, the type and the alignment (see above), so ggml reads
    // exactly src.len() floats and writes exactly rows * row_bytes bytes; no imatrix is needed for these types.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            sys_type(ty),
            src.as_ptr(),
            dst.cast::<c_void>(),
            0,
            rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    debug_assert_eq!(written, rows * row_bytes(ty, n_per_row).unwrap_or(0));
}

/// [`quantize_into`] with the rows split into `n_threads` contiguous ranges on scoped threads. Rows are quantized
/// independently (no imatrix), so the bytes equal the serial call's. `n_threads` 0 means 1.
pub fn quantize_parallel(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
    n_threads: usize,
) -> Result<(), QuantError> {
    let (rows, rb) = shape(ty, src.len(), n_per_row)?;
    if dst.len() != rows * rb {
        return Err(QuantError::LengthMismatch {
            expected: rows * rb,
            got: dst.len(),
        });
    }
    let n_threads = n_threads.clamp(1, rows.max(1));
    if n_threads == 1 {
        return quantize_into(ty, src, n_per_row, dst);
    }
    init_once(ty);
    let rows_per_thread = rows.div_ceil(n_threads);
    std::thread::scope(|s| {
        let jobs: Vec<_> = src
            .chunks(rows_per_thread * n_per_row)
            .zip(dst.chunks_mut(rows_per_thread * rb))
            .map(|(src, dst)| s.spawn(move || quantize_into(ty, src, n_per_row, dst)))
            .collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().expect("quantize worker panicked"))
    })
}

/// Dequantizes `n` elements of `ty` from `src` (exactly `ty.row_bytes(n)` bytes) with ggml's `to_float`.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    let expected = if n == 0 { 0 } else { row_bytes(ty, n)? };
    if src.len() != expected {
        return Err(QuantError::LengthMismatch {
            expected,
            got: src.len(),
        });
    }
    if ty == GgmlType::F32 {
        // ggml has no to_float for F32: it is the identity.
        return Ok(src
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    // SAFETY: every GgmlType id is below GGML_TYPE_COUNT, and ggml_get_type_traits returns a pointer into a static
    // table.
    let traits = unsafe { &*sys::ggml_get_type_traits(sys_type(ty)) };
    let Some(to_float) = traits.to_float else {
        return Err(QuantError::Unsupported { ty });
    };
    let mut out = vec![0f32; n];
    if n == 0 {
        return Ok(out);
    }
    let aligned_copy;
    let src_ptr = if is_aligned(src.as_ptr(), block_align(ty)) {
        src.as_ptr()
    } else {
        let mut tmp = vec![0u64; src.len().div_ceil(8)];
        as_bytes_mut(&mut tmp)[..src.len()].copy_from_slice(src);
        aligned_copy = tmp;
        aligned_copy.as_ptr().cast()
    };
    // SAFETY: src_ptr points to exactly row_bytes(n) readable bytes, aligned for the type's blocks; n is a whole
    // number of blocks and `out` holds n floats, which is all to_float reads and writes.
    unsafe { to_float(src_ptr.cast(), out.as_mut_ptr(), n as i64) };
    Ok(out)
}

/// F32 → F16 little-endian bytes as gguf-py writes them (numpy `astype(float16)`): ggml's round-to-nearest-even
/// row conversion, with NaN payloads kept as numpy keeps them (see the module docs).
pub fn f32_to_f16_bytes(src: &[f32]) -> Vec<u8> {
    let mut half = vec![0u16; src.len()];
    if !src.is_empty() {
        // SAFETY: both buffers hold src.len() elements; ggml_fp16_t is u16.
        unsafe { sys::ggml_fp32_to_fp16_row(src.as_ptr(), half.as_mut_ptr(), src.len() as i64) };
    }
    for (h, x) in half.iter_mut().zip(src) {
        if x.is_nan() {
            *h = numpy_f16_nan(x.to_bits());
        }
    }
    half.iter().flat_map(|h| h.to_le_bytes()).collect()
}

/// numpy's `npy_floatbits_to_halfbits` for a NaN: top 10 payload bits, not quieted, never reading as inf.
fn numpy_f16_nan(bits: u32) -> u16 {
    let sign = ((bits >> 16) & 0x8000) as u16;
    let h = 0x7C00 + ((bits & 0x007F_FFFF) >> 13) as u16;
    sign | if h == 0x7C00 { 0x7C01 } else { h }
}

/// F32 → BF16 little-endian bytes, identical to gguf-py's `BF16` quantizer (ggml's reference row conversion).
pub fn f32_to_bf16_bytes(src: &[f32]) -> Vec<u8> {
    let mut out = vec![sys::ggml_bf16_t { bits: 0 }; src.len()];
    if !src.is_empty() {
        // SAFETY: both buffers hold src.len() elements; ggml_bf16_t is a repr(C) u16.
        unsafe { sys::ggml_fp32_to_bf16_row_ref(src.as_ptr(), out.as_mut_ptr(), src.len() as i64) };
    }
    out.iter().flat_map(|h| h.bits.to_le_bytes()).collect()
}

/// F16 little-endian bytes → f32 (exact; ggml's conversion). Fails on an odd byte count.
pub fn f16_bytes_to_f32(src: &[u8]) -> Result<Vec<f32>, QuantError> {
    dequantize(GgmlType::F16, src, half_count(src)?)
}

/// BF16 little-endian bytes → f32 (exact: the bits shifted up by 16). Fails on an odd byte count.
pub fn bf16_bytes_to_f32(src: &[u8]) -> Result<Vec<f32>, QuantError> {
    dequantize(GgmlType::BF16, src, half_count(src)?)
}

fn half_count(src: &[u8]) -> Result<usize, QuantError> {
    if src.len() % 2 != 0 {
        return Err(QuantError::LengthMismatch {
            expected: src.len() + 1,
            got: src.len(),
        });
    }
    Ok(src.len() / 2)
}

fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 8) }
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as in as_bytes; every byte pattern is a valid u64, so writes through the view are sound.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}
