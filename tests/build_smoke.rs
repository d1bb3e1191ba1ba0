//! ggml is compiled with the ISA baseline that build.rs promises.
#[test]
#[cfg(target_arch = "x86_64")]
fn ggml_has_the_x86_baseline() {
    let f = smallthinker::ggml::cpu_features();
    for want in ["AVX2", "FMA", "F16C"] {
        assert!(f.contains(&want), "ggml built without {want}: {f:?}");
    }
}
