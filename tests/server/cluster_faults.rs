//! Broker faults with several nodes (each test bounded, each broker on its own port):
//! kill -9 and restart, SIGSTOP/SIGCONT (stall), Redis CLIENT KILL, a Redis output buffer
//! limit that cuts the pubsub connection, and --broker-required during an outage.

use std::time::Duration;

use crate::brokers::{Broker, Check, Kind, Sub, bm, http_pub, node, propagate, until};

const T: &[&str] = &["--broker-timeout", "1s"];

/// kill -9 while publishing: local delivery goes on, the alarm fires on every node,
/// publishes are counted as dropped and the answer says so; after the restart the nodes
/// reconnect, cross-node delivery resumes and epochs were reset.
fn kill9(kind: Kind) {
    let Some(mut b) = Broker::of(kind) else {
        return;
    };
    let a = node("uring", &b, "a", T);
    let bn = node("uring", &b, "b", T);
    let mut la = Sub::simple(&a, "k", "a-local");
    let mut rb = Sub::simple(&bn, "k", "b-remote");
    propagate(&mut [&mut la, &mut rb], "k", |p| {
        http_pub(&a, "k", p);
    });
    b.kill9();
    let mut down_answer = false;
    for i in 0..200 {
        let (st, body) = http_pub(&a, "k", &format!("A:{i}"));
        assert_eq!(
            st, 202,
            "publish during the outage (not --broker-required): {body}"
        );
        down_answer |= body.contains(r#""broker":"down""#);
        std::thread::sleep(Duration::from_millis(10));
    }
    http_pub(&a, "k", "A:end");
    let mut ck = Check::default();
    ck.drain(&mut la, &["A"]);
    assert_eq!(ck.count, 200, "local delivery stopped with the broker");
    for s in [&a, &bn] {
        assert!(
            until(Duration::from_secs(3), || bm(s, "ringcast_broker_up") == 0),
            "ringcast_broker_up still 1 on a node 2 s after kill -9"
        );
    }
    assert!(
        down_answer,
        "no HTTP publish answer said \"broker\":\"down\""
    );
    assert!(
        bm(&a, "ringcast_broker_dropped_total") > 0,
        "nothing counted as dropped"
    );
    assert!(a.get("/health").starts_with("HTTP/1.1 200"));
    assert!(a.get("/health/broker").starts_with("HTTP/1.1 503"));
    b.restart();
    for s in [&a, &bn] {
        assert!(
            until(Duration::from_secs(12), || bm(s, "ringcast_broker_up") == 1),
            "no reconnection within 12 s of the restart"
        );
    }
    // Cross-node delivery again (B's subscriber may have got some A:i before the kill
    // was seen: a fresh publisher tag).
    propagate(&mut [&mut rb], "again", |p| {
        http_pub(&a, "k", p);
    });
    http_pub(&a, "k", "Z:end");
    let mut ck = Check::default();
    ck.drain(&mut rb, &["Z"]);
    assert!(
        bm(&a, "ringcast_broker_epoch_resets_total") > 0,
        "no epoch reset after the outage"
    );
}

#[test]
fn kill9_redis() {
    kill9(Kind::Redis)
}
#[test]
fn kill9_nats() {
    kill9(Kind::Nats)
}

/// SIGSTOP: the broker accepts TCP but answers nothing; detected within ~3 s.
fn stall(kind: Kind) {
    let Some(mut b) = Broker::of(kind) else {
        return;
    };
    let a = node("uring", &b, "a", T);
    let bn = node("uring", &b, "b", T);
    let mut rb = Sub::simple(&bn, "st", "b");
    propagate(&mut [&mut rb], "st", |p| {
        http_pub(&a, "st", p);
    });
    b.stop();
    // Traffic makes a stalled write visible sooner; the keep-alive must find it anyway.
    let found = until(Duration::from_secs(4), || {
        http_pub(&a, "st", "A:x");
        bm(&a, "ringcast_broker_up") == 0
    });
    b.cont();
    assert!(
        found,
        "stalled broker not detected within 4 s (--broker-timeout 1s)"
    );
    assert!(
        until(Duration::from_secs(12), || bm(&a, "ringcast_broker_up")
            == 1
            && bm(&bn, "ringcast_broker_up") == 1),
        "not back up within 12 s of SIGCONT"
    );
    propagate(&mut [&mut rb], "again", |p| {
        http_pub(&a, "st", p);
    });
}

#[test]
fn stall_redis() {
    stall(Kind::Redis)
}
#[test]
fn stall_nats() {
    stall(Kind::Nats)
}

/// CLIENT KILL TYPE pubsub: the node counts the disconnect, reconnects, delivery resumes.
#[test]
fn client_kill_redis() {
    let Some(b) = Broker::redis(&[]) else { return };
    let a = node("uring", &b, "a", T);
    let bn = node("uring", &b, "b", T);
    let mut rb = Sub::simple(&bn, "ck", "b");
    propagate(&mut [&mut rb], "ck", |p| {
        http_pub(&a, "ck", p);
    });
    let before = bm(&bn, "ringcast_broker_disconnects_total");
    let r = b.redis_cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        r.starts_with(':') && r != ":0\r\n",
        "no pubsub client killed: {r}"
    );
    assert!(
        until(Duration::from_secs(5), || bm(
            &bn,
            "ringcast_broker_disconnects_total"
        ) > before),
        "disconnect not counted"
    );
    assert!(until(Duration::from_secs(12), || bm(
        &bn,
        "ringcast_broker_up"
    ) == 1));
    propagate(&mut [&mut rb], "again", |p| {
        http_pub(&a, "ck", p);
    });
}

/// A tiny pubsub output buffer limit: a flood of big publications makes Redis cut the
/// subscriber's connection; the node counts it, reconnects, and delivery resumes.
#[test]
fn output_buffer_limit_redis() {
    let Some(b) = Broker::redis(&["--client-output-buffer-limit", "pubsub 64kb 32kb 1"]) else {
        return;
    };
    let big = ["--max-message-size", "1MiB"];
    let a = node("uring", &b, "a", &[T, &big[..]].concat());
    let bn = node("uring", &b, "b", &[T, &big[..]].concat());
    let mut rb = Sub::simple(&bn, "ob", "b");
    propagate(&mut [&mut rb], "ob", |p| {
        http_pub(&a, "ob", p);
    });
    let before = bm(&bn, "ringcast_broker_disconnects_total");
    // Published from a raw connection, pipelined: far faster than any reader drains it.
    let blob = "x".repeat(200 << 10);
    let hit = until(Duration::from_secs(15), || {
        for _ in 0..20 {
            b.raw_publish(&b.channel("ob"), blob.as_bytes());
        }
        bm(&bn, "ringcast_broker_disconnects_total") > before
    });
    assert!(
        hit,
        "Redis did not cut the pubsub connection (or the node did not count it)"
    );
    assert!(until(Duration::from_secs(12), || bm(
        &bn,
        "ringcast_broker_up"
    ) == 1));
    propagate(&mut [&mut rb], "again", |p| {
        http_pub(&a, "ob", p);
    });
}

/// --broker-required: HTTP publish during the outage is 503, /ready 503.
fn required(kind: Kind) {
    let Some(mut b) = Broker::of(kind) else {
        return;
    };
    let a = node("uring", &b, "a", &[T, &["--broker-required"][..]].concat());
    assert_eq!(http_pub(&a, "q", "x").0, 202);
    b.kill9();
    assert!(until(Duration::from_secs(3), || bm(
        &a,
        "ringcast_broker_up"
    ) == 0));
    let (st, body) = http_pub(&a, "q", "y");
    assert_eq!(
        st, 503,
        "publish while the broker is lost with --broker-required: {body}"
    );
    assert!(a.get("/ready").starts_with("HTTP/1.1 503"));
    assert!(a.get("/health").starts_with("HTTP/1.1 200"));
    b.restart();
    assert!(until(Duration::from_secs(12), || bm(
        &a,
        "ringcast_broker_up"
    ) == 1));
    assert!(a.get("/ready").starts_with("HTTP/1.1 200"));
    assert_eq!(http_pub(&a, "q", "z").0, 202);
}

#[test]
fn required_redis() {
    required(Kind::Redis)
}
#[test]
fn required_nats() {
    required(Kind::Nats)
}
