//! Frame headers (RFC 6455 §5.2): incremental parsing and encoding, opcodes, and whole-frame
//! encoding into caller-owned buffers.
//!
//! [`FrameHeader::parse`] is incremental: on short input it returns `Ok(None)` and consumes
//! nothing, so a header split at any byte across any number of reads is ordinary. It rejects only
//! what is wrong whatever the role: reserved opcodes, a 64-bit length with the top bit set, and
//! control frames that are fragmented or longer than 125 bytes. Role-dependent checks (mask bit,
//! RSV bits without an extension, message sequencing, size limits) belong to
//! [`super::conn::Connection`].

use bytes::BufMut;

use super::error::ProtocolError;
use super::mask;

/// Frame opcodes (RFC 6455 §5.2). Reserved values are not representable.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation = 0x0,
    /// First (or only) frame of a UTF-8 text message.
    Text = 0x1,
    /// First (or only) frame of a binary message.
    Binary = 0x2,
    /// Close control frame.
    Close = 0x8,
    /// Ping control frame.
    Ping = 0x9,
    /// Pong control frame.
    Pong = 0xA,
}

impl OpCode {
    /// Close, Ping and Pong are control frames (opcode bit 3 set).
    #[inline]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    /// The opcode for a 4-bit value, `None` for the reserved ones.
    #[inline]
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The three reserved bits, RSV1 = 0b100, RSV2 = 0b010, RSV3 = 0b001.
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key when the MASK bit is set (client-to-server frames).
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// The longest possible header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

impl FrameHeader {
    /// Parse a header from the start of `buf`.
    ///
    /// `Ok(None)`: not a whole header yet, nothing consumed. `Ok(Some((h, header_len)))`: the
    /// payload starts at `buf[header_len]`. `Err` on a reserved opcode, a 64-bit length with the
    /// top bit set, a control frame over 125 bytes or without FIN (detected as early as the bytes
    /// that show it are present).
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let Some(opcode) = OpCode::from_u8(b0 & 0x0F) else {
            return Err(ProtocolError::ReservedOpcode(b0 & 0x0F));
        };
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() && len7 as usize > MAX_CONTROL_PAYLOAD {
            // 126/127 announce extended lengths, which are always > 125.
            return Err(ProtocolError::ControlFrameTooLong(len7 as u64));
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(None);
        }
        let payload_len = match len7 {
            126 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidPayloadLength);
                }
                len
            }
            n => n as u64,
        };
        let mask = if masked {
            let m = 2 + ext;
            Some([buf[m], buf[m + 1], buf[m + 2], buf[m + 3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            header_len,
        )))
    }

    /// Bytes [`FrameHeader::write`] produces (minimal length encoding).
    #[inline]
    pub fn encoded_len(&self) -> usize {
        let ext = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + ext + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Write the header into `out` with the minimal length encoding; returns the bytes written.
    #[inline]
    pub fn write(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (self.fin as u8) << 7 | (self.rsv & 0x7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        n
    }
}

/// The encoded header of a frame without RSV bits: bytes and length.
fn data_header(
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: usize,
) -> ([u8; MAX_HEADER_LEN], usize) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        payload_len: len as u64,
    };
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = header.write(&mut hdr);
    (hdr, n)
}

/// Appends one whole frame; with `mask` the payload is masked on the way (client role).
pub fn encode_frame<B: BufMut>(
    out: &mut B,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let (hdr, n) = data_header(fin, opcode, mask, payload.len());
    out.put_slice(&hdr[..n]);
    match mask {
        None => out.put_slice(payload),
        Some(key) => {
            // Mask through a small stack buffer: `BufMut` gives no safe access to what was
            // written. (`Connection` writes into its `BytesMut` directly and masks in place.)
            // Chunks are multiples of 4 bytes, so the key phase carries over unchanged.
            let mut tmp = [0u8; 256];
            for chunk in payload.chunks(tmp.len()) {
                let t = &mut tmp[..chunk.len()];
                t.copy_from_slice(chunk);
                mask::unmask(t, key);
                out.put_slice(t);
            }
        }
    }
}

/// [`encode_frame`] into a `BytesMut`, masking in place in the output (no bounce buffer).
pub(crate) fn encode_frame_bytes(
    out: &mut bytes::BytesMut,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let (hdr, n) = data_header(fin, opcode, mask, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        mask::unmask(&mut out[start..], key);
    }
}

/// Close frame payload helper: code (big-endian) + reason. The reason is cut at a character
/// boundary so the payload fits the 125-byte control-frame limit.
pub fn encode_close<B: BufMut>(out: &mut B, mask: Option<[u8; 4]>, code: u16, reason: &str) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, true, OpCode::Close, mask, &payload[..2 + end]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opcode() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    proptest! {
        #[test]
        fn header_round_trip(fin in any::<bool>(), rsv in 0u8..8, op in opcode(),
                             mask in any::<Option<[u8; 4]>>(),
                             len in prop_oneof![0u64..=125, 126u64..=0xFFFF, 0x10000u64..(1 << 63)]) {
            let fin = fin || op.is_control();
            let len = if op.is_control() { len % 126 } else { len };
            let h = FrameHeader { fin, rsv, opcode: op, mask, payload_len: len };
            let mut buf = [0u8; MAX_HEADER_LEN];
            let n = h.write(&mut buf);
            prop_assert_eq!(n, h.encoded_len());
            prop_assert_eq!(FrameHeader::parse(&buf[..n]), Ok(Some((h, n))));
            for short in 0..n {
                prop_assert_eq!(FrameHeader::parse(&buf[..short]), Ok(None));
            }
        }

        #[test]
        fn frame_round_trip(op in opcode(), mask in any::<Option<[u8; 4]>>(),
                            payload in proptest::collection::vec(any::<u8>(), 0..70000)) {
            let payload = if op.is_control() { &payload[..payload.len().min(125)] } else { &payload[..] };
            let mut out = Vec::new();
            encode_frame(&mut out, true, op, mask, payload);
            let (h, n) = FrameHeader::parse(&out).unwrap().unwrap();
            prop_assert_eq!(h.payload_len as usize, payload.len());
            prop_assert_eq!(h.mask, mask);
            prop_assert_eq!(out.len(), n + payload.len());
            let body = &mut out[n..];
            if let Some(k) = mask { mask::unmask(body, k); }
            prop_assert_eq!(&*body, payload);
        }

        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = FrameHeader::parse(&buf);
        }
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            FrameHeader::parse(&[0x83, 0x00]),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            FrameHeader::parse(&[0x8B]),
            Err(ProtocolError::ReservedOpcode(0xB))
        );
        assert_eq!(
            FrameHeader::parse(&[0x09]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 0x7E]),
            Err(ProtocolError::ControlFrameTooLong(126))
        );
        let mut big = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            FrameHeader::parse(&big),
            Err(ProtocolError::InvalidPayloadLength)
        );
        big[2] = 0x7F;
        assert!(matches!(FrameHeader::parse(&big), Ok(Some(_))));
    }

    #[test]
    fn encode_close_truncates_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        encode_close(&mut out, None, 1000, &reason);
        let (h, n) = FrameHeader::parse(&out).unwrap().unwrap();
        assert!(h.payload_len <= 125);
        assert!(std::str::from_utf8(&out[n + 2..]).is_ok());
    }
}
