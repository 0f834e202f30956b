//! Questions one shard asks every other (the backend API's `/api/...`, which answers for the
//! whole server), and their answers. They travel on the same inboxes as batches, are rare
//! (one per API request), and are bounded like everything else on the bus by weight.

use std::sync::Arc;

/// What the asking shard wants to know or have done.
#[derive(Debug, Clone)]
pub enum Query {
    /// Every topic with local subscribers, and how many.
    Topics,
    /// One topic's local subscribers, and the users (token `sub`) among them.
    Topic(Arc<str>),
    /// Close every connection of this user (close 4004).
    Disconnect(Arc<str>),
}

/// One shard's answer to a [`Query`].
#[derive(Debug, Clone)]
pub enum Answer {
    /// `(topic, local subscribers)` for every topic with some.
    Topics(Vec<(Arc<str>, u32)>),
    /// A topic's local subscribers and distinct users (bounded by the asker's cap).
    Topic {
        /// Subscriptions on this shard.
        subscribers: u32,
        /// Distinct non-empty `sub`s among them.
        users: Vec<Arc<str>>,
    },
    /// Connections closed.
    Disconnected(u32),
}

impl Query {
    /// What it weighs against the inbox bound.
    pub fn weight(&self) -> usize {
        64 + match self {
            Query::Topics => 0,
            Query::Topic(s) | Query::Disconnect(s) => s.len(),
        }
    }
}

impl Answer {
    /// What it weighs against the inbox bound (names count; an answer listing 100,000
    /// topics weighs what it holds).
    pub fn weight(&self) -> usize {
        64 + match self {
            Answer::Topics(list) => list.iter().map(|(t, _)| 16 + t.len()).sum(),
            Answer::Topic { users, .. } => users.iter().map(|u| 16 + u.len()).sum(),
            Answer::Disconnected(_) => 0,
        }
    }
}
