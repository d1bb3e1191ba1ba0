//! Memory-capped inference (`MoeSetup::with_budget`): logits with an expert cache small enough to evict on
//! every layer equal the unbudgeted native-layout path bit for bit, for both policies; the native layout's
//! sparse op equals the dense ggml path (mul_mat_id, llama.cpp's graph) bit for bit, prompts in batches and
//! decode steps alike; budgets below the dense part, changed files and short reads give errors. Cases that read
//! run with each I/O backend (io_uring only where the kernel allows it: elsewhere it is skipped, with a note).

mod common;
mod model_graph_util;

use std::path::{Path, PathBuf};

use common::fixtures;
use model_graph_util::nmse;
use smallthinker::gguf::GgufFile;
use smallthinker::graph::{
    CacheParams, CachePolicy, DownType, ExpertCache, ExpertExtents, ExpertFile, ExpertReadError, Extent, IoBackend,
};
use smallthinker::model::{
    BudgetError, BudgetParams, KvCache, KvParams, KvType, Model, MoeSetup, Rows, Session, SessionParams,
};

const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/smallthinker-tiny/smallthinker-tiny-f32.gguf"
);

/// The backends to test: pread always, io_uring where it can be set up.
fn backends() -> Vec<IoBackend> {
    match smallthinker::ggml::uring::Uring::new(3) {
        Ok(_) => vec![IoBackend::Pread, IoBackend::Uring],
        Err(e) => {
            eprintln!("note: io_uring is not available here ({e}): only the pread backend is tested");
            vec![IoBackend::Pread]
        }
    }
}

fn budget(bytes: u64, policy: CachePolicy) -> BudgetParams {
    budget_with(bytes, policy, IoBackend::Pread)
}

fn budget_with(bytes: u64, policy: CachePolicy, io_backend: IoBackend) -> BudgetParams {
    BudgetParams {
        bytes,
        policy,
        io_threads: 3,
        io_backend,
        n_threads: 2,
        n_batch: 8,
        n_outputs: 8,
        frequencies: None,
        pinned: Vec::new(),
        // Tests run concurrently: the process's resident set moves under them.
        assume_resident: Some(64 << 20),
        interleave: false,
        lookahead: 0,
    }
}

/// What a run returns: every step's logits, and the cache's (loads, slots) with a budget.
struct Out {
    logits: Vec<f32>,
    loads: Option<u64>,
    /// Loads that lookahead hints issued.
    hinted: u64,
}

enum Mode {
    Params(SessionParams),
    /// A cache of one layer's experts plus `extra` slots, read with `io`, hinted `lookahead` layers ahead (0: off).
    Budget {
        extra: usize,
        policy: CachePolicy,
        io: IoBackend,
        lookahead: u32,
    },
}

fn budget_mode(extra: usize, policy: CachePolicy, io: IoBackend) -> Mode {
    Mode::Budget {
        extra,
        policy,
        io,
        lookahead: 0,
    }
}

/// Equal bit for bit, and of the same length.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A prompt of 11 tokens in batches of 8 (all rows), then 6 decode steps.
fn run(path: &Path, mode: Mode) -> Out {
    let file = GgufFile::open(path).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let kvp = KvParams {
        n_ctx: 32,
        n_batch: 8,
        ty: KvType::F32,
    };
    let kv = KvCache::new(&kctx, &model.hp, kvp).unwrap();
    let n_vocab = model.hp.n_vocab;
    let params = SessionParams {
        n_threads: 2,
        sparse_max_batch: u32::MAX,
        down_type: DownType::Native,
        ..Default::default()
    };
    let mut s = match mode {
        Mode::Params(p) => Session::new(&model, kv, p).unwrap(),
        Mode::Budget {
            extra,
            policy,
            io,
            lookahead,
        } => {
            // Size the budget from the report of a roomy one: fixed parts + (n_expert + extra) slots.
            let (_, r) = MoeSetup::with_budget(&model, kv.allocated_bytes(), &budget(64 << 30, policy)).unwrap();
            let n = model.hp.n_expert as u64 + extra as u64;
            // with_budget keeps a margin of bytes/32 + 16 MiB; half a slot of slack for the resident set moving.
            let need = r.resident + r.kv + r.compute + (16 << 20) + n * r.slot + r.slot / 4;
            let bytes = (need as f64 * 32.0 / 31.0).ceil() as u64;
            let b = BudgetParams {
                lookahead,
                ..budget_with(bytes, policy, io)
            };
            let (moe, r2) = MoeSetup::with_budget(&model, kv.allocated_bytes(), &b).unwrap();
            assert_eq!(r2.io_backend, io);
            assert!(
                r2.n_slots >= model.hp.n_expert as usize && r2.n_slots < r2.n_experts_total,
                "{} slots of {}",
                r2.n_slots,
                r2.n_experts_total
            );
            Session::with_moe(&model, kv, params, moe).unwrap()
        }
    };
    let tokens: Vec<u32> = (0..17u32).map(|i| (i * 7919 + 13) % n_vocab).collect();
    let mut logits = s.eval(&tokens[..11], Rows::All).unwrap();
    for t in &tokens[11..] {
        logits.extend(s.eval(&[*t], Rows::Last).unwrap());
    }
    let loads = s.cache_stats().map(|c| c.loads);
    let hinted = s.cache_stats().map_or(0, |c| c.loads_hinted);
    Out { logits, loads, hinted }
}

fn native() -> Mode {
    Mode::Params(SessionParams {
        n_threads: 2,
        sparse_max_batch: u32::MAX,
        down_type: DownType::Native,
        ..Default::default()
    })
}

fn models() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(TINY)];
    for c in ["st4b", "st21b"] {
        for m in ["f32", "q4_0"] {
            v.push(fixtures::manifest(c).gguf(m));
        }
    }
    v
}

#[test]
fn budgeted_logits_equal_unbudgeted_native_logits() {
    for path in models() {
        let want = run(&path, native());
        let cases = backends()
            .into_iter()
            .flat_map(|io| [CachePolicy::Lru, CachePolicy::Frequency].map(|p| (p, io)));
        for (policy, io) in cases {
            let got = run(&path, budget_mode(2, policy, io));
            assert!(
                same_bits(&got.logits, &want.logits),
                "{}: {policy:?}, {io:?}: logits differ (nmse {:e})",
                path.display(),
                nmse(&got.logits, &want.logits)
            );
            let loads = got.loads.expect("cache stats");
            let file = GgufFile::open(&path).unwrap();
            let hp = smallthinker::model::Hparams::from_gguf(&file).unwrap();
            // More loads than experts in the model: slots were reused, i.e. experts were evicted and read again.
            assert!(
                loads > u64::from(hp.n_layer * hp.n_expert),
                "{}: only {loads} loads for {} experts",
                path.display(),
                hp.n_layer * hp.n_expert
            );
        }
    }
}

/// Lookahead hints (later layers' routers on the current input) start reads early: they never change the
/// logits, and on these models, whose later routers agree often enough, some loads are theirs.
#[test]
fn lookahead_hints_read_ahead_without_changing_the_logits() {
    for path in [PathBuf::from(TINY), fixtures::manifest("st4b").gguf("q4_0")] {
        let want = run(&path, native());
        for policy in [CachePolicy::Lru, CachePolicy::Frequency] {
            let hinted = Mode::Budget {
                extra: 2,
                policy,
                io: IoBackend::Pread,
                lookahead: 2,
            };
            let got = run(&path, hinted);
            assert!(
                same_bits(&got.logits, &want.logits),
                "{}: {policy:?}: logits differ with lookahead (nmse {:e})",
                path.display(),
                nmse(&got.logits, &want.logits)
            );
            assert!(got.hinted > 0, "{}: {policy:?}: no hinted loads", path.display());
            let no_hints = run(&path, budget_mode(2, policy, IoBackend::Pread));
            assert_eq!(no_hints.hinted, 0, "{}: hints without lookahead", path.display());
        }
    }
}

/// The same vec_dot kernels, activation quantisation and accumulation order as ggml's mul_mat_id graph: not
/// merely close, equal.
#[test]
fn native_layout_equals_the_dense_path() {
    for path in models() {
        let dense = run(
            &path,
            Mode::Params(SessionParams {
                dense: true,
                ..Default::default()
            }),
        );
        let got = run(&path, native());
        let e = nmse(&got.logits, &dense.logits);
        assert!(
            same_bits(&got.logits, &dense.logits),
            "{}: native vs dense differ, nmse {e:e}",
            path.display()
        );
    }
}

#[test]
fn a_budget_below_the_dense_part_names_the_minimum() {
    let file = GgufFile::open(Path::new(TINY)).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let kvp = KvParams {
        n_ctx: 32,
        n_batch: 8,
        ty: KvType::F32,
    };
    let kv = KvCache::new(&kctx, &model.hp, kvp).unwrap();
    let b = BudgetParams {
        assume_resident: None,
        ..budget(8 << 20, CachePolicy::Lru)
    };
    let err = MoeSetup::with_budget(&model, kv.allocated_bytes(), &b)
        .err()
        .expect("too small");
    let msg = err.to_string();
    match err {
        BudgetError::TooSmall {
            minimum_mib,
            budget_mib,
            ..
        } => {
            assert!(minimum_mib > budget_mib, "{msg}");
            assert!(
                msg.contains("smallthinker-tiny-f32.gguf") && msg.contains("minimum"),
                "{msg}"
            );
        }
        other => panic!("expected TooSmall, got {other}"),
    }
}

/// A file of `n` known bytes in a temporary directory.
fn temp_file(n: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.bin");
    let bytes: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    (dir, path, bytes)
}

fn identity(path: &Path) -> smallthinker::gguf::FileIdentity {
    smallthinker::gguf::FileIdentity::of(&std::fs::metadata(path).unwrap())
}

#[test]
fn expert_reads_return_the_file_bytes_and_fail_cleanly() {
    for io in backends() {
        reads_return_the_file_bytes_and_fail_cleanly(io);
    }
}

/// Two experts of three unaligned matrices each, the last one ending in the file's last, partial block.
fn two_experts() -> Vec<ExpertExtents> {
    let ext = |o: u64, len: u64| Extent { offset: o, len };
    vec![
        ExpertExtents {
            gate: ext(5, 9000),
            up: ext(9005, 9000),
            down: ext(18_005, 12_000),
        },
        ExpertExtents {
            gate: ext(30_005, 9000),
            up: ext(39_005, 9000),
            down: ext(48_005, 12_000),
        },
    ]
}

fn cache_params(backend: IoBackend) -> CacheParams {
    CacheParams {
        n_slots: 2,
        policy: CachePolicy::Lru,
        io_threads: 2,
        backend,
        frequencies: None,
        interleave: None,
    }
}

fn reads_return_the_file_bytes_and_fail_cleanly(io: IoBackend) {
    let (_dir, path, bytes) = temp_file(3 * 20_000 + 777);
    let ext = |o: u64, len: u64| Extent { offset: o, len };
    let extents = two_experts();
    let names = vec![["g".to_string(), "u".to_string(), "d".to_string()]];
    let file = ExpertFile::open(&path, identity(&path)).unwrap();
    let cache = ExpertCache::new(file, extents.clone(), names.clone(), 2, cache_params(io)).unwrap();
    assert_eq!(cache.io_backend(), io);
    cache.route(0, &[1, 0]);
    for e in 0..2u32 {
        let g = cache.get(0, e, true).expect("read");
        let x = extents[e as usize];
        for (m, x) in g.matrices().iter().zip([x.gate, x.up, x.down]) {
            assert_eq!(*m, &bytes[x.offset as usize..(x.offset + x.len) as usize], "{io:?}");
        }
    }
    let st = cache.stats();
    assert_eq!((st.lookups, st.hits, st.loads, st.loads_prefetched), (2, 0, 2, 2));
    // Whole aligned ranges: 3 + 3 + 4 blocks for expert 0, 3 + 3 + 4 for expert 1 (its last block partial).
    assert_eq!(st.bytes_read, 20 * 4096, "{io:?}");
    assert!(cache.take_error().is_none());
    drop(cache);

    // An extent past the end of the file: a short read, reported with the tensor and expert, no data.
    let mut bad = extents.clone();
    bad[1].down = ext(60_000, 5000);
    let file = ExpertFile::open(&path, identity(&path)).unwrap();
    let cache = ExpertCache::new(file, bad, names, 2, cache_params(io)).unwrap();
    cache.route(0, &[1]);
    assert!(cache.get(0, 1, false).is_none());
    match cache.take_error() {
        Some(ExpertReadError::Read {
            tensor,
            expert,
            message,
            ..
        }) => {
            assert_eq!((tensor.as_str(), expert), ("d", 1));
            assert!(message.contains("short read"), "{io:?}: {message}");
        }
        other => panic!("{io:?}: expected a short read, got {other:?}"),
    }
}

/// Truncated after the cache opened it, before expert 1's matrices: each backend reports the change, not a
/// short read, and hands out nothing.
#[test]
fn a_file_truncated_under_the_cache_is_reported_as_changed() {
    for io in backends() {
        let (_dir, path, _) = temp_file(3 * 20_000 + 777);
        let names = vec![["g".to_string(), "u".to_string(), "d".to_string()]];
        let file = ExpertFile::open(&path, identity(&path)).unwrap();
        let cache = ExpertCache::new(file, two_experts(), names, 2, cache_params(io)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(32_768)
            .unwrap();
        cache.route(0, &[1]);
        assert!(cache.get(0, 1, false).is_none(), "{io:?}");
        let err = cache.take_error();
        assert!(
            matches!(err, Some(ExpertReadError::Changed { ref path }) if path.ends_with("w.bin")),
            "{io:?}: {err:?}"
        );
    }
}

#[test]
fn a_file_replaced_since_it_was_opened_is_detected() {
    let (_dir, path, bytes) = temp_file(10_000);
    let before = identity(&path);
    // Rewritten through a new file renamed over it, as tools do: another inode.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, &bytes[..9000]).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    match ExpertFile::open(&path, before) {
        Err(ExpertReadError::Changed { path: p }) => assert_eq!(p, path),
        other => panic!("expected Changed, got {:?}", other.map(|_| ())),
    }
    // Truncated after opening: the failed read is reported as a change, not as garbage.
    let now = identity(&path);
    let file = ExpertFile::open(&path, now).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let mut region = vec![0u8; 16384];
    let off = region.as_ptr().align_offset(4096);
    let r = file.read(
        Extent {
            offset: 4096,
            len: 4000,
        },
        &mut region[off..off + 8192],
        ("t", 0),
    );
    assert!(matches!(r, Err(ExpertReadError::Changed { .. })), "{r:?}");
}

#[test]
fn pinned_experts_are_loaded_at_start_and_never_evicted() {
    let file = GgufFile::open(Path::new(TINY)).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let kvp = KvParams {
        n_ctx: 32,
        n_batch: 8,
        ty: KvType::F32,
    };
    let kv = KvCache::new(&kctx, &model.hp, kvp).unwrap();
    let (_, r) = MoeSetup::with_budget(&model, kv.allocated_bytes(), &budget(64 << 30, CachePolicy::Lru)).unwrap();
    // Two layers' worth of free slots plus three to pin; four asked for, so the last one is not pinned.
    let n = 2 * u64::from(model.hp.n_expert) + 3;
    let need = r.resident + r.kv + r.compute + (16 << 20) + n * r.slot + r.slot / 4;
    let pins = vec![(0, 3), (5, 1), (2, 7), (4, 4)];
    let b = BudgetParams {
        pinned: pins.clone(),
        ..budget((need as f64 * 32.0 / 31.0).ceil() as u64, CachePolicy::Lru)
    };
    let (moe, _) = MoeSetup::with_budget(&model, kv.allocated_bytes(), &b).unwrap();
    let cache = moe.sparse().unwrap().cache().unwrap();
    let st = cache.stats();
    assert_eq!((st.loads, st.loads_prefetched), (3, 0), "pre-warmed, not prefetched");
    let mut s = Session::with_moe(&model, kv, SessionParams::default(), moe.clone()).unwrap();
    let tokens: Vec<u32> = (0..20u32).map(|i| (i * 131 + 7) % model.hp.n_vocab).collect();
    s.eval(&tokens[..8], Rows::Last).unwrap();
    for t in &tokens[8..] {
        s.eval(&[*t], Rows::Last).unwrap();
    }
    assert!(
        cache.stats().loads > 3 + u64::from(model.hp.n_expert),
        "the rest of the cache turned over"
    );
    for &(il, e) in &pins[..3] {
        assert!(cache.is_ready(il, e), "pinned expert ({il}, {e}) was evicted");
    }
}
