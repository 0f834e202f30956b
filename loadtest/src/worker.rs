//! The backend-independent half of a receive thread: the table of subscriber
//! connections, what happens to received bytes (rx + checks), pongs and the
//! close handshake, slow subscribers, and handing counters to the main thread.
//! The io_uring (`uring::recv`) and epoll (`epoll`) loops only move bytes and
//! call into [`Core`]. In `chat` every connection also publishes: the core asks
//! its [`ChatSender`] each turn for what is due.
//!
//! Writes on a connection keep their order: what the kernel does not take at
//! once waits in the connection's queue and goes out first on a later turn, so
//! a pong or a close frame never lands inside a half-written message.
//!
//! Phases (set by the main thread in [`RunShared::phase`]): `RUN` receive;
//! `CLOSE` send a close frame on every open connection and drain until the
//! server answers and closes; `STOP` give up on whatever is still open.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use ringcast::proto::close::close_code;
use ringcast::proto::frame::{OpCode, encode_close, encode_frame};

use crate::chat_send::{ChatPlan, ChatSender};
use crate::checker::{CheckCtx, Checker};
use crate::cli::SlowMode;
use crate::offsets::OffsetCounts;
use crate::rx::RxConn;
use crate::seq::SeqCounts;
use crate::stats::{ThreadStats, new_hist};
use crate::sys::{now_ns, thread_cpu_ns};

/// Receive.
pub const RUN: u8 = 0;
/// Close every connection (close handshake) and drain.
pub const CLOSE: u8 = 1;
/// Stop now.
pub const STOP: u8 = 2;

/// State shared by the main thread, the receive threads and the publisher thread.
#[derive(Debug)]
pub struct RunShared {
    /// RUN, CLOSE or STOP.
    pub phase: AtomicU8,
    /// Latency is recorded for messages sent in [window_start, window_end) (ns).
    pub window_start: AtomicU64,
    /// End of the measured window (ns).
    pub window_end: AtomicU64,
    /// Per publisher: messages seen by its probe subscriber (closed loop).
    pub acks: Vec<AtomicU64>,
    /// Wakes the publisher thread when an ack moves.
    pub pub_waker: Option<Arc<mio::Waker>>,
    /// `chat`: every connection also publishes, as this plan says.
    pub chat: Option<Arc<ChatPlan>>,
}

impl RunShared {
    /// Fresh shared state for `publishers` publishers; the window starts closed.
    pub fn new(publishers: usize, pub_waker: Option<Arc<mio::Waker>>) -> Self {
        RunShared {
            phase: AtomicU8::new(RUN),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            acks: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            pub_waker,
            chat: None,
        }
    }

    /// The same state for a chat run: the receive threads also send, as `plan` says.
    pub fn with_chat(mut self, plan: Arc<ChatPlan>) -> Self {
        self.chat = Some(plan);
        self
    }

    /// Current phase.
    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }
}

/// One subscriber connection handed to a receive thread.
#[derive(Debug)]
pub struct NewSub {
    /// Global subscriber index.
    pub id: usize,
    /// Topic index.
    pub topic: usize,
    /// The connected, upgraded, non-blocking socket.
    pub stream: TcpStream,
    /// Bytes that arrived after the 101 response head.
    pub leftover: Vec<u8>,
    /// Slow-subscriber behaviour, if any.
    pub slow: Option<SlowMode>,
    /// Reports acks for its topic's publishers.
    pub probe: bool,
    /// Its messages come in ringcast's mux-mode envelopes (`/ws?subscribe=...`).
    pub envelopes: bool,
    /// Its binary envelopes are v2 (`/ws?envelope=2`: with an offset).
    pub envelope_v2: bool,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Still open when the run stopped.
    Open,
    /// Close handshake done; `server_first` when the server closed before we asked.
    Closed {
        /// Close code from the server's close frame.
        code: Option<u16>,
        /// The server started the close (e.g. 1008 for a slow consumer).
        server_first: bool,
    },
    /// TCP ended without a close frame.
    Eof,
    /// An I/O error (reset...).
    Io(String),
    /// The server broke the protocol.
    Protocol(String),
}

/// The final state of one subscriber.
#[derive(Clone, Debug)]
pub struct SubResult {
    /// Global subscriber index.
    pub id: usize,
    /// Topic index.
    pub topic: usize,
    /// Slow-subscriber behaviour, if any.
    pub slow: Option<SlowMode>,
    /// Sequence verdicts.
    pub counts: SeqCounts,
    /// Offset checks (envelopes with an offset).
    pub offsets: OffsetCounts,
    /// Foreign messages.
    pub foreign: u64,
    /// Its own messages that came back (chat without echo).
    pub own: u64,
    /// Next expected sequence per publisher of its topic.
    pub progress: Vec<(usize, u64)>,
    /// Saw a blast stream.
    pub blast: bool,
    /// How it ended.
    pub end: End,
}

/// What a receive thread returns.
#[derive(Debug)]
pub struct WorkerResult {
    /// "io_uring" or "epoll".
    pub backend: &'static str,
    /// Latency of healthy subscribers in the measured window (ns).
    pub hist: Histogram<u64>,
    /// Every subscriber's result.
    pub subs: Vec<SubResult>,
    /// Backend notes (e.g. ENOBUFS re-arms).
    pub notes: Vec<String>,
}

/// One connection as the core sees it.
#[derive(Debug)]
pub struct Conn {
    /// Global subscriber index.
    pub id: usize,
    topic: usize,
    /// The socket; None once the connection is finished and closed.
    pub stream: Option<TcpStream>,
    /// Receive state and checks.
    pub rx: RxConn,
    /// Slow-subscriber behaviour.
    pub slow: Option<SlowMode>,
    close_sent: bool,
    server_first: bool,
    /// Bytes written by the generator that the kernel has not taken yet, in order.
    out: BytesMut,
    /// Some once no more input is wanted.
    pub end: Option<End>,
}

impl Conn {
    /// Whether the backend should keep receiving on it.
    pub fn wants_input(&self) -> bool {
        self.end.is_none() && self.slow.is_none()
    }
}

/// The per-thread state shared by both backends.
#[derive(Debug)]
pub struct Core {
    /// Connections by local index (never removed: results are read at the end).
    pub conns: Vec<Conn>,
    open: usize,
    live: Histogram<u64>,
    total: Histogram<u64>,
    /// Thread counters read by the main thread.
    pub stats: Arc<ThreadStats>,
    /// Run-wide state.
    pub shared: Arc<RunShared>,
    delivered_pending: u64,
    bytes_pending: u64,
    last_flush_ns: u64,
    last_slow_ns: u64,
    slow_rate: usize,
    closing: bool,
    out: BytesMut,
    scratch: Vec<u8>,
    publishers: usize,
    topics: usize,
    /// Connections with queued output.
    backlog: Vec<usize>,
    /// Queued output bytes last reported in the chat plan's `unsent`.
    unsent_reported: u64,
    /// `chat`: this thread's members also publish.
    chat: Option<ChatSender>,
}

impl Core {
    /// A core for a thread of a run with `topics` topics and `publishers` publishers.
    pub fn new(
        stats: Arc<ThreadStats>,
        shared: Arc<RunShared>,
        topics: usize,
        publishers: usize,
        slow_rate: usize,
    ) -> Self {
        Core {
            conns: Vec::new(),
            open: 0,
            live: new_hist(),
            total: new_hist(),
            stats,
            shared,
            delivered_pending: 0,
            bytes_pending: 0,
            last_flush_ns: now_ns(),
            last_slow_ns: now_ns(),
            slow_rate,
            closing: false,
            out: BytesMut::with_capacity(256),
            scratch: vec![0; 64 * 1024],
            publishers,
            topics,
            backlog: Vec::new(),
            unsent_reported: 0,
            chat: None,
        }
        .with_chat_from_shared()
    }

    fn with_chat_from_shared(mut self) -> Self {
        self.chat = self.shared.chat.clone().map(ChatSender::new);
        self
    }

    /// Adds a connection; returns its local index. Leftover bytes are fed at once.
    pub fn add(&mut self, sub: NewSub) -> usize {
        let mut checker = Checker::new(
            sub.topic,
            self.topics,
            self.publishers,
            sub.probe,
            sub.slow.is_none(),
        );
        let idx = self.conns.len();
        if let Some(chat) = &mut self.chat {
            if chat.excludes_own() {
                checker = checker.excluding_own(sub.id as u32);
            }
            chat.add(idx, sub.id);
        }
        self.conns.push(Conn {
            id: sub.id,
            topic: sub.topic,
            stream: Some(sub.stream),
            rx: if sub.envelopes {
                RxConn::new(checker).with_envelopes(sub.envelope_v2)
            } else {
                RxConn::new(checker)
            },
            slow: sub.slow,
            close_sent: false,
            server_first: false,
            out: BytesMut::new(),
            end: None,
        });
        self.open += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        if !sub.leftover.is_empty() {
            self.on_data(idx, &sub.leftover, now_ns());
        }
        if self.closing {
            self.send_close(idx);
        }
        idx
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Bytes received on connection `idx` at time `now`.
    pub fn on_data(&mut self, idx: usize, data: &[u8], now: u64) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.end.is_some() {
            return;
        }
        let before = c.rx.messages;
        let mut ctx = CheckCtx {
            now_ns: now,
            window: (
                self.shared.window_start.load(Ordering::Relaxed),
                self.shared.window_end.load(Ordering::Relaxed),
            ),
            hist: &mut self.live,
            acks: &self.shared.acks,
            acked: false,
        };
        let res = c.rx.feed(data, &mut ctx);
        let acked = ctx.acked;
        self.delivered_pending += c.rx.messages - before;
        self.bytes_pending += data.len() as u64;
        if acked && let Some(w) = &self.shared.pub_waker {
            let _ = w.wake();
        }
        if let Err(e) = res {
            self.out.clear();
            encode_close(
                &mut self.out,
                Some(fastrand::u32(..).to_ne_bytes()),
                close_code::PROTOCOL,
                "",
            );
            if write_ordered(c, &self.out) {
                self.backlog.push(idx);
            }
            self.finish(idx, End::Protocol(e.to_string()));
            return;
        }
        if let Some(ping) = c.rx.take_ping() {
            self.out.clear();
            encode_frame(
                &mut self.out,
                true,
                OpCode::Pong,
                Some(fastrand::u32(..).to_ne_bytes()),
                ping,
            );
            if write_ordered(c, &self.out) {
                self.backlog.push(idx);
            }
        }
        if let Some(code) = c.rx.close_received {
            if !c.close_sent {
                // The server started the close: answer with its code (1000 when it gave none).
                c.server_first = true;
                c.close_sent = true;
                self.out.clear();
                encode_close(
                    &mut self.out,
                    Some(fastrand::u32(..).to_ne_bytes()),
                    code.unwrap_or(close_code::NORMAL),
                    "",
                );
                if write_ordered(c, &self.out) {
                    self.backlog.push(idx);
                }
            }
            let server_first = c.server_first;
            self.finish(idx, End::Closed { code, server_first });
        }
    }

    /// The peer ended the stream.
    pub fn on_eof(&mut self, idx: usize) {
        self.finish(idx, End::Eof);
    }

    /// A receive error.
    pub fn on_error(&mut self, idx: usize, err: &io::Error) {
        self.finish(idx, End::Io(err.to_string()));
    }

    /// Marks a connection finished: shuts the socket (the backend drops it when
    /// its own operations are done with it).
    fn finish(&mut self, idx: usize, end: End) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.end.is_some() {
            return;
        }
        if matches!(end, End::Eof | End::Io(_) | End::Protocol(_)) && !self.closing {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(s) = &c.stream {
            let _ = s.shutdown(Shutdown::Both);
        }
        c.end = Some(end);
        self.open -= 1;
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn send_close(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.close_sent || c.end.is_some() {
            return;
        }
        c.close_sent = true;
        self.out.clear();
        encode_close(
            &mut self.out,
            Some(fastrand::u32(..).to_ne_bytes()),
            close_code::NORMAL,
            "",
        );
        if write_ordered(c, &self.out) {
            self.backlog.push(idx);
        }
    }

    /// Once per loop turn: queued output, chat sends, counters, live histogram,
    /// slow readers, phase. Returns false when the thread should stop.
    pub fn tick(&mut self, now: u64) -> bool {
        if !self.backlog.is_empty() {
            let conns = &mut self.conns;
            self.backlog
                .retain(|&i| conns.get_mut(i).is_some_and(flush_queued));
        }
        if let Some(mut chat) = self.chat.take() {
            if self.shared.phase() == RUN {
                let (conns, backlog) = (&mut self.conns, &mut self.backlog);
                chat.produce(now_ns(), |i, frame| match conns.get_mut(i) {
                    Some(c) if c.end.is_none() && !c.close_sent => {
                        if write_ordered(c, frame) {
                            backlog.push(i);
                        }
                        true
                    }
                    _ => false,
                });
            }
            let unsent: u64 = self
                .backlog
                .iter()
                .filter_map(|&i| self.conns.get(i))
                .map(|c| c.out.len() as u64)
                .sum();
            if unsent != self.unsent_reported {
                let u = &chat.plan().unsent;
                u.fetch_add(unsent, Ordering::Relaxed);
                u.fetch_sub(self.unsent_reported, Ordering::Relaxed);
                self.unsent_reported = unsent;
            }
            self.chat = Some(chat);
        }
        if self.delivered_pending > 0 {
            self.stats.delivered.fetch_add(
                std::mem::take(&mut self.delivered_pending),
                Ordering::Relaxed,
            );
            self.stats
                .bytes
                .fetch_add(std::mem::take(&mut self.bytes_pending), Ordering::Relaxed);
        }
        if now.saturating_sub(self.last_flush_ns) >= 250_000_000 {
            self.flush_hist();
            self.stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            self.last_flush_ns = now;
        }
        let phase = self.shared.phase();
        if phase >= CLOSE && !self.closing {
            self.closing = true;
            // Slow subscribers first read what is queued for them (a close frame
            // from the server may be in there); they get our close once drained.
            for i in 0..self.conns.len() {
                if self.conns[i].slow.is_none() {
                    self.send_close(i);
                }
            }
        }
        let slow_due = now.saturating_sub(self.last_slow_ns) >= 100_000_000;
        if slow_due || self.closing {
            self.last_slow_ns = now;
            self.service_slow(now);
        }
        !(phase >= STOP || (self.closing && self.open == 0))
    }

    /// Reads slow subscribers: a little every 100 ms in `slow` mode; everything once closing.
    fn service_slow(&mut self, now: u64) {
        let budget = (self.slow_rate / 10).max(1);
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            let Some(mode) = c.slow else { continue };
            if c.end.is_some() {
                continue;
            }
            // While closing: drain up to 4 MiB per turn (a server may never stop
            // sending), then start the close handshake either way.
            let closing = self.closing;
            let mut left = if closing {
                4 << 20
            } else if mode == SlowMode::Slow {
                budget
            } else {
                0
            };
            while left > 0 {
                let want = left.min(self.scratch.len());
                let r = match &self.conns[idx].stream {
                    Some(s) => (&*s).read(&mut self.scratch[..want]),
                    None => break,
                };
                match r {
                    Ok(0) => {
                        self.on_eof(idx);
                        break;
                    }
                    Ok(n) => {
                        left -= n;
                        let data = std::mem::take(&mut self.scratch);
                        self.on_data(idx, &data[..n], now);
                        self.scratch = data;
                        if self.conns[idx].end.is_some() {
                            break;
                        }
                        if left == 0 && closing {
                            self.send_close(idx);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if closing {
                            // Drained and still open: now the close handshake.
                            self.send_close(idx);
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.on_error(idx, &e);
                        break;
                    }
                }
            }
        }
    }

    fn flush_hist(&mut self) {
        if !self.live.is_empty() {
            self.stats.push_live(&self.live);
            let _ = self.total.add(&self.live);
            self.live.reset();
        }
    }

    /// Final results.
    pub fn finish_all(mut self, backend: &'static str, notes: Vec<String>) -> WorkerResult {
        self.tick(now_ns());
        self.flush_hist();
        self.stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
        let subs = self
            .conns
            .into_iter()
            .map(|c| SubResult {
                id: c.id,
                topic: c.topic,
                slow: c.slow,
                counts: c.rx.checker.counts,
                offsets: c.rx.offsets.counts,
                foreign: c.rx.checker.foreign,
                own: c.rx.checker.own_received,
                progress: c.rx.checker.progress().collect(),
                blast: c.rx.checker.saw_blast(),
                end: c.end.unwrap_or(End::Open),
            })
            .collect();
        WorkerResult {
            backend,
            hist: self.total,
            subs,
            notes,
        }
    }
}

/// Writes on a non-blocking socket in order: behind what is already queued, or
/// at once with the rest queued. Returns true when the connection's queue went
/// from empty to not (the caller lists it for [`flush_queued`]). A write error
/// drops the bytes: the receive side sees the connection end.
fn write_ordered(c: &mut Conn, bytes: &[u8]) -> bool {
    if !c.out.is_empty() {
        c.out.extend_from_slice(bytes);
        return false;
    }
    let Some(s) = &c.stream else { return false };
    let mut done = 0;
    while done < bytes.len() {
        match (&*s).write(&bytes[done..]) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if done < bytes.len() {
        c.out.extend_from_slice(&bytes[done..]);
        return true;
    }
    false
}

/// Writes what a connection has queued; true while some is left.
fn flush_queued(c: &mut Conn) -> bool {
    let Some(s) = &c.stream else {
        c.out.clear();
        return false;
    };
    while !c.out.is_empty() {
        match (&*s).write(&c.out) {
            Ok(0) => c.out.clear(),
            Ok(n) => c.out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => c.out.clear(),
        }
    }
    false
}
