//! Token and API-key verification → rights. Pure: no sockets on shard threads, no clock
//! (callers pass `now` as unix seconds), no locks on the verification path.
//!
//! A connection token is a JWT (compact JWS) signed with an HMAC secret, a PEM public key
//! (RSA, EC, Ed25519), a key of a JWK Set file, or a key of a JWK Set URL fetched on its
//! own thread. [`Verifier::verify`] turns it into a [`Session`]: the user (`sub`), the
//! expiry (`exp`) and the [`Rights`] its `topics` claim grants:
//!
//! ```json
//! {"sub": "alice", "exp": 1800000000,
//!  "topics": {"sub": ["news.*", "user.{sub}.*"], "pub": ["chat.room1"]}}
//! ```
//!
//! Every failure is one [`TokenError`], mapped to the wire by [`TokenError::wire`]; setup
//! problems are [`SetupError`]. The key set lives behind an `ArcSwap`: the JWKS thread
//! replaces it whole, shards read it without locking.
//!
//! # Layout
//!
//! - `verifier`: [`AuthSettings`], [`Verifier`], [`Session`]; the order of the checks.
//! - `keys`: loading keys and pinning each to its algorithm family; choosing by `kid`.
//! - `claims`: the claims of a signed token, straight into borrowed strings; time,
//!   audience and issuer checks.
//! - `rights`: [`Pattern`] and [`Rights`]: parsing (`{sub}`, the refused shapes) and
//!   matching.
//! - `jwks_fetch`: the JWKS URL thread: cache, rate-limited refetch, last good set kept.
//! - `api_key`: constant-time API-key comparison.
//! - `error`: [`TokenError`], [`AuthWire`], [`SetupError`], the close codes.
//! - `testdata/`: test-only keys (see its README).

mod api_key;
mod claims;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod jwks_fetch;
mod keys;
mod rights;
mod verifier;

pub use error::{
    AuthWire, CLOSE_DISCONNECTED, CLOSE_FORBIDDEN, CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_INVALID,
    SetupError, TokenError,
};
pub use jwks_fetch::JwksStats;
pub use rights::{MAX_PATTERNS_PER_LIST, MAX_TOPIC_BYTES, Pattern, PatternError, Rights};
pub use verifier::{AuthSettings, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_BYTES, Session, Verifier};

#[cfg(test)]
mod tests;
