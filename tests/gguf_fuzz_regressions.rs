//! Replays the inputs the fuzzer (tools/fuzz) found, and runs a deterministic mutation loop over seed files on
//! stable Rust, so CI keeps checking that no input makes the parser panic or accept an inconsistent file.
mod gguf_common;

use gguf_common::*;
use smallthinker::gguf::parse;

/// Parses `data`; if accepted, checks what the parser promises about accepted files.
fn check(data: &[u8]) {
    let Ok(h) = parse(data) else { return };
    assert!(h.alignment.is_power_of_two());
    assert_eq!(h.data_offset % h.alignment, 0);
    let mut expected = 0u64;
    for t in &h.tensors {
        assert_eq!(t.offset, expected, "offsets are the padded running sum");
        let start = h.data_offset + t.offset;
        assert!(
            data.get(start as usize..(start + t.size) as usize).is_some(),
            "tensor {} out of range",
            t.name
        );
        expected = t.offset + t.size.div_ceil(h.alignment) * h.alignment;
    }
}

#[test]
fn fuzzer_findings_are_rejected_cleanly() {
    let dir = fixture("fuzz");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "bin") {
            check(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    eprintln!("replayed {n} fuzzer inputs from {}", dir.display());
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit of the kinds that break parsers: bit flips, truncation, and rewritten length/count fields.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(d.len());
        match rng.below(6) {
            0 => d[at] ^= 1 << rng.below(8),
            1 => d.truncate(at),
            2 => {
                // A u64 field (string length, count, dim, offset) set to an edge value.
                let v: u64 = [
                    0,
                    1,
                    31,
                    32,
                    1 << 30,
                    (1 << 30) + 1,
                    1 << 62,
                    u64::MAX,
                    i64::MAX as u64,
                    rng.next(),
                ][rng.below(10)];
                let at = at.min(d.len().saturating_sub(8));
                let n = 8.min(d.len() - at);
                d[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
            }
            3 => {
                // A u32 field (type id, n_dims, version) set to an edge value.
                let v: u32 = [0, 4, 5, 9, 12, 13, 42, u32::MAX][rng.below(8)];
                let at = at.min(d.len().saturating_sub(4));
                let n = 4.min(d.len() - at);
                d[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
            }
            4 => {
                let n = rng.below(16);
                d.splice(at..at, std::iter::repeat_n(rng.next() as u8, n));
            }
            _ => {
                let end = (at + rng.below(16)).min(d.len());
                d.drain(at..end);
            }
        }
        if d.is_empty() {
            break;
        }
    }
    d
}

#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.gguf");
    write_sample(&ours, Some(64));
    let seeds = [
        std::fs::read(fixture("pyref.gguf")).unwrap(),
        std::fs::read(&ours).unwrap(),
    ];
    let mut rng = Rng(0x5EED_6767_0000_0001);
    // GGUF_MUTATION_ITERS=N runs a longer campaign (the default keeps CI at about a second).
    let iterations = std::env::var("GGUF_MUTATION_ITERS").map_or(30_000, |v| v.parse().expect("GGUF_MUTATION_ITERS"));
    let mut accepted = 0;
    for i in 0..iterations {
        let m = mutate(&mut rng, &seeds[i % seeds.len()]);
        if std::panic::catch_unwind(|| check(&m)).is_err() {
            let out = std::env::temp_dir().join(format!("gguf-mutation-{i}.bin"));
            std::fs::write(&out, &m).unwrap();
            panic!("iteration {i} panicked; input saved to {}", out.display());
        }
        accepted += usize::from(parse(&m).is_ok());
    }
    // Some mutations (in tensor data or padding) leave the file valid: the loop is not rejecting everything.
    eprintln!("{iterations} mutants, {accepted} accepted");
    assert!(
        accepted > iterations / 300 && accepted < iterations / 2,
        "{accepted} of {iterations} mutants accepted"
    );
}
