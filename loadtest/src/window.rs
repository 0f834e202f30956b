//! The measured window, shared by `run` and `chat`: counter snapshots
//! (deliveries, messages sent per publisher, CPU of this process, of its threads
//! and of the server), the warm-up and measured window with a live line per
//! second, the server's `/metrics` around the window, the drain once publishing
//! stops, and the CPU figures over the window.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::procstat::{self, pct};
use crate::publish::PubStats;
use crate::receivers::Receivers;
use crate::report::{CpuReport, si, us};
use crate::scrape::{MetricsReport, Scraper};
use crate::stats::{Percentiles, new_hist};
use crate::sys::now_ns;

/// Counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snap {
    /// When (CLOCK_MONOTONIC ns).
    pub t_ns: u64,
    /// Messages delivered to all subscribers so far.
    pub delivered: u64,
    /// Messages sent so far, per publisher.
    pub published: Vec<u64>,
    /// CPU time of this process (ns).
    pub self_cpu: u64,
    /// CPU time of the server (ns), when there is one to measure.
    pub server_cpu: Option<u64>,
    /// CPU time of each generator thread by name (ns).
    pub threads: Vec<(String, Option<u64>)>,
}

/// What a snapshot reads.
#[derive(Debug)]
pub struct Probe<'a> {
    /// The server process (`--server-pid`), if any.
    pub server_pid: Option<u32>,
    /// The receive threads.
    pub recv: &'a Receivers,
    /// The publishers' counters.
    pub pstats: &'a PubStats,
    /// Whether a publisher thread runs (its CPU is reported as `publish`).
    pub publish_thread: bool,
}

impl Probe<'_> {
    /// Reads every counter now.
    pub fn snap(&self) -> Snap {
        let mut threads: Vec<(String, Option<u64>)> = self
            .recv
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("recv-{i}"),
                    procstat::thread_cpu_ns(s.tid.load(Ordering::Relaxed)),
                )
            })
            .collect();
        if self.publish_thread {
            threads.push((
                "publish".into(),
                procstat::thread_cpu_ns(self.pstats.tid.load(Ordering::Relaxed)),
            ));
        }
        Snap {
            t_ns: now_ns(),
            delivered: self.recv.sum(|s| s.delivered.load(Ordering::Relaxed)),
            published: self
                .pstats
                .published
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect(),
            self_cpu: procstat::sample("self").map(|s| s.cpu_ns).unwrap_or(0),
            server_cpu: self
                .server_pid
                .and_then(|p| procstat::sample(&p.to_string()).ok())
                .map(|s| s.cpu_ns),
            threads,
        }
    }
}

/// What the window measured.
#[derive(Debug)]
pub struct Window {
    /// Counters when the window opened.
    pub start: Snap,
    /// Counters when it closed.
    pub end: Snap,
    /// The server's metrics around the window (with `--metrics-url`, when both scrapes worked).
    pub metrics: Option<MetricsReport>,
}

impl Window {
    /// Length of the window in seconds.
    pub fn secs(&self) -> f64 {
        self.end.t_ns.saturating_sub(self.start.t_ns) as f64 / 1e9
    }

    /// Growth of a counter per second over the window.
    pub fn per_s(&self, a: u64, b: u64) -> f64 {
        let s = self.secs();
        if s > 0.0 {
            b.saturating_sub(a) as f64 / s
        } else {
            0.0
        }
    }

    /// Messages each publisher sent inside the window.
    pub fn published(&self) -> impl Iterator<Item = u64> + '_ {
        self.end
            .published
            .iter()
            .zip(&self.start.published)
            .map(|(e, s)| e.saturating_sub(*s))
    }

    /// CPU use over the window.
    pub fn cpu(&self) -> CpuReport {
        let (a, b) = (&self.start, &self.end);
        let wall = b.t_ns.saturating_sub(a.t_ns);
        let mut threads = BTreeMap::new();
        for ((name, x), (_, y)) in a.threads.iter().zip(&b.threads) {
            if let (Some(x), Some(y)) = (x, y) {
                threads.insert(name.clone(), pct(*x, *y, wall));
            }
        }
        let max_thread = threads.values().copied().fold(0.0, f64::max);
        CpuReport {
            generator_pct: pct(a.self_cpu, b.self_cpu, wall),
            server_pct: match (a.server_cpu, b.server_cpu) {
                (Some(x), Some(y)) => Some(pct(x, y, wall)),
                _ => None,
            },
            generator_max_thread_pct: max_thread,
            threads,
        }
    }
}

/// Warm-up from `t0`, then the measured window `[t0 + warmup, + duration)`: sets
/// the window in the shared state (latency is recorded for messages sent inside
/// it), prints a live line per second unless `quiet`, scrapes `metrics` right
/// after the opening and the closing snapshot, and stops early if a receive
/// thread ends. Anything odd goes to `notes`.
pub fn measure(
    probe: &Probe<'_>,
    t0: u64,
    warmup: Duration,
    duration: Duration,
    quiet: bool,
    metrics: Option<&Scraper>,
    notes: &mut Vec<String>,
) -> Window {
    let recv = probe.recv;
    let win_start = t0 + warmup.as_nanos() as u64;
    let win_end = win_start + duration.as_nanos() as u64;
    recv.shared.window_start.store(win_start, Ordering::Relaxed);
    recv.shared.window_end.store(win_end, Ordering::Relaxed);
    let scrape = |when: &str, notes: &mut Vec<String>| {
        let s = metrics?;
        let t = now_ns();
        match s.scrape() {
            Ok(m) => Some((t, m)),
            Err(e) => {
                notes.push(format!("server metrics at the {when} of the window: {e}"));
                None
            }
        }
    };
    let mut start_snap: Option<Snap> = None;
    let mut before = None;
    let mut prev = probe.snap();
    let mut live = new_hist();
    let mut next_tick = t0 + 1_000_000_000;
    let end = loop {
        let now = now_ns();
        let target = if start_snap.is_none() {
            next_tick.min(win_start)
        } else {
            next_tick.min(win_end)
        };
        if target > now {
            thread::sleep(Duration::from_nanos(target - now));
        }
        let now = now_ns();
        if start_snap.is_none() && now >= win_start {
            start_snap = Some(probe.snap());
            before = scrape("start", notes);
        }
        if now >= win_end {
            break probe.snap();
        }
        if now >= next_tick {
            next_tick += 1_000_000_000;
            let cur = probe.snap();
            for s in &recv.stats {
                s.take_live(&mut live);
            }
            if !quiet {
                eprintln!("{}", live_line(&cur, &prev, t0, win_start, probe, &live));
            }
            live.reset();
            prev = cur;
        }
        if recv.any_exited() {
            break probe.snap();
        }
    };
    let after = if before.is_some() {
        scrape("end", notes)
    } else {
        None
    };
    let start = start_snap.unwrap_or_else(|| end.clone());
    let measured = end.t_ns.saturating_sub(start.t_ns);
    if (measured as f64) < duration.as_nanos() as f64 * 0.9 {
        notes.push(format!(
            "the measured window lasted {:.3}s instead of {:.3}s (this process was not scheduled in time, or a receive thread stopped)",
            measured as f64 / 1e9,
            duration.as_secs_f64()
        ));
    }
    let metrics = match (metrics, before, after) {
        (Some(s), Some((t1, before)), Some((t2, after))) => Some(MetricsReport {
            url: s.url().to_string(),
            interval_s: t2.saturating_sub(t1) as f64 / 1e9,
            before,
            after,
        }),
        _ => None,
    };
    Window {
        start,
        end,
        metrics,
    }
}

/// After publishing stopped: waits, at most `drain`, until `flushed()` says every
/// publisher has handed its bytes to the kernel and deliveries have not moved for
/// 200 ms.
pub fn drain(recv: &Receivers, drain: Duration, flushed: impl Fn() -> bool) {
    let deadline = Instant::now() + drain;
    let mut last = recv.sum(|s| s.delivered.load(Ordering::Relaxed));
    let mut still = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        let d = recv.sum(|s| s.delivered.load(Ordering::Relaxed));
        if d != last || !flushed() {
            last = d;
            still = Instant::now();
        } else if still.elapsed() >= Duration::from_millis(200) {
            break;
        }
    }
}

fn live_line(
    cur: &Snap,
    prev: &Snap,
    t0: u64,
    win_start: u64,
    probe: &Probe<'_>,
    live: &hdrhistogram::Histogram<u64>,
) -> String {
    let recv = probe.recv;
    let dt = cur.t_ns.saturating_sub(prev.t_ns).max(1) as f64 / 1e9;
    let sent: u64 = cur
        .published
        .iter()
        .sum::<u64>()
        .saturating_sub(prev.published.iter().sum());
    let p = Percentiles::of(live);
    let gen_cpu = pct(
        prev.self_cpu,
        cur.self_cpu,
        cur.t_ns.saturating_sub(prev.t_ns),
    );
    let srv = match (prev.server_cpu, cur.server_cpu) {
        (Some(a), Some(b)) => format!(" srv {:.0}%", pct(a, b, cur.t_ns.saturating_sub(prev.t_ns))),
        _ => String::new(),
    };
    let _ = std::io::stderr().flush();
    format!(
        "[{:>4.0}s] conns {}  sent {}/s  delivered {}/s  p50 {}  p99 {}  errors {}  cpu gen {:.0}%{}{}",
        cur.t_ns.saturating_sub(t0) as f64 / 1e9,
        recv.sum(|s| s.open.load(Ordering::Relaxed)),
        si(sent as f64 / dt),
        si(cur.delivered.saturating_sub(prev.delivered) as f64 / dt),
        if live.is_empty() {
            "-".to_string()
        } else {
            us(p.p50)
        },
        if live.is_empty() {
            "-".to_string()
        } else {
            us(p.p99)
        },
        recv.sum(|s| s.errors.load(Ordering::Relaxed))
            + probe.pstats.errors.load(Ordering::Relaxed),
        gen_cpu,
        srv,
        if cur.t_ns < win_start {
            "  (warmup)"
        } else {
            ""
        }
    )
}
