//! The access rules, applied once per command at the pub/sub layer's entry points: who may
//! subscribe to or publish on a topic, given the caller's token rights and the topic's
//! namespace options.
//!
//! | caller | subscribe | publish |
//! |---|---|---|
//! | no JWT key configured (any caller) | yes | if the namespace has `client_publish` (clients), always (backend) |
//! | [`Caller::Backend`] (API key, or no key configured) | yes | yes, also where `client_publish = false` |
//! | [`Caller::Client`] with a token | its `sub` rights, or what the namespace's `anonymous` grants | `client_publish`, then its `pub` rights or `anonymous = "publish"` |
//! | [`Caller::Client`] without a token | the namespace's `anonymous` | `client_publish` and `anonymous = "publish"` |
//!
//! Nothing here runs per delivered message: a simple-mode connection is checked at its
//! upgrade (its `may_publish` is kept in its route), a mux-mode connection per command.

use super::Error;
use super::topic::TopicOptions;

/// What a token lets its holder do, by topic name (implemented by the verifier's rights).
pub trait Grants {
    /// Whether the holder may subscribe to `topic`.
    fn may_subscribe(&self, topic: &str) -> bool;
    /// Whether the holder may publish on `topic`.
    fn may_publish(&self, topic: &str) -> bool;
}

/// Who asks for a subscribe or a publish.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    /// A WebSocket client or an HTTP request with a JWT: its token's rights, or `None`
    /// without a token.
    Client(Option<&'a dyn Grants>),
    /// The backend API: an API key was presented (or no key is configured).
    Backend,
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Client(None) => f.write_str("Client(anonymous)"),
            Caller::Client(Some(_)) => f.write_str("Client(token)"),
            Caller::Backend => f.write_str("Backend"),
        }
    }
}

/// The server-wide half of the rules: whether connection tokens are in use at all.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// A JWT key is configured: rights apply. Without one everyone may do everything
    /// (except publish where `client_publish = false`).
    pub tokens: bool,
}

impl Policy {
    /// May `caller` subscribe to `topic` (whose options are `opts`)?
    pub fn subscribe(
        &self,
        caller: Caller<'_>,
        topic: &str,
        opts: &TopicOptions,
    ) -> Result<(), Error> {
        let Caller::Client(grants) = caller else {
            return Ok(());
        };
        if !self.tokens || opts.ns.anonymous.may_subscribe() {
            return Ok(());
        }
        match grants {
            None => Err(Error::Unauthorized),
            Some(g) if g.may_subscribe(topic) => Ok(()),
            Some(_) => Err(Error::Forbidden { op: "subscribe" }),
        }
    }

    /// May `caller` publish `len` bytes on `topic`?
    pub fn publish(
        &self,
        caller: Caller<'_>,
        topic: &str,
        opts: &TopicOptions,
        len: usize,
    ) -> Result<(), Error> {
        let Caller::Client(grants) = caller else {
            return Ok(());
        };
        if !opts.ns.client_publish {
            return Err(Error::ClientPublishOff);
        }
        if len > opts.ns.max_message_size {
            return Err(Error::TooLarge {
                max: opts.ns.max_message_size,
            });
        }
        if !self.tokens || opts.ns.anonymous.may_publish() {
            return Ok(());
        }
        match grants {
            None => Err(Error::Unauthorized),
            Some(g) if g.may_publish(topic) => Ok(()),
            Some(_) => Err(Error::Forbidden { op: "publish" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::namespace::{Anonymous, NamespaceOptions};

    struct Prefix(&'static str);
    impl Grants for Prefix {
        fn may_subscribe(&self, topic: &str) -> bool {
            topic.starts_with(self.0)
        }
        fn may_publish(&self, topic: &str) -> bool {
            topic.starts_with(self.0) && topic.ends_with("!")
        }
    }

    fn opts(anonymous: Anonymous, client_publish: bool) -> TopicOptions {
        TopicOptions {
            namespace: 0,
            ns: NamespaceOptions {
                anonymous,
                client_publish,
                max_message_size: 10,
                history_size: 0,
                history_ttl: std::time::Duration::ZERO,
            },
        }
    }

    #[test]
    fn without_tokens_everyone_may_except_where_clients_may_not_publish() {
        let p = Policy { tokens: false };
        let o = opts(Anonymous::None, true);
        assert_eq!(p.subscribe(Caller::Client(None), "a", &o), Ok(()));
        assert_eq!(p.publish(Caller::Client(None), "a", &o, 10), Ok(()));
        assert_eq!(
            p.publish(Caller::Client(None), "a", &o, 11),
            Err(Error::TooLarge { max: 10 })
        );
        let closed = opts(Anonymous::None, false);
        assert_eq!(
            p.publish(Caller::Client(None), "a", &closed, 1),
            Err(Error::ClientPublishOff)
        );
        assert_eq!(p.publish(Caller::Backend, "a", &closed, 100), Ok(()));
    }

    #[test]
    fn with_tokens_rights_and_anonymous_grants_decide() {
        let p = Policy { tokens: true };
        let none = opts(Anonymous::None, true);
        let g = Prefix("user.");
        let t = Caller::Client(Some(&g));
        assert_eq!(
            p.subscribe(Caller::Client(None), "a", &none),
            Err(Error::Unauthorized)
        );
        assert_eq!(p.subscribe(t, "user.1", &none), Ok(()));
        assert_eq!(
            p.subscribe(t, "other", &none),
            Err(Error::Forbidden { op: "subscribe" })
        );
        assert_eq!(p.publish(t, "user.1!", &none, 1), Ok(()));
        assert_eq!(
            p.publish(t, "user.1", &none, 1),
            Err(Error::Forbidden { op: "publish" })
        );
        let sub = opts(Anonymous::Subscribe, true);
        assert_eq!(p.subscribe(Caller::Client(None), "a", &sub), Ok(()));
        assert_eq!(
            p.publish(Caller::Client(None), "a", &sub, 1),
            Err(Error::Unauthorized)
        );
        assert_eq!(
            p.subscribe(t, "other", &sub),
            Ok(()),
            "anonymous grants apply to everyone"
        );
        let publ = opts(Anonymous::Publish, true);
        assert_eq!(p.publish(Caller::Client(None), "a", &publ, 1), Ok(()));
        assert_eq!(p.subscribe(Caller::Backend, "x", &none), Ok(()));
        assert_eq!(p.publish(Caller::Backend, "x", &none, 1000), Ok(()));
    }
}
