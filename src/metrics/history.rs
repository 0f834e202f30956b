//! History and recovery metrics: what the home shards keep (gauges), what they evicted
//! (by reason), what joins came to, what was replayed, and the publications forwarded to
//! their topic's home (the price of one order per topic).

use super::Counter;

/// One shard's history counters and gauges (part of [`super::ShardMetrics`]).
#[derive(Debug, Default)]
pub struct HistoryMetrics {
    /// Publications kept (gauge).
    pub publications: Counter,
    /// What they weigh against `--history-memory-limit`: frames plus bookkeeping (gauge).
    pub bytes: Counter,
    /// Topics with history state, an epoch (gauge).
    pub topics: Counter,
    /// Publications evicted to stay under the memory limit.
    pub evicted_memory: Counter,
    /// Publications evicted by `history_size`.
    pub evicted_size: Counter,
    /// Publications dropped with a history idle past its `history_ttl`.
    pub expired_ttl: Counter,
    /// Topic states dropped to stay under the memory limit (their epochs are forgotten).
    pub shed_topics: Counter,
    /// Recoveries that returned every missed publication.
    pub recovered: Counter,
    /// Recoveries refused (`recovered: false`, any reason).
    pub not_recovered: Counter,
    /// Publications replayed to joining subscribers (recoveries and rewinds).
    pub replayed: Counter,
    /// Batches forwarded to their topic's home shard.
    pub forwarded: Counter,
}

/// Appends the history families to a `/metrics` page.
pub fn render(out: &mut String, shards: &[std::sync::Arc<super::ShardMetrics>]) {
    use std::fmt::Write as _;
    let sum =
        |f: &dyn Fn(&HistoryMetrics) -> u64| shards.iter().map(|s| f(&s.history)).sum::<u64>();
    type Simple = (
        &'static str,
        &'static str,
        &'static str,
        fn(&HistoryMetrics) -> u64,
    );
    let simple: [Simple; 9] = [
        (
            "ringcast_history_publications",
            "gauge",
            "Publications kept in topic histories.",
            |m| m.publications.get(),
        ),
        (
            "ringcast_history_bytes",
            "gauge",
            "What the kept publications weigh against --history-memory-limit (frames plus bookkeeping).",
            |m| m.bytes.get(),
        ),
        (
            "ringcast_history_topics",
            "gauge",
            "Topics with history state (an epoch).",
            |m| m.topics.get(),
        ),
        (
            "ringcast_recoveries_total",
            "counter",
            "Recoveries that returned every missed publication (recovered: true).",
            |m| m.recovered.get(),
        ),
        (
            "ringcast_recoveries_failed_total",
            "counter",
            "Recoveries answered recovered: false (epoch changed, too old, too many, from the future).",
            |m| m.not_recovered.get(),
        ),
        (
            "ringcast_history_replayed_total",
            "counter",
            "Publications replayed to joining subscribers (recoveries and rewinds).",
            |m| m.replayed.get(),
        ),
        (
            "ringcast_forwarded_batches_total",
            "counter",
            "Batches forwarded to their topic's home shard (one order per topic).",
            |m| m.forwarded.get(),
        ),
        (
            "ringcast_history_topics_evicted_total",
            "counter",
            "Topic states (epochs) dropped to stay under --history-memory-limit (topics without subscribers, least recently used first).",
            |m| m.shed_topics.get(),
        ),
        (
            "ringcast_history_expired_total",
            "counter",
            "Publications dropped with a history idle past its history_ttl.",
            |m| m.expired_ttl.get(),
        ),
    ];
    for (name, kind, help, f) in simple {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            sum(&|m| f(m))
        );
    }
    let name = "ringcast_history_evicted_total";
    let _ = writeln!(
        out,
        "# HELP {name} Publications evicted from topic histories, by reason.\n# TYPE {name} counter\n{name}{{reason=\"memory\"}} {}\n{name}{{reason=\"size\"}} {}",
        sum(&|m| m.evicted_memory.get()),
        sum(&|m| m.evicted_size.get()),
    );
}
