//! What a subscriber does with each stamped message: find the publisher's
//! sequence slot, classify the number (seq.rs), record latency, and, for the
//! probe subscriber of a topic, publish how far it got so closed-loop
//! publishers know how many of their messages are still in flight. In `chat`
//! every member is also a publisher: its own messages are set apart (the
//! server must not send them back unless it echoes) and counted, not checked.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::payload::{BLAST_FLAG, Stamp};
use crate::seq::{SeqCounts, SeqSlot, Verdict, unwrap_cyclic};

/// Per-thread context handed to every message check of one receive batch.
#[derive(Debug)]
pub struct CheckCtx<'a> {
    /// Receive time of the batch (CLOCK_MONOTONIC ns), read once per batch.
    pub now_ns: u64,
    /// Latency is recorded for messages sent in [start, end).
    pub window: (u64, u64),
    /// Latency histogram in nanoseconds (merged into the run total each second).
    pub hist: &'a mut Histogram<u64>,
    /// Per-publisher count of messages its probe subscriber has seen.
    pub acks: &'a [AtomicU64],
    /// Set when an ack moved (the worker then wakes the publisher thread).
    pub acked: bool,
}

/// The sequence state of one subscriber over the publishers of its topic.
#[derive(Debug)]
pub struct Checker {
    topic: usize,
    topics: usize,
    /// Slot of publisher j (j % topics == topic) at index j / topics.
    slots: Vec<SeqSlot>,
    /// The single blast stream of this connection: slot, cycle length, and the
    /// next expected number modulo the cycle (the fast path skips the division).
    blast: Option<(SeqSlot, u64, u64)>,
    /// Last publisher id seen and its slot index (skips the division by `topics`).
    last: Option<(u32, usize)>,
    /// Whether this subscriber reports acks for its topic's publishers.
    probe: bool,
    /// Whether this subscriber's latency counts (false for slow subscribers).
    record: bool,
    /// Whether to check at all (false for publisher connections draining broadcasts).
    enabled: bool,
    /// This connection's own publisher id (chat without echo): its messages must not come back.
    own: Option<u32>,
    /// Verdict totals.
    pub counts: SeqCounts,
    /// Messages that were not generator payloads or came from unknown publishers.
    pub foreign: u64,
    /// Messages from `own` that came back (an echo the server should not have sent).
    pub own_received: u64,
}

impl Checker {
    /// A subscriber of topic `topic` out of `topics`, with `publishers` publishers in total.
    pub fn new(topic: usize, topics: usize, publishers: usize, probe: bool, record: bool) -> Self {
        let topics = topics.max(1);
        let mine = if topic < publishers {
            (publishers - topic).div_ceil(topics)
        } else {
            0
        };
        Checker {
            topic,
            topics,
            slots: vec![SeqSlot::default(); mine],
            blast: None,
            last: None,
            probe,
            record,
            enabled: true,
            own: None,
            counts: SeqCounts::default(),
            foreign: 0,
            own_received: 0,
        }
    }

    /// Sets apart publisher `own` (this connection itself, in chat without echo): its
    /// messages are counted in `own_received` instead of being checked, and its slot
    /// is left out of [`Checker::progress`], so nothing of it is expected.
    pub fn excluding_own(mut self, own: u32) -> Self {
        self.own = Some(own);
        self
    }

    /// A checker that only counts (publisher connections).
    pub fn disabled() -> Self {
        let mut c = Checker::new(0, 1, 0, false, false);
        c.enabled = false;
        c
    }

    /// Next expected sequence number per publisher of this topic: (publisher id, next).
    pub fn progress(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let own = self.own.map(|o| o as usize);
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i * self.topics + self.topic, s.next()))
            .filter(move |&(pid, _)| Some(pid) != own)
    }

    /// Whether this subscriber saw a blast stream.
    pub fn saw_blast(&self) -> bool {
        self.blast.is_some()
    }

    /// Records one message that was too short or unstamped.
    #[inline]
    pub fn foreign_message(&mut self) {
        if self.enabled {
            self.foreign += 1;
        }
    }

    /// Checks one stamped message.
    #[inline]
    pub fn check(&mut self, st: Stamp, ctx: &mut CheckCtx<'_>) {
        if !self.enabled {
            return;
        }
        let pid = st.publisher;
        if self.own == Some(pid) {
            self.own_received += 1;
            return;
        }
        let verdict = if pid & BLAST_FLAG != 0 {
            let cycle = u64::from(pid & !BLAST_FLAG);
            let (slot, cyc, next_mod) = self.blast.get_or_insert((SeqSlot::default(), cycle, 0));
            let mono = if st.seq == *next_mod && *cyc == cycle {
                slot.next()
            } else {
                unwrap_cyclic(slot.next(), st.seq, cycle)
            };
            let v = slot.observe(mono);
            *cyc = cycle;
            *next_mod = if st.seq + 1 >= cycle { 0 } else { st.seq + 1 };
            if !matches!(v, Verdict::InOrder | Verdict::Gap(_)) {
                // Behind: the expected number modulo the cycle is unchanged.
                *next_mod = slot.next() % cycle.max(1);
            }
            v
        } else {
            let idx = match self.last {
                Some((p, i)) if p == pid => i,
                _ => {
                    let p = pid as usize;
                    if p % self.topics != self.topic || p / self.topics >= self.slots.len() {
                        self.foreign += 1;
                        return;
                    }
                    self.last = Some((pid, p / self.topics));
                    p / self.topics
                }
            };
            let Some(slot) = self.slots.get_mut(idx) else {
                self.foreign += 1;
                return;
            };
            let v = slot.observe(st.seq);
            if self.probe
                && let Some(a) = ctx.acks.get(pid as usize)
            {
                a.store(slot.next(), Ordering::Relaxed);
                ctx.acked = true;
            }
            v
        };
        self.counts.add(verdict);
        if self.record && st.sent_ns >= ctx.window.0 && st.sent_ns < ctx.window.1 {
            let lat = ctx.now_ns.saturating_sub(st.sent_ns).max(1);
            ctx.hist.saturating_record(lat);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn hist() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
    }

    #[test]
    fn routes_publishers_of_own_topic() {
        // 3 topics, 7 publishers: topic 1 has publishers 1 and 4.
        let mut c = Checker::new(1, 3, 7, true, true);
        let acks: Vec<AtomicU64> = (0..7).map(|_| AtomicU64::new(0)).collect();
        let mut h = hist();
        let mut ctx = CheckCtx {
            now_ns: 1_000,
            window: (0, u64::MAX),
            hist: &mut h,
            acks: &acks,
            acked: false,
        };
        for seq in 0..3 {
            c.check(
                Stamp {
                    publisher: 4,
                    seq,
                    sent_ns: 900,
                },
                &mut ctx,
            );
        }
        c.check(
            Stamp {
                publisher: 1,
                seq: 1,
                sent_ns: 900,
            },
            &mut ctx,
        );
        c.check(
            Stamp {
                publisher: 2,
                seq: 0,
                sent_ns: 900,
            },
            &mut ctx,
        ); // other topic
        c.check(
            Stamp {
                publisher: 10,
                seq: 0,
                sent_ns: 900,
            },
            &mut ctx,
        ); // no such publisher
        assert!(ctx.acked);
        assert_eq!(acks[4].load(Ordering::Relaxed), 3);
        assert_eq!(acks[1].load(Ordering::Relaxed), 2);
        assert_eq!(c.foreign, 2);
        assert_eq!(c.counts.missing(), 1);
        assert_eq!(c.progress().collect::<Vec<_>>(), vec![(1, 2), (4, 3)]);
        assert_eq!(h.len(), 4);
        assert_eq!(h.max(), 100);
    }

    #[test]
    fn blast_stream_and_window() {
        let mut c = Checker::new(0, 1, 0, false, true);
        let mut h = hist();
        let mut ctx = CheckCtx {
            now_ns: 100,
            window: (50, 60),
            hist: &mut h,
            acks: &[],
            acked: false,
        };
        let pid = BLAST_FLAG | 4;
        for i in 0..10u64 {
            c.check(
                Stamp {
                    publisher: pid,
                    seq: i % 4,
                    sent_ns: 40 + i * 2,
                },
                &mut ctx,
            );
        }
        assert!(c.saw_blast());
        assert_eq!(c.counts.received, 10);
        assert_eq!(c.counts.missing() + c.counts.duplicated, 0);
        // sent 50..58 fall into the window: i = 5..9.
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn blast_gap_and_duplicate() {
        let mut c = Checker::new(0, 1, 0, false, false);
        let mut h = hist();
        let mut ctx = CheckCtx {
            now_ns: 1,
            window: (0, 0),
            hist: &mut h,
            acks: &[],
            acked: false,
        };
        let pid = BLAST_FLAG | 5;
        // 0 1 2 3 4 | 0 (2 skipped) 3 4 | 0 0 (duplicate) 1
        for s in [0, 1, 2, 3, 4, 0, 3, 4, 0, 0, 1] {
            c.check(
                Stamp {
                    publisher: pid,
                    seq: s,
                    sent_ns: 0,
                },
                &mut ctx,
            );
        }
        assert_eq!(c.counts.received, 11);
        assert_eq!(c.counts.missing(), 2);
        assert_eq!(c.counts.duplicated, 1);
        assert_eq!(c.counts.out_of_order(), 0);
    }

    #[test]
    fn own_messages_are_set_apart() {
        // A chat member (publisher 2 of 4) without echo.
        let mut c = Checker::new(0, 1, 4, false, true).excluding_own(2);
        let mut h = hist();
        let mut ctx = CheckCtx {
            now_ns: 10,
            window: (0, u64::MAX),
            hist: &mut h,
            acks: &[],
            acked: false,
        };
        for (publisher, seq) in [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (2, 1)] {
            c.check(
                Stamp {
                    publisher,
                    seq,
                    sent_ns: 5,
                },
                &mut ctx,
            );
        }
        assert_eq!(c.own_received, 2);
        assert_eq!(c.counts.received, 4);
        assert_eq!(c.foreign, 0);
        assert_eq!(h.len(), 4, "own messages carry no latency");
        // Its own slot is not expected at all.
        assert_eq!(
            c.progress().collect::<Vec<_>>(),
            vec![(0, 2), (1, 1), (3, 1)]
        );
    }

    #[test]
    fn slow_and_disabled_do_not_record() {
        let mut h = hist();
        let mut ctx = CheckCtx {
            now_ns: 10,
            window: (0, u64::MAX),
            hist: &mut h,
            acks: &[],
            acked: false,
        };
        let mut slow = Checker::new(0, 1, 1, false, false);
        slow.check(
            Stamp {
                publisher: 0,
                seq: 0,
                sent_ns: 1,
            },
            &mut ctx,
        );
        assert_eq!(slow.counts.received, 1);
        let mut off = Checker::disabled();
        off.check(
            Stamp {
                publisher: 0,
                seq: 0,
                sent_ns: 1,
            },
            &mut ctx,
        );
        off.foreign_message();
        assert_eq!((off.counts.received, off.foreign), (0, 0));
        assert_eq!(h.len(), 0);
    }
}
