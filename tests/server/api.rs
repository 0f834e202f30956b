//! The backend API with access control on: API keys on publish (single, keep-alive,
//! pipelined, batch), bearer JWTs on publish, `/api/topics`, `/api/topics/{topic}` and
//! `POST /api/disconnect`, answered for the whole server (connections placed on both
//! shards), and public-key tokens (RS256, ES256, EdDSA) at the upgrade.

use std::io::{Read, Write};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::auth::{connect_as, token};
use crate::both;
use crate::util::{Client, Msg, Server, split_response};

const KEY: &str = "k-0123456789abcdef";

fn backend(io: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--jwt-hmac-secret",
        "test-secret-0123456789",
        "--api-key",
        KEY,
    ];
    args.extend_from_slice(extra);
    Server::start(io, &args)
}

/// One request with `headers`, answered and closed.
fn call(
    srv: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    srv.request(&raw)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

both!(publish_needs_an_api_key_compared_exactly, |io| {
    let srv = backend(io, &[]);
    let mut sub = connect_as(&srv, "/ws/news", "s", json!({"sub": ["news"]}));
    let ct = ("Content-Type", "text/plain");
    assert_eq!(call(&srv, "POST", "/publish/news", &[ct], b"x").0, 401);
    let mut one_off = KEY.to_owned();
    one_off.replace_range(3..4, "X");
    let short = &KEY[..KEY.len() - 1];
    let long = format!("{KEY}0");
    for wrong in [one_off.as_str(), short, long.as_str(), ""] {
        let h = format!("Bearer {wrong}");
        assert_eq!(
            call(
                &srv,
                "POST",
                "/publish/news",
                &[ct, ("Authorization", &h)],
                b"x"
            )
            .0,
            401,
            "{wrong:?}"
        );
        assert_eq!(
            call(
                &srv,
                "POST",
                "/publish/news",
                &[ct, ("X-Api-Key", wrong)],
                b"x"
            )
            .0,
            401
        );
    }
    assert!(srv.metric("ringcast_api_key_refusals_total") >= 8);
    let (status, body) = call(
        &srv,
        "POST",
        "/publish/news",
        &[ct, ("X-Api-Key", KEY)],
        b"one",
    );
    assert_eq!(status, 202, "{body}");
    let h = format!("Bearer {KEY}");
    assert_eq!(
        call(
            &srv,
            "POST",
            "/publish/news",
            &[ct, ("Authorization", &h)],
            b"two"
        )
        .0,
        202
    );
    assert_eq!(sub.recv(), Msg::Text("one".into()));
    assert_eq!(sub.recv(), Msg::Text("two".into()));
    assert!(!srv.log().contains(KEY), "the API key was logged");
});

both!(keep_alive_pipelined_publishes_with_a_key, |io| {
    let srv = backend(io, &[]);
    let mut sub = connect_as(&srv, "/ws/ticks", "s", json!({"sub": ["ticks"]}));
    let mut raw = Vec::new();
    for i in 0..200 {
        let body = i.to_string();
        raw.extend_from_slice(
            format!(
                "POST /publish/ticks HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let mut s = srv.raw();
    s.write_all(&raw).unwrap();
    for i in 0..200 {
        assert_eq!(sub.recv(), Msg::Text(i.to_string()));
    }
    // Every request answered on the one connection, in order.
    let mut answers = Vec::new();
    let mut chunk = [0u8; 65536];
    while answers.windows(12).filter(|w| w == b"HTTP/1.1 202").count() < 200 {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early");
        answers.extend_from_slice(&chunk[..n]);
    }
});

both!(bearer_jwt_publishes_within_its_rights, |io| {
    let srv = backend(io, &[]);
    let mut sub = connect_as(&srv, "/ws", "s", json!({"sub": ["*"]}));
    crate::mux::cmd(&mut sub, json!({"type":"subscribe","topic":"chat.1"}));
    assert_eq!(crate::mux::next_json(&mut sub)["type"], "ack");
    let jwt = format!("Bearer {}", token("bot", 60, json!({"pub": ["chat.*"]})));
    let ct = ("Content-Type", "text/plain");
    assert_eq!(
        call(
            &srv,
            "POST",
            "/publish/chat.1",
            &[ct, ("Authorization", &jwt)],
            b"hi"
        )
        .0,
        202
    );
    assert_eq!(
        call(
            &srv,
            "POST",
            "/publish/news",
            &[ct, ("Authorization", &jwt)],
            b"no"
        )
        .0,
        403
    );
    let bad = format!("Bearer {}", token("bot", -100, json!({"pub": ["chat.*"]})));
    assert_eq!(
        call(
            &srv,
            "POST",
            "/publish/chat.1",
            &[ct, ("Authorization", &bad)],
            b"no"
        )
        .0,
        401
    );
    // A batch: the item outside its rights is refused alone, with its index.
    let batch = br#"[{"topic":"chat.1","data":"a"},{"topic":"news","data":"b"},{"topic":"chat.1","data":"c"}]"#;
    let (status, body) = call(
        &srv,
        "POST",
        "/publish",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &jwt),
        ],
        batch,
    );
    assert_eq!(status, 200, "{body}");
    let r = json_of(&body);
    assert_eq!(r["results"][1]["index"], 1, "{r}");
    assert_eq!(r["results"][1]["error"], "forbidden", "{r}");
    assert!(
        r["results"][0]["queued"].is_number() && r["results"][2]["queued"].is_number(),
        "{r}"
    );
    let got: Vec<Value> = (0..3).map(|_| crate::mux::next_json(&mut sub)).collect();
    assert_eq!(got[0]["data"], "hi");
    assert_eq!(got[1]["data"], "a");
    assert_eq!(got[2]["data"], "c");
});

/// A client with a token for `user`, subscribed (simple mode) to `topic`. Which shard takes
/// it is the kernel's choice (`SO_REUSEPORT`): 17 connections land on both shards of a
/// two-shard server except with probability 2^-16.
fn user_on(srv: &Server, user: &str, topic: &str) -> Client {
    let t = token(user, 600, json!({"sub": ["*"]}));
    Client::connect_with(
        srv.addr,
        &format!("/ws/{topic}"),
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .unwrap()
}

both!(api_answers_for_every_shard_and_disconnects_by_user, |io| {
    let srv = backend(io, &["--shards", "2"]);
    let auth = ("X-Api-Key", KEY);
    // Enough connections that both shards hold some (SO_REUSEPORT spreads them).
    let mut alice: Vec<Client> = (0..8).map(|_| user_on(&srv, "alice", "room")).collect();
    let mut bob: Vec<Client> = (0..8).map(|_| user_on(&srv, "bob", "room")).collect();
    let _other = user_on(&srv, "carol", "lobby");
    assert!(srv.wait_for(
        Duration::from_secs(5),
        |s| s.metric("ringcast_upgrades_total") >= 17
    ));
    assert_eq!(call(&srv, "GET", "/api/topics", &[], b"").0, 401);
    let (status, body) = call(&srv, "GET", "/api/topics", &[auth], b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"topics": [{"topic":"lobby","subscribers":1},{"topic":"room","subscribers":16}]})
    );
    let (status, body) = call(&srv, "GET", "/api/topics/room", &[auth], b"");
    assert_eq!(status, 200, "{body}");
    let r = json_of(&body);
    assert_eq!(r["subscribers"], 16, "{r}");
    assert_eq!(r["users"], json!(["alice", "bob"]), "{r}");
    assert_eq!(
        json_of(&call(&srv, "GET", "/api/topics/none", &[auth], b"").1)["subscribers"],
        0
    );
    // Disconnect by user: every connection of alice, on both shards, closes with 4004.
    let (status, body) = call(
        &srv,
        "POST",
        "/api/disconnect",
        &[auth, ("Content-Type", "application/json")],
        br#"{"user":"alice"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({"disconnected": 8}));
    for c in &mut alice {
        assert_eq!(c.expect_close(), Some(4004));
    }
    // Bob's connections are untouched: a publish reaches all of them.
    let (status, _) = call(
        &srv,
        "POST",
        "/publish/room",
        &[auth, ("Content-Type", "text/plain")],
        b"still here",
    );
    assert_eq!(status, 202);
    for c in &mut bob {
        assert_eq!(c.recv(), Msg::Text("still here".into()));
    }
    assert_eq!(srv.metric("ringcast_api_disconnects_total"), 8);
    // Bad bodies.
    assert_eq!(
        call(&srv, "POST", "/api/disconnect", &[auth], b"alice").0,
        400
    );
    assert_eq!(
        call(&srv, "POST", "/api/disconnect", &[auth], br#"{"user":""}"#).0,
        400
    );
    assert_eq!(call(&srv, "GET", "/api/disconnect", &[auth], b"").0, 405);
});

both!(api_without_any_key_is_open, |io| {
    // One shard: the answer comes within the request (no other shard to ask).
    let srv = Server::start(io, &["--shards", "1"]);
    let _c = srv.ws("/ws/a");
    assert!(srv.wait_for(
        Duration::from_secs(5),
        |s| s.metric("ringcast_upgrades_total") >= 1
    ));
    let (status, body) = call(&srv, "GET", "/api/topics", &[], b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"topics": [{"topic":"a","subscribers":1}]})
    );
    let (status, body) = call(&srv, "GET", "/api/topics/a", &[], b"");
    assert_eq!(
        (status, json_of(&body)["subscribers"].clone()),
        (200, json!(1))
    );
    let (status, body) = call(
        &srv,
        "POST",
        "/api/disconnect",
        &[],
        br#"{"user":"nobody"}"#,
    );
    assert_eq!((status, json_of(&body)), (200, json!({"disconnected": 0})));
});

fn key_path(name: &str) -> String {
    format!("{}/src/auth/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
}

both!(public_key_tokens_verify_and_keys_do_not_mix, |io| {
    let srv = Server::start(
        io,
        &[
            "--jwt-public-key-file",
            &key_path("rsa_public.pem"),
            "--jwt-public-key-file",
            &key_path("ec256_public.pem"),
            "--jwt-public-key-file",
            &key_path("ed25519_public.pem"),
        ],
    );
    let claims = json!({"sub": "alice", "exp": 4_000_000_000u64, "topics": {"sub": ["news"]}});
    for (alg, file) in [
        (Algorithm::RS256, "rsa_private.pem"),
        (Algorithm::PS256, "rsa_private.pem"),
        (Algorithm::ES256, "ec256_private.pem"),
        (Algorithm::EdDSA, "ed25519_private.pem"),
    ] {
        let pem = std::fs::read(key_path(file)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap();
        let t = encode(&Header::new(alg), &claims, &key).unwrap();
        let c = Client::connect_with(
            srv.addr,
            "/ws/news",
            &[("Authorization", &format!("Bearer {t}"))],
        );
        assert!(c.is_ok(), "{alg:?}: {:?}", c.err());
    }
    // Key confusion: an HS256 token signed with the RSA public key's PEM as the secret.
    let pem = std::fs::read(key_path("rsa_public.pem")).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&pem).unwrap(),
    )
    .unwrap();
    let mut s = srv.raw();
    let req = format!(
        "GET /ws/news HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {confused}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(split_response(&buf[..n]).0, 401);
    assert!(srv.metric("ringcast_token_refusals_total{reason=\"algorithm_not_allowed\"}") >= 1);
});
