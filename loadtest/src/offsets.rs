//! Offset checks of one subscriber connection (ringcast's history, docs/protocol.md): on a
//! topic with history every publication carries an offset, +1 for each, in one order for
//! every subscriber. Per
//! connection and topic, the first offset seen is the start; each next one must be the
//! last + 1. Anything ahead is a gap (the offsets skipped are counted missing); anything
//! at or below the last is a duplicate or a reorder (counted, the last offset stays).
//!
//! The stamp checks ([`crate::checker`]) see loss and order per publisher; these see
//! what the server promises per topic, whoever published.

/// What offset checks counted (summed over connections by [`crate::tally`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffsetCounts {
    /// Envelopes that carried an offset (the first of each topic included).
    pub checked: u64,
    /// Jumps ahead of last + 1.
    pub gaps: u64,
    /// Offsets skipped by those jumps.
    pub missing: u64,
    /// Offsets at or below the last one seen (duplicates and reorders).
    pub dups: u64,
}

impl OffsetCounts {
    /// Adds another connection's counts.
    pub fn merge(&mut self, o: &OffsetCounts) {
        self.checked += o.checked;
        self.gaps += o.gaps;
        self.missing += o.missing;
        self.dups += o.dups;
    }
}

/// What one offset meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetVerdict {
    /// The first offset of this topic on this connection.
    First,
    /// last + 1.
    InOrder,
    /// Ahead: this many offsets were skipped.
    Gap(u64),
    /// At or below the last one.
    Behind,
}

/// Topics a connection tracks at most (a mux connection holds at most
/// `--max-topics-per-connection`, 256 by default); offsets of further topics are not checked.
pub const MAX_TOPICS: usize = 4096;

/// The per-topic last offsets of one connection.
#[derive(Debug, Default)]
pub struct OffsetChecker {
    /// (topic, last offset), in first-seen order; looked up from the last hit.
    topics: Vec<(Box<[u8]>, u64)>,
    last: usize,
    /// Totals.
    pub counts: OffsetCounts,
}

impl OffsetChecker {
    /// Records `offset` for `topic` (canonical bytes: unescaped) and classifies it.
    /// `None` when the topic is past [`MAX_TOPICS`] and not tracked.
    #[inline]
    pub fn observe(&mut self, topic: &[u8], offset: u64) -> Option<OffsetVerdict> {
        let idx = match self.topics.get(self.last) {
            Some((t, _)) if **t == *topic => self.last,
            _ => match self.topics.iter().position(|(t, _)| **t == *topic) {
                Some(i) => i,
                None if self.topics.len() < MAX_TOPICS => {
                    self.topics.push((topic.into(), offset));
                    self.last = self.topics.len() - 1;
                    self.counts.checked += 1;
                    return Some(OffsetVerdict::First);
                }
                None => return None,
            },
        };
        self.last = idx;
        self.counts.checked += 1;
        let last = &mut self.topics[idx].1;
        let v = if offset == last.wrapping_add(1) {
            *last = offset;
            OffsetVerdict::InOrder
        } else if offset > *last {
            let skipped = offset - *last - 1;
            *last = offset;
            self.counts.gaps += 1;
            self.counts.missing += skipped;
            OffsetVerdict::Gap(skipped)
        } else {
            self.counts.dups += 1;
            OffsetVerdict::Behind
        };
        Some(v)
    }

    /// The last offset seen on `topic`.
    pub fn last(&self, topic: &[u8]) -> Option<u64> {
        self.topics
            .iter()
            .find(|(t, _)| **t == *topic)
            .map(|&(_, o)| o)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::OffsetVerdict::*;
    use super::*;

    fn feed(c: &mut OffsetChecker, topic: &str, offsets: &[u64]) -> Vec<OffsetVerdict> {
        offsets
            .iter()
            .map(|&o| c.observe(topic.as_bytes(), o).unwrap())
            .collect()
    }

    #[test]
    fn dense_from_any_start() {
        let mut c = OffsetChecker::default();
        let v = feed(&mut c, "t", &[41, 42, 43, 44]);
        assert_eq!(v, [First, InOrder, InOrder, InOrder]);
        assert_eq!(
            c.counts,
            OffsetCounts {
                checked: 4,
                ..OffsetCounts::default()
            }
        );
        assert_eq!(c.last(b"t"), Some(44));
    }

    #[test]
    fn gaps_count_what_was_skipped() {
        let mut c = OffsetChecker::default();
        let v = feed(&mut c, "t", &[1, 2, 5, 6, 7, 10]);
        assert_eq!(v, [First, InOrder, Gap(2), InOrder, InOrder, Gap(2)]);
        assert_eq!((c.counts.gaps, c.counts.missing, c.counts.dups), (2, 4, 0));
        assert_eq!(c.counts.checked, 6);
    }

    #[test]
    fn duplicates_and_reorders() {
        let mut c = OffsetChecker::default();
        // 3 again (duplicate), then 2 (reorder: behind), then 4 goes on from 3.
        let v = feed(&mut c, "t", &[1, 2, 3, 3, 2, 4]);
        assert_eq!(v, [First, InOrder, InOrder, Behind, Behind, InOrder]);
        assert_eq!((c.counts.gaps, c.counts.missing, c.counts.dups), (0, 0, 2));
        // A swap: 6 before 5 is a gap of one, then 5 is behind.
        let v = feed(&mut c, "t", &[6, 5, 7]);
        assert_eq!(v, [Gap(1), Behind, InOrder]);
        assert_eq!((c.counts.gaps, c.counts.missing, c.counts.dups), (1, 1, 3));
    }

    #[test]
    fn topics_are_independent() {
        let mut c = OffsetChecker::default();
        assert_eq!(feed(&mut c, "a", &[10]), [First]);
        assert_eq!(feed(&mut c, "b", &[500]), [First]);
        // Interleaved, each dense on its own.
        assert_eq!(feed(&mut c, "a", &[11]), [InOrder]);
        assert_eq!(feed(&mut c, "b", &[501]), [InOrder]);
        assert_eq!(feed(&mut c, "a", &[12]), [InOrder]);
        // b's offsets mean nothing for a: 13 after b's 501 is a's next.
        assert_eq!(feed(&mut c, "b", &[13]), [Behind]);
        assert_eq!(feed(&mut c, "a", &[13]), [InOrder]);
        assert_eq!(c.counts.dups, 1);
        assert_eq!(c.counts.gaps, 0);
        assert_eq!(
            (c.last(b"a"), c.last(b"b"), c.last(b"c")),
            (Some(13), Some(501), None)
        );
    }

    #[test]
    fn bounded_topics() {
        let mut c = OffsetChecker::default();
        for i in 0..MAX_TOPICS {
            assert_eq!(c.observe(i.to_string().as_bytes(), 1), Some(First));
        }
        assert_eq!(c.observe(b"one too many", 1), None);
        assert_eq!(c.counts.checked, MAX_TOPICS as u64);
        assert_eq!(c.observe(b"0", 2), Some(InOrder));
    }

    #[test]
    fn merge_adds() {
        let mut a = OffsetCounts {
            checked: 1,
            gaps: 2,
            missing: 3,
            dups: 4,
        };
        a.merge(&a.clone());
        assert_eq!((a.checked, a.gaps, a.missing, a.dups), (2, 4, 6, 8));
    }
}
