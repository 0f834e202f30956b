//! `run`: the whole measurement. Order of events:
//! 1. check flags and targets, raise the open-file limit, pick the backend;
//!    With `--token-*`, mint one JWT per subscriber and publisher now, before anything is timed;
//! 2. start the receive threads and connect every subscriber (rate-limited),
//!    handing each to a thread as soon as its handshake is done;
//! 3. connect the publishers and start the publisher thread at t0;
//! 4. warm up, then measure [t0 + warmup, + duration) with a live line per second
//!    (and the server's `--metrics-url` scraped at both ends), see [`crate::window`];
//! 5. stop publishing, let the last messages arrive (`--drain`), close every
//!    connection with a close handshake, and tally the per-subscriber results.
//!
//! A run ends by itself: every phase has a deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::RunArgs;
use crate::connect::{ConnectOpts, Established, connect_many};
use crate::envelope;
use crate::procstat;
use crate::publish::{self, PubConfig, PubConn, PubKind, PubStats, Redial};
use crate::receivers::{Backend, BufConfig, Receivers, choose_backend};
use crate::report::{ConnectReport, RunReport, write_json};
use crate::scrape::Scraper;
use crate::stats::Percentiles;
use crate::sys::now_ns;
use crate::tally::Tally;
use crate::target::{Scheme, Target};
use crate::token::mint;
use crate::window::{self, Probe};
use crate::worker::{NewSub, RunShared};

/// Whether subscriber i is slow: evenly spread, `fraction` of them.
pub fn is_slow(i: usize, fraction: f64) -> bool {
    fraction > 0.0 && ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
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
    let scraper = args
        .metrics_url
        .as_deref()
        .map(|u| Scraper::new(u, allow_remote))
        .transpose()?;
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
    // One token per connection: subscribers 0..n, publishers n..n+publishers.
    let (sub_tokens, pub_tokens, token_report) =
        match mint(&args.token, 0, args.subscribers + publishers)? {
            Some((mut t, r)) => {
                let p = t.split_off(args.subscribers);
                (Some(Arc::new(t)), Some(Arc::new(p)), Some(r))
            }
            None => (None, None, None),
        };
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
        tokens: sub_tokens,
    };
    let quiet = args.quiet;
    let mut healthy_on_topic = vec![0u64; topics];
    let mut dispatch_err: Option<String> = None;
    // ringcast's mux mode (`/ws?subscribe=...`) wraps each message in an envelope.
    let envelopes = envelope::is_mux_url(&args.sub_url);
    let envelope_v2 = envelopes && envelope::is_v2_url(&args.sub_url);
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
            envelopes,
            envelope_v2,
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
            tokens: pub_tokens.clone(),
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
                        let path = t.path_for(e.idx % topics);
                        let (path, header) = match &pub_tokens {
                            Some(tk) => tk.http_parts(e.idx, &path),
                            None => (path, None),
                        };
                        publish::http_head(
                            &t.host_header,
                            &path,
                            args.size,
                            args.binary,
                            header.as_ref(),
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
            redial: http.then_some(Redial { addr: t.addr }),
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
    let probe = Probe {
        server_pid: args.server_pid,
        recv: &recv,
        pstats: &pstats,
        publish_thread: publishers > 0,
    };
    let w = window::measure(
        &probe,
        now_ns(),
        args.warmup,
        args.duration,
        quiet,
        scraper.as_ref(),
        &mut notes,
    );
    let server_rss_after = args
        .server_pid
        .and_then(|p| procstat::sample(&p.to_string()).ok())
        .and_then(|s| s.rss_kib);

    // Stop publishing, drain, close.
    pstats.stop.store(true, Ordering::Relaxed);
    window::drain(&recv, args.drain, || {
        publishers == 0 || pstats.flushed.load(Ordering::Relaxed)
    });
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
    let window_s = w.secs();
    let delivered_per_s = w.per_s(w.start.delivered, w.end.delivered);
    let published_in_window: u64 = w.published().sum();
    let expected_per_s = if publishers == 0 {
        delivered_per_s
    } else {
        let exp: f64 = w
            .published()
            .enumerate()
            .map(|(j, n)| n as f64 * healthy_on_topic[j % topics] as f64)
            .sum();
        if window_s > 0.0 { exp / window_s } else { 0.0 }
    };
    let cpu = w.cpu();
    let max_thread = cpu.generator_max_thread_pct;
    let skipped = pstats.skipped.load(Ordering::Relaxed);
    if skipped > 0 {
        notes.push(format!(
            "{skipped} messages due by --rate were not published: the server did not take them fast enough"
        ));
    }
    let failed = pstats.http_failed.load(Ordering::Relaxed);
    let retried = pstats.http_retried.load(Ordering::Relaxed);
    let reconnects = pstats.http_reconnects.load(Ordering::Relaxed);
    if failed > 0 {
        notes.push(format!(
            "{failed} HTTP publishes got no answer (the connection ended under them, or the run did): perhaps published, not sent twice; counted in errors"
        ));
    }
    if reconnects > 0 {
        notes.push(format!(
            "the server ended HTTP publish connections: {reconnects} reopened, {retried} requests it had not processed sent again"
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
        delivered: t.counts.received + t.slow.delivered + t.foreign + t.own,
        lost: t.lost,
        duplicated: t.counts.duplicated,
        out_of_order: t.counts.out_of_order(),
        foreign: t.foreign,
        offsets_checked: t.offsets.checked,
        offset_gaps: t.offsets.gaps,
        offset_missing: t.offsets.missing,
        offset_dups: t.offsets.dups,
        offset_gaps_allowed: args.allow_offset_gaps,
        offset_failure: None,
        errors: recv_errors + pstats.errors.load(Ordering::Relaxed),
        publish_skipped: skipped,
        publish_failed: failed,
        publish_retried: retried,
        publish_reconnects: reconnects,
        latency_us: Percentiles::of(&t.hist),
        connect: ConnectReport::of(&cstats),
        generator_limited: max_thread > 90.0,
        cpu,
        server_rss_kib: crate::report::RssReport {
            before: server_rss_before,
            after: server_rss_after,
        },
        slow: t.slow,
        self_delivered: t.own,
        server_metrics: w.metrics,
        chat: None,
        io: t.backend,
        duration_s: window_s,
        subscribers: cstats.ok,
        publishers: publishers as u64,
        subscriber_ends: t.subscriber_ends,
        token: token_report,
        notes,
        command,
    };
    let report = RunReport {
        offset_failure: report.offset_verdict(),
        ..report
    };
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report)
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
