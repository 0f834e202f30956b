//! The small HTTP surface on the WebSocket port: which request goes where.
//!
//! Pure decisions, no I/O: the shard parses the request head with the protocol core and
//! asks [`route`] what to do with it. Plain HTTP answers keep the connection open for the
//! next request (HTTP/1.1 keep-alive, pipelining) unless the client or an error closes it;
//! the shard side (`shard::http`) owns that. Beside the routes: [`batch`], the parser of
//! `POST /publish` bodies, and [`credential`], what a backend presents to authenticate.
//!
//! | request | routed to |
//! |---|---|
//! | `GET /ws/{topic}` | simple mode upgrade |
//! | `GET /ws`, `GET /ws?subscribe=a,b` | mux mode upgrade (JSON commands, see `crate::pubsub::mux`) |
//! | `GET /echo` | echo upgrade |
//! | `POST /publish/{topic}` | HTTP publish (body = payload) |
//! | `POST /publish` | batch publish (body = JSON array or NDJSON of items, see [`batch`]) |
//! | `GET /health`, `HEAD /health` | liveness: 200 while the process serves, draining included |
//! | `GET /health/broker` | the broker's state: 200 up (or no broker), 503 lost |
//! | `GET /ready`, `HEAD /ready` | readiness: 200, or 503 while draining (and, with `--broker-required`, while the broker is lost) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /` | the demo page |

pub mod batch;
pub mod content_type;
pub mod credential;

pub use content_type::{BodyType, body_type};
pub use credential::{Credential, CredentialError, presented_credential};

use crate::pubsub::validate_topic;

/// The demo page served at `GET /`: self-contained (no external resources), it opens a
/// mux-mode connection to the server it was loaded from.
pub const DEMO_HTML: &str = include_str!("../demo.html");

/// The icon served at `GET /favicon.ico` (1x1, 70 bytes).
pub const FAVICON: &[u8] = include_bytes!("../favicon.ico");

/// The client module served at `GET /ringcast.js` (see the README, "Browser client").
pub const CLIENT_JS: &str = include_str!("../ringcast.js");

/// Where a WebSocket upgrade leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /ws/{topic}`: simple mode, subscribed to one topic; messages sent are
    /// published to it. `echo` (`?echo=1`): the sender also receives its own messages.
    Topic {
        /// The topic name, validated.
        name: String,
        /// Whether the sender receives its own messages.
        echo: bool,
        /// `?rewind=N`: the last N publications of the topic first.
        rewind: Option<u64>,
    },
    /// `GET /echo`: every message comes back to its sender.
    Echo,
    /// `GET /ws`: mux mode, JSON commands; `?subscribe=a,b` subscribes at once.
    Mux {
        /// Topics to subscribe to before the 101 is sent (validated, duplicates removed).
        subscribe: Vec<String>,
        /// `?envelope=2`: binary envelopes carry the offset (version 2).
        envelope_v2: bool,
    },
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Upgrade to WebSocket at this endpoint (after the RFC 6455 checks).
    Upgrade(Endpoint),
    /// Answer with this status and a one-line text body, then close.
    Respond {
        /// HTTP status code.
        status: u16,
        /// Body, a short human-readable line.
        body: &'static str,
    },
    /// `/health`: liveness, 200 while the process serves (also while draining).
    Health,
    /// `/health/broker`: whether the broker is connected (several nodes).
    BrokerHealth,
    /// `/ready`: readiness, 200 while serving, 503 while draining.
    Ready,
    /// `/metrics`: Prometheus text format.
    Metrics,
    /// `POST /publish/{topic}`: the body is published to the (validated) topic.
    Publish(String),
    /// `POST /publish`: the body is a batch of items, each naming its topic.
    PublishBatch,
    /// `GET /`: the demo page.
    Demo,
    /// `GET /favicon.ico`: a tiny icon, so that a browser opening the demo page does not
    /// count as a failed request.
    Favicon,
    /// `GET /ringcast.js`: the browser (and Node) client module.
    ClientJs,
    /// `GET /history/{topic}?since=N&limit=N`: a topic's kept publications.
    History {
        /// The topic, validated.
        topic: String,
        /// Publications with offsets above this one.
        since: u64,
        /// At most this many (`None`: the server's maximum).
        limit: Option<u64>,
    },
    /// The backend API: `GET /api/topics`, `GET /api/topics/{topic}`,
    /// `POST /api/disconnect`.
    Api(ApiRoute),
    /// 405: the path exists, the method does not; `allow` is the `Allow` header's value
    /// (RFC 9110 §15.5.6 requires it).
    NotAllowed {
        /// The methods the path takes.
        allow: &'static str,
    },
    /// Test builds only: an answer that is deferred (the shape of a handler that needs
    /// replies from other shards), answered by the test through
    /// `ShardState::http_answer_deferred`.
    #[cfg(test)]
    TestDeferred,
}

/// A backend API request (answered for the whole server, see `shard::api`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    /// `GET /api/topics`: every topic with subscribers, and how many.
    Topics,
    /// `GET /api/topics/{topic}`: one topic's subscribers and users.
    Topic(String),
    /// `POST /api/disconnect` with `{"user":"..."}`: close every connection of that user.
    Disconnect,
}

/// Decides what a request for `path` with `method` gets. `max_topics`: a `?subscribe=` list
/// with more distinct topics is refused (400) as soon as the parser passes the limit.
pub fn route(method: &str, path: &str, query: Option<&str>, max_topics: usize) -> Routed {
    let is_get = method == "GET";
    match path {
        "/health" if is_get || method == "HEAD" => Routed::Health,
        "/health/broker" if is_get || method == "HEAD" => Routed::BrokerHealth,
        "/ready" if is_get || method == "HEAD" => Routed::Ready,
        "/metrics" if is_get => Routed::Metrics,
        "/echo" if is_get => Routed::Upgrade(Endpoint::Echo),
        "/" | "/index.html" if is_get => Routed::Demo,
        "/favicon.ico" if is_get => Routed::Favicon,
        "/ringcast.js" if is_get => Routed::ClientJs,
        "/ws" if is_get => match subscribe_param(query, max_topics) {
            Ok(subscribe) => match query_param(query, "envelope") {
                None | Some("1") => Routed::Upgrade(Endpoint::Mux {
                    subscribe,
                    envelope_v2: false,
                }),
                Some("2") => Routed::Upgrade(Endpoint::Mux {
                    subscribe,
                    envelope_v2: true,
                }),
                Some(_) => Routed::Respond {
                    status: 400,
                    body: "bad envelope: ?envelope= takes 1 or 2\n",
                },
            },
            Err(SubscribeError::Topic(e)) => bad_topic(e),
            Err(SubscribeError::TooMany) => Routed::Respond {
                status: crate::pubsub::Error::TooManyTopics { max: max_topics }
                    .wire()
                    .http_status,
                body: "?subscribe= lists more topics than --max-topics-per-connection allows\n",
            },
        },
        "/publish" if method == "POST" => Routed::PublishBatch,
        "/api/topics" if is_get => Routed::Api(ApiRoute::Topics),
        "/api/disconnect" if method == "POST" => Routed::Api(ApiRoute::Disconnect),
        "/api/topics" => Routed::NotAllowed { allow: "GET" },
        "/api/disconnect" => Routed::NotAllowed { allow: "POST" },
        #[cfg(test)]
        "/__test/deferred" => Routed::TestDeferred,
        "/health" | "/health/broker" | "/ready" => Routed::NotAllowed { allow: "GET, HEAD" },
        "/echo" | "/metrics" | "/" | "/index.html" | "/ws" | "/favicon.ico" | "/ringcast.js" => {
            Routed::NotAllowed { allow: "GET" }
        }
        "/publish" => Routed::NotAllowed { allow: "POST" },
        _ if path.starts_with("/api/topics/") => {
            if !is_get {
                return Routed::NotAllowed { allow: "GET" };
            }
            let topic = &path["/api/topics/".len()..];
            match percent_decode(topic).ok_or(crate::pubsub::TopicError::BadByte) {
                Ok(t) => match validate_topic(&t) {
                    Ok(()) => Routed::Api(ApiRoute::Topic(t)),
                    Err(e) => bad_topic(e),
                },
                Err(e) => bad_topic(e),
            }
        }
        _ if path.starts_with("/history/") => {
            if !is_get {
                return Routed::NotAllowed { allow: "GET" };
            }
            let topic = &path["/history/".len()..];
            if let Err(e) = validate_topic(topic) {
                return bad_topic(e);
            }
            let since = match query_param(query, "since").map(str::parse::<u64>) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return Routed::Respond {
                        status: 400,
                        body: "bad since: expected an integer from 0 to 2^64-1\n",
                    };
                }
            };
            let limit = match query_param(query, "limit").map(str::parse::<u64>) {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => {
                    return Routed::Respond {
                        status: 400,
                        body: "bad limit: expected an integer from 0 to --max-recovery-publications\n",
                    };
                }
            };
            Routed::History {
                topic: topic.to_owned(),
                since,
                limit,
            }
        }
        _ if path.starts_with("/publish/") => {
            let topic = &path["/publish/".len()..];
            if method != "POST" {
                return Routed::NotAllowed { allow: "POST" };
            }
            match validate_topic(topic) {
                Ok(()) => Routed::Publish(topic.to_owned()),
                Err(e) => bad_topic(e),
            }
        }
        _ => match path.strip_prefix("/ws/") {
            Some(topic) if is_get => match validate_topic(topic) {
                Ok(()) => match query_param(query, "rewind").map(str::parse::<u64>) {
                    Some(Err(_)) => Routed::Respond {
                        status: 400,
                        body: "bad rewind: expected an integer from 0 to --max-recovery-publications\n",
                    },
                    rewind => Routed::Upgrade(Endpoint::Topic {
                        name: topic.to_owned(),
                        echo: wants_echo(query),
                        rewind: rewind.and_then(Result::ok),
                    }),
                },
                Err(e) => bad_topic(e),
            },
            Some(_) => Routed::NotAllowed { allow: "GET" },
            None => Routed::Respond {
                status: 404,
                body: "not found\n",
            },
        },
    }
}

/// A refused topic name, with the status the pub/sub layer maps it to.
fn bad_topic(e: crate::pubsub::TopicError) -> Routed {
    Routed::Respond {
        status: crate::pubsub::Error::BadTopic(e).wire().http_status,
        body: topic_error_body(e),
    }
}

fn topic_error_body(e: crate::pubsub::TopicError) -> &'static str {
    use crate::pubsub::TopicError::*;
    match e {
        Empty => "bad topic: empty\n",
        TooLong => "bad topic: longer than 255 bytes\n",
        BadByte => "bad topic: use printable ASCII without spaces\n",
        UnknownNamespace => "bad topic: the part before ':' is not a configured namespace\n",
    }
}

/// Why a `?subscribe=` list is refused.
enum SubscribeError {
    Topic(crate::pubsub::TopicError),
    /// More distinct topics than `--max-topics-per-connection`.
    TooMany,
}

/// The topics of `?subscribe=a,b` (several `subscribe` parameters add up), percent-decoded,
/// validated, without duplicates, at most `max` of them. A topic containing a comma can only
/// be subscribed to with a `subscribe` control message.
///
/// Linear in the query's length: duplicates are found with a hash set, and the list is
/// refused as soon as it passes `max`, before the rest is decoded (a hostile 1 MiB head
/// costs one pass, not a compare of every topic with every other).
fn subscribe_param(query: Option<&str>, max: usize) -> Result<Vec<String>, SubscribeError> {
    let mut out: Vec<String> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for kv in query.unwrap_or("").split('&') {
        let Some(list) = kv.strip_prefix("subscribe=") else {
            continue;
        };
        for raw in list.split(',') {
            if raw.is_empty() {
                continue;
            }
            let topic = percent_decode(raw)
                .ok_or(SubscribeError::Topic(crate::pubsub::TopicError::BadByte))?;
            validate_topic(&topic).map_err(SubscribeError::Topic)?;
            if seen.contains(&topic) {
                continue;
            }
            if out.len() >= max {
                return Err(SubscribeError::TooMany);
            }
            seen.insert(topic.clone());
            out.push(topic);
        }
    }
    Ok(out)
}

/// Decodes `%XX` escapes (browsers escape some printable characters in query strings).
/// `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of the first `key=value` of a query string (not percent-decoded: the
/// parameters read this way are numbers).
fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn wants_echo(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "echo=1" | "echo=true" | "echo"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/health", None, 256), Routed::Health);
        assert_eq!(route("HEAD", "/ready", None, 256), Routed::Ready);
        assert_eq!(
            route("GET", "/echo", None, 256),
            Routed::Upgrade(Endpoint::Echo)
        );
        assert_eq!(
            route("GET", "/ws/prices", Some("echo=1"), 256),
            Routed::Upgrade(Endpoint::Topic {
                name: "prices".into(),
                echo: true,
                rewind: None
            })
        );
        assert_eq!(
            route("GET", "/ws/prices", Some("x=2"), 256),
            Routed::Upgrade(Endpoint::Topic {
                name: "prices".into(),
                echo: false,
                rewind: None
            })
        );
        assert_eq!(
            route("GET", "/ws/prices", Some("rewind=1"), 256),
            Routed::Upgrade(Endpoint::Topic {
                name: "prices".into(),
                echo: false,
                rewind: Some(1)
            })
        );
        for bad in ["rewind=-1", "rewind=x", "rewind=", "rewind=1.5"] {
            assert!(
                matches!(
                    route("GET", "/ws/prices", Some(bad), 256),
                    Routed::Respond { status: 400, .. }
                ),
                "{bad}"
            );
        }
        assert_eq!(
            route("GET", "/history/prices", Some("since=4&limit=10"), 256),
            Routed::History {
                topic: "prices".into(),
                since: 4,
                limit: Some(10)
            }
        );
        assert_eq!(
            route("GET", "/history/prices", None, 256),
            Routed::History {
                topic: "prices".into(),
                since: 0,
                limit: None
            }
        );
        for bad in ["since=-1", "limit=x", "since=99999999999999999999"] {
            assert!(
                matches!(
                    route("GET", "/history/p", Some(bad), 256),
                    Routed::Respond { status: 400, .. }
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            route("POST", "/history/p", None, 256),
            Routed::NotAllowed { .. }
        ));
        assert!(matches!(
            route("GET", "/ws", Some("envelope=3"), 256),
            Routed::Respond { status: 400, .. }
        ));
        assert_eq!(
            route("GET", "/ws", Some("envelope=2"), 256),
            Routed::Upgrade(Endpoint::Mux {
                subscribe: vec![],
                envelope_v2: true
            })
        );
        assert_eq!(route("GET", "/ringcast.js", None, 256), Routed::ClientJs);
        assert!(matches!(
            route("GET", "/ws/", None, 256),
            Routed::Respond { status: 400, .. }
        ));
        assert!(matches!(
            route("GET", "/nope", None, 256),
            Routed::Respond { status: 404, .. }
        ));
        assert!(matches!(
            route("POST", "/ws/a", None, 256),
            Routed::NotAllowed { .. }
        ));
        assert!(matches!(
            route("DELETE", "/health", None, 256),
            Routed::NotAllowed { .. }
        ));
    }

    #[test]
    fn surface_routes() {
        assert_eq!(route("GET", "/", None, 256), Routed::Demo);
        assert_eq!(route("GET", "/favicon.ico", None, 256), Routed::Favicon);
        assert_eq!(
            route("GET", "/ws", None, 256),
            Routed::Upgrade(Endpoint::Mux {
                subscribe: vec![],
                envelope_v2: false
            })
        );
        assert_eq!(
            route("GET", "/ws", Some("subscribe=a,b%2Fc,a&subscribe=d"), 256),
            Routed::Upgrade(Endpoint::Mux {
                subscribe: vec!["a".into(), "b/c".into(), "d".into()],
                envelope_v2: false
            })
        );
        assert!(matches!(
            route("GET", "/ws", Some("subscribe=a%20b"), 256),
            Routed::Respond { status: 400, .. }
        ));
        assert_eq!(
            route("POST", "/publish/news", None, 256),
            Routed::Publish("news".into())
        );
        assert!(matches!(
            route("GET", "/publish/news", None, 256),
            Routed::NotAllowed { .. }
        ));
        assert_eq!(route("POST", "/publish", None, 256), Routed::PublishBatch);
        assert_eq!(
            route("GET", "/publish", None, 256),
            Routed::NotAllowed { allow: "POST" }
        );
        assert!(matches!(
            route("POST", "/publish/", None, 256),
            Routed::Respond { status: 400, .. }
        ));
        assert!(matches!(
            route("POST", "/ws", None, 256),
            Routed::NotAllowed { .. }
        ));
        assert!(matches!(
            route("GET", "/ws", Some("subscribe=a,b,a,c"), 2),
            Routed::Respond { status: 400, .. }
        ));
        assert_eq!(
            route("GET", "/ws", Some("subscribe=a,b,a,b"), 2),
            Routed::Upgrade(Endpoint::Mux {
                subscribe: vec!["a".into(), "b".into()],
                envelope_v2: false
            })
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
