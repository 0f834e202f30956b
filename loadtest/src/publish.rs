//! The publisher thread: all publisher connections on one mio poll, paced to
//! a fixed total rate (`--rate`) or closed-loop (`--in-flight`, driven by the
//! acks of each topic's probe subscriber), over WebSocket (masked frames, a
//! fresh random mask per frame) or HTTP POST (pipelined where the server keeps the
//! connection, a new connection whenever it closes one: see [`crate::http_link`]).
//! Publisher connections also receive (peers broadcast to every other client,
//! ringcast to every other subscriber of the topic): that input is drained and
//! scanned for ping and close, never checked.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use ringcast::proto::close::close_code;
use ringcast::proto::frame::{OpCode, encode_close, encode_frame};

use crate::checker::{CheckCtx, Checker};
use crate::http_link::HttpLink;
use crate::payload::{Stamp, fill_template, write_stamp};
use crate::rx::RxConn;
use crate::stats::new_hist;
use crate::sys::{now_ns, thread_cpu_ns};
use crate::worker::{CLOSE, RunShared, STOP};

/// Token of the ack waker.
pub const WAKE: Token = Token(usize::MAX - 1);
/// A publisher stops producing while this much is queued unsent.
const OUT_LIMIT: usize = 1 << 20;
/// Most HTTP requests in flight per connection, and most waiting per publisher in rate mode.
const HTTP_PIPELINE: u64 = 256;
/// After a failed reconnect, the next attempt waits this long.
const REDIAL_NS: u64 = 20_000_000;

/// How publishers publish.
#[derive(Clone, Debug)]
pub enum PubKind {
    /// WebSocket frames.
    Ws,
    /// HTTP POST with this request head prefix per publisher (built by the caller).
    Http,
}

/// Settings of the publisher thread.
#[derive(Clone, Debug)]
pub struct PubConfig {
    /// Total messages/s (rate mode).
    pub rate: Option<f64>,
    /// Messages in flight per publisher (closed loop).
    pub in_flight: Option<u32>,
    /// Message size.
    pub size: usize,
    /// Binary frames.
    pub binary: bool,
    /// WebSocket or HTTP.
    pub kind: PubKind,
    /// HTTP: where a connection the server ended is opened again.
    pub redial: Option<Redial>,
}

/// Where and how an HTTP publisher reconnects.
#[derive(Clone, Copy, Debug)]
pub struct Redial {
    /// The server.
    pub addr: SocketAddr,
}

/// One publisher connection.
#[derive(Debug)]
pub struct PubConn {
    /// Publisher index (its id in payloads).
    pub id: usize,
    /// Connected non-blocking socket.
    pub stream: TcpStream,
    /// Bytes after the 101 head (WebSocket).
    pub leftover: Vec<u8>,
    /// HTTP: the request head (`POST path HTTP/1.1 ... Content-Length: n\r\n\r\n`).
    pub http_head: Vec<u8>,
}

/// Counters the publisher thread exposes.
#[derive(Debug)]
pub struct PubStats {
    /// Messages handed to the socket per publisher (the next sequence number).
    pub published: Vec<AtomicU64>,
    /// Total of `published`.
    pub total: AtomicU64,
    /// Messages due by the rate that were not produced (publisher backlog full).
    pub skipped: AtomicU64,
    /// Non-2xx HTTP responses, HTTP requests that failed, write errors, server closes.
    pub errors: AtomicU64,
    /// HTTP responses received.
    pub http_responses: AtomicU64,
    /// HTTP requests written whole on a connection that ended without answering them
    /// (perhaps published, never sent twice; also in `errors`), or unanswered at the end.
    pub http_failed: AtomicU64,
    /// HTTP requests sent again on a new connection (the server had not processed them).
    pub http_retried: AtomicU64,
    /// HTTP connections opened again (connects started) after the server ended one.
    pub http_reconnects: AtomicU64,
    /// Thread CPU time (ns).
    pub cpu_ns: AtomicU64,
    /// Kernel thread id.
    pub tid: AtomicU64,
    /// Publishing stops when set.
    pub stop: AtomicBool,
    /// Set once stopped with nothing queued and no HTTP response outstanding.
    pub flushed: AtomicBool,
}

impl PubStats {
    /// Counters for `n` publishers.
    pub fn new(n: usize) -> Self {
        PubStats {
            published: (0..n).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            http_responses: AtomicU64::new(0),
            http_failed: AtomicU64::new(0),
            http_retried: AtomicU64::new(0),
            http_reconnects: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            tid: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            flushed: AtomicBool::new(false),
        }
    }
}

#[derive(Debug)]
struct Publisher {
    id: usize,
    /// None: an HTTP publisher between connections.
    stream: Option<TcpStream>,
    /// Queued bytes not yet written (BytesMut: the protocol core masks into it in place).
    out: BytesMut,
    seq: u64,
    rx: RxConn,
    inbuf: Vec<u8>,
    http_head: Vec<u8>,
    /// HTTP: the requests and the connection's state.
    http: Option<HttpLink>,
    /// HTTP: the source address connections are opened from (the first one's).
    source: Option<Ipv4Addr>,
    /// HTTP: no reconnect before this time.
    redial_at: u64,
    dead: bool,
    close_sent: bool,
}

impl Publisher {
    fn queued(&self) -> usize {
        self.out.len()
    }

    /// Messages produced and not answered (HTTP), 0 for WebSocket.
    fn outstanding(&self) -> u64 {
        self.http.as_ref().map_or(0, HttpLink::pending)
    }
}

/// Runs the publisher thread until STOP (or CLOSE plus all closed).
pub fn run(
    cfg: PubConfig,
    conns: Vec<PubConn>,
    mut poll: Poll,
    shared: Arc<RunShared>,
    stats: Arc<PubStats>,
) -> io::Result<()> {
    stats.tid.store(crate::sys::gettid(), Ordering::Relaxed);
    let mut events = Events::with_capacity(1024);
    let mut pubs: Vec<Publisher> = Vec::with_capacity(conns.len());
    let is_ws = matches!(cfg.kind, PubKind::Ws);
    for (i, c) in conns.into_iter().enumerate() {
        let fd = c.stream.as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&fd),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let source = match c.stream.local_addr() {
            Ok(SocketAddr::V4(a)) => Some(*a.ip()),
            _ => None,
        };
        pubs.push(Publisher {
            id: c.id,
            stream: Some(c.stream),
            out: BytesMut::with_capacity(64 * 1024),
            seq: 0,
            rx: RxConn::new(Checker::disabled()),
            inbuf: c.leftover,
            http_head: c.http_head,
            http: (!is_ws).then(HttpLink::new),
            source,
            redial_at: 0,
            dead: false,
            close_sent: false,
        });
    }
    let n = pubs.len().max(1);
    let mut msg = vec![0u8; cfg.size];
    fill_template(&mut msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let opcode = if cfg.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    let mut scratch = vec![0u8; 64 * 1024];
    let mut dummy_hist: Histogram<u64> = new_hist();
    let mut ctrl = BytesMut::new();
    let start = now_ns();
    let mut generated: u64 = 0;
    let mut cursor = 0usize;
    let mut last_cpu = start;
    // Leftover bytes after the handshake (WebSocket): scan them like later input.
    for p in pubs.iter_mut() {
        let data = std::mem::take(&mut p.inbuf);
        if is_ws {
            handle_ws_input(p, &data, &mut dummy_hist, &mut ctrl, &stats);
        } else {
            p.inbuf = data;
        }
    }
    loop {
        let phase = shared.phase();
        if phase >= STOP {
            break;
        }
        let now = now_ns();
        let stopping = stats.stop.load(Ordering::Relaxed) || phase >= CLOSE;
        if !stopping {
            // Produce what is due.
            if let Some(rate) = cfg.rate {
                let due = (now.saturating_sub(start) as f64 * rate / 1e9) as u64 + 1;
                let mut todo = due.saturating_sub(generated);
                // After a stall, do not burst more than 100 ms worth.
                let cap = ((rate / 10.0) as u64).max(1);
                if todo > cap {
                    stats.skipped.fetch_add(todo - cap, Ordering::Relaxed);
                    generated += todo - cap;
                    todo = cap;
                }
                for _ in 0..todo {
                    let p = &mut pubs[cursor % n];
                    cursor = cursor.wrapping_add(1);
                    generated += 1;
                    let http_full = p.outstanding() >= HTTP_PIPELINE;
                    if p.dead || p.queued() >= OUT_LIMIT || http_full {
                        stats.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    produce(p, &mut msg, opcode, is_ws, now, &stats);
                }
            } else if let Some(k) = cfg.in_flight {
                for p in pubs.iter_mut() {
                    if p.dead {
                        continue;
                    }
                    let acked = shared
                        .acks
                        .get(p.id)
                        .map_or(0, |a| a.load(Ordering::Relaxed));
                    let mut room = u64::from(k).saturating_sub(p.seq.saturating_sub(acked));
                    while room > 0 && p.queued() < OUT_LIMIT {
                        produce(p, &mut msg, opcode, is_ws, now, &stats);
                        room -= 1;
                    }
                }
            }
        } else if is_ws {
            for p in pubs.iter_mut().filter(|p| !p.close_sent && !p.dead) {
                p.close_sent = true;
                encode_close(
                    &mut p.out,
                    Some(fastrand::u32(..).to_ne_bytes()),
                    close_code::NORMAL,
                    "",
                );
            }
        }
        // Write what is queued (HTTP: what the connection may carry now; a publisher
        // between connections, whose reconnect failed, tries again).
        for (i, p) in pubs.iter_mut().enumerate() {
            if !is_ws {
                if p.stream.is_none() && !p.dead && now >= p.redial_at {
                    redial(p, i, &poll, cfg.redial, now, &stats);
                }
                http_fill(p, &mut msg);
            }
            if flush(p, &stats).is_err() {
                http_lost(p, i, &poll, cfg.redial, stopping, &stats);
            }
        }
        if stopping
            && pubs
                .iter()
                .all(|p| p.dead || (p.queued() == 0 && p.outstanding() == 0))
        {
            stats.flushed.store(true, Ordering::Relaxed);
        }
        // Done when every publisher is flushed and finished: WebSocket ones got the
        // server's close reply, HTTP ones every response (closing earlier could make
        // the server drop pipelined requests it has not handled yet).
        let finished = |p: &Publisher| {
            p.dead
                || (p.queued() == 0
                    && if is_ws {
                        p.rx.close_received.is_some()
                    } else {
                        p.outstanding() == 0
                    })
        };
        if stopping && pubs.iter().all(finished) {
            break;
        }
        let timeout = match (cfg.rate, stopping) {
            (_, true) => Duration::from_millis(5),
            (Some(r), false) if r >= 1000.0 => Duration::from_millis(1),
            (Some(r), false) => Duration::from_secs_f64((1.0 / r).min(0.01)),
            (None, false) => Duration::from_millis(5),
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            if ev.token() == WAKE || i >= pubs.len() {
                continue;
            }
            let p = &mut pubs[i];
            if !is_ws {
                if !http_event(p, &stats) {
                    http_lost(p, i, &poll, cfg.redial, stopping, &stats);
                }
                continue;
            }
            if !ev.is_readable() {
                continue;
            }
            while let Some(s) = p.stream.as_ref() {
                match (&*s).read(&mut scratch) {
                    Ok(0) => {
                        p.dead = true;
                        break;
                    }
                    Ok(k) => {
                        handle_ws_input(p, &scratch[..k], &mut dummy_hist, &mut ctrl, &stats);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        p.dead = true;
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        if now.saturating_sub(last_cpu) >= 250_000_000 {
            stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            last_cpu = now;
        }
    }
    // Whatever no answer came for by now failed: counted, not dropped silently.
    for h in pubs.iter_mut().filter_map(|p| p.http.as_mut()) {
        h.abandon(&stats);
    }
    stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
    Ok(())
}

/// Appends one stamped message to a publisher's queue.
#[inline]
fn produce(
    p: &mut Publisher,
    msg: &mut [u8],
    opcode: OpCode,
    is_ws: bool,
    now: u64,
    stats: &PubStats,
) {
    write_stamp(
        msg,
        Stamp {
            publisher: p.id as u32,
            seq: p.seq,
            sent_ns: now,
        },
    );
    if is_ws {
        encode_frame(
            &mut p.out,
            true,
            opcode,
            Some(fastrand::u32(..).to_ne_bytes()),
            msg,
        );
    } else if let Some(h) = p.http.as_mut() {
        // Stamped again when it is put on a connection (see `http_fill`).
        h.push(p.seq, now);
    }
    p.seq += 1;
    if let Some(c) = stats.published.get(p.id) {
        c.store(p.seq, Ordering::Relaxed);
    }
    stats.total.fetch_add(1, Ordering::Relaxed);
}

/// Writes what the socket takes. Err: an HTTP connection failed (WebSocket: `dead`).
fn flush(p: &mut Publisher, stats: &PubStats) -> Result<(), ()> {
    if p.http.as_ref().is_some_and(|h| h.connecting) {
        return Ok(());
    }
    while !p.dead && !p.out.is_empty() {
        let Some(s) = p.stream.as_ref() else {
            return Ok(());
        };
        match (&*s).write(&p.out) {
            Ok(0) if p.http.is_some() => return Err(()),
            Ok(0) => p.dead = true,
            Ok(k) => {
                p.out.advance(k);
                if let Some(h) = p.http.as_mut() {
                    h.wrote(k);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if p.http.is_some() => return Err(()),
            Err(_) => {
                p.dead = true;
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// HTTP: puts waiting messages on the connection, each request stamped with its message's
/// sequence number and production time (a retry is the same message again).
fn http_fill(p: &mut Publisher, msg: &mut [u8]) {
    if p.stream.is_none() || p.queued() >= OUT_LIMIT {
        return;
    }
    let Some(h) = p.http.as_mut() else {
        return;
    };
    let (id, head) = (p.id as u32, &p.http_head);
    h.fill(HTTP_PIPELINE, &mut p.out, |out, seq, sent_ns| {
        write_stamp(
            msg,
            Stamp {
                publisher: id,
                seq,
                sent_ns,
            },
        );
        out.extend_from_slice(head);
        out.extend_from_slice(msg);
    });
}

/// HTTP: a poll event. The connect finishing, answers to count. False: the connection is over.
fn http_event(p: &mut Publisher, stats: &PubStats) -> bool {
    let (Some(s), Some(h)) = (p.stream.as_ref(), p.http.as_mut()) else {
        return true;
    };
    if h.connecting {
        match s.take_error() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        match s.peer_addr() {
            Ok(_) => {
                let _ = s.set_nodelay(true);
                h.connecting = false;
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return true,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
    }
    loop {
        match (&*s).read(h.input()) {
            Ok(0) => {
                h.eof(stats);
                return false;
            }
            Ok(k) => {
                if !h.filled(k, stats) {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A reset: like a close without an answer (`HttpLink::ended` sorts it out).
            Err(_) => return false,
        }
    }
}

/// HTTP: the connection is over. What it carried is sorted out (retried or failed), and a
/// new one is opened unless the run is stopping with nothing left to send.
fn http_lost(
    p: &mut Publisher,
    i: usize,
    poll: &Poll,
    to: Option<Redial>,
    stopping: bool,
    stats: &PubStats,
) {
    if let Some(s) = p.stream.take() {
        let fd = s.as_raw_fd();
        let _ = poll.registry().deregister(&mut SourceFd(&fd));
    }
    p.out.clear();
    let Some(h) = p.http.as_mut() else {
        return;
    };
    let never_connected = h.connecting;
    h.ended(stats);
    if stopping && h.pending() == 0 {
        p.dead = true;
        return;
    }
    if never_connected {
        // Refused (the server is gone?): the write loop tries again a little later.
        p.redial_at = now_ns() + REDIAL_NS;
        return;
    }
    redial(p, i, poll, to, now_ns(), stats);
}

/// HTTP: opens the publisher's next connection (the connect completes in the poll).
fn redial(
    p: &mut Publisher,
    i: usize,
    poll: &Poll,
    to: Option<Redial>,
    now: u64,
    stats: &PubStats,
) {
    let Some(to) = to else {
        // Nowhere to reconnect to: what is left fails at the end.
        p.dead = true;
        return;
    };
    stats.http_reconnects.fetch_add(1, Ordering::Relaxed);
    let opened = crate::sys::start_connect(p.source, to.addr).and_then(|s| {
        let fd = s.as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&fd),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(s)
    });
    match opened {
        Ok(s) => {
            p.stream = Some(s);
            if let Some(h) = p.http.as_mut() {
                h.connecting = true;
            }
        }
        Err(_) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            p.redial_at = now + REDIAL_NS;
        }
    }
}

fn handle_ws_input(
    p: &mut Publisher,
    data: &[u8],
    hist: &mut Histogram<u64>,
    ctrl: &mut BytesMut,
    stats: &PubStats,
) {
    let mut ctx = CheckCtx {
        now_ns: 0,
        window: (0, 0),
        hist,
        acks: &[],
        acked: false,
    };
    if p.rx.feed(data, &mut ctx).is_err() {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        p.dead = true;
        return;
    }
    if let Some(ping) = p.rx.take_ping() {
        ctrl.clear();
        encode_frame(
            ctrl,
            true,
            OpCode::Pong,
            Some(fastrand::u32(..).to_ne_bytes()),
            ping,
        );
        p.out.extend_from_slice(ctrl);
    }
    if let Some(code) = p.rx.close_received
        && !p.close_sent
    {
        p.close_sent = true;
        stats.errors.fetch_add(1, Ordering::Relaxed);
        encode_close(
            &mut p.out,
            Some(fastrand::u32(..).to_ne_bytes()),
            code.unwrap_or(close_code::NORMAL),
            "",
        );
    }
}

/// Creates the poll for the publisher thread and the waker the receive threads use.
pub fn poll_and_waker() -> io::Result<(Poll, Arc<Waker>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    Ok((poll, waker))
}

/// The HTTP POST request head for one publisher (`extra`: e.g. its token's `Authorization`).
pub fn http_head(
    host: &str,
    path: &str,
    size: usize,
    binary: bool,
    extra: Option<&(&'static str, String)>,
) -> Vec<u8> {
    let ctype = if binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    let extra = extra.map_or(String::new(), |(n, v)| format!("{n}: {v}\r\n"));
    format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nContent-Length: {size}\r\n{extra}\r\n").into_bytes()
}
