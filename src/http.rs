//! The small HTTP surface on the WebSocket port: which request goes where.
//!
//! Pure decisions, no I/O: the shard parses the request head with the protocol core and
//! asks [`route`] what to do with it. Plain HTTP answers close the connection after the
//! response (no keep-alive: these endpoints are for health checks and tools, and a closed
//! connection cannot be left idle by a misbehaving client).

use crate::pubsub::validate_topic;

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
    },
    /// `GET /echo`: every message comes back to its sender.
    Echo,
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
    /// `/health`: 200 while serving.
    Health,
    /// `/metrics`: Prometheus text format.
    Metrics,
}

/// Decides what a request for `path` with `method` gets.
pub fn route(method: &str, path: &str, query: Option<&str>) -> Routed {
    let is_get = method == "GET";
    match path {
        "/health" if is_get || method == "HEAD" => Routed::Health,
        "/metrics" if is_get => Routed::Metrics,
        "/echo" if is_get => Routed::Upgrade(Endpoint::Echo),
        "/health" | "/echo" | "/metrics" => Routed::Respond {
            status: 405,
            body: "method not allowed\n",
        },
        _ => match path.strip_prefix("/ws/") {
            Some(topic) if is_get => match validate_topic(topic) {
                Ok(()) => Routed::Upgrade(Endpoint::Topic {
                    name: topic.to_owned(),
                    echo: wants_echo(query),
                }),
                Err(e) => Routed::Respond {
                    status: 400,
                    body: topic_error_body(e),
                },
            },
            Some(_) => Routed::Respond {
                status: 405,
                body: "method not allowed\n",
            },
            None => Routed::Respond {
                status: 404,
                body: "not found\n",
            },
        },
    }
}

fn topic_error_body(e: crate::pubsub::TopicError) -> &'static str {
    use crate::pubsub::TopicError::*;
    match e {
        Empty => "bad topic: empty\n",
        TooLong => "bad topic: longer than 255 bytes\n",
        BadByte => "bad topic: use printable ASCII without spaces\n",
    }
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
        assert_eq!(route("GET", "/health", None), Routed::Health);
        assert_eq!(route("GET", "/echo", None), Routed::Upgrade(Endpoint::Echo));
        assert_eq!(
            route("GET", "/ws/prices", Some("echo=1")),
            Routed::Upgrade(Endpoint::Topic {
                name: "prices".into(),
                echo: true
            })
        );
        assert_eq!(
            route("GET", "/ws/prices", Some("x=2")),
            Routed::Upgrade(Endpoint::Topic {
                name: "prices".into(),
                echo: false
            })
        );
        assert!(matches!(
            route("GET", "/ws/", None),
            Routed::Respond { status: 400, .. }
        ));
        assert!(matches!(
            route("GET", "/nope", None),
            Routed::Respond { status: 404, .. }
        ));
        assert!(matches!(
            route("POST", "/ws/a", None),
            Routed::Respond { status: 405, .. }
        ));
        assert!(matches!(
            route("DELETE", "/health", None),
            Routed::Respond { status: 405, .. }
        ));
    }
}
