//! One order per topic: every topic has a home shard ([`home_shard`]) that numbers its
//! publications, keeps its history and fans it out to the other shards.
//!
//! A batch built on another shard is forwarded to the home as one bus message (the same
//! `Arc<Batch>`: the frames were built once and are not copied), which the home numbers
//! and fans out like its own. So every subscriber, on every shard, receives a topic's
//! publications in the order its home fanned them out, whoever published them; on a topic
//! with history that order is its offsets. Per publisher it is still publish order (the
//! bus is FIFO per sender). The price is one hand-off for a publisher not on its topic's
//! home (docs/DESIGN.md, "One order per topic"). With one shard nothing is forwarded.
//!
//! The exclusions of a batch (publishers that must not receive their own messages) name
//! `(shard, slot)` and travel in the batch ([`super::batch::Own`]), so that the publisher's
//! shard applies them when the numbered batch comes back from the home.

use std::sync::Arc;
use std::time::Instant;

use super::batch::{Batch, Ready};
use super::fanout::Subscribers;
use super::history::HistoryOptions;
use super::topic::{TopicId, TopicOptions};
use super::{PubSub, home_shard};
use crate::bus::{BusMsg, Pushed};

impl PubSub {
    /// A batch of this shard's turn: numbered and fanned out here when this is its topic's
    /// home, else forwarded to the home.
    pub(super) fn route<S: Subscribers>(&mut self, r: Ready, subs: &mut S, wake: &mut [bool]) {
        let Some(t) = self.topics.get(r.topic) else {
            return;
        };
        if t.home == self.shard {
            self.publish_home(r.topic, r.batch, subs, wake);
            return;
        }
        if t.local() == 0 && t.remote.is_empty() && !t.options.has_history() && self.link.is_none()
        {
            // Nobody subscribes anywhere (this shard knows every announcement made before
            // the publish was read), nothing is kept, and there is no other node.
            self.metrics.unrouted.add(u64::from(r.batch.count()));
            return;
        }
        let home = t.home;
        let msg = BusMsg::Named {
            topic: Arc::clone(&t.name),
            batch: r.batch,
        };
        self.metrics.history.forwarded.inc();
        self.push_batch(home, msg, wake);
    }

    /// A batch named by topic, for this shard as its home (forwarded by another shard, or
    /// published by a thread that is not a shard).
    pub(super) fn on_named<S: Subscribers>(
        &mut self,
        name: Arc<str>,
        batch: Arc<Batch>,
        subs: &mut S,
        wake: &mut [bool],
    ) {
        let home = home_shard(&name, self.bus.shards());
        if home != self.shard {
            // Not ours (a sender that computed another home): pass it on, once.
            self.push_batch(home, BusMsg::Named { topic: name, batch }, wake);
            return;
        }
        let id = match self.topics.lookup(&name) {
            Some(id) => id,
            None => match self.options_of(&name) {
                Ok(opts) if opts.has_history() => self.intern_shared(name, opts),
                // Unknown here: no shard announced a subscriber before it was published.
                _ => {
                    if !batch.origin.is_broker()
                        && let Some(link) = &self.link
                    {
                        link.publish(name, Arc::clone(&batch), None);
                    }
                    self.metrics.unrouted.add(u64::from(batch.count()));
                    return;
                }
            },
        };
        self.publish_home(id, batch, subs, wake);
        self.topics.drop_if_unused(id);
    }

    /// On the home shard: numbers `batch` (when the topic has history), then queues it to
    /// every interested shard and to the local subscribers.
    pub(super) fn publish_home<S: Subscribers>(
        &mut self,
        id: TopicId,
        mut batch: Arc<Batch>,
        subs: &mut S,
        wake: &mut [bool],
    ) {
        self.compact(id);
        let Some(t) = self.topics.get(id) else {
            return;
        };
        let history = t.options.has_history();
        if self.link.is_some() {
            if self.holding() {
                // Held back while a join of the topic waits for the broker's history.
                let name = Arc::clone(&t.name);
                let Some(b) = self.hold(&name, batch) else {
                    return;
                };
                batch = b;
            }
            let Some(b) = self.send_to_broker(id, batch) else {
                return;
            };
            batch = b;
        }
        let Some(t) = self.topics.get(id) else {
            return;
        };
        if !history && t.local() == 0 && t.remote.is_empty() {
            self.metrics.unrouted.add(u64::from(batch.count()));
            return;
        }
        let batch = if history {
            match self.number(id, batch) {
                Some(b) => b,
                None => return,
            }
        } else {
            batch
        };
        // The interested shards, through a list kept across batches (the topic table is
        // borrowed by the lookup, the bus push needs the rest of the state).
        let mut remote = std::mem::take(&mut self.remote_scratch);
        remote.clear();
        if let Some(t) = self.topics.get(id) {
            remote.extend_from_slice(&t.remote);
        }
        for &(shard, theirs) in &remote {
            let msg = BusMsg::Batch {
                topic: theirs,
                batch: Arc::clone(&batch),
            };
            self.push_batch(shard, msg, wake);
        }
        self.remote_scratch = remote;
        self.deliver_local(id, &batch, subs);
    }

    /// Gives the batch's messages their offsets and keeps the frames of those the history
    /// can hold (the last `history_size`).
    ///
    /// Those frames are copied once, per batch, into one allocation of exactly their size,
    /// and stored as slices of it: a batch buffer is carved out of a reused, growing
    /// allocation (up to `--max-batch-bytes`, shared with other topics' batches), so a
    /// slice of it could pin far more memory than the history accounts for (one quiet
    /// topic's 60-byte publication keeping a 128 KiB buffer alive). With the copy, what a
    /// history holds is what it counts, within one partly evicted batch per topic. Never a
    /// copy per subscriber: subscribers get the batch itself.
    ///
    /// A batch the broker numbered (Redis, several nodes: [`Batch::epoch`]) keeps its
    /// offsets: the history adopts its epoch and offset, and what it holds already (a
    /// replay that overlapped the live stream) is skipped; `None` when all of it was.
    fn number(&mut self, id: TopicId, mut batch: Arc<Batch>) -> Option<Arc<Batch>> {
        let Some(t) = self.topics.get_mut(id) else {
            return Some(batch);
        };
        t.history = true;
        let opts = history_options(&t.options);
        let subscribed = t.local() > 0 || !t.remote.is_empty();
        let now = Instant::now();
        if subscribed {
            self.histories.keep_if_expired(id, now);
        }
        if let Some(e) = batch.epoch.and_then(super::history::Epoch::parse) {
            let skip = self.histories.align(id, opts, e, batch.offset, now);
            self.broker_numbered.insert(id);
            if skip >= u64::from(batch.count()) {
                return None;
            }
            if skip > 0 {
                batch = Arc::new(batch.without_first(skip as u32));
            }
        } else if self.broker_numbered.remove(&id) {
            // Numbered here again (the broker is down): a new epoch, so that these
            // offsets never meet the broker's.
            self.histories.remove(id);
        }
        let count = batch.count();
        let keep = count.min(u32::try_from(opts.size).unwrap_or(u32::MAX));
        let from = count - keep;
        let base = super::batch::msg_start(&batch.ends, from);
        let mut kept = bytes::Bytes::copy_from_slice(batch.frames.get(base..).unwrap_or_default());
        let mut first = 0;
        for i in 0..count {
            // Messages the history cannot hold get their offset and are evicted at once.
            let frame = if i < from {
                bytes::Bytes::new()
            } else if keep == 1 {
                // The whole copy, moved (a clone or a slice would add a shared header).
                std::mem::take(&mut kept)
            } else {
                let (a, b) = (
                    super::batch::msg_start(&batch.ends, i) - base,
                    super::batch::msg_start(&batch.ends, i + 1) - base,
                );
                let end = b.min(kept.len());
                kept.slice(a.min(end)..end)
            };
            let a = self
                .histories
                .append_flagged(id, opts, frame, batch.is_json(i), now);
            if i == 0 {
                first = a.offset;
            }
        }
        match Arc::get_mut(&mut batch) {
            Some(b) => b.offset = first,
            // Shared already (a caller kept a reference): a new head over the same frames.
            None => {
                let mut b = Batch::new(batch.origin, batch.frames.clone(), batch.ends.clone());
                b.own = batch.own.clone();
                b.json = batch.json.clone();
                b.offset = first;
                batch = Arc::new(b);
            }
        }
        Some(batch)
    }

    /// Pushes a batch message to shard `to`, counting it as dropped when its inbox is full.
    pub(super) fn push_batch(&mut self, to: u16, msg: BusMsg, wake: &mut [bool]) {
        let count = match &msg {
            BusMsg::Batch { batch, .. } | BusMsg::Named { batch, .. } => batch.count(),
            _ => 0,
        };
        match self.bus.push(usize::from(to), msg) {
            Pushed::Wake => {
                if let Some(w) = wake.get_mut(usize::from(to)) {
                    *w = true;
                }
            }
            Pushed::Queued => {}
            Pushed::Full => {
                self.metrics.bus_dropped.add(u64::from(count));
                if let Some(suppressed) = self.inbox_full_log.allow(self.tick) {
                    tracing::warn!(
                        shard = self.shard,
                        to,
                        suppressed,
                        "a shard's inbox is full (--max-inbox-bytes): batch dropped for its subscribers"
                    );
                }
            }
        }
    }

    /// Once per tick: forgets the history of topics idle past their TTL (a bounded number
    /// per call), and the state of unsubscribed topics while the states alone weigh more
    /// than the memory budget. A topic that still has subscribers keeps its epoch and
    /// offsets (they track them) and loses only its publications.
    pub fn expire_history(&mut self) {
        if self.histories.topics() == 0 {
            return;
        }
        let now = Instant::now();
        let topics = &self.topics;
        let subscribed = |id| {
            topics
                .get(id)
                .is_some_and(|t| t.local() > 0 || !t.remote.is_empty())
        };
        let mut gone = Vec::new();
        self.histories
            .expire_keeping(now, subscribed, |id| gone.push(id));
        // Topic states over the memory budget (a flood of distinct topics): the least
        // recently used without subscribers go, a bounded number per tick.
        self.histories
            .shed(SHED_PER_TICK, subscribed, |id| gone.push(id));
        for id in gone {
            if let Some(t) = self.topics.get_mut(id) {
                t.history = false;
            }
            self.topics.drop_if_unused(id);
        }
    }
}

/// Most topic states [`PubSub::expire_history`] sheds per tick (over the memory budget).
const SHED_PER_TICK: usize = 4096;

/// The history store's options for a topic.
pub(super) fn history_options(o: &TopicOptions) -> HistoryOptions {
    HistoryOptions {
        size: o.ns.history_size as usize,
        ttl: o.ns.history_ttl,
    }
}
