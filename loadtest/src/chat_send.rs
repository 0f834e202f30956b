//! The sending half of `chat`: inside each receive thread, every member
//! connection that thread reads also publishes at a fixed rate. Messages carry
//! the usual stamp (member id as publisher id, per-member sequence, send time),
//! so the receive path checks them like any other publisher's.
//!
//! The schedule is per thread: its k members take turns, one message every
//! 1 / (k × rate) seconds, so each member sends at `rate` and the sends are spread
//! evenly instead of all members firing at once. The thread produces what is due
//! each loop turn; after a stall it sends at most 100 ms worth and counts the
//! rest as skipped (no sequence number is used for them, so no gap appears).
//! Sending starts when the main thread sets [`ChatPlan::start_ns`] (every member
//! connected), and stops with [`PubStats::stop`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use ringcast::proto::frame::{OpCode, encode_frame};

use crate::payload::{Stamp, fill_template, write_stamp};
use crate::publish::PubStats;
use crate::sys::now_ns;

/// What every receive thread of a chat run shares.
#[derive(Debug)]
pub struct ChatPlan {
    /// Messages per second each member sends.
    pub rate_per_member: f64,
    /// Message size (>= the stamp).
    pub size: usize,
    /// Binary frames (default text).
    pub binary: bool,
    /// The server sends members their own messages too (`?echo=1`).
    pub echo: bool,
    /// Members in the run: publisher ids are 0..members.
    pub members: usize,
    /// When sending starts (CLOCK_MONOTONIC ns); `u64::MAX` until every member is connected.
    pub start_ns: AtomicU64,
    /// Per-member sequence counters, totals, skipped messages, the stop flag.
    pub pstats: Arc<PubStats>,
    /// Bytes handed to the generator's queues that the kernel has not taken yet (all threads).
    pub unsent: AtomicU64,
}

impl ChatPlan {
    /// A plan for `members` members; nothing is sent before [`ChatPlan::start_ns`] is set.
    pub fn new(
        members: usize,
        rate_per_member: f64,
        size: usize,
        binary: bool,
        echo: bool,
    ) -> Self {
        ChatPlan {
            rate_per_member,
            size,
            binary,
            echo,
            members,
            start_ns: AtomicU64::new(u64::MAX),
            pstats: Arc::new(PubStats::new(members)),
            unsent: AtomicU64::new(0),
        }
    }
}

/// One member as its thread's sender sees it.
#[derive(Debug)]
struct Member {
    /// Local connection index in the thread's core.
    conn: usize,
    /// Publisher id (the member's global index).
    id: u32,
    /// Next sequence number.
    seq: u64,
}

/// The per-thread sender.
#[derive(Debug)]
pub struct ChatSender {
    plan: Arc<ChatPlan>,
    members: Vec<Member>,
    msg: Vec<u8>,
    frame: BytesMut,
    /// Turns taken since the start (sent or skipped).
    generated: u64,
}

impl ChatSender {
    /// A sender for one thread.
    pub fn new(plan: Arc<ChatPlan>) -> Self {
        let mut msg = vec![0u8; plan.size.max(crate::payload::STAMP_LEN)];
        // The size was validated against the stamp length; a shorter one was raised above.
        let _ = fill_template(&mut msg);
        ChatSender {
            plan,
            members: Vec::new(),
            msg,
            frame: BytesMut::with_capacity(256),
            generated: 0,
        }
    }

    /// Whether members must not receive their own messages.
    pub fn excludes_own(&self) -> bool {
        !self.plan.echo
    }

    /// The plan.
    pub fn plan(&self) -> &ChatPlan {
        &self.plan
    }

    /// Registers member `id` on local connection `conn`.
    pub fn add(&mut self, conn: usize, id: usize) {
        self.members.push(Member {
            conn,
            id: id as u32,
            seq: 0,
        });
    }

    /// Sends what is due at `now`. `send(conn, frame)` queues one frame on a local
    /// connection and returns false when that connection no longer takes data.
    /// Returns the number of messages sent.
    pub fn produce(&mut self, now: u64, mut send: impl FnMut(usize, &[u8]) -> bool) -> u64 {
        let start = self.plan.start_ns.load(Ordering::Relaxed);
        let stats = &self.plan.pstats;
        if self.members.is_empty() || now < start || stats.stop.load(Ordering::Relaxed) {
            return 0;
        }
        let k = self.members.len();
        let rate = self.plan.rate_per_member * k as f64;
        let due = (now.saturating_sub(start) as f64 * rate / 1e9) as u64 + 1;
        let mut todo = due.saturating_sub(self.generated);
        let cap = ((rate / 10.0) as u64).max(1);
        if todo > cap {
            stats.skipped.fetch_add(todo - cap, Ordering::Relaxed);
            self.generated += todo - cap;
            todo = cap;
        }
        if todo == 0 {
            return 0;
        }
        let opcode = if self.plan.binary {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        // One clock read per batch, right before the writes: the stamp is the send time.
        let sent_ns = now_ns();
        let mut sent = 0;
        for _ in 0..todo {
            let m = &mut self.members[(self.generated % k as u64) as usize];
            self.generated += 1;
            write_stamp(
                &mut self.msg,
                Stamp {
                    publisher: m.id,
                    seq: m.seq,
                    sent_ns,
                },
            );
            self.frame.clear();
            encode_frame(
                &mut self.frame,
                true,
                opcode,
                Some(fastrand::u32(..).to_ne_bytes()),
                &self.msg,
            );
            if !send(m.conn, &self.frame) {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            m.seq += 1;
            if let Some(c) = stats.published.get(m.id as usize) {
                c.store(m.seq, Ordering::Relaxed);
            }
            sent += 1;
        }
        stats.total.fetch_add(sent, Ordering::Relaxed);
        sent
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::payload::decode;
    use ringcast::proto::frame::FrameHeader;

    fn plan(members: usize, rate: f64) -> Arc<ChatPlan> {
        Arc::new(ChatPlan::new(members, rate, 64, false, false))
    }

    /// The stamp of a masked client frame.
    fn stamp_of(frame: &[u8]) -> Stamp {
        let (h, hl) = FrameHeader::parse(frame).unwrap().unwrap();
        let mask = h.mask.unwrap();
        let payload: Vec<u8> = frame[hl..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        decode(&payload).unwrap()
    }

    #[test]
    fn waits_for_start_and_takes_turns() {
        let p = plan(13, 100.0); // ids 10..13 of 13; this thread holds three
        let mut s = ChatSender::new(Arc::clone(&p));
        for i in 0..3 {
            s.add(i, 10 + i);
        }
        let mut got: Vec<(usize, Stamp)> = Vec::new();
        assert_eq!(s.produce(1_000, |_, _| true), 0, "not started yet");
        p.start_ns.store(1_000, Ordering::Relaxed);
        // 3 members at 100/s: 300/s, so at +10 ms 1 + 3 are due.
        let n = s.produce(1_000 + 10_000_000, |c, f| {
            got.push((c, stamp_of(f)));
            true
        });
        assert_eq!(n, 4);
        let order: Vec<(usize, u32, u64)> = got
            .iter()
            .map(|(c, st)| (*c, st.publisher, st.seq))
            .collect();
        assert_eq!(order, vec![(0, 10, 0), (1, 11, 0), (2, 12, 0), (0, 10, 1)]);
        assert_eq!(p.pstats.published[10].load(Ordering::Relaxed), 2);
        assert_eq!(p.pstats.total.load(Ordering::Relaxed), 4);
        // Nothing more is due at the same instant; nothing at all once stopped.
        assert_eq!(s.produce(1_000 + 10_000_000, |_, _| true), 0);
        p.pstats.stop.store(true, Ordering::Relaxed);
        assert_eq!(s.produce(1_000 + 900_000_000, |_, _| true), 0);
    }

    #[test]
    fn stalls_and_dead_members_skip_without_gaps() {
        let p = plan(2, 100.0);
        let mut s = ChatSender::new(Arc::clone(&p));
        s.add(0, 0);
        s.add(1, 1);
        p.start_ns.store(0, Ordering::Relaxed);
        // 200/s; after a 1 s stall 201 are due but only 100 ms worth (20) go out.
        let mut seqs = Vec::new();
        let n = s.produce(1_000_000_000, |c, f| {
            if c == 1 {
                return false; // member 1's connection is gone
            }
            seqs.push(stamp_of(f).seq);
            true
        });
        assert_eq!(n, 10);
        assert_eq!(
            seqs,
            (0..10).collect::<Vec<_>>(),
            "no gap in member 0's numbers"
        );
        assert_eq!(p.pstats.skipped.load(Ordering::Relaxed), 181 + 10);
        assert_eq!(p.pstats.published[1].load(Ordering::Relaxed), 0);
    }
}
