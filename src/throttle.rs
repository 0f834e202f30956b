//! Log throttling: what a client can trigger must not set the log volume.
//!
//! Every log line that a peer's behaviour can cause (a protocol violation, a refused
//! request, a slow-consumer disconnect, an accept failure) goes through a [`LogThrottle`]:
//! at most one line per [`INTERVAL_TICKS`] per kind and shard, and the line that does get
//! through carries how many were suppressed since the last one. The events themselves are
//! always counted in metrics, so nothing is lost from the operator's view, only from the log.
//! The clock is the shard's tick (read once per loop turn), so a throttle costs one compare.

/// Ticks (of 100 ms) between two lines of one kind: 10 s.
pub const INTERVAL_TICKS: u32 = 100;

/// One kind of log line's throttle.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogThrottle {
    /// Tick from which the next line may be written (0: at once).
    next: u32,
    /// Lines suppressed since the last one written.
    suppressed: u64,
}

impl LogThrottle {
    /// Whether a line may be written at `tick`. `Some(n)`: write it, mentioning the `n`
    /// lines suppressed before it; `None`: suppressed (and counted for the next line).
    #[inline]
    pub fn allow(&mut self, tick: u32) -> Option<u64> {
        if tick >= self.next {
            self.next = tick.saturating_add(INTERVAL_TICKS);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let mut t = LogThrottle::default();
        assert_eq!(t.allow(0), Some(0));
        for tick in 1..INTERVAL_TICKS {
            assert_eq!(t.allow(tick), None);
        }
        assert_eq!(t.allow(INTERVAL_TICKS), Some(u64::from(INTERVAL_TICKS) - 1));
        assert_eq!(t.allow(INTERVAL_TICKS + 1), None);
        assert_eq!(t.allow(3 * INTERVAL_TICKS), Some(1));
    }
}
