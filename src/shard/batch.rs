//! Per-turn batching of published frames, one contiguous buffer per topic.
//!
//! Every message published on a topic during one loop turn is framed (once) at the end of
//! that topic's buffer. At the end of the turn the buffer is frozen into one [`Bytes`] and
//! each subscriber's queue gets that one reference: one reference-count increment, one queue
//! entry and one iovec per subscriber per turn, however many messages the turn carried. This
//! is where the throughput of a broadcast server comes from: the kernel then copies one
//! contiguous run per subscriber instead of walking one small iovec per message.
//!
//! A publisher in simple mode is also a subscriber of its topic but must not receive its own
//! messages (unless it asked for `?echo=1`), so the batch remembers which byte ranges each
//! such publisher wrote; that subscriber gets the batch minus its own ranges, as slices of the
//! same buffer (no copy).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::proto::frame::{MAX_HEADER_LEN, OpCode, encode_frame};

/// Smallest allocation for a topic's batch buffer.
const CHUNK: usize = 16 * 1024;

/// The frames of one topic published during the current turn.
#[derive(Debug, Default)]
struct Pending {
    topic: Option<Arc<str>>,
    buf: BytesMut,
    count: u32,
    /// Byte ranges written by publishers that must not receive them: (slot, range, messages).
    own: Vec<(u32, Range<usize>, u32)>,
}

/// A topic's batch, ready to be queued.
#[derive(Debug)]
pub struct Ready {
    /// The topic.
    pub topic: Arc<str>,
    /// All frames of the turn, back to back.
    pub frames: Bytes,
    /// How many messages `frames` holds.
    pub count: u32,
    /// Per excluded publisher: its slot, the parts of `frames` it should get, and how many
    /// messages those parts hold.
    pub excluded: Vec<(u32, Vec<Bytes>, u32)>,
}

/// The batches of one shard.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Vec<Pending>,
    live: usize,
    index: HashMap<Arc<str>, usize>,
}

impl Batcher {
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
        if p.buf.capacity() - p.buf.len() < need {
            p.buf.reserve(need.max(CHUNK));
        }
        let start = p.buf.len();
        encode_frame(&mut p.buf, true, opcode, None, payload);
        let end = p.buf.len();
        p.count += 1;
        if let Some(slot) = exclude {
            match p.own.last_mut() {
                Some((s, r, n)) if *s == slot && r.end == start => {
                    r.end = end;
                    *n += 1;
                }
                _ => p.own.push((slot, start..end, 1)),
            }
        }
    }

    /// True when nothing was published this turn.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Takes every batch of the turn.
    pub fn take(&mut self, mut f: impl FnMut(Ready)) {
        self.index.clear();
        for p in &mut self.pending[..self.live] {
            let Some(topic) = p.topic.take() else {
                continue;
            };
            let frames = p.buf.split().freeze();
            let excluded = exclusions(&frames, &mut p.own, p.count);
            let count = std::mem::take(&mut p.count);
            f(Ready {
                topic,
                frames,
                count,
                excluded,
            });
        }
        self.live = 0;
    }
}

/// For each publisher that wrote ranges of `frames` it must not receive: the complement.
fn exclusions(
    frames: &Bytes,
    own: &mut Vec<(u32, Range<usize>, u32)>,
    count: u32,
) -> Vec<(u32, Vec<Bytes>, u32)> {
    if own.is_empty() {
        return Vec::new();
    }
    own.sort_by_key(|(slot, r, _)| (*slot, r.start));
    let mut out: Vec<(u32, Vec<Bytes>, u32)> = Vec::new();
    let mut i = 0;
    while i < own.len() {
        let slot = own[i].0;
        let mut parts = Vec::new();
        let mut at = 0;
        let mut mine = 0;
        while i < own.len() && own[i].0 == slot {
            let (_, r, n) = &own[i];
            if r.start > at {
                parts.push(frames.slice(at..r.start));
            }
            at = r.end;
            mine += n;
            i += 1;
        }
        if at < frames.len() {
            parts.push(frames.slice(at..));
        }
        out.push((slot, parts, count - mine));
    }
    own.clear();
    out
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
            let seven = r.excluded.iter().find(|e| e.0 == 7).expect("7 excluded");
            let bytes: Vec<u8> = seven.1.iter().flat_map(|p| p.to_vec()).collect();
            assert_eq!(bytes, [0x81, 1, b'c', 0x81, 1, b'd'], "7 gets c and d");
            assert_eq!(seven.2, 2);
            let nine = r.excluded.iter().find(|e| e.0 == 9).expect("9 excluded");
            let bytes: Vec<u8> = nine.1.iter().flat_map(|p| p.to_vec()).collect();
            assert_eq!(
                bytes,
                [0x81, 1, b'a', 0x81, 1, b'b', 0x81, 1, b'd', 0x81, 1, b'e']
            );
            assert_eq!(nine.2, 4);
        });
    }
}
