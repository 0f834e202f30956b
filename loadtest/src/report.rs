//! What a run reports: the JSON object loadtest/README.md documents (`--json`), the
//! human summary, the live line, and number formatting.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::connect::ConnectStats;
use crate::scrape::MetricsReport;
use crate::stats::Percentiles;

/// Connection statistics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectReport {
    /// Established.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Median connect+handshake latency (µs).
    pub p50_us: f64,
    /// 99th percentile (µs).
    pub p99_us: f64,
    /// Maximum (µs).
    pub max_us: f64,
    /// Established per second of the connect phase.
    pub per_s: f64,
    /// Failure reason -> count.
    pub failures: BTreeMap<String, u64>,
    /// Source addresses used (bind before connect), empty when none was needed.
    pub sources: Vec<String>,
}

impl ConnectReport {
    /// From connector totals.
    pub fn of(s: &ConnectStats) -> Self {
        let p = Percentiles::of(&s.latency);
        ConnectReport {
            ok: s.ok,
            failed: s.failed,
            p50_us: p.p50,
            p99_us: p.p99,
            max_us: p.max,
            per_s: if s.elapsed.is_zero() {
                0.0
            } else {
                s.ok as f64 / s.elapsed.as_secs_f64()
            },
            failures: s.reasons.clone(),
            sources: s.sources_used.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// CPU use over the measured window, in percent of one core.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuReport {
    /// The whole generator process.
    pub generator_pct: f64,
    /// The server (`--server-pid`), null without it.
    pub server_pct: Option<f64>,
    /// The busiest generator thread.
    pub generator_max_thread_pct: f64,
    /// Each generator thread by name.
    pub threads: BTreeMap<String, f64>,
}

/// Server resident memory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RssReport {
    /// Before the generator connected anything (KiB).
    pub before: Option<u64>,
    /// At the end of the measured window / hold, connections still open (KiB).
    pub after: Option<u64>,
}

/// How slow subscribers were treated.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlowReport {
    /// Slow subscribers.
    pub count: u64,
    /// Closed or dropped by the server before the end of the run.
    pub disconnected: u64,
    /// Still connected at the end (the server answered our close, or stayed open).
    pub still_connected: u64,
    /// Close codes the server sent to slow subscribers it disconnected.
    pub close_codes: BTreeMap<String, u64>,
    /// Disconnected without a close frame (TCP close or reset).
    pub without_close_frame: u64,
    /// Of those: ended by the server's FIN.
    pub eof: u64,
    /// Of those: ended by an error such as a reset (first error text -> count).
    pub io_errors: BTreeMap<String, u64>,
    /// Messages slow subscribers received.
    pub delivered: u64,
    /// Messages they missed (gaps inside what they received).
    pub gaps: u64,
    /// Envelopes with an offset they received (see the run's `offsets_checked`).
    pub offsets_checked: u64,
    /// Jumps in their offsets (a server that drops for slow consumers makes them).
    pub offset_gaps: u64,
    /// Offsets those jumps skipped.
    pub offset_missing: u64,
    /// Offsets at or below the last one (never expected, slow or not).
    pub offset_dups: u64,
}

/// What a `chat` run was (null in `run` results).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChatReport {
    /// Members asked for (each one publishes and receives).
    pub members: u64,
    /// Messages per second each member sends.
    pub rate_per_member: f64,
    /// Whether members were expected to receive their own messages (`--expect-echo`).
    pub expect_echo: bool,
}

/// The result of `run` (and of `chat`, which reports the same figures).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// Delivered messages per second in the measured window (all subscribers).
    pub delivered_per_s: f64,
    /// Deliveries per second the published messages called for (healthy subscribers).
    pub expected_per_s: f64,
    /// Messages published per second in the window.
    pub published_per_s: f64,
    /// Messages published over the whole run.
    pub published: u64,
    /// Messages delivered over the whole run.
    pub delivered: u64,
    /// Messages healthy subscribers never received (gaps and tail, whole run).
    pub lost: u64,
    /// Duplicates.
    pub duplicated: u64,
    /// Arrivals below the expected sequence number that were not duplicates.
    pub out_of_order: u64,
    /// Messages that were not generator payloads or came from unexpected publishers.
    pub foreign: u64,
    /// Healthy subscribers: envelopes that carried an offset (mux mode, topic with history).
    pub offsets_checked: u64,
    /// Healthy subscribers: offsets ahead of the last one + 1, per connection and topic.
    pub offset_gaps: u64,
    /// Offsets those gaps skipped.
    pub offset_missing: u64,
    /// Healthy subscribers: offsets at or below the last one (duplicates and reorders).
    pub offset_dups: u64,
    /// `--allow-offset-gaps`: gaps are reported but do not fail the run.
    pub offset_gaps_allowed: bool,
    /// Why the offsets fail this run (exit status 2), null when they do not.
    pub offset_failure: Option<String>,
    /// Connections that ended in an error, publisher errors, non-2xx HTTP responses,
    /// HTTP publishes that got no answer (`publish_failed`).
    pub errors: u64,
    /// Messages due by --rate that the publishers could not queue (server not reading).
    pub publish_skipped: u64,
    /// HTTP publishes written whole on a connection that ended without answering them, or
    /// unanswered when the run ended: perhaps published (never sent twice); also in `errors`.
    pub publish_failed: u64,
    /// HTTP publishes sent again on a new connection because the server had not processed
    /// them (they followed an answer with `Connection: close`, or were not written whole).
    pub publish_retried: u64,
    /// HTTP publish connections reopened after the server ended one.
    pub publish_reconnects: u64,
    /// Latency of healthy subscribers for messages sent in the window.
    pub latency_us: Percentiles,
    /// Subscriber connections.
    pub connect: ConnectReport,
    /// CPU.
    pub cpu: CpuReport,
    /// Server memory.
    pub server_rss_kib: RssReport,
    /// A generator thread was above 90% of its core: the numbers may be the generator's limit.
    pub generator_limited: bool,
    /// Slow subscribers.
    pub slow: SlowReport,
    /// Chat: messages that came back to their own sender although no echo was
    /// expected (each one is a server bug); always 0 in `run`.
    pub self_delivered: u64,
    /// The server's metrics around the window (`--metrics-url`), null without it or when a scrape failed.
    pub server_metrics: Option<MetricsReport>,
    /// The chat parameters (null in `run`).
    pub chat: Option<ChatReport>,
    /// Receive backend.
    pub io: String,
    /// Measured window length (s).
    pub duration_s: f64,
    /// Subscribers connected.
    pub subscribers: u64,
    /// Publishers connected.
    pub publishers: u64,
    /// How healthy subscribers ended ("closed 1000", "eof", "protocol: ...") -> count.
    pub subscriber_ends: BTreeMap<String, u64>,
    /// The tokens presented (`--token-alg`, subscribers then publishers), null without.
    pub token: Option<crate::token::TokenReport>,
    /// Things worth knowing about this run.
    pub notes: Vec<String>,
    /// The command line.
    pub command: Vec<String>,
}

impl RunReport {
    /// Nothing was lost, skipped, failed, duplicated or reordered, no connection or publish
    /// failed, and the offsets hold. (Foreign messages and slow subscribers' gaps are
    /// reported on their own lines: they are not this run's loss.)
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.publish_skipped == 0
            && self.publish_failed == 0
            && self.errors == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.offset_failure.is_none()
    }

    /// Why the offsets fail the run: a duplicate or reorder at any subscriber (slow ones
    /// included: dropping never repeats), or a gap at a healthy one unless gaps are allowed
    /// (slow subscribers' gaps are the server's slow-consumer policy at work).
    pub fn offset_verdict(&self) -> Option<String> {
        let dups = self.offset_dups + self.slow.offset_dups;
        let mut why = Vec::new();
        if dups > 0 {
            why.push(format!(
                "{dups} offsets at or below the last one (duplicates or reorders)"
            ));
        }
        if self.offset_gaps > 0 && !self.offset_gaps_allowed {
            why.push(format!(
                "{} gaps in healthy subscribers' offsets ({} offsets missing; --allow-offset-gaps if the run is lossy on purpose)",
                self.offset_gaps, self.offset_missing
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Writes a report as one JSON object.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<(), String> {
    let s = serde_json::to_string_pretty(report).map_err(|e| format!("JSON: {e}"))?;
    std::fs::write(path, s + "\n").map_err(|e| format!("write {}: {e}", path.display()))
}

/// 1234567.0 -> "1.23M".
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Microseconds with a unit that fits.
pub fn us(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2}ms", v / 1e3)
    } else {
        format!("{v:.0}us")
    }
}

impl RunReport {
    /// The human summary (stdout).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        // Loss first: a rate next to a loss is not a result.
        s += &format!(
            "{}: lost {}  publish-skipped {}  publish-failed {}  errors {}  duplicated {}  out-of-order {}{}\n",
            if self.clean() { "clean" } else { "NOT CLEAN" },
            self.lost,
            self.publish_skipped,
            self.publish_failed,
            self.errors,
            self.duplicated,
            self.out_of_order,
            if self.offset_failure.is_some() {
                "  offsets FAILED"
            } else {
                ""
            }
        );
        s += &format!(
            "delivered {}/s (expected {}/s, published {}/s) over {:.1}s with {} subscribers, {} publishers, io {}\n",
            si(self.delivered_per_s),
            si(self.expected_per_s),
            si(self.published_per_s),
            self.duration_s,
            self.subscribers,
            self.publishers,
            self.io
        );
        if let Some(t) = &self.token {
            s += &format!(
                "tokens: {} x{} ({}), minted in {:.2}s before the run\n",
                t.alg,
                t.count,
                t.placement.name(),
                t.mint_s
            );
        }
        if let Some(c) = &self.chat {
            s += &format!(
                "chat: {} members asked for, {} msg/s each, {}\n",
                c.members,
                c.rate_per_member,
                if c.expect_echo {
                    "each receives every message, its own too"
                } else {
                    "each receives every message but its own"
                }
            );
        }
        s += &format!(
            "totals: published {}  delivered {}  lost {}  duplicated {}  out-of-order {}  foreign {}  errors {}  publish-skipped {}\n",
            self.published,
            self.delivered,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.foreign,
            self.errors,
            self.publish_skipped
        );
        if self.publish_reconnects + self.publish_retried + self.publish_failed > 0 {
            s += &format!(
                "http publish: {} connections reopened  {} requests sent again  {} unanswered\n",
                self.publish_reconnects, self.publish_retried, self.publish_failed
            );
        }
        if self.offsets_checked + self.slow.offsets_checked > 0 || self.offset_dups > 0 {
            s += &format!(
                "offsets: checked {}  gaps {} (missing {})  dups/reorders {}{}\n",
                self.offsets_checked,
                self.offset_gaps,
                self.offset_missing,
                self.offset_dups,
                if self.offset_gaps_allowed {
                    "  (gaps allowed)"
                } else {
                    ""
                }
            );
        }
        if let Some(f) = &self.offset_failure {
            s += &format!("OFFSET CHECK FAILED: {f}\n");
        }
        s += &format!(
            "latency: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            us(l.p50),
            us(l.p90),
            us(l.p99),
            us(l.p999),
            us(l.max)
        );
        s += &format!(
            "connect: ok {}  failed {}  p50 {}  p99 {}  ({}/s)\n",
            self.connect.ok,
            self.connect.failed,
            us(self.connect.p50_us),
            us(self.connect.p99_us),
            si(self.connect.per_s)
        );
        for (r, n) in &self.connect.failures {
            s += &format!("  {n} x {r}\n");
        }
        s += &format!(
            "cpu: generator {:.0}% (busiest thread {:.0}%)  server {}  {}\n",
            self.cpu.generator_pct,
            self.cpu.generator_max_thread_pct,
            self.cpu
                .server_pct
                .map_or("n/a".into(), |p| format!("{p:.0}%")),
            if self.generator_limited {
                "GENERATOR-LIMITED (a generator thread was above 90%)"
            } else {
                ""
            }
        );
        if let (Some(b), Some(a)) = (self.server_rss_kib.before, self.server_rss_kib.after) {
            s += &format!("server rss: before {b} KiB  after {a} KiB\n");
        }
        if self.self_delivered > 0 {
            s += &format!(
                "own messages sent back to their sender: {} (no echo was expected)\n",
                self.self_delivered
            );
        }
        if let Some(m) = &self.server_metrics {
            s += &format!(
                "server metrics: {} samples at both ends of the window ({:.1}s apart) from {}\n",
                m.after.len(),
                m.interval_s,
                m.url
            );
        }
        if self.slow.count > 0 {
            s += &format!(
                "slow subscribers: {}  disconnected {}  still connected {}  close codes {:?}  without close frame {}\n",
                self.slow.count,
                self.slow.disconnected,
                self.slow.still_connected,
                self.slow.close_codes,
                self.slow.without_close_frame
            );
        }
        if self.subscriber_ends.keys().any(|k| k != "closed 1000") {
            s += &format!("healthy subscribers ended: {:?}\n", self.subscriber_ends);
        }
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn json_has_contract_keys() {
        let r = RunReport::default();
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "delivered_per_s",
            "expected_per_s",
            "published",
            "delivered",
            "lost",
            "duplicated",
            "out_of_order",
            "offsets_checked",
            "offset_gaps",
            "offset_missing",
            "offset_dups",
            "latency_us",
            "connect",
            "cpu",
            "server_rss_kib",
            "generator_limited",
            "slow",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"].get(k).is_some(), "latency {k}");
        }
        for k in ["ok", "failed", "p50_us", "p99_us"] {
            assert!(v["connect"].get(k).is_some(), "connect {k}");
        }
        for k in ["generator_pct", "server_pct"] {
            assert!(v["cpu"].get(k).is_some(), "cpu {k}");
        }
        for k in ["before", "after"] {
            assert!(v["server_rss_kib"].get(k).is_some(), "rss {k}");
        }
        for k in ["count", "disconnected", "still_connected"] {
            assert!(v["slow"].get(k).is_some(), "slow {k}");
        }
        assert!(!r.summary().is_empty());
    }

    #[test]
    fn the_headline_shows_loss_before_rates() {
        let mut r = RunReport {
            delivered_per_s: 1000.0,
            expected_per_s: 1000.0,
            published: 1,
            delivered: 1,
            ..RunReport::default()
        };
        let first = |r: &RunReport| r.summary().lines().next().unwrap_or("").to_string();
        assert!(r.clean());
        assert!(
            first(&r).starts_with("clean: lost 0  publish-skipped 0"),
            "{}",
            first(&r)
        );
        // The run of issue 14: one message published, 149 skipped, nothing "lost".
        r.publish_skipped = 149;
        assert!(!r.clean());
        let line = first(&r);
        assert!(
            line.starts_with("NOT CLEAN: lost 0  publish-skipped 149"),
            "{line}"
        );
        assert!(!line.contains("delivered"), "rates come after: {line}");
        for set in [
            |r: &mut RunReport| r.lost = 1,
            |r: &mut RunReport| r.publish_failed = 1,
            |r: &mut RunReport| r.errors = 1,
            |r: &mut RunReport| r.duplicated = 1,
            |r: &mut RunReport| r.out_of_order = 1,
            |r: &mut RunReport| r.offset_failure = Some("gaps".into()),
        ] {
            let mut r = RunReport::default();
            set(&mut r);
            assert!(!r.clean(), "{}", r.summary());
            assert!(first(&r).starts_with("NOT CLEAN"), "{}", r.summary());
        }
        r.publish_reconnects = 3;
        assert!(r.summary().contains("http publish: 3 connections reopened"));
    }

    #[test]
    fn formatting() {
        assert_eq!(si(1_234_567.0), "1.23M");
        assert_eq!(si(999.0), "999");
        assert_eq!(us(1500.0), "1.50ms");
        assert_eq!(us(12.0), "12us");
    }

    #[test]
    fn offset_verdict() {
        let mut r = RunReport {
            offsets_checked: 100,
            ..RunReport::default()
        };
        assert_eq!(r.offset_verdict(), None);
        r.slow.offset_gaps = 5;
        assert_eq!(
            r.offset_verdict(),
            None,
            "slow subscribers' gaps do not fail"
        );
        r.offset_gaps = 1;
        r.offset_missing = 3;
        assert!(r.offset_verdict().unwrap().contains("1 gaps"));
        r.offset_gaps_allowed = true;
        assert_eq!(r.offset_verdict(), None);
        r.slow.offset_dups = 1;
        assert!(
            r.offset_verdict()
                .unwrap()
                .contains("1 offsets at or below")
        );
        r.slow.offset_dups = 0;
        r.offset_dups = 2;
        r.offset_gaps_allowed = false;
        let v = r.offset_verdict().unwrap();
        assert!(
            v.contains("2 offsets at or below") && v.contains("1 gaps"),
            "{v}"
        );
        r.offset_failure = Some(v);
        assert!(
            r.summary().contains("OFFSET CHECK FAILED"),
            "{}",
            r.summary()
        );
        assert!(
            r.summary()
                .contains("offsets: checked 100  gaps 1 (missing 3)  dups/reorders 2")
        );
    }
}
