//! Verifier-level tests: every failure of `Verifier::verify`, each algorithm, key
//! selection, the JWKS file and URL. Tokens are minted with `jsonwebtoken::encode` from
//! the test-only keys in `testdata/`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"an-hmac-secret-of-decent-length!";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/auth/testdata")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    match std::fs::read(testdata(name)) {
        Ok(b) => b,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e:?}"),
    }
}

fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW + 60, "topics": {"sub": ["news.*", "user.{sub}.*"], "pub": ["chat.1"]}})
}

fn enc_key(alg: Algorithm) -> EncodingKey {
    ok(match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(SECRET),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec256_private.pem")),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&read("ec384_private.pem")),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed25519_private.pem")),
        _ => EncodingKey::from_rsa_pem(&read("rsa_private.pem")),
    })
}

fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    ok(encode(&h, claims, key))
}

fn token(alg: Algorithm, claims: &Value) -> String {
    mint(alg, None, claims, &enc_key(alg))
}

fn verifier(s: AuthSettings) -> Verifier {
    ok(Verifier::new(&s))
}

fn hmac_verifier() -> Verifier {
    verifier(AuthSettings {
        hmac_secrets: vec![SECRET.to_vec()],
        ..AuthSettings::default()
    })
}

fn all_keys_verifier() -> Verifier {
    verifier(AuthSettings {
        hmac_secrets: vec![SECRET.to_vec()],
        public_key_files: [
            "rsa_public.pem",
            "ec256_public.pem",
            "ec384_public.pem",
            "ed25519_public.pem",
        ]
        .iter()
        .map(|f| testdata(f))
        .collect(),
        ..AuthSettings::default()
    })
}

/// Builds a token from raw header and claims JSON, signed (HS256 over the raw parts) with
/// `secret`.
fn raw_token(header: &str, claims: &str, secret: &[u8]) -> String {
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = ok(EncodingKey::from_secret(secret));
    let sig = ok(jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &key,
        Algorithm::HS256,
    ));
    format!("{msg}.{sig}")
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    let v = all_keys_verifier();
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let s = v.verify(&token(alg, &claims()), NOW);
        let Ok(s) = s else { panic!("{alg:?}: {s:?}") };
        assert_eq!(&*s.user, "alice", "{alg:?}");
        assert_eq!(s.expires, NOW + 60);
        assert!(s.rights.may_subscribe("news.eu"));
        assert!(s.rights.may_subscribe("user.alice.inbox"));
        assert!(!s.rights.may_subscribe("user.bob.inbox"));
        assert!(s.rights.may_publish("chat.1"));
        assert!(!s.rights.may_publish("chat.2"));
    }
}

#[test]
fn time_checks_use_the_given_now() {
    let v = hmac_verifier(); // default leeway 5 s
    let t = token(
        Algorithm::HS256,
        &json!({"sub": "a", "exp": NOW, "nbf": NOW - 10}),
    );
    assert!(v.verify(&t, NOW + 4).is_ok());
    assert_eq!(v.verify(&t, NOW + 5).err(), Some(TokenError::Expired));
    assert_eq!(v.verify(&t, NOW + 10_000).err(), Some(TokenError::Expired));
    let future = token(
        Algorithm::HS256,
        &json!({"exp": NOW + 100, "nbf": NOW + 30}),
    );
    assert_eq!(v.verify(&future, NOW).err(), Some(TokenError::NotYetValid));
    assert!(v.verify(&future, NOW + 25).is_ok());
    let strict = verifier(AuthSettings {
        hmac_secrets: vec![SECRET.to_vec()],
        leeway: Duration::ZERO,
        ..AuthSettings::default()
    });
    assert_eq!(strict.verify(&t, NOW).err(), Some(TokenError::Expired));
    assert!(strict.verify(&t, NOW - 1).is_ok());
    let no_exp = token(Algorithm::HS256, &json!({"sub": "a"}));
    assert_eq!(v.verify(&no_exp, NOW).err(), Some(TokenError::BadClaims));
}

#[test]
fn wrong_signature_is_refused() {
    let v = all_keys_verifier();
    // Signed with another secret.
    let other = mint(
        Algorithm::HS256,
        None,
        &claims(),
        &ok(EncodingKey::from_secret(b"another secret")),
    );
    assert_eq!(v.verify(&other, NOW).err(), Some(TokenError::BadSignature));
    // Signed with another RSA key.
    let rsa2 = mint(
        Algorithm::RS256,
        None,
        &claims(),
        &ok(EncodingKey::from_rsa_pem(&read("rsa2_private.pem"))),
    );
    assert_eq!(v.verify(&rsa2, NOW).err(), Some(TokenError::BadSignature));
    // Claims changed after signing.
    let good = token(Algorithm::HS256, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD
        .encode(json!({"sub": "admin", "exp": NOW + 60, "topics": {"pub": ["*"]}}).to_string());
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(v.verify(&forged, NOW).err(), Some(TokenError::BadSignature));
    // Signature cut short, and signature of another token.
    let short = &good[..good.len() - 4];
    assert_eq!(v.verify(short, NOW).err(), Some(TokenError::BadSignature));
    let es = token(Algorithm::ES256, &claims());
    let es_sig = es.rsplit('.').next().unwrap_or_default();
    let swapped = format!("{}.{}.{}", parts[0], parts[1], es_sig);
    assert_eq!(
        v.verify(&swapped, NOW).err(),
        Some(TokenError::BadSignature)
    );
    // An ES384 signature under an ES256 header: the P-256 key is pinned to ES256, the
    // P-384 key to ES384, so the header decides which key and the check fails.
    let es384 = token(Algorithm::ES384, &claims());
    let p: Vec<&str> = es384.split('.').collect();
    let h256 = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#);
    assert_eq!(
        v.verify(&format!("{h256}.{}.{}", p[1], p[2]), NOW).err(),
        Some(TokenError::BadSignature)
    );
}

#[test]
fn audience_and_issuer_are_checked_when_set() {
    let v = verifier(AuthSettings {
        hmac_secrets: vec![SECRET.to_vec()],
        audience: Some("ringcast".into()),
        issuer: Some("https://idp.example".into()),
        ..AuthSettings::default()
    });
    let with = |aud: Value, iss: Value| {
        token(
            Algorithm::HS256,
            &json!({"sub": "a", "exp": NOW + 60, "aud": aud, "iss": iss}),
        )
    };
    assert!(
        v.verify(&with(json!("ringcast"), json!("https://idp.example")), NOW)
            .is_ok()
    );
    assert!(
        v.verify(
            &with(json!(["x", "ringcast"]), json!("https://idp.example")),
            NOW
        )
        .is_ok()
    );
    assert_eq!(
        v.verify(&with(json!("other"), json!("https://idp.example")), NOW)
            .err(),
        Some(TokenError::WrongAudience)
    );
    assert_eq!(
        v.verify(&with(json!("ringcast"), json!("https://evil.example")), NOW)
            .err(),
        Some(TokenError::WrongIssuer)
    );
    let none = token(Algorithm::HS256, &json!({"exp": NOW + 60}));
    assert_eq!(v.verify(&none, NOW).err(), Some(TokenError::WrongAudience));
}

#[test]
fn alg_none_never_verifies() {
    let v = hmac_verifier();
    let body = URL_SAFE_NO_PAD.encode(claims().to_string());
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE","typ":"JWT"}"#,
        r#"{"alg":""}"#,
        r#"{"alg":"HS1"}"#,
    ] {
        let h = URL_SAFE_NO_PAD.encode(header);
        for sig in ["", "AAAA"] {
            let t = format!("{h}.{body}.{sig}");
            assert_eq!(
                v.verify(&t, NOW).err(),
                Some(TokenError::AlgorithmNotAllowed),
                "{header} sig {sig:?}"
            );
        }
    }
}

#[test]
fn rsa_public_key_used_as_hmac_secret_is_refused() {
    // The classic confusion: the attacker knows the public PEM and signs HS256 with it.
    let v = verifier(AuthSettings {
        public_key_files: vec![testdata("rsa_public.pem")],
        ..AuthSettings::default()
    });
    let forged = mint(
        Algorithm::HS256,
        None,
        &claims(),
        &ok(EncodingKey::from_secret(&read("rsa_public.pem"))),
    );
    assert_eq!(
        v.verify(&forged, NOW).err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
    // The same with a kid that names... nothing: still no HMAC key to try.
    let forged_kid = mint(
        Algorithm::HS256,
        Some("x"),
        &claims(),
        &ok(EncodingKey::from_secret(&read("rsa_public.pem"))),
    );
    assert_eq!(
        v.verify(&forged_kid, NOW).err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
    // And the genuine RS256 token passes, so the refusal is about the algorithm.
    assert!(v.verify(&token(Algorithm::RS256, &claims()), NOW).is_ok());
}

#[test]
fn rs_token_against_an_hmac_only_verifier_is_refused() {
    let v = hmac_verifier();
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        assert_eq!(
            v.verify(&token(alg, &claims()), NOW).err(),
            Some(TokenError::AlgorithmNotAllowed),
            "{alg:?}"
        );
    }
    // And an EdDSA-only verifier refuses RS256.
    let ed = verifier(AuthSettings {
        public_key_files: vec![testdata("ed25519_public.pem")],
        ..AuthSettings::default()
    });
    assert_eq!(
        ed.verify(&token(Algorithm::RS256, &claims()), NOW).err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
    assert!(ed.verify(&token(Algorithm::EdDSA, &claims()), NOW).is_ok());
}

#[test]
fn large_header_is_decoded_too() {
    // Past the 512-byte stack buffer: the heap path must give the same answers.
    let v = hmac_verifier();
    let mut h = Header::new(Algorithm::HS256);
    h.cty = Some("x".repeat(1000));
    let t = ok(encode(&h, &claims(), &enc_key(Algorithm::HS256)));
    assert!(v.verify(&t, NOW).is_ok());
    let p: Vec<&str> = t.split('.').collect();
    let bad = format!("{}!{}.{}.{}", &p[0][..800], &p[0][800..], p[1], p[2]);
    assert_eq!(v.verify(&bad, NOW).err(), Some(TokenError::Malformed));
}

#[test]
fn malformed_tokens() {
    let v = hmac_verifier();
    let good = token(Algorithm::HS256, &claims());
    let p: Vec<&str> = good.split('.').collect();
    for bad in [
        "abc".to_string(),
        "a.b".to_string(),
        format!("{}.{}", p[0], p[1]),
        format!("{good}.extra"),
        format!("{}..{}", p[0], p[2]),
        format!(".{}.{}", p[1], p[2]),
        format!("{}!.{}.{}", p[0], p[1], p[2]), // bad base64 in the header
        format!("{}.{}*.{}", p[0], p[1], p[2]), // bad base64 in the claims
        format!("{}.{}.{}=", p[0], p[1], p[2]), // padding is not base64url JWS
        format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("not json"), p[1], p[2]),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#),
            p[1],
            p[2]
        ), // no alg
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":5}"#),
            p[1],
            p[2]
        ),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["exp"]}"#),
            p[1],
            p[2]
        ),
        format!("{} .{}.{}", p[0], p[1], p[2]),
    ] {
        assert_eq!(
            v.verify(&bad, NOW).err(),
            Some(TokenError::Malformed),
            "{bad}"
        );
    }
    // Claims that are not JSON, behind a valid signature.
    let t = raw_token(r#"{"alg":"HS256"}"#, "not json", SECRET);
    assert_eq!(v.verify(&t, NOW).err(), Some(TokenError::Malformed));
    let t = raw_token(r#"{"alg":"HS256"}"#, r#"{"exp":"#, SECRET);
    assert_eq!(v.verify(&t, NOW).err(), Some(TokenError::Malformed));
    assert_eq!(v.verify("", NOW).err(), Some(TokenError::Missing));
}

#[test]
fn oversized_token_is_refused_before_decoding() {
    let v = hmac_verifier();
    // 100 KB of garbage: if it were decoded it would be Malformed, not TooLarge.
    let huge = "!".repeat(100_000);
    assert_eq!(v.verify(&huge, NOW).err(), Some(TokenError::TooLarge));
    // A well-signed token just over the limit is refused too; at the limit it passes.
    let small = verifier(AuthSettings {
        hmac_secrets: vec![SECRET.to_vec()],
        max_token_bytes: 400,
        ..AuthSettings::default()
    });
    let mut pad = String::new();
    loop {
        let t = token(Algorithm::HS256, &json!({"exp": NOW + 60, "pad": pad}));
        if t.len() > 400 {
            assert_eq!(small.verify(&t, NOW).err(), Some(TokenError::TooLarge));
            break;
        }
        assert!(small.verify(&t, NOW).is_ok(), "len {}", t.len());
        pad.push('x');
    }
    assert!(
        Verifier::new(&AuthSettings {
            max_token_bytes: 0,
            ..AuthSettings::default()
        })
        .is_err()
    );
}

#[test]
fn topics_and_patterns_through_verify() {
    let v = hmac_verifier();
    let t = |topics: Value, sub: &str| {
        token(
            Algorithm::HS256,
            &json!({"sub": sub, "exp": NOW + 60, "topics": topics}),
        )
    };
    for bad in [
        json!("x"),
        json!(["x"]),
        json!({"sub": "x"}),
        json!({"sub": [1]}),
        json!({"other": []}),
        json!({"sub": ["a*b"]}),
        json!({"pub": ["**"]}),
        json!({"pub": [""]}),
    ] {
        assert_eq!(
            v.verify(&t(bad.clone(), "a"), NOW).err(),
            Some(TokenError::BadClaims),
            "{bad}"
        );
    }
    // Empty sub: the {sub} pattern grants nothing (not user.*), the others still apply.
    let Ok(s) = v.verify(&t(json!({"sub": ["user.{sub}*", "news"]}), ""), NOW) else {
        panic!()
    };
    assert_eq!(&*s.user, "");
    assert!(!s.rights.may_subscribe("user.bob"));
    assert!(s.rights.may_subscribe("news"));
    // `*` alone grants everything; no topics claim grants nothing.
    let Ok(s) = v.verify(&t(json!({"pub": ["*"]}), "a"), NOW) else {
        panic!()
    };
    assert!(s.rights.may_publish("anything.at.all"));
    assert!(!s.rights.may_subscribe("anything"));
    let Ok(s) = v.verify(
        &token(Algorithm::HS256, &json!({"sub": "a", "exp": NOW + 60})),
        NOW,
    ) else {
        panic!()
    };
    assert_eq!(s.rights, Rights::none());
}

#[test]
fn several_hmac_secrets_are_all_tried() {
    let v = verifier(AuthSettings {
        hmac_secrets: vec![b"first".to_vec(), b"second".to_vec()],
        ..AuthSettings::default()
    });
    for secret in [&b"first"[..], b"second"] {
        let t = mint(
            Algorithm::HS512,
            None,
            &claims(),
            &ok(EncodingKey::from_secret(secret)),
        );
        assert!(v.verify(&t, NOW).is_ok());
    }
    let t = mint(
        Algorithm::HS256,
        None,
        &claims(),
        &ok(EncodingKey::from_secret(b"third")),
    );
    assert_eq!(v.verify(&t, NOW).err(), Some(TokenError::BadSignature));
}

fn jwk(alg: Algorithm, private_pem: &str, kid: &str) -> Jwk {
    let key = ok(match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read(private_pem)),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read(private_pem)),
        _ => EncodingKey::from_rsa_pem(&read(private_pem)),
    });
    let mut j = ok(Jwk::from_encoding_key(&key, alg));
    j.common.key_id = Some(kid.to_string());
    j
}

fn jwks_doc(keys: Vec<Jwk>) -> String {
    ok(serde_json::to_string(&JwkSet { keys }))
}

struct TempFile(PathBuf);
impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("ringcast-auth-{}-{name}", std::process::id()));
        ok(std::fs::write(&path, contents));
        TempFile(path)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn jwks_file_two_keys_chosen_by_kid() {
    let doc = jwks_doc(vec![
        jwk(Algorithm::RS256, "rsa_private.pem", "k1"),
        jwk(Algorithm::RS256, "rsa2_private.pem", "k2"),
    ]);
    let file = TempFile::new("two.json", &doc);
    let v = verifier(AuthSettings {
        jwks_file: Some(file.0.clone()),
        ..AuthSettings::default()
    });
    let key1 = ok(EncodingKey::from_rsa_pem(&read("rsa_private.pem")));
    let key2 = ok(EncodingKey::from_rsa_pem(&read("rsa2_private.pem")));
    assert!(
        v.verify(&mint(Algorithm::RS256, Some("k1"), &claims(), &key1), NOW)
            .is_ok()
    );
    assert!(
        v.verify(&mint(Algorithm::RS256, Some("k2"), &claims(), &key2), NOW)
            .is_ok()
    );
    // The kid decides: key 2's token labelled k1 is checked against k1 only.
    assert_eq!(
        v.verify(&mint(Algorithm::RS256, Some("k1"), &claims(), &key2), NOW)
            .err(),
        Some(TokenError::BadSignature)
    );
    // A kid no key has falls back to the family: key 2 verifies its own token even
    // when it is labelled k9 (rotation without a kid update); see unknown_kid_is_unknown_key.
    assert!(
        v.verify(&mint(Algorithm::RS256, Some("k9"), &claims(), &key2), NOW)
            .is_ok()
    );
    // The JWK pins RS256 (`alg` in the JWK): PS256 under kid k1 is not allowed.
    assert_eq!(
        v.verify(&mint(Algorithm::PS256, Some("k1"), &claims(), &key1), NOW)
            .err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
    // No kid: every key of the family is tried.
    assert!(
        v.verify(&mint(Algorithm::RS256, None, &claims(), &key2), NOW)
            .is_ok()
    );
}

#[test]
fn unknown_kid_is_unknown_key() {
    let doc = jwks_doc(vec![jwk(Algorithm::RS256, "rsa_private.pem", "k1")]);
    let file = TempFile::new("one.json", &doc);
    let v = verifier(AuthSettings {
        jwks_file: Some(file.0.clone()),
        ..AuthSettings::default()
    });
    let key2 = ok(EncodingKey::from_rsa_pem(&read("rsa2_private.pem")));
    assert_eq!(
        v.verify(&mint(Algorithm::RS256, Some("k9"), &claims(), &key2), NOW)
            .err(),
        Some(TokenError::UnknownKey)
    );
    // A kid naming a key of another type is not allowed.
    let ed = ok(EncodingKey::from_ed_pem(&read("ed25519_private.pem")));
    assert_eq!(
        v.verify(&mint(Algorithm::EdDSA, Some("k1"), &claims(), &ed), NOW)
            .err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
}

#[test]
fn setup_errors_name_the_file_and_never_panic() {
    let e = Verifier::new(&AuthSettings {
        public_key_files: vec![testdata("missing.pem")],
        ..AuthSettings::default()
    });
    assert!(
        e.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("missing.pem"))
    );
    let e = Verifier::new(&AuthSettings {
        public_key_files: vec![testdata("README.md")],
        ..AuthSettings::default()
    });
    assert!(
        e.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("README.md"))
    );
    let bad = TempFile::new("bad.json", "{\"keys\": 5}");
    let e = Verifier::new(&AuthSettings {
        jwks_file: Some(bad.0.clone()),
        ..AuthSettings::default()
    });
    assert!(
        e.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("bad.json"))
    );
    let e = Verifier::new(&AuthSettings {
        jwks_url: Some("ftp://x/y".into()),
        ..AuthSettings::default()
    });
    assert!(
        e.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("jwks_url"))
    );
    assert!(
        Verifier::new(&AuthSettings {
            hmac_secrets: vec![Vec::new()],
            ..AuthSettings::default()
        })
        .is_err()
    );
    assert!(
        Verifier::new(&AuthSettings {
            api_keys: vec![Vec::new()],
            ..AuthSettings::default()
        })
        .is_err()
    );
    // Secrets never show in Debug output.
    let s = AuthSettings {
        hmac_secrets: vec![b"topsecret".to_vec()],
        api_keys: vec![b"apikey123".to_vec()],
        ..AuthSettings::default()
    };
    let dbg = format!("{s:?} {:?}", ok(Verifier::new(&s)));
    assert!(
        !dbg.contains("topsecret") && !dbg.contains("apikey123"),
        "{dbg}"
    );
}

#[test]
fn enabled_flags_and_api_keys() {
    let d = Verifier::disabled();
    assert!(!d.tokens_enabled() && !d.api_keys_enabled());
    assert!(!d.check_api_key(b""));
    assert_eq!(
        d.verify(&token(Algorithm::HS256, &claims()), NOW).err(),
        Some(TokenError::AlgorithmNotAllowed)
    );
    let v = verifier(AuthSettings {
        api_keys: vec![b"key-one".to_vec(), b"key-two".to_vec()],
        ..AuthSettings::default()
    });
    assert!(!v.tokens_enabled() && v.api_keys_enabled());
    assert!(v.check_api_key(b"key-one") && v.check_api_key(b"key-two"));
    for bad in [&b"key-onf"[..], b"Key-one", b"key-on", b"key-one!", b""] {
        assert!(!v.check_api_key(bad), "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(hmac_verifier().tokens_enabled());
    // Clones share the key set.
    let c = hmac_verifier().clone();
    assert!(c.verify(&token(Algorithm::HS256, &claims()), NOW).is_ok());
}

/// A tiny JWKS server on 127.0.0.1:0: serves whatever `body` holds (status `status`),
/// records when each request arrived, and stops listening when `stop` is set.
struct JwksServer {
    url: String,
    body: Arc<Mutex<(u16, String)>>,
    hits: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let listener = ok(TcpListener::bind("127.0.0.1:0"));
        ok(listener.set_nonblocking(true));
        let url = format!("http://{}/jwks.json", ok(listener.local_addr()));
        let body = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, h, s) = (Arc::clone(&body), Arc::clone(&hits), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Acquire) && Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if let Ok(mut hits) = h.lock() {
                    hits.push(Instant::now());
                }
                let (status, text) = match b.lock() {
                    Ok(g) => g.clone(),
                    Err(_) => (500, String::new()),
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        JwksServer {
            url,
            body,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, status: u16, body: String) {
        if let Ok(mut g) = self.body.lock() {
            *g = (status, body);
        }
    }

    fn hits(&self) -> Vec<Instant> {
        self.hits.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Stops accepting: the port is closed once the thread ends.
    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn jwks_url_fetch_refetch_rate_limit_and_last_good_set() {
    let min_refetch = Duration::from_millis(400);
    let k1 = jwk(Algorithm::RS256, "rsa_private.pem", "k1");
    let k2 = jwk(Algorithm::RS256, "rsa2_private.pem", "k2");
    let k3 = jwk(Algorithm::EdDSA, "ed25519_private.pem", "k3");
    let mut server = JwksServer::start(jwks_doc(vec![k1.clone()]));
    let v = verifier(AuthSettings {
        jwks_url: Some(server.url.clone()),
        jwks_min_refetch: min_refetch,
        jwks_refresh: Duration::from_secs(3600),
        jwks_fetch_timeout: Duration::from_secs(2),
        ..AuthSettings::default()
    });
    assert!(v.tokens_enabled());
    // The first fetch is synchronous: k1 works at once.
    assert_eq!(
        v.jwks_stats(),
        Some(JwksStats {
            fetched: 1,
            failed: 0
        })
    );
    let key1 = ok(EncodingKey::from_rsa_pem(&read("rsa_private.pem")));
    let key2 = ok(EncodingKey::from_rsa_pem(&read("rsa2_private.pem")));
    let key3 = ok(EncodingKey::from_ed_pem(&read("ed25519_private.pem")));
    let t1 = mint(Algorithm::RS256, Some("k1"), &claims(), &key1);
    let t2 = mint(Algorithm::RS256, Some("k2"), &claims(), &key2);
    let t3 = mint(Algorithm::EdDSA, Some("k3"), &claims(), &key3);
    assert!(v.verify(&t1, NOW).is_ok());
    // Key confusion with a made-up kid is still that, not a reason to refetch.
    let forged = mint(
        Algorithm::HS256,
        Some("k7"),
        &claims(),
        &ok(EncodingKey::from_secret(&read("rsa_public.pem"))),
    );
    assert_eq!(
        v.verify(&forged, NOW).err(),
        Some(TokenError::AlgorithmNotAllowed)
    );

    // A new kid appears: the first token naming it fails (the shard never waits) and
    // triggers a refetch; once that lands the token verifies.
    server.set(200, jwks_doc(vec![k1.clone(), k2.clone()]));
    std::thread::sleep(min_refetch); // so this refetch is not itself rate-limited
    assert_eq!(v.verify(&t2, NOW).err(), Some(TokenError::UnknownKey));
    wait_for("the refetch", || {
        v.jwks_stats().is_some_and(|s| s.fetched == 2)
    });
    assert!(v.verify(&t2, NOW).is_ok());
    assert!(v.verify(&t1, NOW).is_ok());

    // Rate limit: a storm of unknown kids right after a fetch brings one request, no
    // sooner than min_refetch after the previous one.
    server.set(200, jwks_doc(vec![k1.clone(), k2.clone(), k3.clone()]));
    let before = server.hits().len();
    for _ in 0..200 {
        assert_eq!(v.verify(&t3, NOW).err(), Some(TokenError::UnknownKey));
    }
    wait_for("the rate-limited refetch", || {
        v.jwks_stats().is_some_and(|s| s.fetched == 3)
    });
    let hits = server.hits();
    assert_eq!(hits.len(), before + 1, "one request for the whole storm");
    let gap = hits[hits.len() - 1] - hits[hits.len() - 2];
    assert!(
        gap >= min_refetch - Duration::from_millis(20),
        "refetched after {gap:?}"
    );
    assert!(v.verify(&t3, NOW).is_ok());
    std::thread::sleep(min_refetch * 2);
    assert_eq!(
        server.hits().len(),
        before + 1,
        "no fetch without a reason before `refresh`"
    );

    // The server answers 503, then goes away: the last good set stays in force.
    server.set(503, String::new());
    std::thread::sleep(min_refetch);
    // Signed with a key of a family the set does not have, so no fallback can verify it.
    let t9 = mint(
        Algorithm::ES256,
        Some("k9"),
        &claims(),
        &enc_key(Algorithm::ES256),
    );
    assert_eq!(v.verify(&t9, NOW).err(), Some(TokenError::UnknownKey));
    wait_for("the failed fetch", || {
        v.jwks_stats().is_some_and(|s| s.failed == 1)
    });
    server.set(200, "not json".into());
    std::thread::sleep(min_refetch);
    assert_eq!(v.verify(&t9, NOW).err(), Some(TokenError::UnknownKey));
    wait_for("the second failed fetch", || {
        v.jwks_stats().is_some_and(|s| s.failed == 2)
    });
    server.shut_down();
    std::thread::sleep(min_refetch);
    assert_eq!(v.verify(&t9, NOW).err(), Some(TokenError::UnknownKey));
    wait_for("the third failed fetch", || {
        v.jwks_stats().is_some_and(|s| s.failed == 3)
    });
    for t in [&t1, &t2, &t3] {
        assert!(v.verify(t, NOW).is_ok(), "last good set kept");
    }
    assert_eq!(v.jwks_stats().map(|s| s.fetched), Some(3));
}

#[test]
fn jwks_url_down_at_start_is_retried_in_the_background() {
    // Reserve a port, then close it: nothing listens there at first.
    let k1 = jwk(Algorithm::EdDSA, "ed25519_private.pem", "k1");
    let server = JwksServer::start(jwks_doc(vec![k1]));
    server.set(500, String::new());
    let v = verifier(AuthSettings {
        jwks_url: Some(server.url.clone()),
        jwks_min_refetch: Duration::from_millis(100),
        jwks_fetch_timeout: Duration::from_secs(2),
        ..AuthSettings::default()
    });
    assert_eq!(
        v.jwks_stats(),
        Some(JwksStats {
            fetched: 0,
            failed: 1
        })
    );
    let key = ok(EncodingKey::from_ed_pem(&read("ed25519_private.pem")));
    let t = mint(Algorithm::EdDSA, Some("k1"), &claims(), &key);
    assert_eq!(v.verify(&t, NOW).err(), Some(TokenError::UnknownKey));
    server.set(
        200,
        jwks_doc(vec![jwk(Algorithm::EdDSA, "ed25519_private.pem", "k1")]),
    );
    wait_for("the background retry", || {
        v.jwks_stats().is_some_and(|s| s.fetched == 1)
    });
    assert!(v.verify(&t, NOW).is_ok());
}

#[test]
fn verifier_is_shareable_across_shards() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Verifier>();
    assert_send_sync::<Session>();
    let v = hmac_verifier();
    let t = token(Algorithm::HS256, &claims());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (v, t) = (v.clone(), t.clone());
            std::thread::spawn(move || v.verify(&t, NOW).is_ok())
        })
        .collect();
    for h in handles {
        assert!(matches!(h.join(), Ok(true)));
    }
}

#[test]
fn https_url_goes_through_rustls_on_the_shared_provider() {
    // The local server speaks plain HTTP, so the TLS handshake (rustls on the aws-lc-rs
    // provider set in `jwks_fetch::agent`; ureq is built without one of its own) fails:
    // a counted failed fetch, not a panic.
    let server = JwksServer::start(jwks_doc(vec![jwk(
        Algorithm::EdDSA,
        "ed25519_private.pem",
        "k1",
    )]));
    let url = server.url.replacen("http://", "https://", 1);
    let v = verifier(AuthSettings {
        jwks_url: Some(url),
        jwks_min_refetch: Duration::from_secs(3600),
        jwks_fetch_timeout: Duration::from_secs(2),
        ..AuthSettings::default()
    });
    assert_eq!(
        v.jwks_stats(),
        Some(JwksStats {
            fetched: 0,
            failed: 1
        })
    );
    // The server notes the request once its read gives up on the ClientHello.
    wait_for("the TLS client's connection", || server.hits().len() == 1);
}
