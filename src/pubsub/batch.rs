//! Per-turn batching of published frames, one contiguous buffer per topic, bounded in bytes.
//!
//! Every message published on a topic during one loop turn (or one write-delay window) is
//! framed (once) at the end of that topic's buffer. When the turn ends the buffer is frozen
//! into one [`Bytes`] and each subscriber's queue gets that one reference: one
//! reference-count increment, one queue entry and one iovec per subscriber per batch,
//! however many messages the batch carried. The kernel then copies one contiguous run per
//! subscriber instead of walking one small iovec per message.
//!
//! A batch is bounded by `--max-batch-bytes`: a frame that would take it past the bound
//! seals it (it is queued as a [`Ready`] batch, fanned out at the end of the turn even
//! inside a write-delay window) and starts a new one. So a subscriber's queue grows by at
//! most one bounded batch at a time, and slowness is judged on what it has not read, not on
//! how much a turn happened to carry (see [`super::fanout`]).
//!
//! A publisher in simple or mux mode must not receive its own messages (unless it asked
//! for echo), so the batch remembers which byte ranges and message indices each such
//! publisher wrote; that subscriber gets the batch minus its own parts, as slices of the
//! same buffer (no copy), and a mux-mode publisher gets slices of the shard's one envelope
//! run of the batch: parts are runs of messages, located in any format through its message
//! boundaries. A batch is keyed by [`TopicId`] (the topic's open batch is found through
//! the topic table, no hash) and carries its message boundaries ([`Batch::ends`]), which
//! the other formats and the bus use.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::proto::frame::{MAX_HEADER_LEN, OpCode, encode_frame};

use super::topic::{NO_BATCH, TopicId, Topics};

/// Smallest reservation for a topic's batch buffer; it grows geometrically from there.
const MIN_RESERVE: usize = 256;
/// Batch buffers (with their spare capacity) kept for reuse after a turn; a turn that named
/// more topics frees the rest.
const KEEP_PENDING: usize = 64;

/// Default bound of one batch, in framed bytes (`--max-batch-bytes`).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 128 * 1024;

/// Where a batch was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// By a connection of this shard (simple mode, mux mode or HTTP).
    Shard(u16),
    /// By a thread that is not a shard (a test, an embedding program).
    External,
    /// By another node, through the broker (never sent back to it).
    Broker,
    /// By this node, back from the broker numbered (Redis, topic with history): the home
    /// delivers it then, in the broker's order.
    Echo,
}

impl Origin {
    /// Whether the batch came from the broker (and must not go back to it).
    pub fn is_broker(self) -> bool {
        matches!(self, Origin::Broker | Origin::Echo)
    }
}

/// The messages one topic got in one turn of one shard: framed once, shared by every
/// subscriber and every shard it goes to (one allocation for the frames, one for this).
#[derive(Debug)]
pub struct Batch {
    /// Who published it.
    pub origin: Origin,
    /// Complete server frames (FIN, unmasked), back to back.
    pub frames: Bytes,
    /// Message boundaries: the end offset of each message in `frames`, ascending.
    pub ends: Box<[u32]>,
    /// Publishers that must not receive their own messages, wherever they are: each
    /// receiving shard applies the entries that name it ([`Exclusions::build`]).
    pub own: Box<[Own]>,
    /// The offset of the first message (message `i` has `offset + i`), assigned by the
    /// topic's home shard when the topic has history; 0: no offsets.
    pub offset: u64,
    /// The messages (indices, ascending) published as JSON values: mux envelopes carry
    /// them as JSON, not as strings. Usually empty.
    pub json: Box<[u32]>,
    /// The topic's epoch, when the broker numbered the batch (Redis, topic with history):
    /// the home adopts it with the offsets.
    pub epoch: Option<[u8; 8]>,
}

/// Messages of a batch that one publisher wrote and must not receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// The publisher's shard.
    pub shard: u16,
    /// Its connection slot there.
    pub slot: u32,
    /// Message indices (0-based, in publish order).
    pub msgs: Range<u32>,
}

impl Batch {
    /// A batch of complete frames with the end offset of each message.
    pub fn new(origin: Origin, frames: Bytes, ends: Box<[u32]>) -> Self {
        Batch {
            origin,
            frames,
            ends,
            own: Box::new([]),
            offset: 0,
            json: Box::new([]),
            epoch: None,
        }
    }

    /// Whether message `i` was published as a JSON value.
    pub fn is_json(&self, i: u32) -> bool {
        !self.json.is_empty() && self.json.binary_search(&i).is_ok()
    }

    /// Frames `payload` as a batch of one message (publishers that are not shards).
    pub fn single(origin: Origin, opcode: OpCode, payload: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(payload.len() + MAX_HEADER_LEN);
        encode_frame(&mut buf, true, opcode, None, payload);
        let len = buf.len() as u32;
        Batch::new(origin, buf.freeze(), Box::new([len]))
    }

    /// The same batch without its first `n` messages (a head over the same frames).
    pub fn without_first(&self, n: u32) -> Batch {
        let n = n.min(self.count());
        let base = msg_start(&self.ends, n);
        let ends: Box<[u32]> = self
            .ends
            .get(n as usize..)
            .unwrap_or_default()
            .iter()
            .map(|&e| e - base as u32)
            .collect();
        let mut b = Batch::new(self.origin, self.frames.slice(base..), ends);
        b.own = self
            .own
            .iter()
            .filter(|o| o.msgs.end > n)
            .map(|o| Own {
                shard: o.shard,
                slot: o.slot,
                msgs: o.msgs.start.saturating_sub(n)..o.msgs.end - n,
            })
            .collect();
        b.json = self
            .json
            .iter()
            .filter(|&&i| i >= n)
            .map(|&i| i - n)
            .collect();
        if self.offset != 0 {
            b.offset = self.offset + u64::from(n);
        }
        b.epoch = self.epoch;
        b
    }

    /// How many messages it holds.
    pub fn count(&self) -> u32 {
        self.ends.len() as u32
    }
}

/// Byte offset where message `i` of a run with message ends `ends` starts (`i ==
/// ends.len()`: the end of the run).
#[inline]
pub fn msg_start(ends: &[u32], i: u32) -> usize {
    match i.checked_sub(1) {
        None => 0,
        Some(j) => ends.get(j as usize).copied().unwrap_or(0) as usize,
    }
}

/// The frames of one topic published during the current turn.
#[derive(Debug, Default)]
struct Pending {
    topic: Option<TopicId>,
    buf: BytesMut,
    ends: Vec<u32>,
    /// What publishers that must not receive them wrote: (slot, message indices).
    own: Vec<(u32, Range<u32>)>,
    /// Messages published as JSON values.
    json: Vec<u32>,
}

/// A piece of a batch an excluded publisher receives: a run of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Message indices (0-based, in publish order); in any format, the bytes are found
    /// through that format's message boundaries.
    pub msgs: Range<u32>,
}

/// A publisher that gets the batch minus its own messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// Its connection slot.
    pub slot: u32,
    /// The parts it gets: a range of [`Ready::parts`].
    pub parts: Range<usize>,
    /// How many messages those parts hold.
    pub count: u32,
}

/// A topic's batch, ready to be queued (or forwarded to the topic's home shard).
#[derive(Debug)]
pub struct Ready {
    /// The topic, in this shard's table.
    pub topic: TopicId,
    /// The frames, message boundaries and exclusions; shared with the bus.
    pub batch: Arc<Batch>,
}

/// The exclusions of one batch on one shard: its publishers there that must not receive
/// their own messages, and subscribers behind a join threshold ([`super::topic::Gate`]).
/// Scratch kept by the fan-out (built only for batches that have any).
#[derive(Debug, Default)]
pub struct Exclusions {
    own: Vec<(u32, Range<u32>)>,
    /// The parts every excluded subscriber gets, back to back (see [`Exclusion::parts`]).
    pub parts: Vec<Part>,
    /// Excluded subscribers, sorted by slot.
    pub excluded: Vec<Exclusion>,
}

impl Exclusions {
    /// Builds the exclusions of `batch` on shard `shard`, plus `extra` (slot, messages it
    /// must not get).
    pub fn build(
        &mut self,
        batch: &Batch,
        shard: u16,
        extra: impl IntoIterator<Item = (u32, Range<u32>)>,
    ) {
        self.own.clear();
        self.own.extend(
            batch
                .own
                .iter()
                .filter(|o| o.shard == shard)
                .map(|o| (o.slot, o.msgs.clone())),
        );
        self.own.extend(extra);
        exclusions_into(
            &mut self.own,
            batch.count(),
            &mut self.parts,
            &mut self.excluded,
        );
    }
}

/// The batches of one shard.
#[derive(Debug)]
pub struct Batcher {
    origin: Origin,
    pending: Vec<Pending>,
    live: usize,
    /// Batches sealed at the byte bound, in sealing order; they go out before the open ones.
    sealed: VecDeque<Ready>,
    max_bytes: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher::new(Origin::Shard(0), DEFAULT_MAX_BATCH_BYTES)
    }
}

impl Batcher {
    /// A batcher whose batches hold at most `max_bytes` of frames (or one frame, if larger).
    pub fn new(origin: Origin, max_bytes: usize) -> Self {
        Batcher {
            origin,
            pending: Vec::new(),
            live: 0,
            sealed: VecDeque::new(),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Frames `payload` once at the end of `topic`'s batch (the topic must be live in
    /// `topics`: its open batch is found through it, no hash). `exclude`: the publisher's
    /// slot when it must not receive its own message.
    pub fn append(
        &mut self,
        topics: &mut Topics,
        topic: TopicId,
        opcode: OpCode,
        payload: &[u8],
        exclude: Option<u32>,
    ) {
        self.append_flagged(topics, topic, opcode, payload, exclude, false);
    }

    /// [`Batcher::append`], `json`: a text message published as a JSON value.
    pub fn append_flagged(
        &mut self,
        topics: &mut Topics,
        topic: TopicId,
        opcode: OpCode,
        payload: &[u8],
        exclude: Option<u32>,
        json: bool,
    ) {
        let Some(t) = topics.get_mut(topic) else {
            return;
        };
        let i = if t.batch == NO_BATCH {
            if self.live == self.pending.len() {
                self.pending.push(Pending::default());
            }
            let i = self.live;
            self.live += 1;
            self.pending[i].topic = Some(topic);
            t.batch = i as u32;
            i
        } else {
            t.batch as usize
        };
        let origin = self.origin;
        let p = &mut self.pending[i];
        let need = payload.len() + MAX_HEADER_LEN;
        if !p.ends.is_empty() && p.buf.len() + need > self.max_bytes {
            self.sealed.push_back(seal(origin, p, topic));
        }
        if p.buf.capacity() - p.buf.len() < need {
            // Geometric growth from what the batch holds: a topic named once in a turn costs
            // about its message, not a whole chunk (a client that names thousands of topics
            // in one turn must not turn 60-byte publishes into 16 KiB reservations each); a
            // busy topic reaches chunk-sized reservations after a few messages and keeps its
            // spare capacity across turns.
            let grow = need.max(p.buf.len()).max(MIN_RESERVE);
            p.buf.reserve(grow.min(self.max_bytes.max(need)));
        }
        encode_frame(&mut p.buf, true, opcode, None, payload);
        let msg = p.ends.len() as u32;
        p.ends.push(p.buf.len() as u32);
        if json {
            p.json.push(msg);
        }
        if let Some(slot) = exclude {
            match p.own.last_mut() {
                Some((s, m)) if *s == slot && m.end == msg => m.end = msg + 1,
                _ => p.own.push((slot, msg..msg + 1)),
            }
        }
    }

    /// Bytes reserved by the open batch buffers (tests: memory per distinct topic).
    #[cfg(test)]
    fn reserved(&self) -> usize {
        self.pending.iter().map(|p| p.buf.capacity()).sum()
    }

    /// True when nothing was published since the last [`Batcher::take`].
    pub fn is_empty(&self) -> bool {
        self.live == 0 && self.sealed.is_empty()
    }

    /// Takes the batches sealed at the byte bound (the open ones stay).
    pub fn take_sealed(&mut self, mut f: impl FnMut(Ready)) {
        while let Some(r) = self.sealed.pop_front() {
            f(r);
        }
    }

    /// Takes every batch: the sealed ones first, then the open ones; closes each topic's
    /// open batch in `topics` (the caller drops topics nothing refers to any more once it
    /// has fanned the batches out: [`Topics::drop_if_unused`]).
    pub fn take(&mut self, topics: &mut Topics, mut f: impl FnMut(&mut Topics, Ready)) {
        while let Some(r) = self.sealed.pop_front() {
            f(topics, r);
        }
        let origin = self.origin;
        for i in 0..self.live {
            let p = &mut self.pending[i];
            let Some(topic) = p.topic.take() else {
                continue;
            };
            if let Some(t) = topics.get_mut(topic) {
                t.batch = NO_BATCH;
            }
            if !p.ends.is_empty() {
                let r = seal(origin, p, topic);
                f(topics, r);
            }
        }
        self.live = 0;
        self.pending.truncate(KEEP_PENDING);
    }
}

/// Freezes `p`'s frames into a ready batch and empties it (keeping its spare capacity).
fn seal(origin: Origin, p: &mut Pending, topic: TopicId) -> Ready {
    let frames = p.buf.split().freeze();
    let ends: Box<[u32]> = p.ends.as_slice().into();
    p.ends.clear();
    let shard = match origin {
        Origin::Shard(s) => s,
        Origin::External | Origin::Broker | Origin::Echo => u16::MAX,
    };
    let own: Box<[Own]> = p
        .own
        .drain(..)
        .map(|(slot, msgs)| Own { shard, slot, msgs })
        .collect();
    let mut batch = Batch::new(origin, frames, ends);
    batch.own = own;
    if !p.json.is_empty() {
        batch.json = p.json.as_slice().into();
        p.json.clear();
    }
    Ready {
        topic,
        batch: Arc::new(batch),
    }
}

/// For each slot with messages of a batch of `count` messages that it must not receive
/// (`own`: (slot, message range), any order, ranges may overlap): the complement, as runs
/// of messages. `own` is consumed; `parts` and `out` are replaced.
fn exclusions_into(
    own: &mut Vec<(u32, Range<u32>)>,
    count: u32,
    parts: &mut Vec<Part>,
    out: &mut Vec<Exclusion>,
) {
    parts.clear();
    out.clear();
    if own.is_empty() {
        return;
    }
    own.sort_by_key(|(slot, m)| (*slot, m.start));
    let mut i = 0;
    while i < own.len() {
        let slot = own[i].0;
        let first = parts.len();
        let mut at = 0;
        let mut kept = 0;
        while i < own.len() && own[i].0 == slot {
            let m = &own[i].1;
            let start = m.start.min(count);
            if start > at {
                parts.push(Part { msgs: at..start });
                kept += start - at;
            }
            at = at.max(m.end.min(count));
            i += 1;
        }
        if at < count {
            parts.push(Part { msgs: at..count });
            kept += count - at;
        }
        out.push(Exclusion {
            slot,
            parts: first..parts.len(),
            count: kept,
        });
    }
    own.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::topic::TopicOptions;

    /// A table with `names` interned and one subscriber each (so they stay).
    fn table(names: &[&str]) -> (Topics, Vec<TopicId>) {
        let mut t = Topics::default();
        let ids = names
            .iter()
            .map(|n| {
                let id = t.intern(n, TopicOptions::OPEN);
                t.join(id, 1000, super::super::Format::Plain);
                id
            })
            .collect();
        (t, ids)
    }

    /// The exclusions of `r` on its origin shard.
    fn excl(r: &Ready) -> Exclusions {
        let mut x = Exclusions::default();
        let shard = match r.batch.origin {
            Origin::Shard(s) => s,
            Origin::External | Origin::Broker | Origin::Echo => u16::MAX,
        };
        x.build(&r.batch, shard, []);
        x
    }

    fn bytes_of(r: &Ready, x: &Exclusions, e: &Exclusion) -> (Vec<u8>, Vec<u32>) {
        let ends = &r.batch.ends;
        let mut bytes = Vec::new();
        let mut msgs = Vec::new();
        for p in &x.parts[e.parts.clone()] {
            let (a, b) = (msg_start(ends, p.msgs.start), msg_start(ends, p.msgs.end));
            bytes.extend_from_slice(&r.batch.frames[a..b]);
            msgs.extend(p.msgs.clone());
        }
        (bytes, msgs)
    }

    #[test]
    fn one_buffer_per_topic_per_turn_with_boundaries() {
        let (mut topics, ids) = table(&["a", "z"]);
        let mut b = Batcher::default();
        b.append(&mut topics, ids[0], OpCode::Text, b"1", None);
        b.append(&mut topics, ids[1], OpCode::Text, b"x", None);
        b.append(&mut topics, ids[0], OpCode::Binary, b"22", None);
        let mut got = Vec::new();
        b.take(&mut topics, |_, r| {
            got.push((
                r.topic,
                r.batch.frames.to_vec(),
                r.batch.ends.to_vec(),
                excl(&r).excluded.len(),
            ))
        });
        assert_eq!(
            got,
            vec![
                (
                    ids[0],
                    vec![0x81, 1, b'1', 0x82, 2, b'2', b'2'],
                    vec![3, 7],
                    0
                ),
                (ids[1], vec![0x81, 1, b'x'], vec![3], 0),
            ]
        );
        assert!(b.is_empty());
        let mut n = 0;
        b.take(&mut topics, |_, _| n += 1);
        assert_eq!(n, 0, "a taken batch does not come back");
        b.append(&mut topics, ids[1], OpCode::Text, b"y", None);
        b.take(&mut topics, |_, r| n += r.batch.count());
        assert_eq!(n, 1, "the topic's batch slot was reset and reused");
    }

    #[test]
    fn publishers_get_the_batch_minus_their_own_messages() {
        let (mut topics, ids) = table(&["t"]);
        let t = ids[0];
        let mut b = Batcher::default();
        b.append(&mut topics, t, OpCode::Text, b"a", Some(7)); // 7's
        b.append(&mut topics, t, OpCode::Text, b"b", Some(7)); // 7's, merged
        b.append(&mut topics, t, OpCode::Text, b"c", Some(9)); // 9's
        b.append(&mut topics, t, OpCode::Text, b"d", None); // nobody excluded
        b.append(&mut topics, t, OpCode::Text, b"e", Some(7)); // 7's again
        let mut seen = 0;
        b.take(&mut topics, |_, r| {
            seen += 1;
            assert_eq!(r.batch.count(), 5);
            let x = excl(&r);
            let of = |slot: u32| {
                let e = x
                    .excluded
                    .iter()
                    .find(|e| e.slot == slot)
                    .expect("excluded");
                let (bytes, msgs) = bytes_of(&r, &x, e);
                (bytes, msgs, e.count)
            };
            assert_eq!(
                of(7),
                (vec![0x81, 1, b'c', 0x81, 1, b'd'], vec![2, 3], 2),
                "7 gets c and d"
            );
            assert_eq!(
                of(9),
                (
                    vec![0x81, 1, b'a', 0x81, 1, b'b', 0x81, 1, b'd', 0x81, 1, b'e'],
                    vec![0, 1, 3, 4],
                    4
                )
            );
        });
        assert_eq!(seen, 1);
    }

    #[test]
    fn a_batch_is_sealed_at_its_byte_bound() {
        let (mut topics, ids) = table(&["t"]);
        let t = ids[0];
        let mut b = Batcher::new(Origin::Shard(3), 1024);
        for i in 0..10u8 {
            b.append(&mut topics, t, OpCode::Binary, &[i; 300], Some(1));
        }
        let mut got = Vec::new();
        b.take_sealed(|r| got.push((r.batch.count(), r.batch.frames.len(), r.batch.origin)));
        assert_eq!(
            got,
            vec![(3, 3 * 304, Origin::Shard(3)); 3],
            "three full batches sealed, in order"
        );
        got.clear();
        b.take(&mut topics, |_, r| {
            got.push((r.batch.count(), r.batch.frames.len(), r.batch.origin))
        });
        assert_eq!(
            got,
            vec![(1, 304, Origin::Shard(3))],
            "the open one follows"
        );
        // A message larger than the bound makes a batch of its own.
        b.append(&mut topics, t, OpCode::Binary, &[0; 2000], None);
        b.append(&mut topics, t, OpCode::Binary, &[0; 10], None);
        let mut sizes = Vec::new();
        b.take(&mut topics, |_, r| {
            sizes.push((r.batch.count(), r.batch.frames.len()))
        });
        assert_eq!(sizes, vec![(1, 2004), (1, 12)]);
    }

    #[test]
    fn a_topic_dropped_mid_turn_goes_once_its_batch_is_taken() {
        let mut topics = Topics::default();
        let t = topics.intern("t", TopicOptions::OPEN);
        topics.join(t, 1, super::super::Format::Plain);
        let mut b = Batcher::default();
        b.append(&mut topics, t, OpCode::Text, b"x", None);
        topics.leave(t, 1, super::super::Format::Plain);
        topics.compact(t);
        assert!(topics.get(t).is_some(), "kept while its batch is open");
        let mut n = 0;
        b.take(&mut topics, |_, _| n += 1);
        assert_eq!(n, 1);
        topics.drop_if_unused(t);
        assert!(topics.get(t).is_none(), "dropped once its batch is closed");
    }

    #[test]
    fn single_message_batches() {
        let b = Batch::single(Origin::External, OpCode::Text, b"hi");
        assert_eq!(
            (&b.frames[..], &b.ends[..]),
            (&[0x81, 2, b'h', b'i'][..], &[4][..])
        );
        assert_eq!(msg_start(&b.ends, 0), 0);
        assert_eq!(msg_start(&b.ends, 1), 4);
    }

    #[test]
    fn many_topics_in_one_turn_cost_about_their_messages() {
        // A client naming 10,000 topics in one turn used to get a 16 KiB reservation per
        // topic (160 MB for 600 KB of publishes).
        let mut topics = Topics::default();
        let ids: Vec<TopicId> = (0..10_000)
            .map(|i| topics.intern(&format!("t{i}"), TopicOptions::OPEN))
            .collect();
        let mut b = Batcher::default();
        for &id in &ids {
            b.append(&mut topics, id, OpCode::Text, b"0123456789", None);
        }
        assert!(
            b.reserved() <= 10_000 * 2 * MIN_RESERVE,
            "{} bytes",
            b.reserved()
        );
        let mut n = 0;
        b.take(&mut topics, |_, _| n += 1);
        assert_eq!(n, 10_000);
        assert!(
            b.pending.len() <= KEEP_PENDING,
            "buffers past the reuse pool are freed"
        );
    }

    #[test]
    fn exclusions_apply_on_the_publishers_shard_and_merge_with_thresholds() {
        let (mut topics, ids) = table(&["t"]);
        let mut b = Batcher::new(Origin::Shard(2), DEFAULT_MAX_BATCH_BYTES);
        for (m, ex) in [(b"a", Some(5)), (b"b", None), (b"c", Some(5)), (b"d", None)] {
            b.append(&mut topics, ids[0], OpCode::Text, m, ex);
        }
        let mut ready = None;
        b.take(&mut topics, |_, r| ready = Some(r));
        let r = ready.expect("a batch");
        let mut x = Exclusions::default();
        x.build(&r.batch, 1, []);
        assert!(
            x.excluded.is_empty(),
            "slot 5 of shard 2 is not slot 5 here"
        );
        // Slot 5 of shard 2 also sits behind a threshold covering messages 0..2: the
        // ranges overlap and merge; slot 8 only has the threshold.
        x.build(&r.batch, 2, [(5, 0..2), (8, 0..3)]);
        type Parts = Vec<(u32, u32)>;
        let got: Vec<(u32, u32, Parts)> = x
            .excluded
            .iter()
            .map(|e| {
                let parts = x.parts[e.parts.clone()].iter();
                (
                    e.slot,
                    e.count,
                    parts.map(|p| (p.msgs.start, p.msgs.end)).collect(),
                )
            })
            .collect();
        assert_eq!(got, vec![(5, 1, vec![(3, 4)]), (8, 1, vec![(3, 4)])]);
    }
}
