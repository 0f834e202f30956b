//! The connection-only scenarios: `idle` (open N connections, hold them, and
//! read the server's RSS per connection) and `storm` (open N connections with
//! many handshakes in flight and report handshakes per second). Both hand the
//! open connections to a receive thread so pings are answered and every
//! connection ends with a close handshake. With `--token-*` every connection
//! presents its own JWT, minted before the first connect (the mint time is
//! reported apart, never in `handshakes_per_s`).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{ConnectArgs, IdleArgs, IoMode, StormArgs};
use crate::connect::{ConnectOpts, ConnectStats, Established, connect_many};
use crate::procstat::{self, pct};
use crate::receivers::{BufConfig, Receivers, choose_backend};
use crate::report::{ConnectReport, RssReport, write_json};
use crate::sys::now_ns;
use crate::target::{Scheme, Target};
use crate::token::{TokenReport, Tokens, mint};
use crate::worker::{NewSub, RunShared};

/// Result of `idle`.
#[derive(Debug, Default, Serialize)]
pub struct IdleReport {
    /// Connections open during the hold.
    pub connections: u64,
    /// Connection statistics.
    pub connect: ConnectReport,
    /// Server RSS before connecting and at the end of the hold (KiB).
    pub server_rss_kib: RssReport,
    /// (after - before) / connections, in bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// Server CPU during the hold (% of a core).
    pub server_cpu_pct: Option<f64>,
    /// Connections the server closed or broke during the hold.
    pub errors: u64,
    /// Hold length (s).
    pub hold_s: f64,
    /// The tokens presented (`--token-alg`), null without.
    pub token: Option<TokenReport>,
}

/// Result of `storm`.
#[derive(Debug, Default, Serialize)]
pub struct StormReport {
    /// Connections attempted.
    pub connections: u64,
    /// Completed handshakes per second over the storm.
    pub handshakes_per_s: f64,
    /// Connection statistics.
    pub connect: ConnectReport,
    /// Server CPU during the storm (% of a core).
    pub server_cpu_pct: Option<f64>,
    /// Storm wall time (s).
    pub duration_s: f64,
    /// The tokens presented (`--token-alg`), null without; minting is not in the storm's time.
    pub token: Option<TokenReport>,
}

impl IdleReport {
    /// The one-line summary (stdout): plain figures, "n/a" where there is none.
    pub fn summary(&self) -> String {
        let kib = |v: Option<u64>| v.map_or("n/a".into(), |v| format!("{v} KiB"));
        format!(
            "idle: {} connections held {:.1}s  errors {}  connect failed {}  server rss before {} after {}  per connection {}  server cpu {}",
            self.connections,
            self.hold_s,
            self.errors,
            self.connect.failed,
            kib(self.server_rss_kib.before),
            kib(self.server_rss_kib.after),
            self.rss_per_connection_bytes
                .map_or("n/a".into(), |v| format!("{v:.0} bytes")),
            self.server_cpu_pct
                .map_or("n/a".into(), |v| format!("{v:.0}%")),
        )
    }
}

struct Opened {
    recv: Receivers,
    stats: ConnectStats,
}

fn open(
    url: &str,
    n: usize,
    c: &ConnectArgs,
    default_rate: u32,
    tokens: Option<Arc<Tokens>>,
) -> Result<Opened, String> {
    if n == 0 || n > 1_000_000 {
        return Err("--connections must be in 1..=1000000".into());
    }
    let t = Target::parse(url, c.allow_remote)?;
    if t.scheme != Scheme::Ws {
        return Err("--url must be a ws:// URL".into());
    }
    match crate::sys::raise_nofile_limit() {
        Ok((soft, _)) if soft < n as u64 + 64 => {
            return Err(format!(
                "the open-file limit is {soft}, below the {} descriptors needed",
                n + 64
            ));
        }
        _ => {}
    }
    let backend = choose_backend(IoMode::Auto)?;
    let shared = Arc::new(RunShared::new(0, None));
    let mut recv = Receivers::spawn(
        1,
        backend,
        BufConfig {
            size: 16 * 1024,
            count: 256,
        },
        shared,
        1,
        0,
        1,
    )?;
    let rate = c.connect_rate.unwrap_or(default_rate);
    let opts = ConnectOpts {
        rate,
        concurrency: c.concurrency,
        timeout: c.connect_timeout,
        sources: c.sources.clone(),
        deadline: Some(Instant::now() + Duration::from_secs(120)),
        tokens,
    };
    let mut err = None;
    let mut on_ok = |e: Established| {
        if let Err(x) = recv.dispatch(NewSub {
            id: e.idx,
            topic: 0,
            stream: e.stream,
            leftover: e.leftover,
            slow: None,
            probe: false,
            envelopes: false,
            envelope_v2: false,
        }) {
            err.get_or_insert(x);
        }
    };
    let mut progress = |s: &ConnectStats| {
        eprintln!(
            "connecting: {} ok, {} failed, {:.1}s",
            s.ok,
            s.failed,
            s.elapsed.as_secs_f64()
        )
    };
    let stats = connect_many(
        &t,
        n,
        &|_| t.path_for(0),
        &opts,
        &mut on_ok,
        Some(&mut progress),
    )
    .map_err(|e| format!("connecting: {e}"))?;
    if let Some(e) = err {
        return Err(e);
    }
    if stats.ok == 0 {
        let _ = recv.close_and_join(Duration::from_millis(100));
        return Err(format!(
            "no connection to {url} succeeded: {}",
            stats.top_reason().unwrap_or("unknown reason")
        ));
    }
    Ok(Opened { recv, stats })
}

fn split(m: Option<(Tokens, TokenReport)>) -> (Option<Arc<Tokens>>, Option<TokenReport>) {
    match m {
        Some((t, r)) => (Some(Arc::new(t)), Some(r)),
        None => (None, None),
    }
}

fn server(pid: Option<u32>) -> Option<procstat::ProcSample> {
    pid.and_then(|p| procstat::sample(&p.to_string()).ok())
}

/// `idle`.
pub fn idle(args: &IdleArgs) -> Result<IdleReport, String> {
    let args = &IdleArgs {
        server_pid: args.server_pid.filter(|&p| p != 0),
        ..args.clone()
    };
    if let Some(p) = args.server_pid {
        procstat::sample(&p.to_string()).map_err(|e| format!("--server-pid {p}: {e}"))?;
    }
    let (tokens, token) = split(mint(&args.token, 0, args.connections)?);
    let before = server(args.server_pid);
    let o = open(&args.url, args.connections, &args.connect, 20_000, tokens)?;
    // Let the server settle (buffers released after the handshakes) before the hold.
    thread::sleep(Duration::from_millis(200));
    let hold_start = (now_ns(), server(args.server_pid));
    thread::sleep(args.hold);
    let hold_end = (now_ns(), server(args.server_pid));
    let errors = o
        .recv
        .sum(|s| s.errors.load(std::sync::atomic::Ordering::Relaxed));
    let _ = o.recv.close_and_join(Duration::from_secs(2))?;
    let rss_before = before.and_then(|s| s.rss_kib);
    let rss_after = hold_end.1.and_then(|s| s.rss_kib);
    let report = IdleReport {
        connections: o.stats.ok,
        connect: ConnectReport::of(&o.stats),
        rss_per_connection_bytes: match (rss_before, rss_after) {
            (Some(b), Some(a)) => Some((a as f64 - b as f64) * 1024.0 / o.stats.ok as f64),
            _ => None,
        },
        server_rss_kib: RssReport {
            before: rss_before,
            after: rss_after,
        },
        server_cpu_pct: match (hold_start.1, hold_end.1) {
            (Some(a), Some(b)) => Some(pct(a.cpu_ns, b.cpu_ns, hold_end.0 - hold_start.0)),
            _ => None,
        },
        errors,
        hold_s: (hold_end.0 - hold_start.0) as f64 / 1e9,
        token,
    };
    if let Some(p) = &args.json {
        write_json(p, &report)?;
    }
    Ok(report)
}

/// `storm`.
pub fn storm(args: &StormArgs) -> Result<StormReport, String> {
    let args = &StormArgs {
        server_pid: args.server_pid.filter(|&p| p != 0),
        ..args.clone()
    };
    let (tokens, token) = split(mint(&args.token, 0, args.connections)?);
    let before = server(args.server_pid);
    let t0 = now_ns();
    let o = open(&args.url, args.connections, &args.connect, 0, tokens)?;
    let t1 = now_ns();
    let after = server(args.server_pid);
    let _ = o.recv.close_and_join(Duration::from_secs(2))?;
    let report = StormReport {
        connections: args.connections as u64,
        handshakes_per_s: o.stats.ok as f64 / o.stats.elapsed.as_secs_f64().max(1e-9),
        connect: ConnectReport::of(&o.stats),
        server_cpu_pct: match (before, after) {
            (Some(a), Some(b)) => Some(pct(a.cpu_ns, b.cpu_ns, t1 - t0)),
            _ => None,
        },
        duration_s: o.stats.elapsed.as_secs_f64(),
        token,
    };
    if let Some(p) = &args.json {
        write_json(p, &report)?;
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_line_has_no_debug_output() {
        let mut r = IdleReport {
            connections: 1000,
            hold_s: 5.0,
            ..IdleReport::default()
        };
        let line = r.summary();
        assert!(
            line.contains("rss before n/a after n/a  per connection n/a  server cpu n/a"),
            "{line}"
        );
        r.server_rss_kib = RssReport {
            before: Some(8356),
            after: Some(12_000),
        };
        r.rss_per_connection_bytes = Some(3731.5);
        r.server_cpu_pct = Some(3.2);
        let line = r.summary();
        assert!(
            line.contains(
                "rss before 8356 KiB after 12000 KiB  per connection 3732 bytes  server cpu 3%"
            ),
            "{line}"
        );
        for debug in ["Some(", "None", "{", "\""] {
            assert!(!line.contains(debug), "{debug} in {line}");
        }
    }
}
