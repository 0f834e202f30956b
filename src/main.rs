//! The `ringcast` binary: configuration, logging, limits, then the shards until a signal.

use std::io::Write;
use std::process::ExitCode;

use ringcast::config::{self, LogFormat};
use ringcast::server::Server;

// mimalloc: thread-local free lists suit thread-per-core shards that allocate and free
// frames on their own threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cfg = match config::load() {
        Ok(cfg) => cfg,
        Err(e) => e.exit(),
    };
    init_logging(&cfg.log_level, cfg.log_format);
    match config::raise_nofile_limit(cfg.max_connections) {
        Ok((soft, _hard)) if soft < config::nofile_needed(cfg.max_connections) => tracing::warn!(
            open_files = soft,
            max_connections = cfg.max_connections,
            "the open-file limit is below --max-connections: connections past it will fail to be accepted"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("ringcast: {e}");
            return ExitCode::from(1);
        }
    };
    let addrs: Vec<String> = server.addrs.iter().map(ToString::to_string).collect();
    println!(
        "ringcast listening on {} (shards: {}, io: {})",
        addrs.join(", "),
        cfg.shards.max(1),
        server.backend.name()
    );
    let _ = std::io::stdout().flush();
    server.join();
    ExitCode::SUCCESS
}
