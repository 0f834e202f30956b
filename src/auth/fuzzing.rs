//! Fuzz bodies for `fuzz/fuzz_targets/token.rs`, here so the unit tests run them too.
//!
//! One input exercises three paths: the bytes as a token (when UTF-8) against an HMAC
//! verifier; the bytes as the claims of a token that is correctly signed, so the claims
//! and pattern parsing run behind a valid signature; and the bytes as a pattern. Each
//! result is checked against what the contract promises (no panic, patterns without a
//! misplaced `*`, topics within bounds).

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};

use super::{AuthSettings, Pattern, Rights, Session, Verifier};

const SECRET: &[u8] = b"fuzz-secret";
/// A fixed `now`, so a run is reproducible.
pub const NOW: u64 = 1_800_000_000;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let settings = AuthSettings {
            hmac_secrets: vec![SECRET.to_vec()],
            ..AuthSettings::default()
        };
        match Verifier::new(&settings) {
            Ok(v) => v,
            Err(e) => panic!("fuzz verifier: {e}"),
        }
    })
}

fn check_rights(r: &Rights) {
    for p in r.subscribe.iter().chain(&r.publish) {
        assert!(!p.text().contains('*'), "a pattern kept a star: {p}");
        assert!(p.text().len() <= super::MAX_TOPIC_BYTES);
        assert!(p.text().bytes().all(|b| (b'!'..=b'~').contains(&b)));
        assert!(!p.text().is_empty() || p.is_prefix());
    }
    assert!(r.subscribe.len() <= super::MAX_PATTERNS_PER_LIST);
    assert!(r.publish.len() <= super::MAX_PATTERNS_PER_LIST);
}

fn check_session(s: &Session) {
    assert!(
        s.expires.saturating_add(5) > NOW,
        "an expired token was accepted"
    );
    check_rights(&s.rights);
}

/// Signs `claims` (raw bytes, base64url-encoded as they are) with the fuzz secret.
pub fn signed_token(claims: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims);
    let message = format!("{header}.{payload}");
    let key = match EncodingKey::from_secret(SECRET) {
        Ok(k) => k,
        Err(e) => panic!("fuzz key: {e}"),
    };
    match jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256) {
        Ok(sig) => format!("{message}.{sig}"),
        Err(e) => panic!("fuzz signing: {e}"),
    }
}

/// The whole fuzz body.
pub fn token(data: &[u8]) {
    let v = verifier();
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = v.verify(text, NOW) {
            check_session(&s);
        }
        if let Ok(Some(p)) = Pattern::parse(text, "user") {
            assert!(!p.text().contains('*'));
        }
    }
    if data.len() <= 4096 {
        let token = signed_token(data);
        match v.verify(&token, NOW) {
            Ok(s) => check_session(&s),
            // A correctly signed token can only fail on its claims.
            Err(e) => assert!(
                matches!(
                    e,
                    super::TokenError::Malformed
                        | super::TokenError::BadClaims
                        | super::TokenError::Expired
                        | super::TokenError::NotYetValid
                        | super::TokenError::TooLarge
                ),
                "signed token failed with {e:?}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_run_clean() {
        let exp = super::NOW + 60;
        let seeds: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"a.b.c".to_vec(),
            b"....".to_vec(),
            vec![0xff, 0x00, b'.'],
            format!(
                r#"{{"exp":{exp},"sub":"u","topics":{{"sub":["x.{{sub}}*","*"],"pub":["a"]}}}}"#
            )
            .into_bytes(),
            format!(r#"{{"exp":{exp},"topics":{{"sub":["**"]}}}}"#).into_bytes(),
            br#"{"exp":1e400}"#.to_vec(),
            super::signed_token(b"{}").into_bytes(),
        ];
        for s in &seeds {
            super::token(s);
        }
        // The signed path really verifies: a good claims set gives a session.
        let good = super::signed_token(format!(r#"{{"exp":{exp},"sub":"u"}}"#).as_bytes());
        assert!(super::verifier().verify(&good, super::NOW).is_ok());
    }
}
