//! Compiles the vendored ggml (CPU backend only) into one static library with the `cc` crate.
//!
//! - Always -O3, even for `cargo test`: an unoptimised ggml runs 10-50x slower.
//! - A fixed ISA baseline (x86-64: AVX2, FMA, F16C, BMI2; aarch64: NEON) so the binary runs on any machine of that
//!   class; `SMALLTHINKER_NATIVE=1` opts into `-march=native` for the build host only.
//! - No OpenMP: ggml's own thread pool is used.
//! - C and C++ objects go into one archive, so the link order between them does not matter.
//!
//! The Rust bindings are not generated here: they are committed in `src/ggml/sys.rs` (see tools/gen-bindings.sh),
//! so a fresh machine needs no libclang.

use std::env;
use std::path::{Path, PathBuf};

/// Must match vendor/ggml/VENDORED.md.
const GGML_VERSION: &str = "0.25.3";
const GGML_COMMIT: &str = "llama.cpp-0c1e57098";

/// Translation units compiled as C11 (gcc). Everything else is C++17.
const C_FILES: &[&str] = &[
    "src/ggml.c",
    "src/ggml-alloc.c",
    "src/ggml-quants.c",
    "src/ggml-cpu/ggml-cpu.c",
    "src/ggml-cpu/quants.c",
];

const CXX_FILES: &[&str] = &[
    "src/ggml.cpp",
    "src/ggml-backend.cpp",
    "src/ggml-backend-meta.cpp",
    "src/ggml-backend-reg.cpp",
    "src/ggml-backend-dl.cpp",
    "src/ggml-opt.cpp",
    "src/ggml-threading.cpp",
    "src/gguf.cpp",
    "src/ggml-cpu/ggml-cpu.cpp",
    "src/ggml-cpu/repack.cpp",
    "src/ggml-cpu/hbm.cpp",
    "src/ggml-cpu/traits.cpp",
    "src/ggml-cpu/binary-ops.cpp",
    "src/ggml-cpu/unary-ops.cpp",
    "src/ggml-cpu/vec.cpp",
    "src/ggml-cpu/ops.cpp",
    "src/ggml-cpu/amx/amx.cpp",
    "src/ggml-cpu/amx/mmq.cpp",
    "src/ggml-cpu/tiled/tiled.cpp",
    "src/ggml-cpu/tiled/tiled-kernel.cpp",
    "src/ggml-cpu/llamafile/sgemm.cpp",
];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ggml = root.join("vendor/ggml");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let native = env::var("SMALLTHINKER_NATIVE").is_ok_and(|v| v == "1");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=vendor");
    println!("cargo:rerun-if-env-changed=SMALLTHINKER_NATIVE");

    // ggml.c includes ggml-version.h, which CMake would generate from ggml-version.h.in.
    let version_h =
        format!("#pragma once\n#define GGML_VERSION \"{GGML_VERSION}\"\n#define GGML_COMMIT \"{GGML_COMMIT}\"\n");
    std::fs::write(out.join("ggml-version.h"), version_h).expect("write ggml-version.h");

    let (arch_dir, isa_flags): (&str, &[&str]) = match (arch.as_str(), native) {
        (_, true) => (arch_dir_for(&arch), &["-march=native"]),
        ("x86_64", false) => ("x86", &["-mavx2", "-mfma", "-mf16c", "-mbmi2"]),
        // NEON is part of the aarch64 baseline; dotprod/fp16 need -march=native or a newer baseline.
        ("aarch64", false) => ("arm", &[]),
        (other, false) => panic!("smallthinker builds ggml for x86_64 and aarch64 only, not {other}"),
    };
    let arch_c = format!("src/ggml-cpu/arch/{arch_dir}/quants.c");
    let arch_cxx = format!("src/ggml-cpu/arch/{arch_dir}/repack.cpp");

    let configure = |b: &mut cc::Build| {
        b.include(ggml.join("include"))
            .include(ggml.join("src"))
            .include(ggml.join("src/ggml-cpu"))
            .include(&out)
            .define("_XOPEN_SOURCE", "600")
            .define("_GNU_SOURCE", None)
            .define("NDEBUG", None)
            .define("GGML_SCHED_MAX_COPIES", "4")
            .define("GGML_USE_CPU", None)
            .define("GGML_USE_CPU_REPACK", None)
            .define("GGML_USE_LLAMAFILE", None)
            .opt_level(3)
            .debug(false)
            .warnings(false)
            .cargo_warnings(false);
        for f in isa_flags {
            b.flag(f);
        }
    };

    let mut c = cc::Build::new();
    configure(&mut c);
    // ISO C11 (not gnu11) and no FMA contraction: Q4_0's rounding step must not be fused, or rare blocks round
    // differently from gguf-py's reference quantizer.
    c.std("c11").flag("-ffp-contract=off");
    c.files(C_FILES.iter().map(|f| ggml.join(f))).file(ggml.join(&arch_c));
    let c_objects = c.compile_intermediates();

    let mut cxx = cc::Build::new();
    configure(&mut cxx);
    cxx.cpp(true).std("c++17");
    cxx.files(CXX_FILES.iter().map(|f| ggml.join(f)))
        .file(ggml.join(&arch_cxx));
    cxx.objects(&c_objects);
    check_unique_object_names(&c_objects);
    cxx.compile("ggml");

    println!("cargo:rustc-link-lib=m");
    println!("cargo:rustc-link-lib=dl");
    println!("cargo:rustc-link-lib=pthread");
}

fn arch_dir_for(arch: &str) -> &'static str {
    match arch {
        "x86_64" => "x86",
        "aarch64" => "arm",
        other => panic!("smallthinker builds ggml for x86_64 and aarch64 only, not {other}"),
    }
}

/// ggml has two `quants.c` and two `repack.cpp` (generic and per-arch). cc prefixes object names with a hash of
/// the source directory; fail loudly if that ever stops being true, since one object would silently replace the other.
fn check_unique_object_names(objects: &[PathBuf]) {
    let mut names: Vec<_> = objects.iter().filter_map(|p| Path::file_name(p)).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate ggml object file names: {objects:?}");
}
