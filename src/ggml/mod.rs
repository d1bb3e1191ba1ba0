//! Safe wrapper over the vendored ggml: the only module of the crate with `unsafe`.
#![allow(unsafe_code)]

pub mod mmap;
#[rustfmt::skip]
pub mod sys;

/// The CPU features ggml was compiled with, as ggml reports them.
pub fn cpu_features() -> Vec<&'static str> {
    // SAFETY: these ggml functions take no arguments and only read compile-time constants.
    let flags = unsafe {
        [
            ("AVX2", sys::ggml_cpu_has_avx2()),
            ("FMA", sys::ggml_cpu_has_fma()),
            ("F16C", sys::ggml_cpu_has_f16c()),
            ("BMI2", sys::ggml_cpu_has_bmi2()),
            ("AVX512", sys::ggml_cpu_has_avx512()),
            ("NEON", sys::ggml_cpu_has_neon()),
        ]
    };
    flags.iter().filter(|(_, on)| *on != 0).map(|(n, _)| *n).collect()
}
