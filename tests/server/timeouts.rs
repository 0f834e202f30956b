//! Handshake timeout (slowloris), idle timeout, server pings.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::both;
use crate::util::{Server, read_to_close};

both!(handshake_timeout_drops_slowloris, |io| {
    let srv = Server::start(io, &["--handshake-timeout", "1s"]);
    let mut s = srv.raw();
    s.write_all(b"GET /ws/a HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let t = Instant::now();
    let got = read_to_close(&mut s);
    assert!(got.is_empty(), "a plain TCP close, no response: {got:?}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "closed by the timeout"
    );
    assert!(srv.metric("ringcast_handshake_timeouts_total") >= 1);
});

both!(idle_timeout_closes_with_1001_and_pings_are_sent, |io| {
    let srv = Server::start(io, &["--ping-interval", "300ms", "--idle-timeout", "1s"]);
    let mut s = srv.raw();
    s.write_all(b"GET /ws/a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let t = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let head = all.windows(4).position(|w| w == b"\r\n\r\n").expect("101") + 4;
    let frames = &all[head..];
    let pings = frames.windows(2).filter(|w| w == &[0x89, 0x00]).count();
    assert!(pings >= 1, "server pings arrive: {frames:?}");
    let close = frames
        .windows(4)
        .rev()
        .find(|w| w[0] == 0x88)
        .expect("a close frame");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1001);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(srv.metric("ringcast_idle_timeouts_total") >= 1);
});
