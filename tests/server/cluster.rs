//! Several nodes through a real broker (Redis, NATS): fan-out across three nodes exactly
//! once and in per-publisher order, interest (no subscriber, nothing received), foreign
//! messages on the broker, node id collisions, start-up errors and cross-node recovery.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::both;
use crate::brokers::{Broker, Check, Kind, Sub, bm, http_pub, node, propagate, until};
use crate::util::{Msg, Server};

const N: usize = 100;

/// Three nodes; simple and mux subscribers on each; HTTP publications on A and WebSocket
/// ones on B; every subscriber gets every message once, in per-publisher order.
fn fanout(io: &str, kind: Kind) {
    let Some(b) = Broker::of(kind) else { return };
    let a = node(io, &b, "a", &[]);
    let bn = node(io, &b, "b", &[]);
    let c = node(io, &b, "c", &[]);
    let mut subs = Vec::new();
    for (s, n) in [(&a, "a"), (&bn, "b"), (&c, "c")] {
        subs.push(Sub::simple(s, "f", &format!("{n}-simple")));
        subs.push(Sub::mux(s, "f", &format!("{n}-mux")));
    }
    let mut wpub = bn.ws("/ws/f");
    {
        let mut refs: Vec<&mut Sub> = subs.iter_mut().collect();
        propagate(&mut refs, "a", |p| {
            assert_eq!(http_pub(&a, "f", p).0, 202);
        });
        let mut refs: Vec<&mut Sub> = subs.iter_mut().collect();
        propagate(&mut refs, "b", |p| wpub.text(p));
    }
    for i in 0..N {
        assert_eq!(http_pub(&a, "f", &format!("A:{i}")).0, 202);
        wpub.text(&format!("B:{i}"));
    }
    assert_eq!(http_pub(&a, "f", "A:end").0, 202);
    wpub.text("B:end");
    for s in &mut subs {
        let mut ck = Check::default();
        ck.drain(s, &["A", "B"]);
        assert_eq!(ck.count, 2 * N, "{}", s.name);
        assert_eq!(ck.last["A"], N as i64 - 1);
        assert_eq!(ck.last["B"], N as i64 - 1);
        // Nothing more comes (a duplicate would come after the sentinel).
        while let Some(m) = s.next(Duration::from_millis(200)) {
            assert!(
                m.starts_with("probe-"),
                "{}: after the sentinels: {m}",
                s.name
            );
        }
    }
}

both!(fanout_redis, |io| { fanout(io, Kind::Redis) });
both!(fanout_nats, |io| { fanout(io, Kind::Nats) });

/// A node with no subscriber of a topic receives nothing for it.
fn no_interest(kind: Kind) {
    let Some(b) = Broker::of(kind) else { return };
    let a = node("uring", &b, "a", &[]);
    let bn = node("uring", &b, "b", &[]);
    let c = node("uring", &b, "c", &[]);
    let mut sa = Sub::simple(&a, "ab", "a");
    let mut sb = Sub::simple(&bn, "ab", "b");
    let mut sc = Sub::simple(&c, "conly", "c");
    propagate(&mut [&mut sa, &mut sb], "ab", |p| {
        http_pub(&a, "ab", p);
    });
    propagate(&mut [&mut sc], "c", |p| {
        http_pub(&a, "conly", p);
    });
    let before = bm(&c, "ringcast_broker_received_total");
    for i in 0..50 {
        http_pub(&a, "ab", &format!("A:{i}"));
    }
    http_pub(&a, "ab", "A:end");
    http_pub(&a, "conly", "A:end");
    let mut ck = Check::default();
    ck.drain(&mut sb, &["A"]);
    assert_eq!(ck.count, 50);
    let mut ck = Check::default();
    ck.drain(&mut sc, &["A"]);
    let after = bm(&c, "ringcast_broker_received_total");
    // The sentinel only (1); 50 more would mean C got topic "ab" it has no subscriber of.
    assert!(
        after - before <= 1,
        "C received {} messages, expected the sentinel only",
        after - before
    );
}

#[test]
fn no_interest_redis() {
    no_interest(Kind::Redis)
}
#[test]
fn no_interest_nats() {
    no_interest(Kind::Nats)
}

/// A message on the broker that ringcast did not write: not delivered, counted, and the
/// next real message arrives.
fn foreign(kind: Kind) {
    let Some(b) = Broker::of(kind) else { return };
    let a = node("uring", &b, "a", &[]);
    let bn = node("uring", &b, "b", &[]);
    let mut sa = Sub::simple(&a, "g", "a");
    propagate(&mut [&mut sa], "g", |p| {
        http_pub(&bn, "g", p);
    });
    let before = bm(&a, "ringcast_broker_bad_messages_total");
    b.raw_publish(&b.channel("g"), b"garbage not an envelope");
    b.raw_publish(&b.channel("g"), &[0u8; 3]);
    http_pub(&bn, "g", "B:end");
    let m = sa
        .next(Duration::from_secs(5))
        .expect("sentinel after garbage");
    assert_eq!(m, "B:end", "foreign bytes were delivered");
    assert!(
        until(Duration::from_secs(3), || bm(
            &a,
            "ringcast_broker_bad_messages_total"
        ) >= before + 2),
        "bad messages not counted: {}",
        bm(&a, "ringcast_broker_bad_messages_total")
    );
    assert!(sa.next(Duration::from_millis(300)).is_none());
}

#[test]
fn foreign_redis() {
    foreign(Kind::Redis)
}
#[test]
fn foreign_nats() {
    foreign(Kind::Nats)
}

/// Runs ringcast with `args`; (success, stderr), bounded by 15 s.
fn run_fail(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("ringcast {args:?} still running after 15 s (it should have refused to start)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn collision(kind: Kind) {
    let Some(b) = Broker::of(kind) else { return };
    let _a = node("uring", &b, "twin-7", &[]);
    let url = b.url();
    let (ok, err) = run_fail(&[
        "--broker",
        &url,
        "--node-id",
        "twin-7",
        "--broker-timeout",
        "2s",
    ]);
    assert!(!ok, "a second node with the same id started");
    assert!(
        err.contains("twin-7"),
        "error does not name the node id: {err}"
    );
}

#[test]
fn collision_redis() {
    collision(Kind::Redis)
}
#[test]
fn collision_nats() {
    collision(Kind::Nats)
}

#[test]
fn startup_errors() {
    let (ok, err) = run_fail(&["--broker", "redis://127.0.0.1:1", "--broker-timeout", "1s"]);
    assert!(
        !ok && err.contains("broker"),
        "unreachable broker: {ok} {err}"
    );
    let (ok, err) = run_fail(&["--broker", "foo"]);
    assert!(!ok && err.contains("broker"), "malformed URL: {ok} {err}");
    let (ok, err) = run_fail(&["--broker", "nats://127.0.0.1:1", "--broker-timeout", "1s"]);
    assert!(
        !ok && err.contains("broker"),
        "unreachable NATS: {ok} {err}"
    );
    let s = Server::start(
        "uring",
        &[
            "--broker",
            "redis://127.0.0.1:1",
            "--broker-optional",
            "--broker-timeout",
            "1s",
        ],
    );
    assert!(s.get("/health").starts_with("HTTP/1.1 200"));
    let h = s.get("/health/broker");
    assert!(
        h.starts_with("HTTP/1.1 503") && h.contains(r#""broker":"down""#),
        "{h}"
    );
    assert_eq!(bm(&s, "ringcast_broker_up"), 0);
}

/// The mux subscribe answer's (epoch, offset); messages' offsets.
fn ack(c: &mut crate::util::Client) -> serde_json::Value {
    loop {
        match c.recv_timeout(Duration::from_secs(5)) {
            Some(Msg::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                if v["type"] == "ack" {
                    return v;
                }
            }
            m => panic!("no ack: {m:?}"),
        }
    }
}

fn message(c: &mut crate::util::Client) -> (u64, String) {
    loop {
        match c.recv_timeout(Duration::from_secs(5)) {
            Some(Msg::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                if v["type"] == "message" {
                    let off = v["offset"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("no offset: {t}"));
                    return (off, v["data"].as_str().unwrap_or_default().to_owned());
                }
            }
            m => panic!("no message: {m:?}"),
        }
    }
}

/// Redis with history: a client on A is cut off, reconnects to C with its offset and
/// recovers every missed publication exactly once; offsets agree across nodes.
#[test]
fn recover_on_another_node() {
    let Some(b) = Broker::redis(&[]) else { return };
    let h = ["--history-size", "100"];
    let a = node("uring", &b, "a", &h);
    let bn = node("uring", &b, "b", &h);
    let c = node("uring", &b, "c", &h);
    // A watcher on C keeps the topic subscribed there (its offsets are compared with A's).
    let mut watch = c.ws("/ws");
    watch.text(r#"{"type":"subscribe","topic":"r","id":1}"#);
    ack(&mut watch);
    let mut ca = a.ws("/ws");
    ca.text(r#"{"type":"subscribe","topic":"r","id":1}"#);
    // With a broker, the first subscriber's ack carries no epoch yet (the topic's stream
    // is named by the broker's first numbered publication): it is read from a second
    // subscribe on A below, once publications have come.
    ack(&mut ca);
    // Wait until B's publications reach A and C (interest propagated).
    let mut i = 0;
    let (mut seen_a, mut seen_c) = (false, false);
    let end = Instant::now() + Duration::from_secs(15);
    while !(seen_a && seen_c) {
        assert!(
            Instant::now() < end,
            "B's publications do not reach A and C"
        );
        http_pub(&bn, "r", &format!("m{i}"));
        i += 1;
        while let Some(Msg::Text(_)) = ca.recv_timeout(Duration::from_millis(100)) {
            seen_a = true;
        }
        while let Some(Msg::Text(_)) = watch.recv_timeout(Duration::from_millis(100)) {
            seen_c = true;
        }
    }
    // Settle: 5 more known messages, read on A with offsets, and on C.
    for k in 0..5 {
        http_pub(&bn, "r", &format!("s{k}"));
    }
    let mut a_offs = std::collections::HashMap::new();
    let mut last = 0;
    loop {
        let (o, d) = message(&mut ca);
        assert!(o > last, "offsets go back on A: {o} after {last}");
        last = o;
        a_offs.insert(d.clone(), o);
        if d == "s4" {
            break;
        }
    }
    loop {
        let (o, d) = message(&mut watch);
        if let Some(ao) = a_offs.get(&d) {
            assert_eq!(*ao, o, "offset of {d} differs between A and C");
        }
        if d == "s4" {
            break;
        }
    }
    let mut second = a.ws("/ws");
    second.text(r#"{"type":"subscribe","topic":"r","id":1}"#);
    let info = ack(&mut second);
    let epoch = info["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in A's ack after publications: {info}"))
        .to_owned();
    assert_eq!(
        info["offset"].as_u64(),
        Some(last),
        "A's ack offset: {info}"
    );
    drop(second);
    drop(ca);
    for k in 0..20 {
        http_pub(&bn, "r", &format!("x{k}"));
    }
    // C sees them (so the history is written) before the client comes back.
    let mut k = 0;
    while k < 20 {
        let (_, d) = message(&mut watch);
        if d == format!("x{k}") {
            k += 1;
        }
    }
    let mut cc = c.ws("/ws");
    cc.text(&format!(
        r#"{{"type":"subscribe","topic":"r","id":2,"recover":{{"epoch":"{epoch}","offset":{last}}}}}"#
    ));
    let ack2 = ack(&mut cc);
    assert_eq!(ack2["recovered"], true, "not recovered on C: {ack2}");
    let mut prev = last;
    for k in 0..20 {
        let (o, d) = message(&mut cc);
        assert_eq!(o, prev + 1, "gap or duplicate at {d}");
        assert_eq!(d, format!("x{k}"));
        prev = o;
    }
    http_pub(&bn, "r", "end");
    let (o, d) = message(&mut cc);
    assert_eq!(
        (o, d.as_str()),
        (prev + 1, "end"),
        "duplicate or gap after the recovery"
    );
}
