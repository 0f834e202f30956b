//! The backend API's questions about the whole server (`GET /api/topics`,
//! `GET /api/topics/{topic}`, `POST /api/disconnect`): the shard that received the request
//! answers for itself, asks every other shard over the bus ([`Query`]), and answers the
//! request (a deferred HTTP answer) once every shard has replied, or with 503 when one has
//! not within [`API_TIMEOUT`].
//!
//! Users are known by their token's `sub`: each shard keeps an index of its connections by
//! non-empty user ([`UserIndex`]), maintained when a token is accepted and when a
//! connection is released, so a disconnect by user costs its connections, not a scan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Answer, BusMsg, Pushed, Query};
use crate::io::Token;
use crate::pubsub::{CLOSE_DISCONNECTED, Format};

use super::conn::Phase;
use super::{CLOSE_GRACE, ShardState, ticks_ceil};

/// How long a shard waits for the others' answers.
pub const API_TIMEOUT: Duration = Duration::from_secs(2);
/// Most users listed for one topic (the answer says when it was cut).
pub const MAX_USERS_LISTED: usize = 10_000;

/// This shard's connections by user (`sub`), for disconnects.
#[derive(Debug, Default)]
pub struct UserIndex {
    by_user: HashMap<Arc<str>, Vec<Token>>,
}

impl UserIndex {
    /// `token` is now `user`'s (an empty user is not indexed).
    pub fn add(&mut self, user: &Arc<str>, token: Token) {
        if user.is_empty() {
            return;
        }
        let list = self.by_user.entry(Arc::clone(user)).or_default();
        if !list.contains(&token) {
            list.push(token);
        }
    }

    /// `token` is gone.
    pub fn remove(&mut self, user: &str, token: Token) {
        if let Some(list) = self.by_user.get_mut(user) {
            list.retain(|&t| t != token);
            if list.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// The connections of `user`.
    pub fn of(&self, user: &str) -> &[Token] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }
}

/// A request waiting for the other shards.
#[derive(Debug)]
struct Pending {
    /// The HTTP connection to answer.
    token: Token,
    /// Answers still to come.
    waiting: usize,
    /// What is known so far (this shard's answer, merged with those that came).
    acc: Answer,
    /// For a topic query: its name (the reply names it).
    topic: Option<Arc<str>>,
    /// Tick after which the request is answered 503.
    deadline: u32,
}

/// The API requests of one shard waiting for answers.
#[derive(Debug, Default)]
pub struct ApiState {
    next_id: u32,
    pending: HashMap<u32, Pending>,
}

impl ShardState {
    /// Answers `query` for the whole server on HTTP connection `token`: now when this is
    /// the only shard, else once the others have answered (the request is deferred).
    pub(super) fn api_query(&mut self, token: Token, query: Query) {
        let topic = match &query {
            Query::Topic(t) => Some(Arc::clone(t)),
            _ => None,
        };
        let acc = self.api_answer(&query);
        let others = self.shared.bus.shards().saturating_sub(1);
        if others == 0 {
            // Answered within the request, like any other route (nothing was deferred).
            self.api_respond(token, acc, topic.as_deref(), false);
            return;
        }
        let id = self.api.next_id;
        self.api.next_id = self.api.next_id.wrapping_add(1);
        let from = u16::try_from(self.id).unwrap_or(u16::MAX);
        for to in 0..self.shared.bus.shards() {
            if to == self.id {
                continue;
            }
            let msg = BusMsg::Query {
                from,
                id,
                query: query.clone(),
            };
            match self.shared.bus.push(to, msg) {
                Pushed::Wake => self.outbox.wake[to] = true,
                Pushed::Queued => {}
                // That shard will not answer: the request times out with 503.
                Pushed::Full => {}
            }
        }
        self.http_defer(token);
        self.api.pending.insert(
            id,
            Pending {
                token,
                waiting: others,
                acc,
                topic,
                deadline: self.tick + ticks_ceil(API_TIMEOUT),
            },
        );
    }

    /// Handles the queries and answers [`crate::pubsub::PubSub::drain_bus`] set aside.
    pub(super) fn api_messages(&mut self) {
        if self.pubsub.api.is_empty() {
            return;
        }
        let msgs = std::mem::take(&mut self.pubsub.api);
        for m in msgs {
            match m {
                BusMsg::Query { from, id, query } => {
                    let answer = self.api_answer(&query);
                    let to = usize::from(from);
                    if self.shared.bus.push(to, BusMsg::Answer { id, answer }) == Pushed::Wake
                        && let Some(w) = self.outbox.wake.get_mut(to)
                    {
                        *w = true;
                    }
                }
                BusMsg::Answer { id, answer } => self.api_merge(id, answer),
                _ => {}
            }
        }
    }

    /// Requests whose answers did not all come in time: 503. Once per tick.
    pub(super) fn api_timeouts(&mut self) {
        if self.api.pending.is_empty() {
            return;
        }
        let now = self.tick;
        let late: Vec<u32> = self
            .api
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(p) = self.api.pending.remove(&id) {
                tracing::warn!(
                    shard = self.id,
                    waiting = p.waiting,
                    "an API request timed out waiting for other shards"
                );
                self.http_answer_deferred(
                    p.token,
                    503,
                    "text/plain; charset=utf-8",
                    b"some shards did not answer in time\n",
                );
            }
        }
    }

    fn api_merge(&mut self, id: u32, answer: Answer) {
        let Some(p) = self.api.pending.get_mut(&id) else {
            return; // answered already (timed out)
        };
        merge(&mut p.acc, answer);
        p.waiting -= 1;
        if p.waiting > 0 {
            return;
        }
        if let Some(p) = self.api.pending.remove(&id) {
            self.api_respond(p.token, p.acc, p.topic.as_deref(), true);
        }
    }

    /// What this shard knows (or does) for `query`.
    fn api_answer(&mut self, query: &Query) -> Answer {
        match query {
            Query::Topics => Answer::Topics(
                self.pubsub
                    .topics()
                    .iter()
                    .filter(|t| t.local() > 0)
                    .map(|t| {
                        (
                            Arc::clone(&t.name),
                            u32::try_from(t.local()).unwrap_or(u32::MAX),
                        )
                    })
                    .collect(),
            ),
            Query::Topic(name) => {
                let topics = self.pubsub.topics();
                let Some(t) = topics.lookup(name).and_then(|id| topics.get(id)) else {
                    return Answer::Topic {
                        subscribers: 0,
                        users: Vec::new(),
                    };
                };
                let mut users: Vec<Arc<str>> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for format in Format::ALL {
                    for &slot in t.subscribers(format) {
                        let Some(s) = self.conns.slot(slot).and_then(|c| c.session.as_ref()) else {
                            continue;
                        };
                        if !s.user.is_empty()
                            && users.len() < MAX_USERS_LISTED
                            && seen.insert(Arc::clone(&s.user))
                        {
                            users.push(Arc::clone(&s.user));
                        }
                    }
                }
                Answer::Topic {
                    subscribers: u32::try_from(t.local()).unwrap_or(u32::MAX),
                    users,
                }
            }
            Query::Disconnect(user) => {
                let tokens = self.users.of(user).to_vec();
                let mut closed = 0;
                for token in tokens {
                    if self.disconnect(token) {
                        closed += 1;
                    }
                }
                Answer::Disconnected(closed)
            }
        }
    }

    /// Closes a WebSocket connection with 4004 (the backend API asked).
    fn disconnect(&mut self, token: Token) -> bool {
        let tick = self.tick;
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        if c.close_after_flush || c.releasing {
            return false;
        }
        if !matches!(c.phase, Phase::Ws { .. }) {
            return false;
        }
        c.discard_queued();
        c.close_ws(
            CLOSE_DISCONNECTED,
            "disconnected by the server's API",
            &mut self.scratch,
            &mut self.outbox.dirty,
            tick + ticks_ceil(CLOSE_GRACE),
        );
        self.metrics.access.disconnects.inc();
        true
    }

    /// Answers the request on `token`: a deferred answer (`deferred`: the other shards'
    /// replies came in a later turn), or at once within the request.
    fn api_respond(&mut self, token: Token, acc: Answer, topic: Option<&str>, deferred: bool) {
        let body = match acc {
            Answer::Topics(mut list) => {
                list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let topics: Vec<serde_json::Value> = list
                    .iter()
                    .map(|(t, n)| serde_json::json!({"topic": &**t, "subscribers": n}))
                    .collect();
                serde_json::json!({ "topics": topics })
            }
            Answer::Topic {
                subscribers,
                mut users,
            } => {
                users.sort_unstable();
                users.dedup();
                let truncated = users.len() >= MAX_USERS_LISTED;
                users.truncate(MAX_USERS_LISTED);
                let users: Vec<&str> = users.iter().map(|u| &**u).collect();
                serde_json::json!({
                    "topic": topic.unwrap_or(""),
                    "subscribers": subscribers,
                    "users": users,
                    "users_truncated": truncated,
                })
            }
            Answer::Disconnected(n) => serde_json::json!({ "disconnected": n }),
        };
        let mut text = body.to_string();
        text.push('\n');
        if deferred {
            self.http_answer_deferred(token, 200, "application/json", text.as_bytes());
        } else {
            self.respond_with(token, 200, "application/json", text.as_bytes());
        }
    }
}

/// Adds one shard's answer to what is known.
fn merge(acc: &mut Answer, other: Answer) {
    match (acc, other) {
        (Answer::Topics(a), Answer::Topics(b)) => {
            // Topic names are shared per shard, not across: sum by name.
            let mut by: HashMap<Arc<str>, u32> = a.drain(..).collect();
            for (t, n) in b {
                *by.entry(t).or_default() += n;
            }
            a.extend(by);
        }
        (
            Answer::Topic { subscribers, users },
            Answer::Topic {
                subscribers: s,
                users: u,
            },
        ) => {
            *subscribers += s;
            users.extend(u);
        }
        (Answer::Disconnected(a), Answer::Disconnected(b)) => *a += b,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_add_up_across_shards() {
        let mut a = Answer::Topics(vec![("x".into(), 2), ("y".into(), 1)]);
        merge(
            &mut a,
            Answer::Topics(vec![("x".into(), 3), ("z".into(), 4)]),
        );
        let Answer::Topics(mut list) = a else {
            panic!()
        };
        list.sort();
        assert_eq!(
            list,
            vec![("x".into(), 5), ("y".into(), 1), ("z".into(), 4)]
        );
        let mut d = Answer::Disconnected(1);
        merge(&mut d, Answer::Disconnected(2));
        assert!(matches!(d, Answer::Disconnected(3)));
    }

    #[test]
    fn user_index_forgets_released_connections() {
        let mut idx = UserIndex::default();
        let alice: Arc<str> = "alice".into();
        let t1 = Token {
            slot: 1,
            generation: 0,
        };
        let t2 = Token {
            slot: 2,
            generation: 0,
        };
        idx.add(&alice, t1);
        idx.add(&alice, t1);
        idx.add(&alice, t2);
        idx.add(&"".into(), t2);
        assert_eq!(idx.of("alice"), &[t1, t2]);
        idx.remove("alice", t1);
        assert_eq!(idx.of("alice"), &[t2]);
        idx.remove("alice", t2);
        assert!(idx.of("alice").is_empty() && idx.by_user.is_empty());
    }
}
