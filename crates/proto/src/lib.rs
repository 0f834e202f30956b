//! Sans-I/O RFC 6455: the WebSocket protocol without sockets, clocks or libc.
//!
//! Bytes go in, events and output bytes come out into buffers the caller owns, in the server
//! role (used by the server engine) and the client role (used by the load generator and tests).
//! Every byte a client sends passes through here, so the code is incremental (short input is
//! "need more", never an error), bounded (every buffer has a cap) and never panics on input.
//!
//! # Layout
//! - [`handshake`]: HTTP/1.1 request parsing (`httparse`, bounded), the §4.2.1 upgrade
//!   validation, the 101 / error responses, the client request and response check.
//! - [`frame`]: opcodes, incremental frame header parsing, header and whole-frame encoding.
//! - [`mask`]: SIMD unmasking with its scalar twin (the only module allowed `unsafe`).
//! - [`utf8`]: streaming UTF-8 validation across fragments and reads (fail fast).
//! - [`close`]: close codes and close payload validation.
//! - [`conn`]: the connection state machine: assembly, control frames, limits, close handshake.
//! - [`error`]: [`ProtocolError`], one variant per violation, mapped to a close code in one place.

pub mod close;
pub mod conn;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod tests;

pub use close::{close_code, is_valid_close_code};
pub use conn::{Connection, Event, Limits, Progress, Role, State};
pub use error::ProtocolError;
pub use frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_close, encode_frame};
pub use handshake::{
    ExtensionOffer, HandshakeError, HandshakeLimits, Request, Upgrade, accept_key, generate_key,
    parse_request, parse_response, write_101, write_client_request, write_response,
};
pub use mask::{unmask, unmask_scalar};
