//! Unmasking throughput: every variant side by side with a plain `copy_from_slice` of the same
//! size, 16 B to 1 MiB. Results: docs/benchmarks/.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use ringcast_proto::mask;

const SIZES: &[usize] = &[
    16,
    64,
    256,
    1024,
    4096,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for &size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5au8; size];
        let src = vec![0xa5u8; size];
        g.bench_with_input(BenchmarkId::new("copy_from_slice", size), &size, |b, _| {
            b.iter(|| buf.copy_from_slice(black_box(&src)))
        });
        g.bench_with_input(BenchmarkId::new("scalar", size), &size, |b, _| {
            b.iter(|| mask::unmask_scalar(black_box(&mut buf), KEY))
        });
        g.bench_with_input(BenchmarkId::new("word", size), &size, |b, _| {
            b.iter(|| mask::unmask_word(black_box(&mut buf), KEY))
        });
        #[cfg(target_arch = "x86_64")]
        {
            g.bench_with_input(BenchmarkId::new("sse2", size), &size, |b, _| {
                b.iter(|| mask::x86::unmask_sse2(black_box(&mut buf), KEY))
            });
            if std::is_x86_feature_detected!("avx2") {
                g.bench_with_input(BenchmarkId::new("word_avx2", size), &size, |b, _| {
                    // SAFETY: AVX2 support was checked just above.
                    b.iter(|| unsafe { mask::x86::unmask_word_avx2(black_box(&mut buf), KEY) })
                });
                g.bench_with_input(BenchmarkId::new("avx2", size), &size, |b, _| {
                    // SAFETY: AVX2 support was checked just above.
                    b.iter(|| unsafe { mask::x86::unmask_avx2(black_box(&mut buf), KEY) })
                });
            }
        }
        #[cfg(target_arch = "aarch64")]
        g.bench_with_input(BenchmarkId::new("neon", size), &size, |b, _| {
            b.iter(|| mask::neon::unmask_neon(black_box(&mut buf), KEY))
        });
        g.bench_with_input(BenchmarkId::new("unmask", size), &size, |b, _| {
            b.iter(|| mask::unmask(black_box(&mut buf), KEY))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);

/// `BEST_OF=30 cargo bench -p ringcast-proto --bench unmask`: instead of criterion, print the best of N rounds per
/// variant, variants interleaved round-robin: on a shared, noisy machine the minimum is the
/// stable statistic (criterion's means drift with the neighbours' load).
fn best_of(rounds: usize) {
    type Variant = (&'static str, fn(&mut [u8], &[u8]));
    let mut variants: Vec<Variant> = vec![
        ("copy_from_slice", |b, src| b.copy_from_slice(src)),
        ("scalar", |b, _| mask::unmask_scalar(b, KEY)),
        ("word", |b, _| mask::unmask_word(b, KEY)),
        ("unmask", |b, _| mask::unmask(b, KEY)),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        variants.push(("sse2", |b, _| mask::x86::unmask_sse2(b, KEY)));
        if std::is_x86_feature_detected!("avx2") {
            fn word_avx2(b: &mut [u8], _: &[u8]) {
                // SAFETY: registered only after the AVX2 check above.
                unsafe { mask::x86::unmask_word_avx2(b, KEY) }
            }
            fn avx2(b: &mut [u8], _: &[u8]) {
                // SAFETY: registered only after the AVX2 check above.
                unsafe { mask::x86::unmask_avx2(b, KEY) }
            }
            variants.push(("word_avx2", word_avx2));
            variants.push(("avx2", avx2));
        }
    }
    println!("GB/s, best of {rounds} rounds");
    print!("{:>8}", "size");
    for (n, _) in &variants {
        print!(" {n:>15}");
    }
    println!();
    for &size in SIZES {
        let mut buf = vec![0x5au8; size];
        let src = vec![0xa5u8; size];
        let reps = ((1 << 22) / size).max(1);
        let mut best = vec![f64::MAX; variants.len()];
        for _ in 0..rounds {
            for (i, (_, f)) in variants.iter().enumerate() {
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    f(black_box(&mut buf), black_box(&src));
                }
                best[i] = best[i].min(t.elapsed().as_nanos() as f64 / reps as f64);
            }
        }
        print!("{size:>8}");
        for b in &best {
            print!(" {:>15.1}", size as f64 / b);
        }
        println!();
    }
}

fn main() {
    if let Some(rounds) = std::env::var("BEST_OF").ok().and_then(|v| v.parse().ok()) {
        best_of(rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
