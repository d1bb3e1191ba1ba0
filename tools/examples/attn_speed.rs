//! Decode speed at a given depth with each attention kernel, on the bench workload of tools/ref/llama_speed.py
//! (prompt ids 1000, 1001, ...; decode ids 2000, 2001, ...), f16 KV cache, n_batch 512.
//!
//!     cargo run --release --example attn_speed -- MODEL.gguf DEPTH GEN THREADS cells,softmax,flash

use std::time::Instant;

use smallthinker::gguf::GgufFile;
use smallthinker::graph::AttnKernel;
use smallthinker::model::{KvCache, KvParams, KvType, Model, Rows, Session, SessionParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: attn_speed MODEL DEPTH GEN THREADS cells,softmax,flash";
    let [_, model, depth, gen, threads, kernels] = a.as_slice() else {
        return Err(usage.into());
    };
    let (depth, gen, threads): (u32, u32, usize) = (depth.parse()?, gen.parse()?, threads.parse()?);
    let file = GgufFile::open(model.as_ref())?;
    let wctx = Model::context(&file)?;
    let model = Model::load(&wctx, &file)?;
    let n_vocab = model.hp.n_vocab;
    for name in kernels.split(',') {
        let kernel = match name {
            "cells" => AttnKernel::Cells,
            "softmax" => AttnKernel::SoftMax,
            "flash" => AttnKernel::Flash,
            _ => return Err(usage.into()),
        };
        let kctx = KvCache::context(&model.hp)?;
        let kv = KvCache::new(
            &kctx,
            &model.hp,
            KvParams {
                n_ctx: depth + gen + 16,
                n_batch: 512,
                ty: KvType::F16,
            },
        )?;
        let mut s = Session::new(
            &model,
            kv,
            SessionParams {
                n_threads: threads,
                ..Default::default()
            },
        )?;
        s.set_attn_kernel(kernel);
        let prompt: Vec<u32> = (0..depth).map(|i| (1000 + i) % n_vocab).collect();
        let t0 = Instant::now();
        s.eval(&prompt, Rows::Last)?;
        let t1 = Instant::now();
        for i in 0..gen {
            s.eval(&[(2000 + i) % n_vocab], Rows::Last)?;
        }
        let t2 = Instant::now();
        println!(
            "{{\"kernel\": \"{name}\", \"depth\": {depth}, \"prefill_tps\": {:.2}, \"decode_tps\": {:.3}}}",
            f64::from(depth) / (t1 - t0).as_secs_f64(),
            f64::from(gen) / (t2 - t1).as_secs_f64()
        );
    }
    Ok(())
}
