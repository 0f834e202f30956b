//! Counters shared between a receive thread and the main thread: plain
//! atomics updated once per loop turn (not per message), a latency histogram
//! handed over every 250 ms for the live line, and the thread's CPU time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds, 1 ns .. 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000_000, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts; this cannot happen.
        Err(_) => {
            Histogram::new(3).unwrap_or_else(|_| unreachable!("hdrhistogram rejects sigfig 3"))
        }
    }
}

/// What one thread exposes to the main thread while it runs.
#[derive(Debug)]
pub struct ThreadStats {
    /// Whole messages delivered to this thread's subscribers.
    pub delivered: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
    /// Connections that ended in an error (protocol, reset, unexpected EOF).
    pub errors: AtomicU64,
    /// Connections currently open.
    pub open: AtomicU64,
    /// CPU time of the thread (ns), refreshed every 250 ms.
    pub cpu_ns: AtomicU64,
    /// Kernel thread id (0 until the thread starts).
    pub tid: AtomicU64,
    /// Latency recorded since the main thread last took it.
    pub live: Mutex<Histogram<u64>>,
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats {
            delivered: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            open: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            tid: AtomicU64::new(0),
            live: Mutex::new(new_hist()),
        }
    }
}

impl ThreadStats {
    /// Adds `h` into the live histogram (called by the owning thread).
    pub fn push_live(&self, h: &Histogram<u64>) {
        if let Ok(mut live) = self.live.lock() {
            // Same bounds on both sides, so adding cannot fail.
            let _ = live.add(h);
        }
    }

    /// Moves the live histogram into `into` and clears it (called by the main thread).
    pub fn take_live(&self, into: &mut Histogram<u64>) {
        if let Ok(mut live) = self.live.lock() {
            let _ = into.add(&*live);
            live.reset();
        }
    }

    /// Relaxed read of a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// From a nanosecond histogram (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |v: u64| v as f64 / 1000.0;
        Percentiles {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn live_handover_and_percentiles() {
        let s = ThreadStats::default();
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        s.push_live(&h);
        let mut out = new_hist();
        s.take_live(&mut out);
        assert_eq!(out.len(), 1000);
        let p = Percentiles::of(&out);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        let mut again = new_hist();
        s.take_live(&mut again);
        assert!(again.is_empty());
        assert_eq!(Percentiles::of(&again).p99, 0.0);
    }
}
