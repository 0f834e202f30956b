//! Graceful shutdown: SIGTERM/SIGINT → `/ready` 503 (`/health`, liveness, stays 200), new upgrades 503, every client gets
//! what was queued for it and then close 1001, and the process exits 0 within
//! `--drain-timeout`; a second signal exits at once.

use std::time::{Duration, Instant};

use ringcast::proto::frame::OpCode;

use crate::both;
use crate::mux::next_json;
use crate::util::{Msg, Server};

both!(queued_messages_are_flushed_then_1001_then_exit_0, |io| {
    let mut srv = Server::start(
        io,
        &[
            "--drain-timeout",
            "5s",
            "--max-message-size",
            "1MiB",
            "--send-queue-limit",
            "64MiB",
        ],
    );
    let mut sub = srv.ws("/ws/big");
    let mut ctl = srv.ws("/ws?subscribe=big");
    let mut publisher = srv.ws("/ws/big");
    std::thread::sleep(Duration::from_millis(50));
    // 24 MiB each for two readers that do not read yet: most of it waits in the server.
    let n = 24;
    for i in 0..n {
        publisher.send(OpCode::Binary, &vec![i as u8; 1 << 20]);
    }
    assert!(srv.wait_for(Duration::from_secs(10), |s| {
        s.metric("ringcast_messages_in_total") == n
    }));
    let t0 = Instant::now();
    srv.signal("TERM");
    // Draining: health says so, new upgrades are refused.
    assert!(srv.wait_for(Duration::from_secs(2), |s| {
        s.get("/ready").starts_with("HTTP/1.1 503")
    }));
    let err = srv
        .ws_with("/ws/x", &[])
        .err()
        .expect("no upgrades while draining");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(srv.post("/publish/big", "text/plain", b"late").0, 503);
    assert_eq!(srv.metric("ringcast_refused_total{reason=\"draining\"}"), 2);
    // The server says it drains (1, whatever the number of shards).
    assert!(
        srv.wait_for(Duration::from_secs(2), |s| s.metric("ringcast_draining")
            == 1),
        "draining"
    );
    for i in 0..n {
        match sub.recv() {
            Msg::Binary(b) => assert!(b.len() == 1 << 20 && b[0] == i as u8, "message {i}"),
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert_eq!(sub.expect_close(), Some(1001));
    for i in 0..n {
        match ctl.recv() {
            Msg::Binary(b) => assert_eq!(b[4], i as u8, "enveloped message {i}"),
            other => panic!("enveloped message {i}: {other:?}"),
        }
    }
    assert_eq!(ctl.expect_close(), Some(1001));
    assert_eq!(publisher.expect_close(), Some(1001));
    let status = srv
        .wait_exit(Duration::from_secs(6))
        .expect("exited within the drain timeout");
    assert_eq!(status.code(), Some(0), "{}", srv.log());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(srv.log().contains("draining"), "{}", srv.log());
});

both!(unresponsive_clients_do_not_hold_the_exit, |io| {
    let mut srv = Server::start(io, &["--drain-timeout", "1s"]);
    // A client that never reads nor answers the close.
    let _silent = srv.ws("/ws?subscribe=a");
    let mut polite = srv.ws("/ws/a");
    let t0 = Instant::now();
    srv.signal("INT");
    assert_eq!(polite.expect_close(), Some(1001));
    let status = srv.wait_exit(Duration::from_secs(3)).expect("exited");
    assert_eq!(status.code(), Some(0));
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(
        took >= Duration::from_millis(500),
        "waited for the silent client: {took:?}"
    );
});

both!(second_signal_exits_at_once, |io| {
    let mut srv = Server::start(io, &["--drain-timeout", "30s"]);
    let mut c = srv.ws("/ws");
    c.text("{\"type\":\"ping\"}");
    assert_eq!(next_json(&mut c)["type"], "pong");
    srv.signal("TERM");
    assert!(srv.wait_for(Duration::from_secs(2), |s| {
        s.get("/ready").starts_with("HTTP/1.1 503")
    }));
    let t0 = Instant::now();
    srv.signal("TERM");
    let status = srv
        .wait_exit(Duration::from_secs(2))
        .expect("exited at once");
    assert_eq!(status.code(), Some(128 + 15));
    assert!(t0.elapsed() < Duration::from_secs(1));
});

both!(drain_grace_keeps_serving_with_ready_at_503, |io| {
    let mut srv = Server::start(io, &["--drain-grace", "2s", "--drain-timeout", "3s"]);
    let mut sub = srv.ws("/ws/live");
    let mut publisher = srv.ws("/ws/live");
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    srv.signal("TERM");
    assert!(srv.wait_for(Duration::from_secs(1), |s| {
        s.get("/ready").starts_with("HTTP/1.1 503")
    }));
    // Liveness stays up; new clients are refused, connected ones are still served.
    assert!(srv.get("/health").starts_with("HTTP/1.1 200"));
    assert!(
        srv.ws_with("/ws/live", &[]).is_err(),
        "upgrade refused while draining"
    );
    publisher.text("during the grace");
    assert_eq!(sub.recv(), Msg::Text("during the grace".into()));
    assert!(
        t0.elapsed() < Duration::from_millis(1800),
        "still inside the grace"
    );
    // Then the drain proper: 1001, and the process exits 0.
    assert_eq!(sub.expect_close(), Some(1001));
    assert!(
        t0.elapsed() >= Duration::from_millis(1800),
        "closed after the grace, not at once: {:?}",
        t0.elapsed()
    );
    let status = srv.wait_exit(Duration::from_secs(6)).expect("exited");
    assert!(status.success(), "{status:?}");
});
