//! Topic names, topic ids and one shard's topic table.
//!
//! A topic is interned once per shard: when a connection of this shard first subscribes,
//! when another shard announces that it has subscribers (see [`crate::bus::BusMsg::Interest`]),
//! or, later, when a feature needs a topic with nobody subscribed (history). From then on
//! connections, batches and bus messages name it by its [`TopicId`], an index into this
//! table checked by a generation: nothing on the per-message path hashes a name. Per-topic
//! options ([`TopicOptions`]) are resolved at interning, so the access-control namespaces
//! cost nothing per message either.
//!
//! A topic's local subscribers are kept in one list per delivery [`Format`], so that a
//! batch is formatted at most once per format and fan-out does not branch per subscriber.
//! Leaving is batched: [`Topics::leave`] records the (slot, format) and the lists are
//! compacted in one pass per topic ([`Topics::compact`]) before the topic's next fan-out
//! and at the end of the loop turn, so a mass disconnect from a 100,000-subscriber topic
//! costs one pass per turn, not one scan per subscriber. A slot is reused only after the
//! driver reports its release (a later turn), so a compacted list never names a stranger.
//!
//! A topic disappears (its id's generation moves on) when it has no local subscriber, no
//! other shard is interested in it and no batch of this turn refers to it.

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
    /// `NAME:rest` where no namespace `NAME` is configured.
    UnknownNamespace,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic name is empty",
            TopicError::TooLong => "topic name is longer than 255 bytes",
            TopicError::BadByte => "topic name must be printable ASCII without spaces",
            TopicError::UnknownNamespace => {
                "the part of the topic name before ':' is not a configured namespace"
            }
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

/// A topic in one shard's table. Only meaningful on the shard that issued it (another
/// shard learns it from an interest announcement and addresses batches with it); a stale
/// id (the topic was dropped since) is recognised by its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicId {
    index: u32,
    generation: u32,
}

/// How a subscriber receives a topic's messages. Each batch is built at most once per
/// format per shard, and only when some local subscriber needs that format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The published frame itself (simple mode, `/ws/{topic}`).
    Plain = 0,
    /// The mux-mode envelope naming the topic (`/ws`, see [`super::mux`]).
    Mux = 1,
    /// The mux-mode envelope, version 2 (`/ws?envelope=2`): binary envelopes carry the
    /// offset (text envelopes are the same as [`Format::Mux`]'s).
    Mux2 = 2,
}

/// Number of [`Format`]s.
pub const FORMATS: usize = 3;

impl Format {
    /// Whether subscribers in this format get envelopes (and subscribe acks).
    pub fn is_mux(self) -> bool {
        !matches!(self, Format::Plain)
    }
}

impl Format {
    /// Every format, in list order.
    pub const ALL: [Format; FORMATS] = [Format::Plain, Format::Mux, Format::Mux2];
}

/// Options of one topic, resolved once when the topic is interned (from its namespace,
/// [`super::namespace`]), never per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicOptions {
    /// The namespace the topic belongs to.
    pub namespace: super::namespace::NamespaceId,
    /// That namespace's options.
    pub ns: super::namespace::NamespaceOptions,
}

impl TopicOptions {
    /// The default namespace of a server without access control (tests, benchmarks).
    pub const OPEN: TopicOptions = TopicOptions {
        namespace: 0,
        ns: super::namespace::NamespaceOptions {
            anonymous: super::namespace::Anonymous::Publish,
            client_publish: true,
            max_message_size: 1 << 20,
            history_size: 0,
            history_ttl: std::time::Duration::ZERO,
        },
    };

    /// Whether the topic keeps a history (and numbers its publications visibly).
    pub fn has_history(&self) -> bool {
        self.ns.history_size > 0
    }
}

/// The home shard of topic `name` among `shards`: the one that numbers its publications
/// and keeps its history. A fixed hash (FNV-1a, 64 bits), so that every shard (and every
/// process of the same build) computes the same home without asking.
pub fn home_shard(name: &str, shards: usize) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let shards = shards.clamp(1, usize::from(u16::MAX)) as u64;
    (h % shards) as u16
}

/// A subscriber that joined a topic with history and must not receive the publications
/// its join already accounts for (a recovery's replay, or the offset its ack named):
/// it skips offsets up to `until` (`u64::MAX` while the home shard has not answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// The subscriber's slot.
    pub slot: u32,
    /// Its format.
    pub format: Format,
    /// The last offset it must not receive live.
    pub until: u64,
    /// The join that set it (an answer for another join of the same slot is not its).
    pub join: u32,
}

/// Marks "no batch open this turn" in [`Topic::batch`].
pub(crate) const NO_BATCH: u32 = u32::MAX;

/// One topic of a shard.
#[derive(Debug)]
pub struct Topic {
    /// The name, shared with the bus and the other shards' tables (never copied per message).
    pub name: Arc<str>,
    /// Resolved at interning.
    pub options: TopicOptions,
    /// Local subscriber slots, one list per [`Format`]. May still hold slots that left
    /// this turn until [`Topics::compact`] runs.
    subs: [Vec<u32>; FORMATS],
    /// (slot, format) that left since the last compaction.
    leaving: Vec<(u32, Format)>,
    /// Other shards with subscribers, and the id each gave the topic: where this shard's
    /// batches for it go. At most one entry per shard.
    pub remote: Vec<(u16, TopicId)>,
    /// This turn's open batch (an index in the batcher), or [`NO_BATCH`].
    pub(crate) batch: u32,
    /// The topic's home shard ([`home_shard`]), set by the pub/sub layer at interning.
    pub home: u16,
    /// On its home shard: whether the history store holds state for it (the topic is
    /// then kept while nobody subscribes, until the state expires).
    pub history: bool,
    /// Subscribers that joined with a threshold (rare, short-lived: see [`Gate`]).
    pub gates: Vec<Gate>,
}

impl Topic {
    /// The subscribers that take `format` (compacted lists: see [`Topics::compact`]).
    pub fn subscribers(&self, format: Format) -> &[u32] {
        &self.subs[format as usize]
    }

    /// Local subscriptions (of every format), once compacted.
    pub fn local(&self) -> usize {
        self.subs.iter().map(Vec::len).sum()
    }

    /// Whether some slots left and the lists are not compacted yet.
    pub fn has_leavers(&self) -> bool {
        !self.leaving.is_empty()
    }
}

#[derive(Debug)]
struct Entry {
    generation: u32,
    topic: Option<Topic>,
}

/// What a change of the local subscriber lists means for the other shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterestChange {
    /// Nothing to announce.
    None,
    /// The first local subscriber arrived: announce the id.
    Gained,
    /// The last local subscriber left: withdraw.
    Lost,
}

/// The topic table of one shard.
#[derive(Debug, Default)]
pub struct Topics {
    entries: Vec<Entry>,
    free: Vec<u32>,
    by_name: HashMap<Arc<str>, u32>,
    /// Topics with a leaver, to compact at the end of the turn.
    to_compact: Vec<TopicId>,
    /// Topics with at least one local subscriber.
    with_local: usize,
    /// Local subscriptions, all topics and formats (compacted).
    subscriptions: usize,
}

impl Topics {
    /// The id of `name`, if it is interned here.
    pub fn lookup(&self, name: &str) -> Option<TopicId> {
        let &index = self.by_name.get(name)?;
        Some(TopicId {
            index,
            generation: self.entries[index as usize].generation,
        })
    }

    /// Interns `name` (already validated, its namespace resolved into `options`),
    /// returning its id.
    pub fn intern(&mut self, name: &str, options: TopicOptions) -> TopicId {
        if let Some(id) = self.lookup(name) {
            return id;
        }
        self.intern_shared(Arc::from(name), options)
    }

    /// Interns a name that is already shared (an announcement from another shard): the
    /// table keeps the same allocation.
    pub fn intern_shared(&mut self, name: Arc<str>, options: TopicOptions) -> TopicId {
        if let Some(id) = self.lookup(&name) {
            return id;
        }
        let topic = Topic {
            name: Arc::clone(&name),
            options,
            subs: Default::default(),
            leaving: Vec::new(),
            remote: Vec::new(),
            batch: NO_BATCH,
            home: 0,
            history: false,
            gates: Vec::new(),
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize].topic = Some(topic);
                i
            }
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    topic: Some(topic),
                });
                (self.entries.len() - 1) as u32
            }
        };
        self.by_name.insert(name, index);
        TopicId {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// The topic `id` names, unless it was dropped since.
    #[inline]
    pub fn get(&self, id: TopicId) -> Option<&Topic> {
        let e = self.entries.get(id.index as usize)?;
        if e.generation != id.generation {
            return None;
        }
        e.topic.as_ref()
    }

    /// Every interned topic (the backend API's listings; not on any message path).
    pub fn iter(&self) -> impl Iterator<Item = &Topic> {
        self.entries.iter().filter_map(|e| e.topic.as_ref())
    }

    /// Mutable [`Topics::get`].
    #[inline]
    pub fn get_mut(&mut self, id: TopicId) -> Option<&mut Topic> {
        let e = self.entries.get_mut(id.index as usize)?;
        if e.generation != id.generation {
            return None;
        }
        e.topic.as_mut()
    }

    /// Adds `slot` as a `format` subscriber of `id`. The caller makes sure a slot joins a
    /// topic once per format (a connection keeps its own list).
    pub fn join(&mut self, id: TopicId, slot: u32, format: Format) -> InterestChange {
        let Some(t) = self.get_mut(id) else {
            return InterestChange::None;
        };
        // Rejoining in the turn it left: the slot is still in the list.
        if let Some(i) = t.leaving.iter().position(|&l| l == (slot, format)) {
            t.leaving.swap_remove(i);
            return InterestChange::None;
        }
        let was_empty = t.local() == 0;
        t.subs[format as usize].push(slot);
        self.subscriptions += 1;
        if was_empty {
            self.with_local += 1;
            InterestChange::Gained
        } else {
            InterestChange::None
        }
    }

    /// Records that `slot` leaves `id`'s `format` list; applied by [`Topics::compact`].
    /// Leaving twice, or leaving a topic that was dropped, is harmless.
    pub fn leave(&mut self, id: TopicId, slot: u32, format: Format) {
        let Some(t) = self.get_mut(id) else {
            return;
        };
        let first = t.leaving.is_empty();
        t.leaving.push((slot, format));
        if first {
            self.to_compact.push(id);
        }
    }

    /// Applies the pending leaves of `id` in one pass per list. Returns whether the last
    /// local subscriber left (the caller withdraws its interest); drops the topic when
    /// nothing refers to it any more.
    pub fn compact(&mut self, id: TopicId) -> InterestChange {
        let Some(t) = self.get_mut(id) else {
            return InterestChange::None;
        };
        if t.leaving.is_empty() {
            return InterestChange::None;
        }
        let before = t.local();
        let mut leaving = std::mem::take(&mut t.leaving);
        leaving.sort_unstable_by_key(|&(s, f)| (f as u8, s));
        for format in Format::ALL {
            let from = leaving.partition_point(|&(_, f)| (f as u8) < format as u8);
            let to = leaving.partition_point(|&(_, f)| (f as u8) <= format as u8);
            let gone = &leaving[from..to];
            if gone.is_empty() {
                continue;
            }
            t.subs[format as usize]
                .retain(|s| gone.binary_search_by_key(s, |&(slot, _)| slot).is_err());
        }
        if !t.gates.is_empty() {
            t.gates.retain(|g| {
                leaving
                    .binary_search_by_key(&(g.format as u8, g.slot), |&(s, f)| (f as u8, s))
                    .is_err()
            });
        }
        leaving.clear();
        t.leaving = leaving;
        let after = t.local();
        self.subscriptions -= before - after;
        if before != 0 && after == 0 {
            self.with_local -= 1;
            self.drop_if_unused(id);
            InterestChange::Lost
        } else {
            InterestChange::None
        }
    }

    /// The topics with pending leaves, to pass to [`Topics::compact`] (the list is taken).
    pub fn take_to_compact(&mut self) -> Vec<TopicId> {
        std::mem::take(&mut self.to_compact)
    }

    /// Gives back the (emptied) list from [`Topics::take_to_compact`], for reuse.
    pub fn restore_to_compact(&mut self, mut list: Vec<TopicId>) {
        list.clear();
        if self.to_compact.is_empty() {
            self.to_compact = list;
        }
    }

    /// Records which id shard `shard` gave `id`'s topic (`None`: it has no subscriber any
    /// more); drops the topic when nothing refers to it.
    pub fn set_remote(&mut self, id: TopicId, shard: u16, theirs: Option<TopicId>) {
        let Some(t) = self.get_mut(id) else {
            return;
        };
        let at = t.remote.iter().position(|&(s, _)| s == shard);
        match (at, theirs) {
            (Some(i), Some(their)) => t.remote[i].1 = their,
            (None, Some(their)) => t.remote.push((shard, their)),
            (Some(i), None) => {
                t.remote.swap_remove(i);
            }
            (None, None) => {}
        }
        self.drop_if_unused(id);
    }

    /// Drops `id`'s topic if it has no local subscriber, no remote interest, no pending
    /// leave and no open batch (the batcher calls this when it closes one).
    pub fn drop_if_unused(&mut self, id: TopicId) {
        let Some(e) = self.entries.get_mut(id.index as usize) else {
            return;
        };
        if e.generation != id.generation {
            return;
        }
        let unused = e.topic.as_ref().is_some_and(|t| {
            t.local() == 0
                && t.remote.is_empty()
                && t.leaving.is_empty()
                && t.batch == NO_BATCH
                && !t.history
        });
        if !unused {
            return;
        }
        if let Some(t) = e.topic.take() {
            self.by_name.remove(&t.name);
        }
        e.generation = e.generation.wrapping_add(1);
        self.free.push(id.index);
    }

    /// Topics with at least one local subscriber.
    pub fn len(&self) -> usize {
        self.with_local
    }

    /// True when no topic has a local subscriber.
    pub fn is_empty(&self) -> bool {
        self.with_local == 0
    }

    /// Topics interned here, including those kept only for other shards' interest.
    pub fn interned(&self) -> usize {
        self.by_name.len()
    }

    /// Local subscriptions on this shard (compacted).
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
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
    fn join_leave_and_interest() {
        let mut t = Topics::default();
        let x = t.intern("x", TopicOptions::OPEN);
        assert_eq!(t.intern("x", TopicOptions::OPEN), x, "interned once");
        assert_eq!(t.join(x, 1, Format::Plain), InterestChange::Gained);
        assert_eq!(t.join(x, 2, Format::Mux), InterestChange::None);
        assert_eq!((t.len(), t.subscriptions()), (1, 2));
        t.leave(x, 1, Format::Plain);
        t.leave(x, 1, Format::Plain);
        assert_eq!(t.take_to_compact(), vec![x], "listed once");
        assert_eq!(t.compact(x), InterestChange::None);
        assert_eq!(
            t.get(x).map(|t| t.subscribers(Format::Mux).to_vec()),
            Some(vec![2])
        );
        t.leave(x, 2, Format::Mux);
        assert_eq!(t.compact(x), InterestChange::Lost);
        assert!(t.get(x).is_none(), "dropped with its last subscriber");
        assert!(t.is_empty() && t.subscriptions() == 0 && t.interned() == 0);
        let y = t.intern("y", TopicOptions::OPEN);
        assert_ne!(y, x, "a reused index has a new generation");
        assert!(t.get(x).is_none());
    }

    #[test]
    fn rejoining_in_the_same_turn_keeps_the_subscription() {
        let mut t = Topics::default();
        let x = t.intern("x", TopicOptions::OPEN);
        t.join(x, 5, Format::Mux);
        t.leave(x, 5, Format::Mux);
        assert_eq!(t.join(x, 5, Format::Mux), InterestChange::None);
        assert_eq!(t.compact(x), InterestChange::None);
        assert_eq!(
            t.get(x).map(|t| t.subscribers(Format::Mux).to_vec()),
            Some(vec![5])
        );
        assert_eq!(t.subscriptions(), 1);
    }

    #[test]
    fn remote_interest_keeps_a_topic() {
        let mut t = Topics::default();
        let x = t.intern_shared(Arc::from("x"), TopicOptions::OPEN);
        let theirs = TopicId {
            index: 9,
            generation: 3,
        };
        t.set_remote(x, 1, Some(theirs));
        assert_eq!(t.get(x).map(|t| t.remote.clone()), Some(vec![(1, theirs)]));
        assert!(t.is_empty(), "no local subscriber");
        t.set_remote(x, 1, None);
        assert!(t.get(x).is_none(), "dropped when no shard is interested");
    }

    #[test]
    fn compaction_is_one_pass_per_list() {
        let mut t = Topics::default();
        let x = t.intern("x", TopicOptions::OPEN);
        for s in 0..10_000 {
            t.join(x, s, Format::Plain);
        }
        for s in (0..10_000).step_by(2) {
            t.leave(x, s, Format::Plain);
        }
        t.compact(x);
        let left = t.get(x).map(|t| t.subscribers(Format::Plain).to_vec());
        assert_eq!(left, Some((1..10_000).step_by(2).collect::<Vec<u32>>()));
        assert_eq!(t.subscriptions(), 5_000);
    }
}
