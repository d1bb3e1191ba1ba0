//! Seeded test inputs, bit-identical to tools/py/quant_gen.py (same splitmix64 stream, same draws in the same
//! order, every f32 exact). Change one side, change the other.
#![allow(dead_code)]

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [-1, 1) on a 2^-23 grid: exact in f32.
    pub fn unit(&mut self) -> f64 {
        let k = (self.next() >> 40) as i64;
        (k - (1 << 23)) as f64 / (1u64 << 23) as f64
    }
}

fn pow2(e: i64) -> f64 {
    2f64.powi(e as i32)
}

/// `quant_gen.values`: chunks of 32 of one kind each (random, zero, spike, integer grid, opposite tie, tiny, huge).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    assert_eq!(n % 32, 0);
    let mut r = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n / 32 {
        let kind = r.below(10);
        let mut chunk = [0f64; 32];
        match kind {
            0..=3 => {
                let e = r.below(31) as i64 - 20;
                chunk.iter_mut().for_each(|v| *v = r.unit() * pow2(e));
            }
            4 => {}
            5 => {
                let p = r.below(32) as usize;
                let e = r.below(31) as i64 - 20;
                chunk[p] = r.unit() * pow2(e);
            }
            6 => {
                let e = r.below(31) as i64 - 20;
                chunk
                    .iter_mut()
                    .for_each(|v| *v = (r.below(17) as i64 - 8) as f64 * pow2(e));
            }
            7 => {
                let e = r.below(31) as i64 - 20;
                chunk.iter_mut().for_each(|v| *v = r.unit() * pow2(e - 4));
                let p = r.below(32) as usize;
                let q = ((p as u64 + 1 + r.below(31)) % 32) as usize;
                let s = if r.next() & 1 == 1 { 1.0 } else { -1.0 };
                chunk[p] = s * pow2(e);
                chunk[q] = -s * pow2(e);
            }
            8 => {
                let e = -100 - r.below(20) as i64;
                chunk.iter_mut().for_each(|v| *v = r.unit() * pow2(e));
            }
            _ => {
                let e = 14 + r.below(27) as i64;
                chunk.iter_mut().for_each(|v| *v = r.unit() * pow2(e));
            }
        }
        out.extend(chunk.iter().map(|&v| v as f32));
    }
    out
}

/// `quant_gen.bits`: raw f32 bit patterns aimed at F16/BF16 edge cases.
pub fn bits(seed: u64, n: usize) -> Vec<u32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let kind = r.below(6);
            let mut x = (r.next() >> 32) as u32;
            match kind {
                1 | 2 | 4 => {
                    x = (x & 0x807F_FFFF) | (((100 + r.below(45)) as u32) << 23);
                    if kind == 2 {
                        x = (x & !0x1FFF) | 0x1000;
                    } else if kind == 4 {
                        x = (x & !0x1FFF) | if r.next() & 1 == 1 { 0x0FFF } else { 0x1001 };
                    }
                }
                3 => x = (x & !0xFFFF) | 0x8000,
                5 => x = (x | 0x7F80_0000) & if r.below(8) == 0 { 0xFF80_0000 } else { 0xFFFF_FFFF },
                _ => {}
            }
            x
        })
        .collect()
}

/// ggml's test-quantize-fns `generate_data`: `0.1 + amplitude * cosf(i + offset)`, summed in double.
pub fn ggml_synthetic(offset: f32, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1f64 + (amplitude * (i as f32 + offset).cos()) as f64) as f32)
        .collect()
}
