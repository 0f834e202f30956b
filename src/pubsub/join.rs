//! Joining a topic with history: the subscribe ack's position, recovery, rewind, and the
//! history pages of `GET /history`, answered by the topic's home shard.
//!
//! # The seam
//!
//! A subscriber that joins a topic with history must get, in order: its ack (epoch and
//! latest offset), the publications it asked for (a recovery's missed ones, or a rewind's
//! last N), then every live publication after those, with no gap and no duplicate. Only
//! the home shard knows the offsets, so:
//!
//! 1. The subscriber's shard puts the connection in the topic's subscriber list at once
//!    (announcing its interest to the other shards, as any subscribe does), behind a
//!    [`Gate`] that holds back everything (`until = u64::MAX`), and asks the home
//!    ([`crate::bus::BusMsg::Join`], after the announcement: inboxes are FIFO per sender).
//! 2. The home answers from its history ([`super::history::Histories`]) with the epoch,
//!    the top offset and the publications ([`JoinReply`]). Every batch it numbers after
//!    that answer has offsets above `top`, and reaches the subscriber's shard after the
//!    answer (FIFO again); batches before it have offsets `<= top`.
//! 3. On the answer the subscriber's shard queues the ack and the replay, and lowers the
//!    gate to `top`: the subscriber skips what its replay covered and gets the rest. The
//!    gate goes away at the first batch past it, so only joining subscribers pay for it.
//!
//! On the home shard itself the answer is computed when the shard next drains its inbox
//! or routes its batches (whichever comes first), never with a batch fanned out between
//! the question and the answer, so the same reasoning holds. A question that cannot be
//! asked (inbox full, the announcement still waiting) or not answered within
//! [`JOIN_TIMEOUT`] is answered `unavailable`: the subscriber gets live delivery and
//! `recovered: false`, never a silent gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::fanout::{Queue as _, Refused, Subscribers};
use super::history::{Epoch, Lost, Recovery, Stored};
use super::topic::{Format, TopicId};
use crate::bus::{BusMsg, Pushed};
use crate::proto::frame::{MAX_HEADER_LEN, OpCode, encode_frame};

/// How long a subscriber's shard waits for the home shard's answer.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What a joining subscriber (or a history request) wants from the home shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Only where the topic stands (a plain subscribe to a topic with history).
    Position,
    /// Every publication after `offset` in `epoch`.
    Recover {
        /// The epoch the client saw.
        epoch: Box<str>,
        /// The last offset it saw.
        offset: u64,
    },
    /// The last `n` publications kept.
    Rewind(u32),
    /// `GET /history`: the publications after `since`, at most `limit`; creates nothing.
    Page {
        /// Offsets above this one.
        since: u64,
        /// At most this many.
        limit: u32,
    },
}

impl Want {
    /// What kind of ack the answer gets.
    pub(super) fn kind(&self) -> Kind {
        match self {
            Want::Position | Want::Page { .. } => Kind::Position,
            Want::Recover { .. } => Kind::Recover,
            Want::Rewind(_) => Kind::Rewind,
        }
    }
}

/// How a join came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The position only (or a page).
    Position,
    /// Every missed publication follows.
    Recovered,
    /// Recovery impossible: why.
    NotRecovered(Lost),
    /// The last publications follow (as many as [`JoinReply::publications`]).
    Rewound,
    /// The topic's namespace keeps no history.
    NoHistory,
    /// The home shard could not be asked, or did not answer in time.
    Unavailable,
}

impl Outcome {
    /// The `reason` of a failed recovery, as the client reads it.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Outcome::NotRecovered(Lost::EpochChanged) => Some("epoch_changed"),
            Outcome::NotRecovered(Lost::TooOld) => Some("too_old"),
            Outcome::NotRecovered(Lost::TooMany) => Some("too_many"),
            Outcome::NotRecovered(Lost::FromTheFuture) => Some("from_the_future"),
            Outcome::NoHistory => Some("no_history"),
            Outcome::Unavailable => Some("unavailable"),
            Outcome::Position | Outcome::Recovered | Outcome::Rewound => None,
        }
    }
}

/// The home shard's answer to a [`Want`].
#[derive(Debug, Clone)]
pub struct JoinReply {
    /// The topic's epoch (`None`: no history state, or unavailable).
    pub epoch: Option<Epoch>,
    /// The latest offset.
    pub top: u64,
    /// The oldest offset kept (pages), `top + 1` when none.
    pub first: u64,
    /// How it came out.
    pub outcome: Outcome,
    /// The publications to replay, in offset order, with their plain frames.
    pub publications: Vec<Stored>,
}

impl JoinReply {
    /// An answer without history state.
    pub fn none(outcome: Outcome) -> Self {
        JoinReply {
            epoch: None,
            top: 0,
            first: 1,
            outcome,
            publications: Vec::new(),
        }
    }
}

/// What the ack of a joining mux subscriber says (besides the position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A plain subscribe.
    Position,
    /// `recover`: `recovered` and maybe `reason`.
    Recover,
    /// `rewind`: `rewound`.
    Rewind,
}

/// A join waiting for the home shard.
#[derive(Debug)]
pub(super) enum Pending {
    /// A subscriber behind a gate.
    Sub {
        /// Its slot.
        slot: u32,
        /// The topic (this shard's id).
        topic: TopicId,
        /// Its format (mux formats get an ack).
        format: Format,
        /// The command's `id`, echoed in the ack.
        reply_id: Option<Value>,
        /// What the ack reports.
        kind: Kind,
        /// Tick after which it is answered `unavailable`.
        deadline: u32,
    },
    /// A `GET /history` request of the shard's (its cookie is the shard's).
    Page {
        /// The shard's number for the request.
        cookie: u64,
        /// Tick after which it is answered `unavailable`.
        deadline: u32,
    },
}

impl Pending {
    pub(super) fn deadline(&self) -> u32 {
        match self {
            Pending::Sub { deadline, .. } | Pending::Page { deadline, .. } => *deadline,
        }
    }
}

/// The joins of one shard waiting for answers.
#[derive(Debug, Default)]
pub(super) struct Joins {
    next: u32,
    pub(super) pending: HashMap<u32, Pending>,
    /// Joins of topics this shard is the home of, answered at the next drain or fan-out.
    pub(super) local: Vec<(u32, Arc<str>, Want)>,
    /// Answers decided on this shard (the home could not be asked), applied likewise.
    pub(super) local_replies: Vec<(u32, JoinReply)>,
    /// Home shards asked this turn that must be woken at its end.
    pub(super) wake: Vec<u16>,
}

impl Joins {
    /// A fresh number for a join.
    pub(super) fn next_id(&mut self) -> u32 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        id
    }

    /// The joins past their deadline at `tick`.
    pub(super) fn late(&self, tick: u32) -> Vec<u32> {
        self.pending
            .iter()
            .filter(|(_, p)| tick >= p.deadline())
            .map(|(&id, _)| id)
            .collect()
    }
}

impl super::PubSub {
    /// Subscribes connection `slot` to `name` like [`super::PubSub::subscribe`]; on a topic
    /// with history, and for a mux subscriber or a rewind, the connection joins behind a
    /// gate and the home shard is asked for `want` (the ack, when `format` is a mux
    /// format, and the replay are queued when it answers: [`Joined::Joining`]). Without
    /// history it is subscribed at once ([`Joined::Now`]) and the caller acks.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe_join(
        &mut self,
        slot: u32,
        format: Format,
        name: &str,
        held: usize,
        caller: super::Caller<'_>,
        want: Want,
        reply_id: Option<Value>,
    ) -> Result<Joined, super::Error> {
        let id = self.subscribe(slot, format, name, held, caller)?;
        let Some(t) = self.topics.get_mut(id) else {
            return Ok(Joined::Now(id));
        };
        if !t.options.has_history() || (!format.is_mux() && want == Want::Position) {
            return Ok(Joined::Now(id));
        }
        let join = self.joins.next_id();
        t.gates.push(super::topic::Gate {
            slot,
            format,
            until: u64::MAX,
            join,
        });
        let home = t.home;
        let name = Arc::clone(&t.name);
        let kind = want.kind();
        self.joins.pending.insert(
            join,
            Pending::Sub {
                slot,
                topic: id,
                format,
                reply_id,
                kind,
                deadline: self.tick.saturating_add(self.limits.join_timeout_ticks),
            },
        );
        self.ask(join, home, name, want);
        Ok(Joined::Joining(id))
    }

    /// `GET /history/{topic}`: asks the topic's home for a page; the answer comes back in
    /// [`super::PubSub::pages`] with `cookie` (the shard's number for the request).
    pub fn history_page(&mut self, name: &str, since: u64, limit: u32, cookie: u64) {
        let home = super::home_shard(name, self.bus.shards());
        let join = self.joins.next_id();
        self.joins.pending.insert(
            join,
            Pending::Page {
                cookie,
                deadline: self.tick.saturating_add(self.limits.join_timeout_ticks),
            },
        );
        self.ask(join, home, Arc::from(name), Want::Page { since, limit });
    }

    /// Sends join `join`'s question to the home shard (or keeps it for this shard's next
    /// drain or fan-out when this is the home).
    fn ask(&mut self, join: u32, home: u16, topic: Arc<str>, want: Want) {
        if home == self.shard {
            self.joins.local.push((join, topic, want));
            return;
        }
        // An interest announcement still waiting for that inbox would arrive after the
        // question: the answer's seam would not hold.
        let waiting = self
            .backlog
            .get(usize::from(home))
            .is_some_and(|b| !b.is_empty());
        let msg = BusMsg::Join {
            from: self.shard,
            id: join,
            topic,
            want,
        };
        if waiting {
            self.joins
                .local_replies
                .push((join, JoinReply::none(Outcome::Unavailable)));
            return;
        }
        match self.bus.push(usize::from(home), msg) {
            // Woken at the end of this turn (the caller has no wake list at hand).
            Pushed::Wake => self.joins.wake.push(home),
            Pushed::Queued => {}
            Pushed::Full => self
                .joins
                .local_replies
                .push((join, JoinReply::none(Outcome::Unavailable))),
        }
    }

    /// On the home shard: answers another shard's question.
    pub(super) fn on_join(
        &mut self,
        from: u16,
        join: u32,
        topic: Arc<str>,
        want: Want,
        wake: &mut [bool],
    ) {
        if self.broker_answers(&topic)
            && self.fetch(
                super::fetch::Asker::Shard { from, join },
                Arc::clone(&topic),
                want.clone(),
            )
        {
            return;
        }
        let reply = self.answer(&topic, &want);
        self.send_joined(from, join, reply, wake);
    }

    /// Sends the answer to join `join` to the asking shard `from`.
    pub(super) fn send_joined(
        &mut self,
        from: u16,
        join: u32,
        reply: JoinReply,
        wake: &mut [bool],
    ) {
        match self
            .bus
            .push(usize::from(from), BusMsg::Joined { id: join, reply })
        {
            Pushed::Wake => {
                if let Some(w) = wake.get_mut(usize::from(from)) {
                    *w = true;
                }
            }
            Pushed::Queued => {}
            // The asker answers `unavailable` at its deadline.
            Pushed::Full => self.metrics.bus_dropped.inc(),
        }
    }

    /// What the home shard knows for `want` on `name`.
    fn answer(&mut self, name: &str, want: &Want) -> JoinReply {
        let Ok(opts) = self.options_of(name) else {
            return JoinReply::none(Outcome::Unavailable);
        };
        if !opts.has_history() {
            return JoinReply::none(Outcome::NoHistory);
        }
        let hopts = super::home::history_options(&opts);
        let now = std::time::Instant::now();
        let max = self.limits.max_recovery;
        if let Want::Page { since, limit } = *want {
            // A page creates nothing (a stranger's GET must not start an epoch).
            let page = self
                .topics
                .lookup(name)
                .and_then(|id| self.histories.page(id, since, limit as usize, now));
            return match page {
                Some(p) => JoinReply {
                    epoch: Some(p.epoch),
                    top: p.top,
                    first: p.first,
                    outcome: Outcome::Position,
                    publications: p.publications,
                },
                None => JoinReply::none(Outcome::Position),
            };
        }
        let id = self.intern(name, opts);
        if let Some(t) = self.topics.get_mut(id) {
            t.history = true;
            // Other subscribers track the current epoch: a TTL passed meanwhile must not
            // renew it under them.
            if t.local() > 0 || !t.remote.is_empty() {
                self.histories.keep_if_expired(id, now);
            }
        }
        let reply = match want {
            Want::Position | Want::Page { .. } => {
                let p = self.histories.open(id, hopts, now);
                JoinReply {
                    epoch: Some(p.epoch),
                    top: p.top,
                    first: p.top + 1,
                    outcome: Outcome::Position,
                    publications: Vec::new(),
                }
            }
            Want::Recover { epoch, offset } => {
                match self.histories.since(id, hopts, epoch, *offset, max, now) {
                    Recovery::Recovered {
                        epoch,
                        top,
                        publications,
                    } => JoinReply {
                        epoch: Some(epoch),
                        top,
                        first: publications.first().map_or(top + 1, |p| p.offset),
                        outcome: Outcome::Recovered,
                        publications,
                    },
                    Recovery::NotRecovered { reason, epoch, top } => JoinReply {
                        epoch: Some(epoch),
                        top,
                        first: top + 1,
                        outcome: Outcome::NotRecovered(reason),
                        publications: Vec::new(),
                    },
                }
            }
            Want::Rewind(n) => {
                let p = self.histories.last(id, hopts, *n as usize, max, now);
                JoinReply {
                    epoch: Some(p.epoch),
                    top: p.top,
                    first: p.first,
                    outcome: Outcome::Rewound,
                    publications: p.publications,
                }
            }
        };
        match reply.outcome {
            Outcome::Recovered => self.metrics.history.recovered.inc(),
            Outcome::NotRecovered(_) => self.metrics.history.not_recovered.inc(),
            _ => {}
        }
        reply
    }

    /// The questions of this shard's own topics, and answers decided here; run where no
    /// batch can be fanned out between a question and its answer.
    pub(super) fn flush_local_joins<S: Subscribers>(&mut self, subs: &mut S) {
        if self.joins.local.is_empty() && self.joins.local_replies.is_empty() {
            return;
        }
        let local = std::mem::take(&mut self.joins.local);
        for (join, topic, want) in local {
            if self.broker_answers(&topic)
                && self.fetch(
                    super::fetch::Asker::Local { join },
                    Arc::clone(&topic),
                    want.clone(),
                )
            {
                continue;
            }
            let reply = self.answer(&topic, &want);
            self.on_joined(join, reply, subs);
        }
        let replies = std::mem::take(&mut self.joins.local_replies);
        for (join, reply) in replies {
            self.on_joined(join, reply, subs);
        }
    }

    /// The home's answer to join `join`: the ack and the replay are queued, the gate is
    /// lowered to the answer's top (or the page handed to the shard).
    pub(super) fn on_joined<S: Subscribers>(&mut self, join: u32, reply: JoinReply, subs: &mut S) {
        let Some(p) = self.joins.pending.remove(&join) else {
            return; // answered already (timed out)
        };
        let (slot, topic, format, reply_id, kind) = match p {
            Pending::Page { cookie, .. } => {
                self.pages.push((cookie, reply));
                return;
            }
            Pending::Sub {
                slot,
                topic,
                format,
                reply_id,
                kind,
                ..
            } => (slot, topic, format, reply_id, kind),
        };
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        if !t.gates.iter().any(|g| g.join == join) {
            return; // the connection left the topic meanwhile
        }
        let name = Arc::clone(&t.name);
        if format.is_mux() {
            let ack = super::mux::join_ack(reply_id.as_ref(), &name, &reply, kind);
            let mut buf = bytes::BytesMut::with_capacity(ack.len() + MAX_HEADER_LEN);
            encode_frame(&mut buf, true, OpCode::Text, None, &ack);
            let frame = buf.freeze();
            match subs.admit(slot) {
                Ok(mut q) => q.push(frame),
                Err(Refused::Slow) => self.slow.push((slot, 1)),
                Err(Refused::Closed) => {}
            }
        }
        let replayed = self.replay(slot, format, &name, &reply.publications, subs);
        self.metrics.history.replayed.add(replayed);
        if let Some(t) = self.topics.get_mut(topic)
            && let Some(g) = t.gates.iter_mut().find(|g| g.join == join)
        {
            g.until = reply.top;
        }
    }

    /// Queues `publications` to `slot` in `format`, in chunks of at most the batch bound,
    /// each admitted like a live batch (a subscriber that cannot take one is slow and
    /// misses the rest). Returns the messages queued.
    fn replay<S: Subscribers>(
        &mut self,
        slot: u32,
        format: Format,
        topic: &str,
        publications: &[Stored],
        subs: &mut S,
    ) -> u64 {
        if publications.is_empty() {
            return 0;
        }
        let max = self.limits.max_batch_bytes.max(1);
        // Plain frames are the history's own slices; envelopes are built once per replay,
        // as one run, then cut at message boundaries.
        let (run, ends): (Option<Bytes>, Vec<u32>) = if format.is_mux() {
            let (run, ends) = self.fanout.replay_run(topic, publications, format);
            (Some(run), ends.to_vec())
        } else {
            (None, Vec::new())
        };
        let n = publications.len();
        let mut i = 0usize;
        let mut queued = 0u64;
        while i < n {
            let mut q = match subs.admit(slot) {
                Ok(q) => q,
                Err(Refused::Slow) => {
                    self.slow.push((slot, (n - i) as u32));
                    break;
                }
                Err(Refused::Closed) => break,
            };
            let start = i;
            let mut bytes = 0usize;
            match &run {
                None => {
                    while i < n && (i == start || bytes + publications[i].frame.len() <= max) {
                        bytes += publications[i].frame.len();
                        q.push(publications[i].frame.clone());
                        i += 1;
                    }
                }
                Some(run) => {
                    let from = super::batch::msg_start(&ends, start as u32);
                    while i < n
                        && (i == start
                            || super::batch::msg_start(&ends, i as u32 + 1) - from <= max)
                    {
                        i += 1;
                    }
                    let to = super::batch::msg_start(&ends, i as u32);
                    if from <= to && to <= run.len() {
                        q.push(run.slice(from..to));
                    }
                }
            }
            queued += (i - start) as u64;
        }
        self.metrics.messages_out.add(queued);
        queued
    }

    /// Once per tick: joins the home shard did not answer in time are answered
    /// `unavailable` (live delivery, `recovered: false`; a page gets 503).
    pub fn join_timeouts<S: Subscribers>(&mut self, subs: &mut S, wake: &mut [bool]) {
        self.fetch_timeouts(subs, wake);
        if self.joins.pending.is_empty() {
            return;
        }
        for join in self.joins.late(self.tick) {
            tracing::warn!(
                shard = self.shard,
                "a topic's home shard did not answer a join in time"
            );
            self.on_joined(join, JoinReply::none(Outcome::Unavailable), subs);
        }
    }
}

/// How [`super::PubSub::subscribe_join`] subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// Subscribed; no history join (the caller acks a mux command itself).
    Now(TopicId),
    /// Subscribed behind a gate; the ack and the replay follow the home's answer.
    Joining(TopicId),
}

impl Joined {
    /// The topic id either way.
    pub fn id(self) -> TopicId {
        match self {
            Joined::Now(id) | Joined::Joining(id) => id,
        }
    }
}
