//! `run`'s offset checks end to end, in this process: a fake ringcast mux server (thread per
//! connection, built on the protocol core) sends each subscriber 50 stamped envelopes with
//! offsets, text and (on `envelope=2` connections) binary v2, dense or with one planted gap
//! or duplicate. The report must count exactly what was planted and fail the run (or not)
//! as documented. Bounded: each run lasts well under a second, sockets time out after 10 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use clap::Parser;
use ringcast::proto::frame::{OpCode, encode_frame};
use ringcast::proto::handshake::{HandshakeLimits, parse_request, write_101};
use ringcast::proto::{Connection, Event, Limits, Role};
use ringcast_loadtest::cli::{Cli, Command};
use ringcast_loadtest::payload::{BLAST_FLAG, Stamp, fill_template, write_stamp};
use ringcast_loadtest::report::RunReport;
use ringcast_loadtest::sys::now_ns;

const PER_SUB: u64 = 50;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plant {
    Dense,
    /// Offset 10 skipped (9 then 11).
    Gap,
    /// Offset 10 sent twice.
    Dup,
}

/// The offsets one subscriber gets.
fn offsets(plant: Plant) -> Vec<u64> {
    let mut v: Vec<u64> = (1..=PER_SUB).collect();
    match plant {
        Plant::Dense => {}
        Plant::Gap => v.retain(|&o| o != 10),
        Plant::Dup => v.insert(10, 10),
    }
    v
}

fn fake_server(plant: Plant) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            thread::spawn(move || serve(s, plant));
        }
    });
    addr
}

fn serve(mut s: TcpStream, plant: Plant) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let (v2, head_len) = loop {
        if let Ok(Some(r)) = parse_request(&buf, &HandshakeLimits::default()) {
            let up = r.websocket().unwrap();
            let mut out = Vec::new();
            write_101(&up, None, &mut out);
            s.write_all(&out).unwrap();
            let v2 = r
                .query
                .as_deref()
                .is_some_and(|q| q.split('&').any(|kv| kv == "envelope=2"));
            break (v2, r.head_len);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    buf.drain(..head_len);
    // The messages, a blast-style stream (one cycle of 1,000) so that `--publishers 0`
    // checks its order too: stamps stay dense whatever the offsets do.
    let mut out = BytesMut::new();
    for (seq, off) in offsets(plant).into_iter().enumerate() {
        let mut m = vec![0u8; 64];
        fill_template(&mut m).unwrap();
        write_stamp(
            &mut m,
            Stamp {
                publisher: BLAST_FLAG | 1000,
                seq: seq as u64,
                sent_ns: now_ns(),
            },
        );
        if v2 && seq % 2 == 1 {
            let mut b = vec![2u8];
            b.extend_from_slice(b"t0");
            b.extend_from_slice(&off.to_be_bytes());
            b.extend_from_slice(&m);
            encode_frame(&mut out, true, OpCode::Binary, None, &b);
        } else {
            let mut t =
                format!(r#"{{"type":"message","topic":"t0","offset":{off},"data":""#).into_bytes();
            t.extend_from_slice(&m);
            t.extend_from_slice(b"\"}");
            encode_frame(&mut out, true, OpCode::Text, None, &t);
        }
    }
    s.write_all(&out).unwrap();
    // Then answer the generator's close.
    let mut conn = Connection::new(Role::Server, Limits::default());
    let mut reply = BytesMut::new();
    loop {
        let mut input = std::mem::take(&mut buf);
        let mut pos = 0;
        while pos < input.len() {
            let Ok(p) = conn.feed(&mut input[pos..], &mut reply) else {
                return;
            };
            pos += p.consumed;
            if let Some(Event::Close { .. }) = p.event {
                let _ = s.write_all(&reply);
                return;
            }
            if p.consumed == 0 && p.event.is_none() {
                break;
            }
        }
        if !reply.is_empty() {
            let _ = s.write_all(&reply);
            reply.clear();
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn run(url: &str, extra: &[&str]) -> RunReport {
    let base = [
        "ringcast-loadtest",
        "run",
        "--sub-url",
        url,
        "--subscribers",
        "4",
        "--publishers",
        "0",
        "--size",
        "64",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--drain",
        "300ms",
        "--io",
        "epoll",
        "--quiet",
    ];
    let Command::Run(a) = Cli::try_parse_from(base.iter().chain(extra))
        .unwrap()
        .command
    else {
        unreachable!()
    };
    ringcast_loadtest::run::run(&a, vec![]).unwrap()
}

#[test]
fn dense_offsets_pass_in_text_and_v2() {
    let addr = fake_server(Plant::Dense);
    for q in ["", "&envelope=2"] {
        let r = run(&format!("ws://{addr}/ws?subscribe={{topic}}{q}"), &[]);
        assert_eq!(r.subscribers, 4, "{}", r.summary());
        assert_eq!(
            r.foreign,
            0,
            "{q}: every envelope unwrapped: {}",
            r.summary()
        );
        assert_eq!(r.offsets_checked, 4 * PER_SUB, "{q}: {}", r.summary());
        assert_eq!((r.offset_gaps, r.offset_missing, r.offset_dups), (0, 0, 0));
        assert_eq!(r.offset_failure, None);
    }
}

#[test]
fn a_gap_fails_unless_allowed() {
    let addr = fake_server(Plant::Gap);
    let url = format!("ws://{addr}/ws?subscribe={{topic}}&envelope=2");
    let r = run(&url, &[]);
    assert_eq!(r.offsets_checked, 4 * (PER_SUB - 1), "{}", r.summary());
    assert_eq!((r.offset_gaps, r.offset_missing, r.offset_dups), (4, 4, 0));
    let why = r.offset_failure.as_deref().expect("a gap fails the run");
    assert!(why.contains("4 gaps"), "{why}");
    let r = run(&url, &["--allow-offset-gaps"]);
    assert_eq!((r.offset_gaps, r.offset_missing), (4, 4));
    assert_eq!(r.offset_failure, None, "{}", r.summary());
}

#[test]
fn a_duplicate_always_fails() {
    let addr = fake_server(Plant::Dup);
    let url = format!("ws://{addr}/ws?subscribe={{topic}}");
    let r = run(&url, &["--allow-offset-gaps"]);
    assert_eq!(r.offsets_checked, 4 * (PER_SUB + 1), "{}", r.summary());
    assert_eq!((r.offset_gaps, r.offset_dups), (0, 4));
    assert!(r.offset_failure.is_some(), "{}", r.summary());
    // The stamps themselves were dense: nothing else is wrong.
    assert_eq!(
        (r.lost, r.duplicated, r.foreign),
        (0, 0, 0),
        "{}",
        r.summary()
    );
}
