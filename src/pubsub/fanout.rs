//! Local fan-out: one batch to every local subscriber of its topic, in the formats they
//! take, and the slow-consumer decision.
//!
//! Per batch and shard the work is: one exclusion index (O(excluded publishers)), each
//! needed [`Format`] built once (the plain frames are the batch itself; the mux envelopes
//! are built only when the topic has a mux subscriber here), then one pass per format list
//! with one reference-count increment and one queue push per subscriber. Subscribers are
//! grouped by format, so the inner loop does not branch on it; a publisher that must not
//! receive its own messages gets slices of the same run (no copy).
//!
//! Admission is decided on what a subscriber has not taken ([`Subscribers::admit`]): a batch
//! goes whole into a queue whose unsent backlog is under the limit, otherwise the
//! subscriber is listed as slow with the number of messages it misses, and the shard
//! applies `--slow-consumer` to it. A reader is therefore never judged slow because one
//! batch was large, and a queue holds at most the limit plus one batch (batches are bounded
//! by `--max-batch-bytes`). Subscribers found closed are listed so the topic can drop them.

use bytes::{Bytes, BytesMut};

use crate::proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_frame};

use super::batch::{Batch, Exclusion, Exclusions, Part, msg_start};
use super::mux;
use super::topic::{Format, Topic};

/// Why a subscriber did not take a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its unsent backlog is at the limit.
    Slow,
    /// It is closed or closing: take it out of the topic.
    Closed,
}

/// The connections of a shard, as fan-out sees them.
pub trait Subscribers {
    /// A subscriber's queue, admitted for one batch.
    type Queue<'a>: Queue
    where
        Self: 'a;

    /// Whether `slot` takes a batch now; if so, its queue.
    fn admit(&mut self, slot: u32) -> Result<Self::Queue<'_>, Refused>;
}

/// An admitted subscriber's send queue.
pub trait Queue {
    /// Queues one frame run (a reference to shared bytes).
    fn push(&mut self, frames: Bytes);
}

/// Per-shard fan-out scratch, reused across batches so that a fan-out allocates nothing in
/// the steady state (the mux envelopes live in `arena`, many batches per allocation).
#[derive(Debug, Default)]
pub struct FanOut {
    index: ExclusionIndex,
    arena: BytesMut,
    mux_ends: Vec<u32>,
    body: Vec<u8>,
    /// Subscribers found closed in the last fan-outs: (slot, format).
    pub closed: Vec<(u32, Format)>,
    /// Subscribers that missed a batch because their backlog was at the limit:
    /// (slot, messages missed).
    pub slow: Vec<(u32, u32)>,
}

impl FanOut {
    /// Queues `batch` to `topic`'s local subscribers; the subscribers in `x` (publishers
    /// that must not receive their own messages, joins behind a threshold) get their parts
    /// instead of the whole. Appends to [`FanOut::closed`] and [`FanOut::slow`]; returns
    /// the messages queued (one per subscriber per message).
    pub fn run<S: Subscribers>(
        &mut self,
        topic: &Topic,
        batch: &Batch,
        x: &Exclusions,
        subs: &mut S,
    ) -> u64 {
        self.index.build(&x.excluded);
        let mut queued = 0;
        // The version-1 envelopes, when built: the version-2 ones are the same bytes for a
        // batch without binary messages.
        let mut mux1: Option<(Bytes, bool)> = None;
        for format in Format::ALL {
            let list = topic.subscribers(format);
            if list.is_empty() {
                continue;
            }
            let (run, ends): (Bytes, &[u32]) = match format {
                Format::Plain => (batch.frames.clone(), &batch.ends),
                Format::Mux | Format::Mux2 => {
                    let reuse = match (&mux1, format) {
                        (Some((run, false)), Format::Mux2) => Some(run.clone()),
                        _ => None,
                    };
                    let run = match reuse {
                        Some(run) => run,
                        None => {
                            let (run, binary) = envelopes(
                                &mut self.arena,
                                &mut self.body,
                                &topic.name,
                                batch_messages(batch),
                                format,
                                &mut self.mux_ends,
                            );
                            if format == Format::Mux {
                                mux1 = Some((run.clone(), binary));
                            }
                            run
                        }
                    };
                    (run, &self.mux_ends)
                }
            };
            queued += deliver(
                list,
                format,
                &run,
                ends,
                batch.count(),
                &x.parts,
                &x.excluded,
                &self.index,
                &mut self.closed,
                &mut self.slow,
                subs,
            );
        }
        queued
    }

    /// Builds the envelopes of a replay (offset, plain frame) to one subscriber in
    /// `format` (see [`envelopes`]): one contiguous run and its message ends.
    pub fn replay_run(
        &mut self,
        topic: &str,
        publications: &[super::history::Stored],
        format: Format,
    ) -> (Bytes, &[u32]) {
        let (run, _) = envelopes(
            &mut self.arena,
            &mut self.body,
            topic,
            publications
                .iter()
                .map(|p| (p.offset, &p.frame[..], p.json)),
            format,
            &mut self.mux_ends,
        );
        (run, &self.mux_ends)
    }
}

/// One format's pass over its subscriber list.
#[allow(clippy::too_many_arguments)]
#[inline]
fn deliver<S: Subscribers>(
    list: &[u32],
    format: Format,
    run: &Bytes,
    ends: &[u32],
    count: u32,
    parts: &[Part],
    excluded: &[Exclusion],
    index: &ExclusionIndex,
    closed: &mut Vec<(u32, Format)>,
    slow: &mut Vec<(u32, u32)>,
    subs: &mut S,
) -> u64 {
    let mut queued = 0u64;
    let any_excluded = !excluded.is_empty();
    for &slot in list {
        let ex = if any_excluded {
            index.get(slot).and_then(|i| excluded.get(i))
        } else {
            None
        };
        let n = ex.map_or(count, |e| e.count);
        if n == 0 {
            continue;
        }
        let mut q = match subs.admit(slot) {
            Ok(q) => q,
            Err(Refused::Slow) => {
                slow.push((slot, n));
                continue;
            }
            Err(Refused::Closed) => {
                closed.push((slot, format));
                continue;
            }
        };
        match ex {
            None => q.push(run.clone()),
            Some(e) => {
                for p in parts.get(e.parts.clone()).unwrap_or_default() {
                    let (a, b) = (msg_start(ends, p.msgs.start), msg_start(ends, p.msgs.end));
                    if a <= b && b <= run.len() {
                        q.push(run.slice(a..b));
                    }
                }
            }
        }
        queued += u64::from(n);
    }
    queued
}

/// The messages of `batch` as (offset, complete frame, published as JSON); offset 0 when
/// it has none.
fn batch_messages(batch: &Batch) -> impl Iterator<Item = (u64, &[u8], bool)> {
    let mut start = 0usize;
    batch.ends.iter().enumerate().map(move |(i, &end)| {
        let frame = batch.frames.get(start..end as usize).unwrap_or_default();
        start = end as usize;
        let offset = if batch.offset == 0 {
            0
        } else {
            batch.offset + i as u64
        };
        (offset, frame, batch.is_json(i as u32))
    })
}

/// Builds the mux envelope (in `format`) of every message (offset, complete unmasked server
/// frame built by this process) as one contiguous run of envelope frames in `arena`;
/// `ends` gets the end offset of each envelope in the run, so that a publisher's share of
/// a batch is a slice of this one run. Also says whether a message was binary (whose
/// envelope depends on the format's version).
fn envelopes<'a>(
    arena: &mut BytesMut,
    body: &mut Vec<u8>,
    topic: &str,
    messages: impl Iterator<Item = (u64, &'a [u8], bool)>,
    format: Format,
    ends: &mut Vec<u32>,
) -> (Bytes, bool) {
    ends.clear();
    let base = arena.len();
    let mut binary = false;
    for (offset, frame, json) in messages {
        let Ok(Some((h, at))) = FrameHeader::parse(frame) else {
            tracing::error!("a published frame could not be read back");
            continue;
        };
        let payload = frame.get(at..).unwrap_or_default();
        body.clear();
        match h.opcode {
            OpCode::Text if json => mux::envelope_json(topic, offset, payload, body),
            OpCode::Text => mux::envelope_text(
                topic,
                offset,
                std::str::from_utf8(payload).unwrap_or_default(),
                body,
            ),
            _ => {
                binary = true;
                if format == Format::Mux2 {
                    mux::envelope_binary_v2(topic, offset, payload, body);
                } else {
                    mux::envelope_binary(topic, payload, body);
                }
            }
        }
        let need = body.len() + MAX_HEADER_LEN;
        if arena.capacity() - arena.len() < need {
            arena.reserve(need.max(16 * 1024));
        }
        encode_frame(arena, true, h.opcode, None, body);
        ends.push((arena.len() - base) as u32);
    }
    (arena.split().freeze(), binary)
}

/// Finds a slot's [`Exclusion`] in O(1): an open-addressing table built once per batch, so
/// a fan-out costs O(subscribers + excluded publishers), not their product (a chat room in
/// which everyone publishes). Its memory follows the publishers of one batch, not the
/// connections.
#[derive(Debug, Default)]
pub struct ExclusionIndex {
    /// (slot + 1, index in the exclusion list); 0: empty.
    table: Vec<(u32, u32)>,
    shift: u32,
}

impl ExclusionIndex {
    /// Indexes `excluded` (replacing what was indexed before).
    pub fn build(&mut self, excluded: &[Exclusion]) {
        self.table.clear();
        if excluded.is_empty() {
            return;
        }
        let bits = (excluded.len() * 2)
            .next_power_of_two()
            .trailing_zeros()
            .max(2);
        self.table.resize(1 << bits, (0, 0));
        self.shift = 32 - bits;
        let mask = self.table.len() - 1;
        for (i, e) in excluded.iter().enumerate() {
            let mut h = self.hash(e.slot);
            while self.table[h].0 != 0 {
                h = (h + 1) & mask;
            }
            self.table[h] = (e.slot.wrapping_add(1), i as u32);
        }
    }

    #[inline]
    fn hash(&self, slot: u32) -> usize {
        (slot.wrapping_mul(0x9E37_79B9) >> self.shift) as usize
    }

    /// The index in the exclusion list of `slot`'s entry, if it has one.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let key = slot.wrapping_add(1);
        let mut h = self.hash(slot);
        loop {
            match self.table[h] {
                (0, _) => return None,
                (k, i) if k == key => return Some(i as usize),
                _ => h = (h + 1) & mask,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::batch::{Batcher, Ready};
    use crate::pubsub::topic::{TopicId, TopicOptions, Topics};

    /// Queues in memory: `None` is a closed connection; a queue at `limit` bytes is slow.
    struct Fake {
        q: Vec<Option<(Vec<Bytes>, usize)>>,
        limit: usize,
    }

    struct FakeQ<'a>(&'a mut (Vec<Bytes>, usize));

    impl Queue for FakeQ<'_> {
        fn push(&mut self, frames: Bytes) {
            self.0.1 += frames.len();
            self.0.0.push(frames);
        }
    }

    impl Subscribers for Fake {
        type Queue<'a> = FakeQ<'a>;
        fn admit(&mut self, slot: u32) -> Result<FakeQ<'_>, Refused> {
            let limit = self.limit;
            match self.q.get_mut(slot as usize) {
                Some(Some(q)) if q.1 >= limit => Err(Refused::Slow),
                Some(Some(q)) => Ok(FakeQ(q)),
                _ => Err(Refused::Closed),
            }
        }
    }

    impl Fake {
        fn new(n: usize) -> Self {
            Fake {
                q: (0..n).map(|_| Some((Vec::new(), 0))).collect(),
                limit: usize::MAX,
            }
        }
        fn bytes(&self, slot: usize) -> Vec<u8> {
            self.q[slot]
                .as_ref()
                .map(|q| q.0.iter().flat_map(|b| b.to_vec()).collect())
                .unwrap_or_default()
        }
        fn pushes(&self, slot: usize) -> usize {
            self.q[slot].as_ref().map_or(0, |q| q.0.len())
        }
    }

    /// The exclusions of `r` on shard 0 (where the tests' batchers publish).
    fn excl(r: &Ready) -> Exclusions {
        let mut x = Exclusions::default();
        x.build(&r.batch, 0, []);
        x
    }

    fn one_batch(topics: &mut Topics, id: TopicId, msgs: &[(&[u8], Option<u32>)]) -> Ready {
        let mut b = Batcher::default();
        for (m, ex) in msgs {
            b.append(topics, id, OpCode::Text, m, *ex);
        }
        let mut out = None;
        b.take(topics, |_, r| out = Some(r));
        out.expect("a batch")
    }

    #[test]
    fn formats_are_built_once_and_publishers_are_excluded() {
        let mut topics = Topics::default();
        let id = topics.intern("t", TopicOptions::OPEN);
        topics.join(id, 0, Format::Plain);
        topics.join(id, 1, Format::Plain);
        topics.join(id, 2, Format::Mux);
        topics.join(id, 3, Format::Mux);
        let r = one_batch(
            &mut topics,
            id,
            &[(b"a", Some(0)), (b"b", None), (b"c", Some(3))],
        );
        let mut subs = Fake::new(4);
        let mut f = FanOut::default();
        let t = topics.get(id).expect("topic");
        let queued = f.run(t, &r.batch, &excl(&r), &mut subs);
        assert_eq!(queued, 2 + 3 + 3 + 2);
        assert_eq!(
            subs.bytes(0),
            b"\x81\x01b\x81\x01c",
            "0 gets the batch minus its own"
        );
        assert_eq!(subs.pushes(1), 1, "a whole batch is one reference");
        assert_eq!(subs.bytes(1), b"\x81\x01a\x81\x01b\x81\x01c");
        let env = |data: &str| {
            let mut body = Vec::new();
            mux::envelope_text("t", 0, data, &mut body);
            let mut frame = BytesMut::new();
            encode_frame(&mut frame, true, OpCode::Text, None, &body);
            frame.to_vec()
        };
        let all: Vec<u8> = [env("a"), env("b"), env("c")].concat();
        assert_eq!(subs.bytes(2), all, "mux subscribers get envelopes");
        assert_eq!(
            subs.bytes(3),
            [env("a"), env("b")].concat(),
            "minus their own"
        );
        let (Some(q2), Some(q3)) = (&subs.q[2], &subs.q[3]) else {
            panic!("open");
        };
        assert_eq!(
            q2.0[0].as_ptr(),
            q3.0[0].as_ptr(),
            "one envelope run, shared by every mux subscriber"
        );
        assert!(f.closed.is_empty() && f.slow.is_empty());
    }

    #[test]
    fn slow_and_closed_subscribers_are_reported() {
        let mut topics = Topics::default();
        let id = topics.intern("t", TopicOptions::OPEN);
        for s in 0..3 {
            topics.join(id, s, Format::Plain);
        }
        let r = one_batch(&mut topics, id, &[(b"x", None), (b"y", None)]);
        let mut subs = Fake::new(3);
        subs.limit = 1;
        if let Some(q) = subs.q[1].as_mut() {
            q.1 = 5; // at the limit
        }
        subs.q[2] = None;
        let mut f = FanOut::default();
        let t = topics.get(id).expect("topic");
        assert_eq!(f.run(t, &r.batch, &excl(&r), &mut subs), 2);
        assert_eq!(f.slow, vec![(1, 2)], "slot 1 misses both messages");
        assert_eq!(f.closed, vec![(2, Format::Plain)]);
        assert_eq!(subs.pushes(1), 0);
    }

    #[test]
    fn a_chat_room_costs_one_pass() {
        // Every member published one message of the batch; each gets the other 999.
        let n = 1_000u32;
        let mut topics = Topics::default();
        let id = topics.intern("room", TopicOptions::OPEN);
        for s in 0..n {
            topics.join(id, s, Format::Plain);
        }
        let mut b = Batcher::default();
        for s in 0..n {
            b.append(&mut topics, id, OpCode::Text, &s.to_le_bytes(), Some(s));
        }
        let mut subs = Fake::new(n as usize);
        let mut f = FanOut::default();
        let mut queued = 0;
        b.take(&mut topics, |topics, r| {
            let t = topics.get(r.topic).expect("topic");
            queued = f.run(t, &r.batch, &excl(&r), &mut subs);
        });
        assert_eq!(queued, u64::from(n) * u64::from(n - 1));
        for s in [0usize, 1, 500, 999] {
            let got = subs.bytes(s);
            assert_eq!(got.len(), (n as usize - 1) * 6);
            let mine = (s as u32).to_le_bytes();
            assert!(
                !got.chunks(6).any(|c| c[2..] == mine),
                "{s} never gets its own"
            );
        }
    }

    #[test]
    fn envelopes_at_every_length_encoding() {
        let lens = [0usize, 1, 125, 126, 65535, 65536, 70000];
        let mut frames = BytesMut::new();
        let mut ends = Vec::new();
        for &len in &lens {
            encode_frame(&mut frames, true, OpCode::Binary, None, &vec![7u8; len]);
            ends.push(frames.len() as u32);
        }
        encode_frame(&mut frames, true, OpCode::Text, None, b"hi \"there\"");
        ends.push(frames.len() as u32);
        let batch = Batch::new(
            crate::pubsub::Origin::Shard(0),
            frames.freeze(),
            ends.into_boxed_slice(),
        );
        let (mut arena, mut body, mut env_ends) = (BytesMut::new(), Vec::new(), Vec::new());
        let (run, binary) = envelopes(
            &mut arena,
            &mut body,
            "t",
            batch_messages(&batch),
            Format::Mux,
            &mut env_ends,
        );
        assert!(binary);
        assert_eq!(env_ends.len(), lens.len() + 1, "one end per message");
        assert_eq!(env_ends.last().map(|&e| e as usize), Some(run.len()));
        let mut rest = &run[..];
        for (i, &len) in lens.iter().enumerate() {
            let (h, at) = FrameHeader::parse(rest).ok().flatten().expect("a frame");
            let n = h.payload_len as usize;
            let mut want = Vec::new();
            mux::envelope_binary("t", &vec![7u8; len], &mut want);
            assert_eq!(
                (h.opcode, &rest[at..at + n]),
                (OpCode::Binary, &want[..]),
                "length {len}"
            );
            assert_eq!(
                msg_start(&env_ends, i as u32 + 1),
                run.len() - rest.len() + at + n
            );
            rest = &rest[at + n..];
        }
        let (h, at) = FrameHeader::parse(rest).ok().flatten().expect("a frame");
        let mut want = Vec::new();
        mux::envelope_text("t", 0, "hi \"there\"", &mut want);
        assert_eq!((h.opcode, &rest[at..]), (OpCode::Text, &want[..]));
    }

    #[test]
    fn exclusion_index_finds_every_publisher() {
        for n in [1usize, 2, 3, 7, 64, 1000] {
            let excluded: Vec<Exclusion> = (0..n as u32)
                .map(|i| Exclusion {
                    slot: i * 7 + 3,
                    parts: 0..0,
                    count: 0,
                })
                .collect();
            let mut index = ExclusionIndex::default();
            index.build(&excluded);
            for (i, e) in excluded.iter().enumerate() {
                assert_eq!(index.get(e.slot), Some(i));
                assert_eq!(index.get(e.slot + 1), None);
            }
        }
        let mut index = ExclusionIndex::default();
        index.build(&[]);
        assert_eq!(index.get(0), None);
    }
}
