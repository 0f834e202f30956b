//! The pub/sub layer of one shard: the only way in for subscribing, unsubscribing and
//! publishing, whoever asks (simple mode, mux mode, HTTP publish, and later the broker
//! bridge), and everything between a publish and the subscribers' send queues.
//!
//! # Contract
//!
//! - [`PubSub::subscribe`], [`PubSub::unsubscribe`] and [`PubSub::publish`] are the entry
//!   points; refusals are one [`Error`] type, mapped to the wire by [`Error::wire`]. Rights
//!   checks (access control) belong here, once.
//! - A publish is framed once into its topic's batch for this turn ([`batch`]); the shard
//!   calls [`PubSub::fan_out`] when the turn's batches are due: each goes to the local
//!   subscribers ([`fanout`], built once per needed [`Format`]) and, as one bus message,
//!   to each other shard that announced a subscriber of the topic ([`crate::bus`]).
//! - [`PubSub::drain_bus`] takes what other shards sent: batches (fanned out here) and
//!   interest announcements (kept in the topic table).
//! - [`PubSub::end_turn`] compacts the subscriber lists that lost members this turn and
//!   announces the topics this shard no longer has subscribers for.
//! - After each of these calls the shard applies the slow-consumer policy to
//!   [`PubSub::slow`] (the decision is made here; closing or dropping is the shard's).
//!
//! Topics are interned per shard ([`topic`]); nothing on the per-message path hashes a
//! topic name: simple-mode connections and batches carry a [`TopicId`], a batch finds its
//! topic's open buffer through the table, bus messages carry the receiver's id. Mux-mode
//! and HTTP publishes name their topic in the message itself, so they pay one lookup per
//! command, in this shard's own table.
//!
//! Interest: when a topic gets its first subscriber on this shard, every other shard is told
//! this shard's id for it; when its last one leaves, they are told it left. A shard's
//! batches go only to the shards listed for the topic. An announcement is pushed before
//! the 101 response (or the mux ack) of the subscription that caused it is sent, and a
//! shard drains its inbox again right before it routes its batches (after reading its
//! sockets), so a publish that a client makes after seeing that response reaches the new
//! subscriber, whichever shard it is published on.

pub mod access;
pub mod batch;
mod cluster;
mod error;
pub mod fanout;
mod fetch;
pub mod history;
mod home;
pub mod join;
pub mod mux;
pub mod namespace;
pub mod topic;

pub use access::{Caller, Grants, Policy};
pub use batch::{Batch, Origin};
pub use error::{
    CLOSE_DISCONNECTED, CLOSE_FORBIDDEN, CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_INVALID, Error, Wire,
};
pub use namespace::{Anonymous, NamespaceOptions, Namespaces};
pub use topic::{
    Format, MAX_TOPIC_LEN, TopicError, TopicId, TopicOptions, home_shard, validate_topic,
};

use std::collections::HashMap;
use std::sync::Arc;

use crate::bus::{Bus, BusMsg, Pushed};
use crate::metrics::ShardMetrics;
use crate::proto::frame::OpCode;
use batch::{Batcher, Exclusions, Ready};
use fanout::{FanOut, Subscribers};
use history::Histories;
use topic::{InterestChange, Topics};

/// Which topic a publish goes to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A topic the publisher holds an id of (simple mode: its own topic).
    Id(TopicId),
    /// A topic named in the message (mux mode, HTTP): validated and looked up once.
    Name(&'a str),
}

/// What the pub/sub layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Topics one connection may hold (`--max-topics-per-connection`).
    pub max_topics_per_connection: usize,
    /// Bound of one batch in framed bytes (`--max-batch-bytes`).
    pub max_batch_bytes: usize,
    /// The namespaces, shared by every shard.
    pub namespaces: Arc<Namespaces>,
    /// Whether token rights apply.
    pub policy: Policy,
    /// What this shard's histories may weigh (`--history-memory-limit` / shards).
    pub history_memory: usize,
    /// Most publications one recovery, rewind or page returns
    /// (`--max-recovery-publications`).
    pub max_recovery: usize,
    /// Ticks a joining subscriber waits for its topic's home ([`join::JOIN_TIMEOUT`]).
    pub join_timeout_ticks: u32,
}

/// Draws epochs: OS-seeded once per shard, then SplitMix64 (epochs must differ across
/// restarts and topics; they are not secrets).
#[derive(Debug)]
struct EpochRng(u64);

impl EpochRng {
    fn new() -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        EpochRng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

type EpochSource = Box<dyn FnMut() -> u64 + Send>;

/// The pub/sub state of one shard.
#[derive(Debug)]
pub struct PubSub {
    /// This shard's index (announcements and batch origins name it).
    shard: u16,
    /// The inboxes of every shard.
    bus: Arc<Bus>,
    limits: Limits,
    /// Topic ids, subscriber lists by format, other shards' interest.
    topics: Topics,
    /// This turn's publishes, one buffer per topic.
    batcher: Batcher,
    /// Fan-out scratch.
    fanout: FanOut,
    /// The batches of the fan-out under way (kept for its allocation).
    ready: Vec<Ready>,
    /// Announcements an inbox refused (full), per target shard, latest state per topic;
    /// retried each turn before any newer announcement to that shard.
    backlog: Vec<HashMap<Arc<str>, Option<TopicId>>>,
    metrics: Arc<ShardMetrics>,
    /// Subscribers that missed messages because their backlog was at the limit:
    /// (slot, messages). The shard applies `--slow-consumer` to them and clears the list.
    pub slow: Vec<(u32, u32)>,
    /// Backend API queries and answers taken from the inbox, for the shard to handle after
    /// [`PubSub::drain_bus`] (it takes and clears the list).
    pub api: Vec<BusMsg>,
    /// The shard's clock (ticks), for log throttles; set by [`PubSub::begin_turn`].
    tick: u32,
    inbox_full_log: crate::throttle::LogThrottle,
    /// The histories of the topics this shard is the home of.
    histories: Histories<TopicId, EpochSource>,
    /// Eviction counters already added to the metrics.
    reported: history::Stats,
    /// Exclusion scratch of the fan-out under way.
    excl: Exclusions,
    /// The interested shards of the batch under way (kept for its allocation).
    remote_scratch: Vec<(u16, TopicId)>,
    /// Which fan-outs are timed for `ringcast_fanout_duration_seconds`.
    fanout_sample: crate::metrics::histogram::Sampler,
    /// Joins waiting for a home shard's answer.
    joins: join::Joins,
    /// Answers to [`PubSub::history_page`] (cookie, answer), for the shard to take.
    pub pages: Vec<(u64, join::JoinReply)>,
    /// The broker bridge, when this node is one of several (`--broker`).
    link: Option<Arc<crate::cluster::Link>>,
    /// This node's publications on their way through the broker, per topic (Redis,
    /// history: delivered when they come back numbered).
    awaiting: HashMap<TopicId, std::collections::VecDeque<Arc<Batch>>>,
    /// Topics whose history follows the broker's offsets.
    broker_numbered: std::collections::HashSet<TopicId>,
    /// Joins answered from the broker's history, and the batches held meanwhile.
    fetches: fetch::Fetches,
}

impl PubSub {
    /// The pub/sub state of shard `shard`.
    pub fn new(shard: usize, bus: Arc<Bus>, limits: Limits, metrics: Arc<ShardMetrics>) -> Self {
        let shards = bus.shards();
        let shard = u16::try_from(shard).unwrap_or(u16::MAX);
        let mut rng = EpochRng::new();
        let epochs: EpochSource = Box::new(move || rng.next());
        PubSub {
            histories: Histories::new(limits.history_memory, epochs),
            reported: history::Stats::default(),
            excl: Exclusions::default(),
            remote_scratch: Vec::new(),
            fanout_sample: crate::metrics::histogram::Sampler::default(),
            joins: join::Joins::default(),
            pages: Vec::new(),
            link: None,
            awaiting: HashMap::new(),
            broker_numbered: std::collections::HashSet::new(),
            fetches: fetch::Fetches::default(),
            shard,
            bus,
            topics: Topics::default(),
            batcher: Batcher::new(Origin::Shard(shard), limits.max_batch_bytes),
            limits,
            fanout: FanOut::default(),
            ready: Vec::new(),
            backlog: vec![HashMap::new(); shards],
            metrics,
            slow: Vec::new(),
            api: Vec::new(),
            tick: 0,
            inbox_full_log: crate::throttle::LogThrottle::default(),
        }
    }

    /// Connects this shard to the broker bridge (before it serves anything).
    pub fn set_link(&mut self, link: Arc<crate::cluster::Link>) {
        self.link = Some(link);
    }

    /// The broker bridge, when this node is one of several.
    pub fn link(&self) -> Option<&Arc<crate::cluster::Link>> {
        self.link.as_ref()
    }

    /// Once per loop turn, first: the shard's clock.
    pub fn begin_turn(&mut self, tick: u32) {
        self.tick = tick;
    }

    /// Subscribes connection `slot` to the topic `name` in `format`, if `caller` may
    /// ([`Policy::subscribe`]). `held`: how many topics the connection holds already (it
    /// must not hold this one: a connection keeps its own list and asks [`PubSub::lookup`]
    /// first).
    pub fn subscribe(
        &mut self,
        slot: u32,
        format: Format,
        name: &str,
        held: usize,
        caller: Caller<'_>,
    ) -> Result<TopicId, Error> {
        let opts = self.options_of(name)?;
        self.limits.policy.subscribe(caller, name, &opts)?;
        let max = self.limits.max_topics_per_connection;
        if held >= max {
            return Err(Error::TooManyTopics { max });
        }
        let id = self.intern(name, opts);
        let change = self.tracking_interest(id, |me| me.topics.join(id, slot, format));
        if change == InterestChange::Gained {
            self.announce(id, true);
        }
        self.gauge();
        Ok(id)
    }

    /// The options of topic `name` (validated): from the table when it is interned here,
    /// else from its namespace (one hash lookup of the namespace part).
    pub fn options_of(&self, name: &str) -> Result<TopicOptions, Error> {
        validate_topic(name)?;
        if let Some(t) = self.topics.lookup(name).and_then(|id| self.topics.get(id)) {
            return Ok(t.options);
        }
        let namespace = self.limits.namespaces.resolve(name)?;
        Ok(TopicOptions {
            namespace,
            ns: self.limits.namespaces.options(namespace),
        })
    }

    /// Whether `caller` may subscribe to `name` (`GET /history` reads with the same
    /// rights); its options when it may.
    pub fn may_subscribe(&self, caller: Caller<'_>, name: &str) -> Result<TopicOptions, Error> {
        let opts = self.options_of(name)?;
        self.limits.policy.subscribe(caller, name, &opts)?;
        Ok(opts)
    }

    /// Whether `caller` may publish on the topic `id` (checked once, when a simple-mode
    /// connection subscribes: its messages are then published by id, unchecked).
    pub fn may_publish(&self, caller: Caller<'_>, id: TopicId) -> Result<(), Error> {
        let Some(t) = self.topics.get(id) else {
            return Err(Error::NotSubscribed);
        };
        self.limits.policy.publish(caller, &t.name, &t.options, 0)
    }

    /// Takes connection `slot` out of `id`'s `format` subscribers (applied in one pass per
    /// topic before its next fan-out and at the end of the turn). Harmless when repeated.
    pub fn unsubscribe(&mut self, slot: u32, id: TopicId, format: Format) {
        self.topics.leave(id, slot, format);
    }

    /// This shard's id for `name`, if it is interned here.
    pub fn lookup(&self, name: &str) -> Option<TopicId> {
        self.topics.lookup(name)
    }

    /// Publishes one message: framed once into its topic's batch for this turn, queued to
    /// subscribers when the shard calls [`PubSub::fan_out`]. `exclude`: a publisher that
    /// must not receive it. Returns the local subscribers it will be queued for; a message
    /// for a topic nobody subscribes to (here or on a shard that announced it) is dropped at
    /// the fan-out and counted as unrouted.
    ///
    /// A [`Target::Name`] is checked against `caller`'s rights ([`Policy::publish`]); a
    /// [`Target::Id`] was checked when the id was granted ([`PubSub::may_publish`]), and
    /// only the namespace's size limit applies to a client's message.
    pub fn publish(
        &mut self,
        target: Target<'_>,
        caller: Caller<'_>,
        opcode: OpCode,
        payload: &[u8],
        exclude: Option<u32>,
    ) -> Result<usize, Error> {
        self.publish_as(target, caller, opcode, payload, exclude, false)
    }

    /// [`PubSub::publish`]; `json`: a text message published as a JSON value (an object
    /// or array the caller checked with [`mux::is_json_value`]), which mux envelopes carry
    /// as JSON rather than as a string.
    pub fn publish_as(
        &mut self,
        target: Target<'_>,
        caller: Caller<'_>,
        opcode: OpCode,
        payload: &[u8],
        exclude: Option<u32>,
        json: bool,
    ) -> Result<usize, Error> {
        let id = match target {
            Target::Id(id) => {
                if let (Caller::Client(_), Some(t)) = (caller, self.topics.get(id))
                    && payload.len() > t.options.ns.max_message_size
                {
                    return Err(Error::TooLarge {
                        max: t.options.ns.max_message_size,
                    });
                }
                id
            }
            // Interned even when nobody here subscribes: whether another shard does is
            // decided at the fan-out, after the inbox is drained again (an announcement made
            // before this message was read is then known). Dropped after the turn if unused.
            Target::Name(name) => {
                let opts = self.options_of(name)?;
                self.limits
                    .policy
                    .publish(caller, name, &opts, payload.len())?;
                self.intern(name, opts)
            }
        };
        let Some(local) = self.topics.get(id).map(topic::Topic::local) else {
            self.metrics.unrouted.inc();
            return Ok(0);
        };
        self.batcher.append_flagged(
            &mut self.topics,
            id,
            opcode,
            payload,
            exclude,
            json && opcode == OpCode::Text,
        );
        Ok(local)
    }

    /// Whether publishes wait for [`PubSub::fan_out`].
    pub fn has_pending(&self) -> bool {
        !self.batcher.is_empty()
    }

    /// Queues this turn's batches (`sealed_only`: only those sealed at the byte bound):
    /// numbered and fanned out here for topics this shard is the home of ([`home`]), to
    /// local subscribers and one bus message per batch to each interested shard; the
    /// others forwarded to their home. `wake[i]` is set for each shard that must be woken
    /// at the flush.
    pub fn fan_out<S: Subscribers>(&mut self, subs: &mut S, wake: &mut [bool], sealed_only: bool) {
        self.flush_local_joins(subs);
        if self.batcher.is_empty() {
            return;
        }
        // The batches are taken first (the batcher needs the topic table to close them),
        // into a list kept across turns so that a fan-out allocates nothing.
        let mut ready = std::mem::take(&mut self.ready);
        if sealed_only {
            self.batcher.take_sealed(|r| ready.push(r));
        } else {
            self.batcher.take(&mut self.topics, |_, r| ready.push(r));
        }
        for r in ready.drain(..) {
            let id = r.topic;
            self.route(r, subs, wake);
            self.topics.drop_if_unused(id);
        }
        self.ready = ready;
    }

    /// Queues a numbered batch of `id` to this shard's subscribers: publishers here get
    /// it minus their own messages, joining subscribers minus what their join covered.
    fn deliver_local<S: Subscribers>(&mut self, id: TopicId, batch: &Batch, subs: &mut S) -> u64 {
        let Some(t) = self.topics.get(id) else {
            return 0;
        };
        if t.local() == 0 {
            return 0;
        }
        let count = batch.count();
        let last = batch
            .offset
            .saturating_add(u64::from(count))
            .saturating_sub(1);
        if batch.own.is_empty() && t.gates.is_empty() {
            self.excl.build(batch, self.shard, []);
        } else {
            let gates = t.gates.iter().filter_map(|g| {
                if batch.offset == 0 || g.until < batch.offset {
                    None
                } else if g.until >= last {
                    Some((g.slot, 0..count))
                } else {
                    Some((g.slot, 0..(g.until - batch.offset + 1) as u32))
                }
            });
            self.excl.build(batch, self.shard, gates);
        }
        let timed = self.fanout_sample.take().then(std::time::Instant::now);
        let queued = self.fanout.run(t, batch, &self.excl, subs);
        if let Some(t0) = timed {
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.metrics.fanout_ns.record(ns);
        }
        self.metrics.messages_out.add(queued);
        if let Some(t) = self.topics.get_mut(id)
            && !t.gates.is_empty()
        {
            // A gate goes at the first batch past it (a batch without offsets: the topic
            // lost its history, nothing left to hold back).
            t.gates
                .retain(|g| batch.offset != 0 && g.until != 0 && g.until >= last);
        }
        self.after_fan_out(id);
        queued
    }

    /// Takes what other shards (and non-shard threads) sent this shard, in order.
    pub fn drain_bus<S: Subscribers>(&mut self, subs: &mut S, wake: &mut [bool]) {
        self.flush_local_joins(subs);
        let bus = Arc::clone(&self.bus);
        let mut batches = 0u64;
        bus.drain(usize::from(self.shard), |m| match m {
            BusMsg::Batch { topic, batch } => {
                batches += 1;
                self.deliver_remote(topic, &batch, subs);
            }
            BusMsg::Named { topic, batch } => {
                batches += 1;
                self.on_named(topic, batch, subs, wake);
            }
            BusMsg::Interest { from, topic, id } => self.on_interest(from, topic, id),
            BusMsg::Join {
                from,
                id,
                topic,
                want,
            } => self.on_join(from, id, topic, want, wake),
            BusMsg::Joined { id, reply } => self.on_joined(id, reply, subs),
            // The backend API's questions are about connections: the shard's.
            m @ (BusMsg::Query { .. } | BusMsg::Answer { .. }) => self.api.push(m),
            BusMsg::NewEpoch { topic } => self.on_new_epoch(&topic),
            BusMsg::Fetched { cookie, read } => self.on_fetched(cookie, read, subs, wake),
        });
        self.metrics.bus_in.add(batches);
    }

    fn deliver_remote<S: Subscribers>(&mut self, id: TopicId, batch: &Batch, subs: &mut S) {
        self.compact(id);
        let Some(t) = self.topics.get(id) else {
            // The topic's last subscriber left after the sender read the announcement.
            self.metrics.bus_stale.inc();
            return;
        };
        if t.local() == 0 {
            self.metrics.bus_stale.inc();
            return;
        }
        let queued = self.deliver_local(id, batch, subs);
        self.metrics.bus_delivered.add(queued);
    }

    /// Interns `name` here, with its home shard.
    fn intern(&mut self, name: &str, opts: TopicOptions) -> TopicId {
        if let Some(id) = self.topics.lookup(name) {
            return id;
        }
        let id = self.topics.intern(name, opts);
        self.set_home(id);
        id
    }

    /// [`PubSub::intern`] of a shared name.
    fn intern_shared(&mut self, name: Arc<str>, opts: TopicOptions) -> TopicId {
        if let Some(id) = self.topics.lookup(&name) {
            return id;
        }
        let id = self.topics.intern_shared(name, opts);
        self.set_home(id);
        id
    }

    fn set_home(&mut self, id: TopicId) {
        let shards = self.bus.shards();
        if let Some(t) = self.topics.get_mut(id) {
            t.home = home_shard(&t.name, shards);
        }
    }

    /// Another shard's announcement: where batches of `topic` must go from now on.
    fn on_interest(&mut self, from: u16, topic: Arc<str>, theirs: Option<TopicId>) {
        let id = match theirs {
            // The other shard validated the name against the same namespaces.
            Some(_) => match self.options_of(&topic) {
                Ok(opts) => Some(self.intern_shared(topic, opts)),
                Err(_) => None,
            },
            None => self.topics.lookup(&topic),
        };
        if let Some(id) = id {
            self.tracking_interest(id, |me| me.topics.set_remote(id, from, theirs));
        }
    }

    /// Once per loop turn, after everything else: applies the leaves of this turn and
    /// retries announcements that met a full inbox.
    pub fn end_turn(&mut self, wake: &mut [bool]) {
        for to in self.joins.wake.drain(..) {
            if let Some(w) = wake.get_mut(usize::from(to)) {
                *w = true;
            }
        }
        let list = self.topics.take_to_compact();
        for &id in &list {
            self.compact(id);
        }
        self.topics.restore_to_compact(list);
        self.retry_backlog(wake);
        self.gauge();
    }

    /// Applies `id`'s pending leaves; withdraws the interest when none is left.
    fn compact(&mut self, id: TopicId) {
        let Some(t) = self.topics.get(id) else {
            return;
        };
        if !t.has_leavers() {
            return;
        }
        let name = Arc::clone(&t.name);
        if self.tracking_interest(id, |me| me.topics.compact(id)) == InterestChange::Lost {
            self.announce_name(name, None);
        }
    }

    /// After a fan-out: subscribers found closed leave the topic.
    fn after_fan_out(&mut self, id: TopicId) {
        self.slow.append(&mut self.fanout.slow);
        if self.fanout.closed.is_empty() {
            return;
        }
        let mut closed = std::mem::take(&mut self.fanout.closed);
        for &(slot, format) in &closed {
            self.topics.leave(id, slot, format);
        }
        closed.clear();
        self.fanout.closed = closed;
    }

    fn announce(&mut self, id: TopicId, gained: bool) {
        let Some(t) = self.topics.get(id) else {
            return;
        };
        let name = Arc::clone(&t.name);
        self.announce_name(name, gained.then_some(id));
    }

    /// Tells every other shard that this one has (`Some`) or no longer has subscribers
    /// of `topic`. Pushed at once (an inbox is drained before its shard reads sockets, so
    /// no wake is needed for correctness; the flush wakes the targets anyway).
    fn announce_name(&mut self, topic: Arc<str>, id: Option<TopicId>) {
        if self.bus.shards() > 1 {
            self.metrics.announcements.inc();
        }
        for to in 0..self.bus.shards() {
            if to == usize::from(self.shard) {
                continue;
            }
            let backlog = &mut self.backlog[to];
            if !backlog.is_empty() {
                backlog.insert(Arc::clone(&topic), id);
                continue;
            }
            let msg = BusMsg::Interest {
                from: self.shard,
                topic: Arc::clone(&topic),
                id,
            };
            if self.bus.push(to, msg) == Pushed::Full {
                backlog.insert(Arc::clone(&topic), id);
            }
        }
    }

    fn retry_backlog(&mut self, wake: &mut [bool]) {
        for (to, backlog) in self.backlog.iter_mut().enumerate() {
            if backlog.is_empty() {
                continue;
            }
            let mut sent = Vec::new();
            for (topic, &id) in backlog.iter() {
                let msg = BusMsg::Interest {
                    from: self.shard,
                    topic: Arc::clone(topic),
                    id,
                };
                match self.bus.push(to, msg) {
                    Pushed::Full => break,
                    pushed => {
                        if pushed == Pushed::Wake
                            && let Some(w) = wake.get_mut(to)
                        {
                            *w = true;
                        }
                        sent.push(Arc::clone(topic));
                    }
                }
            }
            for topic in sent {
                backlog.remove(&topic);
            }
        }
    }

    fn gauge(&mut self) {
        self.metrics
            .subscriptions
            .set(self.topics.subscriptions() as u64);
        self.metrics.topics.set(self.topics.len() as u64);
        let h = &self.metrics.history;
        h.publications.set(self.histories.publications() as u64);
        h.bytes.set(self.histories.bytes() as u64);
        h.topics.set(self.histories.topics() as u64);
        let now = self.histories.stats();
        let was = std::mem::replace(&mut self.reported, now);
        h.evicted_memory
            .add(now.evicted_by_memory - was.evicted_by_memory);
        h.evicted_size
            .add(now.evicted_by_size - was.evicted_by_size);
        h.expired_ttl.add(now.expired_by_ttl - was.expired_by_ttl);
        h.shed_topics.add(now.shed_topics - was.shed_topics);
    }

    /// The topic table (read-only: tests, the HTTP publish reply, metrics).
    pub fn topics(&self) -> &Topics {
        &self.topics
    }
}
