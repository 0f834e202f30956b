//! `POST /publish/{topic}`: text and binary bodies, the 202 reply, and every refusal
//! (413 from Content-Length, 411, bad topics, bad UTF-8, wrong method), with metrics.
//! `POST /publish` (batch): JSON arrays and NDJSON, text and base64 items, an item refused
//! alone with its index, and the whole-body refusals (413, 415, 400).

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::both;
use crate::http_keepalive::{Answer, Http};
use crate::mux::next_json;
use crate::util::{Msg, Server, read_to_close, split_response};

fn batch(c: &mut Http, content_type: &str, body: &str) -> Answer {
    c.send(
        format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.answer()
}

fn results(a: &Answer) -> Vec<serde_json::Value> {
    assert_eq!(a.status, 200, "{}", a.text());
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    v["results"].as_array().unwrap().clone()
}

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
    // JSON is text (a browser's typeof e.data === "string" sees it), as are the other
    // textual types; a charset other than UTF-8 is refused, and so is a body that is not.
    let (status, _) = srv.post("/publish/news", "application/json", b"{}");
    assert_eq!(status, 202);
    assert_eq!(simple.recv(), Msg::Text("{}".into()));
    let (status, _) = srv.post(
        "/publish/news",
        "application/vnd.x+json; charset=utf-8",
        b"[1]",
    );
    assert_eq!(status, 202);
    assert_eq!(simple.recv(), Msg::Text("[1]".into()));
    assert_eq!(
        srv.post("/publish/news", "text/plain; charset=latin1", b"x")
            .0,
        415
    );
    assert_eq!(
        srv.post("/publish/news", "application/json", b"\xff").0,
        400
    );
    // Nobody subscribed: queued 0.
    let (status, body) = srv.post("/publish/empty", "text/plain", b"x");
    assert_eq!((status, body.trim()), (202, "{\"queued\":0}"));
    assert_eq!(srv.metric("ringcast_http_publishes_total"), 5);
});

both!(body_in_pieces_and_expect_continue, |io| {
    let srv = Server::start(io, &["--shards", "1"]);
    let mut sub = srv.ws("/ws/t");
    std::thread::sleep(Duration::from_millis(50));
    let mut s = srv.raw();
    s.write_all(b"POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
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

both!(batch_with_a_bad_item_in_the_middle, |io| {
    // One shard: `queued` counts the subscribers on the shard that took the request.
    let srv = Server::start(io, &["--shards", "1"]);
    let mut a = srv.ws("/ws/a");
    let mut b = srv.ws("/ws/b");
    let mut ctl = srv.ws("/ws?subscribe=a,b");
    std::thread::sleep(Duration::from_millis(50));
    let mut c = Http::connect(&srv);
    let body = r#"[
        {"topic": "a", "data": "one"},
        {"topic": "bad topic", "data": "never"},
        {"topic": "b", "b64": "AP8H"},
        {"topic": "a", "data": "tw\u00f6"},
        {"topic": "b", "data": "x", "b64": "eA=="},
        {"topic": "b", "b64": "not base64!"},
        {"topic": "a", "data": "three"}
    ]"#;
    let r = results(&batch(&mut c, "application/json", body));
    assert_eq!(r.len(), 7, "one result per item: {r:?}");
    assert_eq!(r[0], json!({"queued": 2}));
    assert_eq!(r[1]["index"], 1);
    assert_eq!(r[1]["error"], "bad_topic");
    assert!(
        r[1]["message"].as_str().unwrap().contains("printable"),
        "{r:?}"
    );
    assert_eq!(r[2], json!({"queued": 2}), "b and the mux connection");
    assert_eq!(r[4]["error"], "bad_message");
    assert_eq!(r[4]["index"], 4);
    assert_eq!(r[5]["error"], "bad_base64");
    assert!(r[6]["queued"].is_u64());
    // The good ones arrive, in order, the refused ones never.
    assert_eq!(a.recv(), Msg::Text("one".into()));
    assert_eq!(a.recv(), Msg::Text("twö".into()));
    assert_eq!(a.recv(), Msg::Text("three".into()));
    assert_eq!(b.recv(), Msg::Binary(vec![0, 0xff, 7]));
    // Mux mode: per topic in order (topics' batches may interleave either way).
    let got: Vec<Msg> = (0..4).map(|_| ctl.recv()).collect();
    let a_texts: Vec<serde_json::Value> = got
        .iter()
        .filter_map(|m| match m {
            Msg::Text(t) => serde_json::from_str(t).ok(),
            _ => None,
        })
        .collect();
    let want: Vec<serde_json::Value> = ["one", "twö", "three"]
        .iter()
        .map(|d| json!({"type":"message","topic":"a","data":d}))
        .collect();
    assert_eq!(a_texts, want);
    assert!(
        got.contains(&Msg::Binary(b"\x01b\x00\xff\x07".to_vec())),
        "{got:?}"
    );
    // The connection stays open; a sentinel shows nothing else went out.
    let r = results(&batch(
        &mut c,
        "application/json",
        r#"[{"topic":"b","data":"sentinel"}]"#,
    ));
    assert!(r[0]["queued"].is_u64());
    assert_eq!(b.recv(), Msg::Text("sentinel".into()));
    assert_eq!(srv.metric("ringcast_http_batch_items_total"), 5);
    let refused = |code: &str| {
        srv.metric(&format!(
            "ringcast_http_batch_refused_items_total{{code=\"{code}\"}}"
        ))
    };
    assert_eq!(refused("bad_topic"), 1);
    assert_eq!(refused("bad_message"), 1);
    assert_eq!(refused("bad_base64"), 1);
});

both!(ndjson_batch, |io| {
    let srv = Server::start(io, &["--max-message-size", "1KiB"]);
    let mut sub = srv.ws("/ws/n");
    std::thread::sleep(Duration::from_millis(50));
    let mut c = Http::connect(&srv);
    let big = "y".repeat(1025);
    let body = format!(
        "{{\"topic\":\"n\",\"data\":\"1\"}}\r\n\n{{\"topic\":\"n\",\n{{\"topic\":\"n\",\"data\":\"{big}\"}}\n{{\"topic\":\"n\",\"b64\":\"Mg\"}}\n"
    );
    let r = results(&batch(&mut c, "application/x-ndjson", &body));
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(r[0]["queued"].is_u64());
    assert_eq!(
        (r[1]["index"].clone(), r[1]["error"].clone()),
        (json!(1), json!("bad_json"))
    );
    assert_eq!(r[2]["error"], "too_large");
    assert!(r[3]["queued"].is_u64());
    assert_eq!(sub.recv(), Msg::Text("1".into()));
    assert_eq!(sub.recv(), Msg::Binary(b"2".to_vec()));
});

both!(batch_refusals, |io| {
    let srv = Server::start(
        io,
        &[
            "--max-publish-batch-items",
            "3",
            "--max-publish-batch-bytes",
            "1KiB",
        ],
    );
    let mut sub = srv.ws("/ws/r");
    std::thread::sleep(Duration::from_millis(50));
    // Too many items: 413, and none of them published.
    let four = r#"[{"topic":"r","data":"1"},{"topic":"r","data":"2"},{"topic":"r","data":"3"},{"topic":"r","data":"4"}]"#;
    let a = batch(&mut Http::connect(&srv), "application/json", four);
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.text().contains("max-publish-batch-items"), "{}", a.text());
    assert!(a.closes());
    let a = batch(
        &mut Http::connect(&srv),
        "application/x-ndjson",
        "{}\n{}\n{}\n{}\n",
    );
    assert_eq!(a.status, 413);
    // A body over --max-publish-batch-bytes: 413 from the head, before the body is sent.
    let mut c = Http::connect(&srv);
    c.send(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1025\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.text().contains("1024"), "{}", a.text());
    // Not an array: 400; another type: 415; no length: 411.
    let a = batch(
        &mut Http::connect(&srv),
        "application/json",
        r#"{"topic":"r","data":"1"}"#,
    );
    assert_eq!(a.status, 400, "{}", a.text());
    let a = batch(&mut Http::connect(&srv), "application/json", "[{\"topic\":");
    assert_eq!(a.status, 400, "{}", a.text());
    let a = batch(&mut Http::connect(&srv), "text/plain", "[]");
    assert_eq!(a.status, 415, "{}", a.text());
    assert_eq!(
        srv.metric("ringcast_handshake_failures_total{status=\"415\"}"),
        1,
        "counted"
    );
    let (status, _) =
        srv.request(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n");
    assert_eq!(status, 411);
    let raw = srv.exchange(b"GET /publish HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(String::from_utf8_lossy(&raw).contains("\r\nAllow: POST\r\n"));
    // Exactly the limits is fine; the body may arrive in pieces.
    let three = r#"[{"topic":"r","data":"1"},{"topic":"r","data":"2"},{"topic":"r","data":"3"}]"#;
    let mut c = Http::connect(&srv);
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        three.len()
    );
    c.send(head.as_bytes());
    std::thread::sleep(Duration::from_millis(30));
    c.send(&three.as_bytes()[..10]);
    std::thread::sleep(Duration::from_millis(30));
    c.send(&three.as_bytes()[10..]);
    assert_eq!(results(&c.answer()).len(), 3);
    for i in 1..=3 {
        assert_eq!(
            sub.recv(),
            Msg::Text(i.to_string()),
            "nothing of the refused batches"
        );
    }
});
