//! The cross-shard fan-out bus: one lock-free inbox per shard, and wake-ups that cost at
//! most one per target shard per loop turn.
//!
//! A publish is framed once (a [`Bytes`] shared by reference count); the publishing shard
//! pushes one [`BusMsg`] into every other shard's inbox. Inboxes are crossbeam's
//! [`SegQueue`] (lock-free, well kept: no reason to hand-write one), bounded here in bytes
//! (`--max-inbox-bytes`): a push that would take an inbox past its bound is refused
//! ([`Pushed::Full`]) and the sender counts the batch as dropped for that shard, so a
//! stalled shard costs at most the bound in memory and never blocks the others. An empty
//! inbox always takes one batch. [`InboxGauges`] say what each inbox holds now. Each inbox
//! has a `notified` flag: a sender wakes the target only when it flips the flag from false
//! to true, and the target clears it *before* draining, so a message pushed during a drain
//! is either seen by that drain or causes a fresh wake-up. FIFO per queue gives the ordering
//! guarantee: per publisher and topic, every shard sees messages in publish order.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use crate::io::WakeTarget;

/// One published message on its way to another shard.
#[derive(Debug, Clone)]
pub struct BusMsg {
    /// Topic name; shards look it up in their own topic table.
    pub topic: Arc<str>,
    /// Complete WebSocket frames, built once by the publisher's shard: all the messages
    /// published on `topic` in one loop turn of that shard, back to back.
    pub frame: Bytes,
    /// How many messages `frame` holds.
    pub count: u32,
}

/// What one inbox holds now (gauges for `/metrics`), written by its senders and its owner.
#[derive(Debug, Default)]
pub struct InboxGauges {
    /// Messages (not batches) waiting.
    pub messages: AtomicU64,
    /// Frame bytes waiting: what the bound is checked against.
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
        let len = msg.frame.len();
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
            .fetch_add(u64::from(msg.count), Ordering::Relaxed);
        inbox.queue.push(msg);
        inbox.pushed.fetch_add(1, Ordering::Relaxed);
        if inbox.notified.swap(true, Ordering::AcqRel) {
            Pushed::Queued
        } else {
            Pushed::Wake
        }
    }

    /// Queues `msg` for shard `to` from a thread that is not a shard (the broker bridge, a
    /// test) and wakes that shard at once if this push is the first since its last drain
    /// (one system call: see [`WakeTarget::wake_from_any_thread`]). Shards use [`Bus::push`]
    /// and batch their wake-ups into their own next submission.
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
            inbox
                .gauges
                .bytes
                .fetch_sub(m.frame.len(), Ordering::AcqRel);
            inbox
                .gauges
                .messages
                .fetch_sub(u64::from(m.count), Ordering::Relaxed);
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

    fn msg(i: u8) -> BusMsg {
        BusMsg {
            topic: Arc::from("t"),
            frame: Bytes::from(vec![i]),
            count: 1,
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
        assert_eq!(bus.drain(1, |m| got.push(m.frame[0])), 2);
        assert_eq!(got, [1, 2]);
        assert_eq!(
            bus.push(1, msg(3)),
            Pushed::Wake,
            "after a drain the next push wakes again"
        );
    }

    #[test]
    fn inboxes_are_bounded_in_bytes_and_gauged() {
        let gauges = [Arc::new(InboxGauges::default())];
        let bus = Bus::with_limit(1, 10, &gauges);
        let big = |n: usize| BusMsg {
            topic: Arc::from("t"),
            frame: Bytes::from(vec![0u8; n]),
            count: 2,
        };
        assert_eq!(
            bus.push(0, big(25)),
            Pushed::Wake,
            "an empty inbox takes one batch"
        );
        assert_eq!(bus.push(0, big(1)), Pushed::Full);
        assert_eq!(gauges[0].bytes.load(Ordering::Relaxed), 25);
        assert_eq!(gauges[0].messages.load(Ordering::Relaxed), 2);
        assert_eq!(bus.drain(0, |_| {}), 1);
        assert_eq!(gauges[0].bytes.load(Ordering::Relaxed), 0);
        assert_eq!(gauges[0].messages.load(Ordering::Relaxed), 0);
        assert_eq!(bus.push(0, big(6)), Pushed::Wake);
        assert_eq!(bus.push(0, big(4)), Pushed::Queued, "up to the bound");
        assert_eq!(bus.push(0, big(1)), Pushed::Full, "past it");
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
                        BusMsg {
                            topic: Arc::from("t"),
                            frame: Bytes::copy_from_slice(&i.to_le_bytes()),
                            count: 1,
                        },
                    );
                }
            })
        };
        let mut next = 0u32;
        while next < 10_000 {
            bus.drain(0, |m| {
                let v = u32::from_le_bytes([m.frame[0], m.frame[1], m.frame[2], m.frame[3]]);
                assert_eq!(v, next, "FIFO per producer");
                next += 1;
            });
        }
        producer.join().expect("producer thread");
    }
}
