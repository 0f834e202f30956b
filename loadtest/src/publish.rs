//! The publisher thread: all publisher connections on one mio poll, paced to
//! a fixed total rate (`--rate`) or closed-loop (`--in-flight`, driven by the
//! acks of each topic's probe subscriber), over WebSocket (masked frames, a
//! fresh random mask per frame) or HTTP POST (pipelined, responses counted).
//! Publisher connections also receive (peers broadcast to every other client,
//! ringcast to every other subscriber of the topic): that input is drained and
//! scanned for ping and close, never checked.

use std::io::{self, Read, Write};
use std::net::TcpStream;
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
use crate::payload::{Stamp, fill_template, write_stamp};
use crate::rx::RxConn;
use crate::stats::new_hist;
use crate::sys::{now_ns, thread_cpu_ns};
use crate::worker::{CLOSE, RunShared, STOP};

/// Token of the ack waker.
pub const WAKE: Token = Token(usize::MAX - 1);
/// A publisher stops producing while this much is queued unsent.
const OUT_LIMIT: usize = 1 << 20;
/// Most HTTP requests in flight per connection in rate mode.
const HTTP_PIPELINE: u64 = 256;

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
    /// Non-2xx HTTP responses, write errors, server closes.
    pub errors: AtomicU64,
    /// HTTP responses received.
    pub http_responses: AtomicU64,
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
    stream: TcpStream,
    /// Queued bytes not yet written (BytesMut: the protocol core masks into it in place).
    out: BytesMut,
    seq: u64,
    rx: RxConn,
    inbuf: Vec<u8>,
    http_head: Vec<u8>,
    outstanding: u64,
    dead: bool,
    close_sent: bool,
}

impl Publisher {
    fn queued(&self) -> usize {
        self.out.len()
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
    for (i, c) in conns.into_iter().enumerate() {
        let fd = c.stream.as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&fd),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        pubs.push(Publisher {
            id: c.id,
            stream: c.stream,
            out: BytesMut::with_capacity(64 * 1024),
            seq: 0,
            rx: RxConn::new(Checker::disabled()),
            inbuf: c.leftover,
            http_head: c.http_head,
            outstanding: 0,
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
    let is_ws = matches!(cfg.kind, PubKind::Ws);
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
                    let http_full = !is_ws && p.outstanding >= HTTP_PIPELINE;
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
        // Write what is queued.
        for p in pubs.iter_mut() {
            flush(p, &stats);
        }
        if stopping
            && pubs
                .iter()
                .all(|p| p.dead || (p.queued() == 0 && p.outstanding == 0))
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
                        p.outstanding == 0
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
            if ev.token() == WAKE || i >= pubs.len() || !ev.is_readable() {
                continue;
            }
            let p = &mut pubs[i];
            loop {
                match (&p.stream).read(&mut scratch) {
                    Ok(0) => {
                        p.dead = true;
                        break;
                    }
                    Ok(k) => {
                        if is_ws {
                            handle_ws_input(p, &scratch[..k], &mut dummy_hist, &mut ctrl, &stats);
                        } else {
                            p.inbuf.extend_from_slice(&scratch[..k]);
                        }
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
            if !is_ws {
                handle_http_responses(p, &stats);
            }
        }
        if now.saturating_sub(last_cpu) >= 250_000_000 {
            stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            last_cpu = now;
        }
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
    } else {
        p.out.extend_from_slice(&p.http_head);
        p.out.extend_from_slice(msg);
        p.outstanding += 1;
    }
    p.seq += 1;
    if let Some(c) = stats.published.get(p.id) {
        c.store(p.seq, Ordering::Relaxed);
    }
    stats.total.fetch_add(1, Ordering::Relaxed);
}

fn flush(p: &mut Publisher, stats: &PubStats) {
    while !p.dead && !p.out.is_empty() {
        match (&p.stream).write(&p.out) {
            Ok(0) => p.dead = true,
            Ok(k) => p.out.advance(k),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                p.dead = true;
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
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

/// Consumes complete HTTP responses from `p.inbuf`.
fn handle_http_responses(p: &mut Publisher, stats: &PubStats) {
    let mut pos = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&p.inbuf[pos..]) {
            Ok(httparse::Status::Complete(head)) => {
                let code = resp.code.unwrap_or(0);
                let body = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let Some(body) = body else {
                    if resp
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                    {
                        // Chunked responses are not supported: count and stop using this connection.
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        p.dead = true;
                        return;
                    }
                    if code == 204 || code == 304 {
                        pos += head;
                        p.outstanding = p.outstanding.saturating_sub(1);
                        stats.http_responses.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    p.dead = true;
                    return;
                };
                if p.inbuf.len() - pos < head + body {
                    break;
                }
                pos += head + body;
                p.outstanding = p.outstanding.saturating_sub(1);
                stats.http_responses.fetch_add(1, Ordering::Relaxed);
                if !(200..300).contains(&code) {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(httparse::Status::Partial) => break,
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                p.dead = true;
                break;
            }
        }
    }
    p.inbuf.drain(..pos);
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
