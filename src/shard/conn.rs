//! One connection as its shard sees it: phase, send queue, timers.
//!
//! The send queue holds complete frames as [`Bytes`]: a broadcast frame is the same
//! allocation for every subscriber, so queueing it costs a reference-count increment. The
//! queue is bounded in bytes (`send_queue_limit`); data frames past the bound go through
//! the slow-consumer policy; frames that must go out whatever the backlog (pongs, closes,
//! HTTP responses; see [`Conn::push_exempt`]) always pass, so a
//! close can still be sent to a client that is being dropped for being slow. What keeps
//! that bounded is the read side: a connection whose queue is backlogged
//! ([`Conn::backlogged`]) is not read until it drains, and while backlogged a new pong
//! replaces an unsent one instead of queueing behind it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::io::Token;
use crate::proto::Connection;

/// A server pong frame: FIN + pong opcode, unmasked, so at most 2 + 125 bytes. Server
/// pongs are queued alone (one per ping), so such an entry is a pong and nothing else.
fn is_pong(frame: &Bytes) -> bool {
    frame.len() <= 127 && frame.first() == Some(&0x8A)
}

/// A frame's length in 32 bits (frames are at most `--max-message-size`, 1 GiB at most).
fn len32(frame: &Bytes) -> u32 {
    u32::try_from(frame.len()).unwrap_or(u32::MAX)
}

/// Where an upgraded connection's messages go.
#[derive(Debug)]
pub enum Route {
    /// Simple mode: subscribed to `topic`, messages are published to it.
    Topic {
        /// The topic, in this shard's table.
        topic: crate::pubsub::TopicId,
        /// Whether the sender receives its own messages.
        echo: bool,
        /// Whether its messages are published (decided at the upgrade from its token and
        /// the namespace; a message it may not publish is dropped and counted).
        may_publish: bool,
        /// A refused message of this connection was logged already (one line per
        /// connection).
        refusal_logged: bool,
        /// Publishes it may still make (`--client-publish-rate`).
        bucket: super::session::PublishBucket,
    },
    /// Messages come back to the sender.
    Echo,
    /// Mux mode: JSON commands, any number of topics (see `shard::mux`).
    Mux(super::MuxConn),
}

/// What stage the connection is in.
// Not boxed: nearly every connection spends its life in `Ws`, so boxing would add an
// allocation per connection and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Phase {
    /// Plain HTTP: reading requests (each head bounded by `max_header_bytes`) and answering
    /// them in order, on a keep-alive connection any number of them (see `shard::http`).
    Http {
        /// Received bytes not parsed yet: the current request's head so far, and whatever
        /// was pipelined after it. For a publish whose head is complete and whose body is
        /// still arriving, the body (growing to its Content-Length at most).
        buf: Vec<u8>,
        /// How far the search for the end of the head at the start of `buf` got
        /// (`proto::handshake::HeadScan`): each receive scans only its own bytes.
        scan: crate::proto::handshake::HeadScan,
        /// The current request is `HEAD`: its answer carries headers only.
        head_only: bool,
        /// Set once a publish's head is complete: what its body is for.
        body: Option<Box<super::http::PendingBody>>,
        /// Keep-alive bookkeeping: timers, requests served, the current request's answer.
        flow: super::http::Flow,
    },
    /// Upgraded: frames go through the protocol core.
    Ws {
        /// The RFC 6455 state machine (server role).
        ws: Connection,
        /// What messages do.
        route: Route,
    },
    /// Answered or failed: nothing more is read, queued bytes are flushed, then closed.
    Done,
}

/// A connection slot's state.
#[derive(Debug)]
pub struct Conn {
    /// The driver's name for this connection.
    pub token: Token,
    /// HTTP, WebSocket or finished.
    pub phase: Phase,
    /// Frames waiting to be sent, in order (not including the send in flight).
    pub queue: VecDeque<Bytes>,
    /// Bytes in `queue` plus the send in flight: what the limit is checked against. 32 bits
    /// (the limit is at most 1 GiB, and past half of it reading pauses): the slot stays
    /// within its size budget (see the test below).
    pub queued: u32,
    /// Bytes of the send in flight; 0 when none.
    pub inflight: u32,
    /// A send is outstanding at the driver.
    pub sending: bool,
    /// Listed in the shard's dirty list for this turn.
    pub dirty: bool,
    /// Close once everything queued has been written.
    pub close_after_flush: bool,
    /// The driver was asked to release it; waiting for `Released`.
    pub releasing: bool,
    /// Reading is paused: the queue is past [`Conn::backlogged`] (backpressure).
    pub paused: bool,
    /// Accepted on the admin listener (`--admin-listen`): only the admin routes.
    pub admin: bool,
    /// A mux-mode connection's envelope format ([`Format::Mux`], or [`Format::Mux2`] with
    /// `?envelope=2`). Kept here, in the struct's padding, rather than in the mux state,
    /// where it would grow every connection slot by 8 bytes.
    pub mux_format: crate::pubsub::Format,
    /// Tick of the last received byte.
    pub last_rx: u32,
    /// Tick of the last ping sent.
    pub last_ping: u32,
    /// Tick after which a closing connection is dropped without waiting any more (0: none).
    pub deadline: u32,
    /// Messages dropped for this subscriber (policy `drop`), for its closing log line
    /// (saturating).
    pub dropped: u32,
    /// The verified token this connection presented (`None`: anonymous).
    pub session: Option<Box<super::session::Session>>,
    /// Tick of the next access-control event (0: none): for a mux connection waiting for
    /// its `auth` message, its deadline; with a token, when `refresh_required` is due, then
    /// its expiry. Compared by the once-per-tick timer pass.
    pub auth_at: u32,
}

impl Conn {
    /// A freshly accepted connection, reading its request head.
    pub fn new(token: Token, tick: u32) -> Self {
        Conn {
            token,
            phase: Phase::Http {
                buf: Vec::new(),
                scan: crate::proto::handshake::HeadScan::default(),
                head_only: false,
                body: None,
                flow: super::http::Flow::new(tick),
            },
            queue: VecDeque::new(),
            queued: 0,
            inflight: 0,
            sending: false,
            dirty: false,
            close_after_flush: false,
            releasing: false,
            mux_format: crate::pubsub::Format::Mux,
            paused: false,
            admin: false,
            last_rx: tick,
            last_ping: tick,
            deadline: 0,
            dropped: 0,
            session: None,
            auth_at: 0,
        }
    }

    /// Whether data frames may still be queued (upgraded, open, not closing).
    pub fn accepts_data(&self) -> bool {
        !self.close_after_flush
            && !self.releasing
            && matches!(&self.phase, Phase::Ws { ws, .. } if ws.state() == crate::proto::conn::State::Open)
    }

    /// Queues a frame exempt from the send-queue limit: the protocol's own replies (pongs,
    /// closes), the 101 and HTTP responses, which must go out whatever the backlog. What
    /// bounds them is the read side: a backlogged connection is not read (see the module doc).
    pub fn push_exempt(&mut self, frame: Bytes, dirty: &mut Vec<u32>) {
        if frame.is_empty() {
            return;
        }
        self.queued = self.queued.saturating_add(len32(&frame));
        self.queue.push_back(frame);
        self.mark_dirty(dirty);
    }

    /// Queues a pong. While the queue is backlogged and its last unsent frame is a pong, the
    /// new one replaces it (RFC 6455 §5.5.3 allows answering only the most recent ping), so
    /// a client that pings and never reads holds at most one pending pong past that point.
    /// Below it every ping gets its pong (Autobahn 2.10: ten pings, ten pongs).
    pub fn push_pong(&mut self, pong: Bytes, limit: usize, dirty: &mut Vec<u32>) {
        if self.backlogged(limit)
            && let Some(last) = self.queue.back_mut()
            && is_pong(last)
        {
            self.queued = (self.queued - len32(last)).saturating_add(len32(&pong));
            *last = pong;
            return;
        }
        self.push_exempt(pong, dirty);
    }

    /// Whether reading from this connection should stop: more than half its limit queued,
    /// or more frames than one send carries (each queue entry costs memory beyond its
    /// bytes: a flood of empty frames would otherwise hold far more than the limit).
    #[inline]
    pub fn backlogged(&self, limit: usize) -> bool {
        self.queued as usize > limit / 2 || self.queue.len() > super::MAX_FRAMES_PER_SEND
    }

    /// Whether a paused connection drained enough to be read again (a quarter of the
    /// pause point: hysteresis, so it is not paused and resumed every turn).
    #[inline]
    pub fn drained(&self, limit: usize) -> bool {
        self.queued as usize <= limit / 4 && self.queue.len() <= super::MAX_FRAMES_PER_SEND / 4
    }

    /// Whether a paused connection may be read again: drained, and not an HTTP connection
    /// waiting for a deferred answer (which keeps later pipelined bytes unparsed, so reading
    /// more would only grow its buffer).
    #[inline]
    pub fn may_resume(&self, limit: usize) -> bool {
        self.paused
            && self.drained(limit)
            && !matches!(&self.phase, Phase::Http { flow, .. } if flow.deferred())
    }

    /// Queues a data frame if it fits under `limit`; returns false when it does not.
    #[inline]
    pub fn push_data(&mut self, frame: Bytes, limit: usize, dirty: &mut Vec<u32>) -> bool {
        if self.queued as usize + frame.len() > limit {
            return false;
        }
        self.queued = self.queued.saturating_add(len32(&frame));
        self.queue.push_back(frame);
        self.mark_dirty(dirty);
        true
    }

    /// Closes a WebSocket on the server's initiative: the close frame (`code`, `reason`) goes
    /// out after what is queued (exempt from the limit: it must reach a backlogged peer), then
    /// the connection is released once flushed, or at tick `deadline` at the latest. The one
    /// way every server-side close (slow consumer, error budget, token expiry, API
    /// disconnect) is started.
    pub fn close_ws(
        &mut self,
        code: u16,
        reason: &str,
        scratch: &mut bytes::BytesMut,
        dirty: &mut Vec<u32>,
        deadline: u32,
    ) {
        if let Phase::Ws { ws, .. } = &mut self.phase {
            ws.close(code, reason, scratch);
        }
        let out = scratch.split().freeze();
        self.push_exempt(out, dirty);
        self.close_after_flush = true;
        self.deadline = deadline;
    }

    /// Drops the frames not yet handed to the kernel (used when disconnecting a slow
    /// consumer: its close frame should not wait behind data it will never read).
    pub fn discard_queued(&mut self) {
        self.queue.clear();
        self.queued = self.inflight;
    }

    /// Puts the connection on this turn's flush list once.
    #[inline]
    pub fn mark_dirty(&mut self, dirty: &mut Vec<u32>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(self.token.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Idle memory per connection depends on it (docs/DESIGN.md, "Memory per idle
    /// connection"): the request state lives in the padding of the `Ws` variant.
    #[test]
    fn conn_stays_240_bytes() {
        assert!(
            std::mem::size_of::<super::Conn>() <= 240,
            "{}",
            std::mem::size_of::<super::Conn>()
        );
    }
}
