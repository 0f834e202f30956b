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
//! how much a turn happened to carry (see `ShardState::fan_out_local`).
//!
//! A publisher in simple or control mode must not receive its own messages (unless it asked
//! for echo), so the batch remembers which byte ranges and message indices each such
//! publisher wrote; that subscriber gets the batch minus its own parts, as slices of the
//! same buffer (no copy), and a control-mode publisher gets slices of the shard's one
//! envelope run of the batch ([`Part::msgs`] locates them there).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::proto::frame::{MAX_HEADER_LEN, OpCode, encode_frame};

/// Smallest allocation for a topic's batch buffer.
const CHUNK: usize = 16 * 1024;

/// Default bound of one batch, in framed bytes (`--max-batch-bytes`).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 128 * 1024;

/// The frames of one topic published during the current turn.
#[derive(Debug, Default)]
struct Pending {
    topic: Option<Arc<str>>,
    buf: BytesMut,
    count: u32,
    /// What publishers that must not receive them wrote: (slot, bytes, message indices).
    own: Vec<(u32, Range<usize>, Range<u32>)>,
}

/// A piece of a batch: a byte range of its frames and the messages it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Byte range in [`Ready::frames`].
    pub bytes: Range<usize>,
    /// Message indices (0-based, in publish order) the range holds.
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

/// A topic's batch, ready to be queued.
#[derive(Debug)]
pub struct Ready {
    /// The topic.
    pub topic: Arc<str>,
    /// All frames of the batch, back to back.
    pub frames: Bytes,
    /// How many messages `frames` holds.
    pub count: u32,
    /// The parts every excluded publisher gets, back to back (see [`Exclusion::parts`]).
    pub parts: Vec<Part>,
    /// Publishers that must not receive their own messages, sorted by slot.
    pub excluded: Vec<Exclusion>,
}

/// The batches of one shard.
#[derive(Debug)]
pub struct Batcher {
    pending: Vec<Pending>,
    live: usize,
    index: HashMap<Arc<str>, usize>,
    /// Batches sealed at the byte bound, in sealing order; they go out before the open ones.
    sealed: VecDeque<Ready>,
    max_bytes: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher::new(DEFAULT_MAX_BATCH_BYTES)
    }
}

impl Batcher {
    /// A batcher whose batches hold at most `max_bytes` of frames (or one frame, if larger).
    pub fn new(max_bytes: usize) -> Self {
        Batcher {
            pending: Vec::new(),
            live: 0,
            index: HashMap::new(),
            sealed: VecDeque::new(),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Frames `payload` once at the end of `topic`'s batch. `exclude`: the publisher's slot
    /// when it must not receive its own message.
    pub fn append(
        &mut self,
        topic: &Arc<str>,
        opcode: OpCode,
        payload: &[u8],
        exclude: Option<u32>,
    ) {
        let i = match self.index.get(topic) {
            Some(&i) => i,
            None => {
                if self.live == self.pending.len() {
                    self.pending.push(Pending::default());
                }
                let i = self.live;
                self.live += 1;
                self.pending[i].topic = Some(Arc::clone(topic));
                self.index.insert(Arc::clone(topic), i);
                i
            }
        };
        let p = &mut self.pending[i];
        let need = payload.len() + MAX_HEADER_LEN;
        if p.count != 0 && p.buf.len() + need > self.max_bytes {
            if let Some(topic) = p.topic.clone() {
                self.sealed.push_back(seal(p, topic));
            }
        }
        if p.buf.capacity() - p.buf.len() < need {
            p.buf.reserve(need.max(CHUNK).min(self.max_bytes.max(need)));
        }
        let start = p.buf.len();
        encode_frame(&mut p.buf, true, opcode, None, payload);
        let end = p.buf.len();
        let msg = p.count;
        p.count += 1;
        if let Some(slot) = exclude {
            match p.own.last_mut() {
                Some((s, r, m)) if *s == slot && r.end == start => {
                    r.end = end;
                    m.end = msg + 1;
                }
                _ => p.own.push((slot, start..end, msg..msg + 1)),
            }
        }
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

    /// Takes every batch: the sealed ones first, then the open ones.
    pub fn take(&mut self, mut f: impl FnMut(Ready)) {
        self.take_sealed(&mut f);
        self.index.clear();
        for p in &mut self.pending[..self.live] {
            let Some(topic) = p.topic.take() else {
                continue;
            };
            if p.count != 0 {
                f(seal(p, topic));
            }
        }
        self.live = 0;
    }
}

/// Freezes `p`'s frames into a ready batch and empties it (keeping its spare capacity).
fn seal(p: &mut Pending, topic: Arc<str>) -> Ready {
    let frames = p.buf.split().freeze();
    let count = std::mem::take(&mut p.count);
    let (parts, excluded) = exclusions(frames.len(), &mut p.own, count);
    Ready {
        topic,
        frames,
        count,
        parts,
        excluded,
    }
}

/// For each publisher that wrote parts of a batch of `len` bytes and `count` messages that
/// it must not receive: the complement.
fn exclusions(
    len: usize,
    own: &mut Vec<(u32, Range<usize>, Range<u32>)>,
    count: u32,
) -> (Vec<Part>, Vec<Exclusion>) {
    if own.is_empty() {
        return (Vec::new(), Vec::new());
    }
    own.sort_by_key(|(slot, r, _)| (*slot, r.start));
    let mut parts = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < own.len() {
        let slot = own[i].0;
        let first = parts.len();
        let (mut at, mut at_msg) = (0, 0);
        let mut mine = 0;
        while i < own.len() && own[i].0 == slot {
            let (_, r, m) = &own[i];
            if r.start > at {
                parts.push(Part {
                    bytes: at..r.start,
                    msgs: at_msg..m.start,
                });
            }
            (at, at_msg) = (r.end, m.end);
            mine += m.end - m.start;
            i += 1;
        }
        if at < len {
            parts.push(Part {
                bytes: at..len,
                msgs: at_msg..count,
            });
        }
        out.push(Exclusion {
            slot,
            parts: first..parts.len(),
            count: count - mine,
        });
    }
    own.clear();
    (parts, out)
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

    fn topic(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn one_buffer_per_topic_per_turn() {
        let mut b = Batcher::default();
        let (a, z) = (topic("a"), topic("z"));
        b.append(&a, OpCode::Text, b"1", None);
        b.append(&z, OpCode::Text, b"x", None);
        b.append(&a, OpCode::Binary, b"22", None);
        let mut got = Vec::new();
        b.take(|r| {
            got.push((
                r.topic.to_string(),
                r.frames.to_vec(),
                r.count,
                r.excluded.len(),
            ))
        });
        assert_eq!(
            got,
            vec![
                ("a".into(), vec![0x81, 1, b'1', 0x82, 2, b'2', b'2'], 2, 0),
                ("z".into(), vec![0x81, 1, b'x'], 1, 0),
            ]
        );
        assert!(b.is_empty());
        let mut n = 0;
        b.take(|_| n += 1);
        assert_eq!(n, 0, "a taken batch does not come back");
    }

    #[test]
    fn publishers_get_the_batch_minus_their_own_frames() {
        let mut b = Batcher::default();
        let t = topic("t");
        b.append(&t, OpCode::Text, b"a", Some(7)); // 7's
        b.append(&t, OpCode::Text, b"b", Some(7)); // 7's, merged with the previous range
        b.append(&t, OpCode::Text, b"c", Some(9)); // 9's
        b.append(&t, OpCode::Text, b"d", None); // nobody excluded (echo or remote)
        b.append(&t, OpCode::Text, b"e", Some(7)); // 7's again
        b.take(|r| {
            assert_eq!(r.count, 5);
            let mine = |slot: u32| {
                let e = r
                    .excluded
                    .iter()
                    .find(|e| e.slot == slot)
                    .expect("excluded");
                let parts = &r.parts[e.parts.clone()];
                let bytes: Vec<u8> = parts
                    .iter()
                    .flat_map(|p| r.frames[p.bytes.clone()].to_vec())
                    .collect();
                let msgs: Vec<u32> = parts.iter().flat_map(|p| p.msgs.clone()).collect();
                (bytes, msgs, e.count)
            };
            assert_eq!(
                mine(7),
                (vec![0x81, 1, b'c', 0x81, 1, b'd'], vec![2, 3], 2),
                "7 gets c and d"
            );
            assert_eq!(
                mine(9),
                (
                    vec![0x81, 1, b'a', 0x81, 1, b'b', 0x81, 1, b'd', 0x81, 1, b'e'],
                    vec![0, 1, 3, 4],
                    4
                )
            );
            let mut index = ExclusionIndex::default();
            index.build(&r.excluded);
            assert_eq!(index.get(7).map(|i| r.excluded[i].slot), Some(7));
            assert_eq!(index.get(9).map(|i| r.excluded[i].slot), Some(9));
            assert_eq!(index.get(8), None);
        });
    }

    #[test]
    fn a_batch_is_sealed_at_its_byte_bound() {
        let mut b = Batcher::new(1024);
        let t = topic("t");
        for i in 0..10u8 {
            b.append(&t, OpCode::Binary, &[i; 300], Some(1));
        }
        let mut got = Vec::new();
        b.take_sealed(|r| got.push((r.count, r.frames.len())));
        assert_eq!(
            got,
            vec![(3, 3 * 304); 3],
            "three full batches sealed, in order"
        );
        got.clear();
        b.take(|r| got.push((r.count, r.frames.len())));
        assert_eq!(got, vec![(1, 304)], "the open one follows");
        // A message larger than the bound makes a batch of its own.
        b.append(&t, OpCode::Binary, &[0; 2000], None);
        b.append(&t, OpCode::Binary, &[0; 10], None);
        got.clear();
        b.take(|r| got.push((r.count, r.frames.len())));
        assert_eq!(got, vec![(1, 2004), (1, 12)]);
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
