//! History and recovery against a real server, on both backends: offsets dense and in one
//! order across shards whoever publishes, recovery without gap or duplicate at the seam
//! under a steady publish rate, every `recovered: false` reason, rewind in both modes,
//! TTL and memory-limit eviction, and `GET /history`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::util::{Client, Msg, Server, get_at, on_shard, post_at};

/// An in-process server with `shards` shards and history on in the default namespace.
fn start(io: &str, shards: usize, size: u32) -> ringcast::server::Server {
    crate::util::in_process_with(
        io,
        shards,
        ringcast::config::Config {
            history_size: size,
            max_recovery_publications: 10_000,
            ..ringcast::config::Config::default()
        },
    )
}

fn json_of(m: Msg) -> Value {
    match m {
        Msg::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

fn send(c: &mut Client, v: Value) {
    c.text(&v.to_string());
}

/// Subscribes a mux client and returns its ack.
fn subscribe(c: &mut Client, topic: &str, extra: Value) -> Value {
    let mut cmd = json!({"type": "subscribe", "topic": topic, "id": 1});
    if let (Some(m), Value::Object(e)) = (cmd.as_object_mut(), extra) {
        m.extend(e);
    }
    send(c, cmd);
    let ack = json_of(c.recv());
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

fn publish(addr: SocketAddr, topic: &str, body: &str) {
    let (status, text) = post_at(
        addr,
        &format!("/publish/{topic}"),
        "text/plain",
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{text}");
}

/// The next `n` delivered envelopes of `c`: (offset, data).
fn messages(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let v = json_of(c.recv());
            assert_eq!(v["type"], "message", "{v}");
            (
                v["offset"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no offset: {v}")),
                v["data"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

both!(offsets_are_dense_and_in_one_order_across_shards, |io| {
    let server = start(io, 2, 1000);
    let addr = server.addrs[0];
    // Subscribers and publishers on both shards: whichever is the home of "t", the other
    // shard's publishes are forwarded to it.
    let mut subs: Vec<Client> = (0..4).map(|i| on_shard(&server, i % 2, "/ws")).collect();
    let tops: Vec<u64> = subs
        .iter_mut()
        .map(|s| subscribe(s, "t", json!({}))["offset"].as_u64().unwrap())
        .collect();
    assert!(tops.iter().all(|&t| t == 0), "a fresh topic: {tops:?}");
    let mut simple = [on_shard(&server, 0, "/ws/t"), on_shard(&server, 1, "/ws/t")];
    let mut mux_pub = on_shard(&server, 1, "/ws");
    let per = 60;
    for i in 0..per {
        simple[0].text(&format!("s0-{i}"));
        simple[1].text(&format!("s1-{i}"));
        send(
            &mut mux_pub,
            json!({"type": "publish", "topic": "t", "data": format!("m-{i}")}),
        );
        if i % 10 == 0 {
            publish(addr, "t", &format!("h-{i}"));
        }
    }
    let total = per * 3 + per / 10;
    let seen: Vec<Vec<(u64, String)>> = subs.iter_mut().map(|s| messages(s, total)).collect();
    let offsets: Vec<u64> = seen[0].iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=total as u64).collect::<Vec<_>>(),
        "dense from 1"
    );
    for other in &seen[1..] {
        assert_eq!(other, &seen[0], "every subscriber sees one order");
    }
    // Per publisher, publish order.
    for prefix in ["s0-", "s1-", "m-", "h-"] {
        let seq: Vec<u64> = seen[0]
            .iter()
            .filter_map(|(_, d)| d.strip_prefix(prefix)?.parse().ok())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort_unstable();
        assert_eq!(seq, sorted, "{prefix} in publish order");
    }
    // Simple-mode publishers get everyone's messages but their own, in the same order.
    for (k, c) in simple.iter_mut().enumerate() {
        let own = format!("s{k}-");
        let want: Vec<String> = seen[0]
            .iter()
            .filter(|(_, d)| !d.starts_with(&own))
            .map(|(_, d)| d.clone())
            .collect();
        let got: Vec<String> = (0..want.len())
            .map(|_| match c.recv() {
                Msg::Text(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want, "simple-mode publisher {k}");
    }
    let forwarded: u64 = server
        .shared
        .metrics
        .iter()
        .map(|m| m.history.forwarded.get())
        .sum();
    assert!(forwarded > 0, "publishes off the home shard were forwarded");
});

both!(recovery_has_no_gap_and_no_duplicate_at_the_seam, |io| {
    let server = start(io, 2, 10_000);
    let addr = server.addrs[0];
    let total = 3000u64;
    // The first subscriber is in before the first publication: it must see offset 1.
    let mut first = Some(on_shard(&server, 0, "/ws"));
    let first_ack = subscribe(first.as_mut().unwrap(), "steady", json!({}));
    assert_eq!(first_ack["offset"], 0);
    let publisher = std::thread::spawn(move || {
        let mut p = Client::connect(addr, "/ws/steady").expect("publisher");
        for i in 1..=total {
            p.text(&format!("{i}"));
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        p
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut position: Option<(String, u64)> = None;
    let mut round = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last().copied().unwrap_or(0) < total {
        assert!(Instant::now() < deadline, "stuck at {:?}", seen.last());
        // Alternate shards, so that both the home and the other shard recover.
        let (mut c, ack) = match (first.take(), &position) {
            (Some(c), _) => (c, first_ack.clone()),
            (None, Some((e, o))) => {
                let mut c = on_shard(&server, round % 2, "/ws");
                let ack = subscribe(
                    &mut c,
                    "steady",
                    json!({"recover": {"epoch": e, "offset": o}}),
                );
                assert_eq!(ack["recovered"], true, "{ack}");
                (c, ack)
            }
            (None, None) => unreachable!("a position after the first round"),
        };
        round += 1;
        let epoch = ack["epoch"].as_str().unwrap().to_owned();
        let mut last = position
            .as_ref()
            .map_or(ack["offset"].as_u64().unwrap(), |p| p.1);
        // Read a few hundred (replay then live), then drop the connection mid-stream.
        for _ in 0..250 {
            let Some(m) = c.recv_timeout(Duration::from_secs(5)) else {
                break;
            };
            let v = json_of(m);
            let o = v["offset"].as_u64().unwrap();
            assert_eq!(o, last + 1, "no gap, no duplicate (round {round})");
            assert_eq!(v["data"].as_str(), Some(o.to_string().as_str()));
            last = o;
            seen.push(o);
            if o == total {
                break;
            }
        }
        position = Some((epoch, last));
        drop(c);
        std::thread::sleep(Duration::from_millis(3));
    }
    let mut p = publisher.join().expect("publisher thread");
    p.close(1000);
    assert_eq!(seen.first(), Some(&1));
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    assert!(
        round >= 5,
        "the stream was cut several times ({round} rounds)"
    );
});

both!(every_recovery_failure_has_its_reason, |io| {
    let dir = std::env::temp_dir().join(format!("ringcast-history-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ringcast.toml");
    std::fs::write(
        &config,
        "history_size = 5\nmax_recovery_publications = 10\n[namespaces.big]\nhistory_size = 100\n[namespaces.none]\nhistory_size = 0\n",
    )
    .unwrap();
    let server = Server::start(io, &["--config", config.to_str().unwrap()]);
    let mut c = server.ws("/ws");
    let ack = subscribe(&mut c, "a", json!({}));
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    for i in 0..20 {
        publish(server.addr, "a", &format!("{i}"));
        publish(server.addr, "big:b", &format!("{i}"));
    }
    messages(&mut c, 20);
    let mut r = server.ws("/ws");
    let case = |r: &mut Client, topic: &str, recover: Value| {
        let ack = subscribe(r, topic, json!({ "recover": recover }));
        send(r, json!({"type": "unsubscribe", "topic": topic}));
        let _ = r.recv();
        ack
    };
    let ack = case(&mut r, "a", json!({"epoch": "nope", "offset": 3}));
    assert_eq!(
        (
            &ack["recovered"],
            &ack["reason"],
            &ack["epoch"],
            &ack["offset"]
        ),
        (
            &json!(false),
            &json!("epoch_changed"),
            &json!(epoch),
            &json!(20)
        ),
        "{ack}"
    );
    let ack = case(&mut r, "a", json!({"epoch": epoch, "offset": 3}));
    assert_eq!(ack["reason"], "too_old", "only 5 kept: {ack}");
    let ack = case(&mut r, "a", json!({"epoch": epoch, "offset": 25}));
    assert_eq!(ack["reason"], "from_the_future", "{ack}");
    let ack = case(&mut r, "a", json!({"epoch": epoch, "offset": 20}));
    assert_eq!((&ack["recovered"], ack.get("reason")), (&json!(true), None));
    let big = subscribe(&mut server.ws("/ws"), "big:b", json!({}));
    let big_epoch = big["epoch"].as_str().unwrap();
    let ack = case(&mut r, "big:b", json!({"epoch": big_epoch, "offset": 5}));
    assert_eq!(ack["reason"], "too_many", "15 missed, at most 10: {ack}");
    let ack = case(&mut r, "none:c", json!({"epoch": big_epoch, "offset": 5}));
    assert_eq!(
        (&ack["recovered"], &ack["reason"], ack.get("epoch")),
        (&json!(false), &json!("no_history"), None),
        "{ack}"
    );
    // Malformed requests: precise errors, the connection stays.
    for (extra, needle) in [
        (
            json!({"recover": {"epoch": "bad epoch!", "offset": 1}}),
            "epoch",
        ),
        (json!({"recover": {"epoch": "abc", "offset": -1}}), "offset"),
        (json!({"recover": "abc"}), "recover"),
        (json!({"rewind": -1}), "rewind"),
        (json!({"rewind": 11}), "at most 10"),
        (
            json!({"rewind": 1, "recover": {"epoch": "abc", "offset": 1}}),
            "together",
        ),
    ] {
        let mut cmd = json!({"type": "subscribe", "topic": "a", "id": 9});
        cmd.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        send(&mut r, cmd);
        let e = json_of(r.recv());
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!("bad_message")),
            "{e}"
        );
        assert!(e["message"].as_str().unwrap().contains(needle), "{e}");
    }
    // Recover on a topic already subscribed: refused, the subscription stays.
    let _ = subscribe(&mut r, "a", json!({}));
    send(
        &mut r,
        json!({"type": "subscribe", "topic": "a", "recover": {"epoch": epoch, "offset": 1}}),
    );
    assert_eq!(json_of(r.recv())["code"], "bad_message");
    assert!(server.metric("ringcast_recoveries_failed_total") >= 4);
    assert!(server.metric("ringcast_recoveries_total") >= 1);
    let _ = std::fs::remove_dir_all(dir);
});

both!(rewind_in_both_modes, |io| {
    let server = Server::start(
        io,
        &["--history-size", "100", "--max-recovery-publications", "50"],
    );
    for i in 1..=5 {
        publish(server.addr, "p", &format!("v{i}"));
    }
    let mut m = server.ws("/ws");
    let ack = subscribe(&mut m, "p", json!({"rewind": 3}));
    assert_eq!(
        (&ack["rewound"], &ack["offset"]),
        (&json!(3), &json!(5)),
        "{ack}"
    );
    assert_eq!(
        messages(&mut m, 3),
        vec![(3, "v3".into()), (4, "v4".into()), (5, "v5".into())]
    );
    let mut all = server.ws("/ws");
    let ack = subscribe(&mut all, "p", json!({"rewind": 50}));
    assert_eq!(ack["rewound"], 5, "fewer kept than asked: {ack}");
    messages(&mut all, 5);
    // Simple mode: the last value at once, as a bare frame, then live.
    let mut s = server.ws("/ws/p?rewind=1");
    assert_eq!(s.recv(), Msg::Text("v5".into()));
    publish(server.addr, "p", "v6");
    assert_eq!(s.recv(), Msg::Text("v6".into()));
    assert_eq!(messages(&mut m, 1), vec![(6, "v6".into())]);
    for bad in ["/ws/p?rewind=-1", "/ws/p?rewind=x", "/ws/p?rewind=51"] {
        let (status, body) = server.request(
            format!(
                "GET {bad} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("rewind"), "{body}");
    }
});

both!(ttl_expiry_changes_the_epoch, |io| {
    let server = Server::start(io, &["--history-size", "10", "--history-ttl", "1s"]);
    publish(server.addr, "idle", "x");
    let mut c = server.ws("/ws");
    let ack = subscribe(&mut c, "idle", json!({}));
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    send(&mut c, json!({"type": "unsubscribe", "topic": "idle"}));
    let _ = c.recv();
    // Nobody subscribes and nothing is published for more than the TTL: forgotten.
    assert!(server.wait_for(
        Duration::from_secs(5),
        |s| s.metric("ringcast_history_expired_total") >= 1
    ));
    let page = get_at(server.addr, "/history/idle");
    assert!(page.contains(r#""epoch":null"#), "{page}");
    let ack = subscribe(
        &mut c,
        "idle",
        json!({"recover": {"epoch": epoch, "offset": 1}}),
    );
    assert_eq!(ack["reason"], "epoch_changed", "{ack}");
    assert_ne!(ack["epoch"], json!(epoch));
    // A topic that still has a subscriber keeps its epoch and offsets past the TTL.
    let e2 = ack["epoch"].as_str().unwrap().to_owned();
    publish(server.addr, "idle", "y");
    assert_eq!(messages(&mut c, 1), vec![(1, "y".into())]);
    std::thread::sleep(Duration::from_millis(2500));
    publish(server.addr, "idle", "z");
    assert_eq!(
        messages(&mut c, 1),
        vec![(2, "z".into())],
        "the sequence goes on"
    );
    let mut r = server.ws("/ws");
    let ack = subscribe(
        &mut r,
        "idle",
        json!({"recover": {"epoch": e2, "offset": 0}}),
    );
    assert_eq!(
        (&ack["reason"], &ack["epoch"]),
        (&json!("too_old"), &json!(e2)),
        "{ack}"
    );
});

both!(the_memory_limit_evicts_the_oldest_of_the_largest, |io| {
    let server = Server::start(
        io,
        &[
            "--history-size",
            "10000",
            "--history-memory-limit",
            "1MiB",
            "--shards",
            "1",
        ],
    );
    let mut c = server.ws("/ws");
    let epoch = subscribe(&mut c, "big", json!({}))["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = "x".repeat(4000);
    for _ in 0..400 {
        publish(server.addr, "big", &body);
    }
    publish(server.addr, "small", "s");
    assert!(server.wait_for(
        Duration::from_secs(5),
        |s| s.metric("ringcast_history_publications") > 0
    ));
    assert!(server.metric("ringcast_history_bytes") <= 1 << 20);
    assert!(server.metric(r#"ringcast_history_evicted_total{reason="memory"}"#) > 100);
    let mut r = server.ws("/ws");
    let ack = subscribe(
        &mut r,
        "big",
        json!({"recover": {"epoch": epoch, "offset": 0}}),
    );
    assert_eq!(
        (&ack["reason"], &ack["epoch"]),
        (&json!("too_old"), &json!(epoch)),
        "{ack}"
    );
    let page: Value = serde_json::from_str(
        get_at(server.addr, "/history/small")
            .split("\r\n\r\n")
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        page["publications"][0]["data"], "s",
        "the small history was not the one evicted"
    );
});

both!(the_history_endpoint, |io| {
    let server = start(io, 2, 100);
    let addr = server.addrs[0];
    let body = |path: &str| -> (u16, String) {
        let text = get_at(addr, path);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (
            status,
            text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
        )
    };
    for i in 1..=4 {
        publish(addr, "h", &format!("t{i}"));
    }
    let (status, _) = post_at(addr, "/publish/h", "application/octet-stream", &[0, 255, 7]);
    assert_eq!(status, 202);
    let (status, text) = body("/history/h?since=2&limit=2");
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((&v["offset"], &v["first"]), (&json!(5), &json!(1)), "{v}");
    assert_eq!(
        v["publications"],
        json!([{"offset": 3, "data": "t3"}, {"offset": 4, "data": "t4"}])
    );
    let v: Value = serde_json::from_str(&body("/history/h?since=4").1).unwrap();
    assert_eq!(v["publications"], json!([{"offset": 5, "b64": "AP8H"}]));
    let v: Value = serde_json::from_str(&body("/history/never").1).unwrap();
    assert_eq!(
        v,
        json!({"epoch": null, "offset": 0, "first": 1, "publications": []})
    );
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for (path, want) in [
        ("/history/h?since=6", 400),
        ("/history/h?since=-1", 400),
        ("/history/h?limit=10001", 400),
        ("/history/h?limit=ten", 400),
        ("/history/", 400),
        ("/history/nons:x", 400),
    ] {
        let (status, text) = body(path);
        assert_eq!(status, want, "{path}: {text}");
        *counts.entry(status).or_default() += 1;
    }
    assert_eq!(counts.get(&400), Some(&6));
});

both!(
    a_topic_without_history_has_no_history_endpoint_or_offsets,
    |io| {
        let server = Server::start(io, &[]);
        let (status, text) = {
            let t = server.get("/history/plain");
            let status = t
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (status, t)
        };
        assert_eq!(status, 404, "{text}");
        assert!(text.contains("no history"), "{text}");
        let mut c = server.ws("/ws");
        let ack = subscribe(&mut c, "plain", json!({}));
        assert!(ack.get("epoch").is_none(), "{ack}");
        publish(server.addr, "plain", "x");
        let v = json_of(c.recv());
        assert!(v.get("offset").is_none(), "{v}");
        let ack = subscribe(&mut server.ws("/ws"), "plain", json!({"rewind": 1}));
        assert_eq!(ack["rewound"], 0, "{ack}");
    }
);

both!(binary_envelopes_v2_carry_the_offset, |io| {
    let server = Server::start(io, &["--history-size", "10"]);
    let mut v1 = server.ws("/ws");
    let mut v2 = server.ws("/ws?envelope=2");
    subscribe(&mut v1, "bin", json!({}));
    subscribe(&mut v2, "bin", json!({}));
    let (status, _) = post_at(
        server.addr,
        "/publish/bin",
        "application/octet-stream",
        &[1, 2],
    );
    assert_eq!(status, 202);
    assert_eq!(v1.recv(), Msg::Binary(b"\x03bin\x01\x02".to_vec()));
    assert_eq!(
        v2.recv(),
        Msg::Binary(b"\x03bin\x00\x00\x00\x00\x00\x00\x00\x01\x01\x02".to_vec())
    );
    let (status, body) = server.request(
        b"GET /ws?envelope=3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
});

both!(the_history_endpoint_needs_the_right_to_subscribe, |io| {
    let dir = std::env::temp_dir().join(format!("ringcast-history-auth-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("api-key");
    std::fs::write(&key, "k-0123456789abcdef").unwrap();
    let config = dir.join("ringcast.toml");
    std::fs::write(
        &config,
        "history_size = 10\n[namespaces.public]\nanonymous = \"subscribe\"\n",
    )
    .unwrap();
    let server = Server::start(
        io,
        &[
            "--jwt-hmac-secret",
            "test-secret-0123456789",
            "--api-key-file",
            key.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let get = |path: &str, auth: Option<&str>| -> u16 {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: Bearer {a}\r\n"));
        }
        req.push_str("\r\n");
        server.request(req.as_bytes()).0
    };
    let reader = crate::auth::token("r", 60, json!({"sub": ["news"]}));
    let other = crate::auth::token("o", 60, json!({"sub": ["sport"]}));
    assert_eq!(
        get("/history/news", None),
        401,
        "no token, no anonymous access"
    );
    assert_eq!(
        get("/history/news", Some(&other)),
        403,
        "a token without the right"
    );
    assert_eq!(get("/history/news", Some(&reader)), 200);
    assert_eq!(
        get("/history/news", Some("k-0123456789abcdef")),
        200,
        "an API key reads all"
    );
    assert_eq!(get("/history/news", Some("wrong-key")), 401);
    assert_eq!(
        get("/history/public:feed", None),
        200,
        "anonymous subscribe allows it"
    );
    let _ = std::fs::remove_dir_all(dir);
});

both!(
    a_flood_of_topic_states_is_bounded_by_the_memory_limit,
    |io| {
        let server = Server::start(
            io,
            &[
                "--history-size",
                "10",
                "--history-memory-limit",
                "1MiB",
                "--shards",
                "1",
            ],
        );
        let mut keeper = server.ws("/ws");
        let kept = subscribe(&mut keeper, "keep", json!({}));
        publish(server.addr, "keep", "k1");
        assert_eq!(messages(&mut keeper, 1), vec![(1, "k1".into())]);
        // Each subscribe to a new topic with history starts its state (192 bytes charged):
        // 8,000 of them are more than 1 MiB.
        let mut flood = server.ws("/ws");
        for i in 0..8000 {
            let topic = format!("junk-{i}");
            subscribe(&mut flood, &topic, json!({}));
            send(&mut flood, json!({"type": "unsubscribe", "topic": topic}));
            assert_eq!(json_of(flood.recv())["type"], "ack");
        }
        assert!(server.wait_for(Duration::from_secs(5), |s| {
            s.metric("ringcast_history_topics_evicted_total") > 0
                && s.metric("ringcast_history_bytes") <= 1 << 20
        }));
        // The subscribed topic kept its epoch and offsets.
        let mut r = server.ws("/ws");
        let ack = subscribe(
            &mut r,
            "keep",
            json!({"recover": {"epoch": kept["epoch"], "offset": 0}}),
        );
        assert_eq!(
            (&ack["recovered"], &ack["epoch"]),
            (&json!(true), &kept["epoch"]),
            "{ack}"
        );
        assert_eq!(messages(&mut r, 1), vec![(1, "k1".into())]);
    }
);
