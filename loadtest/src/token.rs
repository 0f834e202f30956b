//! JWTs the generator presents on its connections (`--token-*`): the flags,
//! minting one token per connection before anything is timed, and where a
//! token goes in a request (an `Authorization: Bearer` header, the
//! `ringcast.token.<jwt>` WebSocket subprotocol, or a `?token=` query).
//!
//! Every token differs (`sub` = `--token-sub-prefix` + connection index), so a
//! server cannot answer a repeated token from a cache: a storm with tokens
//! measures one signature check per handshake. Minting is spread over the
//! machine's cores and timed on its own (`token.mint_s` in the JSON), because
//! signing (RSA above all) must never count against the server's speed.
//!
//! Keys: HMAC algorithms take the secret file's bytes exactly as they are (no
//! trimming: write the file without a trailing newline); the others take a PEM
//! private key (PKCS#8 as `openssl genpkey` writes it, or PKCS#1/SEC1).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::cli::parse_duration;

/// The subprotocol a ringcast server must choose when the token rides in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "ringcast.v1";
/// Prefix of the subprotocol entry that carries the token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "ringcast.token.";

/// Signature algorithm of the minted tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenAlg {
    /// HMAC SHA-256 (shared secret).
    #[value(name = "HS256")]
    Hs256,
    /// HMAC SHA-384.
    #[value(name = "HS384")]
    Hs384,
    /// HMAC SHA-512.
    #[value(name = "HS512")]
    Hs512,
    /// RSA PKCS#1 v1.5, SHA-256.
    #[value(name = "RS256")]
    Rs256,
    /// RSA-PSS, SHA-256.
    #[value(name = "PS256")]
    Ps256,
    /// ECDSA P-256, SHA-256.
    #[value(name = "ES256")]
    Es256,
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDsa,
}

impl TokenAlg {
    /// The jsonwebtoken algorithm.
    pub fn algorithm(self) -> Algorithm {
        match self {
            TokenAlg::Hs256 => Algorithm::HS256,
            TokenAlg::Hs384 => Algorithm::HS384,
            TokenAlg::Hs512 => Algorithm::HS512,
            TokenAlg::Rs256 => Algorithm::RS256,
            TokenAlg::Ps256 => Algorithm::PS256,
            TokenAlg::Es256 => Algorithm::ES256,
            TokenAlg::EdDsa => Algorithm::EdDSA,
        }
    }

    /// The name in the JWT header (and on the command line).
    pub fn name(self) -> &'static str {
        match self {
            TokenAlg::Hs256 => "HS256",
            TokenAlg::Hs384 => "HS384",
            TokenAlg::Hs512 => "HS512",
            TokenAlg::Rs256 => "RS256",
            TokenAlg::Ps256 => "PS256",
            TokenAlg::Es256 => "ES256",
            TokenAlg::EdDsa => "EdDSA",
        }
    }

    /// The key of this algorithm from the bytes of `--token-key`.
    pub fn key(self, bytes: &[u8]) -> Result<EncodingKey, String> {
        let k = match self {
            TokenAlg::Hs256 | TokenAlg::Hs384 | TokenAlg::Hs512 => EncodingKey::from_secret(bytes),
            TokenAlg::Rs256 | TokenAlg::Ps256 => EncodingKey::from_rsa_pem(bytes),
            TokenAlg::Es256 => EncodingKey::from_ec_pem(bytes),
            TokenAlg::EdDsa => EncodingKey::from_ed_pem(bytes),
        };
        // The error names the kind of problem only, never the key's bytes.
        k.map_err(|e| format!("--token-key is not a usable {} key: {e}", self.name()))
    }
}

/// Where a connection's token goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenIn {
    /// `Authorization: Bearer <jwt>`.
    Header,
    /// `Sec-WebSocket-Protocol: ringcast.v1, ringcast.token.<jwt>`; the 101 must choose `ringcast.v1`.
    Subprotocol,
    /// `?token=<jwt>` (`&token=` when the path already has a query).
    Query,
}

impl TokenIn {
    /// The flag value (`header`, `subprotocol`, `query`).
    pub fn name(self) -> &'static str {
        match self {
            TokenIn::Header => "header",
            TokenIn::Subprotocol => "subprotocol",
            TokenIn::Query => "query",
        }
    }
}

/// `--token-*` flags (storm, idle, run).
#[derive(Clone, Debug, Args)]
pub struct TokenArgs {
    /// Present a JWT signed with this algorithm on every connection (needs --token-key).
    #[arg(long, value_enum, requires = "token_key")]
    pub token_alg: Option<TokenAlg>,
    /// HMAC secret file (its bytes as they are) or PEM private key.
    #[arg(long, requires = "token_alg")]
    pub token_key: Option<PathBuf>,
    /// Each connection's `sub` claim is this prefix + its index (every token differs).
    #[arg(long, default_value = "loadtest-")]
    pub token_sub_prefix: String,
    /// Lifetime: `exp` = now + ttl.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// The `topics` claim, JSON.
    #[arg(long, default_value = r#"{"sub":["*"],"pub":["*"]}"#)]
    pub token_topics: String,
    /// Where the token goes in the upgrade request.
    #[arg(long, value_enum, default_value_t = TokenIn::Header)]
    pub token_in: TokenIn,
}

/// The claims of one minted token.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: String,
    iat: u64,
    exp: u64,
    topics: &'a serde_json::Value,
}

/// What minting cost (the `token` key of storm, idle and run JSON).
#[derive(Clone, Debug, Serialize)]
pub struct TokenReport {
    /// Algorithm.
    pub alg: &'static str,
    /// Where the tokens went.
    #[serde(rename = "in")]
    pub placement: TokenIn,
    /// Tokens minted (one per connection).
    pub count: u64,
    /// Wall time of minting, before the timed part (s).
    pub mint_s: f64,
    /// Tokens minted per second (all minting threads).
    pub mint_per_s: f64,
    /// Threads that minted.
    pub mint_threads: usize,
    /// Mean token length (bytes).
    pub mean_len: f64,
}

/// One token per connection, and where it goes.
#[derive(Clone, Debug)]
pub struct Tokens {
    list: Vec<String>,
    placement: TokenIn,
}

impl Tokens {
    /// Tokens placed as `placement`.
    pub fn new(list: Vec<String>, placement: TokenIn) -> Tokens {
        Tokens { list, placement }
    }

    /// Splits off the tokens from `at` on (e.g. the publishers' after the subscribers').
    pub fn split_off(&mut self, at: usize) -> Tokens {
        Tokens {
            list: self.list.split_off(at.min(self.list.len())),
            placement: self.placement,
        }
    }

    /// Where the tokens go.
    pub fn placement(&self) -> TokenIn {
        self.placement
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No tokens.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Connection `idx`'s token (wrapping around if there are fewer tokens than connections).
    pub fn get(&self, idx: usize) -> Option<&str> {
        if self.list.is_empty() {
            None
        } else {
            self.list.get(idx % self.list.len()).map(String::as_str)
        }
    }

    /// The WebSocket upgrade's path and extra header for connection `idx`.
    pub fn ws_parts(&self, idx: usize, path: &str) -> (String, Option<(&'static str, String)>) {
        let Some(t) = self.get(idx) else {
            return (path.to_string(), None);
        };
        match self.placement {
            TokenIn::Header => (path.to_string(), Some(bearer(t))),
            TokenIn::Subprotocol => (path.to_string(), Some(subprotocol_header(t))),
            TokenIn::Query => (with_query_token(path, t), None),
        }
    }

    /// The same for an HTTP request: a subprotocol has no meaning there, so it becomes the header.
    pub fn http_parts(&self, idx: usize, path: &str) -> (String, Option<(&'static str, String)>) {
        let Some(t) = self.get(idx) else {
            return (path.to_string(), None);
        };
        match self.placement {
            TokenIn::Header | TokenIn::Subprotocol => (path.to_string(), Some(bearer(t))),
            TokenIn::Query => (with_query_token(path, t), None),
        }
    }
}

/// `Authorization: Bearer <jwt>`.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// `Sec-WebSocket-Protocol: ringcast.v1, ringcast.token.<jwt>`.
pub fn subprotocol_header(token: &str) -> (&'static str, String) {
    (
        "Sec-WebSocket-Protocol",
        format!("{SUBPROTOCOL}, {TOKEN_PROTOCOL_PREFIX}{token}"),
    )
}

/// `path?token=<jwt>`, or `path&token=<jwt>` when the path has a query. A JWT is
/// base64url and dots: nothing in it needs percent-encoding.
pub fn with_query_token(path: &str, token: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}token={token}")
}

/// Checks that a 101 head chose exactly [`SUBPROTOCOL`] (RFC 6455 §4.2.2: one
/// value, one of those offered). The error never contains the token.
pub fn check_chosen_subprotocol(head: &[u8]) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("handshake: unreadable 101 head".into()),
    }
    let mut chosen = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|h| h.value.trim_ascii());
    match (chosen.next(), chosen.next()) {
        (Some(v), None) if v == SUBPROTOCOL.as_bytes() => Ok(()),
        (None, _) => Err(format!(
            "handshake: the 101 chose no subprotocol ({SUBPROTOCOL} expected)"
        )),
        (Some(v), None) if v.starts_with(TOKEN_PROTOCOL_PREFIX.as_bytes()) => Err(format!(
            "handshake: the 101 chose the token entry instead of {SUBPROTOCOL}"
        )),
        _ => Err(format!(
            "handshake: the 101 chose another subprotocol than {SUBPROTOCOL}"
        )),
    }
}

/// Mints `count` tokens for connections `first..first + count` when `--token-alg`
/// is given (None otherwise), in parallel over the machine's cores.
pub fn mint(
    args: &TokenArgs,
    first: usize,
    count: usize,
) -> Result<Option<(Tokens, TokenReport)>, String> {
    let (Some(alg), Some(path)) = (args.token_alg, &args.token_key) else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|e| format!("--token-key {}: {e}", path.display()))?;
    let key = alg.key(&bytes)?;
    let topics: serde_json::Value = serde_json::from_str(&args.token_topics)
        .map_err(|e| format!("--token-topics is not JSON: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?
        .as_secs();
    let exp = now.saturating_add(args.token_ttl.as_secs().max(1));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
        .min(count.max(1));
    let start = Instant::now();
    let header = Header::new(alg.algorithm());
    let chunk = count.div_ceil(threads).max(1);
    let mint_range = |lo: usize, hi: usize| -> Result<Vec<String>, String> {
        (lo..hi)
            .map(|i| {
                let claims = Claims {
                    sub: format!("{}{}", args.token_sub_prefix, first + i),
                    iat: now,
                    exp,
                    topics: &topics,
                };
                jsonwebtoken::encode(&header, &claims, &key)
                    .map_err(|e| format!("minting a {} token: {e}", alg.name()))
            })
            .collect()
    };
    let parts: Vec<Result<Vec<String>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = (t * chunk).min(count);
                let hi = ((t + 1) * chunk).min(count);
                s.spawn(move || mint_range(lo, hi))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a minting thread panicked".into()))
            })
            .collect()
    });
    let mut list = Vec::with_capacity(count);
    for p in parts {
        list.extend(p?);
    }
    let mint_s = start.elapsed().as_secs_f64();
    let mean_len = if list.is_empty() {
        0.0
    } else {
        list.iter().map(String::len).sum::<usize>() as f64 / list.len() as f64
    };
    let report = TokenReport {
        alg: alg.name(),
        placement: args.token_in,
        count: list.len() as u64,
        mint_s,
        mint_per_s: list.len() as f64 / mint_s.max(1e-9),
        mint_threads: threads,
        mean_len,
    };
    Ok(Some((Tokens::new(list, args.token_in), report)))
}

/// Makes aws-lc-rs jsonwebtoken's provider: when the server crate in the same
/// build enables the other backend (`rust_crypto`), feature unification turns
/// both on and jsonwebtoken would refuse to pick one by itself.
pub fn install_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/testdata")
            .join(name)
    }

    fn args(alg: TokenAlg, key: PathBuf) -> TokenArgs {
        TokenArgs {
            token_alg: Some(alg),
            token_key: Some(key),
            token_sub_prefix: "u-".into(),
            token_ttl: Duration::from_secs(600),
            token_topics: r#"{"sub":["news.*"],"pub":[]}"#.into(),
            token_in: TokenIn::Header,
        }
    }

    fn check(alg: TokenAlg, private: &str, public: DecodingKey) {
        install_provider();
        let (tokens, report) = mint(&args(alg, testdata(private)), 10, 5).unwrap().unwrap();
        assert_eq!(tokens.len(), 5);
        assert_eq!(report.count, 5);
        assert_eq!(report.alg, alg.name());
        let mut v = Validation::new(alg.algorithm());
        v.set_required_spec_claims(&["exp", "sub"]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut subs = Vec::new();
        for i in 0..5 {
            let t = tokens.get(i).unwrap();
            let d = decode::<serde_json::Value>(t, &public, &v).unwrap();
            assert_eq!(d.header.alg, alg.algorithm());
            let c = d.claims;
            subs.push(c["sub"].as_str().unwrap().to_string());
            let exp = c["exp"].as_u64().unwrap();
            assert!(
                (now + 590..=now + 610).contains(&exp),
                "exp {exp} now {now}"
            );
            assert_eq!(c["topics"]["sub"][0], "news.*");
            assert_eq!(c["topics"]["pub"].as_array().unwrap().len(), 0);
        }
        // Every connection's token differs: sub = prefix + index, from `first` on.
        assert_eq!(subs, ["u-10", "u-11", "u-12", "u-13", "u-14"]);
        // A token does not verify under another key.
        if let Ok(other) = DecodingKey::from_secret(b"other") {
            assert!(decode::<serde_json::Value>(tokens.get(0).unwrap(), &other, &v).is_err());
        }
    }

    #[test]
    fn mints_hmac() {
        let dir = std::env::temp_dir().join(format!("rc-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("secret");
        std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
        for alg in [TokenAlg::Hs256, TokenAlg::Hs384, TokenAlg::Hs512] {
            install_provider();
            let (tokens, _) = mint(&args(alg, key.clone()), 0, 3).unwrap().unwrap();
            let v = Validation::new(alg.algorithm());
            let d = decode::<serde_json::Value>(
                tokens.get(2).unwrap(),
                &DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap(),
                &v,
            )
            .unwrap();
            assert_eq!(d.claims["sub"], "u-2");
            // The secret is used as it is: a trailing newline would be another key.
            assert!(
                decode::<serde_json::Value>(
                    tokens.get(2).unwrap(),
                    &DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef\n").unwrap(),
                    &v,
                )
                .is_err()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mints_rsa_ec_ed() {
        let pem = |n: &str| std::fs::read(testdata(n)).unwrap();
        check(
            TokenAlg::Rs256,
            "rsa.pem",
            DecodingKey::from_rsa_pem(&pem("rsa.pub.pem")).unwrap(),
        );
        check(
            TokenAlg::Ps256,
            "rsa.pem",
            DecodingKey::from_rsa_pem(&pem("rsa.pub.pem")).unwrap(),
        );
        check(
            TokenAlg::Es256,
            "ec.pem",
            DecodingKey::from_ec_pem(&pem("ec.pub.pem")).unwrap(),
        );
        check(
            TokenAlg::EdDsa,
            "ed.pem",
            DecodingKey::from_ed_pem(&pem("ed.pub.pem")).unwrap(),
        );
    }

    #[test]
    fn bad_keys_and_claims_are_errors() {
        install_provider();
        // An EC key for RS256, a missing file, topics that are not JSON.
        let e = mint(&args(TokenAlg::Rs256, testdata("ec.pem")), 0, 1).unwrap_err();
        assert!(e.contains("RS256"), "{e}");
        assert!(
            !e.contains("PRIVATE"),
            "the error must not quote the key: {e}"
        );
        assert!(mint(&args(TokenAlg::Es256, testdata("nope.pem")), 0, 1).is_err());
        let mut a = args(TokenAlg::EdDsa, testdata("ed.pem"));
        a.token_topics = "{not json".into();
        assert!(mint(&a, 0, 1).unwrap_err().contains("--token-topics"));
        // No --token-alg: no tokens.
        a.token_alg = None;
        assert!(mint(&a, 0, 1).unwrap().is_none());
    }

    #[test]
    fn placements() {
        let t = Tokens::new(
            vec!["aaa.bbb.ccc".into(), "ddd.eee.fff".into()],
            TokenIn::Header,
        );
        assert_eq!(
            t.ws_parts(1, "/ws/t0"),
            (
                "/ws/t0".into(),
                Some(("Authorization", "Bearer ddd.eee.fff".into()))
            )
        );
        // Wraps around.
        assert_eq!(t.get(2), Some("aaa.bbb.ccc"));
        let t = Tokens::new(vec!["aaa.bbb.ccc".into()], TokenIn::Subprotocol);
        assert_eq!(
            t.ws_parts(0, "/ws/t0").1,
            Some((
                "Sec-WebSocket-Protocol",
                "ringcast.v1, ringcast.token.aaa.bbb.ccc".into()
            ))
        );
        // HTTP has no subprotocol: the header instead.
        assert_eq!(t.http_parts(0, "/p").1.unwrap().0, "Authorization");
        let t = Tokens::new(vec!["aaa.bbb.ccc".into()], TokenIn::Query);
        assert_eq!(
            t.ws_parts(0, "/ws/t0"),
            ("/ws/t0?token=aaa.bbb.ccc".into(), None)
        );
        assert_eq!(
            t.ws_parts(0, "/ws/t0?echo=1").0,
            "/ws/t0?echo=1&token=aaa.bbb.ccc"
        );
        let mut t = Tokens::new(vec!["a".into(), "b".into(), "c".into()], TokenIn::Query);
        let rest = t.split_off(2);
        assert_eq!((t.len(), rest.get(0)), (2, Some("c")));
    }

    #[test]
    fn subprotocol_header_is_a_valid_request_header() {
        // What the handshake writer emits parses back as two offered protocols, ours first.
        let (n, v) = subprotocol_header("x.y.z");
        let mut out = Vec::new();
        ringcast::proto::handshake::write_client_request(
            "h",
            "/",
            "dGhlIHNhbXBsZSBub25jZQ==",
            &[(n, &v)],
            &mut out,
        );
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(&out).unwrap().is_complete());
        let h = req
            .headers
            .iter()
            .find(|h| h.name == "Sec-WebSocket-Protocol")
            .unwrap();
        let offered: Vec<&str> = std::str::from_utf8(h.value)
            .unwrap()
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(offered, ["ringcast.v1", "ringcast.token.x.y.z"]);
    }

    #[test]
    fn chosen_subprotocol() {
        let head = |p: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{p}\r\n"
            )
        };
        check_chosen_subprotocol(head("Sec-WebSocket-Protocol: ringcast.v1\r\n").as_bytes())
            .unwrap();
        check_chosen_subprotocol(head("sec-websocket-protocol:  ringcast.v1 \r\n").as_bytes())
            .unwrap();
        for bad in [
            "",
            "Sec-WebSocket-Protocol: chat\r\n",
            "Sec-WebSocket-Protocol: ringcast.token.secret.jwt.here\r\n",
            "Sec-WebSocket-Protocol: ringcast.v1\r\nSec-WebSocket-Protocol: ringcast.v1\r\n",
        ] {
            let e = check_chosen_subprotocol(head(bad).as_bytes()).unwrap_err();
            assert!(!e.contains("secret"), "the token must not be quoted: {e}");
        }
    }
}
