//! Joins of topics the broker numbers (Redis, several nodes, topics with history): the
//! home shard answers them from the broker's history, not its own, so that a client can
//! recover on any node.
//!
//! The seam of [`super::join`] must hold across the broker round trip: the answer's `top`
//! separates what the replay covers from what live delivery brings. So while a question
//! is out, the home holds back the topic's batches from the broker (they would reach the
//! joining subscriber's shard before the answer, behind a closed gate, and be missed),
//! and fans them out after the answer; the subscriber skips those the replay covered
//! (offsets `<= top`). Other subscribers of the topic on this node wait one broker round
//! trip. The bridge subscribes before it reads (the question is queued after the
//! subscribe's interest change), so nothing published in between is missed. A question
//! not answered within [`FETCH_TIMEOUT`] is answered `unavailable` and the held batches
//! are released; so is one the bridge cannot send (broker down: then the home answers
//! from its own history, under its own epoch).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::fanout::Subscribers;
use super::history::{Lost, Stored};
use super::join::{JoinReply, Outcome, Want};
use super::{Batch, PubSub};
use crate::cluster::link::{Fetched, Span};

/// How long the home waits for the broker's history before answering `unavailable`
/// (under the asker's own [`super::join::JOIN_TIMEOUT`]).
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);
/// Most bytes of broker batches held back for one topic while a question is out; past it
/// the questions are answered `unavailable` and the batches released.
const MAX_HELD_BYTES: usize = 8 << 20;

/// Who asked.
#[derive(Debug, Clone, Copy)]
pub(super) enum Asker {
    /// Another shard's join `join`.
    Shard { from: u16, join: u32 },
    /// This shard's own join `join`.
    Local { join: u32 },
}

#[derive(Debug)]
struct Question {
    asker: Asker,
    topic: Arc<str>,
    want: Want,
    deadline: u32,
}

#[derive(Debug, Default)]
struct Held {
    questions: u32,
    batches: Vec<Arc<Batch>>,
    bytes: usize,
}

/// The home's questions to the broker, and what it holds back meanwhile.
#[derive(Debug, Default)]
pub(super) struct Fetches {
    next: u64,
    out: HashMap<u64, Question>,
    held: HashMap<Arc<str>, Held>,
    /// Late answers are logged at most once per interval (joins are a client's to make).
    late_log: crate::throttle::LogThrottle,
}

impl PubSub {
    /// Whether the broker answers joins of `name` (Redis, topic with history, broker up).
    pub(super) fn broker_answers(&self, name: &str) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.sequences_history() && l.is_up())
            && self.options_of(name).is_ok_and(|o| o.has_history())
    }

    /// Asks the broker for what `want` needs of `topic`; `false` when the question could
    /// not be sent (the caller answers from this shard's history).
    pub(super) fn fetch(&mut self, asker: Asker, topic: Arc<str>, want: Want) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        let max = self.limits.max_recovery;
        let span = match &want {
            Want::Position => Span::Top,
            Want::Recover { offset, .. } => Span::After {
                since: *offset,
                limit: max + 1,
            },
            Want::Rewind(n) => Span::Last((*n as usize).min(max)),
            Want::Page { since, limit } => Span::After {
                since: *since,
                limit: *limit as usize,
            },
        };
        let Ok(opts) = self.options_of(&topic) else {
            return false;
        };
        let keep = crate::cluster::link::Keep {
            size: opts.ns.history_size,
            ttl: opts.ns.history_ttl,
        };
        let cookie = self.fetches.next;
        if !link.fetch(self.shard, cookie, Arc::clone(&topic), span, keep) {
            return false;
        }
        self.fetches.next += 1;
        let ticks = u64::from(self.limits.join_timeout_ticks) * FETCH_TIMEOUT.as_millis() as u64
            / super::join::JOIN_TIMEOUT.as_millis() as u64;
        let ticks = u32::try_from(ticks).unwrap_or(u32::MAX);
        self.fetches.out.insert(
            cookie,
            Question {
                asker,
                topic: Arc::clone(&topic),
                want,
                deadline: self.tick.saturating_add(ticks.max(1)),
            },
        );
        self.fetches.held.entry(topic).or_default().questions += 1;
        true
    }

    /// Whether any question is out (then [`PubSub::hold`] must see the broker's batches).
    pub(super) fn holding(&self) -> bool {
        !self.fetches.held.is_empty()
    }

    /// Holds back a batch from the broker while a question about its topic is out;
    /// returns it when there is none.
    pub(super) fn hold(&mut self, name: &Arc<str>, batch: Arc<Batch>) -> Option<Arc<Batch>> {
        if self.fetches.held.is_empty() || !batch.origin.is_broker() {
            return Some(batch);
        }
        let Some(h) = self.fetches.held.get_mut(name) else {
            return Some(batch);
        };
        h.bytes += batch.frames.len();
        h.batches.push(batch);
        if h.bytes > MAX_HELD_BYTES {
            let late: Vec<u64> = self
                .fetches
                .out
                .iter()
                .filter(|(_, q)| q.topic == *name)
                .map(|(&c, _)| c)
                .collect();
            for c in late {
                if let Some(q) = self.fetches.out.get_mut(&c) {
                    q.deadline = 0;
                }
            }
        }
        None
    }

    /// The broker's answer to question `cookie`.
    pub(super) fn on_fetched<S: Subscribers>(
        &mut self,
        cookie: u64,
        read: Option<Fetched>,
        subs: &mut S,
        wake: &mut [bool],
    ) {
        let Some(q) = self.fetches.out.remove(&cookie) else {
            return; // answered already (timed out)
        };
        let reply = match read {
            Some(r) => self.reply_from(&q.want, r),
            None => JoinReply::none(Outcome::Unavailable),
        };
        self.answer_asker(q.asker, reply, subs, wake);
        self.release(&q.topic, subs, wake);
    }

    /// Once per tick: questions the broker did not answer in time.
    pub(super) fn fetch_timeouts<S: Subscribers>(&mut self, subs: &mut S, wake: &mut [bool]) {
        if self.fetches.out.is_empty() {
            return;
        }
        let tick = self.tick;
        let late: Vec<u64> = self
            .fetches
            .out
            .iter()
            .filter(|(_, q)| tick >= q.deadline)
            .map(|(&c, _)| c)
            .collect();
        for c in late {
            if let Some(suppressed) = self.fetches.late_log.allow(tick) {
                tracing::warn!(
                    shard = self.shard,
                    suppressed,
                    "the broker did not answer a history read in time: the join is answered unavailable"
                );
            }
            self.on_fetched(c, None, subs, wake);
        }
    }

    fn answer_asker<S: Subscribers>(
        &mut self,
        asker: Asker,
        reply: JoinReply,
        subs: &mut S,
        wake: &mut [bool],
    ) {
        match asker {
            Asker::Local { join } => self.on_joined(join, reply, subs),
            Asker::Shard { from, join } => self.send_joined(from, join, reply, wake),
        }
    }

    /// Fans out what was held back for `topic` once no question about it is out.
    fn release<S: Subscribers>(&mut self, topic: &Arc<str>, subs: &mut S, wake: &mut [bool]) {
        let done = match self.fetches.held.get_mut(topic) {
            Some(h) => {
                h.questions = h.questions.saturating_sub(1);
                h.questions == 0
            }
            None => false,
        };
        if !done {
            return;
        }
        let Some(h) = self.fetches.held.remove(topic) else {
            return;
        };
        for b in h.batches {
            self.on_named(Arc::clone(topic), b, subs, wake);
        }
    }

    /// The join answer for `want` from the broker's history.
    fn reply_from(&mut self, want: &Want, r: Fetched) -> JoinReply {
        let Some(epoch) = r.epoch else {
            return JoinReply::none(Outcome::Unavailable);
        };
        let top = r.top;
        let first_of = |p: &[Stored]| p.first().map_or(top + 1, |p| p.offset);
        let not = |reason| JoinReply {
            epoch: Some(epoch),
            top,
            first: top + 1,
            outcome: Outcome::NotRecovered(reason),
            publications: Vec::new(),
        };
        let reply = match want {
            Want::Position => JoinReply {
                epoch: Some(epoch),
                top,
                first: top + 1,
                outcome: Outcome::Position,
                publications: Vec::new(),
            },
            Want::Recover { epoch: e, offset } => {
                let missed = top.saturating_sub(*offset);
                if **e != *epoch.as_str() {
                    not(Lost::EpochChanged)
                } else if *offset > top {
                    not(Lost::FromTheFuture)
                } else if missed > self.limits.max_recovery as u64 {
                    not(Lost::TooMany)
                } else {
                    let pubs: Vec<Stored> = r
                        .publications
                        .into_iter()
                        .filter(|p| p.offset > *offset && p.offset <= top)
                        .collect();
                    let contiguous = pubs.len() as u64 == missed
                        && pubs.first().is_none_or(|p| p.offset == offset + 1);
                    if contiguous {
                        JoinReply {
                            epoch: Some(epoch),
                            top,
                            first: first_of(&pubs),
                            outcome: Outcome::Recovered,
                            publications: pubs,
                        }
                    } else {
                        not(Lost::TooOld)
                    }
                }
            }
            Want::Rewind(_) | Want::Page { .. } => JoinReply {
                epoch: Some(epoch),
                top,
                first: first_of(&r.publications),
                outcome: if matches!(want, Want::Rewind(_)) {
                    Outcome::Rewound
                } else {
                    Outcome::Position
                },
                publications: r.publications,
            },
        };
        match reply.outcome {
            Outcome::Recovered => self.metrics.history.recovered.inc(),
            Outcome::NotRecovered(_) => self.metrics.history.not_recovered.inc(),
            _ => {}
        }
        reply
    }
}
