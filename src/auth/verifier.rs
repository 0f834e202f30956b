//! [`Verifier`]: built once from [`AuthSettings`], cloned to every shard, and asked
//! [`Verifier::verify`] for each token. Verification reads the key set through an
//! `ArcSwap` (no lock), reads no clock (`now` comes in) and does no I/O.
//!
//! Order of checks in `verify`, each failure one [`TokenError`]: presence and size (before
//! any decoding), the compact form, the header (`alg`, `kid`; `crit` is refused), the key
//! choice by `kid` or by algorithm family, the signature, then the claims
//! ([`super::claims`]). Claims are parsed only once the signature holds.
//!
//! jsonwebtoken supplies the key parsing and the signature check
//! (`jsonwebtoken::crypto::verify`); the header, the claims and the time checks are done
//! here rather than with `jsonwebtoken::decode`, because `decode` reads the system clock
//! (the caller's `now` must decide), parses the claims twice and only into owned types.

use std::borrow::Cow;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use super::api_key::ApiKeys;
use super::claims::{self, ClaimRules};
use super::error::{SetupError, TokenError};
use super::jwks_fetch::{self, JwksStats, Timing};
use super::keys::{self, Candidates, JwksOrigin, Key, KeySet};
use super::rights::Rights;

/// Default grace on `exp` and `nbf`: clocks of the token issuer and of this server may
/// differ by a few seconds; 5 s covers NTP-synchronised hosts without keeping an expired
/// token alive noticeably.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// Default `max_token_bytes`: 8 KiB, well above a token with 2 × 64 patterns.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What the verifier is built from (filled by the config layer).
#[derive(Clone)]
pub struct AuthSettings {
    /// HMAC secrets (HS256/384/512). A token without a matching `kid` is tried against all.
    pub hmac_secrets: Vec<Vec<u8>>,
    /// PEM public keys, each RSA, EC (P-256 → ES256, P-384 → ES384) or Ed25519 (EdDSA);
    /// the type is detected.
    pub public_key_files: Vec<PathBuf>,
    /// A JWK Set file; a token's `kid` picks the key.
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set URL, fetched on its own thread (`http://` or `https://`).
    pub jwks_url: Option<String>,
    /// When set, the token's `aud` (string or array) must contain it. When unset, `aud`
    /// is not checked.
    pub audience: Option<String>,
    /// When set, the token's `iss` must equal it.
    pub issuer: Option<String>,
    /// Grace on `exp` and `nbf` (whole seconds; default [`DEFAULT_LEEWAY`]). A token is
    /// accepted while `now < exp + leeway` and once `now + leeway >= nbf`.
    pub leeway: Duration,
    /// Longer tokens are refused as `too_large` before any decoding (default 8 KiB).
    pub max_token_bytes: usize,
    /// API keys for the HTTP routes (compared in constant time).
    pub api_keys: Vec<Vec<u8>>,
    /// The JWKS URL is refetched at most this often on an unknown `kid` (default 10 s),
    /// and retried this often while no set has been fetched yet.
    pub jwks_min_refetch: Duration,
    /// The JWKS URL is refetched this often regardless (default 5 min), so removed keys go.
    pub jwks_refresh: Duration,
    /// Limit for one JWKS request, connect to last byte (default 3 s; also the limit of the
    /// synchronous first fetch in [`Verifier::new`]).
    pub jwks_fetch_timeout: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            hmac_secrets: Vec::new(),
            public_key_files: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            audience: None,
            issuer: None,
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            api_keys: Vec::new(),
            jwks_min_refetch: Duration::from_secs(10),
            jwks_refresh: Duration::from_secs(300),
            jwks_fetch_timeout: Duration::from_secs(3),
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only for secrets and API keys.
        f.debug_struct("AuthSettings")
            .field("hmac_secrets", &self.hmac_secrets.len())
            .field("public_key_files", &self.public_key_files)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("api_keys", &self.api_keys.len())
            .finish_non_exhaustive()
    }
}

/// A verified token: who, until when, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token's `sub` (empty: anonymous but signed).
    pub user: Arc<str>,
    /// The token's `exp`, unix seconds (without the leeway).
    pub expires: u64,
    /// The token's `topics` claim, `{sub}` substituted.
    pub rights: Rights,
}

struct Inner {
    keys: Arc<ArcSwap<KeySet>>,
    tokens_enabled: bool,
    rules: ClaimRules,
    max_token_bytes: usize,
    api_keys: ApiKeys,
    /// Dropped with the last Verifier clone, which stops the fetch thread.
    jwks: Option<jwks_fetch::Handle>,
}

/// Token and API-key verification. Cheap to clone (an `Arc`); share one per shard.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("tokens_enabled", &self.inner.tokens_enabled)
            .field("keys", &self.inner.keys.load().keys.len())
            .field("api_keys", &self.inner.api_keys)
            .field("jwks", &self.inner.jwks)
            .finish()
    }
}

/// The JOSE header fields ringcast reads; the others are ignored.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// RFC 7515 §4.1.11: extensions the recipient must understand; ringcast knows none.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Verifier {
    /// Builds the verifier: reads the key files, and when `jwks_url` is set fetches it once
    /// (bounded by `jwks_fetch_timeout`; a failure is logged and retried in the background,
    /// tokens then fail `unknown_key` until a fetch succeeds) and starts its thread.
    pub fn new(s: &AuthSettings) -> Result<Verifier, SetupError> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(SetupError::NoCryptoProvider);
        }
        if s.max_token_bytes == 0 {
            return Err(SetupError::BadSetting {
                setting: "max_token_bytes",
                reason: "must be at least 1".into(),
            });
        }
        let mut static_keys: Vec<Key> = Vec::new();
        for secret in &s.hmac_secrets {
            static_keys.push(keys::hmac_key(secret)?);
        }
        for path in &s.public_key_files {
            static_keys.push(keys::pem_file(path)?);
        }
        if let Some(path) = &s.jwks_file {
            let doc = std::fs::read(path).map_err(|source| SetupError::ReadFile {
                setting: "jwks_file",
                path: path.clone(),
                source,
            })?;
            static_keys.extend(keys::jwks(
                &doc,
                JwksOrigin::File,
                &path.display().to_string(),
            )?);
        }
        let tokens_enabled = !static_keys.is_empty() || s.jwks_url.is_some();
        let current = Arc::new(ArcSwap::from_pointee(KeySet {
            keys: static_keys.clone(),
        }));
        let jwks = match &s.jwks_url {
            None => None,
            Some(url) => Some(jwks_fetch::start(
                url,
                static_keys,
                Arc::clone(&current),
                Timing {
                    min_refetch: s.jwks_min_refetch,
                    refresh: s.jwks_refresh,
                    timeout: s.jwks_fetch_timeout,
                },
            )?),
        };
        Ok(Verifier {
            inner: Arc::new(Inner {
                keys: current,
                tokens_enabled,
                rules: ClaimRules {
                    audience: s.audience.clone(),
                    issuer: s.issuer.clone(),
                    leeway: s.leeway.as_secs(),
                },
                max_token_bytes: s.max_token_bytes,
                api_keys: ApiKeys::new(&s.api_keys)?,
                jwks,
            }),
        })
    }

    /// No keys, no API keys: the caller does not verify tokens (and grants what it grants
    /// without auth, e.g. [`Rights::all`]). `verify` on it refuses every token
    /// (`algorithm_not_allowed`), `check_api_key` every key.
    pub fn disabled() -> Verifier {
        Verifier {
            inner: Arc::new(Inner {
                keys: Arc::new(ArcSwap::from_pointee(KeySet::default())),
                tokens_enabled: false,
                rules: ClaimRules {
                    audience: None,
                    issuer: None,
                    leeway: DEFAULT_LEEWAY.as_secs(),
                },
                max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
                api_keys: ApiKeys::default(),
                jwks: None,
            }),
        }
    }

    /// Whether any JWT key source is configured (secrets, PEM files, JWKS file or URL).
    pub fn tokens_enabled(&self) -> bool {
        self.inner.tokens_enabled
    }

    /// Whether any API key is configured.
    pub fn api_keys_enabled(&self) -> bool {
        !self.inner.api_keys.is_empty()
    }

    /// JWKS URL fetch counts (`None` without a URL), for metrics.
    pub fn jwks_stats(&self) -> Option<JwksStats> {
        self.inner.jwks.as_ref().map(jwks_fetch::Handle::stats)
    }

    /// Verifies a compact JWS token at `now_unix` (seconds) and returns its session.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Session, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > self.inner.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        // A header is some 20-150 bytes: decoded on the stack, on the heap only if larger.
        let mut stack = [0u8; 512];
        let heap: Vec<u8>;
        let header_json: &[u8] = match URL_SAFE_NO_PAD.decode_slice(header_b64, &mut stack) {
            Ok(n) => &stack[..n],
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                heap = URL_SAFE_NO_PAD
                    .decode(header_b64)
                    .map_err(|_| TokenError::Malformed)?;
                &heap
            }
            Err(base64::DecodeSliceError::DecodeError(_)) => return Err(TokenError::Malformed),
        };
        let header: Header<'_> =
            serde_json::from_slice(header_json).map_err(|_| TokenError::Malformed)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        // `none` and unknown names are not an Algorithm: refused here, before any key.
        let alg = Algorithm::from_str(&header.alg).map_err(|_| TokenError::AlgorithmNotAllowed)?;
        if payload_b64.is_empty() || !is_b64url(sig_b64) || !is_b64url(payload_b64) {
            return Err(TokenError::Malformed);
        }
        // The signed message: `header.payload`, as it came.
        let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];

        let keys = self.inner.keys.load();
        let verified = match keys.candidates(alg, header.kid.as_deref()) {
            Candidates::ByKid(k) => verify_one(k, alg, message, sig_b64),
            Candidates::KidWrongAlgorithm => return Err(TokenError::AlgorithmNotAllowed),
            Candidates::Family {
                keys: family,
                kid_unknown,
            } => {
                if family.clone().any(|k| verify_one(k, alg, message, sig_b64)) {
                    true
                } else {
                    // A key the issuer added since the last fetch? (A URL never serves
                    // HMAC keys, so an HS token cannot be waiting for one.)
                    let jwks = self
                        .inner
                        .jwks
                        .as_ref()
                        .filter(|_| alg.family() != AlgorithmFamily::Hmac);
                    if let (true, Some(jwks)) = (kid_unknown, jwks) {
                        jwks.request_refetch();
                        return Err(TokenError::UnknownKey);
                    }
                    if family.clone().next().is_none() {
                        // No key of this family: an HS token against RSA keys, and the like.
                        return Err(TokenError::AlgorithmNotAllowed);
                    }
                    if kid_unknown {
                        return Err(TokenError::UnknownKey);
                    }
                    false
                }
            }
        };
        drop(keys);
        if !verified {
            return Err(TokenError::BadSignature);
        }
        let claims_json = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        claims::check(&claims_json, &self.inner.rules, now_unix)
    }

    /// Whether `presented` is one of the configured API keys (constant time; see
    /// `api_key.rs`). Always false when none is configured.
    pub fn check_api_key(&self, presented: &[u8]) -> bool {
        self.inner.api_keys.check(presented)
    }
}

fn verify_one(key: &Key, alg: Algorithm, message: &[u8], sig_b64: &str) -> bool {
    // `candidates` already pinned the family; checked again so that no future caller can
    // hand a key an algorithm it does not permit.
    key.allowed.permits(alg)
        && matches!(
            jsonwebtoken::crypto::verify(sig_b64, message, &key.key, alg),
            Ok(true)
        )
}
