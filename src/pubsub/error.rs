//! Why the pub/sub layer refused a subscribe, an unsubscribe or a publish, and what each
//! refusal is on the wire: one function ([`Error::wire`]) maps every variant to the close
//! code, the HTTP status and the mux error code, so that simple mode, mux mode and HTTP
//! publish answer the same refusal the same way.

use super::mux::ErrorCode;
use super::topic::TopicError;
use crate::proto::close_code;

pub use crate::auth::{
    CLOSE_DISCONNECTED, CLOSE_FORBIDDEN, CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_INVALID,
};

/// A refusal of the pub/sub layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The topic name is not valid.
    BadTopic(TopicError),
    /// The connection already holds `max` topics (`--max-topics-per-connection`).
    TooManyTopics {
        /// The limit.
        max: usize,
    },
    /// An unsubscribe from a topic the connection is not subscribed to.
    NotSubscribed,
    /// No token, and the topic's namespace grants nothing to connections without one.
    Unauthorized,
    /// The token's rights do not cover this topic for this operation.
    Forbidden {
        /// `"subscribe"` or `"publish"`.
        op: &'static str,
    },
    /// The topic's namespace does not let clients publish (`client_publish = false`).
    ClientPublishOff,
    /// Larger than the topic's namespace allows (`max_message_size`).
    TooLarge {
        /// The namespace's limit in bytes.
        max: usize,
    },
    /// Past the connection's publish rate (`--client-publish-rate`).
    RateLimited,
}

/// How a refusal is reported to each kind of client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// Close code, where a refusal ends a WebSocket.
    pub close_code: u16,
    /// HTTP status, where it answers a request (an upgrade or `POST /publish`).
    pub http_status: u16,
    /// Mux-mode error code, where it answers a command.
    pub mux_code: ErrorCode,
}

impl Error {
    /// The one mapping of every refusal to the wire.
    pub fn wire(&self) -> Wire {
        let (close_code, http_status, mux_code) = match self {
            Error::BadTopic(_) => (close_code::POLICY, 400, ErrorCode::BadTopic),
            Error::TooManyTopics { .. } => (close_code::POLICY, 400, ErrorCode::TooManyTopics),
            Error::NotSubscribed => (close_code::POLICY, 404, ErrorCode::NotSubscribed),
            Error::Unauthorized => (CLOSE_TOKEN_INVALID, 401, ErrorCode::Unauthorized),
            Error::Forbidden { .. } | Error::ClientPublishOff => {
                (CLOSE_FORBIDDEN, 403, ErrorCode::Forbidden)
            }
            Error::TooLarge { .. } => (close_code::TOO_BIG, 413, ErrorCode::TooLarge),
            Error::RateLimited => (close_code::POLICY, 429, ErrorCode::RateLimited),
        };
        Wire {
            close_code,
            http_status,
            mux_code,
        }
    }
}

impl From<TopicError> for Error {
    fn from(e: TopicError) -> Self {
        Error::BadTopic(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadTopic(e) => e.fmt(f),
            Error::TooManyTopics { max } => write!(
                f,
                "this connection is subscribed to {max} topics, the most allowed"
            ),
            Error::NotSubscribed => f.write_str("this connection is not subscribed to that topic"),
            Error::Unauthorized => {
                f.write_str("a token is needed for this topic (none was presented)")
            }
            Error::Forbidden { op } => write!(f, "the token does not allow to {op} this topic"),
            Error::ClientPublishOff => f.write_str(
                "clients may not publish in this topic's namespace (only the backend API)",
            ),
            Error::TooLarge { max } => write!(
                f,
                "the message is larger than this topic's namespace allows ({max} bytes)"
            ),
            Error::RateLimited => f.write_str("publishing faster than this connection may"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_one_mapping() {
        let w = Error::BadTopic(TopicError::Empty).wire();
        assert_eq!((w.http_status, w.mux_code), (400, ErrorCode::BadTopic));
        let w = Error::TooManyTopics { max: 2 }.wire();
        assert_eq!((w.http_status, w.mux_code), (400, ErrorCode::TooManyTopics));
        assert_eq!(
            Error::NotSubscribed.wire().mux_code,
            ErrorCode::NotSubscribed
        );
        assert_eq!(
            Error::TooManyTopics { max: 2 }.to_string(),
            "this connection is subscribed to 2 topics, the most allowed"
        );
    }
}
