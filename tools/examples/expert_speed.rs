//! Decode-shaped expert products on random Q4_0 experts that do not fit in cache, per kernel, to see what reading
//! only active neurons can buy before wiring a path into the op:
//!   x8     gate, up and down as ggml's interleaved 8-row GEMVs on whole matrices (the default path);
//!   mixed  gate as the interleaved GEMV, then for active neurons only: up by row dot product (file layout) and
//!          down as an axpy of a neuron-major Q4_0 copy (mixed-1: one row at a time, `rows::axpy_row`; mixed-4:
//!          four rows per pass over the output, `q4_axpy`), prefetching the rows of the next active neurons.
//! The gate rows get a bias so that about FRAC of the neurons are active. STAGE stops after the gate (`gate`),
//! after up (`up`), or runs the whole expert (`all`), to split the time between the products.
//!
//!     cargo run --release --example expert_speed -- N_EMBD N_FF EXPERTS FRAC THREADS ROUNDS STAGE
//!
//! 4B shape, 128 experts (about one decode token's expert bytes, 255 MB), 1 thread: see the stop-19 note.

use std::time::Instant;

use smallthinker::ggml::q4_axpy::q4_0_axpy;
use smallthinker::ggml::q4x8::{interleave, Gemv};
use smallthinker::ggml::rows::{axpy_row, AlignedBytes, RowDequant, RowDot, RowQuant};
use smallthinker::ggml::simd::prefetch_bytes as prefetch;
use smallthinker::gguf::GgmlType;

struct Expert {
    gate8: AlignedBytes,
    up8: AlignedBytes,
    down8: AlignedBytes,
    up: AlignedBytes,
    down_t: AlignedBytes,
}

fn random(n: usize, seed: &mut u32, bias: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5 + bias
        })
        .collect()
}

fn quant(q: &RowQuant, rows: &[Vec<f32>]) -> AlignedBytes {
    let mut b = AlignedBytes::zeroed(q.len() * rows.len());
    for (r, v) in rows.iter().enumerate() {
        q.run(v, &mut b.as_mut_slice()[r * q.len()..(r + 1) * q.len()]);
    }
    b
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let [_, n_embd, n_ff, experts, frac, threads, rounds, stage] = a.as_slice() else {
        return Err("usage: expert_speed N_EMBD N_FF EXPERTS FRAC THREADS ROUNDS gate|up|all".into());
    };
    let (n, f, ne): (usize, usize, usize) = (n_embd.parse()?, n_ff.parse()?, experts.parse()?);
    let (frac, threads, rounds): (f32, usize, usize) = (frac.parse()?, threads.parse()?, rounds.parse()?);
    let q_n = RowQuant::new(GgmlType::Q4_0, n).ok_or("n_embd")?;
    let mut seed = 1u32;
    let x = random(n, &mut seed, 0.0);
    // A gate pre-activation of about x . (w + b) = sum(x) * b + noise: pick b per row sign so FRAC are positive.
    let xs: f32 = x.iter().sum();
    let mut es = Vec::new();
    let mut tmp = Vec::new();
    for _ in 0..ne {
        let gate: Vec<Vec<f32>> = (0..f)
            .map(|_| {
                let mut r = random(n, &mut seed, 0.0);
                let shift = (0.5 - frac) * 8.0 / xs.abs().max(1.0) * xs.signum();
                r.iter_mut().for_each(|v| *v -= shift);
                r
            })
            .collect();
        let up: Vec<Vec<f32>> = (0..f).map(|_| random(n, &mut seed, 0.0)).collect();
        let down: Vec<Vec<f32>> = (0..n).map(|_| random(f, &mut seed, 0.0)).collect();
        let down_t: Vec<Vec<f32>> = (0..f).map(|j| (0..n).map(|r| down[r][j]).collect()).collect();
        let q_f = RowQuant::new(GgmlType::Q4_0, f).ok_or("n_ff")?;
        let mut gate8 = quant(&q_n, &gate);
        let upq = quant(&q_n, &up);
        let mut up8 = upq.clone();
        let mut down8 = quant(&q_f, &down);
        interleave(gate8.as_mut_slice(), n, &mut tmp);
        interleave(up8.as_mut_slice(), n, &mut tmp);
        interleave(down8.as_mut_slice(), f, &mut tmp);
        es.push(Expert {
            gate8,
            up8,
            down8,
            up: upq,
            down_t: quant(&q_n, &down_t),
        });
    }
    let gv_n = Gemv::new(GgmlType::Q4_0, n, f).ok_or("no interleaved Q4_0 kernel on this CPU")?;
    let gv_f = Gemv::new(GgmlType::Q4_0, f, n).ok_or("no interleaved Q4_0 kernel on this CPU")?;
    let q8_n = RowQuant::new(GgmlType::Q8_0, n).ok_or("q8")?;
    let q8_f = RowQuant::new(GgmlType::Q8_0, f).ok_or("q8")?;
    let dot = RowDot::new(GgmlType::Q4_0, n).ok_or("dot")?;
    let deq = RowDequant::new(GgmlType::Q4_0, n).ok_or("deq")?;
    let mut xq = AlignedBytes::zeroed(q8_n.len());
    q8_n.run(&x, xq.as_mut_slice());
    let xq = xq.as_slice();
    let row = q_n.len();
    let bytes_all = (3 * f * row * ne) as f64;

    let (gate_only, skip_down) = match stage.as_str() {
        "gate" => (true, false),
        "up" => (false, true),
        "all" => (false, false),
        _ => return Err("STAGE is gate, up or all".into()),
    };
    let run = |mixed: bool, one: bool| -> (f64, f64, f64) {
        let t0 = Instant::now();
        let mut active = 0usize;
        for _ in 0..rounds {
            active = std::thread::scope(|s| {
                let hs: Vec<_> = es
                    .chunks(ne.div_ceil(threads))
                    .map(|part| {
                        s.spawn(move || {
                            let (mut g, mut h) = (vec![0f32; f], vec![0f32; f]);
                            let (mut out, mut t) = (vec![0f32; n], vec![0f32; n]);
                            let mut hq = AlignedBytes::zeroed(q8_f.len());
                            let mut act = 0;
                            for e in part {
                                gv_n.run(e.gate8.as_slice(), xq, &mut g);
                                if gate_only {
                                    continue;
                                }
                                if mixed {
                                    out.fill(0.0);
                                    let (mut cs, mut rs) = (Vec::with_capacity(4), Vec::with_capacity(4));
                                    let act_ids: Vec<usize> = (0..f).filter(|&j| g[j] > 0.0).collect();
                                    for (a, &j) in act_ids.iter().enumerate() {
                                        let gj = g[j];
                                        // Rows of active neurons are short irregular runs: fetch a few ahead.
                                        if let Some(&n2) = act_ids.get(a + 3) {
                                            prefetch(&e.up.as_slice()[n2 * row..(n2 + 1) * row]);
                                            prefetch(&e.down_t.as_slice()[n2 * row..(n2 + 1) * row]);
                                        }
                                        {
                                            act += 1;
                                            let u = dot.dot(&e.up.as_slice()[j * row..(j + 1) * row], xq);
                                            let d = &e.down_t.as_slice()[j * row..(j + 1) * row];
                                            if skip_down {
                                                out[j] += u;
                                                continue;
                                            }
                                            if one {
                                                axpy_row(&deq, gj * u, d, &mut out, &mut t);
                                                continue;
                                            }
                                            cs.push(gj * u);
                                            rs.push(d);
                                            if rs.len() == 4 {
                                                q4_0_axpy(&mut out, &cs, &rs);
                                                cs.clear();
                                                rs.clear();
                                            }
                                        }
                                    }
                                    q4_0_axpy(&mut out, &cs, &rs);
                                } else {
                                    gv_n.run(e.up8.as_slice(), xq, &mut h);
                                    for (hj, &gj) in h.iter_mut().zip(&g) {
                                        *hj = if gj > 0.0 {
                                            act += 1;
                                            gj * *hj
                                        } else {
                                            0.0
                                        };
                                    }
                                    q8_f.run(&h, hq.as_mut_slice());
                                    gv_f.run(e.down8.as_slice(), hq.as_slice(), &mut out);
                                }
                            }
                            act
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).sum()
            });
        }
        let dt = t0.elapsed().as_secs_f64() / rounds as f64;
        let frac = active as f64 / (ne * f) as f64;
        let bytes = if mixed {
            bytes_all / 3.0 * (1.0 + 2.0 * frac)
        } else {
            bytes_all
        };
        (dt, bytes / dt / 1e9, frac)
    };
    for r in 0..2 {
        for (mixed, one) in [(false, false), (true, true), (true, false)] {
            let (dt, gbs, act) = run(mixed, one);
            println!(
                "round {r} {:7}: {:.2} ms per {ne} experts, {gbs:.1} GB/s of weights read, {:.3} active",
                match (mixed, one) {
                    (false, _) => "x8",
                    (true, true) => "mixed-1",
                    _ => "mixed-4",
                },
                dt * 1e3,
                act
            );
        }
    }
    Ok(())
}
