//! Shared helpers for the ggml wrapper tests: a seeded generator, ggml's nmse metric, naive references.
#![allow(dead_code)]

use smallthinker::ggml::{Context, ContextParams, Tensor};
use smallthinker::gguf::GgmlType;

/// xorshift64*: deterministic values without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// ggml's test-backend-ops metric: Σ(a-b)² / Σa², with `a` the reference.
pub fn nmse(reference: &[f32], got: &[f32]) -> f64 {
    assert_eq!(reference.len(), got.len(), "length mismatch");
    let num: f64 = reference
        .iter()
        .zip(got)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|a| (*a as f64).powi(2)).sum();
    num / den
}

pub fn assert_close(what: &str, reference: &[f32], got: &[f32], max_nmse: f64) {
    let e = nmse(reference, got);
    eprintln!("nmse {what}: {e:.2e}");
    assert!(
        e < max_nmse,
        "{what}: nmse {e:e} >= {max_nmse:e}\nref {reference:?}\ngot {got:?}"
    );
}

pub fn ctx() -> Context {
    Context::new(ContextParams {
        mem_size: 16 << 20,
        no_alloc: false,
    })
    .unwrap()
}

/// An F32 tensor of dims `ne` filled from `rng`; returns it and its values.
pub fn rand_f32<'a>(ctx: &'a Context, ne: &[i64], rng: &mut Rng) -> (Tensor<'a>, Vec<f32>) {
    let t = ctx.new_tensor(GgmlType::F32, ne);
    let v = rng.vec(ne.iter().product::<i64>() as usize);
    t.set_f32(&v).unwrap();
    (t, v)
}

/// Builds a graph for `t`, computes it with `n_threads` and reads it back as f32.
pub fn run(ctx: &Context, t: Tensor<'_>, n_threads: usize) -> Vec<f32> {
    let mut g = ctx.new_graph(256);
    g.build_forward_expand(t);
    g.compute(n_threads).unwrap();
    t.to_f32_vec().unwrap()
}

/// Flat index of (i0, i1, i2, i3) in a contiguous tensor of dims `ne`.
pub fn at(ne: [i64; 4], i0: i64, i1: i64, i2: i64, i3: i64) -> usize {
    (i0 + ne[0] * (i1 + ne[1] * (i2 + ne[2] * i3))) as usize
}

pub fn dims(ne: &[i64]) -> [i64; 4] {
    let mut d = [1; 4];
    d[..ne.len()].copy_from_slice(ne);
    d
}

/// Naive ggml mul_mat: out[i, j, i2, i3] = Σ_k a[k, i, i2 / r2, i3 / r3] · b[k, j, i2, i3].
pub fn naive_mul_mat(a: &[f32], an: [i64; 4], b: &[f32], bn: [i64; 4]) -> Vec<f32> {
    let on = [an[1], bn[1], bn[2], bn[3]];
    let mut out = vec![0f32; on.iter().product::<i64>() as usize];
    let (r2, r3) = (bn[2] / an[2], bn[3] / an[3]);
    for i3 in 0..on[3] {
        for i2 in 0..on[2] {
            for j in 0..on[1] {
                for i in 0..on[0] {
                    let s: f64 = (0..an[0])
                        .map(|k| a[at(an, k, i, i2 / r2, i3 / r3)] as f64 * b[at(bn, k, j, i2, i3)] as f64)
                        .sum();
                    out[at(on, i, j, i2, i3)] = s as f32;
                }
            }
        }
    }
    out
}

/// Row-wise softmax of a flat buffer with rows of `n`.
pub fn naive_softmax_rows(x: &[f32], n: usize) -> Vec<f32> {
    x.chunks(n)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = row.iter().map(|v| ((*v - m) as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect()
}

/// Dequantizes Q8_0 blocks (f16 scale + 32 i8), ggml's layout.
pub fn dequant_q8_0(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(34)
        .flat_map(|b| {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            b[2..].iter().map(move |q| *q as i8 as f32 * d)
        })
        .collect()
}
