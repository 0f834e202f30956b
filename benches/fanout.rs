//! The real fan-out function (`pubsub::fanout::FanOut::run`) without sockets: a turn's
//! messages framed once into a topic batch, then queued to N subscribers through the same
//! `Subscribers` interface the shard's connection table implements (here: plain queues with
//! a byte limit), and the queues' references dropped as a completed send would.
//!
//! Cases: simple-mode subscribers (plain frames), mux-mode subscribers (envelopes built once
//! per batch), and a chat room where every subscriber published one message of the batch
//! (each gets the batch minus its own message: the exclusion path, O(subscribers +
//! publishers)). Throughput is reported in deliveries (messages x subscribers) per second.
//! Results: docs/benchmarks/.

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::proto::frame::OpCode;
use ringcast::pubsub::Format;
use ringcast::pubsub::batch::{Batcher, Exclusions};
use ringcast::pubsub::fanout::{ExclusionIndex, FanOut, Queue, Refused, Subscribers};
use ringcast::pubsub::topic::{TopicOptions, Topics};

const PAYLOAD: &[u8; 64] =
    b"{\"topic\":\"prices\",\"price\":\"42.17\",\"seq\":1234567890,\"ok\":true}xxx";

/// Subscriber queues as the shard keeps them: frames and the bytes they hold.
struct Queues {
    q: Vec<(VecDeque<Bytes>, usize)>,
    limit: usize,
}

struct Q<'a>(&'a mut (VecDeque<Bytes>, usize));

impl Queue for Q<'_> {
    fn push(&mut self, frames: Bytes) {
        self.0.1 += frames.len();
        self.0.0.push_back(frames);
    }
}

impl Subscribers for Queues {
    type Queue<'a> = Q<'a>;
    fn admit(&mut self, slot: u32) -> Result<Q<'_>, Refused> {
        let limit = self.limit;
        match self.q.get_mut(slot as usize) {
            Some(q) if q.1 >= limit => Err(Refused::Slow),
            Some(q) => Ok(Q(q)),
            None => Err(Refused::Closed),
        }
    }
}

impl Queues {
    fn sent(&mut self) {
        for q in &mut self.q {
            q.0.clear();
            q.1 = 0;
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let cases: &[(&str, usize, usize, Format, bool)] = &[
        ("plain", 1_000, 1, Format::Plain, false),
        ("plain", 1_000, 32, Format::Plain, false),
        ("plain", 10_000, 8, Format::Plain, false),
        ("mux", 1_000, 32, Format::Mux, false),
        ("chat", 1_000, 1_000, Format::Plain, true),
    ];
    for &(kind, subs, msgs, format, chat) in cases {
        let mut topics = Topics::default();
        let id = topics.intern("prices", TopicOptions::OPEN);
        for slot in 0..subs as u32 {
            topics.join(id, slot, format);
        }
        let mut queues = Queues {
            q: (0..subs)
                .map(|_| (VecDeque::with_capacity(64), 0))
                .collect(),
            limit: usize::MAX,
        };
        let mut batcher = Batcher::default();
        let mut fanout = FanOut::default();
        let mut excl = Exclusions::default();
        g.throughput(Throughput::Elements((subs * msgs) as u64));
        let name = format!("{kind}/{subs}subs_x{msgs}msgs");
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                for m in 0..msgs {
                    let exclude = chat.then_some(m as u32);
                    batcher.append(&mut topics, id, OpCode::Text, black_box(PAYLOAD), exclude);
                }
                let mut delivered = 0;
                batcher.take(&mut topics, |topics, r| {
                    if let Some(t) = topics.get(r.topic) {
                        excl.build(&r.batch, 0, []);
                        delivered += fanout.run(t, &r.batch, &excl, &mut queues);
                    }
                });
                queues.sent();
                delivered
            })
        });
    }
    g.finish();
}

/// Publisher exclusion in a chat room where every subscriber publishes: the per-batch
/// index (O(subscribers + publishers)).
fn exclusion(c: &mut Criterion) {
    let mut g = c.benchmark_group("exclusion");
    for &n in &[16u32, 256, 4096] {
        let excluded: Vec<ringcast::pubsub::batch::Exclusion> = (0..n)
            .map(|slot| ringcast::pubsub::batch::Exclusion {
                slot,
                parts: 0..0,
                count: 1,
            })
            .collect();
        g.throughput(Throughput::Elements(u64::from(n)));
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
