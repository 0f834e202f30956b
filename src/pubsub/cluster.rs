//! The home shard's side of several nodes: what it sends the broker bridge and what it
//! does with what the bridge hands it (docs/DESIGN.md, "Several nodes through a broker").
//!
//! The home of a topic is the one place its order exists on this node, so it is the one
//! that talks to the bridge ([`crate::cluster::Link`]):
//! - every batch it numbers that was published on this node goes to the bridge once
//!   (one push per batch), whether or not this node has subscribers;
//! - when the node gains its first subscriber of a topic, on any shard, or loses its
//!   last, the home tells the bridge (the home knows every shard's interest from their
//!   announcements), which subscribes or unsubscribes at the broker;
//! - a batch from the broker ([`super::Origin::Broker`]) is delivered like a local one
//!   and never sent back.

use std::sync::Arc;

use super::topic::TopicId;
use super::{Batch, Origin, PubSub};
use crate::cluster::link::Keep;

/// Own publications one topic may have on their way through the broker (Redis, history)
/// before the oldest is forgotten (its echo was lost with a connection).
const MAX_AWAITING: usize = 256;

impl PubSub {
    /// Whether this node has a subscriber of `id`, on any shard (as the home sees it).
    fn node_interest(&self, id: TopicId) -> bool {
        self.topics
            .get(id)
            .is_some_and(|t| t.local() > 0 || !t.remote.is_empty())
    }

    /// Runs `f` and tells the bridge when it changed the node's interest in `id` (on the
    /// topic's home shard only: the others' interest reaches the home by announcement).
    pub(super) fn tracking_interest<R>(
        &mut self,
        id: TopicId,
        f: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let tracked =
            self.link.is_some() && self.topics.get(id).is_some_and(|t| t.home == self.shard);
        if !tracked {
            return f(self);
        }
        let before = self.node_interest(id);
        let name = self.topics.get(id).map(|t| Arc::clone(&t.name));
        let r = f(self);
        let after = self.node_interest(id);
        if before != after
            && let (Some(link), Some(name)) = (&self.link, name)
        {
            link.interest(name, after);
        }
        r
    }

    /// On the home shard, for a batch about to be numbered and delivered: sends it to the
    /// broker when it was published on this node. Returns what to deliver now: the batch
    /// itself, or `None` when the broker numbers it (Redis, topic with history) and it is
    /// delivered when it comes back ([`Origin::Echo`]: then the batch this node built,
    /// with its exclusions, numbered by the broker).
    pub(super) fn send_to_broker(&mut self, id: TopicId, batch: Arc<Batch>) -> Option<Arc<Batch>> {
        let link = self.link.as_ref()?;
        match batch.origin {
            Origin::Echo => return Some(self.match_echo(id, batch)),
            Origin::Broker => return Some(batch),
            Origin::Shard(_) | Origin::External => {}
        }
        let t = self.topics.get(id)?;
        let name = Arc::clone(&t.name);
        let keep = (t.options.has_history() && link.sequences_history()).then_some(Keep {
            size: t.options.ns.history_size,
            ttl: t.options.ns.history_ttl,
        });
        let queued = link.publish(name, Arc::clone(&batch), keep);
        if keep.is_none() || !queued {
            // Delivered here at once (NATS, no history, or the broker is down: then
            // numbered here, under an epoch of this node's).
            return Some(batch);
        }
        if self.node_interest(id) {
            let q = self.awaiting.entry(id).or_default();
            if q.len() >= MAX_AWAITING {
                q.pop_front();
            }
            q.push_back(batch);
        }
        None
    }

    /// This node's publication back from the broker, numbered: the batch the home sent
    /// (frames already built, exclusions known) with the broker's offset and epoch. The
    /// broker keeps one connection's order, so echoes come back in the order sent; one
    /// whose batch is not the next awaited (its connection was lost in between) is
    /// delivered as it came.
    fn match_echo(&mut self, id: TopicId, echo: Arc<Batch>) -> Arc<Batch> {
        let Some(q) = self.awaiting.get_mut(&id) else {
            return echo;
        };
        while let Some(sent) = q.pop_front() {
            if sent.count() == echo.count() && sent.frames.len() == echo.frames.len() {
                if q.is_empty() {
                    self.awaiting.remove(&id);
                }
                let mut b = Batch::new(Origin::Echo, sent.frames.clone(), sent.ends.clone());
                b.own = sent.own.clone();
                b.json = sent.json.clone();
                b.offset = echo.offset;
                b.epoch = echo.epoch;
                return Arc::new(b);
            }
        }
        self.awaiting.remove(&id);
        echo
    }

    /// The broker was lost while `topic` had subscribers on this node: its history starts
    /// a new epoch.
    pub(super) fn on_new_epoch(&mut self, topic: &str) {
        if let Some(id) = self.topics.lookup(topic) {
            self.histories.remove(id);
            self.awaiting.remove(&id);
            self.broker_numbered.remove(&id);
            if let Some(t) = self.topics.get_mut(id) {
                t.history = false;
            }
            self.topics.drop_if_unused(id);
        }
    }
}
