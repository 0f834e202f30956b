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

use super::PubSub;
use super::topic::TopicId;

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

    /// The broker was lost while `topic` had subscribers on this node: its history starts
    /// a new epoch.
    pub(super) fn on_new_epoch(&mut self, topic: &str) {
        if let Some(id) = self.topics.lookup(topic) {
            self.histories.remove(id);
            if let Some(t) = self.topics.get_mut(id) {
                t.history = false;
            }
            self.topics.drop_if_unused(id);
        }
    }
}
