//! The home shard's history store (`pubsub::history::Histories`) without the server:
//! appends of 64-byte frames (slices of one shared buffer, as a batch's frames are) to
//! 1,000 topics keeping 100 each, the same with a byte budget that forces a memory eviction
//! on every append, and a recovery (`since`) of 1,000 publications. Prints the accounted
//! bytes per stored publication.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringcast::pubsub::history::{ENTRY_OVERHEAD, ENTRY_SIZE, Histories, HistoryOptions, Recovery};

const TOPICS: u32 = 1_000;
const FRAME: usize = 64;
const OPTS: HistoryOptions = HistoryOptions {
    size: 100,
    ttl: Duration::from_secs(300),
};

fn rng() -> impl FnMut() -> u64 {
    let mut i = 0u64;
    move || {
        i += 1;
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// `n` 64-byte frames, slices of one buffer (one batch buffer's worth at a time).
fn frames(n: usize) -> Vec<Bytes> {
    let buf = Bytes::from(vec![b'x'; FRAME * n]);
    (0..n)
        .map(|i| buf.slice(i * FRAME..(i + 1) * FRAME))
        .collect()
}

fn append(c: &mut Criterion) {
    let frames = frames(4096);
    let now = Instant::now();
    let mut g = c.benchmark_group("history_append");
    g.throughput(Throughput::Elements(1));
    // Budget far above 1,000 x 100 publications: size eviction once warm.
    // Budget at half of that: every append also evicts by memory (largest first).
    let full = TOPICS as usize * OPTS.size * (FRAME + ENTRY_OVERHEAD);
    for (name, budget) in [("size_bound", 1 << 30), ("memory_bound", full / 2)] {
        let mut h = Histories::new(budget, rng());
        for i in 0..TOPICS as usize * OPTS.size {
            let f = frames[i % frames.len()].clone();
            h.append(i as u32 % TOPICS, OPTS, f, now);
        }
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let f = frames[i % frames.len()].clone();
                black_box(h.append(i as u32 % TOPICS, OPTS, f, now));
            })
        });
        let s = h.stats();
        println!(
            "history {name}: {} publications, {} bytes accounted = {} per publication \
             (frame {FRAME} + overhead {ENTRY_OVERHEAD}; ring entry {ENTRY_SIZE} bytes); \
             evicted by size {}, by memory {}",
            h.publications(),
            h.bytes(),
            h.bytes() / h.publications().max(1),
            s.evicted_by_size,
            s.evicted_by_memory,
        );
    }
    g.finish();
}

fn since(c: &mut Criterion) {
    let frames = frames(1_000);
    let now = Instant::now();
    let opts = HistoryOptions {
        size: 1_000,
        ..OPTS
    };
    let mut h = Histories::new(1 << 30, rng());
    let mut epoch = String::new();
    for f in &frames {
        epoch = h.append(0u32, opts, f.clone(), now).epoch.to_string();
    }
    let mut g = c.benchmark_group("history_since");
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("1000", |b| {
        b.iter(|| {
            let r = h.since(0, opts, black_box(&epoch), 0, 1_000, now);
            match r {
                Recovery::Recovered { publications, .. } => black_box(publications.len()),
                Recovery::NotRecovered { .. } => 0,
            }
        })
    });
    g.finish();
}

criterion_group!(benches, append, since);
criterion_main!(benches);
