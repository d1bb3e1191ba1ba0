//! What reading only the active neurons' rows saves in memory time: the same buffer (MB, far beyond cache) read
//! whole and read at a random FRACTION of its ROW-byte rows (the rows of one neuron's up weights, or of a
//! neuron-major down copy), by THREADS threads that each take a contiguous share, as the expert op does. Each
//! thread first lists its active rows, so that only the reads are timed, and prefetches the rows AHEAD active rows
//! on (0: none, the hardware prefetchers alone). Rounds alternate whole and partial reads; medians are printed.
//!
//!     cargo run --release --example row_skip_read -- MB ROW THREADS AHEAD ROUNDS FRACTION...
//!
//! 4B up rows (1536 wide, Q4_0): `300 864 2 2 7 1 0.5 0.35 0.2 0.1`. Time ratios (partial / whole) for the
//! fractions 0.5, 0.35, 0.2, 0.1: about 1.0, 0.75, 0.45, 0.23 on a 2-core Zen 4 VM, and 0.88, 0.66, 0.41, 0.25
//! on a 2-core Zen 5 VM; with AHEAD 0, half of the rows took 1.40 (Zen 4) and 1.51 (Zen 5) times as long as all
//! of them. At the synthetic models' 50% activity, skipping inactive rows saves little or no memory time.

use std::time::Instant;

use smallthinker::ggml::simd::prefetch_bytes;

/// Sums the rows of `buf` listed in `rows` (row indices, ascending), prefetching `ahead` listed rows on.
fn read_rows(buf: &[u8], row: usize, rows: &[usize], ahead: usize) -> u64 {
    let mut sum = 0u64;
    for (i, &r) in rows.iter().enumerate() {
        if let Some(&next) = rows.get(i + ahead).filter(|_| ahead > 0) {
            prefetch_bytes(&buf[next * row..(next + 1) * row]);
        }
        for w in buf[r * row..(r + 1) * row].chunks_exact(8) {
            sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
    }
    sum
}

/// Wall time of every thread reading its listed rows at once.
fn timed(buf: &[u8], row: usize, lists: &[Vec<usize>], ahead: usize) -> f64 {
    let t = Instant::now();
    let sum: u64 = std::thread::scope(|s| {
        let parts: Vec<_> = lists
            .iter()
            .map(|l| s.spawn(move || read_rows(buf, row, l, ahead)))
            .collect();
        parts
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .fold(0, u64::wrapping_add)
    });
    std::hint::black_box(sum);
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: row_skip_read MB ROW THREADS AHEAD ROUNDS FRACTION...";
    assert!(a.len() >= 6, "{usage}");
    let num = |i: usize| a[i].parse::<usize>().expect(usage);
    let (mb, row, threads, ahead, rounds) = (num(0), num(1), num(2).max(1), num(3), num(4).max(1));
    assert!(row % 8 == 0 && row > 0, "ROW must be a positive multiple of 8");
    let n_rows = (mb << 20) / row;
    // Every page written before timing, with values the sum cannot fold away.
    let buf: Vec<u8> = (0..n_rows * row).map(|i| (i * 31 % 251) as u8).collect();
    let share = n_rows.div_ceil(threads);
    let lists = |keep: &dyn Fn(usize) -> bool| -> Vec<Vec<usize>> {
        (0..threads)
            .map(|t| {
                (t * share..((t + 1) * share).min(n_rows))
                    .filter(|&r| keep(r))
                    .collect()
            })
            .collect()
    };
    let all = lists(&|_| true);
    println!("{n_rows} rows of {row} bytes ({mb} MiB), {threads} threads, prefetch {ahead} rows ahead");
    for frac in a[5..].iter().map(|s| s.parse::<f64>().expect(usage)) {
        let mut seed = 12345u32;
        let mask: Vec<bool> = (0..n_rows)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                ((seed >> 8) as f64 / (1u32 << 24) as f64) < frac
            })
            .collect();
        let part = lists(&|r| mask[r]);
        let read = part.iter().map(Vec::len).sum::<usize>() as f64 / n_rows as f64;
        let (mut whole, mut some) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            whole.push(timed(&buf, row, &all, ahead));
            some.push(timed(&buf, row, &part, ahead));
        }
        let (tw, tp) = (median(whole), median(some));
        println!(
            "fraction {read:.3}: whole {:.2} ms ({:.1} GB/s), partial {:.2} ms, time ratio {:.2} for a byte ratio of {read:.2}",
            tw * 1e3,
            (n_rows * row) as f64 / tw / 1e9,
            tp * 1e3,
            tp / tw
        );
    }
}
