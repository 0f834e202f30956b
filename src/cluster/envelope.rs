//! The broker envelope: how one ringcast node's publications travel through Redis or NATS
//! to the others (pure: no I/O; property-tested).
//!
//! One envelope carries one batch of one topic (every message a home shard fanned out in
//! one turn), so the bridge sends one broker message per batch, not one per message, and
//! the receiving node frames the batch once. Layout (integers little endian):
//!
//! ```text
//! "rc"  version(1)  flags(1)  node_len(1)  node id (node_len bytes)
//! [flags & SEQUENCED: offset of the first message (u64), epoch (8 bytes)]
//! count (u32), then count times: kind (u8: 0 text, 1 binary, 2 JSON text), len (u32), bytes
//! ```
//!
//! A message on the broker that ringcast did not write, or that a newer version wrote, is
//! refused by [`decode`] with a [`Bad`] reason; the bridge counts and drops it. Text is
//! checked to be UTF-8 here, once per node, because it goes to clients as text frames.

use bytes::{BufMut, Bytes, BytesMut};

/// First bytes of every envelope.
pub const MAGIC: &[u8; 2] = b"rc";
/// The version this build writes and reads.
pub const VERSION: u8 = 1;
/// Flag: the envelope carries an offset and an epoch (assigned by the broker).
pub const SEQUENCED: u8 = 1;
/// Longest node id.
pub const MAX_NODE_ID: usize = 64;

/// How a message was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message.
    Text = 0,
    /// A binary message.
    Binary = 1,
    /// A text message published as a JSON value (mux envelopes carry it as JSON).
    Json = 2,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Text),
            1 => Some(Kind::Binary),
            2 => Some(Kind::Json),
            _ => None,
        }
    }
}

/// Why an envelope was refused (`ringcast_broker_bad_messages_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// It does not start with [`MAGIC`]: not written by ringcast.
    NotOurs,
    /// Another version of the envelope.
    Version,
    /// Cut short, or bytes left over, or a field out of range.
    Malformed,
    /// A message over the size limit, or the envelope over its bound.
    Oversize,
    /// A text message that is not UTF-8.
    Utf8,
}

impl Bad {
    /// Every reason, in label order.
    pub const ALL: [Bad; 5] = [
        Bad::NotOurs,
        Bad::Version,
        Bad::Malformed,
        Bad::Oversize,
        Bad::Utf8,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Bad::NotOurs => "not_ours",
            Bad::Version => "version",
            Bad::Malformed => "malformed",
            Bad::Oversize => "oversize",
            Bad::Utf8 => "utf8",
        }
    }
}

/// Where a sequenced batch stands in its topic (assigned by the broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// Offset of the first message.
    pub offset: u64,
    /// The topic's epoch.
    pub epoch: [u8; 8],
}

/// A decoded envelope: slices of the broker's payload, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The publishing node.
    pub node: Bytes,
    /// Offset and epoch, when the broker assigned them.
    pub seq: Option<Sequence>,
    /// The messages, in publish order.
    pub messages: Vec<(Kind, Bytes)>,
}

/// The head of an envelope from node `node` (sequence filled in later by the broker's
/// script, when `sequenced`: zeros here).
pub fn encode_head(out: &mut BytesMut, node: &[u8], sequenced: bool, count: u32) {
    let node = &node[..node.len().min(MAX_NODE_ID)];
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(if sequenced { SEQUENCED } else { 0 });
    out.put_u8(node.len() as u8);
    out.put_slice(node);
    if sequenced {
        out.put_u64_le(0);
        out.put_slice(&[0; 8]);
    }
    out.put_u32_le(count);
}

/// Appends one message to an envelope begun with [`encode_head`].
pub fn encode_message(out: &mut BytesMut, kind: Kind, payload: &[u8]) {
    out.put_u8(kind as u8);
    out.put_u32_le(payload.len() as u32);
    out.put_slice(payload);
}

/// Where the sequence fields of a sequenced envelope from a node id of `node_len` bytes
/// start (the broker's script writes offset and epoch there).
pub const fn sequence_at(node_len: usize) -> usize {
    5 + node_len
}

/// Reads an envelope; `max_message`: the largest message accepted, `max_total`: the
/// largest envelope.
pub fn decode(buf: &Bytes, max_message: usize, max_total: usize) -> Result<Envelope, Bad> {
    if buf.len() < 2 || &buf[..2] != MAGIC {
        return Err(Bad::NotOurs);
    }
    if buf.len() > max_total {
        return Err(Bad::Oversize);
    }
    let mut r = Reader { buf, at: 2 };
    if r.u8()? != VERSION {
        return Err(Bad::Version);
    }
    let flags = r.u8()?;
    if flags & !SEQUENCED != 0 {
        return Err(Bad::Malformed);
    }
    let node_len = usize::from(r.u8()?);
    if node_len == 0 || node_len > MAX_NODE_ID {
        return Err(Bad::Malformed);
    }
    let node = r.take(node_len)?;
    let seq = if flags & SEQUENCED != 0 {
        let offset = r.u64()?;
        let epoch = r.take(8)?;
        let mut e = [0u8; 8];
        e.copy_from_slice(&epoch);
        if offset == 0 {
            return Err(Bad::Malformed);
        }
        Some(Sequence { offset, epoch: e })
    } else {
        None
    };
    let count = r.u32()? as usize;
    // Every message takes at least 5 bytes: a count past what is left is a lie.
    if count == 0 || count > (buf.len() - r.at) / 5 {
        return Err(Bad::Malformed);
    }
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = Kind::from_byte(r.u8()?).ok_or(Bad::Malformed)?;
        let len = r.u32()? as usize;
        if len > max_message {
            return Err(Bad::Oversize);
        }
        let payload = r.take(len)?;
        if kind != Kind::Binary && simdutf8::basic::from_utf8(&payload).is_err() {
            return Err(Bad::Utf8);
        }
        messages.push((kind, payload));
    }
    if r.at != buf.len() {
        return Err(Bad::Malformed);
    }
    Ok(Envelope {
        node,
        seq,
        messages,
    })
}

struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, Bad> {
        let end = self.at.checked_add(n).ok_or(Bad::Malformed)?;
        if end > self.buf.len() {
            return Err(Bad::Malformed);
        }
        let b = self.buf.slice(self.at..end);
        self.at = end;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, Bad> {
        let b = *self.buf.get(self.at).ok_or(Bad::Malformed)?;
        self.at += 1;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, Bad> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Bad> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
}

/// The opcode and payload of each complete, unmasked server frame in `frames` (a batch
/// this node built: trusted, so a malformed frame just ends the walk).
pub fn payloads(frames: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = frames.get(at..)?;
        let (&b0, rest) = rest.split_first()?;
        let (&b1, rest) = rest.split_first()?;
        let (len, head) = match b1 & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
                4,
            ),
            127 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(rest.get(..8)?);
                (usize::try_from(u64::from_be_bytes(a)).ok()?, 10)
            }
            n => (usize::from(n), 2),
        };
        let start = at + head;
        let payload = frames.get(start..start.checked_add(len)?)?;
        at = start + len;
        Some((b0 & 0x0f == 0x2, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{OpCode, encode_frame};
    use proptest::prelude::*;

    fn envelope(node: &[u8], seq: bool, msgs: &[(Kind, &[u8])]) -> Bytes {
        let mut out = BytesMut::new();
        encode_head(&mut out, node, seq, msgs.len() as u32);
        for (k, p) in msgs {
            encode_message(&mut out, *k, p);
        }
        out.freeze()
    }

    #[test]
    fn round_trip() {
        let b = envelope(
            b"node-a",
            false,
            &[(Kind::Text, b"hi"), (Kind::Binary, &[0, 255])],
        );
        let e = decode(&b, 1024, 1 << 20).expect("decodes");
        assert_eq!(&e.node[..], b"node-a");
        assert_eq!(e.seq, None);
        assert_eq!(e.messages.len(), 2);
        assert_eq!(e.messages[1], (Kind::Binary, Bytes::from_static(&[0, 255])));
    }

    #[test]
    fn sequenced_fields_sit_where_the_script_writes_them() {
        let mut b = BytesMut::from(&envelope(b"n1", true, &[(Kind::Json, b"{}")])[..]);
        let at = sequence_at(2);
        b[at..at + 8].copy_from_slice(&42u64.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(b"AbCdEfGh");
        let e = decode(&b.freeze(), 1024, 1 << 20).expect("decodes");
        assert_eq!(
            e.seq,
            Some(Sequence {
                offset: 42,
                epoch: *b"AbCdEfGh"
            })
        );
        // Offset 0 never leaves the script: an envelope that has it was not numbered.
        let b = envelope(b"n1", true, &[(Kind::Text, b"x")]);
        assert_eq!(decode(&b, 1024, 1 << 20), Err(Bad::Malformed));
    }

    #[test]
    fn refuses_what_ringcast_did_not_write() {
        let ok = envelope(b"n", false, &[(Kind::Text, b"hello")]);
        assert_eq!(
            decode(&Bytes::from_static(b"hello"), 9, 99),
            Err(Bad::NotOurs)
        );
        assert_eq!(decode(&Bytes::new(), 9, 99), Err(Bad::NotOurs));
        let mut v = ok.to_vec();
        v[2] = 2;
        assert_eq!(decode(&Bytes::from(v), 99, 999), Err(Bad::Version));
        assert_eq!(
            decode(&ok, 4, 999),
            Err(Bad::Oversize),
            "message over the limit"
        );
        assert_eq!(
            decode(&ok, 99, 10),
            Err(Bad::Oversize),
            "envelope over the bound"
        );
        let cut = ok.slice(..ok.len() - 1);
        assert_eq!(decode(&cut, 99, 999), Err(Bad::Malformed));
        let mut long = ok.to_vec();
        long.push(0);
        assert_eq!(decode(&Bytes::from(long), 99, 999), Err(Bad::Malformed));
        let bad_text = envelope(b"n", false, &[(Kind::Text, &[0xff, 0xfe])]);
        assert_eq!(decode(&bad_text, 99, 999), Err(Bad::Utf8));
        let mut lying = envelope(b"n", false, &[(Kind::Text, b"a")]).to_vec();
        let at = 5 + 1;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&Bytes::from(lying), 99, 999), Err(Bad::Malformed));
    }

    #[test]
    fn payloads_walks_every_frame_size() {
        let mut frames = BytesMut::new();
        let sizes = [0usize, 1, 125, 126, 65535, 65536, 70000];
        for (i, &n) in sizes.iter().enumerate() {
            let op = if i % 2 == 0 {
                OpCode::Text
            } else {
                OpCode::Binary
            };
            encode_frame(&mut frames, true, op, None, &vec![b'a'; n]);
        }
        let got: Vec<(bool, usize)> = payloads(&frames).map(|(b, p)| (b, p.len())).collect();
        let want: Vec<(bool, usize)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (i % 2 == 1, n))
            .collect();
        assert_eq!(got, want);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut v = bytes;
            if v.len() > 2 { v[0] = b'r'; v[1] = b'c'; }
            let _ = decode(&Bytes::from(v), 128, 512);
        }

        #[test]
        fn round_trips(msgs in proptest::collection::vec((0u8..3, proptest::collection::vec(0x20u8..0x7f, 0..64)), 1..8)) {
            let msgs: Vec<(Kind, Vec<u8>)> = msgs.into_iter().map(|(k, p)| (Kind::from_byte(k).unwrap_or(Kind::Text), p)).collect();
            let refs: Vec<(Kind, &[u8])> = msgs.iter().map(|(k, p)| (*k, &p[..])).collect();
            let b = envelope(b"node", false, &refs);
            let e = decode(&b, 64, 4096).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let got: Vec<(Kind, Vec<u8>)> = e.messages.iter().map(|(k, p)| (*k, p.to_vec())).collect();
            prop_assert_eq!(got, msgs);
        }
    }
}
