//! The two error types of `auth` and the one mapping of a token failure to the wire.
//!
//! [`TokenError`] is what a client's token earns: one variant per reason, a stable
//! snake_case [`TokenError::reason`] for metric labels and mux error messages, and
//! [`TokenError::wire`] (close code, HTTP status, mux code), the only place that decides
//! what the peer sees. No variant carries the token or any part of it, so neither
//! `Display` nor `Debug` can leak it into a log line.
//!
//! [`SetupError`] is what the operator's configuration earns at start-up (or at reload):
//! it names the setting and the file or URL, never a secret.

use std::fmt;
use std::path::PathBuf;

/// WebSocket close code: the token's `exp` has passed (the client should fetch a new one).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// WebSocket close code: the token is missing or invalid for any other reason.
pub const CLOSE_TOKEN_INVALID: u16 = 4002;
/// WebSocket close code: the token is valid but does not grant what was asked (used by the
/// shard, not by `auth`).
pub const CLOSE_FORBIDDEN: u16 = 4003;
/// WebSocket close code: the server disconnected this client on purpose (used by the shard).
pub const CLOSE_DISCONNECTED: u16 = 4004;

/// Why a connection token was refused. One variant per failure; none holds token bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenError {
    /// No token was presented (empty string).
    Missing,
    /// The token is longer than `max_token_bytes`; refused before any decoding.
    TooLarge,
    /// Not a compact JWS: not three `.`-separated parts, bad base64url, header or claims not
    /// JSON, or a header the verifier does not understand (`crit`).
    Malformed,
    /// The signature does not verify with the key(s) the token's header selects.
    BadSignature,
    /// `now >= exp + leeway`.
    Expired,
    /// `now + leeway < nbf`.
    NotYetValid,
    /// An `audience` is configured and the token's `aud` does not contain it (or is absent).
    WrongAudience,
    /// An `issuer` is configured and the token's `iss` is not it (or is absent).
    WrongIssuer,
    /// The token names a `kid` that no configured key has, and no other key of its
    /// algorithm family verifies it.
    UnknownKey,
    /// The header's `alg` is `none`, unknown, or of a family no configured key belongs to
    /// (an HS256 token when only RSA keys are set: the classic key confusion), or the key
    /// the `kid` names is of another algorithm.
    AlgorithmNotAllowed,
    /// The claims are well-formed JSON of the wrong shape: `exp` missing or not a number,
    /// `sub`/`iss`/`aud` not strings, `topics` not `{"sub": [..], "pub": [..]}`, a bad
    /// topic pattern, too many patterns.
    BadClaims,
}

impl TokenError {
    /// Every variant, for exhaustive tests and for pre-registering metric labels.
    pub const ALL: [TokenError; 11] = [
        TokenError::Missing,
        TokenError::TooLarge,
        TokenError::Malformed,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongAudience,
        TokenError::WrongIssuer,
        TokenError::UnknownKey,
        TokenError::AlgorithmNotAllowed,
        TokenError::BadClaims,
    ];

    /// A stable snake_case name: a metric label and the text of a mux error message.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::UnknownKey => "unknown_key",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::BadClaims => "bad_claims",
        }
    }

    /// What the peer sees. Only expiry is told apart (the client can renew its token and
    /// retry); every other failure looks the same from outside, so a prober learns nothing
    /// about which check failed.
    pub fn wire(&self) -> AuthWire {
        match self {
            TokenError::Expired => AuthWire {
                close_code: CLOSE_TOKEN_EXPIRED,
                http_status: 401,
                mux_code: "token_expired",
            },
            _ => AuthWire {
                close_code: CLOSE_TOKEN_INVALID,
                http_status: 401,
                mux_code: "unauthorized",
            },
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The reason only: the token itself never appears here.
        write!(f, "token refused: {}", self.reason())
    }
}

impl std::error::Error for TokenError {}

/// How a token failure is told to the peer, whichever way it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthWire {
    /// WebSocket close code once the connection is upgraded.
    pub close_code: u16,
    /// HTTP status when refused before the upgrade (or on an HTTP route).
    pub http_status: u16,
    /// The `code` of a mux-mode error message.
    pub mux_code: &'static str,
}

/// A configuration the verifier cannot be built from. Names the setting and the file or
/// URL; never includes a secret or key bytes.
#[derive(Debug)]
pub enum SetupError {
    /// A key file could not be read.
    ReadFile {
        /// The setting the path came from (`public_key_files`, `jwks_file`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A `public_key_files` entry is not a PEM public key of a supported type (RSA, EC
    /// P-256/P-384, Ed25519).
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong, without key bytes.
        reason: String,
    },
    /// A JWK Set (file or fetched) cannot be used.
    BadJwks {
        /// The file path or URL.
        source_name: String,
        /// What is wrong, without key bytes.
        reason: String,
    },
    /// `jwks_url` is not an `http://` or `https://` URL.
    BadUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A setting has a value that cannot work (an empty HMAC secret or API key, a zero
    /// `max_token_bytes`).
    BadSetting {
        /// The setting.
        setting: &'static str,
        /// What is wrong, without the value.
        reason: String,
    },
    /// The build has no usable jsonwebtoken crypto provider (both or neither of its crypto
    /// features enabled by feature unification).
    NoCryptoProvider,
    /// The JWKS fetch thread could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::ReadFile {
                setting,
                path,
                source,
            } => {
                write!(
                    f,
                    "auth {setting}: cannot read {}: {source}",
                    path.display()
                )
            }
            SetupError::BadPem { path, reason } => {
                write!(f, "auth public_key_files: {}: {reason}", path.display())
            }
            SetupError::BadJwks {
                source_name,
                reason,
            } => {
                write!(f, "auth JWK Set {source_name}: {reason}")
            }
            SetupError::BadUrl { url, reason } => write!(f, "auth jwks_url {url:?}: {reason}"),
            SetupError::BadSetting { setting, reason } => write!(f, "auth {setting}: {reason}"),
            SetupError::NoCryptoProvider => f.write_str(
                "auth: jsonwebtoken has no crypto provider (exactly one of its aws_lc_rs and \
                 rust_crypto features must be enabled)",
            ),
            SetupError::Thread(e) => write!(f, "auth jwks_url: cannot start the fetch thread: {e}"),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::ReadFile { source, .. } => Some(source),
            SetupError::Thread(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for e in TokenError::ALL {
            let r = e.reason();
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
            assert!(seen.insert(r), "duplicate reason {r}");
            assert!(e.to_string().contains(r));
        }
    }

    #[test]
    fn only_expiry_is_told_apart_on_the_wire() {
        for e in TokenError::ALL {
            let w = e.wire();
            assert_eq!(w.http_status, 401);
            if e == TokenError::Expired {
                assert_eq!((w.close_code, w.mux_code), (4001, "token_expired"));
            } else {
                assert_eq!((w.close_code, w.mux_code), (4002, "unauthorized"));
            }
        }
        assert_eq!((CLOSE_FORBIDDEN, CLOSE_DISCONNECTED), (4003, 4004));
    }
}
