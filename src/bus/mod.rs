//! The cross-shard bus: typed messages between shards, one lock-free inbox per shard, and
//! wake-ups that cost at most one per target shard per loop turn.
//!
//! What travels ([`BusMsg`]): published batches, addressed with the receiving shard's own
//! topic id and carrying their origin and message boundaries; interest announcements
//! ("shard N has, or no longer has, subscribers of this topic, under this id"), from which
//! every shard keeps the list of shards a topic's batches must go to; batches named by
//! topic, on their way to the topic's home shard (which numbers them: one order per
//! topic), from other shards and from threads that are not shards; and the join
//! questions and answers of history and recovery. A batch therefore goes only to shards
//! with a subscriber of its topic (and to its home): a shard without one receives nothing
//! for it (see `ringcast_bus_messages_in_total` per shard).
//!
//! Inboxes are crossbeam's [`SegQueue`] (lock-free, well kept: no reason to hand-write one),
//! bounded here by weight (`--max-inbox-bytes`; a batch weighs its frame bytes, an
//! announcement its name plus a fixed overhead): a push that would take an inbox past its
//! bound is refused ([`Pushed::Full`]) and the sender counts a batch as dropped for that
//! shard, or keeps an announcement to retry (coalesced per topic, so what it keeps is
//! bounded by its topics), so a stalled shard costs at most the bound in memory and never
//! blocks the others. An empty inbox always takes one message. [`InboxGauges`] say what
//! each inbox holds now. Each inbox has a `notified` flag: a sender wakes the target only
//! when it flips the flag from false to true, and the target clears it *before* draining,
//! so a message pushed during a drain is either seen by that drain or causes a fresh
//! wake-up. FIFO per queue gives the ordering guarantee: per publisher and topic, every
//! shard sees messages in publish order, and a shard sees another's announcements in the
//! order they were made.

mod query;

pub use query::{Answer, Query};

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_queue::SegQueue;

use crate::io::WakeTarget;
use crate::pubsub::join::{JoinReply, Want};
use crate::pubsub::{Batch, TopicId};

/// What an announcement weighs against the inbox bound, besides its name.
const ANNOUNCEMENT_WEIGHT: usize = 64;

/// One message between shards (or from a thread that is not a shard).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BusMsg {
    /// A batch published on another shard, for a topic the receiver announced interest in.
    Batch {
        /// The receiver's id of the topic (from its announcement).
        topic: TopicId,
        /// The frames, their boundaries and their origin; shared by every receiver.
        batch: Arc<Batch>,
    },
    /// A batch for the home shard of the topic it names: published on another shard, or
    /// by a thread that is not a shard. The home looks the name up once per batch, numbers
    /// the messages and fans them out (or drops them when the topic has no subscriber and
    /// no history).
    Named {
        /// The topic's name.
        topic: Arc<str>,
        /// The frames, their boundaries and their origin.
        batch: Arc<Batch>,
    },
    /// Shard `from` has subscribers of `topic` under id `id`, or (`None`) no longer has any.
    Interest {
        /// The announcing shard.
        from: u16,
        /// The topic's name (shared, not copied).
        topic: Arc<str>,
        /// The announcer's id for the topic, or `None` when its last subscriber left.
        id: Option<TopicId>,
    },
    /// Shard `from` asks `topic`'s home shard for a joining subscriber's start (history
    /// and recovery: [`crate::pubsub::join`]); answered with [`BusMsg::Joined`].
    Join {
        /// The asking shard.
        from: u16,
        /// The asker's number for the join.
        id: u32,
        /// The topic.
        topic: Arc<str>,
        /// What the subscriber wants.
        want: Want,
    },
    /// The home shard's answer to join `id` of the receiving shard.
    Joined {
        /// The asker's number for the join.
        id: u32,
        /// Where the topic stands, and the publications to replay.
        reply: JoinReply,
    },
    /// A question from shard `from` (the backend API), answered with [`BusMsg::Answer`].
    Query {
        /// The asking shard.
        from: u16,
        /// The asker's number for it.
        id: u32,
        /// What it asks.
        query: Query,
    },
    /// An answer to query `id` of the receiving shard.
    Answer {
        /// The asker's number for the query.
        id: u32,
        /// What this shard knows.
        answer: Answer,
    },
    /// From the broker bridge, for `topic`'s home: the broker was lost while the topic had
    /// subscribers here, so its history starts a new epoch (recovering clients are told
    /// `recovered: false` instead of being given a gap).
    NewEpoch {
        /// The topic.
        topic: Arc<str>,
    },
    /// From the broker bridge: the answer to the home's history question `cookie`
    /// (`None`: the broker could not answer).
    Fetched {
        /// The home's number for the question.
        cookie: u64,
        /// What the broker has.
        read: Option<crate::cluster::link::Fetched>,
    },
}

impl BusMsg {
    /// What the message weighs against the inbox bound.
    fn weight(&self) -> usize {
        match self {
            BusMsg::Batch { batch, .. } | BusMsg::Named { batch, .. } => batch.frames.len(),
            BusMsg::Interest { topic, .. } => ANNOUNCEMENT_WEIGHT + topic.len(),
            BusMsg::Join { topic, .. } => ANNOUNCEMENT_WEIGHT + topic.len(),
            // The frames are shared with the home shard's history: what the answer adds
            // is its handles.
            BusMsg::Joined { reply, .. } => ANNOUNCEMENT_WEIGHT + 48 * reply.publications.len(),
            BusMsg::Query { query, .. } => query.weight(),
            BusMsg::Answer { answer, .. } => answer.weight(),
            BusMsg::NewEpoch { topic } => ANNOUNCEMENT_WEIGHT + topic.len(),
            BusMsg::Fetched { read, .. } => {
                ANNOUNCEMENT_WEIGHT
                    + read.as_ref().map_or(0, |r| {
                        r.publications.iter().map(|p| p.frame.len() + 48).sum()
                    })
            }
        }
    }

    /// The published messages it carries.
    fn messages(&self) -> u64 {
        match self {
            BusMsg::Batch { batch, .. } | BusMsg::Named { batch, .. } => u64::from(batch.count()),
            BusMsg::Interest { .. }
            | BusMsg::Join { .. }
            | BusMsg::Joined { .. }
            | BusMsg::Query { .. }
            | BusMsg::Answer { .. }
            | BusMsg::NewEpoch { .. }
            | BusMsg::Fetched { .. } => 0,
        }
    }
}

/// What one inbox holds now (gauges for `/metrics`), written by its senders and its owner.
#[derive(Debug, Default)]
pub struct InboxGauges {
    /// Messages (not batches) waiting.
    pub messages: AtomicU64,
    /// Weight waiting (frame bytes, plus announcements): what the bound is checked against.
    pub bytes: AtomicUsize,
}

/// What [`Bus::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; the caller must wake the target (the first push since its last drain).
    Wake,
    /// Queued; the target is already woken.
    Queued,
    /// Refused: the inbox is at `--max-inbox-bytes`. The caller counts it as dropped.
    Full,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: SegQueue<BusMsg>,
    notified: AtomicBool,
    target: OnceLock<WakeTarget>,
    /// Messages pushed into this inbox, for metrics.
    pushed: AtomicU64,
    gauges: Arc<InboxGauges>,
}

/// The inboxes of all shards.
#[derive(Debug)]
pub struct Bus {
    inboxes: Vec<Inbox>,
    max_bytes: usize,
}

/// Default bound of one inbox, in frame bytes (`--max-inbox-bytes`).
pub const DEFAULT_MAX_INBOX_BYTES: usize = 64 << 20;

impl Bus {
    /// A bus for `shards` shards with the default inbox bound.
    pub fn new(shards: usize) -> Arc<Self> {
        Self::with_limit(shards, DEFAULT_MAX_INBOX_BYTES, &[])
    }

    /// A bus for `shards` shards whose inboxes hold at most `max_bytes` of frames each;
    /// `gauges[i]` (when given) is where shard `i`'s inbox reports what it holds.
    pub fn with_limit(shards: usize, max_bytes: usize, gauges: &[Arc<InboxGauges>]) -> Arc<Self> {
        Arc::new(Bus {
            inboxes: (0..shards)
                .map(|i| Inbox {
                    gauges: gauges.get(i).cloned().unwrap_or_default(),
                    ..Inbox::default()
                })
                .collect(),
            max_bytes,
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Records how shard `shard` is woken (set once, by the shard itself at start).
    pub fn set_target(&self, shard: usize, target: WakeTarget) {
        if let Some(inbox) = self.inboxes.get(shard) {
            let _ = inbox.target.set(target);
        }
    }

    /// Where to send shard `shard`'s wake-up, once it has started.
    pub fn target(&self, shard: usize) -> Option<&WakeTarget> {
        self.inboxes.get(shard).and_then(|i| i.target.get())
    }

    /// Queues `msg` for shard `to`, unless its inbox is full (see the module doc).
    pub fn push(&self, to: usize, msg: BusMsg) -> Pushed {
        let Some(inbox) = self.inboxes.get(to) else {
            return Pushed::Queued;
        };
        let len = msg.weight();
        // Reserve first, so that concurrent senders cannot all pass the check: the bound
        // holds up to one batch per sender racing at the edge.
        let before = inbox.gauges.bytes.fetch_add(len, Ordering::AcqRel);
        if before != 0 && before + len > self.max_bytes {
            inbox.gauges.bytes.fetch_sub(len, Ordering::AcqRel);
            return Pushed::Full;
        }
        inbox
            .gauges
            .messages
            .fetch_add(msg.messages(), Ordering::Relaxed);
        inbox.queue.push(msg);
        inbox.pushed.fetch_add(1, Ordering::Relaxed);
        if inbox.notified.swap(true, Ordering::AcqRel) {
            Pushed::Queued
        } else {
            Pushed::Wake
        }
    }

    /// Publishes one message on `topic` from a thread that is not a shard (the broker
    /// bridge, a test): framed once, pushed to every shard (a thread outside the shards does
    /// not see their interest yet; a shard without subscribers drops it after one lookup),
    /// each woken at once. Returns how many shards refused it (inbox full).
    pub fn publish_from_any_thread(
        &self,
        topic: &str,
        opcode: crate::proto::frame::OpCode,
        payload: &[u8],
    ) -> usize {
        let batch = Arc::new(Batch::single(
            crate::pubsub::Origin::External,
            opcode,
            payload,
        ));
        // The topic's home numbers it and fans it out to every shard with a subscriber.
        let home = usize::from(crate::pubsub::home_shard(topic, self.shards()));
        let msg = BusMsg::Named {
            topic: Arc::from(topic),
            batch,
        };
        usize::from(self.push_from_any_thread(home, msg) == Pushed::Full)
    }

    /// Queues `msg` for shard `to` from a thread that is not a shard and wakes that shard
    /// at once if this push is the first since its last drain (one system call: see
    /// [`WakeTarget::wake_from_any_thread`]). Shards use [`Bus::push`] and batch their
    /// wake-ups into their own next submission.
    /// Returns what the push did; `Full` is the caller's to count as dropped.
    pub fn push_from_any_thread(&self, to: usize, msg: BusMsg) -> Pushed {
        let pushed = self.push(to, msg);
        if pushed == Pushed::Wake
            && let Some(target) = self.target(to)
        {
            target.wake_from_any_thread();
        }
        pushed
    }

    /// Takes every message queued for `me`, in order.
    pub fn drain(&self, me: usize, mut f: impl FnMut(BusMsg)) -> usize {
        let Some(inbox) = self.inboxes.get(me) else {
            return 0;
        };
        inbox.notified.store(false, Ordering::SeqCst);
        let mut n = 0;
        while let Some(m) = inbox.queue.pop() {
            inbox.gauges.bytes.fetch_sub(m.weight(), Ordering::AcqRel);
            inbox
                .gauges
                .messages
                .fetch_sub(m.messages(), Ordering::Relaxed);
            f(m);
            n += 1;
        }
        n
    }

    /// Messages waiting in `shard`'s inbox now (a gauge for metrics).
    pub fn depth(&self, shard: usize) -> usize {
        self.inboxes.get(shard).map_or(0, |i| i.queue.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Origin;
    use bytes::Bytes;

    fn batch(bytes: Vec<u8>, count: usize) -> Arc<Batch> {
        let len = bytes.len() as u32;
        Arc::new(Batch::new(
            Origin::Shard(0),
            Bytes::from(bytes),
            vec![len; count].into_boxed_slice(),
        ))
    }

    fn msg(i: u8) -> BusMsg {
        BusMsg::Named {
            topic: Arc::from("t"),
            batch: batch(vec![i], 1),
        }
    }

    fn first_byte(m: &BusMsg) -> u8 {
        match m {
            BusMsg::Batch { batch, .. } | BusMsg::Named { batch, .. } => batch.frames[0],
            BusMsg::Interest { .. }
            | BusMsg::Join { .. }
            | BusMsg::Joined { .. }
            | BusMsg::Query { .. }
            | BusMsg::Answer { .. }
            | BusMsg::NewEpoch { .. }
            | BusMsg::Fetched { .. } => 0,
        }
    }

    #[test]
    fn wakes_once_until_drained() {
        let bus = Bus::new(2);
        assert_eq!(bus.push(1, msg(1)), Pushed::Wake, "first push wakes");
        assert_eq!(
            bus.push(1, msg(2)),
            Pushed::Queued,
            "second push before the drain does not"
        );
        let mut got = Vec::new();
        assert_eq!(bus.drain(1, |m| got.push(first_byte(&m))), 2);
        assert_eq!(got, [1, 2]);
        assert_eq!(
            bus.push(1, msg(3)),
            Pushed::Wake,
            "after a drain the next push wakes again"
        );
    }

    #[test]
    fn inboxes_are_bounded_by_weight_and_gauged() {
        let gauges = [Arc::new(InboxGauges::default())];
        let bus = Bus::with_limit(1, 100, &gauges);
        let big = |n: usize| BusMsg::Named {
            topic: Arc::from("t"),
            batch: batch(vec![0u8; n], 2),
        };
        assert_eq!(
            bus.push(0, big(250)),
            Pushed::Wake,
            "an empty inbox takes one batch"
        );
        assert_eq!(bus.push(0, big(1)), Pushed::Full);
        assert_eq!(gauges[0].bytes.load(Ordering::Relaxed), 250);
        assert_eq!(gauges[0].messages.load(Ordering::Relaxed), 2);
        assert_eq!(bus.drain(0, |_| {}), 1);
        assert_eq!(gauges[0].bytes.load(Ordering::Relaxed), 0);
        assert_eq!(gauges[0].messages.load(Ordering::Relaxed), 0);
        assert_eq!(bus.push(0, big(60)), Pushed::Wake);
        assert_eq!(bus.push(0, big(40)), Pushed::Queued, "up to the bound");
        assert_eq!(bus.push(0, big(1)), Pushed::Full, "past it");
        assert_eq!(bus.drain(0, |_| {}), 2);
        let interest = || BusMsg::Interest {
            from: 1,
            topic: Arc::from("t"),
            id: None,
        };
        assert_eq!(bus.push(0, interest()), Pushed::Wake);
        assert_eq!(
            gauges[0].bytes.load(Ordering::Relaxed),
            ANNOUNCEMENT_WEIGHT + 1,
            "announcements weigh too"
        );
        assert_eq!(bus.push(0, interest()), Pushed::Full);
    }

    #[test]
    fn unknown_shard_is_ignored() {
        let bus = Bus::new(1);
        assert_eq!(bus.push(5, msg(1)), Pushed::Queued);
        assert_eq!(bus.drain(5, |_| {}), 0);
    }

    #[test]
    fn order_is_kept_across_threads() {
        let bus = Bus::new(1);
        let producer = {
            let bus = Arc::clone(&bus);
            std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    bus.push(
                        0,
                        BusMsg::Named {
                            topic: Arc::from("t"),
                            batch: batch(i.to_le_bytes().to_vec(), 1),
                        },
                    );
                }
            })
        };
        let mut next = 0u32;
        while next < 10_000 {
            bus.drain(0, |m| {
                let BusMsg::Named { batch, .. } = m else {
                    panic!("unexpected message");
                };
                let f = &batch.frames;
                let v = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
                assert_eq!(v, next, "FIFO per producer");
                next += 1;
            });
        }
        producer.join().expect("producer thread");
    }
}
