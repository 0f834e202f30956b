//! Loopback integration tests: `blast` and `run` in one process for about a
//! second each, and the publisher paths (WebSocket and HTTP POST, rate and
//! closed loop) against a tiny thread-per-connection broadcast server built
//! here on the protocol core. Every test is bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use clap::Parser;
use ringcast::proto::frame::{OpCode, encode_frame};
use ringcast::proto::handshake::{HandshakeLimits, parse_request, write_101};
use ringcast::proto::{Connection, Event, Limits, Role};
use ringcast_loadtest::blast::Blast;
use ringcast_loadtest::cli::{BlastArgs, Cli, Command, RunArgs};
use ringcast_loadtest::report::RunReport;

fn run_args(args: &[&str]) -> RunArgs {
    let cli = Cli::try_parse_from(std::iter::once("ringcast-loadtest").chain(args.iter().copied()))
        .unwrap();
    match cli.command {
        Command::Run(r) => r,
        _ => unreachable!(),
    }
}

fn blast_args(size: &str) -> BlastArgs {
    let cli = Cli::try_parse_from([
        "ringcast-loadtest",
        "blast",
        "--listen",
        "127.0.0.1:0",
        "--size",
        size,
        "--max-duration",
        "20s",
    ])
    .unwrap();
    match cli.command {
        Command::Blast(b) => b,
        _ => unreachable!(),
    }
}

fn run(args: &[&str]) -> RunReport {
    ringcast_loadtest::run::run(&run_args(args), vec![]).unwrap()
}

fn io_modes() -> Vec<&'static str> {
    if ringcast_loadtest::uring::probe().is_ok() {
        vec!["uring", "epoll"]
    } else {
        vec!["epoll"]
    }
}

#[test]
fn run_against_blast() {
    if ringcast_loadtest::uring::probe().is_err() {
        eprintln!("io_uring unavailable: blast cannot run here; skipped");
        return;
    }
    let blast = Blast::start(&blast_args("64")).unwrap();
    let url = format!("ws://{}/", blast.addr);
    for io in io_modes() {
        let r = run(&[
            "run",
            "--sub-url",
            &url,
            "--subscribers",
            "20",
            "--publishers",
            "0",
            "--size",
            "64",
            "--duration",
            "500ms",
            "--warmup",
            "200ms",
            "--drain",
            "100ms",
            "--threads",
            "2",
            "--io",
            io,
            "--quiet",
        ]);
        eprintln!("{io}: {}", r.summary());
        assert!(r.delivered > 0, "{io}: nothing delivered: {}", r.summary());
        // (No assertion on the rate: on a starved machine the measured window can
        // be all but empty; totals are what this test is about.)
        assert_eq!(r.lost, 0, "{io}");
        assert_eq!(r.duplicated, 0, "{io}");
        assert_eq!(r.out_of_order, 0, "{io}");
        assert_eq!(r.foreign, 0, "{io}");
        assert_eq!(r.errors, 0, "{io}");
        assert_eq!(r.connect.ok, 20);
        assert!(r.latency_us.p50 > 0.0, "{io}: latency recorded");
    }
    // Slow subscribers that never read: blast never disconnects them.
    let r = run(&[
        "run",
        "--sub-url",
        &url,
        "--subscribers",
        "10",
        "--publishers",
        "0",
        "--size",
        "64",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--drain",
        "100ms",
        "--slow-fraction",
        "0.2",
        "--quiet",
    ]);
    assert_eq!(r.slow.count, 2);
    assert_eq!(r.slow.still_connected, 2, "{:?}", r.slow);
    assert_eq!(r.lost, 0);
    blast.stop().unwrap();
}

/// A tiny broadcast server: every data message from a client goes to every
/// other client; `POST` bodies go to every WebSocket client. Thread per
/// connection, blocking writes: only for low rates.
fn broadcast_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Arc<Mutex<Vec<(usize, TcpStream)>>> = Arc::new(Mutex::new(Vec::new()));
    thread::spawn(move || {
        for (id, s) in listener.incoming().enumerate() {
            let Ok(s) = s else { continue };
            let clients = Arc::clone(&clients);
            thread::spawn(move || serve(id, s, clients));
        }
    });
    addr
}

fn broadcast(
    clients: &Mutex<Vec<(usize, TcpStream)>>,
    from: usize,
    opcode: OpCode,
    payload: &[u8],
) {
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, true, opcode, None, payload);
    let list = clients.lock().unwrap();
    for (id, c) in list.iter() {
        if *id != from {
            let _ = (&*c).write_all(&frame);
        }
    }
}

fn serve(id: usize, mut s: TcpStream, clients: Arc<Mutex<Vec<(usize, TcpStream)>>>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        let req = loop {
            if let Ok(Some(r)) = parse_request(&buf, &HandshakeLimits::default()) {
                break r;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if req.is_upgrade() {
            let up = req.websocket().unwrap();
            let mut out = Vec::new();
            write_101(&up, None, &mut out);
            // The 101 and the registration happen under the list's lock: a client that has
            // its 101 is already a receiver (otherwise a broadcast racing the registration
            // is lost for it, which the generator rightly reports), and no broadcast frame
            // can be written before the 101.
            {
                let mut list = clients.lock().unwrap();
                s.write_all(&out).unwrap();
                list.push((id, s.try_clone().unwrap()));
            }
            buf.drain(..req.head_len);
            let mut conn = Connection::new(Role::Server, Limits::default());
            let mut out = BytesMut::new();
            loop {
                let mut input = std::mem::take(&mut buf);
                let mut pos = 0;
                while pos < input.len() {
                    let Ok(p) = conn.feed(&mut input[pos..], &mut out) else {
                        return;
                    };
                    pos += p.consumed;
                    match p.event {
                        Some(Event::Message { opcode, payload }) => {
                            broadcast(&clients, id, opcode, payload)
                        }
                        Some(Event::Close { .. }) => {
                            clients.lock().unwrap().retain(|(i, _)| *i != id);
                            let _ = s.write_all(&out);
                            return;
                        }
                        _ => {}
                    }
                    if p.consumed == 0 && p.event.is_none() {
                        break;
                    }
                }
                if !out.is_empty() {
                    let _ = s.write_all(&out);
                    out.clear();
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
        // Plain HTTP: a POST body is broadcast as a text message.
        let len = req.content_length().ok().flatten().unwrap_or(0);
        while buf.len() < req.head_len + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        broadcast(
            &clients,
            usize::MAX,
            OpCode::Text,
            &buf[req.head_len..req.head_len + len],
        );
        buf.drain(..req.head_len + len);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
    }
}

#[test]
fn publishers_over_websocket_and_http() {
    let addr = broadcast_server();
    let ws = format!("ws://{addr}/ws/{{topic}}");
    let http = format!("http://{addr}/publish/{{topic}}");
    for io in io_modes() {
        for (flag, url) in [("--pub-url", &ws), ("--pub-http", &http)] {
            let r = run(&[
                "run",
                "--sub-url",
                &ws,
                "--subscribers",
                "8",
                flag,
                url,
                "--publishers",
                "2",
                "--rate",
                "2000",
                "--size",
                "100",
                "--duration",
                "500ms",
                "--warmup",
                "200ms",
                "--drain",
                "500ms",
                "--io",
                io,
                "--quiet",
            ]);
            eprintln!("{io} {flag}: {}", r.summary());
            assert!(r.published > 0);
            // Every subscriber sees every published message; publisher connections
            // (WebSocket) see each other's too, which is not counted.
            assert_eq!(r.lost, 0, "{io} {flag}");
            assert_eq!(r.duplicated + r.out_of_order + r.foreign, 0, "{io} {flag}");
            assert_eq!(r.delivered, r.published * 8, "{io} {flag}");
            assert!(r.latency_us.p99 > 0.0);
        }
    }
    // Closed loop.
    let r = run(&[
        "run",
        "--sub-url",
        &ws,
        "--subscribers",
        "4",
        "--pub-url",
        &ws,
        "--publishers",
        "1",
        "--in-flight",
        "4",
        "--size",
        "64",
        "--binary",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--quiet",
    ]);
    eprintln!("in-flight: {}", r.summary());
    assert!(r.published > 10, "closed loop made progress");
    assert_eq!(r.lost, 0);
}

#[test]
fn setup_failures_are_errors() {
    // Nothing listens on this port (bound, then dropped).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let e = ringcast_loadtest::run::run(
        &run_args(&[
            "run",
            "--sub-url",
            &url,
            "--subscribers",
            "2",
            "--publishers",
            "0",
            "--size",
            "64",
            "--duration",
            "100ms",
            "--quiet",
        ]),
        vec![],
    )
    .unwrap_err();
    assert!(e.contains("no subscriber could connect"), "{e}");
    let e = ringcast_loadtest::run::run(
        &run_args(&[
            "run",
            "--sub-url",
            "ws://10.0.0.1:80/",
            "--subscribers",
            "2",
            "--publishers",
            "0",
            "--size",
            "64",
            "--quiet",
        ]),
        vec![],
    )
    .unwrap_err();
    assert!(e.contains("--allow-remote"), "{e}");
}

/// A server that answers every request with `reply` after a valid 101 (or instead of it).
fn misbehaving_server(reply_101: bool, then: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let req = loop {
                    if let Ok(Some(r)) = parse_request(&buf, &HandshakeLimits::default()) {
                        break r;
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                if reply_101 {
                    let mut out = Vec::new();
                    write_101(&req.websocket().unwrap(), None, &mut out);
                    let _ = s.write_all(&out);
                }
                let _ = s.write_all(then);
                thread::sleep(Duration::from_millis(500));
            });
        }
    });
    addr
}

#[test]
fn misbehaving_servers_give_errors_not_panics() {
    // Refuses the upgrade: a setup error naming the status.
    let addr = misbehaving_server(
        false,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let url = format!("ws://{addr}/");
    let e = ringcast_loadtest::run::run(
        &run_args(&[
            "run",
            "--sub-url",
            &url,
            "--subscribers",
            "3",
            "--publishers",
            "0",
            "--size",
            "64",
            "--duration",
            "100ms",
            "--quiet",
        ]),
        vec![],
    )
    .unwrap_err();
    assert!(e.contains("404"), "{e}");
    // Upgrades, then sends a masked frame (forbidden from a server) and junk:
    // the run completes and counts the broken connections as errors.
    for io in io_modes() {
        let addr = misbehaving_server(true, &[0x81, 0x82, 1, 2, 3, 4, 0x60, 0x6b, 0xff, 0xff]);
        let url = format!("ws://{addr}/");
        let r = run(&[
            "run",
            "--sub-url",
            &url,
            "--subscribers",
            "3",
            "--publishers",
            "0",
            "--size",
            "64",
            "--duration",
            "200ms",
            "--warmup",
            "0s",
            "--io",
            io,
            "--quiet",
        ]);
        assert_eq!(r.errors, 3, "{io}: {}", r.summary());
        assert_eq!(r.delivered, 0);
    }
}

/// Stopping receive threads abruptly, with multishot receives armed and data
/// flowing, must wait for every receive to finish before the buffer ring is
/// freed (or leak it on purpose): no crash, no "leaked" note in the normal case.
#[test]
fn abrupt_stop_with_receives_in_flight() {
    use ringcast_loadtest::connect::{ConnectOpts, connect_many};
    use ringcast_loadtest::receivers::{Backend, BufConfig, Receivers};
    use ringcast_loadtest::target::Target;
    use ringcast_loadtest::worker::{NewSub, RunShared};
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    if ringcast_loadtest::uring::probe().is_err() {
        return;
    }
    let blast = Blast::start(&blast_args("64")).unwrap();
    let target = Target::parse(&format!("ws://{}/", blast.addr), false).unwrap();
    for round in 0..5 {
        let shared = Arc::new(RunShared::new(0, None));
        let mut recv = Receivers::spawn(
            2,
            Backend::Uring,
            BufConfig {
                size: 4096,
                count: 16,
            },
            Arc::clone(&shared),
            1,
            0,
            1,
        )
        .unwrap();
        let opts = ConnectOpts {
            rate: 0,
            concurrency: 16,
            timeout: Duration::from_secs(5),
            sources: vec![],
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            tokens: None,
        };
        let stats = connect_many(
            &target,
            16,
            &|_| "/".to_string(),
            &opts,
            &mut |e| {
                recv.dispatch(NewSub {
                    id: e.idx,
                    topic: 0,
                    stream: e.stream,
                    leftover: e.leftover,
                    slow: None,
                    probe: false,
                    envelopes: false,
                    envelope_v2: false,
                })
                .unwrap()
            },
            None,
        )
        .unwrap();
        assert_eq!(stats.ok, 16);
        thread::sleep(Duration::from_millis(50 + round * 20));
        assert!(recv.sum(|s| s.delivered.load(Ordering::Relaxed)) > 0);
        // Straight to STOP: no close handshake, receives still armed.
        shared
            .phase
            .store(ringcast_loadtest::worker::STOP, Ordering::Release);
        let results = recv.close_and_join(Duration::ZERO).unwrap();
        for w in &results {
            assert!(
                !w.notes.iter().any(|n| n.contains("leaked")),
                "{:?}",
                w.notes
            );
        }
    }
    blast.stop().unwrap();
}
