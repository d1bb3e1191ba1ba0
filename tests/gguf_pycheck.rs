//! Cross-checks against gguf-py 0.19, the reference reader and writer: what we write it reads identically, and
//! what it writes we read identically. Needs $SMALLTHINKER_PYTHON (tools/test.sh); fails loudly without it.
mod gguf_common;

use gguf_common::*;
use smallthinker::gguf::GgufFile;

#[test]
fn gguf_py_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in [None, Some(64), Some(1)] {
        let path = dir.path().join(format!("ours-{alignment:?}.gguf"));
        let expected = write_sample(&path, alignment);
        let theirs = run_py("gguf_canon_dump.py", &[&path]);
        let ours = GgufFile::open(&path).unwrap();
        assert_eq!(
            without_data_offset(theirs.clone()),
            expected,
            "gguf-py's view of our file (alignment {alignment:?})"
        );
        assert_eq!(theirs["data_offset"], ours.data_offset(), "data section offset");
        assert_eq!(canon_file(&ours, false), expected, "our view of our file");
    }
}

#[test]
fn we_read_what_gguf_py_writes() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in ["32", "128"] {
        let path = dir.path().join(format!("py-{alignment}.gguf"));
        let arg = std::path::PathBuf::from(alignment);
        let manifest = run_py("gguf_write_sample.py", &[&path, &arg]);
        let theirs = run_py("gguf_canon_dump.py", &[&path]);
        let ours = GgufFile::open(&path).unwrap_or_else(|e| panic!("our reader rejects gguf-py's file: {e}"));
        assert_eq!(
            canon_file(&ours, false),
            manifest,
            "our view vs what gguf-py was asked to write"
        );
        assert_eq!(canon_file(&ours, true), theirs, "our view vs gguf-py's reader");
    }
}

#[test]
fn committed_fixture_is_what_the_script_writes() {
    // The fixture used by the python-free tests must still be what tools/py/gguf_write_sample.py produces.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pyref.gguf");
    let manifest = run_py("gguf_write_sample.py", &[&path]);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(fixture("pyref.gguf")).unwrap(),
        "regenerate pyref.gguf"
    );
    let committed: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("pyref.json")).unwrap()).unwrap();
    assert_eq!(manifest, committed, "regenerate pyref.json");
}

/// Opt-in: every GGUF in $GGUF_REF_DIR (e.g. llama.cpp's models/ggml-vocab-*.gguf) reads identically in gguf-py
/// and in our reader. `GGUF_REF_DIR=... cargo test --release --test gguf_pycheck -- --ignored`
#[test]
#[ignore]
fn reference_files_read_identically() {
    let dir = std::env::var_os("GGUF_REF_DIR").expect("set GGUF_REF_DIR to a folder of .gguf files");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "gguf") {
            continue;
        }
        let ours = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            canon_file(&ours, true),
            run_py("gguf_canon_dump.py", &[&path]),
            "{}",
            path.display()
        );
        n += 1;
    }
    eprintln!("{n} files read identically");
    assert!(n > 0);
}
