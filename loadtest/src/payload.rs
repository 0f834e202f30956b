//! The payload codec: what every published message carries so that each
//! subscriber can check order, gaps and duplicates and measure latency.
//!
//! Layout (ASCII, so the same bytes are valid as a text frame and as binary):
//!
//! ```text
//! offset 0   "rc"                      marker
//! offset 2   publisher id, 8 hex       u32 (top bit set: a `blast` stream, low bits = cycle length)
//! offset 10  sequence, 16 hex          u64, per publisher (per connection for blast)
//! offset 26  send time, 16 hex         CLOCK_MONOTONIC ns
//! offset 42  '.' padding up to the message size
//! ```
//!
//! Decoding is branch-light SWAR (eight hex digits per step) because it runs
//! once per delivered message on the receive path, tens of millions of times a
//! second; it never allocates.

/// Bytes taken by the stamp; the smallest message size the generator can send.
pub const STAMP_LEN: usize = 42;
const MARKER: [u8; 2] = *b"rc";
const PAD: u8 = b'.';

/// Publisher ids with this bit are `blast` streams: sequence numbers cycle
/// modulo the low 31 bits (the number of frames in blast's pre-built batch).
pub const BLAST_FLAG: u32 = 0x8000_0000;

/// What a payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Publisher id (index of the publisher, or `BLAST_FLAG | cycle`).
    pub publisher: u32,
    /// Per-publisher sequence number, starting at 0.
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds when the message was handed to the socket.
    pub sent_ns: u64,
}

/// A u32 as eight lowercase hex digits, most significant first (SWAR: the
/// nibbles are spread one per byte, then turned into ASCII all at once).
#[inline(always)]
fn hex8_encode(v: u32) -> [u8; 8] {
    let x = u64::from(v);
    let x = ((x & 0xffff_0000) << 16) | (x & 0x0000_ffff);
    let x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
    let x = ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f);
    let letters = ((x + LANES * 6) >> 4) & LANES; // 1 in bytes holding 10..=15
    (x + LANES * 0x30 + letters * 0x27).to_be_bytes()
}

#[inline(always)]
fn put_hex16(out: &mut [u8], v: u64) {
    out[..8].copy_from_slice(&hex8_encode((v >> 32) as u32));
    out[8..16].copy_from_slice(&hex8_encode(v as u32));
}

/// Fills `buf` (the whole message) with the marker and padding; the stamp
/// fields are then written by [`write_stamp`]. Errors when `buf` is shorter than
/// [`STAMP_LEN`].
pub fn fill_template(buf: &mut [u8]) -> Result<(), String> {
    if buf.len() < STAMP_LEN {
        return Err(format!(
            "message size {} is below the minimum of {STAMP_LEN} bytes (the payload stamp)",
            buf.len()
        ));
    }
    buf[..2].copy_from_slice(&MARKER);
    buf[STAMP_LEN..].fill(PAD);
    Ok(())
}

/// Writes the stamp fields into a message prepared by [`fill_template`].
/// `buf` must be at least [`STAMP_LEN`] long (callers size it once).
#[inline]
pub fn write_stamp(buf: &mut [u8], stamp: Stamp) {
    if buf.len() < STAMP_LEN {
        return;
    }
    buf[..2].copy_from_slice(&MARKER);
    buf[2..10].copy_from_slice(&hex8_encode(stamp.publisher));
    put_hex16(&mut buf[10..26], stamp.seq);
    put_hex16(&mut buf[26..42], stamp.sent_ns);
}

/// Rewrites only the send time (used by blast to refresh a pre-built batch).
#[inline]
pub fn write_time(buf: &mut [u8], sent_ns: u64) {
    if buf.len() >= STAMP_LEN {
        put_hex16(&mut buf[26..42], sent_ns);
    }
}

const LANES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = LANES * 0x80;

/// Eight ASCII hex digits (big-endian word: first char most significant) to a
/// u32, plus a validity mask that is `HIGH` for every byte in '0'..='f' (a
/// cheap range check; the marker check catches foreign payloads first).
/// Masks of several words are ANDed so decode branches once.
#[inline(always)]
fn hex8(v: u64) -> (u32, u64) {
    let ge = (v | HIGH).wrapping_sub(LANES * 0x30) & HIGH;
    let le = (LANES * 0xe6).wrapping_sub(v) & HIGH;
    let ascii = !v & HIGH;
    // '0'..'9' -> 0..9, 'a'..'f' -> 10..15 (bit 6 marks letters).
    let n = (v & (LANES * 0x0f)) + ((v >> 6) & LANES) * 9;
    let n = (n | (n >> 4)) & 0x00ff_00ff_00ff_00ff;
    let n = (n | (n >> 8)) & 0x0000_ffff_0000_ffff;
    let n = (n | (n >> 16)) & 0x0000_0000_ffff_ffff;
    (n as u32, ge & le & ascii)
}

#[inline(always)]
fn word(b: &[u8; STAMP_LEN], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// Decodes the stamp at the start of a payload; None for anything that is not
/// a generator payload (too short, no marker, bad digits).
#[inline]
pub fn decode(payload: &[u8]) -> Option<Stamp> {
    let head: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    if head[..2] != MARKER {
        return None;
    }
    let (p, m0) = hex8(word(head, 2));
    let (s1, m1) = hex8(word(head, 10));
    let (s0, m2) = hex8(word(head, 18));
    let (t1, m3) = hex8(word(head, 26));
    let (t0, m4) = hex8(word(head, 34));
    if m0 & m1 & m2 & m3 & m4 != HIGH {
        return None;
    }
    Some(Stamp {
        publisher: p,
        seq: (u64::from(s1) << 32) | u64::from(s0),
        sent_ns: (u64::from(t1) << 32) | u64::from(t0),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn msg(size: usize, stamp: Stamp) -> Vec<u8> {
        let mut buf = vec![0u8; size];
        fill_template(&mut buf).unwrap();
        write_stamp(&mut buf, stamp);
        buf
    }

    #[test]
    fn round_trip_edges() {
        for &(p, s, t) in &[
            (0u32, 0u64, 0u64),
            (1, 2, 3),
            (u32::MAX, u64::MAX, u64::MAX),
            (0xdead_beef, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
            (BLAST_FLAG | 992, 991, 1_700_000_000_000_000_000),
        ] {
            let st = Stamp {
                publisher: p,
                seq: s,
                sent_ns: t,
            };
            let m = msg(64, st);
            assert_eq!(decode(&m), Some(st));
        }
    }

    #[test]
    fn round_trip_random() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let st = Stamp {
                publisher: rng.u32(..),
                seq: rng.u64(..),
                sent_ns: rng.u64(..),
            };
            assert_eq!(decode(&msg(STAMP_LEN + rng.usize(..100), st)), Some(st));
        }
    }

    #[test]
    fn encoder_matches_format() {
        for v in [0u32, 1, 9, 10, 15, 16, 0x1234_5678, 0x9abc_def0, u32::MAX] {
            assert_eq!(
                hex8_encode(v),
                *format!("{v:08x}").as_bytes().first_chunk::<8>().unwrap()
            );
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..10_000 {
            let v = rng.u32(..);
            assert_eq!(&hex8_encode(v), format!("{v:08x}").as_bytes());
        }
    }

    #[test]
    fn text_safe_and_padded() {
        let m = msg(
            100,
            Stamp {
                publisher: 5,
                seq: 6,
                sent_ns: 7,
            },
        );
        assert!(std::str::from_utf8(&m).is_ok());
        assert!(m.iter().all(|b| b.is_ascii_graphic()));
        assert!(m[STAMP_LEN..].iter().all(|&b| b == PAD));
    }

    #[test]
    fn rejects_foreign_payloads() {
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(&[b'x'; 64]), None);
        let mut m = msg(
            64,
            Stamp {
                publisher: 1,
                seq: 1,
                sent_ns: 1,
            },
        );
        m[5] = b'z';
        assert_eq!(decode(&m), None);
        m[5] = 0xff;
        assert_eq!(decode(&m), None);
        m[5] = b'/';
        assert_eq!(decode(&m), None);
        assert!(decode(&m[..41]).is_none());
    }

    #[test]
    fn template_rejects_small_sizes() {
        assert!(fill_template(&mut [0u8; 41]).is_err());
        assert!(fill_template(&mut [0u8; 42]).is_ok());
    }

    #[test]
    fn time_rewrite_keeps_other_fields() {
        let st = Stamp {
            publisher: 9,
            seq: 10,
            sent_ns: 11,
        };
        let mut m = msg(64, st);
        write_time(&mut m, 12345);
        assert_eq!(
            decode(&m),
            Some(Stamp {
                sent_ns: 12345,
                ..st
            })
        );
    }
}
