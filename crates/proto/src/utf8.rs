//! Streaming UTF-8 validation of text messages that arrive in pieces (fragments and reads).
//!
//! A code point may be split between frames and between reads. [`Utf8Validator`] keeps the up to
//! three bytes of an incomplete code point between chunks and validates every chunk as it
//! arrives with `simdutf8::compat` (whose error says how far the input was valid and whether it
//! merely ended early), so an invalid sequence fails the message as soon as it is seen, not at
//! the end of the message (close code 1007).

use super::error::ProtocolError;

/// Incremental UTF-8 validator. `Default` is the start of a message.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    /// The incomplete code point carried over from the previous chunk.
    partial: [u8; 4],
    /// Bytes used in `partial` (0–3).
    partial_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Forget any carried bytes (start of a new message).
    #[inline]
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// True when no incomplete code point is pending.
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.partial_len == 0
    }

    /// Validate the next chunk. Fails as soon as the bytes seen so far cannot be the prefix of
    /// valid UTF-8.
    #[inline]
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ProtocolError> {
        if self.partial_len > 0 {
            let have = self.partial_len as usize;
            let take = (4 - have).min(chunk.len());
            let mut tmp = self.partial;
            tmp[have..have + take].copy_from_slice(&chunk[..take]);
            match simdutf8::compat::from_utf8(&tmp[..have + take]) {
                Ok(_) => {
                    self.partial_len = 0;
                    chunk = &chunk[take..];
                }
                Err(e) if e.valid_up_to() >= have => {
                    // The carried code point is complete; what follows is checked below.
                    self.partial_len = 0;
                    chunk = &chunk[e.valid_up_to() - have..];
                }
                Err(e) => {
                    if e.error_len().is_some() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    // Still incomplete: the chunk was too short to finish it.
                    self.partial = tmp;
                    self.partial_len = (have + take) as u8;
                    return Ok(());
                }
            }
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.error_len().is_some() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                let rest = &chunk[e.valid_up_to()..];
                self.partial[..rest.len()].copy_from_slice(rest);
                self.partial_len = rest.len() as u8;
                Ok(())
            }
        }
    }

    /// End of the message: an incomplete code point is an error. Resets the validator.
    #[inline]
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let complete = self.is_complete();
        self.reset();
        if complete {
            Ok(())
        } else {
            Err(ProtocolError::InvalidUtf8)
        }
    }
}

/// Validate a whole message in one go (the zero-copy path).
#[inline]
pub fn validate(bytes: &[u8]) -> Result<(), ProtocolError> {
    simdutf8::basic::from_utf8(bytes)
        .map(|_| ())
        .map_err(|_| ProtocolError::InvalidUtf8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn streamed(bytes: &[u8], cuts: &[usize]) -> Result<(), ProtocolError> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &c in cuts {
            let c = c.clamp(start, bytes.len());
            v.feed(&bytes[start..c])?;
            start = c;
        }
        v.feed(&bytes[start..])?;
        v.finish()
    }

    #[test]
    fn every_split_of_multibyte_text() {
        let s = "aé€😀z\u{10FFFF}".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(streamed(s, &[i, j]), Ok(()), "{i} {j}");
            }
        }
        // Byte by byte.
        let cuts: Vec<usize> = (0..s.len()).collect();
        assert_eq!(streamed(s, &cuts), Ok(()));
    }

    #[test]
    fn fails_fast_before_the_end() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"hello "), Ok(()));
        // 0xF4 0x90 starts a code point above U+10FFFF: invalid as soon as 0x90 is seen.
        assert_eq!(v.feed(b"\xF4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(ProtocolError::InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xCE\xBA\xE1"), Ok(()));
        assert_eq!(
            v.feed(b"\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0"),
            Err(ProtocolError::InvalidUtf8)
        );
        // Incomplete at the end.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ab\xE2\x82"), Ok(()));
        assert_eq!(v.finish(), Err(ProtocolError::InvalidUtf8));
    }

    proptest! {
        #[test]
        fn streaming_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                     a in 0usize..64, b in 0usize..64, c in 0usize..64) {
            let mut cuts = [a, b, c];
            cuts.sort();
            let want = std::str::from_utf8(&bytes).is_ok();
            prop_assert_eq!(streamed(&bytes, &cuts).is_ok(), want);
        }

        #[test]
        fn streaming_agrees_on_valid_text(s in "\\PC{0,40}", a in 0usize..200, b in 0usize..200) {
            let mut cuts = [a, b];
            cuts.sort();
            prop_assert_eq!(streamed(s.as_bytes(), &cuts), Ok(()));
        }
    }
}
