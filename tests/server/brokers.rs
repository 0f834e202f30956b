//! Test support: real brokers (redis-server, nats-server) on free loopback ports, started
//! and stopped by the tests; a tiny RESP client for admin commands and raw publishes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Redis,
    Nats,
}

/// A broker process, SIGCONT'ed and killed (-9) on drop.
pub struct Broker {
    pub kind: Kind,
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    stopped: bool,
}

/// A port nobody listens on now (bound then released: good enough on loopback).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn installed(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `None` (the test returns early) when the binary is missing, unless
/// RINGCAST_REQUIRE_BROKERS=1: then a missing broker fails the test.
fn available(bin: &str) -> bool {
    if installed(bin) {
        return true;
    }
    if std::env::var("RINGCAST_REQUIRE_BROKERS").as_deref() == Ok("1") {
        panic!("{bin} is not installed and RINGCAST_REQUIRE_BROKERS=1");
    }
    eprintln!("skipped: {bin} not installed");
    false
}

impl Broker {
    pub fn redis(extra: &[&str]) -> Option<Broker> {
        Self::new(Kind::Redis, extra)
    }

    pub fn nats() -> Option<Broker> {
        Self::new(Kind::Nats, &[])
    }

    pub fn of(kind: Kind) -> Option<Broker> {
        match kind {
            Kind::Redis => Self::redis(&[]),
            Kind::Nats => Self::nats(),
        }
    }

    fn new(kind: Kind, extra: &[&str]) -> Option<Broker> {
        let bin = match kind {
            Kind::Redis => "redis-server",
            Kind::Nats => "nats-server",
        };
        if !available(bin) {
            return None;
        }
        let mut b = Broker {
            kind,
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            stopped: false,
        };
        b.spawn();
        Some(b)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c.args(&self.extra);
                c
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port]);
                c.args(&self.extra);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn broker");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the broker answers (Redis: PING → +PONG; NATS: its INFO line).
    fn wait_ready(&self) {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{:?} on port {} did not start within 10 s",
            self.kind, self.port
        );
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        match self.kind {
            Kind::Redis => {
                if s.write_all(b"PING\r\n").is_err() {
                    return false;
                }
                let _ = BufReader::new(s).read_line(&mut line);
                line.starts_with("+PONG")
            }
            Kind::Nats => {
                let _ = BufReader::new(s).read_line(&mut line);
                line.starts_with("INFO")
            }
        }
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("broker running")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} broker failed");
    }

    /// kill -9 and reap; the port is free again.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stopped = false;
    }

    /// Starts it again on the same port (after `kill9`).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGSTOP: TCP is still accepted by the kernel, nothing answers.
    pub fn stop(&mut self) {
        self.signal("-STOP");
        self.stopped = true;
    }

    pub fn cont(&mut self) {
        self.signal("-CONT");
        self.stopped = false;
    }

    /// One Redis command over a fresh connection (RESP array of bulk strings); the first
    /// reply, raw (e.g. ":1\r\n", "+OK\r\n").
    pub fn redis_cmd(&self, args: &[&str]) -> String {
        assert_eq!(self.kind, Kind::Redis, "redis_cmd on a NATS broker");
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(&resp(args)).expect("write redis");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("read redis");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Publishes raw bytes on the broker (not written by ringcast): Redis PUBLISH or NATS PUB.
    pub fn raw_publish(&self, channel: &str, payload: &[u8]) {
        match self.kind {
            Kind::Redis => {
                let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis");
                let mut cmd = format!(
                    "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
                    channel.len(),
                    payload.len()
                )
                .into_bytes();
                cmd.extend_from_slice(payload);
                cmd.extend_from_slice(b"\r\n");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                s.write_all(&cmd).expect("write redis");
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
            }
            Kind::Nats => {
                let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect nats");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut info = String::new();
                r.read_line(&mut info).expect("INFO");
                let mut w = s;
                let mut cmd = format!(
                    "CONNECT {{\"verbose\":false}}\r\nPUB {channel} {}\r\n",
                    payload.len()
                )
                .into_bytes();
                cmd.extend_from_slice(payload);
                cmd.extend_from_slice(b"\r\nPING\r\n");
                w.write_all(&cmd).expect("write nats");
                // PONG means the server has processed the PUB before it.
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) && !line.starts_with("PONG") {
                    line.clear();
                }
            }
        }
    }

    /// The channel (Redis) or subject (NATS) ringcast uses for `topic`, default prefix.
    pub fn channel(&self, topic: &str) -> String {
        match self.kind {
            Kind::Redis => format!("ringcast:t:{topic}"),
            Kind::Nats => format!("ringcast.t.{topic}"),
        }
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Continued first: a stopped broker must not outlive a failed test as a stopped
        // process holding its port.
        if let (true, Some(c)) = (self.stopped, &self.child) {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill9();
    }
}

// ---- nodes and subscribers shared by cluster.rs and cluster_faults.rs ----

use crate::util::{Client, Msg, Server};

/// A node on `b` with id `id`, plus extra flags.
pub fn node(io: &str, b: &Broker, id: &str, extra: &[&str]) -> Server {
    let url = b.url();
    let mut args = vec!["--broker", url.as_str(), "--node-id", id];
    args.extend_from_slice(extra);
    Server::start(io, &args)
}

/// The sum of a broker family's samples on `s` (all label sets; 0 when absent).
pub fn bm(s: &Server, name: &str) -> u64 {
    let text = s.get("/metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A subscriber in simple (`/ws/{topic}`) or mux (`/ws` + subscribe) mode; yields payloads.
pub struct Sub {
    pub c: Client,
    mux: bool,
    pub name: String,
}

impl Sub {
    pub fn simple(s: &Server, topic: &str, name: &str) -> Sub {
        Sub {
            c: s.ws(&format!("/ws/{topic}")),
            mux: false,
            name: name.to_owned(),
        }
    }

    pub fn mux(s: &Server, topic: &str, name: &str) -> Sub {
        let mut c = s.ws("/ws");
        c.text(&format!(
            r#"{{"type":"subscribe","topic":"{topic}","id":1}}"#
        ));
        let mut sub = Sub {
            c,
            mux: true,
            name: name.to_owned(),
        };
        // The ack comes before any message of the topic.
        match sub.c.recv_timeout(Duration::from_secs(5)) {
            Some(Msg::Text(t)) if t.contains("\"ack\"") => {}
            other => panic!("{name}: no subscribe ack: {other:?}"),
        }
        sub
    }

    /// The next payload within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<String> {
        loop {
            match self.c.recv_timeout(timeout)? {
                Msg::Text(t) if self.mux => {
                    let v: serde_json::Value = serde_json::from_str(&t).expect("mux JSON");
                    if v["type"] == "message" {
                        return Some(v["data"].as_str().unwrap_or_default().to_owned());
                    }
                }
                Msg::Text(t) => return Some(t),
                Msg::Binary(b) => return Some(String::from_utf8_lossy(&b).into_owned()),
                m => panic!("{}: connection ended: {m:?}", self.name),
            }
        }
    }
}

/// Publishes probes (`probe-{tag}-{i}`) through `publish` until every subscriber has seen
/// one: the interest has crossed the broker. Probes still in flight arrive before later
/// messages of the same publisher, and `Check` ignores them.
pub fn propagate(subs: &mut [&mut Sub], tag: &str, mut publish: impl FnMut(&str)) {
    let mut seen = vec![false; subs.len()];
    let end = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    while seen.iter().any(|s| !s) {
        assert!(
            Instant::now() < end,
            "interest did not propagate within 15 s: {seen:?}"
        );
        publish(&format!("probe-{tag}-{i}"));
        i += 1;
        for (k, s) in subs.iter_mut().enumerate() {
            while let Some(m) = s.next(Duration::from_millis(100)) {
                if m.starts_with(&format!("probe-{tag}-")) {
                    seen[k] = true;
                }
            }
        }
    }
}

/// Per-publisher sequence check: payloads `{pub}:{seq}`, `{pub}:end` the sentinel.
#[derive(Default)]
pub struct Check {
    pub last: std::collections::HashMap<String, i64>,
    pub ended: std::collections::HashSet<String>,
    pub count: usize,
}

impl Check {
    pub fn take(&mut self, who: &str, m: &str) {
        if m.starts_with("probe-") {
            return;
        }
        let (p, seq) = m
            .split_once(':')
            .unwrap_or_else(|| panic!("{who}: bad payload {m:?}"));
        if seq == "end" {
            assert!(
                self.ended.insert(p.to_owned()),
                "{who}: second sentinel from {p}"
            );
            return;
        }
        assert!(!self.ended.contains(p), "{who}: {m} after {p}'s sentinel");
        let seq: i64 = seq
            .parse()
            .unwrap_or_else(|_| panic!("{who}: bad seq {m:?}"));
        let last = self.last.entry(p.to_owned()).or_insert(-1);
        assert_eq!(
            seq,
            *last + 1,
            "{who}: from {p}: got {seq} after {last} (gap, duplicate or reorder)"
        );
        *last = seq;
        self.count += 1;
    }

    /// Reads `s` until every publisher in `pubs` has sent its sentinel (10 s).
    pub fn drain(&mut self, s: &mut Sub, pubs: &[&str]) {
        let end = Instant::now() + Duration::from_secs(10);
        while pubs.iter().any(|p| !self.ended.contains(*p)) {
            let left = end.saturating_duration_since(Instant::now());
            let m = s.next(left).unwrap_or_else(|| {
                panic!(
                    "{}: sentinels missing after 10 s; last seqs {:?}",
                    s.name, self.last
                )
            });
            self.take(&s.name, &m);
        }
    }
}

/// HTTP publish; (status, body).
pub fn http_pub(s: &Server, topic: &str, body: &str) -> (u16, String) {
    s.post(&format!("/publish/{topic}"), "text/plain", body.as_bytes())
}
