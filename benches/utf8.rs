//! UTF-8 validation of ASCII-heavy text: the core's wrappers (whole-message and streaming)
//! against bare simdutf8 (basic and compat) and std, 1 KiB and up. Results: docs/benchmarks/.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::proto::utf8::{self, Utf8Validator};

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
criterion_main!(benches);
