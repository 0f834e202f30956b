//! CPU time and resident memory of a process, from /proc: the generator's own
//! (`/proc/self`) and the server's (`--server-pid`). Per-thread CPU of the
//! generator's own threads comes from `sys::thread_cpu_ns` instead.

use std::fs;
use std::io;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, nanoseconds.
    pub cpu_ns: u64,
    /// VmRSS in KiB (None when the status file has no such line).
    pub rss_kib: Option<u64>,
}

/// Reads /proc/{pid}/stat and /proc/{pid}/status ("self" for this process).
pub fn sample(pid: &str) -> io::Result<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat format")
    })?;
    let hz = crate::sys::clock_ticks_per_s();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(ProcSample {
        cpu_ns: ticks.saturating_mul(1_000_000_000 / hz.max(1)),
        rss_kib: parse_rss_kib(&status),
    })
}

/// CPU time (ns) of one thread of this process, by kernel thread id.
pub fn thread_cpu_ns(tid: u64) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let hz = crate::sys::clock_ticks_per_s();
    Some(parse_stat_ticks(&stat)?.saturating_mul(1_000_000_000 / hz.max(1)))
}

/// utime + stime in clock ticks from the text of /proc/PID/stat.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces or ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    // After the name: state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in KiB from the text of /proc/PID/status.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Percent of one core used between two CPU readings over `wall_ns`.
pub fn pct(cpu_before_ns: u64, cpu_after_ns: u64, wall_ns: u64) -> f64 {
    if wall_ns == 0 {
        return 0.0;
    }
    cpu_after_ns.saturating_sub(cpu_before_ns) as f64 * 100.0 / wall_ns as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_name() {
        let s = "1234 (we ird) na)me) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 2000 300";
        assert_eq!(parse_stat_ticks(s), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let s = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    5120 kB\nThreads: 1\n";
        assert_eq!(parse_rss_kib(s), Some(5120));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn samples_self() {
        let s = sample("self").unwrap();
        assert!(s.rss_kib.unwrap_or(0) > 0);
        assert!((pct(0, 500, 1000) - 50.0).abs() < 1e-9);
        assert_eq!(pct(5, 1, 0), 0.0);
    }
}
