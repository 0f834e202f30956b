//! Distributions an operator wants to see, not only totals: how long a batch takes to be
//! queued to its subscribers, how deep send queues are when they are flushed, how long a
//! WebSocket handshake takes. Log2 buckets (a value lands in the bucket of its highest set
//! bit: one `leading_zeros`, no search), one set per shard like the counters (single
//! writer, relaxed loads and stores), summed when scraped, shown in the Prometheus
//! histogram format.
//!
//! They are **sampled**: the shard records one event in [`SAMPLE_EVERY`] (a counter, no
//! randomness), so a histogram costs nothing measurable per delivery; its `_count` is the
//! number of samples, not of events (the counters say how many events there were).

use super::Counter;

/// One event in this many is recorded.
pub const SAMPLE_EVERY: u32 = 64;

/// Log2 buckets: bucket `i` holds values in `[2^(i-1), 2^i)` of the unit (bucket 0: 0).
const BUCKETS: usize = 40;

/// A log2 histogram written by one thread.
#[derive(Debug)]
pub struct Histogram {
    buckets: [Counter; BUCKETS],
    sum: Counter,
    count: Counter,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum: Counter::default(),
            count: Counter::default(),
        }
    }
}

impl Histogram {
    /// Records `v` (in the histogram's unit: nanoseconds, bytes).
    #[inline]
    pub fn record(&self, v: u64) {
        let i = (64 - v.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[i].inc();
        self.sum.add(v);
        self.count.inc();
    }
}

/// Decides which events are sampled: every [`SAMPLE_EVERY`]th.
#[derive(Debug, Default)]
pub struct Sampler(u32);

impl Sampler {
    /// Whether this event is recorded.
    #[inline]
    pub fn take(&mut self) -> bool {
        self.0 = self.0.wrapping_add(1);
        self.0.is_multiple_of(SAMPLE_EVERY)
    }
}

/// Appends histogram `name` summed over `shards` (`of` picks it from each), with `le`
/// bounds and the sum divided by `scale` (1e9 for nanoseconds shown in seconds, 1 for
/// bytes); buckets from `first` (log2 of the smallest bound shown) to the last non-empty.
pub fn render(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[std::sync::Arc<super::ShardMetrics>],
    of: fn(&super::ShardMetrics) -> &Histogram,
    scale: f64,
    first: usize,
) {
    use std::fmt::Write as _;
    let mut counts = [0u64; BUCKETS];
    let (mut sum, mut count) = (0u64, 0u64);
    for s in shards {
        let h = of(s);
        for (c, b) in counts.iter_mut().zip(&h.buckets) {
            *c += b.get();
        }
        sum = sum.wrapping_add(h.sum.get());
        count += h.count.get();
    }
    let _ = writeln!(
        out,
        "# HELP {name} {help} (sampled: one event in {SAMPLE_EVERY})\n# TYPE {name} histogram"
    );
    let last = counts
        .iter()
        .rposition(|&c| c > 0)
        .unwrap_or(first)
        .max(first);
    let mut cumulative: u64 = counts.iter().take(first + 1).sum();
    for (i, &c) in counts.iter().enumerate().take(last + 1).skip(first) {
        if i > first {
            cumulative += c;
        }
        // Bucket i holds values below 2^i.
        let le = (1u64 << i) as f64 / scale;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sum as f64 / scale);
    let _ = writeln!(out, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_log2_bucket_and_render_cumulatively() {
        let m = std::sync::Arc::new(crate::metrics::ShardMetrics::default());
        for v in [0, 1, 3, 1000, 1500, 1 << 20] {
            m.fanout_ns.record(v);
        }
        let mut out = String::new();
        render(&mut out, "h", "test", &[m], |m| &m.fanout_ns, 1.0, 10);
        // Values below 2^10 (0, 1, 3, 1000) are in the first bound shown.
        assert!(out.contains("h_bucket{le=\"1024\"} 4\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"2048\"} 5\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"2097152\"} 6\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.contains("h_count 6\n"), "{out}");
        assert!(
            out.contains(&format!("h_sum {}\n", 2504 + (1 << 20))),
            "{out}"
        );
        let mut s = Sampler::default();
        let taken = (0..SAMPLE_EVERY * 3).filter(|_| s.take()).count();
        assert_eq!(taken, 3);
    }
}
