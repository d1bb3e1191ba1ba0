//! Decode throughput of `model::decode_batch` over N sessions against stepping the same sessions one by one
//! (a graph each), after a short prompt per session; f16 KV cache, sparse path unless `dense`; best of 3
//! alternating rounds of GEN steps each.
//!
//!     cargo run --release --example batch_speed -- MODEL.gguf THREADS GEN 1,2,4 [dense]

use std::time::Instant;

use smallthinker::gguf::GgufFile;
use smallthinker::model::{decode_batch, KvCache, KvParams, KvType, Model, MoeSetup, Rows, Session, SessionParams};

const ROUNDS: u32 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: batch_speed MODEL THREADS GEN 1,2,4 [dense]";
    let (model, threads, gen, counts, dense) = match a.as_slice() {
        [_, m, t, g, c] => (m, t, g, c, false),
        [_, m, t, g, c, d] if d == "dense" => (m, t, g, c, true),
        _ => return Err(usage.into()),
    };
    let (threads, gen): (usize, u32) = (threads.parse()?, gen.parse()?);
    let file = GgufFile::open(model.as_ref())?;
    let wctx = Model::context(&file)?;
    let model = Model::load(&wctx, &file)?;
    let params = SessionParams {
        n_threads: threads,
        dense,
        ..Default::default()
    };
    let moe = MoeSetup::new(&model, &params);
    println!("{}", moe.description());
    let kv_params = KvParams {
        n_ctx: gen * 2 * ROUNDS + 64,
        n_batch: 64,
        ty: KvType::F16,
    };
    for n in counts.split(',').map(str::parse::<usize>) {
        let n = n?;
        let kctxs = (0..n)
            .map(|_| KvCache::context(&model.hp))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sessions = Vec::new();
        for kctx in &kctxs {
            let kv = KvCache::new(kctx, &model.hp, kv_params)?;
            sessions.push(Session::with_moe(&model, kv, params, moe.clone())?);
        }
        for (i, s) in sessions.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..8).map(|j| 1000 + 37 * i as u32 + j).collect();
            s.eval(&prompt, Rows::Last)?;
        }
        let token = |i: usize, step: u32| 2000 + 13 * i as u32 + step;
        // Alternating rounds, best of each: other work on a shared machine only ever slows a round down.
        // BATCH_SPEED_ONLY=batched skips the one-by-one rounds (to profile the batched ones alone).
        let skip = std::env::var("BATCH_SPEED_ONLY").is_ok_and(|v| v == "batched");
        let (mut one_by_one, mut batched) = (f64::INFINITY, f64::INFINITY);
        let mut step = 0;
        for _round in 0..ROUNDS {
            if !skip {
                let t0 = Instant::now();
                for _ in 0..gen {
                    for (i, s) in sessions.iter_mut().enumerate() {
                        s.eval(&[token(i, step)], Rows::Last)?;
                    }
                    step += 1;
                }
                one_by_one = one_by_one.min(t0.elapsed().as_secs_f64());
            }
            let t0 = Instant::now();
            for _ in 0..gen {
                let toks: Vec<u32> = (0..n).map(|i| token(i, step)).collect();
                let mut group: Vec<&mut Session<'_>> = sessions.iter_mut().collect();
                decode_batch(&mut group, &toks)?;
                step += 1;
            }
            batched = batched.min(t0.elapsed().as_secs_f64());
        }
        let tokens = f64::from(gen) * n as f64;
        println!(
            "{n} sessions: one by one {:.1} tokens/s, batched {:.1} tokens/s ({:.2}x)",
            tokens / one_by_one,
            tokens / batched,
            one_by_one / batched
        );
    }
    Ok(())
}
