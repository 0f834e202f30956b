//! End-to-end receive of a small masked text frame (64-byte payload: header parse, unmask,
//! UTF-8 validation, event) through a server-role `Connection`, frame encoding, and a
//! client-role send (masking key from the OS generator, batched).
//! Results: docs/benchmarks/.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringcast_proto::{
    Connection, Event, FrameHeader, Limits, MaskSource, OpCode, Role, encode_frame,
};

/// Masking keys as a real client draws them: the OS generator, 64 keys per call, so the
/// client send below includes the per-frame cost of a strong key.
struct OsMasks {
    buf: [u8; 256],
    at: usize,
}

impl MaskSource for OsMasks {
    // A bench: without the OS generator there is nothing to measure.
    #[allow(clippy::expect_used)]
    fn next_key(&mut self) -> [u8; 4] {
        if self.at == self.buf.len() {
            getrandom::fill(&mut self.buf).expect("the OS random generator");
            self.at = 0;
        }
        let mut key = [0; 4];
        key.copy_from_slice(&self.buf[self.at..self.at + 4]);
        self.at += 4;
        key
    }
}

fn bench(c: &mut Criterion) {
    let payload = b"{\"topic\":\"prices\",\"price\":\"42.17\",\"seq\":1234567890,\"ok\":true}xxx";
    assert_eq!(payload.len(), 64);
    let mut template = Vec::new();
    encode_frame(
        &mut template,
        true,
        OpCode::Text,
        Some([0x37, 0xfa, 0x21, 0x3d]),
        payload,
    );

    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    let mut wire = template.clone();
    g.bench_function("copy_70B_only", |b| {
        b.iter(|| wire.copy_from_slice(black_box(&template)))
    });
    g.bench_function("header_parse", |b| {
        b.iter(|| FrameHeader::parse(black_box(&template)))
    });
    let mut conn = Connection::new(Role::Server, Limits::default());
    let mut out = BytesMut::new();
    // Includes a 70-byte copy of the template per iteration (unmasking is in place).
    g.bench_function("server_feed_64B_masked_text", |b| {
        b.iter(|| {
            wire.copy_from_slice(&template);
            let p = conn.feed(black_box(&mut wire), &mut out);
            match p {
                Ok(p) => match p.event {
                    Some(Event::Message { payload, .. }) => payload.len(),
                    _ => 0,
                },
                Err(_) => 0,
            }
        })
    });
    let mut buf = BytesMut::with_capacity(256);
    g.bench_function("encode_64B_unmasked", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(&mut buf, true, OpCode::Text, None, black_box(payload));
        })
    });
    g.bench_function("encode_64B_masked", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(
                &mut buf,
                true,
                OpCode::Text,
                Some([1, 2, 3, 4]),
                black_box(payload),
            );
        })
    });
    let masks = OsMasks {
        buf: [0; 256],
        at: 256,
    };
    let mut client = Connection::with_role(Role::Client(masks), Limits::default());
    g.bench_function("client_send_64B_masked", |b| {
        b.iter(|| {
            buf.clear();
            client.send(OpCode::Text, black_box(payload), &mut buf)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
