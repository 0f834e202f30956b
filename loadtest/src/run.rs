//! `run`: the whole measurement. Order of events:
//! 1. check flags and targets, raise the open-file limit, pick the backend;
//! 2. start the receive threads and connect every subscriber (rate-limited),
//!    handing each to a thread as soon as its handshake is done;
//! 3. connect the publishers and start the publisher thread at t0;
//! 4. warm up, then measure [t0 + warmup, + duration) with a live line per second;
//! 5. stop publishing, let the last messages arrive (`--drain`), close every
//!    connection with a close handshake, and tally the per-subscriber results.
//!
//! A run ends by itself: every phase has a deadline.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::RunArgs;
use crate::connect::{ConnectOpts, Established, connect_many};
use crate::procstat::{self, pct};
use crate::publish::{self, PubConfig, PubConn, PubKind, PubStats};
use crate::receivers::{Backend, BufConfig, Receivers, choose_backend};
use crate::report::{ConnectReport, CpuReport, RunReport, si, us, write_json};
use crate::stats::{Percentiles, new_hist};
use crate::sys::now_ns;
use crate::tally::Tally;
use crate::target::{Scheme, Target};
use crate::worker::{NewSub, RunShared};

/// Whether subscriber i is slow: evenly spread, `fraction` of them.
pub fn is_slow(i: usize, fraction: f64) -> bool {
    fraction > 0.0 && ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
}

/// Counters at one instant.
#[derive(Clone, Debug, Default)]
struct Snap {
    t_ns: u64,
    delivered: u64,
    published: Vec<u64>,
    self_cpu: u64,
    server_cpu: Option<u64>,
    threads: Vec<(String, Option<u64>)>,
}

struct Ctx<'a> {
    args: &'a RunArgs,
    recv: &'a Receivers,
    pstats: &'a PubStats,
}

impl Ctx<'_> {
    fn snap(&self) -> Snap {
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
        if !self.pstats.published.is_empty() {
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
                .args
                .server_pid
                .and_then(|p| procstat::sample(&p.to_string()).ok())
                .map(|s| s.cpu_ns),
            threads,
        }
    }
}

/// Runs `run` and returns the report (also written to --json, summary printed by the caller).
pub fn run(args: &RunArgs, command: Vec<String>) -> Result<RunReport, String> {
    args.validate()?;
    // `--server-pid 0` means none (scripts pass it when they have no pid).
    let args = &RunArgs {
        server_pid: args.server_pid.filter(|&p| p != 0),
        ..args.clone()
    };
    let allow_remote = args.connect.allow_remote;
    let sub_t = Target::parse(&args.sub_url, allow_remote)?;
    if sub_t.scheme != Scheme::Ws {
        return Err("--sub-url must be a ws:// URL".into());
    }
    let pub_t = match (&args.pub_url, &args.pub_http) {
        _ if args.publishers == 0 => None,
        (Some(u), _) => Some(Target::parse(u, allow_remote)?),
        (None, Some(u)) => Some(Target::parse(u, allow_remote)?),
        (None, None) => None,
    };
    if let (Some(t), Some(_)) = (&pub_t, &args.pub_url)
        && t.scheme != Scheme::Ws
    {
        return Err("--pub-url must be a ws:// URL (use --pub-http for HTTP POST)".into());
    }
    if let (Some(t), Some(_)) = (&pub_t, &args.pub_http)
        && t.scheme != Scheme::Http
    {
        return Err("--pub-http must be an http:// URL".into());
    }
    let publishers = if pub_t.is_some() { args.publishers } else { 0 };
    let mut notes = Vec::new();
    let needed = (args.subscribers + publishers + 64) as u64;
    match crate::sys::raise_nofile_limit() {
        Ok((soft, _)) if soft < needed => {
            return Err(format!(
                "the open-file limit is {soft} (hard limit), below the {needed} descriptors this run needs; raise it (ulimit -Hn) or use fewer subscribers"
            ));
        }
        Ok(_) => {}
        Err(e) => notes.push(format!("could not raise RLIMIT_NOFILE: {e}")),
    }
    let backend = choose_backend(args.io)?;
    let server_rss_before = args
        .server_pid
        .map(|p| procstat::sample(&p.to_string()).map_err(|e| format!("--server-pid {p}: {e}")))
        .transpose()?
        .and_then(|s| s.rss_kib);

    let (pub_poll, waker) = if publishers > 0 {
        let (p, w) = publish::poll_and_waker().map_err(|e| format!("publisher poll: {e}"))?;
        (Some(p), Some(w))
    } else {
        (None, None)
    };
    let shared = Arc::new(RunShared::new(publishers, waker));
    let mut recv = Receivers::spawn(
        args.threads,
        backend,
        BufConfig {
            size: args.recv_buf,
            count: args.recv_bufs,
        },
        Arc::clone(&shared),
        args.topics,
        publishers,
        args.slow_read_rate,
    )?;

    // Subscribers.
    let n = args.subscribers;
    let topics = args.topics;
    let slow: Vec<bool> = (0..n).map(|i| is_slow(i, args.slow_fraction)).collect();
    let mut probe = vec![false; n];
    for t in 0..topics {
        if let Some(i) = (t..n).step_by(topics).find(|&i| !slow[i]) {
            probe[i] = true;
        }
    }
    let rate = args.connect.connect_rate.unwrap_or(20_000);
    let budget_s = if rate == 0 {
        30.0
    } else {
        (n as f64 / f64::from(rate) * 3.0).max(30.0)
    };
    let opts = ConnectOpts {
        rate,
        concurrency: args.connect.concurrency,
        timeout: args.connect.connect_timeout,
        sources: args.connect.sources.clone(),
        deadline: Some(Instant::now() + Duration::from_secs_f64(budget_s)),
    };
    let quiet = args.quiet;
    let mut healthy_on_topic = vec![0u64; topics];
    let mut dispatch_err: Option<String> = None;
    let mut on_sub = |e: Established| {
        let topic = e.idx % topics;
        let slow_mode = slow[e.idx].then_some(args.slow_mode);
        if slow_mode.is_none() {
            healthy_on_topic[topic] += 1;
        }
        let r = recv.dispatch(NewSub {
            id: e.idx,
            topic,
            stream: e.stream,
            leftover: e.leftover,
            slow: slow_mode,
            probe: probe[e.idx],
        });
        if let Err(err) = r {
            dispatch_err.get_or_insert(err);
        }
    };
    let mut progress = |s: &crate::connect::ConnectStats| {
        if !quiet {
            eprintln!(
                "connecting: {} ok, {} failed, {:.1}s",
                s.ok,
                s.failed,
                s.elapsed.as_secs_f64()
            );
        }
    };
    let sub_url_path = |i: usize| sub_t.path_for(i % topics);
    let cstats = connect_many(
        &sub_t,
        n,
        &sub_url_path,
        &opts,
        &mut on_sub,
        Some(&mut progress),
    )
    .map_err(|e| format!("connecting subscribers: {e}"))?;
    if let Some(e) = dispatch_err {
        return Err(e);
    }
    if cstats.ok == 0 {
        let _ = recv.close_and_join(Duration::from_millis(100));
        return Err(format!(
            "no subscriber could connect to {}: {}",
            args.sub_url,
            cstats.top_reason().unwrap_or("unknown reason")
        ));
    }
    if cstats.failed > 0 {
        notes.push(format!(
            "{} of {n} subscribers failed to connect",
            cstats.failed
        ));
    }
    if args.in_flight.is_some() && (0..topics.min(publishers)).any(|t| healthy_on_topic[t] == 0) {
        let _ = recv.close_and_join(Duration::from_millis(100));
        return Err(
            "--in-flight: a published topic has no connected healthy subscriber to probe".into(),
        );
    }

    // Publishers.
    let pstats = Arc::new(PubStats::new(publishers));
    let mut pub_thread = None;
    if let (Some(t), Some(poll)) = (&pub_t, pub_poll) {
        let mut conns: Vec<PubConn> = Vec::new();
        let popts = ConnectOpts {
            rate: 0,
            deadline: Some(Instant::now() + Duration::from_secs(30)),
            ..opts.clone()
        };
        let http = t.scheme == Scheme::Http;
        let pstat = connect_many(
            t,
            publishers,
            &|j| t.path_for(j % topics),
            &popts,
            &mut |e: Established| {
                conns.push(PubConn {
                    id: e.idx,
                    stream: e.stream,
                    leftover: e.leftover,
                    http_head: if http {
                        publish::http_head(
                            &t.host_header,
                            &t.path_for(e.idx % topics),
                            args.size,
                            args.binary,
                        )
                    } else {
                        Vec::new()
                    },
                })
            },
            None,
        )
        .map_err(|e| format!("connecting publishers: {e}"))?;
        if pstat.failed > 0 {
            let _ = recv.close_and_join(Duration::from_millis(200));
            return Err(format!(
                "{} of {publishers} publishers could not connect: {}",
                pstat.failed,
                pstat.top_reason().unwrap_or("unknown reason")
            ));
        }
        conns.sort_by_key(|c| c.id);
        let cfg = PubConfig {
            rate: args.rate,
            in_flight: args.in_flight,
            size: args.size,
            binary: args.binary,
            kind: if http { PubKind::Http } else { PubKind::Ws },
        };
        let sh = Arc::clone(&shared);
        let ps = Arc::clone(&pstats);
        pub_thread = Some(
            thread::Builder::new()
                .name("publish".into())
                .spawn(move || publish::run(cfg, conns, poll, sh, ps))
                .map_err(|e| format!("spawn publisher: {e}"))?,
        );
    }

    // Timeline.
    let t0 = now_ns();
    let win_start = t0 + args.warmup.as_nanos() as u64;
    let win_end = win_start + args.duration.as_nanos() as u64;
    shared.window_start.store(win_start, Ordering::Relaxed);
    shared.window_end.store(win_end, Ordering::Relaxed);
    let ctx = Ctx {
        args,
        recv: &recv,
        pstats: &pstats,
    };
    let mut start_snap: Option<Snap> = None;
    let mut prev = ctx.snap();
    let mut live = new_hist();
    let mut next_tick = t0 + 1_000_000_000;
    let end_snap = loop {
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
            start_snap = Some(ctx.snap());
        }
        if now >= win_end {
            break ctx.snap();
        }
        if now >= next_tick {
            next_tick += 1_000_000_000;
            let cur = ctx.snap();
            for s in &recv.stats {
                s.take_live(&mut live);
            }
            if !quiet {
                eprintln!(
                    "{}",
                    live_line(&cur, &prev, t0, (win_start, win_end), &recv, &pstats, &live)
                );
            }
            live.reset();
            prev = cur;
        }
        if recv.any_exited() {
            break ctx.snap();
        }
    };
    let start_snap = start_snap.unwrap_or_else(|| end_snap.clone());
    let measured = end_snap.t_ns.saturating_sub(start_snap.t_ns);
    if (measured as f64) < args.duration.as_nanos() as f64 * 0.9 {
        notes.push(format!(
            "the measured window lasted {:.3}s instead of {:.3}s (this process was not scheduled in time, or a receive thread stopped)",
            measured as f64 / 1e9,
            args.duration.as_secs_f64()
        ));
    }
    let server_rss_after = args
        .server_pid
        .and_then(|p| procstat::sample(&p.to_string()).ok())
        .and_then(|s| s.rss_kib);

    // Stop publishing, drain, close.
    pstats.stop.store(true, Ordering::Relaxed);
    let drain_deadline = Instant::now() + args.drain;
    let mut last = recv.sum(|s| s.delivered.load(Ordering::Relaxed));
    let mut still = Instant::now();
    while Instant::now() < drain_deadline {
        thread::sleep(Duration::from_millis(20));
        let d = recv.sum(|s| s.delivered.load(Ordering::Relaxed));
        let flushed = publishers == 0 || pstats.flushed.load(Ordering::Relaxed);
        if d != last || !flushed {
            last = d;
            still = Instant::now();
        } else if still.elapsed() >= Duration::from_millis(200) {
            break;
        }
    }
    let recv_errors = recv.sum(|s| s.errors.load(Ordering::Relaxed));
    let results = recv.close_and_join(Duration::from_secs(2))?;
    if let Some(h) = pub_thread {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => notes.push(format!("publisher thread: {e}")),
            Err(_) => return Err("the publisher thread panicked".into()),
        }
    }

    // Tally.
    let published_final: Vec<u64> = pstats
        .published
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .collect();
    let t = Tally::of(&results, &published_final);
    notes.extend(t.notes.iter().cloned());
    if t.unclean > 0 {
        notes.push(format!(
            "{} healthy subscribers did not finish with a clean close handshake",
            t.unclean
        ));
    }
    if backend == Backend::Uring && t.backend != "io_uring" {
        notes.push("io_uring threads reported another backend".into());
    }
    let window_s = (end_snap.t_ns.saturating_sub(start_snap.t_ns)) as f64 / 1e9;
    let per_s = |a: u64, b: u64| {
        if window_s > 0.0 {
            b.saturating_sub(a) as f64 / window_s
        } else {
            0.0
        }
    };
    let delivered_per_s = per_s(start_snap.delivered, end_snap.delivered);
    let published_in_window: u64 = end_snap
        .published
        .iter()
        .zip(&start_snap.published)
        .map(|(e, s)| e.saturating_sub(*s))
        .sum();
    let expected_per_s = if publishers == 0 {
        delivered_per_s
    } else {
        let exp: f64 = end_snap
            .published
            .iter()
            .zip(&start_snap.published)
            .enumerate()
            .map(|(j, (e, s))| e.saturating_sub(*s) as f64 * healthy_on_topic[j % topics] as f64)
            .sum();
        if window_s > 0.0 { exp / window_s } else { 0.0 }
    };
    let wall = end_snap.t_ns.saturating_sub(start_snap.t_ns);
    let mut threads = BTreeMap::new();
    for ((name, a), (_, b)) in start_snap.threads.iter().zip(&end_snap.threads) {
        if let (Some(a), Some(b)) = (a, b) {
            threads.insert(name.clone(), pct(*a, *b, wall));
        }
    }
    let max_thread = threads.values().copied().fold(0.0, f64::max);
    let cpu = CpuReport {
        generator_pct: pct(start_snap.self_cpu, end_snap.self_cpu, wall),
        server_pct: match (start_snap.server_cpu, end_snap.server_cpu) {
            (Some(a), Some(b)) => Some(pct(a, b, wall)),
            _ => None,
        },
        generator_max_thread_pct: max_thread,
        threads,
    };
    let skipped = pstats.skipped.load(Ordering::Relaxed);
    if skipped > 0 {
        notes.push(format!(
            "{skipped} messages due by --rate were not published: the server did not take them fast enough"
        ));
    }
    let report = RunReport {
        delivered_per_s,
        expected_per_s,
        published_per_s: if window_s > 0.0 {
            published_in_window as f64 / window_s
        } else {
            0.0
        },
        published: pstats.total.load(Ordering::Relaxed),
        delivered: t.counts.received + t.slow.delivered + t.foreign,
        lost: t.lost,
        duplicated: t.counts.duplicated,
        out_of_order: t.counts.out_of_order(),
        foreign: t.foreign,
        errors: recv_errors + pstats.errors.load(Ordering::Relaxed),
        publish_skipped: skipped,
        latency_us: Percentiles::of(&t.hist),
        connect: ConnectReport::of(&cstats),
        generator_limited: max_thread > 90.0,
        cpu,
        server_rss_kib: crate::report::RssReport {
            before: server_rss_before,
            after: server_rss_after,
        },
        slow: t.slow,
        io: t.backend,
        duration_s: window_s,
        subscribers: cstats.ok,
        publishers: publishers as u64,
        subscriber_ends: t.subscriber_ends,
        notes,
        command,
    };
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

fn live_line(
    cur: &Snap,
    prev: &Snap,
    t0: u64,
    window: (u64, u64),
    recv: &Receivers,
    pstats: &PubStats,
    live: &hdrhistogram::Histogram<u64>,
) -> String {
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
        recv.sum(|s| s.errors.load(Ordering::Relaxed)) + pstats.errors.load(Ordering::Relaxed),
        gen_cpu,
        srv,
        if cur.t_ns < window.0 {
            "  (warmup)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn slow_spread() {
        let n = 1000;
        let k = (0..n).filter(|&i| is_slow(i, 0.1)).count();
        assert_eq!(k, 100);
        assert!(!(0..n).any(|i| is_slow(i, 0.0)));
        // Evenly spread: never two in a row at 10%.
        assert!(!(1..n).any(|i| is_slow(i, 0.1) && is_slow(i - 1, 0.1)));
    }
}
