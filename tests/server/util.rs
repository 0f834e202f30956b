//! Test support: a real `ringcast` process on 127.0.0.1:0 and a blocking WebSocket client
//! built on the crate's own client role.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringcast::proto::Connection;
use ringcast::proto::conn::{Event, Limits, MaskSource, Role};
use ringcast::proto::frame::OpCode;
use ringcast::proto::handshake;

/// Declares one test per backend: `both!(name, |io| { ... })`.
#[macro_export]
macro_rules! both {
    ($name:ident, |$io:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn run($io: &str) $body
            #[test]
            fn uring() { run("uring") }
            #[test]
            fn epoll() { run("epoll") }
        }
    };
}

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub stderr_path: std::path::PathBuf,
    pub banner: String,
}

impl Server {
    pub fn start(io: &str, extra: &[&str]) -> Server {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_ringcast")), io, extra)
    }

    pub fn start_with(mut cmd: Command, io: &str, extra: &[&str]) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        // Two shards unless the test chooses (clap refuses a repeated flag).
        let shards: &[&str] = if extra.contains(&"--shards") {
            &[]
        } else {
            &["--shards", "2"]
        };
        // No drain grace unless the test asks: tests that stop a server want it gone now.
        let grace: &[&str] = if extra.contains(&"--drain-grace") {
            &[]
        } else {
            &["--drain-grace", "0s"]
        };
        let mut child = cmd
            .args([
                "--listen",
                "127.0.0.1:0",
                "--io",
                io,
                "--log-level",
                "debug",
            ])
            .args(shards)
            .args(grace)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ringcast");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("start-up line");
        let addr = line
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.trim_end_matches(',').parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no address in start-up line {line:?}; stderr: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            });
        Server {
            child,
            addr,
            stderr_path,
            banner: line,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn ws(&self, path: &str) -> Client {
        Client::connect(self.addr, path).unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    /// A raw TCP connection with a read timeout.
    pub fn raw(&self) -> TcpStream {
        raw_at(self.addr)
    }

    /// Sends raw bytes, returns everything the server sends until it closes (or 5 s).
    /// The sending side is shut after the bytes: a keep-alive answer then ends with the
    /// connection, as the server closes an HTTP connection at EOF once it has answered.
    pub fn exchange(&self, bytes: &[u8]) -> Vec<u8> {
        exchange_at(self.addr, bytes)
    }

    /// `GET path` and the whole response.
    pub fn get(&self, path: &str) -> String {
        get_at(self.addr, path)
    }

    /// `POST path` with a body and a Content-Type; returns (status, body).
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        post_at(self.addr, path, content_type, body)
    }

    /// Sends a raw request; returns (status, body).
    pub fn request(&self, raw: &[u8]) -> (u16, String) {
        split_response(&self.exchange(raw))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of `/proc/PID/status`, in bytes.
    fn status_bytes(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{field} missing in /proc/PID/status"))
            * 1024
    }

    /// The server's resident memory now, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS")
    }

    /// The server's peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        self.status_bytes("VmHWM")
    }

    /// Descriptors the server process has open now (`/proc/PID/fd`): listeners, rings,
    /// eventfds and one per connection whose socket is not closed yet.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    /// Polls (without connecting, so the check adds no descriptor) until the server has
    /// at most `n` descriptors open or `timeout` passes; the last count.
    pub fn wait_for_fds(&self, n: usize, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        loop {
            let now = self.open_fds();
            if now <= n || Instant::now() >= end {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time the server has used so far (user + system, all threads).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // USER_HZ is 100 on every Linux ABI this server runs on.
        Duration::from_millis(ticks * 10)
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A WebSocket client sending extra request headers (e.g. Origin).
    pub fn ws_with(&self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Client> {
        Client::connect_with(self.addr, path, headers)
    }

    /// The value of an unlabelled metric (or a labelled one given in full).
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
    }

    /// Open connections other than the one asking (the `/metrics` request counts itself).
    pub fn open_connections(&self) -> u64 {
        self.metric("ringcast_connections").saturating_sub(1)
    }

    /// Polls until `f` holds or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, mut f: impl FnMut(&Server) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f(self)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw TCP connection to `addr` with a read timeout.
pub fn raw_at(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// [`Server::exchange`] with a server at `addr` (in-process servers too).
pub fn exchange_at(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = raw_at(addr);
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    read_to_close(&mut s)
}

/// [`Server::get`] at `addr`.
pub fn get_at(addr: SocketAddr, path: &str) -> String {
    String::from_utf8_lossy(&exchange_at(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    ))
    .into_owned()
}

/// [`Server::post`] at `addr`.
pub fn post_at(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    split_response(&exchange_at(addr, &req))
}

/// A client on `path` of the in-process `server` whose connection is on `shard`.
/// Connections that land on another shard are closed (SO_REUSEPORT spreads by the source
/// port, so a few tries suffice).
pub fn on_shard(server: &ringcast::server::Server, shard: usize, path: &str) -> Client {
    let upgrades = || -> Vec<u64> {
        server
            .shared
            .metrics
            .iter()
            .map(|m| m.upgrades.get())
            .collect()
    };
    for _ in 0..400 {
        let before = upgrades();
        let c = Client::connect(server.addrs[0], path).expect("connect");
        let after = upgrades();
        let landed: Vec<usize> = (0..after.len())
            .filter(|&i| after[i] != before[i])
            .collect();
        if landed == [shard] {
            return c;
        }
    }
    panic!("no connection landed on shard {shard} in 400 tries");
}

/// Status code and body of an HTTP response.
pub fn split_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// What a client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>, String),
    /// The TCP stream ended (or failed).
    Eof,
}

/// The test client's masking keys: the OS generator (RFC 6455 §5.3 asks for a strong
/// source; the protocol core has none of its own), 64 keys per `getrandom` call.
pub struct OsMasks {
    buf: [u8; 256],
    /// Next unused byte of `buf`; `buf.len()` when it is used up.
    at: usize,
}

impl OsMasks {
    pub fn new() -> Self {
        OsMasks {
            buf: [0; 256],
            at: 256,
        }
    }
}

impl MaskSource for OsMasks {
    fn next_key(&mut self) -> [u8; 4] {
        if self.at == self.buf.len() {
            getrandom::fill(&mut self.buf).expect("the OS random generator");
            self.at = 0;
        }
        let mut key = [0; 4];
        key.copy_from_slice(&self.buf[self.at..self.at + 4]);
        self.at += 4;
        key
    }
}

/// A Sec-WebSocket-Key nonce from the OS generator.
pub fn nonce() -> [u8; 16] {
    let mut n = [0; 16];
    getrandom::fill(&mut n).expect("the OS random generator");
    n
}

/// A blocking WebSocket client over std, on ringcast's own client role.
pub struct Client {
    pub stream: TcpStream,
    ws: Connection<OsMasks>,
    out: BytesMut,
    inbox: VecDeque<Msg>,
    leftover: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> std::io::Result<Client> {
        Self::connect_with(addr, path, &[])
    }

    pub fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Client> {
        // In-process servers (tests that start `ringcast::server::Server` on their own
        // thread) probe io_uring from the test thread, whose blocking calls can then see
        // EINTR from the ring's task work: retried, as for any interrupted call.
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let key = handshake::generate_key(nonce());
        let mut req = Vec::new();
        handshake::write_client_request(&addr.to_string(), path, &key, headers, &mut req);
        stream.write_all(&req)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head = loop {
            let n = match stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    String::from_utf8_lossy(&buf).into_owned(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            match handshake::parse_response(&buf, &key) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "{e}: {}",
                        String::from_utf8_lossy(&buf)
                    )));
                }
            }
        };
        let limits = Limits {
            max_frame_size: 1 << 30,
            max_message_size: 1 << 30,
        };
        Ok(Client {
            stream,
            ws: Connection::with_role(Role::Client(OsMasks::new()), limits),
            out: BytesMut::new(),
            inbox: VecDeque::new(),
            leftover: buf.split_off(head),
        })
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            let _ = self.stream.write_all(&self.out);
            self.out.clear();
        }
    }

    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        self.ws
            .send(opcode, payload, &mut self.out)
            .expect("send on an open connection");
        self.flush();
    }

    pub fn text(&mut self, s: &str) {
        self.send(OpCode::Text, s.as_bytes());
    }

    pub fn close(&mut self, code: u16) {
        self.ws.close(code, "", &mut self.out);
        self.flush();
    }

    fn feed(&mut self, data: &mut [u8]) {
        let mut input = data;
        while !input.is_empty() {
            let (consumed, msg) = match self.ws.feed(input, &mut self.out) {
                Ok(p) => (
                    p.consumed,
                    match p.event {
                        Some(Event::Message {
                            opcode: OpCode::Text,
                            payload,
                        }) => Some(Msg::Text(String::from_utf8_lossy(payload).into_owned())),
                        Some(Event::Message { payload, .. }) => Some(Msg::Binary(payload.to_vec())),
                        Some(Event::Close { code, reason }) => {
                            Some(Msg::Close(code, reason.to_owned()))
                        }
                        _ => None,
                    },
                ),
                Err(e) => panic!("server sent something invalid: {e}"),
            };
            self.inbox.extend(msg);
            let rest = std::mem::take(&mut input);
            input = &mut rest[consumed..];
        }
        self.flush();
    }

    /// The next message within `timeout`, or `None`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Msg> {
        if !self.leftover.is_empty() {
            let mut l = std::mem::take(&mut self.leftover);
            self.feed(&mut l);
        }
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while self.inbox.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(Msg::Eof),
                Ok(n) => self.feed(&mut buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(_) => return Some(Msg::Eof),
            }
        }
        self.inbox.pop_front()
    }

    pub fn recv(&mut self) -> Msg {
        self.recv_timeout(Duration::from_secs(5))
            .expect("a message within 5 s")
    }

    /// Reads until the close frame (or EOF); returns its code.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_timeout(Duration::from_secs(5)) {
                Some(Msg::Close(code, _)) => return code,
                Some(Msg::Eof) | None => return None,
                Some(_) => {}
            }
        }
    }
}

/// A server started in this process (its bus and metrics reachable), on `127.0.0.1:0`, with
/// `shards` shards on backend `io` ("uring" or "epoll"), unpinned.
pub fn in_process(io: &str, shards: usize) -> ringcast::server::Server {
    in_process_with(io, shards, ringcast::config::Config::default())
}

/// [`in_process`] from a configuration (its listen address, shards, backend and pinning
/// are replaced).
pub fn in_process_with(
    io: &str,
    shards: usize,
    base: ringcast::config::Config,
) -> ringcast::server::Server {
    let cfg = ringcast::config::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards,
        io: if io == "uring" {
            ringcast::config::IoBackend::Uring
        } else {
            ringcast::config::IoBackend::Epoll
        },
        pin_cores: false,
        ..base
    };
    ringcast::server::Server::start(&cfg).expect("server starts")
}
