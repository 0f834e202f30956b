//! The cost of `auth::Verifier::verify` per token, by algorithm (HS256, RS256 with a
//! 2048-bit key, ES256, EdDSA), and of `Rights::may_subscribe` on a 10-pattern list (the
//! check made for every subscribe). Tokens carry a realistic claims set (sub, exp, iat,
//! aud, iss, 4 topic patterns) and are minted once with the test-only keys in
//! `src/auth/testdata/`. The reconnect-storm budget is that an HS256 verify stays small
//! against a WebSocket handshake (the storm must keep ≥ 0.9× the no-auth rate).
//! Results: docs/benchmarks/.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use ringcast::auth::{AuthSettings, Pattern, Rights, Verifier};

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"bench-secret-bench-secret-bench!";

fn testdata(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/auth/testdata")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(testdata(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn claims() -> serde_json::Value {
    serde_json::json!({
        "sub": "user-1234567",
        "exp": NOW + 3600,
        "iat": NOW,
        "aud": "ringcast",
        "iss": "https://idp.example",
        "topics": {"sub": ["news.*", "prices.eu.*", "user.{sub}.*"], "pub": ["chat.room.{sub}"]}
    })
}

fn verify(c: &mut Criterion) {
    let verifier = Verifier::new(&AuthSettings {
        hmac_secrets: vec![SECRET.to_vec()],
        public_key_files: vec![
            testdata("rsa_public.pem"),
            testdata("ec256_public.pem"),
            testdata("ed25519_public.pem"),
        ],
        audience: Some("ringcast".into()),
        issuer: Some("https://idp.example".into()),
        ..AuthSettings::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        ("hs256", Algorithm::HS256, EncodingKey::from_secret(SECRET)),
        (
            "rs256_2048",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&read("rsa_private.pem")),
        ),
        (
            "es256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&read("ec256_private.pem")),
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&read("ed25519_private.pem")),
        ),
    ];
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    for (name, alg, key) in cases {
        let key = key.unwrap_or_else(|e| panic!("{name}: {e}"));
        let token =
            encode(&Header::new(alg), &claims(), &key).unwrap_or_else(|e| panic!("{name}: {e}"));
        // A bench that measured a refusal would be meaningless.
        assert!(verifier.verify(&token, NOW).is_ok(), "{name}");
        g.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(&token), black_box(NOW)))
        });
    }
    g.finish();
}

fn may_subscribe(c: &mut Criterion) {
    let templates = [
        "news.*",
        "prices.eu.*",
        "prices.us.*",
        "user.{sub}.*",
        "chat.room.1",
        "chat.room.2",
        "chat.room.3",
        "alerts.{sub}",
        "sports.football.*",
        "weather.*",
    ];
    let rights = Rights {
        subscribe: Pattern::parse_list(&templates, "user-1234567")
            .unwrap_or_else(|e| panic!("{e:?}")),
        publish: Vec::new(),
    };
    assert_eq!(rights.subscribe.len(), 10);
    let mut g = c.benchmark_group("may_subscribe_10_patterns");
    g.throughput(Throughput::Elements(1));
    // The last pattern matches: the whole list is walked.
    g.bench_function("last_matches", |b| {
        b.iter(|| rights.may_subscribe(black_box("weather.eu.paris")))
    });
    // Nothing matches: the whole list is walked and refused.
    g.bench_function("none_matches", |b| {
        b.iter(|| rights.may_subscribe(black_box("stocks.nasdaq.aapl")))
    });
    g.bench_function("first_matches", |b| {
        b.iter(|| rights.may_subscribe(black_box("news.eu.politics")))
    });
    g.finish();
}

criterion_group!(benches, verify, may_subscribe);
criterion_main!(benches);
