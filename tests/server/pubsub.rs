//! Simple mode, echo, fan-out across shards with order and exactly-once.

use std::collections::HashMap;
use std::time::Duration;

use ringcast::proto::frame::OpCode;

use crate::both;
use crate::util::{Msg, Server};

both!(publish_reaches_other_subscribers_not_the_sender, |io| {
    let srv = Server::start(io, &[]);
    let mut a = srv.ws("/ws/news");
    let mut b = srv.ws("/ws/news");
    let mut other = srv.ws("/ws/sport");
    let mut sport = srv.ws("/ws/sport");
    std::thread::sleep(Duration::from_millis(50));
    a.text("hello");
    assert_eq!(b.recv(), Msg::Text("hello".into()));
    // Sentinels published after "hello" was delivered: an echo to `a`, or "hello" leaking
    // into sport, would arrive before them.
    b.text("sentinel");
    assert_eq!(
        a.recv(),
        Msg::Text("sentinel".into()),
        "no echo without ?echo=1"
    );
    sport.text("sport sentinel");
    assert_eq!(
        other.recv(),
        Msg::Text("sport sentinel".into()),
        "other topics see nothing"
    );
});

both!(echo_param_and_message_types, |io| {
    let srv = Server::start(io, &[]);
    let mut a = srv.ws("/ws/t?echo=1");
    let mut b = srv.ws("/ws/t");
    std::thread::sleep(Duration::from_millis(50));
    a.send(OpCode::Binary, &[0, 159, 146, 150]);
    a.text("txt");
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.recv(),
            Msg::Binary(vec![0, 159, 146, 150]),
            "binary stays binary"
        );
        assert_eq!(c.recv(), Msg::Text("txt".into()), "text stays text");
    }
});

both!(echo_endpoint_and_payload_length_encodings, |io| {
    let srv = Server::start(
        io,
        &["--max-message-size", "128KiB", "--max-frame-size", "128KiB"],
    );
    let mut c = srv.ws("/echo");
    // 7-bit, 16-bit and 64-bit length encodings, and their edges.
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        c.send(OpCode::Binary, &payload);
        assert_eq!(c.recv(), Msg::Binary(payload), "length {len}");
    }
});

both!(message_size_limit_is_inclusive, |io| {
    let srv = Server::start(io, &["--max-message-size", "1000"]);
    let mut c = srv.ws("/echo");
    c.send(OpCode::Binary, &[7u8; 1000]);
    assert_eq!(
        c.recv(),
        Msg::Binary(vec![7u8; 1000]),
        "exactly the limit is accepted"
    );
    c.send(OpCode::Binary, &[7u8; 1001]);
    assert_eq!(
        c.expect_close(),
        Some(1009),
        "one byte more is refused with 1009"
    );
});

both!(health_and_metrics, |io| {
    let srv = Server::start(io, &[]);
    let h = srv.get("/health");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let m = srv.get("/metrics");
    assert!(m.contains("ringcast_connections "), "{m}");
    assert!(
        m.contains(&format!(
            "io=\"{}\"",
            if io == "uring" { "io_uring" } else { "epoll" }
        )),
        "{m}"
    );
});

/// Payload: "p<publisher>:<seq>".
fn parse(m: &Msg) -> (u32, u32) {
    let Msg::Text(t) = m else {
        panic!("expected text, got {m:?}")
    };
    let (p, s) = t[1..].split_once(':').expect("p<id>:<seq>");
    (p.parse().expect("publisher"), s.parse().expect("seq"))
}

both!(fan_out_across_shards_in_order_exactly_once, |io| {
    let srv = Server::start(io, &[]);
    const SUBS: usize = 40;
    const PUBS: u32 = 3;
    const N: u32 = 300;
    let mut subs: Vec<_> = (0..SUBS).map(|_| srv.ws("/ws/seq")).collect();
    let mut pubs: Vec<_> = (0..PUBS).map(|_| srv.ws("/ws/seq")).collect();
    std::thread::sleep(Duration::from_millis(100));
    for seq in 0..N {
        for (p, c) in pubs.iter_mut().enumerate() {
            c.text(&format!("p{p}:{seq}"));
        }
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let mut next: HashMap<u32, u32> = HashMap::new();
        for _ in 0..PUBS * N {
            let (p, seq) = parse(&s.recv());
            let want = next.entry(p).or_insert(0);
            assert_eq!(
                seq, *want,
                "subscriber {i}: publisher {p} out of order, duplicated or gapped"
            );
            *want += 1;
        }
    }
    // Nothing extra: a sentinel from publisher 0 must be every subscriber's next message
    // (publisher 0's messages arrive in order, so a duplicate of anything it sent earlier
    // would come before it).
    pubs[0].text(&format!("p0:{N}"));
    for (i, s) in subs.iter_mut().enumerate() {
        assert_eq!(parse(&s.recv()), (0, N), "subscriber {i}: nothing extra");
    }
    // Each publisher also receives the other publishers' messages (same topic), the
    // sentinels "p0:N" and "p1:N" of the others included, and never its own.
    pubs[1].text(&format!("p1:{N}"));
    for (me, c) in pubs.iter_mut().enumerate() {
        let mut count = 0;
        let want = (PUBS - 1) * N + u32::from(me != 0) + u32::from(me != 1);
        for _ in 0..want {
            let (p, _) = parse(&c.recv());
            assert_ne!(p as usize, me, "no echo to the publisher");
            count += 1;
        }
        assert_eq!(count, want);
    }
    // Which shard delivered what is asserted where each connection's shard is known:
    // tests/server/interest.rs.
});

both!(
    client_close_handshake_is_answered_and_the_connection_ends,
    |io| {
        let srv = Server::start(io, &[]);
        let mut c = srv.ws("/ws/bye");
        c.close(1000);
        assert_eq!(
            c.recv(),
            Msg::Close(Some(1000), String::new()),
            "the server echoes the close code"
        );
        assert_eq!(c.recv(), Msg::Eof, "then closes the TCP connection");
        assert!(srv.wait_for(Duration::from_secs(5), |s| s.open_connections() == 0));
        assert_eq!(srv.metric("ringcast_subscriptions"), 0);
    }
);

both!(
    write_delay_holds_follow_up_publishes_and_keeps_order,
    |io| {
        // One shard, so that publisher and subscriber share the shard whose window applies.
        let srv = Server::start(io, &["--shards", "1", "--write-delay", "400ms"]);
        let mut a = srv.ws("/ws/wd");
        let mut b = srv.ws("/ws/wd");
        std::thread::sleep(Duration::from_millis(50));
        let first_sent = std::time::Instant::now();
        a.text("m0");
        assert_eq!(
            b.recv(),
            Msg::Text("m0".into()),
            "the first publish is not held"
        );
        // m0 went out after `first_sent`, so its window ends after first_sent + 400 ms; these
        // two reach the server after m0 went out, inside the window.
        a.text("m1");
        a.text("m2");
        assert_eq!(b.recv(), Msg::Text("m1".into()));
        let held = first_sent.elapsed();
        assert_eq!(b.recv(), Msg::Text("m2".into()), "order is kept");
        assert!(
            held >= Duration::from_millis(400),
            "m1 was held until the window ended: {held:?}"
        );
        // The publisher's own view is unaffected by the hold: nothing comes back to it (an
        // echo of m0..m2 would arrive before b's sentinel; one shard, one topic: in order).
        b.text("sentinel");
        assert_eq!(a.recv(), Msg::Text("sentinel".into()));
    }
);
