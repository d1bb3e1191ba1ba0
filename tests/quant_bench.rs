//! Q4_0 quantization throughput (MB/s of f32 input), 1 and 2 threads. Opt-in:
//! `cargo test --release --test quant_bench -- --ignored --nocapture`.
mod quant_gen;

use std::time::Instant;

use smallthinker::gguf::GgmlType;
use smallthinker::quant;

#[test]
#[ignore = "benchmark"]
fn q4_0_throughput() {
    let n_per_row = 4096;
    let x = quant_gen::ggml_synthetic(0.0, n_per_row * 4096, 2.0); // 64 MiB of f32, like one expert tensor
    let mut serial = vec![0u8; x.len() / 32 * 18];
    let mut dst = serial.clone();
    for threads in [1, 2] {
        let out = if threads == 1 { &mut serial } else { &mut dst };
        let best = (0..3)
            .map(|_| {
                let t = Instant::now();
                quant::quantize_parallel(GgmlType::Q4_0, &x, n_per_row, out, threads).unwrap();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        println!(
            "Q4_0 quantize, {threads} thread(s): {:.0} MB/s of f32 input",
            (x.len() * 4) as f64 / best / 1e6
        );
    }
    assert!(serial == dst, "parallel bytes differ from serial");
}
