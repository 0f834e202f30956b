//! Fuzz target bodies, as plain functions so that both the cargo-fuzz targets in `fuzz/` and
//! the stable unit tests (bounded random inputs) run them. Each asserts the invariants the
//! server relies on; any panic is a bug.

use bytes::BytesMut;

use super::conn::{Connection, Event, Limits, Role, State};
use super::frame::{FrameHeader, MAX_HEADER_LEN, OpCode};
use super::handshake::{self, HandshakeLimits};

/// The handshake parser (server role request, client role response) on arbitrary bytes.
pub fn handshake(data: &[u8]) {
    let limits = HandshakeLimits {
        max_header_bytes: 1024,
        max_headers: 16,
    };
    if let Ok(Some(req)) = handshake::parse_request(data, &limits) {
        assert!(req.head_len <= data.len() && req.head_len <= limits.max_header_bytes);
        let _ = req.is_upgrade();
        let _ = req.content_length();
        let _ = req.query_param("a");
        match req.websocket() {
            Ok(up) => {
                assert_eq!(up.accept.len(), 28);
                let mut out = Vec::new();
                handshake::write_101(&up, up.protocols.first().map(String::as_str), &mut out);
                assert!(out.ends_with(b"\r\n\r\n"));
            }
            Err(e) => {
                assert!(matches!(e.status(), 400 | 426 | 431));
                let mut out = Vec::new();
                e.write_response(&mut out);
            }
        }
    }
    let _ = handshake::parse_response(data, "dGhlIHNhbXBsZSBub25jZQ==");
}

/// The frame header parser: never reads past the input, and what it parses re-encodes to a
/// header that parses to the same value.
pub fn frame_header(data: &[u8]) {
    if let Ok(Some((h, n))) = FrameHeader::parse(data) {
        assert!(n <= data.len() && n <= MAX_HEADER_LEN);
        assert!(h.encoded_len() <= n);
        let mut buf = [0u8; MAX_HEADER_LEN];
        let m = h.write(&mut buf);
        assert_eq!(FrameHeader::parse(&buf[..m]), Ok(Some((h, m))));
    }
}

/// A whole server-role connection fed `data[8..]` in reads of random sizes (seeded by
/// `data[..8]`), with small limits. Checks progress, bounds, UTF-8 and the state rules.
pub fn server_connection(data: &[u8]) {
    let (seed, stream) = match data.split_first_chunk::<8>() {
        Some((s, rest)) => (u64::from_le_bytes(*s), rest),
        None => (0, data),
    };
    let mut rng = SplitMix64(seed);
    let limits = Limits {
        max_frame_size: 300,
        max_message_size: 500,
    };
    let mut conn = Connection::new(Role::Server, limits);
    let mut out = BytesMut::new();
    let mut failed = false;
    let mut rest = stream;
    while !rest.is_empty() {
        let n = 1 + (rng.next_u64() % rest.len().min(64) as u64) as usize;
        let mut read = rest[..n].to_vec();
        rest = &rest[n..];
        let mut at = 0;
        while at < read.len() {
            let before = out.len();
            let left = read.len() - at;
            match conn.feed(&mut read[at..], &mut out) {
                Ok(p) => {
                    assert!(p.consumed <= left);
                    assert!(p.consumed > 0 || p.event.is_some(), "no progress");
                    if failed {
                        assert!(p.event.is_none() && p.consumed == left);
                    }
                    match p.event {
                        Some(Event::Message { opcode, payload }) => {
                            assert!(matches!(opcode, OpCode::Text | OpCode::Binary));
                            assert!(payload.len() <= limits.max_message_size);
                            if opcode == OpCode::Text {
                                assert!(std::str::from_utf8(payload).is_ok());
                            }
                        }
                        Some(Event::Ping(p) | Event::Pong(p)) => assert!(p.len() <= 125),
                        Some(Event::Close { .. }) => {
                            assert!(server_frames_unmasked(&out, before));
                        }
                        None => {}
                    }
                    at += p.consumed;
                }
                Err(e) => {
                    assert!(!failed, "one error only");
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    assert_eq!(conn.state(), State::Closed);
                    failed = true;
                }
            }
        }
    }
    let _ = conn.eof();
    assert_eq!(conn.state(), State::Closed);
}

/// Server output is unmasked frames: what was appended (if anything) parses as one.
fn server_frames_unmasked(out: &BytesMut, before: usize) -> bool {
    let written = &out[before..];
    written.is_empty()
        || matches!(FrameHeader::parse(written), Ok(Some((h, _))) if h.mask.is_none())
}

/// The read sizes of [`server_connection`]: a deterministic function of the input's seed
/// (SplitMix64), so a failing input replays exactly; the core uses no random generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
