//! The mux-mode protocol (ringcast's JSON mode, which multiplexes topics over one connection) (`GET /ws`): JSON commands in, acknowledgements, errors and
//! topic envelopes out. Pure: bytes in, bytes out, no I/O and no shard state, so that every
//! message and error can be tested here and the shard only applies decisions.
//!
//! # Client → server (text frames, one JSON object each)
//!
//! | `type` | fields | effect |
//! |---|---|---|
//! | `subscribe` | `topic`, optional `id`, optional `recover: {epoch, offset}` or `rewind: N` | subscribe (idempotent); on a topic with history the ack names the epoch and latest offset, and `recover`/`rewind` replay publications first ([`super::join`]) |
//! | `unsubscribe` | `topic`, optional `id` | unsubscribe (`not_subscribed` if it was not) |
//! | `publish` | `topic`, `data`, optional `id`, optional `echo` | publish `data` as a text message: a JSON string is sent as its contents, any other JSON value as its JSON text |
//! | `ping` | optional `id` | answered with `pong` (browsers cannot send WebSocket pings) |
//! | `auth` | `token`, optional `id` | present a connection token (JWT) not given at the upgrade |
//! | `refresh` | `token`, optional `id` | replace the token (same `sub`) before it expires |
//!
//! Every command gets exactly one reply, `ack` (or `pong`) or `error`, carrying the `id`
//! when one was given (an integer from −2^63 to 2^64−1, echoed exactly, or a string of at most
//! [`MAX_ID_LEN`] bytes; other numbers are refused, since they would not come back as sent). Unknown
//! fields are ignored. A binary frame is a publish in the binary envelope (below); it is not
//! acknowledged, only refused when malformed.
//!
//! # Server → client
//!
//! - `{"type":"ack","id":7,"op":"subscribe","topic":"a"}`
//! - `{"type":"pong","id":7}`
//! - `{"type":"refresh_required","in":30}`: the token expires in 30 s; send `refresh`, or the
//!   connection closes with 4001 at expiry
//! - `{"type":"error","id":7,"code":"bad_topic","message":"topic name is empty"}`
//! - `{"type":"ack","id":7,"op":"subscribe","topic":"a","epoch":"k3X9aQ2b","offset":42,"recovered":true}`
//! - a text message published to a topic: `{"type":"message","topic":"a","data":"hello"}`,
//!   with `"offset":N` before `data` when the topic has history
//! - a binary message: a binary frame `[topic length: 1 byte][topic][payload]` (topics are at
//!   most 255 bytes, so one length byte suffices; the payload is not copied into JSON or
//!   base64, and a browser decodes it with a `DataView`); version 2 (`/ws?envelope=2`)
//!   puts the offset, 8 bytes big-endian, between the topic and the payload.
//!
//! Both envelopes are built by the shard once per publish (per shard with a mux-mode
//! subscriber), next to the bare simple-mode frame, and shared by reference count.

use serde_json::{Map, Value};

use crate::pubsub::validate_topic;

/// Command kinds counted in `ringcast_mux_commands_total{type}`: the four JSON types,
/// binary-envelope publishes, and messages that could not be parsed at all.
pub const COMMANDS: [&str; 8] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "auth",
    "refresh",
    COMMAND_BINARY_PUBLISH,
    COMMAND_INVALID,
];
/// The `type` label of a binary-envelope publish.
pub const COMMAND_BINARY_PUBLISH: &str = "binary_publish";
/// The `type` label of a message that is not a readable command.
pub const COMMAND_INVALID: &str = "invalid";

/// Longest string `id` echoed back; longer ones are refused with `bad_message`.
pub const MAX_ID_LEN: usize = 128;

/// Why a mux message was refused; the `code` of the error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    BadJson,
    /// A JSON object without a string `type`, or with a field of the wrong type or missing.
    BadMessage,
    /// A `type` this server does not know.
    UnknownType,
    /// A topic name that is empty, too long or has bytes outside printable ASCII.
    BadTopic,
    /// `unsubscribe` from a topic the connection is not subscribed to.
    NotSubscribed,
    /// `subscribe` past `max_topics_per_connection`.
    TooManyTopics,
    /// A binary frame that is not a valid binary envelope.
    BadEnvelope,
    /// No valid token: none where the topic needs one, or an `auth`/`refresh` token that
    /// did not verify.
    Unauthorized,
    /// The connection's token has expired (send `refresh`, or reconnect).
    TokenExpired,
    /// The token's rights (or the namespace) do not allow this.
    Forbidden,
    /// A publish larger than the topic's namespace allows.
    TooLarge,
    /// Publishing faster than `--client-publish-rate` allows.
    RateLimited,
}

impl ErrorCode {
    /// Every code, in the order metrics list them.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::BadTopic,
        ErrorCode::NotSubscribed,
        ErrorCode::TooManyTopics,
        ErrorCode::BadEnvelope,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::BadEnvelope => "bad_envelope",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    /// Index in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refused mux message: the reply to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The request's `id`, when it could be read.
    pub id: Option<Value>,
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// One human-readable line.
    pub message: String,
}

impl Refusal {
    fn new(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            id,
            code,
            message: message.into(),
        }
    }
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Subscribe to a topic, from where [`Start`] says.
    Subscribe(String, Start),
    /// Unsubscribe from a topic.
    Unsubscribe(String),
    /// Publish a text payload.
    Publish {
        /// The topic.
        topic: String,
        /// The text payload subscribers receive.
        data: String,
        /// Whether the publisher also receives it (when subscribed).
        echo: bool,
        /// `data` was a JSON object or array: mux subscribers get it as a JSON value.
        json: bool,
    },
    /// Application-level ping.
    Ping,
    /// Present a connection token (when it was not given at the upgrade).
    Auth(String),
    /// Replace the connection's token with a fresh one (same `sub`) before it expires.
    Refresh(String),
}

impl Command {
    /// The `type` name, for acks and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Subscribe(..) => "subscribe",
            Command::Unsubscribe(_) => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::Ping => "ping",
            Command::Auth(_) => "auth",
            Command::Refresh(_) => "refresh",
        }
    }

    /// The topic the command names, if any.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Command::Subscribe(t, _)
            | Command::Unsubscribe(t)
            | Command::Publish { topic: t, .. } => Some(t),
            Command::Ping | Command::Auth(_) | Command::Refresh(_) => None,
        }
    }
}

/// Where a subscription starts, on a topic with history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Live messages from now on (the ack names the epoch and latest offset).
    Now,
    /// `"recover": {"epoch": E, "offset": N}`: every publication after N in epoch E first.
    Recover {
        /// The epoch the client saw.
        epoch: String,
        /// The last offset it saw.
        offset: u64,
    },
    /// `"rewind": N`: the last N publications first.
    Rewind(u64),
}

/// The longest epoch a client may send (the server's are 8 characters).
pub const MAX_EPOCH_LEN: usize = 16;

/// The `recover` / `rewind` fields of a subscribe.
fn start_field(obj: &Map<String, Value>, id: &Option<Value>) -> Result<Start, Refusal> {
    let bad = |m: &str| Refusal::new(id.clone(), ErrorCode::BadMessage, m);
    let recover = obj.get("recover").filter(|v| !v.is_null());
    let rewind = obj.get("rewind").filter(|v| !v.is_null());
    match (recover, rewind) {
        (None, None) => Ok(Start::Now),
        (Some(_), Some(_)) => Err(bad("\"recover\" and \"rewind\" cannot be used together")),
        (None, Some(n)) => match n.as_u64() {
            Some(n) => Ok(Start::Rewind(n)),
            None => Err(bad("\"rewind\" must be a non-negative integer")),
        },
        (Some(r), None) => {
            let shape = "\"recover\" must be {\"epoch\": \"...\", \"offset\": N}";
            let Value::Object(r) = r else {
                return Err(bad(shape));
            };
            let epoch = match r.get("epoch") {
                Some(Value::String(e))
                    if (1..=MAX_EPOCH_LEN).contains(&e.len())
                        && e.bytes().all(|b| b.is_ascii_alphanumeric()) =>
                {
                    e.clone()
                }
                _ => {
                    return Err(bad(
                        "\"recover.epoch\" must be 1 to 16 characters of [0-9A-Za-z]",
                    ));
                }
            };
            let Some(offset) = r.get("offset").and_then(Value::as_u64) else {
                return Err(bad(
                    "\"recover.offset\" must be an integer from 0 to 2^64-1",
                ));
            };
            Ok(Start::Recover { epoch, offset })
        }
    }
}

/// A parsed mux message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's correlation id, echoed in the reply.
    pub id: Option<Value>,
    /// What it asks for.
    pub command: Command,
}

/// Parses one text message of a mux-mode connection.
pub fn parse(text: &[u8]) -> Result<Request, Refusal> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| Refusal::new(None, ErrorCode::BadJson, format!("not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(Refusal::new(
            None,
            ErrorCode::BadJson,
            "expected a JSON object such as {\"type\":\"subscribe\",\"topic\":\"news\"}",
        ));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        // Only integers serde_json holds exactly (i64 or u64): a larger one, or a fraction,
        // would come back as a float, which is not the id the client sent.
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Some(Value::String(s)),
        Some(_) => {
            return Err(Refusal::new(
                None,
                ErrorCode::BadMessage,
                format!(
                    "\"id\" must be an integer from -2^63 to 2^64-1 or a string of at most {MAX_ID_LEN} bytes"
                ),
            ));
        }
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(Refusal::new(
                id,
                ErrorCode::BadMessage,
                "\"type\" must be a string",
            ));
        }
        None => {
            return Err(Refusal::new(
                id,
                ErrorCode::BadMessage,
                "missing \"type\" (subscribe, unsubscribe, publish, ping, auth or refresh)",
            ));
        }
    };
    let command = match kind {
        "subscribe" => Command::Subscribe(topic_field(&obj, &id)?, start_field(&obj, &id)?),
        "unsubscribe" => Command::Unsubscribe(topic_field(&obj, &id)?),
        "publish" => {
            let topic = topic_field(&obj, &id)?;
            let json = matches!(obj.get("data"), Some(Value::Object(_) | Value::Array(_)));
            let data = match obj.get("data") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => {
                    return Err(Refusal::new(
                        id,
                        ErrorCode::BadMessage,
                        "publish needs \"data\"",
                    ));
                }
            };
            let echo = match obj.get("echo") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(Refusal::new(
                        id,
                        ErrorCode::BadMessage,
                        "\"echo\" must be true or false",
                    ));
                }
            };
            Command::Publish {
                topic,
                data,
                echo,
                json,
            }
        }
        "ping" => Command::Ping,
        "auth" => Command::Auth(token_field(&obj, &id)?),
        "refresh" => Command::Refresh(token_field(&obj, &id)?),
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(Refusal::new(
                id,
                ErrorCode::UnknownType,
                format!(
                    "unknown type {shown:?}: expected subscribe, unsubscribe, publish, ping, auth or refresh"
                ),
            ));
        }
    };
    Ok(Request { id, command })
}

/// The `token` of an `auth` or `refresh` message (never echoed in a reply or a log).
fn token_field(obj: &Map<String, Value>, id: &Option<Value>) -> Result<String, Refusal> {
    match obj.get("token") {
        Some(Value::String(t)) => Ok(t.clone()),
        Some(_) => Err(Refusal::new(
            id.clone(),
            ErrorCode::BadMessage,
            "\"token\" must be a string",
        )),
        None => Err(Refusal::new(
            id.clone(),
            ErrorCode::BadMessage,
            "missing \"token\"",
        )),
    }
}

fn topic_field(obj: &Map<String, Value>, id: &Option<Value>) -> Result<String, Refusal> {
    match obj.get("topic") {
        Some(Value::String(t)) => {
            validate_topic(t)
                .map_err(|e| Refusal::new(id.clone(), ErrorCode::BadTopic, e.to_string()))?;
            Ok(t.clone())
        }
        Some(_) => Err(Refusal::new(
            id.clone(),
            ErrorCode::BadMessage,
            "\"topic\" must be a string",
        )),
        None => Err(Refusal::new(
            id.clone(),
            ErrorCode::BadMessage,
            "missing \"topic\"",
        )),
    }
}

fn reply(kind: &str, id: Option<&Value>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), Value::String(kind.into()));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m
}

/// The acknowledgement of a command.
pub fn ack(id: Option<&Value>, command: &Command) -> Vec<u8> {
    if matches!(command, Command::Ping) {
        return Value::Object(reply("pong", id)).to_string().into_bytes();
    }
    let mut m = reply("ack", id);
    m.insert("op".into(), Value::String(command.name().into()));
    if let Some(t) = command.topic() {
        m.insert("topic".into(), Value::String(t.into()));
    }
    Value::Object(m).to_string().into_bytes()
}

/// The ack of a subscribe to a topic with history: the position (`epoch`, `offset`), and
/// for a recovery `recovered` (and `reason`), for a rewind `rewound`.
pub fn join_ack(
    id: Option<&Value>,
    topic: &str,
    answer: &super::join::JoinReply,
    kind: super::join::Kind,
) -> Vec<u8> {
    use super::join::{Kind, Outcome};
    let mut m = reply("ack", id);
    m.insert("op".into(), Value::String("subscribe".into()));
    m.insert("topic".into(), Value::String(topic.into()));
    if let Some(e) = answer.epoch {
        m.insert("epoch".into(), Value::String(e.as_str().into()));
        m.insert("offset".into(), Value::from(answer.top));
    }
    match kind {
        Kind::Recover => {
            m.insert(
                "recovered".into(),
                Value::Bool(answer.outcome == Outcome::Recovered),
            );
            if let Some(r) = answer.outcome.reason() {
                m.insert("reason".into(), Value::String(r.into()));
            }
        }
        Kind::Rewind => {
            m.insert("rewound".into(), Value::from(answer.publications.len()));
        }
        Kind::Position => {}
    }
    Value::Object(m).to_string().into_bytes()
}

/// `{"type":"refresh_required","in":SECONDS}`: the connection's token expires in that many
/// seconds.
pub fn refresh_required(seconds: u64) -> Vec<u8> {
    format!("{{\"type\":\"refresh_required\",\"in\":{seconds}}}").into_bytes()
}

/// The error reply for a refusal.
pub fn error(refusal: &Refusal) -> Vec<u8> {
    let mut m = reply("error", refusal.id.as_ref());
    m.insert("code".into(), Value::String(refusal.code.as_str().into()));
    m.insert("message".into(), Value::String(refusal.message.clone()));
    Value::Object(m).to_string().into_bytes()
}

/// A refusal of a command whose parsing succeeded (state-dependent errors).
pub fn refuse(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal::new(id, code, message)
}

/// Appends the text envelope `{"type":"message","topic":...,"offset":N,"data":...}` to
/// `out` (no `offset` when it is 0: the topic has no history).
pub fn envelope_text(topic: &str, offset: u64, payload: &str, out: &mut Vec<u8>) {
    envelope_head(topic, offset, out);
    push_json_string(payload, out);
    out.push(b'}');
}

/// The part of a message envelope before its `data` value.
fn envelope_head(topic: &str, offset: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"message\",\"topic\":");
    push_json_string(topic, out);
    if offset != 0 {
        out.extend_from_slice(b",\"offset\":");
        push_decimal(out, offset);
    }
    out.extend_from_slice(b",\"data\":");
}

/// Appends the envelope of a message published as a JSON value,
/// `{"type":"message","topic":...,"offset":N,"data":<the JSON itself>}`: the payload
/// (checked to be a JSON object or array when it was published) is put in as it is, so a
/// client parses it once. A client tells the two apart by `data`'s type: a text message's
/// is always a string, a JSON message's an object or an array.
pub fn envelope_json(topic: &str, offset: u64, payload: &[u8], out: &mut Vec<u8>) {
    envelope_head(topic, offset, out);
    out.extend_from_slice(payload);
    out.push(b'}');
}

/// Whether `payload` may be carried as a JSON value: a JSON object or array (strings,
/// numbers and literals stay text messages: their envelope keeps `data` a string).
pub fn is_json_value(payload: &[u8]) -> bool {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    matches!(first, Some(b'{' | b'['))
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// Appends `n` in decimal, without allocating (the envelope path; HTTP batch results).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Bytes the text envelope adds around a payload with nothing to escape.
pub fn envelope_text_overhead(topic: &str) -> usize {
    r#"{"type":"message","topic":"","data":""}"#.len() + topic.len()
}

fn push_json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes exactly what JSON requires; writing to a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// Appends the binary envelope `[topic length][topic][payload]` to `out`.
pub fn envelope_binary(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    // Topics are validated to 1..=255 bytes.
    out.push(u8::try_from(topic.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&topic.as_bytes()[..topic.len().min(255)]);
    out.extend_from_slice(payload);
}

/// Appends the binary envelope version 2 (`/ws?envelope=2`),
/// `[topic length][topic][offset: u64 big-endian][payload]`, to `out`.
pub fn envelope_binary_v2(topic: &str, offset: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.push(u8::try_from(topic.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&topic.as_bytes()[..topic.len().min(255)]);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits a binary envelope sent by a client into topic and payload.
pub fn parse_binary_envelope(frame: &[u8]) -> Result<(&str, &[u8]), Refusal> {
    let bad = |m: &str| Refusal::new(None, ErrorCode::BadEnvelope, m);
    let (&len, rest) = frame
        .split_first()
        .ok_or_else(|| bad("empty binary frame: expected [topic length][topic][payload]"))?;
    let len = usize::from(len);
    if len == 0 || rest.len() < len {
        return Err(bad(
            "binary frame: the first byte must be the topic length (1-255), followed by the topic and the payload",
        ));
    }
    let (topic, payload) = rest.split_at(len);
    let topic = std::str::from_utf8(topic)
        .map_err(|_| bad("binary frame: the topic is not printable ASCII"))?;
    validate_topic(topic).map_err(|e| Refusal::new(None, ErrorCode::BadTopic, e.to_string()))?;
    Ok((topic, payload))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn json(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn commands() {
        let r = parse(br#"{"type":"subscribe","topic":"a","id":7}"#).unwrap();
        assert_eq!(r.command, Command::Subscribe("a".into(), Start::Now));
        assert_eq!(
            json(&ack(r.id.as_ref(), &r.command)),
            json(br#"{"type":"ack","id":7,"op":"subscribe","topic":"a"}"#)
        );
        let r = parse(br#"{"type":"publish","topic":"a","data":{"x":1},"id":"q"}"#).unwrap();
        assert_eq!(
            r.command,
            Command::Publish {
                topic: "a".into(),
                data: r#"{"x":1}"#.into(),
                echo: false,
                json: true
            }
        );
        let r = parse(br#"{"type":"publish","topic":"a","data":"{\"x\":1}"}"#).unwrap();
        assert!(
            matches!(r.command, Command::Publish { json: false, .. }),
            "a string stays a string, whatever it holds"
        );
        for (payload, json) in [
            (&b" {\"a\": [1]}"[..], true),
            (b"[]", true),
            (b"\"s\"", false),
            (b"7", false),
            (b"{broken", false),
            (b"{} trailing", false),
        ] {
            assert_eq!(is_json_value(payload), json, "{payload:?}");
        }
        let r = parse(br#"{"type":"ping"}"#).unwrap();
        assert_eq!(json(&ack(None, &r.command)), json(br#"{"type":"pong"}"#));
    }

    #[test]
    fn errors() {
        let code = |b: &[u8]| parse(b).unwrap_err().code;
        assert_eq!(code(b"nope"), ErrorCode::BadJson);
        assert_eq!(code(b"[1]"), ErrorCode::BadJson);
        assert_eq!(code(br#"{"topic":"a"}"#), ErrorCode::BadMessage);
        assert_eq!(code(br#"{"type":"subscribe"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(br#"{"type":"subscribe","topic":3}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(br#"{"type":"publish","topic":"a"}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(code(br#"{"type":"jump"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(br#"{"type":"subscribe","topic":""}"#),
            ErrorCode::BadTopic
        );
        let e = parse(br#"{"type":"subscribe","topic":"a b","id":9}"#).unwrap_err();
        assert_eq!(
            json(&error(&e)),
            json(
                br#"{"type":"error","id":9,"code":"bad_topic","message":"topic name must be printable ASCII without spaces"}"#
            )
        );
        assert_eq!(code(br#"{"type":"ping","id":1.5}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(br#"{"type":"ping","id":18446744073709551616}"#),
            ErrorCode::BadMessage
        );
        let r = parse(br#"{"type":"ping","id":18446744073709551615}"#).unwrap();
        assert!(
            String::from_utf8(ack(r.id.as_ref(), &r.command))
                .unwrap()
                .contains("18446744073709551615")
        );
        let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(MAX_ID_LEN + 1));
        assert_eq!(code(long.as_bytes()), ErrorCode::BadMessage);
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 99, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }

    #[test]
    fn envelopes() {
        let mut out = Vec::new();
        envelope_text("a\"b", 0, "hi \"there\"\n", &mut out);
        assert_eq!(
            json(&out),
            json(br#"{"type":"message","topic":"a\"b","data":"hi \"there\"\n"}"#)
        );
        let mut out = Vec::new();
        envelope_text("t", 0, "x", &mut out);
        assert_eq!(out.len(), envelope_text_overhead("t") + 1);
        for offset in [1, 9, 10, 4711, u64::MAX] {
            let mut out = Vec::new();
            envelope_text("t", offset, "x", &mut out);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["offset"].as_u64(), Some(offset), "{offset}");
            assert_eq!(v["data"], "x");
        }
        let mut v2 = Vec::new();
        envelope_binary_v2("news", 0x0102, &[9], &mut v2);
        assert_eq!(v2, b"\x04news\x00\x00\x00\x00\x00\x00\x01\x02\x09");
        let mut bin = Vec::new();
        envelope_binary("news", &[0, 1, 2], &mut bin);
        assert_eq!(bin, b"\x04news\x00\x01\x02");
        assert_eq!(
            parse_binary_envelope(&bin).unwrap(),
            ("news", &[0u8, 1, 2][..])
        );
        assert_eq!(
            parse_binary_envelope(b"").unwrap_err().code,
            ErrorCode::BadEnvelope
        );
        assert_eq!(
            parse_binary_envelope(b"\x09ab").unwrap_err().code,
            ErrorCode::BadEnvelope
        );
        assert_eq!(
            parse_binary_envelope(b"\x02a b").unwrap_err().code,
            ErrorCode::BadTopic
        );
    }
}
