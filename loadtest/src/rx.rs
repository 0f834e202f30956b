//! The client-side receive state machine of one connection: scans server
//! frames in place (headers via `ringcast::proto::frame::FrameHeader::parse`),
//! captures the payload stamp of each data message, keeps ping and close
//! payloads, and hands stamps to the connection's [`Checker`].
//!
//! Input arrives in arbitrary chunks (one provided buffer, one read()); the
//! state carries partial headers (at most 14 bytes), a partial stamp (42
//! bytes) and a control payload (125 bytes) across chunks. Payload bytes past
//! the stamp are skipped, never copied. No allocation per message.
//!
//! In envelope mode (ringcast's mux mode) the envelope is unwrapped first
//! ([`crate::envelope`]) and an offset it carries goes to the connection's
//! [`OffsetChecker`] (dense and ordered per topic).
//!
//! Not checked, on purpose (cost on the hot path): UTF-8 validity of text
//! messages. Everything else a client must refuse (masked server frames, RSV
//! bits without an extension, continuation misuse, bad headers) is an error.

use std::fmt;

use ringcast::proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode};

use crate::checker::{CheckCtx, Checker};
use crate::envelope::{self, Envelope};
use crate::offsets::OffsetChecker;
use crate::payload::{self, STAMP_LEN};

/// Why a connection's input was refused.
#[derive(Debug)]
pub enum RxError {
    /// The frame header itself is invalid (the protocol core's verdict).
    Header(ringcast::proto::error::ProtocolError),
    /// A server frame arrived masked.
    MaskedFrame,
    /// RSV bits set without a negotiated extension.
    ReservedBits(u8),
    /// A continuation frame without a message in progress.
    UnexpectedContinuation,
    /// A new data frame while a fragmented message was in progress.
    ExpectedContinuation,
}

impl fmt::Display for RxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RxError::Header(e) => write!(f, "invalid frame header: {e}"),
            RxError::MaskedFrame => f.write_str("server sent a masked frame"),
            RxError::ReservedBits(r) => write!(f, "RSV bits {r:#05b} set without an extension"),
            RxError::UnexpectedContinuation => f.write_str("continuation frame without a message"),
            RxError::ExpectedContinuation => {
                f.write_str("new data frame inside a fragmented message")
            }
        }
    }
}

impl std::error::Error for RxError {}

/// What kind of payload the current frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cur {
    /// Between frames.
    None,
    /// A data frame (first or continuation); `fin` ends the message.
    Data { fin: bool },
    /// A control frame being captured.
    Control(OpCode),
}

/// Receive state of one connection.
#[derive(Debug)]
pub struct RxConn {
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: usize,
    cur: Cur,
    /// Payload bytes left in the current frame.
    remaining: u64,
    /// Inside a fragmented data message (a non-FIN data frame was seen).
    fragmented: bool,
    /// Bytes of the current data message seen so far (saturating at STAMP_LEN).
    msg_seen: usize,
    stamp: [u8; STAMP_LEN],
    ctrl: [u8; 125],
    ctrl_len: usize,
    /// A ping arrived; its payload is in `ctrl` until [`RxConn::take_ping`].
    ping_pending: bool,
    ping: [u8; 125],
    ping_len: usize,
    /// The server's close frame: Some(code) (None inside = no status code).
    pub close_received: Option<Option<u16>>,
    /// Whole messages received.
    pub messages: u64,
    /// Per-publisher sequence checks.
    pub checker: Checker,
    /// Offsets of envelope mode, per topic (empty otherwise).
    pub offsets: OffsetChecker,
    /// ringcast's mux-mode envelopes are unwrapped before the stamp is read (a subscriber
    /// on `/ws?subscribe=...`): `None` for bare payloads (the common, faster case).
    envelope: Option<Box<EnvelopeBuf>>,
}

/// The first bytes of a message in envelope mode: room for the longest envelope prefix
/// (`{"type":"message","topic":` + a 255-byte topic escaped + `,"offset":N,"data":"`, or a
/// binary envelope's length byte, topic and offset) and the stamp.
const ENVELOPE_CAPTURE: usize = 1024;

#[derive(Debug)]
struct EnvelopeBuf {
    /// The opcode of the message being captured.
    text: bool,
    /// Binary envelopes are v2 (`/ws?envelope=2`: an 8-byte offset after the topic).
    v2: bool,
    len: usize,
    buf: [u8; ENVELOPE_CAPTURE],
}

/// Hands an envelope's offset, if any, to the connection's offset checks (under the
/// unescaped topic) and returns its payload.
#[inline]
fn offset_and_payload<'a>(offsets: &mut OffsetChecker, e: Envelope<'a>) -> &'a [u8] {
    match e.offset {
        Some(off) if e.topic_escaped => {
            // Rare (a topic with `"` or `\`): the same topic must key the same state in text
            // and binary envelopes.
            let mut buf = [0u8; 256];
            let topic = envelope::unescape(e.topic, &mut buf).map_or(e.topic, |n| &buf[..n]);
            offsets.observe(topic, off);
        }
        Some(off) => {
            offsets.observe(e.topic, off);
        }
        None => {}
    }
    e.payload
}

impl RxConn {
    /// A fresh connection state with its checker.
    pub fn new(checker: Checker) -> Self {
        RxConn {
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            cur: Cur::None,
            remaining: 0,
            fragmented: false,
            msg_seen: 0,
            stamp: [0; STAMP_LEN],
            ctrl: [0; 125],
            ctrl_len: 0,
            ping_pending: false,
            ping: [0; 125],
            ping_len: 0,
            close_received: None,
            messages: 0,
            checker,
            offsets: OffsetChecker::default(),
            envelope: None,
        }
    }

    /// Unwraps ringcast's mux-mode envelopes (text and binary, binary in v2 when `v2`)
    /// before reading stamps, and checks the offsets they carry.
    pub fn with_envelopes(mut self, v2: bool) -> Self {
        self.envelope = Some(Box::new(EnvelopeBuf {
            text: false,
            v2,
            len: 0,
            buf: [0; ENVELOPE_CAPTURE],
        }));
        self
    }

    /// The payload of the last unanswered ping, if any (answer with a pong).
    pub fn take_ping(&mut self) -> Option<&[u8]> {
        if std::mem::take(&mut self.ping_pending) {
            Some(&self.ping[..self.ping_len])
        } else {
            None
        }
    }

    /// Feeds received bytes. After the server's close frame the rest is ignored.
    pub fn feed(&mut self, mut data: &[u8], ctx: &mut CheckCtx<'_>) -> Result<(), RxError> {
        while !data.is_empty() && self.close_received.is_none() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload(&data[..n]);
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    self.end_frame(ctx);
                }
                continue;
            }
            // A header is due.
            let (h, used) = if self.hdr_len > 0 {
                let old = self.hdr_len;
                let take = (MAX_HEADER_LEN - old).min(data.len());
                self.hdr[old..old + take].copy_from_slice(&data[..take]);
                match FrameHeader::parse(&self.hdr[..old + take]).map_err(RxError::Header)? {
                    None => {
                        self.hdr_len = old + take;
                        data = &data[take..];
                        continue;
                    }
                    Some((h, hl)) => {
                        self.hdr_len = 0;
                        (h, hl - old)
                    }
                }
            } else {
                match FrameHeader::parse(data).map_err(RxError::Header)? {
                    None => {
                        let n = data.len().min(MAX_HEADER_LEN);
                        self.hdr[..n].copy_from_slice(&data[..n]);
                        self.hdr_len = n;
                        return Ok(());
                    }
                    Some(x) => x,
                }
            };
            data = &data[used..];
            self.begin_frame(&h)?;
            // Fast path: a whole single-frame message inside this chunk.
            if h.fin
                && matches!(h.opcode, OpCode::Text | OpCode::Binary)
                && h.payload_len <= data.len() as u64
            {
                let len = h.payload_len as usize;
                self.whole_message(&data[..len], ctx);
                data = &data[len..];
                self.cur = Cur::None;
                continue;
            }
            self.remaining = h.payload_len;
            if self.remaining == 0 {
                self.end_frame(ctx);
            }
        }
        Ok(())
    }

    fn begin_frame(&mut self, h: &FrameHeader) -> Result<(), RxError> {
        if h.mask.is_some() {
            return Err(RxError::MaskedFrame);
        }
        if h.rsv != 0 {
            return Err(RxError::ReservedBits(h.rsv));
        }
        self.cur = match h.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.fragmented {
                    return Err(RxError::ExpectedContinuation);
                }
                self.msg_seen = 0;
                if let Some(env) = &mut self.envelope {
                    env.text = h.opcode == OpCode::Text;
                    env.len = 0;
                }
                self.fragmented = !h.fin;
                Cur::Data { fin: h.fin }
            }
            OpCode::Continuation => {
                if !self.fragmented {
                    return Err(RxError::UnexpectedContinuation);
                }
                self.fragmented = !h.fin;
                Cur::Data { fin: h.fin }
            }
            op => {
                self.ctrl_len = 0;
                Cur::Control(op)
            }
        };
        Ok(())
    }

    #[inline]
    fn whole_message(&mut self, payload: &[u8], ctx: &mut CheckCtx<'_>) {
        self.messages += 1;
        let payload = match &self.envelope {
            None => Some(payload),
            Some(env) => envelope::parse(env.text, env.v2, payload)
                .map(|e| offset_and_payload(&mut self.offsets, e)),
        };
        match payload.and_then(payload::decode) {
            Some(st) => self.checker.check(st, ctx),
            None => self.checker.foreign_message(),
        }
    }

    fn payload(&mut self, bytes: &[u8]) {
        match self.cur {
            Cur::Data { .. } if self.envelope.is_some() => {
                if let Some(env) = &mut self.envelope {
                    let n = (ENVELOPE_CAPTURE - env.len).min(bytes.len());
                    env.buf[env.len..env.len + n].copy_from_slice(&bytes[..n]);
                    env.len += n;
                }
            }
            Cur::Data { .. } => {
                if self.msg_seen < STAMP_LEN {
                    let n = (STAMP_LEN - self.msg_seen).min(bytes.len());
                    self.stamp[self.msg_seen..self.msg_seen + n].copy_from_slice(&bytes[..n]);
                    self.msg_seen += n;
                }
            }
            Cur::Control(_) => {
                let n = (self.ctrl.len() - self.ctrl_len).min(bytes.len());
                self.ctrl[self.ctrl_len..self.ctrl_len + n].copy_from_slice(&bytes[..n]);
                self.ctrl_len += n;
            }
            Cur::None => {}
        }
    }

    fn end_frame(&mut self, ctx: &mut CheckCtx<'_>) {
        match self.cur {
            Cur::Data { fin: true } if self.envelope.is_some() => {
                self.messages += 1;
                let offsets = &mut self.offsets;
                let st = self.envelope.as_ref().and_then(|env| {
                    envelope::parse(env.text, env.v2, &env.buf[..env.len])
                        .map(|e| offset_and_payload(offsets, e))
                        .and_then(payload::decode)
                });
                match st {
                    Some(st) => self.checker.check(st, ctx),
                    None => self.checker.foreign_message(),
                }
                if let Some(env) = &mut self.envelope {
                    env.len = 0;
                }
            }
            Cur::Data { fin: true } => {
                self.messages += 1;
                match (self.msg_seen == STAMP_LEN)
                    .then(|| payload::decode(&self.stamp))
                    .flatten()
                {
                    Some(st) => self.checker.check(st, ctx),
                    None => self.checker.foreign_message(),
                }
                self.msg_seen = 0;
            }
            Cur::Data { fin: false } | Cur::None => {}
            Cur::Control(OpCode::Ping) => {
                self.ping[..self.ctrl_len].copy_from_slice(&self.ctrl[..self.ctrl_len]);
                self.ping_len = self.ctrl_len;
                self.ping_pending = true;
            }
            Cur::Control(OpCode::Close) => {
                let code =
                    (self.ctrl_len >= 2).then(|| u16::from_be_bytes([self.ctrl[0], self.ctrl[1]]));
                self.close_received = Some(code);
            }
            Cur::Control(_) => {} // pong or anything else: ignored
        }
        self.cur = Cur::None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::payload::{Stamp, fill_template, write_stamp};
    use bytes::BytesMut;
    use hdrhistogram::Histogram;
    use ringcast::proto::frame::{encode_close, encode_frame};

    fn msg(pid: u32, seq: u64, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        fill_template(&mut b).unwrap();
        write_stamp(
            &mut b,
            Stamp {
                publisher: pid,
                seq,
                sent_ns: 5,
            },
        );
        b
    }

    fn stream() -> BytesMut {
        let mut out = BytesMut::new();
        for seq in 0..20 {
            encode_frame(
                &mut out,
                true,
                OpCode::Text,
                None,
                &msg(0, seq, 64 + seq as usize * 37),
            );
        }
        // A fragmented message, a ping in between, then a close.
        let m = msg(0, 20, 300);
        encode_frame(&mut out, false, OpCode::Binary, None, &m[..10]);
        encode_frame(&mut out, false, OpCode::Continuation, None, &m[10..50]);
        encode_frame(&mut out, true, OpCode::Ping, None, b"hi");
        encode_frame(&mut out, true, OpCode::Continuation, None, &m[50..]);
        encode_frame(&mut out, true, OpCode::Text, None, b"not ours");
        encode_close(&mut out, None, 1008, "too slow");
        encode_frame(&mut out, true, OpCode::Text, None, &msg(0, 99, 64));
        out
    }

    fn feed_in_chunks(bytes: &[u8], chunk: usize) -> RxConn {
        feed_into(
            RxConn::new(Checker::new(0, 1, 1, false, true)),
            bytes,
            chunk,
        )
    }

    fn feed_into(mut rx: RxConn, bytes: &[u8], chunk: usize) -> RxConn {
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let mut ctx = CheckCtx {
            now_ns: 10,
            window: (0, u64::MAX),
            hist: &mut h,
            acks: &[],
            acked: false,
        };
        for c in bytes.chunks(chunk) {
            rx.feed(c, &mut ctx).unwrap();
        }
        rx
    }

    #[test]
    fn every_chunking_gives_the_same_result() {
        let s = stream();
        for chunk in [1, 2, 3, 7, 13, 64, 100, 4096] {
            let mut rx = feed_in_chunks(&s, chunk);
            assert_eq!(rx.messages, 22, "chunk {chunk}");
            assert_eq!(rx.checker.counts.received, 21);
            assert_eq!(rx.checker.counts.missing(), 0);
            assert_eq!(rx.checker.foreign, 1);
            assert_eq!(rx.close_received, Some(Some(1008)));
            assert_eq!(rx.take_ping(), Some(&b"hi"[..]));
            assert_eq!(rx.take_ping(), None);
        }
    }

    #[test]
    fn refuses_bad_server_frames() {
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let mut ctx = CheckCtx {
            now_ns: 10,
            window: (0, u64::MAX),
            hist: &mut h,
            acks: &[],
            acked: false,
        };
        let cases: Vec<Vec<u8>> = vec![
            {
                let mut o = BytesMut::new();
                encode_frame(&mut o, true, OpCode::Text, Some([1, 2, 3, 4]), b"x");
                o.to_vec()
            },
            vec![0x80 | 0x40 | 0x1, 0], // RSV1
            vec![0x80, 0],              // continuation out of nowhere
            vec![0x01, 0, 0x81, 0],     // new text inside a fragmented one
            vec![0x83, 0],              // reserved opcode
        ];
        for c in cases {
            let mut rx = RxConn::new(Checker::new(0, 1, 1, false, true));
            assert!(rx.feed(&c, &mut ctx).is_err(), "{c:?}");
        }
    }

    /// ringcast's mux-mode envelopes around the same stamps, text and binary, whole and
    /// fragmented, fed at every chunking: every stamp is found, acks are foreign.
    #[test]
    fn mux_envelopes_are_unwrapped_at_every_chunking() {
        let mut out = BytesMut::new();
        for seq in 0..10u64 {
            let m = msg(0, seq, 64);
            if seq % 2 == 0 {
                let mut t = br#"{"type":"message","topic":"room.1","data":""#.to_vec();
                t.extend_from_slice(&m);
                t.extend_from_slice(b"\"}");
                encode_frame(&mut out, true, OpCode::Text, None, &t);
            } else {
                let mut b = vec![6u8];
                b.extend_from_slice(b"room.1");
                b.extend_from_slice(&m);
                encode_frame(
                    &mut out,
                    seq != 9,
                    OpCode::Binary,
                    None,
                    &b[..if seq == 9 { 20 } else { b.len() }],
                );
                if seq == 9 {
                    encode_frame(&mut out, true, OpCode::Continuation, None, &b[20..]);
                }
            }
        }
        encode_frame(
            &mut out,
            true,
            OpCode::Text,
            None,
            br#"{"type":"ack","op":"subscribe"}"#,
        );
        for chunk in [1, 2, 5, 17, 64, 4096] {
            let rx = feed_into(
                RxConn::new(Checker::new(0, 1, 1, false, true)).with_envelopes(false),
                &out,
                chunk,
            );
            assert_eq!(rx.messages, 11, "chunk {chunk}");
            assert_eq!(rx.checker.counts.received, 10, "chunk {chunk}");
            assert_eq!(rx.checker.counts.missing(), 0);
            assert_eq!(rx.checker.foreign, 1, "the ack");
        }
        assert_eq!(envelope::parse(false, false, &[]), None);
        assert_eq!(envelope::parse(false, false, &[3, b'a']), None);
        assert_eq!(envelope::parse(true, false, b"{\"type\":\"pong\"}"), None);
    }

    /// Offsets in text and v2 binary envelopes, on two topics, whole and fragmented, at every
    /// chunking: room.1 runs 5, 6, 7, 9 (a gap of one), 9 again (a duplicate); room.2 runs
    /// 100, 101 on its own. Every stamp is still found.
    #[test]
    fn offsets_are_checked_per_topic_at_every_chunking() {
        let mut out = BytesMut::new();
        let sends: [(&str, u64, bool); 7] = [
            ("room.1", 5, true),
            ("room.2", 100, false),
            ("room.1", 6, false),
            ("room.1", 7, true),
            ("room.2", 101, true),
            ("room.1", 9, false),
            ("room.1", 9, true),
        ];
        for (seq, &(topic, off, text)) in sends.iter().enumerate() {
            let m = msg(0, seq as u64, 64);
            let body = if text {
                let mut t =
                    format!(r#"{{"type":"message","topic":"{topic}","offset":{off},"data":""#)
                        .into_bytes();
                t.extend_from_slice(&m);
                t.extend_from_slice(b"\"}");
                t
            } else {
                let mut b = vec![topic.len() as u8];
                b.extend_from_slice(topic.as_bytes());
                b.extend_from_slice(&off.to_be_bytes());
                b.extend_from_slice(&m);
                b
            };
            let op = if text { OpCode::Text } else { OpCode::Binary };
            if seq == 5 {
                // Fragmented inside the offset.
                encode_frame(&mut out, false, op, None, &body[..10]);
                encode_frame(&mut out, true, OpCode::Continuation, None, &body[10..]);
            } else {
                encode_frame(&mut out, true, op, None, &body);
            }
        }
        for chunk in [1, 2, 5, 17, 64, 4096] {
            let rx = feed_into(
                RxConn::new(Checker::new(0, 1, 1, false, true)).with_envelopes(true),
                &out,
                chunk,
            );
            assert_eq!(rx.messages, 7, "chunk {chunk}");
            assert_eq!(rx.checker.foreign, 0, "chunk {chunk}");
            // Stamps 0..7 with a duplicate-free run: every one received.
            assert_eq!(rx.checker.counts.received, 7, "chunk {chunk}");
            let c = rx.offsets.counts;
            assert_eq!(
                (c.checked, c.gaps, c.missing, c.dups),
                (7, 1, 1, 1),
                "chunk {chunk}"
            );
            assert_eq!(rx.offsets.last(b"room.1"), Some(9));
            assert_eq!(rx.offsets.last(b"room.2"), Some(101));
        }
        // Read as v1, the binary envelopes' offsets are taken for payload: those stamps are
        // foreign and only the text offsets are checked.
        let rx = feed_into(
            RxConn::new(Checker::new(0, 1, 1, false, true)).with_envelopes(false),
            &out,
            4096,
        );
        assert_eq!(rx.checker.foreign, 3);
        assert_eq!(rx.offsets.counts.checked, 4);
    }
}
