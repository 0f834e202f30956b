//! Offsets and recovery against ringcast itself.
//!
//! - Always: the in-process server of this tree (as `chat`'s tests run it), with its default
//!   config (no history): mux subscribers see no offsets and nothing fails; `recover` stops
//!   with a clear error (no epoch in the acks).
//! - With history (`history_size = 100`, two shards): mux subscribers (text, and binary
//!   envelopes v2) see dense offsets on every topic; `recover` gets every client exactly
//!   what it missed, and reports `too_old` past the history size.
//!
//! Every run lasts about a second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use clap::Parser;
use ringcast::config::{Config, IoBackend};
use ringcast::server::Server;
use ringcast_loadtest::cli::{Cli, Command};
use ringcast_loadtest::recover::RecoverReport;
use ringcast_loadtest::report::RunReport;

fn run(args: &[&str]) -> RunReport {
    let argv = ["ringcast-loadtest", "run"].iter().chain(args);
    let Command::Run(a) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    ringcast_loadtest::run::run(&a, vec![]).unwrap()
}

fn recover(args: &[&str]) -> Result<RecoverReport, String> {
    let argv = ["ringcast-loadtest", "recover"].iter().chain(args);
    let Command::Recover(a) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    ringcast_loadtest::recover::recover(&a)
}

/// 10 mux subscribers over 2 topics, 4 publishers (2 per topic, simple mode), 64 B.
fn mux_run(addr: SocketAddr, query: &str, binary: bool) -> RunReport {
    let sub = format!("ws://{addr}/ws?subscribe={{topic}}{query}");
    let publ = format!("ws://{addr}/ws/{{topic}}");
    let mut args = vec![
        "--sub-url",
        &sub,
        "--subscribers",
        "10",
        "--topics",
        "2",
        "--pub-url",
        &publ,
        "--publishers",
        "4",
        "--rate",
        "400",
        "--size",
        "64",
        "--duration",
        "700ms",
        "--warmup",
        "200ms",
        "--drain",
        "500ms",
        "--io",
        "epoll",
        "--quiet",
    ];
    if binary {
        args.push("--binary");
    }
    run(&args)
}

#[test]
fn without_history_nothing_is_checked_and_recover_says_why() {
    let cfg = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: 2,
        io: IoBackend::Epoll,
        pin_cores: false,
        ..Config::default()
    };
    let srv = Server::start(&cfg).unwrap();
    let addr = srv.addrs[0];
    let r = mux_run(addr, "", false);
    assert!(r.delivered > 0, "{}", r.summary());
    assert_eq!((r.lost, r.foreign), (0, 0), "{}", r.summary());
    assert_eq!(r.offsets_checked, 0, "no history, no offsets");
    assert_eq!(r.offset_failure, None);
    let e = recover(&[
        "--url",
        &format!("ws://{addr}/ws"),
        "--clients",
        "3",
        "--missed",
        "5",
        "--timeout",
        "5s",
    ])
    .unwrap_err();
    assert!(e.contains("no subscribe ack carried an epoch"), "{e}");
    srv.stop();
}

/// This tree's server in process, on two shards, with history in the default namespace.
fn history_server(size: u32) -> Server {
    let cfg = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: 2,
        io: IoBackend::Epoll,
        pin_cores: false,
        history_size: size,
        ..Config::default()
    };
    Server::start(&cfg).unwrap()
}

#[test]
fn offsets_are_dense_with_history() {
    let srv = history_server(100);
    for (query, binary) in [("", false), ("&envelope=2", true)] {
        let r = mux_run(srv.addrs[0], query, binary);
        assert_eq!((r.lost, r.foreign), (0, 0), "{query}: {}", r.summary());
        // Every delivered message carried an offset, and they were dense per topic.
        assert!(r.delivered > 100, "{query}: {}", r.summary());
        assert_eq!(r.offsets_checked, r.delivered, "{query}: {}", r.summary());
        assert_eq!(
            (r.offset_gaps, r.offset_dups, r.offset_failure.as_deref()),
            (0, 0, None),
            "{query}: {}",
            r.summary()
        );
    }
}

#[test]
fn recover_gets_exactly_what_was_missed() {
    let srv = history_server(100);
    let url = format!("ws://{}/ws", srv.addrs[0]);
    let base = ["--url", &url, "--clients", "20", "--timeout", "10s"];
    let r = recover(&[&base[..], &["--missed", "100", "--topic", "in-history"]].concat()).unwrap();
    assert_eq!((r.exact, r.recovered), (20, 20), "{}", r.summary());
    assert_eq!(r.replayed, 20 * 100, "{}", r.summary());
    assert_eq!(
        r.last_offset_min, 2,
        "the priming and the live message came first"
    );
    assert_eq!(r.failure, None, "{}", r.summary());
    assert!(r.recovery_us.max > 0.0);
    // More than the history keeps: every client is told `too_old`, and the run fails.
    let r =
        recover(&[&base[..], &["--missed", "101", "--topic", "past-history"]].concat()).unwrap();
    assert_eq!(r.exact, 0, "{}", r.summary());
    assert_eq!(r.not_recovered.get("too_old"), Some(&20), "{}", r.summary());
    assert!(r.failure.is_some());
}
