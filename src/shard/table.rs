//! The connection table of a shard: slots, their generations, the free list, and the view
//! of it that fan-out queues into.
//!
//! A connection is named by a [`Token`] (slot + generation) so that an event or a queued
//! reference for a connection that has gone cannot reach the next one in the same slot. A
//! slot is reused only after the driver reports its release, so lists that name slots (a
//! topic's subscribers) are cleaned up in the turn a connection leaves, before any reuse.

use bytes::Bytes;

use crate::io::Token;
use crate::pubsub::fanout::{Queue, Refused, Subscribers};

use super::conn::Conn;

/// The table: every slot this shard has used, live or free.
#[derive(Debug, Default)]
pub struct ConnTable {
    /// The connection in each slot, if any.
    conns: Vec<Option<Conn>>,
    /// The generation each slot was last given (24 bits, as the drivers carry it).
    generations: Vec<u32>,
    /// Free slots, reused last-freed first.
    free: Vec<u32>,
}

impl ConnTable {
    /// A table with room for `capacity` connections reserved up front: untouched capacity
    /// costs address space, not memory, and growing by doubling would copy the table and
    /// leave the old copies resident in the allocator (measured: hundreds of bytes per idle
    /// connection).
    pub fn with_capacity(capacity: usize) -> Self {
        ConnTable {
            conns: Vec::with_capacity(capacity),
            generations: Vec::with_capacity(capacity),
            free: Vec::new(),
        }
    }

    /// Puts a new connection in a free slot; returns its token.
    pub fn insert(&mut self, tick: u32) -> Token {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let generation = self.generations[slot as usize].wrapping_add(1) & 0xff_ffff;
        self.generations[slot as usize] = generation;
        let token = Token { slot, generation };
        self.conns[slot as usize] = Some(Conn::new(token, tick));
        token
    }

    /// Takes the connection named by `token` out of its slot and frees the slot.
    pub fn remove(&mut self, token: Token) -> Option<Conn> {
        let slot = self.conns.get_mut(token.slot as usize)?;
        if slot.as_ref().is_none_or(|c| c.token != token) {
            return None;
        }
        let c = slot.take();
        self.free.push(token.slot);
        c
    }

    /// The live connection named by `token` (not a later one in the same slot).
    #[inline]
    pub fn get_mut(&mut self, token: Token) -> Option<&mut Conn> {
        self.conns
            .get_mut(token.slot as usize)
            .and_then(Option::as_mut)
            .filter(|c| c.token.generation == token.generation)
    }

    /// The connection in `slot`, whatever its generation (lists that name slots).
    #[inline]
    pub fn slot_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The connection in `slot`, whatever its generation.
    #[inline]
    pub fn slot(&self, slot: u32) -> Option<&Conn> {
        self.conns.get(slot as usize).and_then(Option::as_ref)
    }

    /// Every live connection.
    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.conns.iter().flatten()
    }

    /// Every live connection, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Conn> {
        self.conns.iter_mut().flatten()
    }
}

/// The table as fan-out sees it: a connection takes a batch while its unsent backlog is
/// under `limit`; queued connections join the flush list.
#[derive(Debug)]
pub struct Deliveries<'a> {
    /// The connections.
    pub conns: &'a mut ConnTable,
    /// The flush list of this turn.
    pub dirty: &'a mut Vec<u32>,
    /// `--send-queue-limit`.
    pub limit: usize,
}

/// An admitted connection's queue.
#[derive(Debug)]
pub struct ConnQueue<'a> {
    conn: &'a mut Conn,
    dirty: &'a mut Vec<u32>,
}

impl Queue for ConnQueue<'_> {
    #[inline]
    fn push(&mut self, frames: Bytes) {
        self.conn.push_data(frames, usize::MAX, self.dirty);
    }
}

impl Subscribers for Deliveries<'_> {
    type Queue<'b>
        = ConnQueue<'b>
    where
        Self: 'b;

    #[inline]
    fn admit(&mut self, slot: u32) -> Result<ConnQueue<'_>, Refused> {
        let Some(c) = self.conns.slot_mut(slot) else {
            return Err(Refused::Closed);
        };
        if !c.accepts_data() {
            return Err(Refused::Closed);
        }
        if c.queued as usize >= self.limit {
            return Err(Refused::Slow);
        }
        Ok(ConnQueue {
            conn: c,
            dirty: self.dirty,
        })
    }
}
