//! Turning the receive threads' per-subscriber results into run totals:
//! loss (gaps plus the tail a subscriber never got of what was published),
//! duplicates, order, offsets (healthy and slow subscribers apart), how healthy subscribers ended, and how slow
//! subscribers were treated (disconnected with which close code, without a
//! close frame, or still connected).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::offsets::OffsetCounts;
use crate::report::SlowReport;
use crate::seq::SeqCounts;
use crate::stats::new_hist;
use crate::worker::{End, SubResult, WorkerResult};

/// Totals over every receive thread.
#[derive(Debug)]
pub struct Tally {
    /// Latency of healthy subscribers (ns).
    pub hist: Histogram<u64>,
    /// Sequence verdicts of healthy subscribers.
    pub counts: SeqCounts,
    /// Messages healthy subscribers never received.
    pub lost: u64,
    /// Offset checks of healthy subscribers (slow ones: in `slow`).
    pub offsets: OffsetCounts,
    /// Foreign messages at healthy subscribers.
    pub foreign: u64,
    /// Own messages that came back to healthy chat members (no echo expected).
    pub own: u64,
    /// Slow subscribers.
    pub slow: SlowReport,
    /// Backend name reported by the threads.
    pub backend: String,
    /// Healthy subscribers without a clean close handshake we started.
    pub unclean: u64,
    /// How healthy subscribers ended -> count.
    pub subscriber_ends: BTreeMap<String, u64>,
    /// Backend notes.
    pub notes: Vec<String>,
}

impl Tally {
    /// Sums the threads' results; `published[j]` is how many publisher j sent in the whole run.
    pub fn of(results: &[WorkerResult], published: &[u64]) -> Tally {
        let mut t = Tally {
            hist: new_hist(),
            counts: SeqCounts::default(),
            lost: 0,
            offsets: OffsetCounts::default(),
            foreign: 0,
            own: 0,
            slow: SlowReport::default(),
            backend: String::new(),
            unclean: 0,
            subscriber_ends: BTreeMap::new(),
            notes: Vec::new(),
        };
        for w in results {
            let _ = t.hist.add(&w.hist);
            t.backend = w.backend.to_string();
            t.notes.extend(w.notes.iter().cloned());
            for s in &w.subs {
                if s.slow.is_some() {
                    t.add_slow(s);
                } else {
                    t.add_healthy(s, published);
                }
            }
        }
        t
    }

    fn add_slow(&mut self, s: &SubResult) {
        let r = &mut self.slow;
        r.count += 1;
        r.delivered += s.counts.received;
        r.gaps += s.counts.missing();
        r.offsets_checked += s.offsets.checked;
        r.offset_gaps += s.offsets.gaps;
        r.offset_missing += s.offsets.missing;
        r.offset_dups += s.offsets.dups;
        match &s.end {
            End::Open => r.still_connected += 1,
            // We closed first and the server answered normally: it kept the subscriber.
            End::Closed {
                code: Some(1000),
                server_first: false,
            } => r.still_connected += 1,
            End::Closed { code, .. } => {
                r.disconnected += 1;
                let key = code.map_or("none".to_string(), |c| c.to_string());
                *r.close_codes.entry(key).or_insert(0) += 1;
            }
            End::Eof => {
                r.disconnected += 1;
                r.without_close_frame += 1;
                r.eof += 1;
            }
            End::Io(e) | End::Protocol(e) => {
                r.disconnected += 1;
                r.without_close_frame += 1;
                *r.io_errors.entry(e.clone()).or_insert(0) += 1;
            }
        }
    }

    fn add_healthy(&mut self, s: &SubResult, published: &[u64]) {
        self.counts.merge(&s.counts);
        self.offsets.merge(&s.offsets);
        self.foreign += s.foreign;
        self.own += s.own;
        let tail: u64 = s
            .progress
            .iter()
            .map(|&(pid, next)| {
                published
                    .get(pid)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(next)
            })
            .sum();
        self.lost += s.counts.missing() + tail;
        let clean = matches!(
            s.end,
            End::Closed {
                server_first: false,
                ..
            }
        );
        if !clean {
            self.unclean += 1;
        }
        let key = match &s.end {
            End::Open => "open at the end".to_string(),
            End::Closed { code, server_first } => format!(
                "closed {}{}",
                code.map_or("(no code)".to_string(), |c| c.to_string()),
                if *server_first { " by the server" } else { "" }
            ),
            End::Eof => "eof".to_string(),
            End::Io(e) => format!("io: {e}"),
            End::Protocol(e) => format!("protocol: {e}"),
        };
        *self.subscriber_ends.entry(key).or_insert(0) += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cli::SlowMode;

    fn sub(
        slow: Option<SlowMode>,
        counts: SeqCounts,
        progress: Vec<(usize, u64)>,
        end: End,
    ) -> SubResult {
        SubResult {
            id: 0,
            topic: 0,
            slow,
            counts,
            offsets: OffsetCounts::default(),
            foreign: 0,
            own: 0,
            progress,
            blast: false,
            end,
        }
    }

    fn clean() -> End {
        End::Closed {
            code: Some(1000),
            server_first: false,
        }
    }

    #[test]
    fn loss_is_gaps_plus_tail() {
        let gaps = SeqCounts {
            received: 8,
            gap_missing: 3,
            late: 1,
            ..SeqCounts::default()
        };
        let w = WorkerResult {
            backend: "io_uring",
            hist: new_hist(),
            subs: vec![
                // Saw 0..10 of publisher 0 with 2 holes; publisher 0 sent 12: tail 2.
                sub(None, gaps, vec![(0, 10)], clean()),
                // Saw everything of publisher 1 (sent 5).
                sub(
                    None,
                    SeqCounts {
                        received: 5,
                        ..SeqCounts::default()
                    },
                    vec![(1, 5)],
                    clean(),
                ),
                // Disconnected by the server after 3 of 12.
                sub(
                    None,
                    SeqCounts {
                        received: 3,
                        ..SeqCounts::default()
                    },
                    vec![(0, 3)],
                    End::Closed {
                        code: Some(1008),
                        server_first: true,
                    },
                ),
            ],
            notes: vec![],
        };
        let t = Tally::of(&[w], &[12, 5]);
        // sub 1: 2 holes + 2 tail; sub 2: nothing; sub 3: 9 tail.
        assert_eq!(t.lost, 13);
        assert_eq!(t.unclean, 1);
        assert_eq!(t.subscriber_ends.get("closed 1000"), Some(&2));
        assert_eq!(t.subscriber_ends.get("closed 1008 by the server"), Some(&1));
        assert_eq!(t.backend, "io_uring");
    }

    #[test]
    fn slow_subscriber_treatment() {
        let z = SeqCounts::default;
        let w = WorkerResult {
            backend: "epoll",
            hist: new_hist(),
            subs: vec![
                sub(
                    Some(SlowMode::Stop),
                    z(),
                    vec![(0, 1)],
                    End::Closed {
                        code: Some(1008),
                        server_first: false,
                    },
                ),
                sub(
                    Some(SlowMode::Stop),
                    z(),
                    vec![],
                    End::Closed {
                        code: Some(1000),
                        server_first: true,
                    },
                ),
                sub(Some(SlowMode::Stop), z(), vec![], clean()),
                sub(Some(SlowMode::Slow), z(), vec![], End::Open),
                sub(Some(SlowMode::Stop), z(), vec![], End::Eof),
                sub(Some(SlowMode::Stop), z(), vec![], End::Io("reset".into())),
            ],
            notes: vec![],
        };
        let t = Tally::of(&[w], &[100]);
        // Slow subscribers never count as lost.
        assert_eq!(t.lost, 0);
        let s = &t.slow;
        assert_eq!((s.count, s.disconnected, s.still_connected), (6, 4, 2));
        assert_eq!(s.close_codes.get("1008"), Some(&1));
        assert_eq!(s.close_codes.get("1000"), Some(&1));
        assert_eq!((s.without_close_frame, s.eof), (2, 1));
        assert_eq!(s.io_errors.get("reset"), Some(&1));
    }

    #[test]
    fn offsets_of_healthy_and_slow_subscribers_apart() {
        let oc = |checked, gaps, missing, dups| OffsetCounts {
            checked,
            gaps,
            missing,
            dups,
        };
        let with = |slow, o| SubResult {
            offsets: o,
            ..sub(slow, SeqCounts::default(), vec![], clean())
        };
        let w = WorkerResult {
            backend: "epoll",
            hist: new_hist(),
            subs: vec![
                with(None, oc(10, 1, 2, 0)),
                with(None, oc(5, 0, 0, 1)),
                with(Some(SlowMode::Slow), oc(3, 1, 7, 1)),
            ],
            notes: vec![],
        };
        let t = Tally::of(&[w], &[]);
        assert_eq!(t.offsets, oc(15, 1, 2, 1));
        let s = &t.slow;
        assert_eq!(
            (
                s.offsets_checked,
                s.offset_gaps,
                s.offset_missing,
                s.offset_dups
            ),
            (3, 1, 7, 1)
        );
    }
}
