//! The epoll backend (through mio), for where io_uring is unavailable.
//!
//! It keeps the completion-shaped [`Driver`] contract so the shard cannot tell the
//! difference: readiness is turned into [`Event::Data`] by reading into one shard-wide
//! buffer, and a send is written at once with `writev`, continued on writability, and
//! reported with [`Event::Sent`] when done. mio is edge-triggered, so a socket that is still
//! readable after a turn's share of reads is remembered and read again next turn (fairness
//! without losing the edge).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Poll, Token as MioToken, Waker};

use super::{Driver, DriverStats, Event, Token, WakeTarget};

const WAKER: MioToken = MioToken(usize::MAX);
/// mio tokens below this are listeners; connection slot `s` is `CONN_BASE + s`.
const CONN_BASE: usize = 1 << 20;
/// Reads of one socket per turn before others get their turn.
const READS_PER_TURN: u32 = 8;
/// Reads of all sockets per turn: past it, readable sockets wait for the next turn, so the
/// shard's fan-out, flush and timers run at least every this many reads (one fast writer
/// cannot make a turn, and the batch it fills, grow without bound).
const READS_PER_TURN_TOTAL: u32 = 256;
/// How long accepting pauses after EMFILE, ENFILE, ENOBUFS or ENOMEM (retried sooner when
/// this driver closes a descriptor).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const MAX_IOV: usize = 1024;

struct PendingSend {
    frames: Vec<Bytes>,
    done: usize,
    total: usize,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    stream: Option<TcpStream>,
    send: Option<PendingSend>,
    recv_open: bool,
    /// Backpressure: not read until resumed.
    paused: bool,
    /// Listed in `again` (so it is listed once).
    listed: bool,
}

/// The epoll driver of one shard.
pub struct EpollDriver {
    poll: Poll,
    events: mio::Events,
    /// This turn's readiness, copied out of `events` once (token, readable, writable), so
    /// that walking it is O(n) per turn.
    turn: Vec<(MioToken, bool, bool, bool)>,
    /// Position in `turn` of the next readiness to look at.
    cursor: usize,
    /// Reads left in this turn (all sockets).
    budget: u32,
    waker: Arc<Waker>,
    listeners: Vec<TcpListener>,
    slots: Vec<Slot>,
    buf: Vec<u8>,
    /// The socket being drained now and how many reads it had this turn.
    reading: Option<(u32, u32, bool)>,
    /// Listener being drained now.
    accepting: Option<usize>,
    /// Sockets still readable at the end of their share; read first next turn.
    again: Vec<u32>,
    /// `again` as it was when this turn began: what this turn reads first.
    carried: Vec<u32>,
    /// Listeners not accepted from until this instant (resource errors).
    accept_backoff: Vec<Option<std::time::Instant>>,
    /// Listeners to accept from this turn without a new edge (backoff over).
    accept_retry: Vec<usize>,
    ready: VecDeque<Event<'static>>,
    stats: DriverStats,
}

impl std::fmt::Debug for EpollDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpollDriver")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl EpollDriver {
    /// Creates the poller, registers the listeners and the waker.
    pub fn new(recv_buffer_size: usize, listeners: Vec<OwnedFd>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut ls = Vec::with_capacity(listeners.len());
        for (i, fd) in listeners.into_iter().enumerate() {
            let std_l = std::net::TcpListener::from(fd);
            std_l.set_nonblocking(true)?;
            let mut l = TcpListener::from_std(std_l);
            poll.registry()
                .register(&mut l, MioToken(i), Interest::READABLE)?;
            ls.push(l);
        }
        let ls_len = ls.len();
        Ok(EpollDriver {
            poll,
            events: mio::Events::with_capacity(1024),
            turn: Vec::with_capacity(1024),
            cursor: 0,
            budget: READS_PER_TURN_TOTAL,
            waker,
            listeners: ls,
            slots: Vec::new(),
            buf: vec![0; recv_buffer_size.max(512)],
            reading: None,
            accepting: None,
            again: Vec::new(),
            carried: Vec::new(),
            accept_backoff: vec![None; ls_len],
            accept_retry: Vec::new(),
            ready: VecDeque::new(),
            stats: DriverStats::default(),
        })
    }

    fn mio_token(token: Token) -> MioToken {
        MioToken(CONN_BASE + token.slot as usize)
    }

    /// Writes as much of the slot's pending send as the socket takes; returns the event
    /// when the send is finished (done or failed).
    fn progress_send(&mut self, slot: u32) -> Option<Event<'static>> {
        let s = self.slots.get_mut(slot as usize)?;
        let token = Token {
            slot,
            generation: s.generation,
        };
        let stream = s.stream.as_mut()?;
        let op = s.send.as_mut()?;
        let result = loop {
            if op.done == op.total {
                break Ok(op.total);
            }
            let mut skip = op.done;
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(op.frames.len().min(MAX_IOV));
            for f in &op.frames {
                if iov.len() == MAX_IOV {
                    break;
                }
                if skip >= f.len() {
                    skip -= f.len();
                    continue;
                }
                iov.push(IoSlice::new(&f[skip..]));
                skip = 0;
            }
            match stream.write_vectored(&iov) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => op.done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let op = s.send.take()?;
        Some(Event::Sent {
            token,
            result,
            frames: op.frames,
        })
    }

    /// One read of a socket; the caller turns `Data(n)` into an event borrowing `buf`.
    fn read_one(&mut self, slot: u32, reads: u32, may_stop_short: bool) -> ReadOutcome {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return ReadOutcome::Nothing;
        };
        let token = Token {
            slot,
            generation: s.generation,
        };
        let Some(stream) = s.stream.as_mut().filter(|_| s.recv_open && !s.paused) else {
            return ReadOutcome::Nothing;
        };
        if self.budget == 0 {
            // The turn's reads are used up: next turn, without waiting for a new edge.
            if !s.listed {
                s.listed = true;
                self.again.push(slot);
            }
            return ReadOutcome::Nothing;
        }
        loop {
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    s.recv_open = false;
                    return ReadOutcome::Closed(token, None);
                }
                Ok(n) => {
                    self.budget -= 1;
                    if may_stop_short && n < self.buf.len() {
                        // The queue was drained: the next arrival raises a new edge.
                        return ReadOutcome::Data(token, n);
                    }
                    if reads + 1 >= READS_PER_TURN {
                        if !s.listed {
                            s.listed = true;
                            self.again.push(slot);
                        }
                    } else {
                        self.reading = Some((slot, reads + 1, may_stop_short));
                    }
                    return ReadOutcome::Data(token, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Nothing,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    s.recv_open = false;
                    return ReadOutcome::Closed(token, Some(e));
                }
            }
        }
    }
}

impl EpollDriver {
    /// A descriptor was freed: listeners backing off try again this turn.
    fn retry_accept_now(&mut self) {
        super::end_accept_backoffs(&mut self.accept_backoff, &mut self.accept_retry);
    }
}

enum ReadOutcome {
    Nothing,
    Data(Token, usize),
    Closed(Token, Option<io::Error>),
}

impl Driver for EpollDriver {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn wake_target(&self) -> WakeTarget {
        WakeTarget::Mio(Arc::clone(&self.waker))
    }

    fn register(&mut self, token: Token, fd: OwnedFd) -> io::Result<()> {
        let idx = token.slot as usize;
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, Slot::default);
        }
        if self.slots[idx].stream.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "slot still in use",
            ));
        }
        // Already non-blocking: accepted with accept4(SOCK_NONBLOCK) (mio).
        let std_s = std::net::TcpStream::from(fd);
        let mut stream = TcpStream::from_std(std_s);
        self.poll.registry().register(
            &mut stream,
            Self::mio_token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.slots[idx] = Slot {
            generation: token.generation,
            stream: Some(stream),
            send: None,
            recv_open: true,
            paused: false,
            listed: false,
        };
        // EPOLL_CTL_ADD reports what is already readable (edge-triggered too): no read now.
        Ok(())
    }

    fn send(&mut self, token: Token, frames: Vec<Bytes>) {
        let ok = self.slots.get(token.slot as usize).is_some_and(|s| {
            s.generation == token.generation && s.stream.is_some() && s.send.is_none()
        });
        if !ok {
            self.ready.push_back(Event::send_failed(
                token,
                io::ErrorKind::NotConnected,
                frames,
            ));
            return;
        }
        let total = super::frames_len(&frames);
        self.slots[token.slot as usize].send = Some(PendingSend {
            frames,
            done: 0,
            total,
        });
        if let Some(ev) = self.progress_send(token.slot) {
            self.ready.push_back(ev);
        }
    }

    fn release(&mut self, token: Token) {
        let Some(s) = self.slots.get_mut(token.slot as usize) else {
            return;
        };
        if s.generation != token.generation {
            return;
        }
        let Some(mut stream) = s.stream.take() else {
            return;
        };
        if let Err(e) = self.poll.registry().deregister(&mut stream) {
            tracing::debug!(error = %e, "epoll deregister");
        }
        drop(stream); // close(2): nothing is in flight on epoll
        s.recv_open = false;
        if let Some(op) = s.send.take() {
            self.ready.push_back(Event::send_failed(
                token,
                io::ErrorKind::ConnectionAborted,
                op.frames,
            ));
        }
        self.ready.push_back(Event::Released { token });
        // A descriptor was freed: a listener backing off at the descriptor limit may accept.
        self.retry_accept_now();
    }

    fn pause_recv(&mut self, token: Token) {
        if let Some(s) = self.slots.get_mut(token.slot as usize)
            && s.generation == token.generation
        {
            s.paused = true;
        }
    }

    fn resume_recv(&mut self, token: Token) {
        if let Some(s) = self.slots.get_mut(token.slot as usize)
            && s.generation == token.generation
            && s.paused
        {
            s.paused = false;
            // Edge-triggered: what arrived while paused raised its edge already.
            if !s.listed {
                s.listed = true;
                self.again.push(token.slot);
            }
        }
    }

    fn wake(&mut self, target: &WakeTarget) {
        if let WakeTarget::Mio(w) = target
            && let Err(e) = w.wake()
        {
            tracing::warn!(error = %e, "waking a shard failed");
        }
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let now = std::time::Instant::now();
        let mut timeout = timeout;
        timeout = super::expire_accept_backoffs(
            &mut self.accept_backoff,
            now,
            timeout,
            &mut self.accept_retry,
        );
        let timeout =
            if self.ready.is_empty() && self.again.is_empty() && self.accept_retry.is_empty() {
                Some(timeout)
            } else {
                Some(Duration::ZERO)
            };
        self.stats.submissions += 1;
        self.cursor = 0;
        self.budget = READS_PER_TURN_TOTAL;
        self.reading = None;
        self.accepting = None;
        // What was deferred last turn is read first this turn; what this turn defers waits
        // for the next one (read in the same turn, the per-socket share would mean nothing).
        self.carried.clear();
        std::mem::swap(&mut self.carried, &mut self.again);
        for &slot in &self.carried {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                s.listed = false;
            }
        }
        self.turn.clear();
        let r = match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        };
        self.turn.extend(self.events.iter().map(|ev| {
            (
                ev.token(),
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                ev.is_writable() || ev.is_error(),
                // A short read may end this edge's reading only when no EOF or error came
                // with it (else the EOF, queued behind the data, would raise no new edge).
                ev.is_readable() && !ev.is_read_closed() && !ev.is_error(),
            )
        }));
        r
    }

    fn next_event(&mut self) -> Option<Event<'_>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            if let Some((slot, reads, short)) = self.reading.take() {
                match self.read_one(slot, reads, short) {
                    ReadOutcome::Nothing => continue,
                    ReadOutcome::Data(token, n) => {
                        return Some(Event::Data {
                            token,
                            data: &mut self.buf[..n],
                        });
                    }
                    ReadOutcome::Closed(token, error) => {
                        return Some(Event::RecvClosed { token, error });
                    }
                }
            }
            if let Some(i) = self.accepting {
                match self.listeners.get(i).map(TcpListener::accept) {
                    Some(Ok((stream, _))) => {
                        return Some(Event::Accepted(OwnedFd::from(stream)));
                    }
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.accepting = None,
                    Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Some(Err(e)) => {
                        // Edge-triggered: stopping here would leave the rest of the backlog
                        // waiting for the next connection. A failure that concerns only
                        // the failed connection goes on at once; running out of descriptors
                        // or memory backs off (retried on a timer or a freed descriptor).
                        if super::accept_backs_off(&e) {
                            self.accepting = None;
                            if let Some(b) = self.accept_backoff.get_mut(i) {
                                *b = Some(std::time::Instant::now() + ACCEPT_BACKOFF);
                            }
                        }
                        return Some(Event::AcceptError(e));
                    }
                    None => self.accepting = None,
                }
                continue;
            }
            if let Some(i) = self.accept_retry.pop() {
                self.accepting = Some(i);
                continue;
            }
            if let Some(slot) = self.carried.pop() {
                self.reading = Some((slot, 0, false));
                continue;
            }
            let &(tok, readable, writable, clean) = self.turn.get(self.cursor)?;
            self.cursor += 1;
            if tok == WAKER {
                return Some(Event::Wake);
            }
            if tok.0 < CONN_BASE {
                if self.accept_backoff.get(tok.0).is_some_and(Option::is_none) {
                    self.accepting = Some(tok.0);
                }
                continue;
            }
            let slot = (tok.0 - CONN_BASE) as u32;
            if writable && let Some(ev) = self.progress_send(slot) {
                if readable {
                    // Read after the send's event; this turn still (it is this turn's edge).
                    self.carried.push(slot);
                }
                return Some(ev);
            }
            if readable {
                self.reading = Some((slot, 0, clean));
            }
        }
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}
