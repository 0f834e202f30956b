//! `POST /publish/{topic}`: text and binary bodies, the 202 reply, and every refusal
//! (413 from Content-Length, 411, bad topics, bad UTF-8, wrong method), with metrics.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::both;
use crate::mux::next_json;
use crate::util::{Msg, Server, read_to_close, split_response};

both!(text_and_binary_bodies_reach_both_modes, |io| {
    let srv = Server::start(io, &["--shards", "1"]);
    let mut simple = srv.ws("/ws/news");
    let mut simple2 = srv.ws("/ws/news");
    let mut ctl = srv.ws("/ws?subscribe=news");
    std::thread::sleep(Duration::from_millis(50));
    let (status, body) = srv.post(
        "/publish/news",
        "text/plain; charset=utf-8",
        "héllo".as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"queued": 3}));
    assert_eq!(simple.recv(), Msg::Text("héllo".into()));
    assert_eq!(simple2.recv(), Msg::Text("héllo".into()));
    assert_eq!(
        next_json(&mut ctl),
        json!({"type":"message","topic":"news","data":"héllo"})
    );
    let (status, body) = srv.post("/publish/news", "application/octet-stream", &[0, 0xff, 7]);
    assert_eq!(status, 202, "{body}");
    assert_eq!(simple.recv(), Msg::Binary(vec![0, 0xff, 7]));
    assert_eq!(ctl.recv(), Msg::Binary(b"\x04news\x00\xff\x07".to_vec()));
    // JSON is not text/*: it goes out binary, as documented.
    let (status, _) = srv.post("/publish/news", "application/json", b"{}");
    assert_eq!(status, 202);
    assert_eq!(simple.recv(), Msg::Binary(b"{}".to_vec()));
    // Nobody subscribed: queued 0.
    let (status, body) = srv.post("/publish/empty", "text/plain", b"x");
    assert_eq!((status, body.trim()), (202, "{\"queued\":0}"));
    assert_eq!(srv.metric("ringcast_http_publishes_total"), 4);
});

both!(body_in_pieces_and_expect_continue, |io| {
    let srv = Server::start(io, &["--shards", "1"]);
    let mut sub = srv.ws("/ws/t");
    std::thread::sleep(Duration::from_millis(50));
    let mut s = srv.raw();
    s.write_all(b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"01234").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"56789").unwrap();
    let (status, body) = split_response(&read_to_close(&mut s));
    assert_eq!(status, 202, "{body}");
    assert_eq!(sub.recv(), Msg::Text("0123456789".into()));
});

both!(refusals, |io| {
    let srv = Server::start(io, &["--max-message-size", "1KiB"]);
    let mut sub = srv.ws("/ws/t");
    // 413 decided from Content-Length before any body byte is sent.
    let (status, body) = srv.request(
        b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1025\r\n\r\n",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("1024"), "{body}");
    // Exactly the limit is fine.
    let (status, _) = srv.post("/publish/t", "text/plain", &[b'a'; 1024]);
    assert_eq!(status, 202);
    assert_eq!(sub.recv(), Msg::Text("a".repeat(1024)));
    let (status, body) =
        srv.request(b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\r\n");
    assert_eq!(status, 411, "{body}");
    let (status, body) = srv.request(
        b"POST /publish/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(status, 411, "{body}");
    let (status, _) =
        srv.request(b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n");
    assert_eq!(status, 400);
    let (status, body) = srv.post("/publish/a%20b c", "text/plain", b"x");
    assert_eq!(status, 400, "{body}");
    let long = format!("/publish/{}", "x".repeat(256));
    let (status, body) = srv.post(&long, "text/plain", b"x");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("255"), "{body}");
    let (status, _) = srv.post("/publish/", "text/plain", b"x");
    assert_eq!(status, 400);
    let (status, body) = srv.post("/publish/t", "text/plain", &[0xff, 0xfe]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("UTF-8"), "{body}");
    let raw = srv.exchange(b"GET /publish/t HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = String::from_utf8_lossy(&raw);
    assert!(
        head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nAllow: POST\r\n"),
        "405 names what the path takes: {head}"
    );
    let raw = srv.exchange(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert!(
        String::from_utf8_lossy(&raw).contains("\r\nAllow: GET, HEAD\r\n"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let (status, _) = srv.request(b"PUT /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
    // Each refusal was answered after its request was handled, so anything it had
    // published would reach `sub` before this.
    let (status, _) = srv.post("/publish/t", "text/plain", b"sentinel");
    assert_eq!(status, 202);
    assert_eq!(
        sub.recv(),
        Msg::Text("sentinel".into()),
        "nothing refused was published"
    );
    let m = |s: &str| {
        srv.metric(&format!(
            "ringcast_handshake_failures_total{{status=\"{s}\"}}"
        ))
    };
    assert_eq!(m("413"), 1);
    assert_eq!(m("411"), 2);
    assert_eq!(m("400"), 5);
    assert_eq!(m("405"), 2);
    // The 1024-byte body and the sentinel.
    assert_eq!(srv.metric("ringcast_http_publishes_total"), 2);
});
