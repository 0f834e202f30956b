//! The fan-out path without sockets: frame a turn's messages once into a topic batch
//! (`shard::batch::Batcher`), then queue the batch to N subscriber queues (one `Bytes`
//! clone and one queue push each), and drop the queues' references as a completed send
//! would. Compared with the per-message design it replaced (one frame `Bytes` queued per
//! message per subscriber), side by side in one run.
//!
//! Throughput is reported in deliveries (messages x subscribers) per second.
//! Results: docs/benchmarks/.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::proto::frame::{OpCode, encode_frame};
use ringcast::shard::batch::{Batcher, Exclusion, ExclusionIndex};

const PAYLOAD: &[u8; 64] =
    b"{\"topic\":\"prices\",\"price\":\"42.17\",\"seq\":1234567890,\"ok\":true}xxx";

fn bench(c: &mut Criterion) {
    let topic: Arc<str> = Arc::from("prices");
    let mut g = c.benchmark_group("fanout");
    for &(subs, msgs) in &[(1_000usize, 1usize), (1_000, 32), (10_000, 8)] {
        let mut queues: Vec<VecDeque<Bytes>> =
            (0..subs).map(|_| VecDeque::with_capacity(64)).collect();
        g.throughput(Throughput::Elements((subs * msgs) as u64));
        let id = format!("{subs}subs_x{msgs}msgs");

        let mut batcher = Batcher::default();
        g.bench_function(BenchmarkId::new("batched", &id), |b| {
            b.iter(|| {
                for _ in 0..msgs {
                    batcher.append(&topic, OpCode::Text, black_box(PAYLOAD), None);
                }
                batcher.take(|r| {
                    for q in queues.iter_mut() {
                        q.push_back(r.frames.clone());
                    }
                });
                for q in queues.iter_mut() {
                    q.clear();
                }
            })
        });

        let mut arena = BytesMut::new();
        g.bench_function(BenchmarkId::new("per_message", &id), |b| {
            b.iter(|| {
                for _ in 0..msgs {
                    if arena.capacity() - arena.len() < 80 {
                        arena.reserve(64 * 1024);
                    }
                    encode_frame(&mut arena, true, OpCode::Text, None, black_box(PAYLOAD));
                    let frame = arena.split().freeze();
                    for q in queues.iter_mut() {
                        q.push_back(frame.clone());
                    }
                }
                for q in queues.iter_mut() {
                    q.clear();
                }
            })
        });
    }
    g.finish();
}

/// Publisher exclusion in a chat room where every subscriber publishes: finding each
/// subscriber's exclusion entry by a linear search (the old fan-out, O(subscribers x
/// publishers) per batch) against the per-batch index (O(subscribers + publishers)).
fn exclusion(c: &mut Criterion) {
    let mut g = c.benchmark_group("exclusion");
    for &n in &[16u32, 256, 4096] {
        let excluded: Vec<Exclusion> = (0..n)
            .map(|slot| Exclusion {
                slot,
                parts: 0..0,
                count: 1,
            })
            .collect();
        g.throughput(Throughput::Elements(u64::from(n)));
        g.bench_function(BenchmarkId::new("linear_find", n), |b| {
            b.iter(|| {
                let mut hits = 0u32;
                for slot in 0..n {
                    if let Some(e) = excluded.iter().find(|e| e.slot == black_box(slot)) {
                        hits += e.count;
                    }
                }
                hits
            })
        });
        let mut index = ExclusionIndex::default();
        g.bench_function(BenchmarkId::new("index", n), |b| {
            b.iter(|| {
                index.build(black_box(&excluded));
                let mut hits = 0u32;
                for slot in 0..n {
                    if let Some(i) = index.get(black_box(slot)) {
                        hits += excluded[i].count;
                    }
                }
                hits
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, exclusion);
criterion_main!(benches);
