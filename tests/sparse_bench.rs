//! Decode speed of the sparse path against the dense one on a real-shape model (not part of the suite):
//! `SPARSE_BENCH_MODEL=/work/bench/st4b-q4_0-pure.gguf cargo test --release --test sparse_bench -- --ignored
//! --nocapture`. Rounds alternate the paths, since the machine is shared and noisy.

use std::time::Instant;

use smallthinker::gguf::{GgmlType, GgufFile};
use smallthinker::graph::DownType;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};

#[test]
#[ignore = "needs SPARSE_BENCH_MODEL, takes minutes"]
fn decode_speed_sparse_vs_dense() {
    let path = std::env::var("SPARSE_BENCH_MODEL").expect("set SPARSE_BENCH_MODEL to a GGUF");
    let n_gen: usize = std::env::var("SPARSE_BENCH_TOKENS").map_or(16, |v| v.parse().unwrap());
    let n_threads: usize = std::env::var("SPARSE_BENCH_THREADS").map_or(2, |v| v.parse().unwrap());
    let file = GgufFile::open(path.as_ref()).unwrap();
    let wctx = Model::context(&file).unwrap();
    let model = Model::load(&wctx, &file).unwrap();
    let kctx = KvCache::context(&model.hp).unwrap();
    let kctx2 = KvCache::context(&model.hp).unwrap();
    let kctx3 = KvCache::context(&model.hp).unwrap();
    let kvp = KvParams {
        n_ctx: 512,
        n_batch: 128,
        ty: KvType::F16,
    };
    let mk = |k, dense, down| {
        let t = Instant::now();
        let p = SessionParams {
            n_threads,
            dense,
            down_type: down,
            sparse_max_batch: u32::MAX, // prompts through the sparse op too, to time it
        };
        let s = Session::new(&model, KvCache::new(k, &model.hp, kvp).unwrap(), p).unwrap();
        eprintln!("{} (set up in {:.1} s)", s.moe_path(), t.elapsed().as_secs_f64());
        s
    };
    // SPARSE_BENCH_ONLY=q8_0|q4_0|dense: one path only (for a profiler).
    let only = std::env::var("SPARSE_BENCH_ONLY").ok();
    let want = |n: &str| only.as_deref().is_none_or(|o| o == n);
    let mut sessions = Vec::new();
    if want("q8_0") {
        sessions.push(("sparse Q8_0 down", mk(&kctx, false, DownType::Fixed(GgmlType::Q8_0))));
    }
    if want("q4_0") {
        sessions.push(("sparse Q4_0 down", mk(&kctx2, false, DownType::Fixed(GgmlType::Q4_0))));
    }
    if want("dense") {
        sessions.push(("dense", mk(&kctx3, true, DownType::Auto)));
    }
    let n_prompt: u32 = std::env::var("SPARSE_BENCH_PROMPT").map_or(128, |v| v.parse().unwrap());
    let prompt: Vec<u32> = (0..n_prompt).map(|i| 1000 + 37 * i).collect();
    for round in 0..2 {
        for (name, s) in sessions.iter_mut() {
            s.reset();
            let t = Instant::now();
            s.eval(&prompt, Rows::Last).unwrap();
            let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
            s.reset_moe_stats();
            let mut tok = 1234u32;
            let t = Instant::now();
            for _ in 0..n_gen {
                let l = s.eval(&[tok], Rows::Last).unwrap();
                tok = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as u32;
            }
            let secs = t.elapsed().as_secs_f64();
            let st = s.moe_stats();
            eprintln!(
                "round {round} {name:>16}: prefill {prefill:.2} tok/s ({n_prompt} tokens), decode {:.2} tok/s \
                 ({n_gen} tokens), active neuron frac {:.3}",
                n_gen as f64 / secs,
                st.active_frac()
            );
        }
    }
}
