//! A set of ringcast mux-mode client connections on one mio poll, for the `recover`
//! subcommand: send commands (masked text frames), receive whole messages, answer pings.
//! Not the measurement path of `run` (that is [`crate::rx`] and the receive threads): here
//! a few thousand connections exchange a few thousand messages each, and every message
//! is handed whole to a [`Handler`].
//!
//! Server messages must be single frames (ringcast never fragments what it sends); a
//! fragmented one ends that connection with a reason, as does any protocol error.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Events, Interest, Poll, Token};
use ringcast::proto::close::close_code;
use ringcast::proto::frame::{FrameHeader, OpCode, encode_close, encode_frame};

use crate::connect::Established;

/// The largest server message a connection takes (more ends it).
pub const MAX_MESSAGE: u64 = 16 << 20;

/// What the owner of a [`MuxSet`] does with what arrives.
pub trait Handler {
    /// A whole message on connection `i` (`text`: its opcode), received at `now`.
    fn message(&mut self, i: usize, text: bool, payload: &[u8], now: Instant);
    /// Connection `i` ended (closed, reset, protocol error): no more messages.
    fn ended(&mut self, i: usize, why: &str);
    /// Whether the current phase is over ([`MuxSet::pump`] returns).
    fn finished(&self) -> bool;
}

/// One connection.
#[derive(Debug)]
struct MuxConn {
    stream: mio::net::TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Why it ended, once it has.
    ended: Option<String>,
}

/// The connections and their poll.
#[derive(Debug)]
pub struct MuxSet {
    poll: Poll,
    events: Events,
    conns: Vec<MuxConn>,
    scratch: Vec<u8>,
    frame: BytesMut,
}

impl MuxSet {
    /// An empty set.
    pub fn new() -> io::Result<Self> {
        Ok(MuxSet {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            scratch: vec![0; 64 * 1024],
            frame: BytesMut::with_capacity(512),
        })
    }

    /// Adds an upgraded connection; returns its index (bytes after the 101 are kept and
    /// handed over on the next [`MuxSet::pump`]).
    pub fn add(&mut self, e: Established) -> io::Result<usize> {
        let i = self.conns.len();
        let mut stream = mio::net::TcpStream::from_std(e.stream);
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns.push(MuxConn {
            stream,
            inbuf: e.leftover,
            out: Vec::new(),
            ended: None,
        });
        Ok(i)
    }

    /// Connections in the set.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Sends a text frame (a command) on connection `i`, behind anything still queued.
    pub fn send_text(&mut self, i: usize, text: &[u8]) {
        self.frame.clear();
        encode_frame(
            &mut self.frame,
            true,
            OpCode::Text,
            Some(fastrand::u32(..).to_ne_bytes()),
            text,
        );
        if let Some(c) = self.conns.get_mut(i) {
            queue_and_flush(c, &self.frame);
        }
    }

    /// Receives until `h.finished()` or `deadline`; true when finished in time.
    pub fn pump(&mut self, h: &mut dyn Handler, deadline: Instant) -> io::Result<bool> {
        let now = Instant::now();
        for i in 0..self.conns.len() {
            self.process(i, h, now);
        }
        while !h.finished() {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            match self.poll.poll(&mut self.events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let ready: Vec<(usize, bool, bool)> = self
                .events
                .iter()
                .map(|e| {
                    (
                        e.token().0,
                        e.is_readable() || e.is_read_closed(),
                        e.is_writable(),
                    )
                })
                .collect();
            for (i, readable, writable) in ready {
                if writable && let Some(c) = self.conns.get_mut(i) {
                    flush(c);
                }
                if readable {
                    self.read(i, h, now);
                }
            }
        }
        Ok(true)
    }

    /// Sends a close frame on every open connection and shuts them all: "disconnected at once".
    pub fn close_all(&mut self) {
        for c in &mut self.conns {
            if c.ended.is_none() {
                self.frame.clear();
                encode_close(
                    &mut self.frame,
                    Some(fastrand::u32(..).to_ne_bytes()),
                    close_code::NORMAL,
                    "",
                );
                queue_and_flush(c, &self.frame);
                c.ended = Some("closed by us".into());
            }
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }

    /// Reads connection `i` until the kernel has nothing more, handing over whole messages.
    fn read(&mut self, i: usize, h: &mut dyn Handler, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(i) else {
                return;
            };
            if c.ended.is_some() {
                return;
            }
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.end(i, h, "eof without a close frame".into());
                    return;
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    self.process(i, h, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.end(i, h, format!("io: {e}"));
                    return;
                }
            }
        }
    }

    /// Hands over every whole frame in connection `i`'s input.
    fn process(&mut self, i: usize, h: &mut dyn Handler, now: Instant) {
        let mut pos = 0;
        let verdict = loop {
            let Some(c) = self.conns.get_mut(i) else {
                return;
            };
            if c.ended.is_some() {
                break None;
            }
            let (hd, hl) = match FrameHeader::parse(&c.inbuf[pos..]) {
                Ok(Some(x)) => x,
                Ok(None) => break None,
                Err(e) => break Some(format!("protocol: {e}")),
            };
            if hd.mask.is_some() {
                break Some("protocol: masked server frame".into());
            }
            if hd.payload_len > MAX_MESSAGE {
                break Some(format!("message of {} bytes (too large)", hd.payload_len));
            }
            let len = hd.payload_len as usize;
            if c.inbuf.len() - pos < hl + len {
                break None;
            }
            let payload = &c.inbuf[pos + hl..pos + hl + len];
            pos += hl + len;
            match hd.opcode {
                OpCode::Text | OpCode::Binary if hd.fin => {
                    h.message(i, hd.opcode == OpCode::Text, payload, now);
                }
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    break Some("fragmented message (recover takes single frames)".into());
                }
                OpCode::Ping => {
                    let ping = payload.to_vec();
                    self.frame.clear();
                    encode_frame(
                        &mut self.frame,
                        true,
                        OpCode::Pong,
                        Some(fastrand::u32(..).to_ne_bytes()),
                        &ping,
                    );
                    if let Some(c) = self.conns.get_mut(i) {
                        queue_and_flush(c, &self.frame);
                    }
                }
                OpCode::Close => {
                    let code = (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    break Some(format!(
                        "closed by the server ({})",
                        code.map_or("no code".into(), |c| c.to_string())
                    ));
                }
                _ => {} // pong
            }
        };
        if let Some(c) = self.conns.get_mut(i) {
            c.inbuf.drain(..pos.min(c.inbuf.len()));
        }
        if let Some(why) = verdict {
            self.end(i, h, why);
        }
    }

    fn end(&mut self, i: usize, h: &mut dyn Handler, why: String) {
        if let Some(c) = self.conns.get_mut(i)
            && c.ended.is_none()
        {
            h.ended(i, &why);
            c.ended = Some(why);
            let _ = c.stream.shutdown(Shutdown::Both);
            c.inbuf = Vec::new();
        }
    }
}

/// Writes `bytes` behind what is queued; what the kernel does not take waits for WRITABLE.
fn queue_and_flush(c: &mut MuxConn, bytes: &[u8]) {
    c.out.extend_from_slice(bytes);
    flush(c);
}

fn flush(c: &mut MuxConn) {
    let mut done = 0;
    while done < c.out.len() {
        match c.stream.write(&c.out[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: the rest goes on WRITABLE; another error: the read side sees it.
            Err(_) => break,
        }
    }
    c.out.drain(..done);
}
