//! HTTP/1.1 keep-alive and pipelining on the plain-HTTP endpoints: many requests on one
//! connection, pipelined requests answered in order, requests split at every byte,
//! `Connection: close`, HTTP/1.0, the idle timeout, and a client that pipelines without
//! reading (paused, bounded, harmless to others).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::both;
use crate::util::{Msg, Server};

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The head, lines joined with CRLF (for header checks).
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the answer says the connection closes after it.
    pub fn closes(&self) -> bool {
        self.head.contains("\r\nConnection: close")
    }
}

/// A keep-alive HTTP client: writes requests, reads answers one by one (by Content-Length).
pub struct Http {
    pub s: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    at: usize,
}

impl Http {
    pub fn connect(srv: &Server) -> Http {
        Http {
            s: srv.raw(),
            buf: Vec::new(),
            at: 0,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// The next answer; `head_only`: to a HEAD request (no body follows the head).
    pub fn answer_to(&mut self, head_only: bool) -> Answer {
        loop {
            let buf = &self.buf[self.at..];
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 2]).into_owned();
                let len: usize = if head_only {
                    0
                } else {
                    head.lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0)
                };
                if buf.len() >= end + 4 + len {
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    self.at += end + 4 + len;
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    return Answer { status, head, body };
                }
            }
            // What is left is part of one answer: cheap to move.
            self.buf.drain(..self.at);
            self.at = 0;
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!(
                    "closed before a whole answer; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    pub fn answer(&mut self) -> Answer {
        self.answer_to(false)
    }

    /// Whether the server closes the connection (EOF) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.s.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 64];
        let closed = match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&b[..n])),
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        closed
    }
}

pub fn publish_req(topic: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

both!(
    a_thousand_publishes_on_one_connection_arrive_in_order,
    |io| {
        let srv = Server::start(io, &[]);
        let mut sub = srv.ws("/ws/t");
        std::thread::sleep(Duration::from_millis(50));
        let mut c = Http::connect(&srv);
        for i in 0..1000 {
            c.send(&publish_req("t", &format!("m{i}")));
            let a = c.answer();
            assert_eq!(a.status, 202, "{i}: {}", a.text());
            assert!(
                a.head.contains("\r\nConnection: keep-alive"),
                "{i}: {}",
                a.head
            );
        }
        for i in 0..1000 {
            assert_eq!(sub.recv(), Msg::Text(format!("m{i}")), "message {i}");
        }
        assert!(srv.metric("ringcast_http_keepalive_reuses_total") >= 999);
        assert!(srv.metric("ringcast_http_requests_total") >= 1000);
    }
);

both!(pipelined_requests_are_answered_in_order, |io| {
    let srv = Server::start(io, &[]);
    let mut sub = srv.ws("/ws/p");
    std::thread::sleep(Duration::from_millis(50));
    // 100 requests of four kinds, written at once.
    let mut all = Vec::new();
    let mut want = Vec::new();
    for i in 0..100 {
        match i % 4 {
            0 => {
                all.extend(publish_req("p", &format!("n{i}")));
                want.push((202, false));
            }
            1 => {
                all.extend_from_slice(HEALTH);
                want.push((200, false));
            }
            2 => {
                all.extend_from_slice(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
                want.push((404, false));
            }
            _ => {
                all.extend_from_slice(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
                want.push((200, true));
            }
        }
    }
    let mut c = Http::connect(&srv);
    c.send(&all);
    for (i, &(status, head_only)) in want.iter().enumerate() {
        let a = c.answer_to(head_only);
        assert_eq!(a.status, status, "answer {i}: {}", a.head);
        if status == 200 && !head_only {
            assert_eq!(a.text(), "ok\n");
        }
    }
    for i in (0..100).step_by(4) {
        assert_eq!(sub.recv(), Msg::Text(format!("n{i}")));
    }
    // Still open.
    c.send(HEALTH);
    assert_eq!(c.answer().status, 200);
});

both!(a_request_split_at_every_point, |io| {
    let srv = Server::start(io, &["--shards", "1"]);
    let mut sub = srv.ws("/ws/s");
    std::thread::sleep(Duration::from_millis(50));
    let mut c = Http::connect(&srv);
    c.s.set_nodelay(true).unwrap();
    let template = [publish_req("s", "x000"), HEALTH.to_vec()].concat();
    for k in 1..template.len() {
        let mut req = [publish_req("s", &format!("x{k:03}")), HEALTH.to_vec()].concat();
        assert_eq!(req.len(), template.len());
        let second = req.split_off(k);
        c.send(&req);
        // Apart, so that each piece is its own receive.
        std::thread::sleep(Duration::from_millis(2));
        c.send(&second);
        let a = c.answer();
        assert_eq!(a.status, 202, "split at {k}: {}", a.text());
        assert_eq!(c.answer().status, 200, "split at {k}");
        assert_eq!(sub.recv(), Msg::Text(format!("x{k:03}")), "split at {k}");
    }
});

both!(connection_close_and_http_1_0, |io| {
    let srv = Server::start(io, &[]);
    // HTTP/1.1 with Connection: close: answered, then closed.
    let mut c = Http::connect(&srv);
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 200);
    assert!(a.closes(), "{}", a.head);
    assert!(c.closed_within(Duration::from_secs(2)));
    // Bytes pipelined after it are not answered.
    let mut c = Http::connect(&srv);
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(c.answer().closes());
    assert!(c.closed_within(Duration::from_secs(2)), "one answer only");
    // HTTP/1.0: closes by default...
    let mut c = Http::connect(&srv);
    c.send(b"GET /health HTTP/1.0\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 200);
    assert!(a.closes(), "{}", a.head);
    assert!(c.closed_within(Duration::from_secs(2)));
    // ...unless it asks for keep-alive.
    let mut c = Http::connect(&srv);
    c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let a = c.answer();
    assert!(a.head.contains("\r\nConnection: keep-alive"), "{}", a.head);
    c.send(b"GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_eq!(c.answer().status, 200);
    assert!(!c.closed_within(Duration::from_millis(200)), "still open");
    // Refusals close: a 400 (bad topic, body unread), a 413.
    let mut c = Http::connect(&srv);
    c.send(&publish_req("a b", "x"));
    let a = c.answer();
    assert_eq!(a.status, 400);
    assert!(a.closes(), "{}", a.head);
    assert!(c.closed_within(Duration::from_secs(2)));
    // A 404 keeps the connection (no body to skip); one with a body does not.
    let mut c = Http::connect(&srv);
    c.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!c.answer().closes());
    c.send(b"PUT /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    let a = c.answer();
    assert_eq!(a.status, 404);
    assert!(a.closes(), "its body was not read: {}", a.head);
});

both!(max_requests_per_connection, |io| {
    let srv = Server::start(io, &["--http-max-requests-per-connection", "3"]);
    let mut c = Http::connect(&srv);
    c.send(&HEALTH.repeat(5));
    assert!(!c.answer().closes());
    assert!(!c.answer().closes());
    assert!(c.answer().closes(), "the third answer closes");
    assert!(c.closed_within(Duration::from_secs(2)));
});

both!(keepalive_off_closes_every_answer, |io| {
    let srv = Server::start(io, &["--http-idle-timeout", "0"]);
    let mut c = Http::connect(&srv);
    c.send(&HEALTH.repeat(2));
    assert!(c.answer().closes());
    assert!(c.closed_within(Duration::from_secs(2)));
});

both!(an_idle_keepalive_connection_times_out, |io| {
    let srv = Server::start(
        io,
        &["--http-idle-timeout", "400ms", "--handshake-timeout", "10s"],
    );
    // Requests 200 ms apart keep it open well past the timeout: it counts from the last
    // answer.
    let mut c = Http::connect(&srv);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1200) {
        c.send(HEALTH);
        assert_eq!(c.answer().status, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Then silence: closed after about 400 ms.
    let t = Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)), "closed when idle");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert!(srv.metric("ringcast_http_idle_timeouts_total") >= 1);
    // A request begun and not finished is bounded by --handshake-timeout, not by the
    // idle timeout.
    let srv = Server::start(
        io,
        &["--http-idle-timeout", "10s", "--handshake-timeout", "500ms"],
    );
    let mut c = Http::connect(&srv);
    c.send(HEALTH);
    assert_eq!(c.answer().status, 200);
    c.send(b"GET /health HTTP/1.1\r\n");
    let t = Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(srv.metric("ringcast_handshake_timeouts_total") >= 1);
});

both!(pipelining_without_reading_is_paused_and_bounded, |io| {
    let srv = Server::start(io, &["--send-queue-limit", "64KiB", "--shards", "1"]);
    let rss_before = srv.rss();
    // Each request is answered with the whole metrics page (~10 KB): the 10 MB of requests
    // this client tries to write would queue gigabytes if nothing stopped reading them.
    let req: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let total = 10 << 20;
    let s = srv.raw();
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let progress = Arc::clone(&written);
    let writer = std::thread::spawn(move || {
        let chunk = req.repeat(65536 / req.len());
        while progress.load(Ordering::Relaxed) < total {
            if w.write_all(&chunk).is_err() {
                return;
            }
            progress.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let pushed = written.load(Ordering::Relaxed);
    assert!(pushed >= 1 << 20, "the client pushed megabytes: {pushed}");
    let grown = srv.rss().saturating_sub(rss_before);
    assert!(
        grown < 16 << 20,
        "server memory bounded: grew {grown} bytes"
    );
    // What the server took: what the kernel's socket buffers absorbed of the answers (a few
    // MB, a few hundred pages), not what the client pushed.
    let parsed = srv.metric("ringcast_http_requests_total") as usize;
    assert!(
        parsed * req.len() < pushed / 4,
        "the server stopped reading: parsed {parsed} requests of {}",
        pushed / req.len()
    );
    assert!(srv.metric("ringcast_recv_pauses_total") >= 1);
    // Others are served meanwhile.
    assert!(srv.get("/health").starts_with("HTTP/1.1 200"));
    let mut echo = srv.ws("/echo");
    echo.text("still here");
    assert_eq!(echo.recv(), Msg::Text("still here".into()));
    // The client reads: the answers are the pages, and the server reads again.
    let mut c = Http {
        s,
        buf: Vec::new(),
        at: 0,
    };
    let before = srv.metric("ringcast_http_requests_total") as usize;
    for i in 0..1000 {
        let a = c.answer();
        assert_eq!(a.status, 200, "answer {i}");
        assert!(a.text().contains("ringcast_connections"), "a metrics page");
    }
    assert!(
        srv.wait_for(Duration::from_secs(5), |srv| {
            srv.metric("ringcast_http_requests_total") as usize > before + 500
        }),
        "reading resumed once the answers drained"
    );
    assert!(srv.peak_rss().saturating_sub(rss_before) < 32 << 20);
    let _ = c.s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
});
