//! `chat`: N members of one topic, one connection each; every member publishes
//! at a fixed rate and receives everybody else's messages (its own too only when
//! the server echoes, `--expect-echo`). With 1,000 members at 1 msg/s that is
//! 1,000 messages/s in and 999,000 deliveries/s out: the load where costs per
//! subscriber and per publisher multiply, unlike a fan-out with one publisher.
//!
//! Order of events:
//! 1. check flags and the target, raise the open-file limit, pick the backend;
//! 2. start the receive threads and connect every member (rate-limited);
//! 3. once every thread holds its members, start sending (t0): each thread sends
//!    for the members it reads, on the same connections ([`crate::chat_send`]);
//! 4. warm up, then measure the window ([`crate::window`]);
//! 5. stop sending, drain, close every connection with a close handshake, and
//!    tally: every member checks order, gaps and duplicates per other member.
//!
//! The report has the keys of `run` (so the same verdicts apply), with `chat`
//! set and `self_delivered` counting messages the server wrongly sent back to
//! their sender.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::chat_send::ChatPlan;
use crate::cli::ChatArgs;
use crate::connect::{ConnectOpts, Established, connect_many};
use crate::procstat;
use crate::receivers::{Backend, BufConfig, Receivers, choose_backend};
use crate::report::{ChatReport, ConnectReport, RssReport, RunReport, write_json};
use crate::scrape::Scraper;
use crate::stats::Percentiles;
use crate::sys::now_ns;
use crate::tally::Tally;
use crate::target::{Scheme, Target};
use crate::window::{self, Probe};
use crate::worker::{NewSub, RunShared};

/// Runs `chat` and returns the report (also written to --json).
pub fn chat(args: &ChatArgs, command: Vec<String>) -> Result<RunReport, String> {
    args.validate()?;
    let server_pid = args.server_pid.filter(|&p| p != 0);
    let allow_remote = args.connect.allow_remote;
    let t = Target::parse(&args.url, allow_remote)?;
    if t.scheme != Scheme::Ws {
        return Err("--url must be a ws:// URL".into());
    }
    let scraper = args
        .metrics_url
        .as_deref()
        .map(|u| Scraper::new(u, allow_remote))
        .transpose()?;
    let n = args.members;
    let mut notes = Vec::new();
    let needed = n as u64 + 64;
    match crate::sys::raise_nofile_limit() {
        Ok((soft, _)) if soft < needed => {
            return Err(format!(
                "the open-file limit is {soft} (hard limit), below the {needed} descriptors this run needs; raise it (ulimit -Hn) or use fewer members"
            ));
        }
        Ok(_) => {}
        Err(e) => notes.push(format!("could not raise RLIMIT_NOFILE: {e}")),
    }
    let backend = choose_backend(args.io)?;
    let server_rss_before = server_pid
        .map(|p| procstat::sample(&p.to_string()).map_err(|e| format!("--server-pid {p}: {e}")))
        .transpose()?
        .and_then(|s| s.rss_kib);

    let plan = Arc::new(ChatPlan::new(
        n,
        args.rate_per_member,
        args.size,
        args.binary,
        args.expect_echo,
    ));
    let pstats = Arc::clone(&plan.pstats);
    let shared = Arc::new(RunShared::new(0, None).with_chat(Arc::clone(&plan)));
    let mut recv = Receivers::spawn(
        args.threads,
        backend,
        BufConfig {
            size: args.recv_buf,
            count: args.recv_bufs,
        },
        Arc::clone(&shared),
        1,
        n,
        1,
    )?;

    // Members.
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
        tokens: None,
    };
    let quiet = args.quiet;
    let mut dispatch_err: Option<String> = None;
    let mut on_member = |e: Established| {
        let r = recv.dispatch(NewSub {
            id: e.idx,
            topic: 0,
            stream: e.stream,
            leftover: e.leftover,
            slow: None,
            probe: false,
            envelopes: false,
            envelope_v2: false,
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
    let cstats = connect_many(
        &t,
        n,
        &|_| t.path_for(0),
        &opts,
        &mut on_member,
        Some(&mut progress),
    )
    .map_err(|e| format!("connecting members: {e}"))?;
    if let Some(e) = dispatch_err {
        return Err(e);
    }
    if cstats.ok < 2 {
        let _ = recv.close_and_join(Duration::from_millis(100));
        return Err(format!(
            "a chat needs at least two members; {} of {n} connected to {}: {}",
            cstats.ok,
            args.url,
            cstats.top_reason().unwrap_or("unknown reason")
        ));
    }
    if cstats.failed > 0 {
        notes.push(format!(
            "{} of {n} members failed to connect",
            cstats.failed
        ));
    }
    // Every member must be in its thread's table before anyone sends, or the
    // first messages would be missed by members not yet reading.
    let deadline = Instant::now() + Duration::from_secs(5);
    while recv.sum(|s| s.open.load(Ordering::Relaxed)) < cstats.ok
        && Instant::now() < deadline
        && !recv.any_exited()
    {
        thread::sleep(Duration::from_millis(1));
    }

    // Timeline.
    let t0 = now_ns();
    plan.start_ns.store(t0, Ordering::Relaxed);
    let probe = Probe {
        server_pid,
        recv: &recv,
        pstats: &pstats,
        publish_thread: false,
    };
    let w = window::measure(
        &probe,
        t0,
        args.warmup,
        args.duration,
        quiet,
        scraper.as_ref(),
        &mut notes,
    );
    let server_rss_after = server_pid
        .and_then(|p| procstat::sample(&p.to_string()).ok())
        .and_then(|s| s.rss_kib);

    // Stop sending, drain, close.
    pstats.stop.store(true, Ordering::Relaxed);
    window::drain(&recv, args.drain, || {
        plan.unsent.load(Ordering::Relaxed) == 0
    });
    let recv_errors = recv.sum(|s| s.errors.load(Ordering::Relaxed));
    let results = recv.close_and_join(Duration::from_secs(2))?;

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
            "{} members did not finish with a clean close handshake",
            t.unclean
        ));
    }
    if t.own > 0 {
        notes.push(format!(
            "{} messages came back to their own sender, which expected no echo",
            t.own
        ));
    }
    if backend == Backend::Uring && t.backend != "io_uring" {
        notes.push("io_uring threads reported another backend".into());
    }
    let skipped = pstats.skipped.load(Ordering::Relaxed);
    if skipped > 0 {
        notes.push(format!(
            "{skipped} messages due by --rate-per-member were not sent (a thread fell more than 100 ms behind, or a member's connection had ended)"
        ));
    }
    // Each message is due at every connected member but its sender (all of them with echo).
    let receivers_per_message = if args.expect_echo {
        cstats.ok
    } else {
        cstats.ok - 1
    };
    let window_s = w.secs();
    let published_in_window: u64 = w.published().sum();
    let cpu = w.cpu();
    let generator_limited = cpu.generator_max_thread_pct > 90.0;
    let report = RunReport {
        delivered_per_s: w.per_s(w.start.delivered, w.end.delivered),
        expected_per_s: w.per_s(0, published_in_window * receivers_per_message),
        published_per_s: w.per_s(0, published_in_window),
        published: pstats.total.load(Ordering::Relaxed),
        delivered: t.counts.received + t.foreign + t.own,
        lost: t.lost,
        duplicated: t.counts.duplicated,
        out_of_order: t.counts.out_of_order(),
        foreign: t.foreign,
        offsets_checked: t.offsets.checked,
        offset_gaps: t.offsets.gaps,
        offset_missing: t.offsets.missing,
        offset_dups: t.offsets.dups,
        offset_gaps_allowed: false,
        offset_failure: None,
        errors: recv_errors,
        publish_skipped: skipped,
        publish_failed: 0,
        publish_retried: 0,
        publish_reconnects: 0,
        latency_us: Percentiles::of(&t.hist),
        connect: ConnectReport::of(&cstats),
        generator_limited,
        cpu,
        server_rss_kib: RssReport {
            before: server_rss_before,
            after: server_rss_after,
        },
        slow: t.slow,
        self_delivered: t.own,
        server_metrics: w.metrics,
        chat: Some(ChatReport {
            members: n as u64,
            rate_per_member: args.rate_per_member,
            expect_echo: args.expect_echo,
        }),
        io: t.backend,
        duration_s: window_s,
        subscribers: cstats.ok,
        publishers: cstats.ok,
        subscriber_ends: t.subscriber_ends,
        token: None,
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
    //! Chat against ringcast itself, in this process: two shards (so members are
    //! spread over both and messages also cross the bus), on both backends.
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use ringcast::config::{Config, IoBackend};
    use ringcast::server::Server;

    fn server(io: &str) -> Option<Server> {
        let cfg = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            shards: 2,
            io: if io == "uring" {
                IoBackend::Uring
            } else {
                IoBackend::Epoll
            },
            pin_cores: false,
            ..Config::default()
        };
        // io_uring may be unavailable here (seccomp, sysctl): the epoll run still counts.
        Server::start(&cfg).ok()
    }

    fn chat_args(url: &str, extra: &[&str]) -> ChatArgs {
        let base = [
            "ringcast-loadtest",
            "chat",
            "--url",
            url,
            "--members",
            "20",
            "--rate-per-member",
            "20",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--drain",
            "1s",
            "--io",
            "epoll",
            "--quiet",
        ];
        match Cli::try_parse_from(base.iter().chain(extra))
            .unwrap()
            .command
        {
            Command::Chat(a) => a,
            other => panic!("not chat: {other:?}"),
        }
    }

    #[test]
    fn every_member_gets_everyone_else() {
        for io in ["epoll", "uring"] {
            let Some(srv) = server(io) else {
                assert_eq!(io, "uring", "epoll must start");
                continue;
            };
            let addr = srv.addrs[0];
            let url = format!("ws://{addr}/ws/{{topic}}");
            let metrics = format!("http://{addr}/metrics");
            let r = chat(
                &chat_args(&url, &["--metrics-url", &metrics, "--threads", "2"]),
                vec![],
            )
            .unwrap();
            assert_eq!(r.subscribers, 20, "{io}: {}", r.summary());
            assert!(r.published > 20 * 10, "{io}: {}", r.summary());
            // Without echo, 19 deliveries per message, and nothing of one's own.
            assert_eq!(r.delivered, r.published * 19, "{io}: {}", r.summary());
            assert_eq!(
                (r.lost, r.duplicated, r.out_of_order, r.self_delivered),
                (0, 0, 0, 0),
                "{io}: {}",
                r.summary()
            );
            assert!(r.latency_us.p50 > 0.0, "{io}: {}", r.summary());
            let m = r.server_metrics.as_ref().expect("metrics scraped");
            let out = |s: &std::collections::BTreeMap<String, f64>| {
                s.get("ringcast_messages_out_total").copied().unwrap_or(0.0)
            };
            assert!(out(&m.after) > out(&m.before), "{io}: {m:?}");
            // 20 members over two shards (all on one: probability 2^-19): some of the
            // deliveries came over the bus, which the server counts (what scripts/bench
            // divides by messages out for the cross-shard share).
            let bus = |s: &std::collections::BTreeMap<String, f64>| {
                s.get("ringcast_bus_delivered_messages_total")
                    .copied()
                    .unwrap_or(0.0)
            };
            assert!(bus(&m.after) > bus(&m.before), "{io}: {m:?}");
            assert!(
                bus(&m.after) - bus(&m.before) < out(&m.after) - out(&m.before),
                "{io}: {m:?}"
            );
            srv.stop();
        }
    }

    #[test]
    fn echo_is_expected_only_when_asked() {
        let Some(srv) = server("epoll") else {
            panic!("epoll must start");
        };
        let addr = srv.addrs[0];
        // The server echoes, and the generator expects it: 20 per message.
        let r = chat(
            &chat_args(
                &format!("ws://{addr}/ws/{{topic}}?echo=1"),
                &["--expect-echo"],
            ),
            vec![],
        )
        .unwrap();
        assert_eq!(r.delivered, r.published * 20, "{}", r.summary());
        assert_eq!((r.lost, r.self_delivered), (0, 0), "{}", r.summary());
        // The server echoes, the generator does not expect it: each is counted, none checked.
        let r = chat(
            &chat_args(&format!("ws://{addr}/ws/{{topic}}?echo=1"), &[]),
            vec![],
        )
        .unwrap();
        assert_eq!(r.self_delivered, r.published, "{}", r.summary());
        assert_eq!(r.lost, 0, "{}", r.summary());
        assert!(
            r.notes.iter().any(|n| n.contains("own sender")),
            "{:?}",
            r.notes
        );
        // No echo, but the generator expects it: every own message is lost.
        let r = chat(
            &chat_args(&format!("ws://{addr}/ws/{{topic}}"), &["--expect-echo"]),
            vec![],
        )
        .unwrap();
        assert_eq!(r.lost, r.published, "{}", r.summary());
        srv.stop();
    }
}
