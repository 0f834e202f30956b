//! Unmasking throughput: every variant side by side with a plain `copy_from_slice` of the same
//! size, 16 B to 1 MiB. Results: docs/benchmarks/.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::proto::mask;

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
criterion_main!(benches);
