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
}

/// The epoll driver of one shard.
pub struct EpollDriver {
    poll: Poll,
    events: mio::Events,
    /// Position in `events` of the next readiness to look at.
    cursor: usize,
    waker: Arc<Waker>,
    listeners: Vec<TcpListener>,
    slots: Vec<Slot>,
    buf: Vec<u8>,
    /// The socket being drained now and how many reads it had this turn.
    reading: Option<(u32, u32)>,
    /// Listener being drained now.
    accepting: Option<usize>,
    /// Sockets still readable at the end of their share; read first next turn.
    again: Vec<u32>,
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
        Ok(EpollDriver {
            poll,
            events: mio::Events::with_capacity(1024),
            cursor: 0,
            waker,
            listeners: ls,
            slots: Vec::new(),
            buf: vec![0; recv_buffer_size.max(512)],
            reading: None,
            accepting: None,
            again: Vec::new(),
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
    fn read_one(&mut self, slot: u32, reads: u32) -> ReadOutcome {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return ReadOutcome::Nothing;
        };
        let token = Token {
            slot,
            generation: s.generation,
        };
        let Some(stream) = s.stream.as_mut().filter(|_| s.recv_open) else {
            return ReadOutcome::Nothing;
        };
        loop {
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    s.recv_open = false;
                    return ReadOutcome::Closed(token, None);
                }
                Ok(n) => {
                    if reads + 1 >= READS_PER_TURN {
                        self.again.push(slot);
                    } else {
                        self.reading = Some((slot, reads + 1));
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
        let std_s = std::net::TcpStream::from(fd);
        std_s.set_nonblocking(true)?;
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
        };
        // Data may have arrived before registration; the edge would be lost otherwise.
        self.again.push(token.slot);
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
    }

    fn pause_recv(&mut self, _token: Token) {
        // PLACEHOLDER: replaced by the backpressure work before this lands.
    }

    fn resume_recv(&mut self, _token: Token) {}

    fn wake(&mut self, target: &WakeTarget) {
        if let WakeTarget::Mio(w) = target
            && let Err(e) = w.wake()
        {
            tracing::warn!(error = %e, "waking a shard failed");
        }
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let timeout = if self.ready.is_empty() && self.again.is_empty() {
            Some(timeout)
        } else {
            Some(Duration::ZERO)
        };
        self.stats.submissions += 1;
        self.cursor = 0;
        self.reading = None;
        self.accepting = None;
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn next_event(&mut self) -> Option<Event<'_>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            if let Some((slot, reads)) = self.reading.take() {
                match self.read_one(slot, reads) {
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
                        self.accepting = None;
                        return Some(Event::AcceptError(e));
                    }
                    None => self.accepting = None,
                }
                continue;
            }
            if let Some(slot) = self.again.pop() {
                self.reading = Some((slot, 0));
                continue;
            }
            let ev = self.events.iter().nth(self.cursor)?;
            self.cursor += 1;
            let (tok, readable, writable) = (
                ev.token(),
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                ev.is_writable() || ev.is_error(),
            );
            if tok == WAKER {
                return Some(Event::Wake);
            }
            if tok.0 < CONN_BASE {
                self.accepting = Some(tok.0);
                continue;
            }
            let slot = (tok.0 - CONN_BASE) as u32;
            if writable && let Some(ev) = self.progress_send(slot) {
                if readable {
                    self.again.push(slot);
                }
                return Some(ev);
            }
            if readable {
                self.reading = Some((slot, 0));
            }
        }
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}
