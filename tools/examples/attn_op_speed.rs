//! The cell-attention op alone (src/graph/attn_op.rs), decode-shaped: one query token over N cells of an f16
//! cache, for L layers' worth of distinct caches (so that the reads come from memory, as in a real decode, not
//! from the last layer's cache lines), timed over R rounds; prints ms per round and GB/s of K/V read.
//!
//!     cargo run --release --example attn_op_speed -- N_HEAD N_HEAD_KV HEAD_DIM CELLS LAYERS THREADS ROUNDS

use std::time::Instant;

use smallthinker::ggml::{Context, ContextParams};
use smallthinker::gguf::GgmlType;
use smallthinker::graph::{attn_cells, CellAttnParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let [_, nh, nkv, hd, cells, layers, threads, rounds] = a.as_slice() else {
        return Err("usage: attn_op_speed N_HEAD N_HEAD_KV HEAD_DIM CELLS LAYERS THREADS ROUNDS".into());
    };
    let (nh, nkv, hd, cells): (i64, i64, i64, i64) = (nh.parse()?, nkv.parse()?, hd.parse()?, cells.parse()?);
    let (layers, threads, rounds): (usize, usize, usize) = (layers.parse()?, threads.parse()?, rounds.parse()?);
    let row = hd * nkv;
    let cache_bytes = 2 * (row * cells) as usize * 2 * layers;
    let ctx = Context::new(ContextParams {
        mem_size: cache_bytes + (64 << 20),
        no_alloc: false,
    })?;
    let mut s = 1u32;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let q = ctx.new_tensor(GgmlType::F32, &[hd, nh, 1]);
    q.set_f32(&rnd((hd * nh) as usize))?;
    let cp = ctx.new_tensor(GgmlType::I32, &[cells]);
    cp.set_i32(&(0..cells as i32).collect::<Vec<_>>())?;
    let qp = ctx.new_tensor(GgmlType::I32, &[1]);
    qp.set_i32(&[cells as i32 - 1])?;
    let p = CellAttnParams {
        n_head: nh,
        n_head_kv: nkv,
        n_embd_head: hd,
        kq_scale: 1.0 / (hd as f32).sqrt(),
        n_swa: None,
    };
    let mut g = ctx.new_graph(4 * layers + 16);
    for _ in 0..layers {
        let k = ctx.new_tensor(GgmlType::F16, &[row, cells]);
        k.set_f32_as_f16(&rnd((row * cells) as usize))?;
        let v = ctx.new_tensor(GgmlType::F16, &[row, cells]);
        v.set_f32_as_f16(&rnd((row * cells) as usize))?;
        g.build_forward_expand(attn_cells(&ctx, q, k, v, cp, qp, &p));
    }
    for r in 0..3 {
        let t0 = Instant::now();
        for _ in 0..rounds {
            g.compute(threads)?;
        }
        let dt = t0.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "round {r}: {:.3} ms for {layers} layers of {cells} cells, {:.1} GB/s of K/V",
            dt * 1e3,
            cache_bytes as f64 / dt / 1e9
        );
    }
    Ok(())
}
