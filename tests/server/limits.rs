//! Admission limits: `--max-connections` (503), `--allowed-origins` (403), per-IP connection
//! and connect-rate limits (429); every refusal counted by reason. Also `/` and `/health`.

use std::time::Duration;

use crate::both;
use crate::util::{Msg, Server};

both!(max_connections_answers_503_and_counts_it, |io| {
    let srv = Server::start(io, &["--max-connections", "2"]);
    let _a = srv.ws("/ws/t");
    let _b = srv.ws("/ws/t");
    let err = srv
        .ws_with("/ws/t", &[])
        .err()
        .expect("third upgrade refused");
    assert!(err.to_string().contains("503"), "{err}");
    let err = srv
        .ws_with("/ws", &[])
        .err()
        .expect("control upgrade refused too");
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(
        srv.metric("ringcast_refused_total{reason=\"max_connections\"}"),
        2
    );
    assert_eq!(
        srv.metric("ringcast_handshake_failures_total{status=\"503\"}"),
        2
    );
});

both!(origins_are_checked_on_every_upgrade, |io| {
    let srv = Server::start(
        io,
        &[
            "--allowed-origins",
            "http://good.example,https://App.example:8443",
        ],
    );
    let mut ok = srv
        .ws_with("/echo", &[("Origin", "http://good.example")])
        .expect("allowed origin");
    ok.text("hi");
    assert_eq!(ok.recv(), Msg::Text("hi".into()));
    srv.ws_with("/ws", &[("Origin", "https://app.example:8443")])
        .expect("origins compare case-insensitively");
    srv.ws_with("/ws/t", &[])
        .expect("no Origin: not a browser, not checked");
    for path in ["/ws/t", "/ws", "/echo"] {
        let err = srv
            .ws_with(path, &[("Origin", "http://evil.example")])
            .err()
            .expect("other origin refused");
        assert!(err.to_string().contains("403"), "{err}");
    }
    assert_eq!(srv.metric("ringcast_refused_total{reason=\"origin\"}"), 3);
    assert_eq!(
        srv.metric("ringcast_handshake_failures_total{status=\"403\"}"),
        3
    );
});

both!(per_ip_connection_limit_answers_429, |io| {
    let srv = Server::start(io, &["--max-connections-per-ip", "3"]);
    let a = srv.ws("/ws/t");
    let b = srv.ws("/ws/t");
    let c = srv.ws("/ws/t");
    let err = srv.ws_with("/ws/t", &[]).err().expect("fourth refused");
    assert!(err.to_string().contains("429"), "{err}");
    // Plain HTTP requests count too.
    assert!(srv.get("/health").starts_with("HTTP/1.1 429"));
    drop(a);
    // The slot comes back once the connection is released.
    let mut d = None;
    assert!(srv.wait_for(Duration::from_secs(5), |s| {
        d = s.ws_with("/ws/x", &[]).ok();
        d.is_some()
    }));
    drop((b, c, d));
    // Room for /metrics once they are released.
    let mut text = String::new();
    assert!(srv.wait_for(Duration::from_secs(5), |s| {
        text = s.get("/metrics");
        text.starts_with("HTTP/1.1 200")
    }));
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ringcast_refused_total{reason=\"ip_connections\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // The fourth upgrade, /health, and any retry while `a` was being released.
    assert!(refused >= 2, "{text}");
});

both!(connect_rate_limit_answers_429, |io| {
    let srv = Server::start(
        io,
        &["--connect-rate-per-ip", "1", "--connect-burst-per-ip", "3"],
    );
    let mut refused = 0;
    let mut kept = Vec::new();
    for _ in 0..6 {
        match srv.ws_with("/ws/t", &[]) {
            Ok(c) => kept.push(c),
            Err(e) => {
                assert!(e.to_string().contains("429"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        kept.len() <= 4 && refused >= 2,
        "kept {} refused {refused}",
        kept.len()
    );
    // After a second or two the bucket has tokens again (and /metrics can get through).
    std::thread::sleep(Duration::from_millis(2100));
    assert!(srv.metric("ringcast_refused_total{reason=\"ip_rate\"}") >= 2);
    assert!(srv.metric("ringcast_handshake_failures_total{status=\"429\"}") >= 2);
});

both!(demo_page_and_health, |io| {
    let srv = Server::start(io, &[]);
    // The browser's icon request is served, not a 404 in the metrics.
    let icon = srv.exchange(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n");
    let head = String::from_utf8_lossy(&icon);
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("image/x-icon"),
        "{head}"
    );
    assert!(icon.ends_with(ringcast::http::FAVICON));
    assert_eq!(
        srv.metric("ringcast_handshake_failures_total{status=\"404\"}"),
        0
    );
    let page = srv.get("/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html"), "{page}");
    assert!(
        page.contains("<html") || page.contains("<!doctype html>"),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained: no external resources"
    );
    assert!(srv.get("/health").starts_with("HTTP/1.1 200"));
    let r = srv.request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.0, 405);
});

both!(metrics_list_every_surface_family, |io| {
    let srv = Server::start(io, &[]);
    let text = srv.get("/metrics");
    for family in [
        "ringcast_mux_connections_total 0",
        "ringcast_http_publishes_total 0",
        "ringcast_draining 0",
        "ringcast_mux_commands_total{type=\"subscribe\"} 0",
        "ringcast_mux_commands_total{type=\"binary_publish\"} 0",
        "ringcast_mux_errors_total{code=\"bad_json\"} 0",
        "ringcast_mux_errors_total{code=\"too_many_topics\"} 0",
        "ringcast_refused_total{reason=\"max_connections\"} 0",
        "ringcast_refused_total{reason=\"origin\"} 0",
        "ringcast_refused_total{reason=\"ip_connections\"} 0",
        "ringcast_refused_total{reason=\"ip_rate\"} 0",
        "ringcast_refused_total{reason=\"draining\"} 0",
        "ringcast_handshake_failures_total{status=\"411\"} 0",
        "# TYPE ringcast_refused_total counter",
    ] {
        assert!(text.contains(family), "{family} missing in:\n{text}");
    }
    // Counters move: a control connection, a command, an HTTP publish.
    let mut c = srv.ws("/ws");
    c.text("{\"type\":\"ping\"}");
    assert!(matches!(c.recv(), Msg::Text(_)));
    assert_eq!(srv.post("/publish/x", "text/plain", b"y").0, 202);
    assert_eq!(srv.metric("ringcast_mux_connections_total"), 1);
    assert_eq!(srv.metric("ringcast_mux_commands_total{type=\"ping\"}"), 1);
    assert_eq!(srv.metric("ringcast_http_publishes_total"), 1);
    assert_eq!(
        srv.metric("ringcast_messages_in_total"),
        1,
        "a ping is not a message"
    );
});
