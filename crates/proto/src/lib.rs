//! Sans-I/O RFC 6455: the WebSocket protocol without sockets, clocks, libc or randomness.
//!
//! Bytes go in, events and output bytes come out into buffers the caller owns, in the server
//! role (used by the server engine) and the client role (used by the load generator and tests).
//! Every byte a client sends passes through here, so the code is incremental (short input is
//! "need more", never an error), bounded (every buffer has a cap) and never panics on input.
//!
//! This is its own crate (`ringcast-proto`; the server re-exports it as `ringcast::proto`) so
//! that the rule holds by construction: its only dependencies are `bytes`, `httparse`, `sha1`,
//! `base64` and `simdutf8`, none of which can reach a socket, a clock or a random generator.
//! What needs one comes from the caller: the client role's masking keys ([`MaskSource`]) and
//! its handshake nonce ([`handshake::generate_key`]). `unsafe` is denied everywhere but
//! [`mask`] (SIMD), where every block carries a `// SAFETY:` comment. See docs/DESIGN.md,
//! "Crates and process boundaries".
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

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

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
pub use conn::{Connection, Event, Limits, MaskSource, NoMasks, Progress, Role, State};
pub use error::ProtocolError;
pub use frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_close, encode_frame};
pub use handshake::{
    ExtensionOffer, HandshakeError, HandshakeLimits, Request, Upgrade, accept_key, generate_key,
    parse_request, parse_response, write_101, write_client_request, write_response,
};
pub use mask::{unmask, unmask_scalar};
