//! What the shards and the bridge thread share: the outbound queue of publications and
//! interest changes, the broker's state, and the counters (no async runtime here, so the
//! shards compile without one).
//!
//! A home shard pushes each batch it must send to the broker once ([`Link::publish`]) and
//! each change of this node's interest in a topic ([`Link::interest`]); the bridge drains
//! both in order. Pushes wake the bridge at most once per drain (the same `notified` flag
//! as the bus), so a busy turn costs one wake-up however many batches it sent.
//!
//! Bounds: publications are weighed by their frame bytes against `--broker-max-pending`;
//! past it, and whenever the broker is down, a publication is not queued but counted in
//! `ringcast_broker_dropped_total` (local delivery goes on: only the other nodes miss it).
//! Interest changes are never dropped (the bridge would subscribe to the wrong set): each
//! is one change of one topic's node-wide interest, which the home makes at most once per
//! subscribe or last unsubscribe on the node, and the bridge drains them every loop.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_queue::SegQueue;

use super::url::BrokerKind;

/// What the broker keeps of a topic with history (its namespace's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Publications kept (`history_size`).
    pub size: u32,
    /// Kept this long after the last publication (`history_ttl`).
    pub ttl: std::time::Duration,
}
use crate::pubsub::Batch;

/// What a home shard sends to the bridge.
#[derive(Debug)]
pub enum Outbound {
    /// A batch to publish on the broker (framed; the bridge takes the payloads out).
    Publish {
        /// The topic.
        topic: Arc<str>,
        /// The batch, shared with the local subscribers.
        batch: Arc<Batch>,
        /// The topic's history, when the broker numbers and keeps it (Redis): the batch
        /// comes back with its offset and epoch and is delivered then.
        history: Option<Keep>,
    },
    /// A home shard asks for a topic's history at the broker (Redis, a subscriber joins
    /// a topic the broker numbers); answered with [`crate::bus::BusMsg::Fetched`].
    Fetch {
        /// The asking home shard.
        home: u16,
        /// Its number for the question.
        cookie: u64,
        /// The topic.
        topic: Arc<str>,
        /// What to read.
        span: Span,
    },
    /// The node gained (`true`) or lost its first/last subscriber of `topic`.
    Interest {
        /// The topic.
        topic: Arc<str>,
        /// Whether the node has subscribers now.
        on: bool,
    },
}

/// What a [`Outbound::Fetch`] reads of a topic's history at the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// Only the epoch and the latest offset.
    Top,
    /// The publications after `since`, at most `limit`, oldest first.
    After {
        /// Offsets above this one.
        since: u64,
        /// At most this many.
        limit: usize,
    },
    /// The last `n` publications.
    Last(usize),
}

/// The broker's answer to a [`Outbound::Fetch`]: where the topic stands and the
/// publications read, framed by the bridge (once, off the shards).
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The topic's epoch at the broker (the read creates one when the topic has none).
    pub epoch: Option<crate::pubsub::history::Epoch>,
    /// The latest offset.
    pub top: u64,
    /// The publications read, in offset order, contiguous.
    pub publications: Vec<crate::pubsub::history::Stored>,
}

/// Counters of the bridge and the link (multi-writer: bumped on drops and per broker
/// message, never per delivery).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Publications (messages) sent to the broker.
    pub published: AtomicU64,
    /// Broker messages (envelopes) sent.
    pub envelopes_out: AtomicU64,
    /// Messages received from the broker and handed to a home shard.
    pub received: AtomicU64,
    /// Messages that could not reach the broker (down, queue full, send failed).
    pub dropped: AtomicU64,
    /// Messages from the broker a shard's inbox refused (full).
    pub inbound_dropped: AtomicU64,
    /// Broker messages refused, by [`super::envelope::Bad`] reason.
    pub bad: [AtomicU64; 5],
    /// Connections lost (and reconnections started).
    pub disconnects: AtomicU64,
    /// Topics whose epoch was changed after an outage.
    pub epoch_resets: AtomicU64,
    /// Topics subscribed at the broker now (gauge).
    pub subscribed: AtomicU64,
    /// Publications waiting for the bridge, in frame bytes (gauge).
    pub pending_bytes: AtomicUsize,
}

/// The shared state between the shards and the bridge of one node.
pub struct Link {
    /// This node's id (logs, metrics, envelopes).
    pub node: Arc<str>,
    /// Which broker.
    pub kind: BrokerKind,
    /// `--broker-required`: HTTP publish answers 503 while the broker is down, `/ready` too.
    pub required: bool,
    publications: SegQueue<Outbound>,
    interest: SegQueue<Outbound>,
    max_bytes: usize,
    notified: AtomicBool,
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
    up: AtomicBool,
    /// The counters.
    pub stats: LinkStats,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("node", &self.node)
            .field("kind", &self.kind)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link for node `node`, not yet up; `max_bytes`: `--broker-max-pending`.
    pub fn new(node: Arc<str>, kind: BrokerKind, required: bool, max_bytes: usize) -> Arc<Link> {
        Arc::new(Link {
            node,
            kind,
            required,
            publications: SegQueue::new(),
            interest: SegQueue::new(),
            max_bytes,
            notified: AtomicBool::new(false),
            waker: OnceLock::new(),
            up: AtomicBool::new(false),
            stats: LinkStats::default(),
        })
    }

    /// How the bridge is woken (set once, by the bridge, before it reads the queues).
    pub fn set_waker(&self, w: Box<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(w);
        // Anything pushed before the waker existed is seen by the bridge's first drain.
    }

    /// Whether the broker is reachable now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Set by the bridge when it connects or loses the broker.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// Whether the broker numbers the publications of a topic with history (Redis): they
    /// are delivered when they come back, so every node shows the same offsets.
    pub fn sequences_history(&self) -> bool {
        self.kind == BrokerKind::Redis
    }

    /// Queues `batch` for the broker, or counts it as dropped (broker down, queue at its
    /// bound). Returns whether it was queued.
    pub fn publish(&self, topic: Arc<str>, batch: Arc<Batch>, history: Option<Keep>) -> bool {
        let count = u64::from(batch.count());
        if !self.is_up() {
            self.stats.dropped.fetch_add(count, Ordering::Relaxed);
            return false;
        }
        let len = batch.frames.len();
        let before = self.stats.pending_bytes.fetch_add(len, Ordering::AcqRel);
        if before != 0 && before + len > self.max_bytes {
            self.stats.pending_bytes.fetch_sub(len, Ordering::AcqRel);
            self.stats.dropped.fetch_add(count, Ordering::Relaxed);
            return false;
        }
        self.publications.push(Outbound::Publish {
            topic,
            batch,
            history,
        });
        self.wake();
        true
    }

    /// Asks the bridge for a topic's history (see [`Outbound::Fetch`]); `false` when the
    /// broker is down (the home answers from what it has).
    pub fn fetch(&self, home: u16, cookie: u64, topic: Arc<str>, span: Span) -> bool {
        if !self.is_up() {
            return false;
        }
        // In the ordered queue: after the interest change of the subscribe that asks, so
        // the bridge subscribes before it reads (nothing published in between is missed).
        self.interest.push(Outbound::Fetch {
            home,
            cookie,
            topic,
            span,
        });
        self.wake();
        true
    }

    /// Queues a change of this node's interest in `topic`.
    pub fn interest(&self, topic: Arc<str>, on: bool) {
        self.interest.push(Outbound::Interest { topic, on });
        self.wake();
    }

    fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel)
            && let Some(w) = self.waker.get()
        {
            w();
        }
    }

    /// For the bridge: takes every queued interest change, then every queued publication,
    /// in order (interest first, so a topic's subscription is made before the bridge
    /// waits on the publications).
    pub fn drain(&self, mut f: impl FnMut(Outbound)) -> usize {
        self.notified.store(false, Ordering::SeqCst);
        let mut n = 0;
        while let Some(m) = self.interest.pop() {
            f(m);
            n += 1;
        }
        while let Some(m) = self.publications.pop() {
            if let Outbound::Publish { batch, .. } = &m {
                self.stats
                    .pending_bytes
                    .fetch_sub(batch.frames.len(), Ordering::AcqRel);
            }
            f(m);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::OpCode;
    use crate::pubsub::Origin;

    fn batch(n: usize) -> Arc<Batch> {
        Arc::new(Batch::single(
            Origin::Shard(0),
            OpCode::Text,
            &vec![b'x'; n],
        ))
    }

    #[test]
    fn drops_while_down_and_past_the_bound() {
        let link = Link::new(Arc::from("n"), BrokerKind::Nats, false, 300);
        assert!(
            !link.publish(Arc::from("t"), batch(10), None),
            "down: dropped"
        );
        assert_eq!(link.stats.dropped.load(Ordering::Relaxed), 1);
        link.set_up(true);
        assert!(link.publish(Arc::from("t"), batch(200), None));
        assert!(
            !link.publish(Arc::from("t"), batch(200), None),
            "past the bound"
        );
        assert_eq!(link.stats.dropped.load(Ordering::Relaxed), 2);
        link.interest(Arc::from("t"), true);
        let mut order = Vec::new();
        link.drain(|m| {
            order.push(matches!(m, Outbound::Interest { .. }));
        });
        assert_eq!(order, [true, false], "interest first, then publications");
        assert_eq!(link.stats.pending_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn wakes_once_per_drain() {
        let link = Link::new(Arc::from("n"), BrokerKind::Redis, false, 1 << 20);
        let wakes = Arc::new(AtomicU64::new(0));
        let w = Arc::clone(&wakes);
        link.set_waker(Box::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        link.set_up(true);
        for _ in 0..5 {
            link.publish(Arc::from("t"), batch(1), None);
        }
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        assert_eq!(link.drain(|_| {}), 5);
        link.interest(Arc::from("t"), false);
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
    }
}
