//! Verification keys: what each one is, which algorithms it may verify, and how the set
//! is built from HMAC secrets, PEM files and JWK Sets.
//!
//! Every key is pinned to its algorithm family when it is loaded (an RSA key verifies
//! only RS*/PS*, an HMAC secret only HS*, a P-256 key only ES256, a P-384 key only ES384,
//! an Ed25519 key only EdDSA; a JWK with `alg` only that algorithm). Selection in
//! [`KeySet::candidates`] never hands a key an algorithm outside its pin, which is what
//! rules out key confusion (an RSA public key used as an HMAC secret) whatever the token's
//! header says.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::error::SetupError;

/// Which algorithms one key may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// Any algorithm of the family.
    Family(AlgorithmFamily),
    /// Exactly this algorithm (EC curves, JWKs that name `alg`).
    Only(Algorithm),
}

impl Allowed {
    pub(crate) fn permits(self, alg: Algorithm) -> bool {
        match self {
            Allowed::Family(f) => alg.family() == f,
            Allowed::Only(a) => alg == a,
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    /// The JWK `kid`, if the key came from a JWK Set and had one.
    pub kid: Option<Box<str>>,
    pub allowed: Allowed,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes (an HMAC secret is one).
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// All keys in force at one moment. Replaced whole (never edited) when a JWKS fetch
/// brings a new set, so a reader always sees one consistent set.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    pub keys: Vec<Key>,
}

/// The keys a token is checked against: the one its `kid` names, or every key of its
/// algorithm's family.
#[derive(Debug)]
pub(crate) enum Candidates<'a> {
    /// The `kid` named this key and it permits the algorithm.
    ByKid(&'a Key),
    /// The `kid` named a key that does not permit the token's algorithm.
    KidWrongAlgorithm,
    /// No `kid` match (or no `kid`): these keys permit the algorithm. `kid_unknown` says
    /// the token named a `kid` no key has.
    Family {
        keys: FamilyKeys<'a>,
        kid_unknown: bool,
    },
}

/// The keys of a set that permit one algorithm, walked without collecting them (no
/// allocation on the verification path).
#[derive(Debug, Clone)]
pub(crate) struct FamilyKeys<'a> {
    keys: std::slice::Iter<'a, Key>,
    alg: Algorithm,
}

impl<'a> Iterator for FamilyKeys<'a> {
    type Item = &'a Key;
    fn next(&mut self) -> Option<&'a Key> {
        let alg = self.alg;
        self.keys.find(|k| k.allowed.permits(alg))
    }
}

impl KeySet {
    pub(crate) fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Candidates<'_> {
        if let Some(kid) = kid
            && let Some(k) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
        {
            return if k.allowed.permits(alg) {
                Candidates::ByKid(k)
            } else {
                Candidates::KidWrongAlgorithm
            };
        }
        let keys = FamilyKeys {
            keys: self.keys.iter(),
            alg,
        };
        Candidates::Family {
            keys,
            kid_unknown: kid.is_some(),
        }
    }
}

/// One HMAC secret (HS256/384/512).
pub(crate) fn hmac_key(secret: &[u8]) -> Result<Key, SetupError> {
    let key = DecodingKey::from_secret(secret).map_err(|_| SetupError::BadSetting {
        setting: "hmac_secrets",
        reason: "an HMAC secret is empty".into(),
    })?;
    Ok(Key {
        kid: None,
        allowed: Allowed::Family(AlgorithmFamily::Hmac),
        key,
    })
}

/// A PEM public key file: RSA (PKCS#1 or SPKI), EC P-256/P-384 or Ed25519 (SPKI); which
/// one is detected from the file. A private key is refused (only public keys belong here).
pub(crate) fn pem_file(path: &Path) -> Result<Key, SetupError> {
    let bytes = std::fs::read(path).map_err(|source| SetupError::ReadFile {
        setting: "public_key_files",
        path: path.to_path_buf(),
        source,
    })?;
    pem_key(&bytes).map_err(|reason| SetupError::BadPem {
        path: path.to_path_buf(),
        reason,
    })
}

fn pem_key(bytes: &[u8]) -> Result<Key, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not a PEM file (not text)".to_string())?;
    if text.contains("PRIVATE KEY-----") {
        return Err("holds a private key; give the public key (openssl pkey -pubout)".into());
    }
    if text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(
            "holds a certificate; give its public key (openssl x509 -pubkey -noout)".into(),
        );
    }
    if !text.contains("-----BEGIN ") {
        return Err("not a PEM file (no -----BEGIN line)".into());
    }
    // The parsers refuse keys of the other types, so the first that succeeds is the type.
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        return Ok(Key {
            kid: None,
            allowed: Allowed::Family(AlgorithmFamily::Rsa),
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        // The content is the SEC1 point: 0x04 || x || y, 65 bytes on P-256, 97 on P-384.
        let alg = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => Algorithm::ES256,
            Ok(97) => Algorithm::ES384,
            _ => return Err("EC key on an unsupported curve (P-256 and P-384 are)".into()),
        };
        return Ok(Key {
            kid: None,
            allowed: Allowed::Only(alg),
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
            return Err("EdDSA key that is not Ed25519".into());
        }
        return Ok(Key {
            kid: None,
            allowed: Allowed::Only(Algorithm::EdDSA),
            key,
        });
    }
    Err("not an RSA, EC (P-256/P-384) or Ed25519 public key".into())
}

/// Where a JWK Set came from decides how strict its parsing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwksOrigin {
    /// The operator's file: every key must be usable, or setup fails naming the key.
    File,
    /// A URL: keys ringcast cannot use (encryption keys, other curves, symmetric keys,
    /// which do not belong on a public URL) are skipped; at least one must remain.
    Url,
}

/// Parses a JWK Set document into keys.
pub(crate) fn jwks(
    doc: &[u8],
    origin: JwksOrigin,
    source_name: &str,
) -> Result<Vec<Key>, SetupError> {
    let bad = |reason: String| SetupError::BadJwks {
        source_name: source_name.to_string(),
        reason,
    };
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(doc).map_err(|e| bad(format!("not a JWK Set: {e}")))?;
    let mut out = Vec::with_capacity(doc.keys.len());
    for (i, value) in doc.keys.into_iter().enumerate() {
        match jwk_key(value, origin) {
            Ok(Some(k)) => out.push(k),
            Ok(None) => {}
            Err(reason) if origin == JwksOrigin::File => {
                return Err(bad(format!("key #{i}: {reason}")));
            }
            Err(_) => {}
        }
    }
    if out.is_empty() {
        return Err(bad("no usable signature verification key".into()));
    }
    Ok(out)
}

/// One JWK. `Ok(None)`: a key for something else (encryption), skipped in any origin.
fn jwk_key(value: serde_json::Value, origin: JwksOrigin) -> Result<Option<Key>, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let family_allowed = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Allowed::Family(AlgorithmFamily::Rsa),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Allowed::Only(Algorithm::ES256),
            EllipticCurve::P384 => Allowed::Only(Algorithm::ES384),
            _ => return Err("EC key on an unsupported curve (P-256 and P-384 are)".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Allowed::Only(Algorithm::EdDSA)
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("OKP key that is not Ed25519".into()),
        AlgorithmParameters::OctetKey(_) if origin == JwksOrigin::Url => {
            return Err("symmetric (oct) key served from a URL".into());
        }
        AlgorithmParameters::OctetKey(_) => Allowed::Family(AlgorithmFamily::Hmac),
        _ => return Err("unsupported key type".into()),
    };
    let allowed = match jwk.common.key_algorithm {
        None => family_allowed,
        Some(ka) => {
            let alg = Algorithm::try_from(ka)
                .map_err(|_| format!("alg {ka} is not a signature algorithm"))?;
            if !family_allowed.permits(alg) {
                return Err(format!("alg {ka} does not fit the key type"));
            }
            Allowed::Only(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok(Some(Key {
        kid: jwk.common.key_id.map(String::into_boxed_str),
        allowed,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/auth/testdata")
            .join(name)
    }

    #[test]
    fn pem_type_is_detected() {
        let cases = [
            ("rsa_public.pem", Allowed::Family(AlgorithmFamily::Rsa)),
            ("ec256_public.pem", Allowed::Only(Algorithm::ES256)),
            ("ec384_public.pem", Allowed::Only(Algorithm::ES384)),
            ("ed25519_public.pem", Allowed::Only(Algorithm::EdDSA)),
        ];
        for (file, want) in cases {
            match pem_file(&testdata(file)) {
                Ok(k) => assert_eq!(k.allowed, want, "{file}"),
                Err(e) => panic!("{file}: {e}"),
            }
        }
    }

    #[test]
    fn bad_pem_files_are_setup_errors_naming_the_file() {
        let e = pem_file(&testdata("rsa_private.pem"))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("rsa_private.pem") && e.contains("private")),
            "{e:?}"
        );
        let e = pem_file(&testdata("no_such_file.pem"))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("no_such_file.pem")),
            "{e:?}"
        );
        assert!(pem_key(b"hello").is_err());
        assert!(pem_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
        assert!(pem_key(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn families_do_not_cross() {
        let Ok(rsa) = pem_file(&testdata("rsa_public.pem")) else {
            panic!()
        };
        let Ok(hmac) = hmac_key(b"secret") else {
            panic!()
        };
        let set = KeySet {
            keys: vec![rsa, hmac],
        };
        let Candidates::Family { keys, .. } = set.candidates(Algorithm::HS256, None) else {
            panic!()
        };
        let keys: Vec<&Key> = keys.collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].allowed, Allowed::Family(AlgorithmFamily::Hmac));
        let Candidates::Family { keys, .. } = set.candidates(Algorithm::PS384, None) else {
            panic!()
        };
        let keys: Vec<&Key> = keys.collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].allowed, Allowed::Family(AlgorithmFamily::Rsa));
        let Candidates::Family { keys, .. } = set.candidates(Algorithm::ES256, None) else {
            panic!()
        };
        assert_eq!(keys.count(), 0);
        assert!(hmac_key(b"").is_err());
    }

    #[test]
    fn jwks_strictness_depends_on_origin() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB","kid":"enc"},
            {"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"p521"}
        ]}"#;
        // File: the P-521 key fails setup, naming it.
        let e = jwks(doc, JwksOrigin::File, "keys.json")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("keys.json") && e.contains("key #2")),
            "{e:?}"
        );
        // URL: oct and P-521 skipped, enc skipped: nothing usable left.
        assert!(jwks(doc, JwksOrigin::Url, "u").is_err());
        assert!(jwks(b"{}", JwksOrigin::File, "f").is_err());
        assert!(jwks(b"{\"keys\":[]}", JwksOrigin::File, "f").is_err());
        assert!(jwks(b"nope", JwksOrigin::Url, "f").is_err());
        let one = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS384"}]}"#;
        let Ok(keys) = jwks(one, JwksOrigin::File, "f") else {
            panic!()
        };
        assert_eq!(keys[0].allowed, Allowed::Only(Algorithm::HS384));
        assert_eq!(keys[0].kid.as_deref(), Some("h"));
        // A JWK whose alg does not fit its key type is refused.
        let mismatch = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"RS256"}]}"#;
        assert!(jwks(mismatch, JwksOrigin::File, "f").is_err());
    }
}
