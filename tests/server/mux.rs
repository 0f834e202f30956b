//! Mux mode (`GET /ws`): every command, its acknowledgement, every error reply, the
//! envelopes, the error budget, and the metrics that count them.

use std::time::Duration;

use ringcast::proto::frame::OpCode;
use serde_json::{Value, json};

use crate::both;
use crate::util::{Client, Msg, Server};

/// The next message as JSON (panics on anything else).
pub fn next_json(c: &mut Client) -> Value {
    match c.recv() {
        Msg::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
        other => panic!("expected a JSON text message, got {other:?}"),
    }
}

pub fn cmd(c: &mut Client, v: Value) {
    c.text(&v.to_string());
}

both!(subscribe_publish_unsubscribe_ping, |io| {
    let srv = Server::start(io, &[]);
    let mut a = srv.ws("/ws");
    let mut b = srv.ws("/ws");
    let mut simple = srv.ws("/ws/news");
    cmd(&mut a, json!({"type":"subscribe","topic":"news","id":1}));
    assert_eq!(
        next_json(&mut a),
        json!({"type":"ack","id":1,"op":"subscribe","topic":"news"})
    );
    cmd(
        &mut a,
        json!({"type":"subscribe","topic":"sport","id":"two"}),
    );
    assert_eq!(
        next_json(&mut a),
        json!({"type":"ack","id":"two","op":"subscribe","topic":"sport"})
    );
    // Idempotent.
    cmd(&mut a, json!({"type":"subscribe","topic":"news","id":3}));
    assert_eq!(next_json(&mut a)["type"], "ack");

    // b publishes text (string data, then a JSON value) to news.
    cmd(
        &mut b,
        json!({"type":"publish","topic":"news","data":"hello \"all\"","id":4}),
    );
    assert_eq!(
        next_json(&mut b),
        json!({"type":"ack","id":4,"op":"publish","topic":"news"})
    );
    assert_eq!(
        next_json(&mut a),
        json!({"type":"message","topic":"news","data":"hello \"all\""})
    );
    assert_eq!(
        simple.recv(),
        Msg::Text("hello \"all\"".into()),
        "bare payload"
    );
    cmd(
        &mut b,
        json!({"type":"publish","topic":"sport","data":{"score":[1,2]}}),
    );
    assert_eq!(next_json(&mut b)["type"], "ack");
    // An object published as data arrives as that JSON value, not a string.
    assert_eq!(
        next_json(&mut a),
        json!({"type":"message","topic":"sport","data":{"score":[1,2]}})
    );

    // A simple-mode publisher reaches mux subscribers in the envelope.
    simple.text("from simple");
    assert_eq!(
        next_json(&mut a),
        json!({"type":"message","topic":"news","data":"from simple"})
    );

    // Binary: the binary envelope both ways.
    let mut env = vec![4u8];
    env.extend_from_slice(b"news");
    env.extend_from_slice(&[0, 1, 2, 255]);
    b.send(OpCode::Binary, &env);
    assert_eq!(a.recv(), Msg::Binary(env.clone()));
    assert_eq!(simple.recv(), Msg::Binary(vec![0, 1, 2, 255]));

    // The publisher does not get its own message unless it asks.
    cmd(
        &mut a,
        json!({"type":"publish","topic":"news","data":"mine","id":5}),
    );
    assert_eq!(next_json(&mut a)["id"], 5);
    assert_eq!(simple.recv(), Msg::Text("mine".into()));
    // Published after "mine" went out: "mine" coming back to `a` would arrive first.
    simple.text("sentinel");
    assert_eq!(
        next_json(&mut a),
        json!({"type":"message","topic":"news","data":"sentinel"}),
        "no echo of its own publish"
    );
    cmd(
        &mut a,
        json!({"type":"publish","topic":"news","data":"echoed","echo":true}),
    );
    let first = next_json(&mut a);
    let second = next_json(&mut a);
    let mut got = [first["type"].clone(), second["type"].clone()];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, [json!("ack"), json!("message")]);
    assert_eq!(simple.recv(), Msg::Text("echoed".into()));

    cmd(&mut a, json!({"type":"unsubscribe","topic":"news","id":6}));
    assert_eq!(
        next_json(&mut a),
        json!({"type":"ack","id":6,"op":"unsubscribe","topic":"news"})
    );
    // Both from `b`, each after the previous one's ack (so in separate turns of its shard,
    // and in this order on every shard): the news message would reach `a` before the sport
    // sentinel.
    cmd(
        &mut b,
        json!({"type":"publish","topic":"news","data":"after unsubscribe","id":12}),
    );
    assert_eq!(next_json(&mut b)["id"], 12);
    assert_eq!(simple.recv(), Msg::Text("after unsubscribe".into()));
    cmd(
        &mut b,
        json!({"type":"publish","topic":"sport","data":"sentinel","id":13}),
    );
    assert_eq!(next_json(&mut b)["id"], 13);
    assert_eq!(
        next_json(&mut a),
        json!({"type":"message","topic":"sport","data":"sentinel"}),
        "nothing from news after unsubscribing"
    );

    cmd(&mut a, json!({"type":"ping","id":7}));
    assert_eq!(next_json(&mut a), json!({"type":"pong","id":7}));

    assert_eq!(
        srv.metric("ringcast_mux_commands_total{type=\"subscribe\"}"),
        3
    );
    assert_eq!(
        srv.metric("ringcast_mux_commands_total{type=\"binary_publish\"}"),
        1
    );
    assert_eq!(srv.metric("ringcast_mux_connections_total"), 2);
    // a: sport; simple: news.
    assert_eq!(srv.metric("ringcast_subscriptions"), 2);
    drop(a);
    assert!(srv.wait_for(
        Duration::from_secs(5),
        |s| s.metric("ringcast_subscriptions") == 1
    ));
});

both!(query_subscribe_and_cross_shard_delivery, |io| {
    let srv = Server::start(io, &[]);
    // Several connections so that both shards hold some.
    let mut subs: Vec<Client> = (0..6).map(|_| srv.ws("/ws?subscribe=a,b%2Fc")).collect();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(srv.metric("ringcast_subscriptions"), 12);
    let mut p = srv.ws("/ws/b/c");
    p.text("x");
    for s in &mut subs {
        assert_eq!(
            next_json(s),
            json!({"type":"message","topic":"b/c","data":"x"})
        );
    }
    let (status, body) = srv.request(b"GET /ws?subscribe=ok,bad%20topic HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad topic"), "{body}");
});

both!(too_many_query_topics_is_a_400, |io| {
    let srv = Server::start(io, &["--max-topics-per-connection", "2"]);
    srv.ws_with("/ws?subscribe=a,b", &[]).expect("two are fine");
    let err = srv
        .ws_with("/ws?subscribe=a,b,c", &[])
        .err()
        .expect("three are not");
    assert!(err.to_string().contains("400"), "{err}");
});

both!(every_error_gets_a_reply_and_the_connection_stays, |io| {
    let srv = Server::start(io, &["--max-topics-per-connection", "2"]);
    let mut c = srv.ws("/ws");
    let mut bystander = srv.ws("/ws?subscribe=t");
    let long = "x".repeat(256);
    let cases: Vec<(String, &str, Value)> = vec![
        ("not json".into(), "bad_json", Value::Null),
        ("[1,2]".into(), "bad_json", Value::Null),
        (
            json!({"topic":"a","id":1}).to_string(),
            "bad_message",
            json!(1),
        ),
        (
            json!({"type":"subscribe","id":2}).to_string(),
            "bad_message",
            json!(2),
        ),
        (
            json!({"type":"subscribe","topic":7,"id":3}).to_string(),
            "bad_message",
            json!(3),
        ),
        (
            json!({"type":"publish","topic":"a","id":4}).to_string(),
            "bad_message",
            json!(4),
        ),
        (
            json!({"type":"ping","id":[1]}).to_string(),
            "bad_message",
            Value::Null,
        ),
        (
            json!({"type":"dance","id":5}).to_string(),
            "unknown_type",
            json!(5),
        ),
        (
            json!({"type":"subscribe","topic":long,"id":6}).to_string(),
            "bad_topic",
            json!(6),
        ),
        (
            json!({"type":"subscribe","topic":"a b","id":7}).to_string(),
            "bad_topic",
            json!(7),
        ),
        (
            json!({"type":"publish","topic":"","data":"x","id":8}).to_string(),
            "bad_topic",
            json!(8),
        ),
        (
            json!({"type":"unsubscribe","topic":"never","id":9}).to_string(),
            "not_subscribed",
            json!(9),
        ),
    ];
    for (text, code, id) in &cases {
        c.text(text);
        let reply = next_json(&mut c);
        assert_eq!(reply["type"], "error", "{text}: {reply}");
        assert_eq!(reply["code"], *code, "{text}: {reply}");
        assert_eq!(
            reply.get("id").cloned().unwrap_or(Value::Null),
            *id,
            "{text}"
        );
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
    }
    for (i, t) in ["a", "b"].iter().enumerate() {
        cmd(&mut c, json!({"type":"subscribe","topic":t,"id":i}));
        assert_eq!(next_json(&mut c)["type"], "ack");
    }
    cmd(&mut c, json!({"type":"subscribe","topic":"c","id":10}));
    let reply = next_json(&mut c);
    assert_eq!(reply["code"], "too_many_topics", "{reply}");
    c.send(OpCode::Binary, b"\x09ab");
    assert_eq!(next_json(&mut c)["code"], "bad_envelope");
    c.send(OpCode::Binary, b"");
    assert_eq!(next_json(&mut c)["code"], "bad_envelope");
    // Still usable, and nobody else was affected.
    cmd(
        &mut c,
        json!({"type":"publish","topic":"t","data":"still here","id":11}),
    );
    assert_eq!(next_json(&mut c)["type"], "ack");
    assert_eq!(
        next_json(&mut bystander),
        json!({"type":"message","topic":"t","data":"still here"})
    );
    assert_eq!(
        srv.metric("ringcast_mux_errors_total{code=\"bad_json\"}"),
        2
    );
    assert_eq!(
        srv.metric("ringcast_mux_errors_total{code=\"bad_message\"}"),
        5
    );
    assert_eq!(
        srv.metric("ringcast_mux_errors_total{code=\"unknown_type\"}"),
        1
    );
    assert_eq!(
        srv.metric("ringcast_mux_errors_total{code=\"bad_topic\"}"),
        3
    );
    assert_eq!(
        srv.metric("ringcast_mux_errors_total{code=\"not_subscribed\"}"),
        1
    );
    assert_eq!(
        srv.metric("ringcast_mux_errors_total{code=\"too_many_topics\"}"),
        1
    );
    assert_eq!(
        srv.metric("ringcast_mux_errors_total{code=\"bad_envelope\"}"),
        2
    );
    // Everything refused while parsing (not the state-dependent refusals).
    assert_eq!(
        srv.metric("ringcast_mux_commands_total{type=\"invalid\"}"),
        11
    );
});

both!(abusive_errors_close_with_1008, |io| {
    let srv = Server::start(io, &["--mux-error-budget", "3"]);
    let mut c = srv.ws("/ws");
    let mut other = srv.ws("/ws?subscribe=t");
    for _ in 0..4 {
        c.text("{oops");
    }
    for _ in 0..4 {
        assert_eq!(next_json(&mut c)["code"], "bad_json");
    }
    assert_eq!(c.expect_close(), Some(1008));
    assert_eq!(
        srv.metric("ringcast_protocol_errors_total{code=\"1008\"}"),
        1
    );
    // Others are untouched.
    let mut p = srv.ws("/ws/t");
    p.text("ok");
    assert_eq!(
        next_json(&mut other),
        json!({"type":"message","topic":"t","data":"ok"})
    );
});

both!(slow_mux_subscribers_meet_the_policy, |io| {
    let srv = Server::start(
        io,
        &[
            "--send-queue-limit",
            "256KiB",
            "--max-message-size",
            "64KiB",
        ],
    );
    // Never reads: its queue in the server fills up.
    let slow = srv.ws("/ws?subscribe=firehose");
    let mut fast = srv.ws("/ws?subscribe=firehose");
    let mut p = srv.ws("/ws/firehose");
    std::thread::sleep(Duration::from_millis(50));
    let payload = vec![b'x'; 60 * 1024];
    let mut closed = false;
    for _ in 0..400 {
        p.send(OpCode::Binary, &payload);
        match fast.recv_timeout(Duration::from_secs(5)) {
            Some(Msg::Binary(b)) => assert_eq!(b.len(), payload.len() + 1 + "firehose".len()),
            other => panic!("fast subscriber: {other:?}"),
        }
        if srv.metric("ringcast_slow_consumer_disconnects_total") >= 1 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow mux-mode subscriber was disconnected");
    drop(slow);
    assert!(srv.wait_for(Duration::from_secs(5), |s| {
        s.metric("ringcast_subscriptions") == 2
    }));
});

both!(
    largest_message_fits_an_idle_mux_subscriber_at_the_minimum_queue,
    |io| {
        let srv = Server::start(
            io,
            &["--max-message-size", "4KiB", "--send-queue-limit", "4KiB"],
        );
        let mut ctl = srv.ws("/ws?subscribe=t");
        let mut p = srv.ws("/ws/t");
        std::thread::sleep(Duration::from_millis(50));
        // Control characters escape to six bytes each: the envelope is ~6x the message.
        let text = "\u{1}".repeat(4096);
        p.text(&text);
        let v = next_json(&mut ctl);
        assert_eq!(v["data"].as_str().map(str::len), Some(4096));
        assert_eq!(srv.metric("ringcast_slow_consumer_disconnects_total"), 0);
    }
);

both!(json_payloads_arrive_as_json_values, |io| {
    // A mux publish whose data is an object or array, and an HTTP publish of a JSON
    // object or array as application/json, reach mux subscribers as JSON values (parsed
    // once); strings stay strings (also a JSON string literal, and JSON text published as
    // a string); simple-mode subscribers get the bytes as they were published.
    let srv = Server::start(io, &[]);
    let mut sub = srv.ws("/ws");
    cmd(&mut sub, json!({"type":"subscribe","topic":"j"}));
    assert_eq!(next_json(&mut sub)["type"], "ack");
    let mut simple = srv.ws("/ws/j");
    let mut publisher = srv.ws("/ws");
    for data in [json!({"p": 1}), json!("{\"s\":1}"), json!([1, 2]), json!(7)] {
        cmd(
            &mut publisher,
            json!({"type":"publish","topic":"j","data":data}),
        );
        assert_eq!(next_json(&mut publisher)["type"], "ack");
    }
    for (body, ct) in [
        (&b"{\"h\": [true]}"[..], "application/json"),
        (b"\"lit\"", "application/json"),
        (b"{\"v\":1}", "application/vnd.api+json"),
        (b"{\"t\":1}", "text/plain"),
        (b"{broken", "application/json"),
    ] {
        assert_eq!(srv.post("/publish/j", ct, body).0, 202);
    }
    let want = [
        json!({"p": 1}),
        json!("{\"s\":1}"),
        json!([1, 2]),
        json!("7"),
        json!({"h": [true]}),
        json!("\"lit\""),
        json!({"v": 1}),
        json!("{\"t\":1}"),
        json!("{broken"),
    ];
    for w in &want {
        let m = next_json(&mut sub);
        assert_eq!((&m["type"], &m["data"]), (&json!("message"), w), "{m}");
    }
    let raw: Vec<String> = (0..want.len())
        .map(|_| match simple.recv() {
            Msg::Text(t) => t,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(raw[0], r#"{"p":1}"#);
    assert_eq!(raw[4], "{\"h\": [true]}", "bytes as published");
});
