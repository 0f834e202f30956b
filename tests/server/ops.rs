//! What an operator relies on: a second server on a held address refuses to start (the
//! shards share their port with `SO_REUSEPORT`; nobody else may), and a restart on the same
//! port right after the previous process exited works.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::both;
use crate::util::Server;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn second_on(addr: &str, io: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", addr, "--io", io, "--shards", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; kill it if it does not, and fail below.
    for _ in 0..50 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

both!(a_restart_on_the_same_address_starts_at_once, |io| {
    // The previous process exits with connections open (its ring's teardown, on io_uring,
    // finishes after the exit): the next one on the same port must start, not refuse.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    for round in 0..3 {
        let mut first = Server::start_with(
            Command::new(env!("CARGO_BIN_EXE_ringcast")),
            io,
            &["--listen", &addr],
        );
        let clients: Vec<_> = (0..50).map(|_| first.ws("/ws/t")).collect();
        first.signal("KILL");
        assert!(first.wait_exit(Duration::from_secs(5)).is_some());
        drop(clients);
        let next = Server::start_with(
            Command::new(env!("CARGO_BIN_EXE_ringcast")),
            io,
            &["--listen", &addr],
        );
        assert!(
            next.banner.contains("listening"),
            "round {round}: {}",
            next.log()
        );
    }
});

both!(a_second_server_on_a_held_address_refuses_to_start, |io| {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let first = Server::start_with(
        Command::new(env!("CARGO_BIN_EXE_ringcast")),
        io,
        &["--listen", &addr],
    );
    let out = second_on(&addr, io);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already in use by another process"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it must not have served"
    );
    // The first one still serves alone.
    assert!(first.get("/health").contains("ok"));
    // Once it is gone, the port can be taken again at once.
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let again = Server::start_with(
        Command::new(env!("CARGO_BIN_EXE_ringcast")),
        io,
        &["--listen", &addr],
    );
    assert!(again.get("/health").contains("ok"));
});

both!(an_unknown_ringcast_variable_is_warned_about, |io| {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.env("RINGCAST_MAX_CONECTIONS", "10");
    let srv = Server::start_with(cmd, io, &[]);
    assert!(srv.wait_for(Duration::from_secs(2), |s| {
        s.log().contains("RINGCAST_MAX_CONECTIONS")
    }));
    let log = srv.log();
    assert!(
        log.contains("did you mean RINGCAST_MAX_CONNECTIONS?"),
        "{log}"
    );
});

/// The admin address from the start-up line (`..., admin on 127.0.0.1:P)`).
fn admin_addr(srv: &Server) -> std::net::SocketAddr {
    srv.banner
        .split("admin on ")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {:?}", srv.banner))
}

fn get_at(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

both!(
    the_admin_listener_serves_operations_outside_the_per_ip_limits,
    |io| {
        let srv = Server::start(
            io,
            &[
                "--admin-listen",
                "127.0.0.1:0",
                "--max-connections-per-ip",
                "1",
            ],
        );
        let admin = admin_addr(&srv);
        // A client holds its IP's only slot on the public port.
        let _held = srv.ws("/ws/news");
        assert!(
            get_at(srv.addr, "/health").starts_with("HTTP/1.1 429"),
            "public port over the quota"
        );
        // The admin listener answers anyway.
        let m = get_at(admin, "/metrics");
        assert!(
            m.starts_with("HTTP/1.1 200") && m.contains("ringcast_connections"),
            "{m}"
        );
        assert!(get_at(admin, "/health").starts_with("HTTP/1.1 200"));
        assert!(get_at(admin, "/ready").starts_with("HTTP/1.1 200"));
        let topics = get_at(admin, "/api/topics");
        assert!(
            topics.starts_with("HTTP/1.1 200") && topics.contains("\"news\""),
            "{topics}"
        );
        // No WebSocket and no demo page on the admin listener; no metrics and API on the public port.
        assert!(get_at(admin, "/").starts_with("HTTP/1.1 404"));
        assert!(crate::util::Client::connect(admin, "/ws/news").is_err());
        drop(_held);
        // With a quota of 1, each request waits until the previous connection is released.
        let eventually = |path: &str, status: &str| {
            srv.wait_for(Duration::from_secs(2), |_| {
                get_at(srv.addr, path).starts_with(&format!("HTTP/1.1 {status}"))
            })
        };
        assert!(
            eventually("/metrics", "404"),
            "no /metrics on the public port"
        );
        assert!(
            eventually("/api/topics", "404"),
            "no /api on the public port"
        );
        assert!(
            eventually("/health", "200"),
            "/health stays on the public port"
        );
    }
);

both!(
    histograms_show_fan_out_send_queue_and_handshake_distributions,
    |io| {
        let server = Server::start(io, &["--shards", "1"]);
        // 256 handshakes and 256 published batches: at one sample in 64, four of each at least.
        let mut subs: Vec<_> = (0..256).map(|_| server.ws("/ws/h")).collect();
        let mut publisher = server.ws("/ws/p");
        for i in 0..256 {
            let (status, _) = server.post("/publish/h", "text/plain", format!("m{i}").as_bytes());
            assert_eq!(status, 202);
        }
        for s in subs.iter_mut() {
            for i in 0..256 {
                assert_eq!(s.recv(), crate::util::Msg::Text(format!("m{i}")));
            }
        }
        publisher.text("x");
        let text = server.get("/metrics");
        for name in [
            "ringcast_fanout_duration_seconds",
            "ringcast_send_queue_bytes",
            "ringcast_handshake_duration_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} histogram")), "{name}");
            let value = |suffix: &str| -> u64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name}{suffix} in:\n{text}"))
            };
            let count = value("_count");
            assert!(count >= 4, "{name}: {count} samples");
            assert_eq!(value("_bucket{le=\"+Inf\"}"), count);
            // Buckets are cumulative: never decreasing, the last one all of them.
            let buckets: Vec<u64> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect();
            assert!(
                buckets.windows(2).all(|w| w[0] <= w[1]),
                "{name}: {buckets:?}"
            );
            assert_eq!(buckets.last(), Some(&count));
        }
    }
);
