//! Close codes (RFC 6455 §7.4) and the close frame payload: which codes may appear on the wire,
//! and how a received close payload is parsed and validated.

use super::error::ProtocolError;

/// Close status codes of RFC 6455 §7.4.1.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown, page navigated away).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A data type the endpoint cannot accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// No status code was present. Never sent on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// The connection ended without a close frame. Never sent on the wire.
    pub const ABNORMAL: u16 = 1006;
    /// Data inconsistent with the message type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// The client expected an extension the server did not negotiate.
    pub const EXTENSION: u16 = 1010;
    /// The server hit an unexpected condition.
    pub const INTERNAL: u16 = 1011;
}

/// May `code` appear in a close frame? 1000–1003, 1007–1011 and 3000–4999.
/// (1004–1006, 1012–1015 and everything else are rejected with 1002.)
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Parse a received close payload: `(None, "")` when empty, else the code and the UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), ProtocolError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok((Some(code), reason))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes_are_exactly_the_rfc_ranges() {
        for code in 0..=u16::MAX {
            let want = (1000..=1003).contains(&code)
                || (1007..=1011).contains(&code)
                || (3000..=4999).contains(&code);
            assert_eq!(is_valid_close_code(code), want, "{code}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1012, 1015, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(bad));
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(b""), Ok((None, "")));
        assert_eq!(
            parse_close_payload(b"\x03"),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(parse_close_payload(b"\x03\xe8bye"), Ok((Some(1000), "bye")));
        assert_eq!(
            parse_close_payload(b"\x03\xed"),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidCloseReason)
        );
    }
}
