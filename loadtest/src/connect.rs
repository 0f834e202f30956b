//! Opening connections: non-blocking connects (bind-before-connect over
//! several 127.0.0.x source addresses when one runs out of ports), the
//! WebSocket upgrade through `ringcast::proto::handshake`, a connect rate and
//! a cap on handshakes in flight, with per-connection latency and failure
//! reasons. Driven by one mio poll on the calling thread; each finished
//! connection is handed to a callback as a non-blocking std socket together
//! with any bytes that followed the 101 response. With [`ConnectOpts::tokens`]
//! each upgrade request carries its connection's JWT (header, subprotocol or
//! query; see [`crate::token`]).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use ringcast::proto::handshake::{generate_key, parse_response, write_client_request};

use crate::stats::new_hist;
use crate::target::{Scheme, Target};
use crate::token::{TokenIn, Tokens, check_chosen_subprotocol};

/// How to open connections.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// New connections per second (0 = unlimited).
    pub rate: u32,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Per-connection deadline.
    pub timeout: Duration,
    /// Explicit source addresses (round-robin); empty = automatic.
    pub sources: Vec<Ipv4Addr>,
    /// Overall deadline for the whole batch.
    pub deadline: Option<Instant>,
    /// A JWT per connection index (minted beforehand), or none.
    pub tokens: Option<Arc<Tokens>>,
}

/// One connection ready for use.
#[derive(Debug)]
pub struct Established {
    /// Index of the connection in the batch.
    pub idx: usize,
    /// Connected (and upgraded, for ws://) non-blocking socket.
    pub stream: TcpStream,
    /// Bytes received after the 101 head.
    pub leftover: Vec<u8>,
    /// Connect start to upgrade done.
    pub latency_ns: u64,
}

/// Totals for a batch of connections.
#[derive(Debug)]
pub struct ConnectStats {
    /// Established.
    pub ok: u64,
    /// Failed (each with a reason below).
    pub failed: u64,
    /// Failure reason -> count.
    pub reasons: BTreeMap<String, u64>,
    /// Connect latency (ns).
    pub latency: Histogram<u64>,
    /// Wall time of the batch.
    pub elapsed: Duration,
    /// Source addresses used (after automatic spreading).
    pub sources_used: Vec<Ipv4Addr>,
}

impl ConnectStats {
    fn new() -> Self {
        ConnectStats {
            ok: 0,
            failed: 0,
            reasons: BTreeMap::new(),
            latency: new_hist(),
            elapsed: Duration::ZERO,
            sources_used: Vec::new(),
        }
    }

    fn fail(&mut self, reason: String) {
        self.failed += 1;
        *self.reasons.entry(reason).or_insert(0) += 1;
    }

    /// The most frequent failure reason, for error messages.
    pub fn top_reason(&self) -> Option<&str> {
        self.reasons
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(r, _)| r.as_str())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Connecting,
    Writing,
    Reading,
}

#[derive(Debug)]
struct Pending {
    idx: usize,
    stream: TcpStream,
    step: Step,
    key: String,
    out: Vec<u8>,
    written: usize,
    inbuf: Vec<u8>,
    started: Instant,
    /// The token went in `Sec-WebSocket-Protocol`: the 101 must choose `ringcast.v1`.
    want_protocol: bool,
}

/// Connections per automatically added source address: the kernel's search
/// for a free ephemeral port gets slow long before the ~28k ports of one
/// address run out (measured here: 19,000 connections from 127.0.0.1 alone
/// opened at 1.7k/s, spread over four addresses at 11k/s).
pub const AUTO_SOURCE_SPREAD: usize = 5000;

/// Picks source addresses round-robin. Explicit (`--sources`), or automatic
/// for loopback IPv4 targets: no bind for small batches, 127.0.0.1..=k for
/// more than `AUTO_SOURCE_SPREAD` connections, and the next address whenever
/// one runs out of ports (EADDRNOTAVAIL).
#[derive(Debug)]
struct Sources {
    list: Vec<Ipv4Addr>,
    next: usize,
    auto: bool,
    used: Vec<Ipv4Addr>,
}

impl Sources {
    fn new(explicit: &[Ipv4Addr], auto_allowed: bool, n: usize) -> Sources {
        let list: Vec<Ipv4Addr> = if !explicit.is_empty() {
            explicit.to_vec()
        } else if auto_allowed && n > AUTO_SOURCE_SPREAD {
            let k = n.div_ceil(AUTO_SOURCE_SPREAD).min(250) as u8;
            (1..=k).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
        } else {
            Vec::new()
        };
        Sources {
            used: list.clone(),
            list,
            next: 0,
            auto: explicit.is_empty() && auto_allowed,
        }
    }

    fn pick(&mut self) -> Option<Ipv4Addr> {
        if self.list.is_empty() {
            return None;
        }
        let s = self.list[self.next % self.list.len()];
        self.next += 1;
        Some(s)
    }

    /// `src` ran out of ports; Err when there is no other address to take.
    fn exhausted(&mut self, src: Option<Ipv4Addr>) -> Result<(), ()> {
        let highest = self
            .used
            .iter()
            .copied()
            .max()
            .unwrap_or(Ipv4Addr::new(127, 0, 0, 1));
        self.list.retain(|&s| Some(s) != src);
        if self.auto {
            let cur = u32::from(highest);
            if cur & 0xff < 254 {
                let next = Ipv4Addr::from(cur + 1);
                self.list.push(next);
                self.used.push(next);
            }
        }
        if self.list.is_empty() {
            Err(())
        } else {
            Ok(())
        }
    }
}

/// Opens `n` connections to `target` (path for connection i from `path_for`),
/// calling `on_ok` for each one established. Returns the totals.
pub fn connect_many(
    target: &Target,
    n: usize,
    path_for: &dyn Fn(usize) -> String,
    opts: &ConnectOpts,
    on_ok: &mut dyn FnMut(Established),
    mut progress: Option<&mut dyn FnMut(&ConnectStats)>,
) -> io::Result<ConnectStats> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Pending>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut stats = ConnectStats::new();
    let auto_allowed = matches!(target.addr.ip(), IpAddr::V4(v4) if v4.is_loopback());
    let mut sources = Sources::new(&opts.sources, auto_allowed, n);
    let start = Instant::now();
    let mut launched = 0usize;
    let mut in_flight = 0usize;
    let concurrency = opts.concurrency.max(1);
    let mut last_progress = Instant::now();
    while launched < n || in_flight > 0 {
        let now = Instant::now();
        if opts.deadline.is_some_and(|d| now >= d) {
            for p in slots.iter_mut().filter_map(Option::take) {
                drop(p);
                stats.fail("overall connect deadline".into());
            }
            stats.fail_many(n - launched, "overall connect deadline");
            break;
        }
        // Launch as many as the rate and the concurrency allow.
        let allowed = if opts.rate == 0 {
            n
        } else {
            ((now - start).as_secs_f64() * f64::from(opts.rate)) as usize + 1
        };
        while launched < n && launched < allowed && in_flight < concurrency {
            let idx = launched;
            launched += 1;
            let src = sources.pick();
            match crate::sys::start_connect(src, target.addr) {
                Ok(stream) => {
                    let mut out = Vec::with_capacity(256);
                    // The nonce only shows the server speaks WebSocket (RFC 6455 §4.1); it
                    // guards nothing, so the load generator's cheap generator is enough.
                    let key = generate_key(fastrand::u128(..).to_ne_bytes());
                    let want_protocol = target.scheme == Scheme::Ws
                        && opts
                            .tokens
                            .as_ref()
                            .is_some_and(|t| t.placement() == TokenIn::Subprotocol);
                    if target.scheme == Scheme::Ws {
                        let (path, header) = match &opts.tokens {
                            Some(t) => t.ws_parts(idx, &path_for(idx)),
                            None => (path_for(idx), None),
                        };
                        let extra: Vec<(&str, &str)> =
                            header.iter().map(|(n, v)| (*n, v.as_str())).collect();
                        write_client_request(&target.host_header, &path, &key, &extra, &mut out);
                    }
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    let fd = stream.as_raw_fd();
                    poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    slots[slot] = Some(Pending {
                        idx,
                        stream,
                        step: Step::Connecting,
                        key,
                        out,
                        written: 0,
                        inbuf: Vec::new(),
                        started: now,
                        want_protocol,
                    });
                    in_flight += 1;
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                    if sources.exhausted(src).is_ok() {
                        launched -= 1; // retry this index from the next source
                    } else {
                        stats.fail(format!("connect: {e} (out of source addresses/ports)"));
                    }
                }
                Err(e) => stats.fail(format!("connect: {e}")),
            }
        }
        let wait = if launched < n && in_flight < concurrency && opts.rate > 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let slot = ev.token().0;
            let Some(p) = slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            match advance(p, target.scheme) {
                Ok(None) => {}
                Ok(Some(head_len)) => {
                    let Some(p) = slots[slot].take() else {
                        continue;
                    };
                    free.push(slot);
                    in_flight -= 1;
                    let fd = p.stream.as_raw_fd();
                    let _ = poll.registry().deregister(&mut SourceFd(&fd));
                    let latency_ns = p.started.elapsed().as_nanos() as u64;
                    stats.ok += 1;
                    stats.latency.saturating_record(latency_ns.max(1));
                    on_ok(Established {
                        idx: p.idx,
                        stream: p.stream,
                        leftover: p.inbuf[head_len..].to_vec(),
                        latency_ns,
                    });
                }
                Err(reason) => {
                    let Some(p) = slots[slot].take() else {
                        continue;
                    };
                    if reason.contains("Cannot assign requested address") {
                        // Port exhaustion shows up at connect completion on some kernels.
                        let _ = sources.exhausted(None);
                    }
                    let fd = p.stream.as_raw_fd();
                    let _ = poll.registry().deregister(&mut SourceFd(&fd));
                    free.push(slot);
                    in_flight -= 1;
                    stats.fail(reason);
                }
            }
        }
        // Per-connection timeouts.
        let now = Instant::now();
        for (slot, entry) in slots.iter_mut().enumerate() {
            if entry
                .as_ref()
                .is_none_or(|p| now - p.started <= opts.timeout)
            {
                continue;
            }
            if let Some(p) = entry.take() {
                let fd = p.stream.as_raw_fd();
                let _ = poll.registry().deregister(&mut SourceFd(&fd));
                let what = match p.step {
                    Step::Connecting => "connect",
                    Step::Writing | Step::Reading => "handshake",
                };
                stats.fail(format!("{what} timed out after {:?}", opts.timeout));
                free.push(slot);
                in_flight -= 1;
            }
        }
        if let Some(cb) = progress.as_mut()
            && last_progress.elapsed() >= Duration::from_secs(1)
        {
            last_progress = Instant::now();
            stats.elapsed = start.elapsed();
            cb(&stats);
        }
    }
    stats.elapsed = start.elapsed();
    stats.sources_used = sources.used;
    Ok(stats)
}

impl ConnectStats {
    fn fail_many(&mut self, n: usize, reason: &str) {
        if n > 0 {
            self.failed += n as u64;
            *self.reasons.entry(reason.to_string()).or_insert(0) += n as u64;
        }
    }
}

/// Moves one pending connection on; Ok(Some(head_len)) when ready.
fn advance(p: &mut Pending, scheme: Scheme) -> Result<Option<usize>, String> {
    if p.step == Step::Connecting {
        match p.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Err(format!("connect: {e}")),
        }
        match p.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
            Err(e) => return Err(format!("connect: {e}")),
        }
        let _ = p.stream.set_nodelay(true);
        if scheme == Scheme::Http {
            return Ok(Some(0));
        }
        p.step = Step::Writing;
    }
    if p.step == Step::Writing {
        while p.written < p.out.len() {
            match (&p.stream).write(&p.out[p.written..]) {
                Ok(0) => return Err("handshake: connection closed while writing".into()),
                Ok(k) => p.written += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("handshake: {e}")),
            }
        }
        p.step = Step::Reading;
    }
    let mut chunk = [0u8; 4096];
    loop {
        match (&p.stream).read(&mut chunk) {
            Ok(0) => return Err("handshake: server closed the connection".into()),
            Ok(k) => {
                p.inbuf.extend_from_slice(&chunk[..k]);
                match parse_response(&p.inbuf, &p.key) {
                    Ok(Some(head)) => {
                        if p.want_protocol {
                            check_chosen_subprotocol(&p.inbuf[..head])?;
                        }
                        return Ok(Some(head));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("handshake refused: {} ({e:?})", e.status())),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("handshake: {e}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_automatically() {
        let ip = |i| Ipv4Addr::new(127, 0, 0, i);
        // Small batches: no bind until 127.0.0.1 runs out.
        let mut s = Sources::new(&[], true, 100);
        assert_eq!(s.pick(), None);
        s.exhausted(None).unwrap();
        assert_eq!(s.pick(), Some(ip(2)));
        s.exhausted(Some(ip(2))).unwrap();
        assert_eq!(s.pick(), Some(ip(3)));
        // Large batches start spread.
        let mut s = Sources::new(&[], true, 12_000);
        assert_eq!(
            [s.pick(), s.pick(), s.pick(), s.pick()],
            [Some(ip(1)), Some(ip(2)), Some(ip(3)), Some(ip(1))]
        );
        s.exhausted(Some(ip(2))).unwrap();
        assert_eq!(s.list, vec![ip(1), ip(3), ip(4)]);
        // Not loopback: never.
        let mut s = Sources::new(&[], false, 100_000);
        assert_eq!(s.pick(), None);
        assert!(s.exhausted(None).is_err());
    }

    /// A one-shot upgrade server: reads each request head, hands it to `check`,
    /// and answers 101 (with `protocol` chosen, if any). Stops after `n` connections.
    fn upgrade_server(
        n: usize,
        protocol: Option<&'static str>,
    ) -> (Target, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for _ in 0..n {
                let Ok((mut s, _)) = l.accept() else { break };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let accept = ringcast::proto::handshake::accept_key(key.as_bytes());
                let proto = protocol.map_or(String::new(), |p| {
                    format!("Sec-WebSocket-Protocol: {p}\r\n")
                });
                let _ = s.write_all(
                    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{proto}\r\n").as_bytes(),
                );
                heads.push(head);
            }
            heads
        });
        let t = Target::parse(&format!("ws://{addr}/ws/t0?echo=1"), false).unwrap();
        (t, h)
    }

    fn connect_with(t: &Target, n: usize, tokens: Tokens) -> ConnectStats {
        let opts = ConnectOpts {
            rate: 0,
            concurrency: 4,
            timeout: Duration::from_secs(5),
            sources: vec![],
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            tokens: Some(Arc::new(tokens)),
        };
        let mut kept = Vec::new();
        let stats =
            connect_many(t, n, &|_| t.path_for(0), &opts, &mut |e| kept.push(e), None).unwrap();
        drop(kept);
        stats
    }

    #[test]
    fn tokens_ride_in_the_upgrade_request() {
        let toks = || {
            vec![
                "h.p.s0".to_string(),
                "h.p.s1".to_string(),
                "h.p.s2".to_string(),
            ]
        };
        // Header: each connection its own token.
        let (t, h) = upgrade_server(3, None);
        let st = connect_with(&t, 3, Tokens::new(toks(), TokenIn::Header));
        assert_eq!((st.ok, st.failed), (3, 0), "{:?}", st.reasons);
        let heads = h.join().unwrap();
        let mut seen: Vec<&str> = heads
            .iter()
            .map(|h| {
                h.lines()
                    .find_map(|l| l.strip_prefix("Authorization: Bearer "))
                    .unwrap()
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, ["h.p.s0", "h.p.s1", "h.p.s2"]);
        // Query: appended with & to the existing query.
        let (t, h) = upgrade_server(1, None);
        let st = connect_with(&t, 1, Tokens::new(toks(), TokenIn::Query));
        assert_eq!(st.ok, 1);
        assert!(h.join().unwrap()[0].starts_with("GET /ws/t0?echo=1&token=h.p.s0 HTTP/1.1"));
        // Subprotocol: offered, and the 101 must choose ringcast.v1.
        let (t, h) = upgrade_server(1, Some("ringcast.v1"));
        let st = connect_with(&t, 1, Tokens::new(toks(), TokenIn::Subprotocol));
        assert_eq!(st.ok, 1, "{:?}", st.reasons);
        assert!(
            h.join().unwrap()[0]
                .contains("Sec-WebSocket-Protocol: ringcast.v1, ringcast.token.h.p.s0\r\n")
        );
        // A 101 without the subprotocol is a failed connection, and the reason hides the token.
        for chosen in [None, Some("ringcast.token.h.p.s0")] {
            let (t, h) = upgrade_server(1, chosen);
            let st = connect_with(&t, 1, Tokens::new(toks(), TokenIn::Subprotocol));
            assert_eq!((st.ok, st.failed), (0, 1));
            let reason = st.top_reason().unwrap();
            assert!(
                reason.contains("ringcast.v1") && !reason.contains("h.p.s0"),
                "{reason}"
            );
            h.join().unwrap();
        }
    }

    #[test]
    fn explicit_sources_round_robin() {
        let a = Ipv4Addr::new(127, 0, 0, 1);
        let b = Ipv4Addr::new(127, 0, 0, 5);
        let mut s = Sources::new(&[a, b], true, 10);
        assert_eq!([s.pick(), s.pick(), s.pick()], [Some(a), Some(b), Some(a)]);
        s.exhausted(Some(a)).unwrap();
        assert_eq!(s.pick(), Some(b));
        assert!(s.exhausted(Some(b)).is_err());
    }
}
