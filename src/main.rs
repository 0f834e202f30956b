//! The `ringcast` binary: configuration, logging, limits, then the shards until a signal.
//!
//! Signals: SIGHUP reloads the configuration (`ringcast::reload`: what can change live is
//! applied, the rest logged as needing a restart, an invalid file logged and ignored).
//! The first SIGTERM or SIGINT starts a graceful drain (clients get close 1001
//! after what is queued for them; `/ready` answers 503) and the process exits 0 once every
//! shard has drained, or at `--drain-timeout`. A second signal exits at once with
//! 128 + the signal number.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ringcast::config::{self, LogFormat};
use ringcast::reload::{Reloader, SetLogLevel};
use ringcast::server::Server;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

// mimalloc: thread-local free lists suit thread-per-core shards that allocate and free
// frames on their own threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Installs the log subscriber: `level` as a reloadable filter, colours only when stderr is
/// a terminal (a journal or a file gets no escape sequences). Returns the filter's setter.
fn init_logging(level: &str, format: LogFormat) -> SetLogLevel {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    fn setter<L, S>(handle: tracing_subscriber::reload::Handle<L, S>) -> SetLogLevel
    where
        L: From<tracing_subscriber::EnvFilter> + Send + Sync + 'static,
        S: Send + Sync + 'static,
    {
        Box::new(move |level: &str| {
            let filter =
                tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    match format {
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let set = setter(b.reload_handle());
            b.init();
            set
        }
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let set = setter(b.reload_handle());
            b.init();
            set
        }
    }
}

/// The start-up line on stdout, which scripts wait for and parse: in text mode
/// `ringcast listening on ADDR[, ADDR] (shards: N, io: B[, admin on ADDR])`, in JSON mode
/// one object with the same facts as fields.
fn listening_line(cfg: &config::Config, server: &Server) -> String {
    let addrs: Vec<String> = server.addrs.iter().map(ToString::to_string).collect();
    match cfg.log_format {
        LogFormat::Json => serde_json::json!({
            "msg": "listening",
            "addrs": addrs,
            "shards": cfg.shards.max(1),
            "io": server.backend.name(),
            "admin": server.admin.map(|a| a.to_string()),
            "node": server.shared.link.as_ref().map(|l| l.node.to_string()),
            "broker": cfg.broker.as_ref().map(ToString::to_string),
        })
        .to_string(),
        LogFormat::Text => {
            let admin = server
                .admin
                .map_or_else(String::new, |a| format!(", admin on {a}"));
            let node = match (&server.shared.link, &cfg.broker) {
                (Some(l), Some(b)) => format!(", node {} via {b}", l.node),
                _ => String::new(),
            };
            format!(
                "ringcast listening on {} (shards: {}, io: {}{admin}{node})",
                addrs.join(", "),
                cfg.shards.max(1),
                server.backend.name()
            )
        }
    }
}

fn main() -> ExitCode {
    ringcast::alloc::tune();
    let cfg = match config::load() {
        Ok(cfg) => cfg,
        Err(e) => e.exit(),
    };
    let set_log_level = init_logging(&cfg.log_level, cfg.log_format);
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for (name, nearest) in config::unknown_env(names) {
        match nearest {
            Some(k) => tracing::warn!(
                variable = %name,
                "unknown environment variable ignored; did you mean {k}?"
            ),
            None => tracing::warn!(variable = %name, "unknown environment variable ignored"),
        }
    }
    if ringcast::alloc::thp_left_on() {
        tracing::debug!("could not turn transparent huge pages off (PR_SET_THP_DISABLE)");
    }
    match config::raise_nofile_limit(cfg.max_connections) {
        Ok((soft, _hard)) if soft < config::nofile_needed(cfg.max_connections) => tracing::warn!(
            open_files = soft,
            max_connections = cfg.max_connections,
            "the open-file limit is below --max-connections: connections past it will fail to be accepted"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    // Registered before the shards start, so that no signal finds the default action.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not install signal handlers");
            return ExitCode::from(1);
        }
    };
    // One line, in the configured format (no second plain copy on stderr).
    let mut server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            return ExitCode::from(1);
        }
    };
    if !cfg.tokens_configured() && server.addrs.iter().any(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            "no JWT key is configured and the server listens on a non-loopback address: anyone who reaches it may subscribe and publish to any topic (see docs/auth.md)"
        );
    }
    println!("{}", listening_line(&cfg, &server));
    let _ = std::io::stdout().flush();
    let poll = Duration::from_millis(50);
    // Taken once, here: it is there after every successful start.
    let verifier = server
        .take_verifier()
        .unwrap_or_else(ringcast::auth::Verifier::disabled);
    let mut reloader = Reloader::new(cfg, verifier, set_log_level);
    // Serving: wait for a signal (or a shard that died); SIGHUP reloads and goes on.
    let first = 'serve: loop {
        for sig in signals.pending() {
            if sig == SIGHUP {
                reloader.reload(&server);
            } else {
                break 'serve sig;
            }
        }
        if server.any_finished() {
            tracing::error!("a shard stopped; shutting down");
            server.stop();
            return ExitCode::from(1);
        }
        std::thread::sleep(poll);
    };
    let cfg = reloader.active();
    // The grace period serves clients (with /ready at 503) before the drain starts.
    let deadline = Instant::now() + cfg.drain_grace + cfg.drain_timeout;
    tracing::info!(
        signal = first,
        drain_timeout = ?cfg.drain_timeout,
        drain_grace = ?cfg.drain_grace,
        "draining: /ready answers 503, then every client is closed with 1001 after the grace period (send the signal again to exit at once)"
    );
    server.drain();
    while !server.finished() {
        // A reload during the drain is pointless; only a second SIGTERM/SIGINT counts.
        let mut pending = signals.pending().collect::<Vec<_>>();
        if pending.contains(&SIGHUP) {
            tracing::info!("SIGHUP ignored: the server is draining");
        }
        pending.retain(|s| *s != SIGHUP);
        if let Some(&sig) = pending.first() {
            tracing::warn!(
                signal = sig,
                "second signal: exiting without waiting for the drain"
            );
            return ExitCode::from(u8::try_from(128 + sig).unwrap_or(1));
        }
        if Instant::now() >= deadline {
            tracing::warn!("drain timeout reached; exiting");
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(poll);
    }
    tracing::info!("drained; exiting");
    server.stop();
    ExitCode::SUCCESS
}
