//! UTF-8 validation of ASCII-heavy text: the core's wrappers (whole-message and streaming)
//! against bare simdutf8 (basic and compat) and std, 1 KiB and up. Results: docs/benchmarks/.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use ringcast_proto::utf8::{self, Utf8Validator};

const SIZES: &[usize] = &[1024, 4096, 64 << 10];

/// JSON-ish chat traffic: mostly ASCII with a few multibyte characters.
fn text(size: usize) -> Vec<u8> {
    let unit = r#"{"topic":"prices","user":"zoë","msg":"€ 42 — ok","seq":1234567},"#;
    let mut s = String::with_capacity(size + unit.len());
    while s.len() < size {
        s.push_str(unit);
    }
    let mut end = size;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for &size in SIZES {
        let t = text(size);
        g.throughput(Throughput::Bytes(t.len() as u64));
        g.bench_with_input(BenchmarkId::new("std", size), &t, |b, t| {
            b.iter(|| std::str::from_utf8(black_box(t)).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("simdutf8_basic", size), &t, |b, t| {
            b.iter(|| simdutf8::basic::from_utf8(black_box(t)).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("simdutf8_compat", size), &t, |b, t| {
            b.iter(|| simdutf8::compat::from_utf8(black_box(t)).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("core_validate", size), &t, |b, t| {
            b.iter(|| utf8::validate(black_box(t)).is_ok())
        });
        g.bench_with_input(
            BenchmarkId::new("core_streaming_1_chunk", size),
            &t,
            |b, t| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(t)).and_then(|()| v.finish()).is_ok()
                })
            },
        );
        // Four reads cut at arbitrary (not char-aligned) points.
        g.bench_with_input(
            BenchmarkId::new("core_streaming_4_chunks", size),
            &t,
            |b, t| {
                let q = t.len() / 4 + 1;
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    t.chunks(q)
                        .try_for_each(|c| v.feed(black_box(c)))
                        .and_then(|()| v.finish())
                        .is_ok()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);

/// `BEST_OF=30 cargo bench -p ringcast-proto --bench utf8`: best of N interleaved rounds instead of criterion
/// (stable on a shared, noisy machine).
fn best_of(rounds: usize) {
    type Variant = (&'static str, fn(&[u8]) -> bool);
    let variants: Vec<Variant> = vec![
        ("simdutf8_basic", |t| simdutf8::basic::from_utf8(t).is_ok()),
        ("simdutf8_compat", |t| {
            simdutf8::compat::from_utf8(t).is_ok()
        }),
        ("core_validate", |t| utf8::validate(t).is_ok()),
        ("core_streaming", |t| {
            let mut v = Utf8Validator::new();
            v.feed(t).and_then(|()| v.finish()).is_ok()
        }),
        ("core_stream_4", |t| {
            let mut v = Utf8Validator::new();
            t.chunks(t.len() / 4 + 1)
                .try_for_each(|c| v.feed(c))
                .and_then(|()| v.finish())
                .is_ok()
        }),
    ];
    println!("GB/s, best of {rounds} rounds");
    print!("{:>8}", "size");
    for (n, _) in &variants {
        print!(" {n:>15}");
    }
    println!();
    for &size in SIZES {
        let t = text(size);
        let reps = ((1 << 24) / size).max(1);
        let mut best = vec![f64::MAX; variants.len()];
        for _ in 0..rounds {
            for (i, (_, f)) in variants.iter().enumerate() {
                let s = std::time::Instant::now();
                for _ in 0..reps {
                    black_box(f(black_box(&t)));
                }
                best[i] = best[i].min(s.elapsed().as_nanos() as f64 / reps as f64);
            }
        }
        print!("{size:>8}");
        for b in &best {
            print!(" {:>15.2}", t.len() as f64 / b);
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
