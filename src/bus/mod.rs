//! The cross-shard fan-out bus: one lock-free inbox per shard, and wake-ups that cost at
//! most one per target shard per loop turn.
//!
//! A publish is framed once (a [`Bytes`] shared by reference count); the publishing shard
//! pushes one [`BusMsg`] into every other shard's inbox. Inboxes are crossbeam's
//! [`SegQueue`] (lock-free, unbounded, well kept: no reason to hand-write one). Each inbox
//! has a `notified` flag: a sender wakes the target only when it flips the flag from false
//! to true, and the target clears it *before* draining, so a message pushed during a drain
//! is either seen by that drain or causes a fresh wake-up. FIFO per queue gives the ordering
//! guarantee: per publisher and topic, every shard sees messages in publish order.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

#[derive(Debug, Default)]
struct Inbox {
    queue: SegQueue<BusMsg>,
    notified: AtomicBool,
    target: OnceLock<WakeTarget>,
    /// Messages pushed into this inbox, for metrics.
    pushed: AtomicU64,
}

/// The inboxes of all shards.
#[derive(Debug)]
pub struct Bus {
    inboxes: Vec<Inbox>,
}

impl Bus {
    /// A bus for `shards` shards.
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Bus {
            inboxes: (0..shards).map(|_| Inbox::default()).collect(),
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

    /// Queues `msg` for shard `to`. Returns true when the caller must wake that shard (the
    /// first push since its last drain).
    pub fn push(&self, to: usize, msg: BusMsg) -> bool {
        let Some(inbox) = self.inboxes.get(to) else {
            return false;
        };
        inbox.queue.push(msg);
        inbox.pushed.fetch_add(1, Ordering::Relaxed);
        !inbox.notified.swap(true, Ordering::AcqRel)
    }

    /// Queues `msg` for shard `to` from a thread that is not a shard (the broker bridge, a
    /// test) and wakes that shard at once if this push is the first since its last drain
    /// (one system call: see [`WakeTarget::wake_from_any_thread`]). Shards use [`Bus::push`]
    /// and batch their wake-ups into their own next submission.
    pub fn push_from_any_thread(&self, to: usize, msg: BusMsg) {
        if self.push(to, msg)
            && let Some(target) = self.target(to)
        {
            target.wake_from_any_thread();
        }
    }

    /// Takes every message queued for `me`, in order.
    pub fn drain(&self, me: usize, mut f: impl FnMut(BusMsg)) -> usize {
        let Some(inbox) = self.inboxes.get(me) else {
            return 0;
        };
        inbox.notified.store(false, Ordering::SeqCst);
        let mut n = 0;
        while let Some(m) = inbox.queue.pop() {
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
        assert!(bus.push(1, msg(1)), "first push wakes");
        assert!(
            !bus.push(1, msg(2)),
            "second push before the drain does not"
        );
        let mut got = Vec::new();
        assert_eq!(bus.drain(1, |m| got.push(m.frame[0])), 2);
        assert_eq!(got, [1, 2]);
        assert!(
            bus.push(1, msg(3)),
            "after a drain the next push wakes again"
        );
    }

    #[test]
    fn unknown_shard_is_ignored() {
        let bus = Bus::new(1);
        assert!(!bus.push(5, msg(1)));
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
