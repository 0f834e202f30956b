//! What a backend presents to authenticate a request: the credential of
//! `Authorization: Bearer <token>` or `X-Api-Key: <key>`, taken out of the request head.
//!
//! Pure and small on purpose: the shard's one authorization point
//! (`ShardState::authorize_backend`) calls [`presented_credential`] and hands the result to
//! the verifier (JWT or API key), so the rules for reading the headers live in one place
//! and are tested here. Nothing here logs, and no error carries the credential itself.
//!
//! Rules:
//! - the scheme `Bearer` is matched case-insensitively (RFC 9110 §11.1), the token is
//!   trimmed of surrounding spaces and tabs, and must be non-empty visible ASCII without
//!   spaces (RFC 6750 §2.1 `b64token`, which also covers JWTs and this server's API keys);
//! - any other scheme (`Basic`, `Digest`...) is refused: a backend that sends one expects
//!   it to be checked, and silently ignoring it would hide a misconfiguration;
//! - `X-Api-Key` carries the key alone (same character rule);
//! - several credentials (two `Authorization` headers, two `X-Api-Key` headers, or one of
//!   each) are refused as ambiguous rather than picking one.

use crate::proto::handshake::Head;

/// A credential as presented, borrowing the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <token>` (a JWT, or an API key sent as a bearer token).
    Bearer(&'a str),
    /// `X-Api-Key: <key>`.
    ApiKey(&'a str),
}

impl<'a> Credential<'a> {
    /// The token or key itself, for the verifier. Never log it.
    pub fn secret(&self) -> &'a str {
        match self {
            Credential::Bearer(s) | Credential::ApiKey(s) => s,
        }
    }
}

/// Why the presented credential could not be read (an answer of 401 fits each). The
/// messages name the header, never its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// `Authorization` with a scheme other than `Bearer`.
    UnsupportedScheme,
    /// An empty token or key, or one with bytes outside visible ASCII (spaces included).
    Malformed,
    /// More than one credential in the request.
    Ambiguous,
}

impl std::fmt::Display for CredentialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CredentialError::UnsupportedScheme => {
                "Authorization: only the Bearer scheme is supported"
            }
            CredentialError::Malformed => "malformed credential (empty, or not visible ASCII)",
            CredentialError::Ambiguous => {
                "more than one credential (Authorization and/or X-Api-Key given twice)"
            }
        })
    }
}

impl std::error::Error for CredentialError {}

/// The credential the request presents: `Ok(None)` when it presents none.
pub fn presented_credential<'a>(
    head: &Head<'a>,
) -> Result<Option<Credential<'a>>, CredentialError> {
    let mut found = None;
    for v in head.headers_named("authorization") {
        let cred = Credential::Bearer(bearer(v)?);
        if found.replace(cred).is_some() {
            return Err(CredentialError::Ambiguous);
        }
    }
    for v in head.headers_named("x-api-key") {
        let cred = Credential::ApiKey(token(v)?);
        if found.replace(cred).is_some() {
            return Err(CredentialError::Ambiguous);
        }
    }
    Ok(found)
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Result<&str, CredentialError> {
    let value = trim(value);
    const SCHEME: &[u8] = b"bearer";
    let scheme_len = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    if !value[..scheme_len].eq_ignore_ascii_case(SCHEME) {
        return Err(CredentialError::UnsupportedScheme);
    }
    token(&value[scheme_len..])
}

/// A token: trimmed, non-empty, visible ASCII only.
fn token(value: &[u8]) -> Result<&str, CredentialError> {
    let value = trim(value);
    if value.is_empty() || !value.iter().all(|b| b.is_ascii_graphic()) {
        return Err(CredentialError::Malformed);
    }
    // Visible ASCII is UTF-8.
    std::str::from_utf8(value).map_err(|_| CredentialError::Malformed)
}

fn trim(v: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::{HandshakeLimits, parse_head};

    fn cred(headers: &str) -> Result<Option<String>, CredentialError> {
        let raw = format!("POST /publish HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let head = parse_head(raw.as_bytes(), &HandshakeLimits::default()).unwrap();
        presented_credential(&head).map(|c| {
            c.map(|c| match c {
                Credential::Bearer(t) => format!("bearer:{t}"),
                Credential::ApiKey(k) => format!("key:{k}"),
            })
        })
    }

    #[test]
    fn bearer_and_api_key() {
        assert_eq!(cred(""), Ok(None));
        assert_eq!(
            cred("Authorization: Bearer abc.def-ghi\r\n"),
            Ok(Some("bearer:abc.def-ghi".into()))
        );
        // Scheme case-insensitive, spaces and tabs trimmed.
        assert_eq!(
            cred("authorization: bEaReR \t tok  \r\n"),
            Ok(Some("bearer:tok".into()))
        );
        assert_eq!(
            cred("X-Api-Key:  rk_live_1 \r\n"),
            Ok(Some("key:rk_live_1".into()))
        );
        assert_eq!(cred("x-api-key: k=\r\n"), Ok(Some("key:k=".into())));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            cred("Authorization: Basic dXNlcjpwYXNz\r\n"),
            Err(CredentialError::UnsupportedScheme)
        );
        // A scheme that only starts like Bearer.
        assert_eq!(
            cred("Authorization: Bearertok\r\n"),
            Err(CredentialError::UnsupportedScheme)
        );
        assert_eq!(
            cred("Authorization: Bearer\r\n"),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            cred("Authorization: Bearer a b\r\n"),
            Err(CredentialError::Malformed)
        );
        assert_eq!(cred("X-Api-Key: \r\n"), Err(CredentialError::Malformed));
        assert_eq!(
            cred("X-Api-Key: k\u{e9}y\r\n"),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            cred("Authorization: Bearer a\r\nX-Api-Key: b\r\n"),
            Err(CredentialError::Ambiguous)
        );
        assert_eq!(
            cred("X-Api-Key: a\r\nX-Api-Key: a\r\n"),
            Err(CredentialError::Ambiguous)
        );
        // The messages never carry the value.
        for e in [
            CredentialError::UnsupportedScheme,
            CredentialError::Malformed,
            CredentialError::Ambiguous,
        ] {
            assert!(!e.to_string().contains("dXNlcjpwYXNz"));
        }
    }
}
