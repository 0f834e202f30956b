//! Per-publisher sequence checking for one subscriber: in order, gaps,
//! duplicates and late (reordered) arrivals.
//!
//! Each slot remembers the next expected sequence number and a 64-bit window
//! of which of the previous 64 numbers were seen, so a number below the
//! expected one is told apart as a duplicate (seen before) or a late arrival
//! (a hole being filled: it was counted missing and no longer is). Anything
//! further back than the window is `Stale` (cannot tell; counted out of order).
//! Memory: 16 bytes per (subscriber, publisher of its topic).

/// What one observation meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly the next expected number.
    InOrder,
    /// Ahead of the expected number: this many numbers were skipped (missing so far).
    Gap(u64),
    /// Below the expected number and already seen.
    Duplicate,
    /// Below the expected number, not seen before: fills one earlier gap.
    Late,
    /// More than 64 behind the expected number: duplicate or late, unknown.
    Stale,
}

/// The expected-sequence state for one publisher as seen by one subscriber.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqSlot {
    /// Next expected sequence number (= highest seen + 1, or 0).
    next: u64,
    /// Bit i set: `next - 1 - i` was seen.
    window: u64,
}

impl SeqSlot {
    /// Next expected sequence number: how many the subscriber has accounted for.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Records `seq` and classifies it.
    #[inline]
    pub fn observe(&mut self, seq: u64) -> Verdict {
        if seq == self.next {
            self.window = (self.window << 1) | 1;
            self.next = seq.wrapping_add(1);
            Verdict::InOrder
        } else if seq > self.next {
            let gap = seq - self.next;
            self.window = if gap >= 63 {
                1
            } else {
                (self.window << (gap + 1)) | 1
            };
            self.next = seq.wrapping_add(1);
            Verdict::Gap(gap)
        } else {
            let back = self.next - 1 - seq;
            if back >= 64 {
                return Verdict::Stale;
            }
            let bit = 1u64 << back;
            if self.window & bit != 0 {
                Verdict::Duplicate
            } else {
                self.window |= bit;
                Verdict::Late
            }
        }
    }
}

/// Running totals of verdicts (per subscriber or summed per thread).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqCounts {
    /// Messages received (every verdict).
    pub received: u64,
    /// Numbers skipped by gaps (before late arrivals are subtracted).
    pub gap_missing: u64,
    /// Late arrivals (each filled one missing number).
    pub late: u64,
    /// Duplicates.
    pub duplicated: u64,
    /// Too far behind to classify.
    pub stale: u64,
}

impl SeqCounts {
    /// Adds one verdict.
    #[inline]
    pub fn add(&mut self, v: Verdict) {
        self.received += 1;
        match v {
            Verdict::InOrder => {}
            Verdict::Gap(n) => self.gap_missing += n,
            Verdict::Late => self.late += 1,
            Verdict::Duplicate => self.duplicated += 1,
            Verdict::Stale => self.stale += 1,
        }
    }

    /// Numbers still missing inside the observed range.
    pub fn missing(&self) -> u64 {
        self.gap_missing.saturating_sub(self.late)
    }

    /// Arrivals below the expected number that were not duplicates.
    pub fn out_of_order(&self) -> u64 {
        self.late + self.stale
    }

    /// Sums another set of counts into this one.
    pub fn merge(&mut self, o: &SeqCounts) {
        self.received += o.received;
        self.gap_missing += o.gap_missing;
        self.late += o.late;
        self.duplicated += o.duplicated;
        self.stale += o.stale;
    }
}

/// Maps a cyclic blast sequence number (0..cycle) onto the monotonic line
/// closest to `next`, so a blast stream can use an ordinary [`SeqSlot`].
#[inline]
pub fn unwrap_cyclic(next: u64, seq_mod: u64, cycle: u64) -> u64 {
    if cycle == 0 {
        return seq_mod;
    }
    let half = cycle / 2;
    let ahead = (seq_mod + cycle - next % cycle) % cycle; // 0..cycle
    if ahead <= half || next < cycle - ahead {
        next + ahead
    } else {
        next - (cycle - ahead)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> (SeqCounts, SeqSlot) {
        let mut s = SeqSlot::default();
        let mut c = SeqCounts::default();
        for &q in seqs {
            c.add(s.observe(q));
        }
        (c, s)
    }

    #[test]
    fn in_order() {
        let (c, s) = run(&[0, 1, 2, 3]);
        assert_eq!(s.next(), 4);
        assert_eq!(c.missing() + c.duplicated + c.out_of_order(), 0);
    }

    #[test]
    fn gaps() {
        let (c, s) = run(&[0, 3, 4, 10]);
        assert_eq!(c.missing(), 2 + 5);
        assert_eq!(s.next(), 11);
        let (c, _) = run(&[5]);
        assert_eq!(c.missing(), 5);
    }

    #[test]
    fn duplicates() {
        let (c, _) = run(&[0, 1, 1, 2, 0, 2]);
        assert_eq!(c.duplicated, 3);
        assert_eq!(c.missing(), 0);
        assert_eq!(c.out_of_order(), 0);
    }

    #[test]
    fn late_fills_gap() {
        let (c, _) = run(&[0, 2, 1, 3]);
        assert_eq!(c.missing(), 0);
        assert_eq!(c.late, 1);
        assert_eq!(c.out_of_order(), 1);
        assert_eq!(c.duplicated, 0);
        // The late one repeated is a duplicate.
        let (c, _) = run(&[0, 2, 1, 1]);
        assert_eq!(c.duplicated, 1);
    }

    #[test]
    fn window_edges() {
        // 63 back is still in the window, 64 back is stale.
        let mut seqs: Vec<u64> = (1..=63).collect();
        seqs.push(0);
        let (c, _) = run(&seqs);
        assert_eq!((c.late, c.missing()), (1, 0));
        let mut seqs: Vec<u64> = (1..=64).collect();
        seqs.push(0);
        let (c, _) = run(&seqs);
        assert_eq!((c.stale, c.missing()), (1, 1));
        // A big jump clears the window; going back into it is late.
        let (c, _) = run(&[0, 100, 99, 1]);
        assert_eq!(c.late, 1);
        assert_eq!(c.stale, 1);
        assert_eq!(c.missing(), 98);
    }

    #[test]
    fn cyclic_unwrap() {
        let k = 10;
        let mut s = SeqSlot::default();
        let mut c = SeqCounts::default();
        for i in 0..35u64 {
            let m = unwrap_cyclic(s.next(), i % k, k);
            assert_eq!(m, i);
            c.add(s.observe(m));
        }
        assert_eq!(c.missing(), 0);
        // Skipping 3 across a wrap is a gap of 3.
        let m = unwrap_cyclic(s.next(), (35 + 3) % k, k);
        assert_eq!(s.observe(m), Verdict::Gap(3));
        // A repeat just behind is a duplicate, not a wrap forward.
        let m = unwrap_cyclic(s.next(), 38 % k, k);
        assert_eq!(s.observe(m), Verdict::Duplicate);
        assert_eq!(unwrap_cyclic(0, 9, 10), 9); // at the start there is nothing below 0
    }
}
