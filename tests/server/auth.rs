//! Access control on a real server: tokens at the upgrade (header, subprotocol, query),
//! every refusal with its status or close code, rights in simple and mux mode, expiry,
//! refresh, the mux `auth` deadline, namespaces, the client publish rate, and the metrics
//! that count refusals. The token never appears in the server's log.

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use ringcast::proto::frame::OpCode;
use serde_json::{Value, json};

use crate::both;
use crate::mux::{cmd, next_json};
use crate::util::{Client, Msg, Server, split_response};

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An HS256 token for `sub` expiring in `ttl` seconds (negative: in the past).
pub fn token(sub: &str, ttl: i64, topics: Value) -> String {
    token_with(SECRET, sub, ttl, topics)
}

fn token_with(secret: &str, sub: &str, ttl: i64, topics: Value) -> String {
    let exp = (now() as i64 + ttl).max(0);
    let claims = json!({"sub": sub, "exp": exp, "topics": topics});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A connection to `path` with a fresh token for `sub` granting `topics` (60 s).
pub fn connect_as(srv: &Server, path: &str, sub: &str, topics: Value) -> Client {
    let t = token(sub, 60, topics);
    Client::connect_with(srv.addr, path, &[("Authorization", &bearer(&t))]).unwrap()
}

fn secured(io: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--jwt-hmac-secret", SECRET];
    args.extend_from_slice(extra);
    Server::start(io, &args)
}

/// The status line's code and the whole response head of a raw upgrade request.
fn upgrade_raw(srv: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = srv.raw();
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    (split_response(&buf).0, head)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

both!(
    simple_mode_needs_a_token_with_the_right_to_the_topic,
    |io| {
        let srv = secured(io, &["--max-token-size", "1KiB"]);
        let news = token("alice", 60, json!({"sub": ["news", "user.{sub}"]}));
        // No token, no anonymous grant: 401.
        let (status, _) = upgrade_raw(&srv, "/ws/news", &[]);
        assert_eq!(status, 401);
        // Each place a token may come from.
        let auth = bearer(&news);
        assert_eq!(
            upgrade_raw(&srv, "/ws/news", &[("Authorization", &auth)]).0,
            101
        );
        assert_eq!(
            upgrade_raw(&srv, &format!("/ws/news?token={news}"), &[]).0,
            101
        );
        let protocols = format!("ringcast.v1, ringcast.token.{news}");
        let (status, head) =
            upgrade_raw(&srv, "/ws/news", &[("Sec-WebSocket-Protocol", &protocols)]);
        assert_eq!(status, 101, "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("sec-websocket-protocol: ringcast.v1\r\n"),
            "{head}"
        );
        assert!(!head.contains(&news), "the token is never echoed: {head}");
        // A token subprotocol without ringcast.v1 (the 101 could name no protocol the browser
        // offered): refused with a reason.
        let alone = format!("ringcast.token.{news}");
        assert_eq!(
            upgrade_raw(&srv, "/ws/news", &[("Sec-WebSocket-Protocol", &alone)]).0,
            400
        );
        // A token in the wrong place: another scheme.
        assert_eq!(
            upgrade_raw(
                &srv,
                "/ws/news",
                &[("Authorization", &format!("Basic {news}"))]
            )
            .0,
            401
        );
        // {sub} stands for the token's sub.
        assert_eq!(
            upgrade_raw(&srv, "/ws/user.alice", &[("Authorization", &auth)]).0,
            101
        );
        // No right to the topic: 403.
        assert_eq!(
            upgrade_raw(&srv, "/ws/user.bob", &[("Authorization", &auth)]).0,
            403
        );
        assert_eq!(
            upgrade_raw(&srv, "/ws/other", &[("Authorization", &auth)]).0,
            403
        );
        // Refused tokens: 401, counted by reason.
        let expired = bearer(&token("alice", -3600, json!({"sub": ["*"]})));
        let forged = bearer(&token_with(
            "not-the-secret",
            "alice",
            60,
            json!({"sub": ["*"]}),
        ));
        let none_alg = {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let h = b.encode(br#"{"alg":"none","typ":"JWT"}"#);
            let c = b.encode(format!(
                r#"{{"sub":"a","exp":{},"topics":{{"sub":["*"]}}}}"#,
                now() + 60
            ));
            format!("Bearer {h}.{c}.")
        };
        let huge = format!("Bearer {}", "a".repeat(2000));
        for (h, reason) in [
            (&expired, "expired"),
            (&forged, "bad_signature"),
            (&none_alg, "algorithm_not_allowed"),
            (&"Bearer not.a.token".to_owned(), "malformed"),
            (&huge, "too_large"),
        ] {
            let (status, body) = upgrade_raw(&srv, "/ws/news", &[("Authorization", h)]);
            assert_eq!(status, 401, "{reason}: {body}");
            let name = format!("ringcast_token_refusals_total{{reason=\"{reason}\"}}");
            assert!(srv.metric(&name) >= 1, "{name}");
        }
        // A 100 KB token does not fit in a request head at all: 431, before any decoding.
        let enormous = format!("Bearer {}", "a".repeat(100_000));
        assert_eq!(
            upgrade_raw(&srv, "/ws/news", &[("Authorization", &enormous)]).0,
            431
        );
        assert!(srv.metric("ringcast_access_refusals_total{reason=\"forbidden\"}") >= 2);
        assert!(srv.metric("ringcast_access_refusals_total{reason=\"unauthorized\"}") >= 1);
        let log = srv.log();
        assert!(
            !log.contains(&news) && !log.contains(&expired[7..]),
            "a token was logged"
        );
    }
);

both!(simple_mode_messages_need_the_publish_right, |io| {
    let srv = secured(io, &[]);
    let reader = token("r", 60, json!({"sub": ["room"]}));
    let writer = token("w", 60, json!({"sub": ["room"], "pub": ["room"]}));
    let mut sub =
        Client::connect_with(srv.addr, "/ws/room", &[("Authorization", &bearer(&reader))]).unwrap();
    let mut quiet =
        Client::connect_with(srv.addr, "/ws/room", &[("Authorization", &bearer(&reader))]).unwrap();
    let mut pubr =
        Client::connect_with(srv.addr, "/ws/room", &[("Authorization", &bearer(&writer))]).unwrap();
    quiet.text("not allowed");
    std::thread::sleep(Duration::from_millis(50));
    pubr.text("allowed");
    // The sentinel: the first message the subscriber sees is the allowed one.
    assert_eq!(sub.recv(), Msg::Text("allowed".into()));
    assert!(srv.wait_for(Duration::from_secs(2), |s| {
        s.metric("ringcast_access_refusals_total{reason=\"forbidden\"}") >= 1
    }));
    // The refused publisher's connection stays open: it receives the allowed message too.
    assert_eq!(quiet.recv(), Msg::Text("allowed".into()));
});

both!(mux_mode_checks_every_command_and_stays_open, |io| {
    let srv = secured(io, &[]);
    let mut c = srv.ws("/ws");
    cmd(&mut c, json!({"type":"subscribe","topic":"news","id":1}));
    let e = next_json(&mut c);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "{e}"
    );
    let t = token("alice", 60, json!({"sub": ["news"], "pub": ["chat.*"]}));
    cmd(&mut c, json!({"type":"auth","token":"garbage","id":2}));
    assert_eq!(next_json(&mut c)["code"], "unauthorized");
    cmd(&mut c, json!({"type":"auth","token":t,"id":3}));
    assert_eq!(next_json(&mut c), json!({"type":"ack","id":3,"op":"auth"}));
    cmd(&mut c, json!({"type":"subscribe","topic":"news","id":4}));
    assert_eq!(next_json(&mut c)["type"], "ack");
    cmd(&mut c, json!({"type":"subscribe","topic":"secret","id":5}));
    assert_eq!(next_json(&mut c)["code"], "forbidden");
    cmd(
        &mut c,
        json!({"type":"publish","topic":"news","data":"x","id":6}),
    );
    assert_eq!(next_json(&mut c)["code"], "forbidden");
    cmd(
        &mut c,
        json!({"type":"publish","topic":"chat.1","data":"x","id":7}),
    );
    assert_eq!(next_json(&mut c)["type"], "ack");
    // Binary envelope publishes are checked too.
    let mut env = vec![4u8];
    env.extend_from_slice(b"news");
    env.extend_from_slice(b"bin");
    c.send(OpCode::Binary, &env);
    assert_eq!(next_json(&mut c)["code"], "forbidden");
    cmd(&mut c, json!({"type":"ping","id":8}));
    assert_eq!(next_json(&mut c), json!({"type":"pong","id":8}));
    // Another user's token cannot replace this one.
    let other = token("bob", 60, json!({"sub": ["*"]}));
    cmd(&mut c, json!({"type":"refresh","token":other,"id":9}));
    assert_eq!(next_json(&mut c)["code"], "forbidden");
    assert!(!srv.log().contains(&t), "a token was logged");
});

both!(
    mux_without_auth_message_is_closed_at_the_handshake_timeout,
    |io| {
        let srv = secured(io, &["--handshake-timeout", "1s"]);
        let mut c = srv.ws("/ws");
        let started = Instant::now();
        assert_eq!(c.expect_close(), Some(4002));
        assert!(started.elapsed() >= Duration::from_millis(900));
    }
);

both!(expired_tokens_close_simple_connections_with_4001, |io| {
    let srv = secured(io, &["--jwt-leeway", "0s"]);
    let t = token("alice", 2, json!({"sub": ["news"]}));
    let mut c =
        Client::connect_with(srv.addr, "/ws/news", &[("Authorization", &bearer(&t))]).unwrap();
    let started = Instant::now();
    assert_eq!(c.expect_close(), Some(4001));
    assert!(started.elapsed() <= Duration::from_secs(4));
    assert!(srv.metric("ringcast_token_expired_closes_total") >= 1);
});

both!(
    mux_refresh_keeps_the_connection_past_the_first_expiry,
    |io| {
        let srv = secured(io, &["--jwt-leeway", "0s"]);
        let short = token("alice", 3, json!({"sub": ["news"]}));
        let mut c =
            Client::connect_with(srv.addr, "/ws", &[("Authorization", &bearer(&short))]).unwrap();
        let mut lazy =
            Client::connect_with(srv.addr, "/ws", &[("Authorization", &bearer(&short))]).unwrap();
        let notice = next_json(&mut c);
        assert_eq!(notice["type"], "refresh_required", "{notice}");
        assert!(notice["in"].as_u64().is_some_and(|s| s <= 3), "{notice}");
        let long = token("alice", 60, json!({"sub": ["news"]}));
        cmd(&mut c, json!({"type":"refresh","token":long,"id":1}));
        assert_eq!(
            next_json(&mut c),
            json!({"type":"ack","id":1,"op":"refresh"})
        );
        // The one that did not refresh is closed at expiry; the other still answers.
        assert_eq!(next_json(&mut lazy)["type"], "refresh_required");
        assert_eq!(lazy.expect_close(), Some(4001));
        cmd(&mut c, json!({"type":"ping","id":2}));
        assert_eq!(next_json(&mut c), json!({"type":"pong","id":2}));
        assert!(srv.metric("ringcast_token_refreshes_total") >= 1);
    }
);

both!(namespaces_resolve_options_by_prefix, |io| {
    let dir = std::env::temp_dir().join(format!("ringcast-ns-{}-{io}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ns.toml");
    std::fs::write(
        &file,
        "[namespaces.public]\nanonymous = \"subscribe\"\nclient_publish = false\n\n\
         [namespaces.small]\nanonymous = \"publish\"\nmax_message_size = 8\n",
    )
    .unwrap();
    let srv = secured(
        io,
        &[
            "--config",
            file.to_str().unwrap(),
            "--api-key",
            "backend-key",
        ],
    );
    // Unknown namespace: bad_topic (400).
    assert_eq!(upgrade_raw(&srv, "/ws/nope:x", &[]).0, 400);
    // Anonymous subscribe where the namespace allows it; not in the default namespace.
    let mut anon = Client::connect(srv.addr, "/ws/public:prices").unwrap();
    assert_eq!(upgrade_raw(&srv, "/ws/prices", &[]).0, 401);
    // Clients may not publish in `public`, even with a token that allows everything.
    let all = token("alice", 60, json!({"sub": ["*"], "pub": ["*"]}));
    let mut m = Client::connect_with(srv.addr, "/ws", &[("Authorization", &bearer(&all))]).unwrap();
    cmd(
        &mut m,
        json!({"type":"publish","topic":"public:prices","data":"1","id":1}),
    );
    assert_eq!(next_json(&mut m)["code"], "forbidden");
    // The backend may (with its API key: a JWT key is configured, so the API is closed).
    let (status, _) = srv.post("/publish/public:prices", "text/plain", b"42");
    assert_eq!(status, 401);
    let (status, body) = srv.request(
        b"POST /publish/public:prices HTTP/1.1\r\nHost: x\r\nX-Api-Key: backend-key\r\n\
          Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n42",
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(anon.recv(), Msg::Text("42".into()));
    // A namespace's own size limit.
    cmd(
        &mut m,
        json!({"type":"publish","topic":"small:x","data":"123456789","id":2}),
    );
    assert_eq!(next_json(&mut m)["code"], "too_large");
    cmd(
        &mut m,
        json!({"type":"publish","topic":"small:x","data":"12345678","id":3}),
    );
    assert_eq!(next_json(&mut m)["type"], "ack");
    std::fs::remove_dir_all(&dir).ok();
});

both!(client_publish_rate_limits_each_connection, |io| {
    let srv = Server::start(
        io,
        &["--client-publish-rate", "1", "--client-publish-burst", "2"],
    );
    let mut c = srv.ws("/ws");
    for i in 0..5 {
        cmd(
            &mut c,
            json!({"type":"publish","topic":"t","data":"x","id":i}),
        );
    }
    let codes: Vec<String> = (0..5)
        .map(|_| {
            let r = next_json(&mut c);
            r["code"].as_str().unwrap_or("ack").to_owned()
        })
        .collect();
    assert_eq!(
        codes,
        ["ack", "ack", "rate_limited", "rate_limited", "rate_limited"]
    );
    // Not counted against the error budget, and counted in its own metric.
    cmd(&mut c, json!({"type":"ping","id":9}));
    assert_eq!(next_json(&mut c), json!({"type":"pong","id":9}));
    assert_eq!(
        srv.metric("ringcast_access_refusals_total{reason=\"rate_limited\"}"),
        3
    );
});

both!(
    without_keys_everything_stays_open_and_tokens_are_ignored,
    |io| {
        let srv = Server::start(io, &[]);
        let (status, _) = upgrade_raw(&srv, "/ws/news", &[("Authorization", "Bearer whatever")]);
        assert_eq!(status, 101);
    }
);

both!(audience_issuer_and_not_before_are_checked, |io| {
    let srv = secured(
        io,
        &[
            "--jwt-audience",
            "app",
            "--jwt-issuer",
            "https://auth.example",
            "--jwt-leeway",
            "0s",
        ],
    );
    let mint = |claims: Value| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let base = |aud: &str, iss: &str, nbf: u64| json!({"sub":"a","exp":now()+60,"nbf":nbf,"aud":aud,"iss":iss,"topics":{"sub":["*"]}});
    let good = mint(base("app", "https://auth.example", now()));
    let cases = [
        (
            mint(base("other", "https://auth.example", now())),
            "wrong_audience",
        ),
        (
            mint(base("app", "https://evil.example", now())),
            "wrong_issuer",
        ),
        (
            mint(base("app", "https://auth.example", now() + 600)),
            "not_yet_valid",
        ),
        (
            mint(
                json!({"sub":"a","exp":now()+60,"aud":"app","iss":"https://auth.example","topics":{"sub":"*"}}),
            ),
            "bad_claims",
        ),
        (
            mint(json!({"sub":"a","aud":"app","iss":"https://auth.example"})),
            "bad_claims",
        ),
    ];
    assert_eq!(
        upgrade_raw(&srv, "/ws/x", &[("Authorization", &bearer(&good))]).0,
        101
    );
    for (t, reason) in cases {
        assert_eq!(
            upgrade_raw(&srv, "/ws/x", &[("Authorization", &bearer(&t))]).0,
            401,
            "{reason}"
        );
        let name = format!("ringcast_token_refusals_total{{reason=\"{reason}\"}}");
        assert!(srv.metric(&name) >= 1, "{name}");
    }
});

both!(refusals_do_not_disturb_other_connections, |io| {
    let srv = secured(io, &[]);
    let news = token("alice", 60, json!({"sub": ["news"]}));
    let mut bystander =
        Client::connect_with(srv.addr, "/ws", &[("Authorization", &bearer(&news))]).unwrap();
    cmd(&mut bystander, json!({"type":"subscribe","topic":"news"}));
    assert_eq!(next_json(&mut bystander)["type"], "ack");
    let forged = bearer(&token_with("wrong", "x", 60, json!({"sub": ["*"]})));
    for _ in 0..20 {
        assert_eq!(
            upgrade_raw(&srv, "/ws/news", &[("Authorization", &forged)]).0,
            401
        );
        assert_eq!(upgrade_raw(&srv, "/ws/news", &[]).0, 401);
        assert_eq!(
            upgrade_raw(&srv, "/ws/x", &[("Authorization", &bearer(&news))]).0,
            403
        );
    }
    let mut publisher = Client::connect_with(
        srv.addr,
        "/ws",
        &[(
            "Authorization",
            &bearer(&token("p", 60, json!({"pub": ["news"]}))),
        )],
    )
    .unwrap();
    cmd(
        &mut publisher,
        json!({"type":"publish","topic":"news","data":"after"}),
    );
    // The next thing the bystander sees is this message.
    assert_eq!(
        next_json(&mut bystander),
        json!({"type":"message","topic":"news","data":"after"})
    );
    assert!(srv.metric("ringcast_token_refusals_total{reason=\"bad_signature\"}") >= 20);
});

both!(subscribe_query_topics_are_checked_one_by_one, |io| {
    let srv = secured(io, &[]);
    let t = token("alice", 60, json!({"sub": ["news", "sport"]}));
    let mut c = Client::connect_with(
        srv.addr,
        "/ws?subscribe=news,secret,sport",
        &[("Authorization", &bearer(&t))],
    )
    .unwrap();
    // The refused topic is skipped (and counted); the others are subscribed.
    let mut publisher = Client::connect_with(
        srv.addr,
        "/ws",
        &[(
            "Authorization",
            &bearer(&token("p", 60, json!({"pub": ["*"]}))),
        )],
    )
    .unwrap();
    for topic in ["secret", "news", "sport"] {
        cmd(
            &mut publisher,
            json!({"type":"publish","topic":topic,"data":topic}),
        );
        assert_eq!(next_json(&mut publisher)["type"], "ack");
    }
    // Two topics: each in its own order (they may have different home shards), so the
    // two arrive in either order; "secret" never does.
    let mut got = [
        next_json(&mut c)["data"].clone(),
        next_json(&mut c)["data"].clone(),
    ];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(
        got,
        [json!("news"), json!("sport")],
        "secret was not subscribed"
    );
    cmd(&mut c, json!({"type":"ping"}));
    assert_eq!(next_json(&mut c)["type"], "pong", "and nothing else came");
    assert!(srv.metric("ringcast_access_refusals_total{reason=\"forbidden\"}") >= 1);
});

both!(token_messages_spend_the_error_budget, |io| {
    // Each auth/refresh costs a verification: a connection may send at most
    // --mux-error-budget + 1 of them per 10 s, valid or not.
    let srv = secured(io, &["--mux-error-budget", "3"]);
    let mut c = srv.ws("/ws");
    let t = token("alice", 60, json!({"sub": ["news"]}));
    for i in 0..4 {
        cmd(&mut c, json!({"type":"auth","token":t,"id":i}));
        assert_eq!(next_json(&mut c)["type"], "ack", "auth {i}");
    }
    cmd(&mut c, json!({"type":"auth","token":t,"id":4}));
    assert_eq!(c.expect_close(), Some(1008));
    assert_eq!(srv.metric("ringcast_tokens_accepted_total"), 4);
});
