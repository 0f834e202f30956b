//! `run --pub-http` against ringcast itself (this tree's server, in process): every message
//! due by the rate is published and delivered, with nothing skipped or failed, whether the
//! server keeps HTTP connections (keep-alive, pipelining) or ends them: after every answer
//! (`--http-max-requests-per-connection 1`, `--http-idle-timeout 0`) or after a few
//! (`--http-max-requests-per-connection 5`); at a fixed rate and closed loop (`--in-flight`,
//! which pipelines). Each run lasts about a second and a half.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;
use ringcast::config::{Config, IoBackend};
use ringcast::server::Server;
use ringcast_loadtest::cli::{Cli, Command};
use ringcast_loadtest::report::RunReport;

const RATE: f64 = 600.0;
const WARMUP_S: f64 = 0.2;
const DURATION_S: f64 = 0.6;
const PUBLISHERS: u64 = 2;
const SUBS_PER_TOPIC: u64 = 2;

fn server(max_requests: u32, idle: Duration) -> Server {
    let cfg = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: 2,
        io: IoBackend::Epoll,
        pin_cores: false,
        http_max_requests_per_connection: max_requests,
        http_idle_timeout: idle,
        ..Config::default()
    };
    Server::start(&cfg).unwrap()
}

/// Rate mode (`load` None) or closed loop (`--in-flight N`).
fn run_pub_http(srv: &Server, in_flight: Option<&str>) -> RunReport {
    let addr = srv.addrs[0];
    let sub = format!("ws://{addr}/ws/{{topic}}");
    let publ = format!("http://{addr}/publish/{{topic}}");
    let rate = RATE.to_string();
    let (warmup, duration) = (format!("{WARMUP_S}s"), format!("{DURATION_S}s"));
    let subs = (SUBS_PER_TOPIC * PUBLISHERS).to_string();
    let pubs = PUBLISHERS.to_string();
    let mut argv = vec![
        "ringcast-loadtest",
        "run",
        "--sub-url",
        &sub,
        "--subscribers",
        &subs,
        "--topics",
        &pubs,
        "--pub-http",
        &publ,
        "--publishers",
        &pubs,
        "--size",
        "64",
        "--warmup",
        &warmup,
        "--duration",
        &duration,
        "--drain",
        "1s",
        "--io",
        "epoll",
        "--quiet",
    ];
    match in_flight {
        Some(k) => argv.extend(["--in-flight", k]),
        None => argv.extend(["--rate", &rate]),
    }
    let Command::Run(a) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    ringcast_loadtest::run::run(&a, vec![]).unwrap()
}

/// Every message the rate asked for was published, answered and delivered to every
/// subscriber of its topic.
fn assert_all_published(what: &str, r: &RunReport, rate_mode: bool) {
    let s = r.summary();
    eprintln!("{what}:\n{s}");
    if rate_mode {
        // With nothing skipped, the publisher produced every message due by the rate since
        // it started, a few ms after the warm-up did, until the window closed.
        let requested = (RATE * (WARMUP_S + DURATION_S) * 0.97) as u64;
        assert!(
            r.published >= requested,
            "{what}: {} < {requested}\n{s}",
            r.published
        );
    } else {
        assert!(r.published > 100, "{what}\n{s}");
    }
    assert_eq!(r.publish_skipped, 0, "{what}\n{s}");
    assert_eq!(r.publish_failed, 0, "{what}\n{s}");
    assert_eq!(r.errors, 0, "{what}\n{s}");
    assert_eq!(r.lost, 0, "{what}\n{s}");
    assert_eq!(
        (r.duplicated, r.out_of_order, r.foreign),
        (0, 0, 0),
        "{what}\n{s}"
    );
    assert_eq!(r.delivered, r.published * SUBS_PER_TOPIC, "{what}\n{s}");
    assert!(r.clean(), "{what}\n{s}");
    assert!(s.starts_with("clean: lost 0"), "{what}\n{s}");
}

#[test]
fn keepalive_server_one_connection_per_publisher() {
    let srv = server(0, Duration::from_secs(30));
    for in_flight in [None, Some("16")] {
        let r = run_pub_http(&srv, in_flight);
        assert_all_published("keep-alive", &r, in_flight.is_none());
        assert_eq!(r.publish_reconnects, 0, "{}", r.summary());
        assert_eq!(r.publish_retried, 0, "{}", r.summary());
    }
    srv.stop();
}

#[test]
fn a_server_closing_after_every_answer_gets_every_message_on_fresh_connections() {
    for (what, max, idle) in [
        (
            "--http-max-requests-per-connection 1",
            1,
            Duration::from_secs(30),
        ),
        ("--http-idle-timeout 0", 0, Duration::ZERO),
    ] {
        let srv = server(max, idle);
        let r = run_pub_http(&srv, None);
        assert_all_published(what, &r, true);
        // One connection per message: the first ones came from the connect phase.
        assert!(
            r.publish_reconnects >= r.published - PUBLISHERS,
            "{what}: {} reconnects for {} messages\n{}",
            r.publish_reconnects,
            r.published,
            r.summary()
        );
        srv.stop();
    }
}

#[test]
fn a_request_limit_per_connection_is_learned_not_lost() {
    let srv = server(5, Duration::from_secs(30));
    for in_flight in [None, Some("16")] {
        let r = run_pub_http(&srv, in_flight);
        let what = format!("--http-max-requests-per-connection 5, --in-flight {in_flight:?}");
        assert_all_published(&what, &r, in_flight.is_none());
        assert!(
            r.publish_reconnects >= r.published / 5 - PUBLISHERS,
            "{what}: {}",
            r.summary()
        );
    }
    srv.stop();
}
