//! Topics and subscriptions of one shard.
//!
//! Each shard owns its own table, so subscribing, unsubscribing and fan-out take no lock.
//! A topic's subscribers are connection slots of this shard; the topic disappears with its
//! last subscriber, so a shard that has no subscriber for a topic pays one failed hash
//! lookup per message routed to it by the bus.
//!
//! A topic keeps two subscriber lists: simple-mode connections (`/ws/{topic}`), which get
//! the bare payload frame, and control-mode connections (`/ws`), which get the same message
//! in a topic envelope. Keeping them apart lets the shard build the envelope once per
//! publish, and only when a control-mode subscriber exists, without a per-subscriber branch.

use std::collections::HashMap;
use std::sync::Arc;

/// The longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Zero bytes.
    Empty,
    /// More than [`MAX_TOPIC_LEN`] bytes.
    TooLong,
    /// A byte outside printable ASCII, or a space.
    BadByte,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic name is empty",
            TopicError::TooLong => "topic name is longer than 255 bytes",
            TopicError::BadByte => "topic name must be printable ASCII without spaces",
        })
    }
}

/// Checks a topic name: 1–255 bytes of printable ASCII (0x21–0x7e), no spaces.
pub fn validate_topic(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if !name.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(TopicError::BadByte);
    }
    Ok(())
}

/// One topic's local subscribers.
#[derive(Debug)]
pub struct Topic {
    /// The shared name, handed to the bus without copying.
    pub name: Arc<str>,
    /// Simple-mode connection slots subscribed on this shard (bare payload frames).
    pub subscribers: Vec<u32>,
    /// Control-mode connection slots subscribed on this shard (enveloped frames).
    pub control: Vec<u32>,
}

/// The topic table of one shard.
#[derive(Debug, Default)]
pub struct Topics {
    map: HashMap<Arc<str>, Topic>,
}

impl Topics {
    /// Subscribes `slot` to `name` (which must be valid) and returns the shared name.
    pub fn subscribe(&mut self, name: &str, slot: u32) -> Arc<str> {
        if let Some(t) = self.map.get_mut(name) {
            if !t.subscribers.contains(&slot) {
                t.subscribers.push(slot);
            }
            return Arc::clone(&t.name);
        }
        let name: Arc<str> = Arc::from(name);
        self.map.insert(
            Arc::clone(&name),
            Topic {
                name: Arc::clone(&name),
                subscribers: vec![slot],
                control: Vec::new(),
            },
        );
        name
    }

    /// Subscribes control-mode `slot` to `name` (which must be valid); returns the shared
    /// name and whether it is a new subscription.
    pub fn subscribe_control(&mut self, name: &str, slot: u32) -> (Arc<str>, bool) {
        if let Some(t) = self.map.get_mut(name) {
            let new = !t.control.contains(&slot);
            if new {
                t.control.push(slot);
            }
            return (Arc::clone(&t.name), new);
        }
        let name: Arc<str> = Arc::from(name);
        self.map.insert(
            Arc::clone(&name),
            Topic {
                name: Arc::clone(&name),
                subscribers: Vec::new(),
                control: vec![slot],
            },
        );
        (name, true)
    }

    /// Removes control-mode `slot` from `name`; drops the topic when it was the last
    /// subscriber of either kind.
    pub fn unsubscribe_control(&mut self, name: &str, slot: u32) -> bool {
        let Some(t) = self.map.get_mut(name) else {
            return false;
        };
        let Some(pos) = t.control.iter().position(|&s| s == slot) else {
            return false;
        };
        t.control.swap_remove(pos);
        if t.subscribers.is_empty() && t.control.is_empty() {
            self.map.remove(name);
        }
        true
    }

    /// Removes `slot` from `name`; drops the topic when it was the last subscriber.
    pub fn unsubscribe(&mut self, name: &str, slot: u32) -> bool {
        let Some(t) = self.map.get_mut(name) else {
            return false;
        };
        let Some(pos) = t.subscribers.iter().position(|&s| s == slot) else {
            return false;
        };
        t.subscribers.swap_remove(pos);
        if t.subscribers.is_empty() && t.control.is_empty() {
            self.map.remove(name);
        }
        true
    }

    /// Removes the slots in `sorted` (ascending) from `name`'s simple-mode list (`control`:
    /// its control-mode list) in one pass; drops the topic when no subscriber is left.
    /// Returns how many were removed.
    pub fn remove_slots(&mut self, name: &str, sorted: &[u32], control: bool) -> usize {
        let Some(t) = self.map.get_mut(name) else {
            return 0;
        };
        let list = if control {
            &mut t.control
        } else {
            &mut t.subscribers
        };
        let before = list.len();
        list.retain(|s| sorted.binary_search(s).is_err());
        let removed = before - list.len();
        if t.subscribers.is_empty() && t.control.is_empty() {
            self.map.remove(name);
        }
        removed
    }

    /// The topic, if anyone on this shard subscribes to it.
    pub fn get(&self, name: &str) -> Option<&Topic> {
        self.map.get(name)
    }

    /// Number of topics with at least one local subscriber.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no topic has a local subscriber.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total subscriptions on this shard.
    pub fn subscriptions(&self) -> usize {
        self.map
            .values()
            .map(|t| t.subscribers.len() + t.control.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic("prices.EUR-USD"), Ok(()));
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic(&"a".repeat(255)), Ok(()));
        assert_eq!(validate_topic(&"a".repeat(256)), Err(TopicError::TooLong));
        assert_eq!(validate_topic("a b"), Err(TopicError::BadByte));
        assert_eq!(validate_topic("é"), Err(TopicError::BadByte));
        assert_eq!(validate_topic("a\x7f"), Err(TopicError::BadByte));
    }

    #[test]
    fn subscribe_unsubscribe() {
        let mut t = Topics::default();
        let a = t.subscribe("x", 1);
        let b = t.subscribe("x", 2);
        assert!(Arc::ptr_eq(&a, &b), "one shared name per topic");
        t.subscribe("x", 2);
        assert_eq!(
            t.get("x").map(|t| t.subscribers.len()),
            Some(2),
            "no duplicates"
        );
        assert!(t.unsubscribe("x", 1));
        assert!(!t.unsubscribe("x", 1));
        assert!(t.unsubscribe("x", 2));
        assert!(
            t.get("x").is_none() && t.is_empty(),
            "last subscriber removes the topic"
        );
    }

    #[test]
    fn control_subscribers_share_the_topic() {
        let mut t = Topics::default();
        t.subscribe("x", 1);
        assert!(t.subscribe_control("x", 2).1);
        assert!(!t.subscribe_control("x", 2).1, "idempotent");
        assert_eq!(t.subscriptions(), 2);
        assert!(t.unsubscribe("x", 1));
        assert!(t.get("x").is_some(), "the control subscriber keeps it");
        assert!(!t.unsubscribe_control("x", 1));
        assert!(t.unsubscribe_control("x", 2));
        assert!(t.is_empty());
    }
}
