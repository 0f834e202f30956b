//! `pubhttp` flags and their cross-checks (kept apart from `cli` so each file stays one concern).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cli::{parse_duration, parse_size};

/// `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

/// `pubhttp` flags.
#[derive(Clone, Debug, Args)]
pub struct PubHttpArgs {
    /// The server's base URL (http://HOST:PORT[/prefix]); requests go to
    /// {prefix}/publish/{topic} (single) or {prefix}/publish (batch). A query on
    /// the URL is kept on every request.
    #[arg(long)]
    pub url: String,
    /// Topic of every message.
    #[arg(long, default_value = "t0")]
    pub topic: String,
    /// Concurrent connections (keep-alive) or concurrent request loops (per-request connections).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Keep connections open between requests; off = a new TCP connection per
    /// request with `Connection: close` (one request at a time per loop).
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub keepalive: bool,
    /// Requests in flight per connection (1 = request/response; keep-alive only).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// 0: one message per `POST /publish/{topic}`; N > 0: `POST /publish` with N items.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Message size in bytes (printable ASCII; a generator stamp from 42 bytes on).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishing before the measured window (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Threads the keep-alive connections are spread over (per-request loops get one thread each).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// An extra request header, `Name: value` (repeatable), e.g. an API key. Never printed.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Give up on one connect after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Server process to measure (CPU over the window); 0 = none.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the result as one JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No live line, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Allow a non-loopback target.
    #[arg(long)]
    pub allow_remote: bool,
}

impl PubHttpArgs {
    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.connections) {
            return Err("--connections must be in 1..=4096".into());
        }
        if !(1..=4096).contains(&self.pipeline) {
            return Err("--pipeline must be in 1..=4096".into());
        }
        if !self.keepalive && self.pipeline > 1 {
            return Err(
                "--pipeline needs --keepalive on (a per-request connection carries one request)"
                    .into(),
            );
        }
        if self.batch > 100_000 {
            return Err("--batch must be at most 100000".into());
        }
        if !(1..=(1 << 20)).contains(&self.size) {
            return Err("--size must be in 1..=1MiB".into());
        }
        if self.batch.max(1).saturating_mul(self.size) > 64 << 20 {
            return Err("--batch x --size must stay within 64 MiB per request".into());
        }
        if self.topic.is_empty()
            || !self
                .topic
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/?#%".contains(&b))
        {
            return Err(
                "--topic must be non-empty printable ASCII without '/', '?', '#' or '%'".into(),
            );
        }
        if !(1..=64).contains(&self.threads) || self.threads > self.connections {
            return Err("--threads must be in 1..=64 and at most --connections".into());
        }
        for h in &self.headers {
            let Some((name, value)) = h.split_once(':') else {
                return Err("--header must look like 'Name: value'".into());
            };
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !name_ok || value.bytes().any(|b| b == b'\r' || b == b'\n') {
                // The value may be a credential: not quoted back.
                return Err("--header: bad header name or a line break in the value".into());
            }
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<super::PubHttpArgs, String> {
        let args = [
            "ringcast-loadtest",
            "pubhttp",
            "--url",
            "http://127.0.0.1:1",
        ]
        .iter()
        .chain(extra.iter());
        match Cli::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Pubhttp(a) => a.validate().map(|()| a),
            other => panic!("not pubhttp: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let a = parse(&[]).unwrap();
        assert!(a.keepalive);
        assert_eq!((a.connections, a.pipeline, a.batch, a.size), (1, 1, 0, 64));
        let a = parse(&["--keepalive", "off", "--connections", "4", "--threads", "2"]).unwrap();
        assert!(!a.keepalive);
        let a = parse(&["--pipeline", "32", "--batch", "100", "--header", "X-Key: v"]).unwrap();
        assert_eq!((a.pipeline, a.batch), (32, 100));
    }

    #[test]
    fn refuses_bad_combinations() {
        for bad in [
            &["--keepalive", "off", "--pipeline", "2"][..],
            &["--keepalive", "maybe"],
            &["--connections", "0"],
            &["--threads", "2"],
            &["--topic", "a/b"],
            &["--header", "no colon"],
            &["--header", "Bad Name: v"],
            &["--batch", "200000"],
            &["--size", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
