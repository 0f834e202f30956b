//! The protocol layer's error enum: one variant per RFC 6455 violation (or local misuse),
//! mapped to the close code that goes on the wire in exactly one place,
//! [`ProtocolError::close_code`].
//!
//! Handshake (HTTP) errors are a different layer: see [`super::handshake::HandshakeError`].

use std::fmt;

use super::close::close_code;

/// Everything that ends a WebSocket connection at the protocol level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An opcode of the reserved ranges 0x3–0x7 or 0xB–0xF (the value is the opcode). → 1002
    ReservedOpcode(u8),
    /// RSV1/RSV2/RSV3 set while no extension defining them was negotiated (the 3 bits). → 1002
    ReservedBits(u8),
    /// A 64-bit payload length with the most significant bit set (RFC 6455 §5.2). → 1002
    InvalidPayloadLength,
    /// A control frame with a payload over 125 bytes (the length). → 1002
    ControlFrameTooLong(u64),
    /// A control frame without FIN: control frames must not be fragmented. → 1002
    FragmentedControlFrame,
    /// Server role: a frame from the client without the MASK bit. → 1002
    UnmaskedFrame,
    /// Client role: a frame from the server with the MASK bit. → 1002
    MaskedFrame,
    /// A continuation frame while no fragmented message was in progress. → 1002
    UnexpectedContinuation,
    /// A new Text/Binary frame while a fragmented message was still in progress. → 1002
    ExpectedContinuation,
    /// A close frame with a 1-byte payload (a code needs 2). → 1002
    InvalidClosePayload,
    /// A close frame with a code that must not appear on the wire (the code). → 1002
    InvalidCloseCode(u16),
    /// A text message (or a fragment of one) that is not valid UTF-8, detected as soon as
    /// the offending byte arrives. → 1007
    InvalidUtf8,
    /// A close frame whose reason is not valid UTF-8. → 1007
    InvalidCloseReason,
    /// A frame payload over `Limits::max_frame_size` (the announced length). → 1009
    FrameTooLarge(u64),
    /// A message over `Limits::max_message_size` (the size it would have reached). → 1009
    MessageTooLarge(u64),
    /// The transport ended before the close handshake finished (possibly mid-frame: the partial
    /// message is dropped). 1006 is reported locally, never sent.
    AbnormalClosure,
    /// Local misuse: `send` after this endpoint sent (or answered) a close frame. Never sent.
    SendAfterClose,
    /// Local misuse: `send` of a Close/Continuation opcode, or a control payload over 125 bytes.
    /// Never sent.
    InvalidSend,
}

impl ProtocolError {
    /// The close code for this violation: the one mapping to the wire.
    ///
    /// `AbnormalClosure` maps to 1006 and the local-misuse variants to 1011; those are reported
    /// locally and never written in a close frame.
    pub fn close_code(&self) -> u16 {
        use ProtocolError::*;
        match self {
            ReservedOpcode(_)
            | ReservedBits(_)
            | InvalidPayloadLength
            | ControlFrameTooLong(_)
            | FragmentedControlFrame
            | UnmaskedFrame
            | MaskedFrame
            | UnexpectedContinuation
            | ExpectedContinuation
            | InvalidClosePayload
            | InvalidCloseCode(_) => close_code::PROTOCOL,
            InvalidUtf8 | InvalidCloseReason => close_code::INVALID_PAYLOAD,
            FrameTooLarge(_) | MessageTooLarge(_) => close_code::TOO_BIG,
            AbnormalClosure => close_code::ABNORMAL,
            SendAfterClose | InvalidSend => close_code::INTERNAL,
        }
    }

    /// A short static reason, suitable for the close frame's reason text.
    pub fn reason(&self) -> &'static str {
        use ProtocolError::*;
        match self {
            ReservedOpcode(_) => "reserved opcode",
            ReservedBits(_) => "reserved bits set",
            InvalidPayloadLength => "invalid payload length",
            ControlFrameTooLong(_) => "control frame too long",
            FragmentedControlFrame => "fragmented control frame",
            UnmaskedFrame => "unmasked client frame",
            MaskedFrame => "masked server frame",
            UnexpectedContinuation => "unexpected continuation",
            ExpectedContinuation => "expected continuation",
            InvalidClosePayload => "invalid close payload",
            InvalidCloseCode(_) => "invalid close code",
            InvalidUtf8 => "invalid utf-8",
            InvalidCloseReason => "invalid utf-8 in close reason",
            FrameTooLarge(_) => "frame too large",
            MessageTooLarge(_) => "message too large",
            AbnormalClosure => "abnormal closure",
            SendAfterClose => "send after close",
            InvalidSend => "invalid send",
        }
    }

    /// True for the variants that are the peer's fault (a close frame was sent for them).
    pub fn is_peer_violation(&self) -> bool {
        !matches!(
            self,
            ProtocolError::AbnormalClosure
                | ProtocolError::SendAfterClose
                | ProtocolError::InvalidSend
        )
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ReservedBits(b) => write!(f, "reserved bits {b:#05b} set without an extension"),
            ControlFrameTooLong(n) => write!(f, "control frame of {n} bytes (max 125)"),
            InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            FrameTooLarge(n) => write!(f, "frame of {n} bytes over the limit"),
            MessageTooLarge(n) => write!(f, "message of {n} bytes over the limit"),
            other => f.write_str(other.reason()),
        }?;
        write!(f, " (close code {})", self.close_code())
    }
}

impl std::error::Error for ProtocolError {}
