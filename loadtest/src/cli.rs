//! The command line (clap): `run`, `chat`, `idle`, `storm`, `pubhttp`, `recover`, `blast`, with the flag
//! names loadtest/README.md documents (scripts/bench uses them: flags may be added, never
//! renamed), plus
//! the duration/size parsers and the cross-flag validation clap cannot express.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::pubhttp_args::PubHttpArgs;
pub use crate::token::TokenArgs;

/// Load generator for WebSocket broadcast servers (ringcast or any other).
#[derive(Debug, Parser)]
#[command(name = "ringcast-loadtest", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Subscribers + publishers: deliveries/s, latency, loss, order, CPU.
    Run(RunArgs),
    /// N members of one topic, each publishing at a fixed rate and receiving everyone else's.
    Chat(ChatArgs),
    /// Open N idle connections and hold them: server RSS per connection.
    Idle(IdleArgs),
    /// Open N connections as fast as the server completes handshakes.
    Storm(StormArgs),
    /// HTTP publish load: `POST /publish/{topic}` (or batches to `POST /publish`), messages/s accepted.
    Pubhttp(PubHttpArgs),
    /// The floor server: writes pre-built frames to every subscriber on io_uring.
    Blast(BlastArgs),
    /// History recovery (ringcast mux mode): N clients subscribe, all disconnect, M messages
    /// are published, all reconnect with `recover` at once: time to the last replayed
    /// message (p50/p99/max), and each client must get exactly the offsets it missed.
    Recover(RecoverArgs),
}

/// I/O backend of the receive threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoMode {
    /// io_uring when it works, else epoll.
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (mio).
    Epoll,
}

/// How slow subscribers misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SlowMode {
    /// Never read.
    Stop,
    /// Read `--slow-read-rate` bytes per second.
    Slow,
}

/// Connection-opening flags shared by all client subcommands.
#[derive(Clone, Debug, Args)]
pub struct ConnectArgs {
    /// New connections per second, 0 = unlimited (default: 20000 for run/idle, unlimited for storm).
    #[arg(long)]
    pub connect_rate: Option<u32>,
    /// Source addresses to spread connections over (bind before connect), e.g.
    /// 127.0.0.1,127.0.0.2. Without it (loopback targets only): one address per
    /// 5000 connections from 127.0.0.1 up, and the next one whenever an address
    /// runs out of ports.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<Ipv4Addr>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Give up on one handshake after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Allow non-loopback targets (the generator refuses them otherwise).
    #[arg(long)]
    pub allow_remote: bool,
}

/// `run` flags.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Subscriber URL (ws://), may contain {topic}.
    #[arg(long)]
    pub sub_url: String,
    /// Number of topics: subscriber i uses t{i % N}, publisher j t{j % N}.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Number of subscriber connections.
    #[arg(long)]
    pub subscribers: usize,
    /// Publish over WebSocket to this URL (may contain {topic}).
    #[arg(long, conflicts_with = "pub_http")]
    pub pub_url: Option<String>,
    /// Publish by HTTP POST to this URL (may contain {topic}).
    #[arg(long)]
    pub pub_http: Option<String>,
    /// Number of publishers (0: receive only, e.g. against `blast`).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// TOTAL publish rate over all publishers, messages/s.
    #[arg(long, conflicts_with = "in_flight")]
    pub rate: Option<f64>,
    /// Closed loop: each publisher keeps N messages not yet seen by its probe subscriber.
    #[arg(long)]
    pub in_flight: Option<u32>,
    /// Message size in bytes (>= 42: the payload stamp), e.g. 64, 1KiB.
    #[arg(long, value_parser = parse_size)]
    pub size: usize,
    /// Send binary frames (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishing before the measured window (not counted in rates or latency).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Time allowed after publishing stops for the last messages to arrive.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Receive threads the subscribers are spread over.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// I/O backend of the receive threads.
    #[arg(long, value_enum, default_value_t = IoMode::Auto)]
    pub io: IoMode,
    /// Fraction of subscribers that are slow (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// What slow subscribers do.
    #[arg(long, value_enum, default_value_t = SlowMode::Stop)]
    pub slow_mode: SlowMode,
    /// Bytes per second a `--slow-mode slow` subscriber reads.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    pub slow_read_rate: usize,
    /// Server process to measure (CPU from /proc/PID/stat, RSS from /proc/PID/status); 0 = none.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the result as one JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No live line, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Size of each provided receive buffer (io_uring) / the read buffer (epoll).
    #[arg(long, default_value = "32KiB", value_parser = parse_size)]
    pub recv_buf: usize,
    /// Number of provided receive buffers per io_uring thread (power of two);
    /// the default 2048 x 32 KiB = 64 MiB per thread keeps the ring from running
    /// empty with 1000+ busy connections.
    #[arg(long, default_value_t = 2048)]
    pub recv_bufs: u16,
    /// The server's Prometheus text metrics (http://, e.g. ringcast's /metrics),
    /// scraped when the measured window opens and when it closes; kept raw in the
    /// JSON (`server_metrics`).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Offset gaps at healthy subscribers (mux mode, topics with history) are reported but
    /// do not fail the run: for runs that are lossy on purpose (a server with
    /// `--slow-consumer drop`, or overloaded between shards). Duplicates and reorders
    /// always fail it.
    #[arg(long)]
    pub allow_offset_gaps: bool,
    /// Connection flags.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// A JWT on every connection (`--token-*`).
    #[command(flatten)]
    pub token: TokenArgs,
}

/// `chat` flags.
#[derive(Clone, Debug, Args)]
pub struct ChatArgs {
    /// Member URL (ws://), may contain {topic} (every member uses t0).
    #[arg(long)]
    pub url: String,
    /// Number of members: each one publishes and receives on the same connection.
    #[arg(long)]
    pub members: usize,
    /// Messages per second EACH member sends (spread evenly over the members).
    #[arg(long, default_value_t = 1.0)]
    pub rate_per_member: f64,
    /// Members receive their own messages too (ringcast `?echo=1` in the URL);
    /// without it a member expects everyone's messages but its own.
    #[arg(long)]
    pub expect_echo: bool,
    /// Message size in bytes (>= 42: the payload stamp).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Send binary frames (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishing before the measured window (not counted in rates or latency).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Time allowed after publishing stops for the last messages to arrive.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Threads the members are spread over (each receives and sends for its members).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// I/O backend of the receive threads.
    #[arg(long, value_enum, default_value_t = IoMode::Auto)]
    pub io: IoMode,
    /// Server process to measure; 0 = none.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the result as one JSON object to this file (the keys of `run`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No live line, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Size of each provided receive buffer (io_uring) / the read buffer (epoll).
    #[arg(long, default_value = "32KiB", value_parser = parse_size)]
    pub recv_buf: usize,
    /// Number of provided receive buffers per io_uring thread (power of two).
    #[arg(long, default_value_t = 2048)]
    pub recv_bufs: u16,
    /// The server's Prometheus text metrics (http://), scraped at both ends of the window.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Connection flags.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl ChatArgs {
    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=100_000).contains(&self.members) {
            return Err("--members must be in 2..=100000".into());
        }
        let r = self.rate_per_member;
        if !(r > 0.0 && r.is_finite() && r * self.members as f64 <= 1e7) {
            return Err(
                "--rate-per-member must be positive, and members x rate at most 10 M/s".into(),
            );
        }
        if !(crate::payload::STAMP_LEN..=MAX_SIZE).contains(&self.size) {
            return Err(format!(
                "--size must be in {}..={MAX_SIZE} bytes (the payload stamp takes {})",
                crate::payload::STAMP_LEN,
                crate::payload::STAMP_LEN
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err("--threads must be in 1..=256".into());
        }
        if !self.recv_bufs.is_power_of_two() || self.recv_bufs > 32768 {
            return Err("--recv-bufs must be a power of two up to 32768".into());
        }
        if !(4096..=(1 << 24)).contains(&self.recv_buf) {
            return Err("--recv-buf must be between 4KiB and 16MiB".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        Ok(())
    }
}

/// `idle` flags.
#[derive(Clone, Debug, Args)]
pub struct IdleArgs {
    /// URL to open (ws://), may contain {topic} (t0 is used).
    #[arg(long)]
    pub url: String,
    /// Number of connections.
    #[arg(long)]
    pub connections: usize,
    /// How long to hold them open once all are connected.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Server process to measure; 0 = none.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Connection flags.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// A JWT on every connection (`--token-*`).
    #[command(flatten)]
    pub token: TokenArgs,
}

/// `storm` flags.
#[derive(Clone, Debug, Args)]
pub struct StormArgs {
    /// URL to open (ws://), may contain {topic} (t0 is used).
    #[arg(long)]
    pub url: String,
    /// Number of connections.
    #[arg(long)]
    pub connections: usize,
    /// Server process to measure; 0 = none.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Connection flags (`--concurrency` = handshakes in flight; the rate is unlimited unless given).
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// A JWT on every connection (`--token-*`), minted before the storm starts.
    #[command(flatten)]
    pub token: TokenArgs,
}

/// `recover` flags.
#[derive(Clone, Debug, Args)]
pub struct RecoverArgs {
    /// ringcast's mux endpoint (ws://HOST:PORT/ws; `?envelope=2` for binary envelopes v2).
    #[arg(long)]
    pub url: String,
    /// Where the missed messages are published: ringcast's batch publish
    /// (default: http:// on the --url's address, path /publish).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Extra header on every publish request (`Name: value`, e.g. an API key), repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// The topic (its namespace must keep history: history_size >= --missed).
    #[arg(long, default_value = "recover")]
    pub topic: String,
    /// Clients that subscribe, disconnect, and recover.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Messages published while they are away (at most the server's
    /// --max-recovery-publications, default 1000, or they get `too_many`).
    #[arg(long, default_value_t = 1000)]
    pub missed: u64,
    /// Message size in bytes (>= 42: the payload stamp).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Deadline of each phase (acks and first message, publishing, replay).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Connection flags (`--connect-rate` defaults to unlimited here: "all at once").
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl RecoverArgs {
    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.clients) {
            return Err("--clients must be in 1..=100000".into());
        }
        if !(1..=1_000_000).contains(&self.missed) {
            return Err("--missed must be in 1..=1000000".into());
        }
        if !(crate::payload::STAMP_LEN..=(1 << 20)).contains(&self.size) {
            return Err(format!(
                "--size must be in {}..=1MiB bytes",
                crate::payload::STAMP_LEN
            ));
        }
        if self.topic.is_empty()
            || self.topic.len() > 255
            || !self.topic.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err("--topic must be 1 to 255 bytes of printable ASCII without spaces".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be positive".into());
        }
        Ok(())
    }
}

/// `blast` flags.
#[derive(Clone, Debug, Args)]
pub struct BlastArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    pub listen: std::net::SocketAddr,
    /// Payload size of every frame (>= 42).
    #[arg(long, value_parser = parse_size)]
    pub size: usize,
    /// Binary frames (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Bytes per send: how many frames one pre-built batch holds.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub batch_bytes: usize,
    /// Stop by itself after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// Refuse connections beyond this many.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Accept and upgrade, but send nothing (a reference for idle-connection tests).
    #[arg(long)]
    pub idle: bool,
}

/// `10s`, `500ms`, `2m`, `1.5s`, `250us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 10s or 500ms"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("{s:?}: unknown duration unit {u:?}")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?}: duration out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `64`, `1KiB`, `16KiB`, `1MiB`, `1k`, `2K`, `1M` (binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: usize = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 64 or 16KiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("{s:?}: unknown size unit {u:?}")),
    };
    v.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: size too large"))
}

/// Largest message the generator will build (the server's default limit is 64 KiB).
pub const MAX_SIZE: usize = 16 << 20;

impl RunArgs {
    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.subscribers == 0 || self.subscribers > 1_000_000 {
            return Err("--subscribers must be in 1..=1000000".into());
        }
        if self.topics == 0 {
            return Err("--topics must be at least 1".into());
        }
        if !(crate::payload::STAMP_LEN..=MAX_SIZE).contains(&self.size) {
            return Err(format!(
                "--size must be in {}..={MAX_SIZE} bytes (the payload stamp takes {})",
                crate::payload::STAMP_LEN,
                crate::payload::STAMP_LEN
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err("--threads must be in 1..=256".into());
        }
        if !(0.0..1.0).contains(&self.slow_fraction) {
            return Err("--slow-fraction must be in [0, 1)".into());
        }
        if !self.recv_bufs.is_power_of_two() || self.recv_bufs > 32768 {
            return Err("--recv-bufs must be a power of two up to 32768".into());
        }
        if !(4096..=(1 << 24)).contains(&self.recv_buf) {
            return Err("--recv-buf must be between 4KiB and 16MiB".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if self.publishers > 0 {
            if self.pub_url.is_none() && self.pub_http.is_none() {
                return Err("publishing needs --pub-url or --pub-http (or --publishers 0)".into());
            }
            match (self.rate, self.in_flight) {
                (None, None) => return Err("publishing needs --rate or --in-flight".into()),
                (Some(r), _) if !(r > 0.0 && r.is_finite() && r <= 1e9) => {
                    return Err("--rate must be in (0, 1e9]".into());
                }
                (_, Some(0)) => return Err("--in-flight must be at least 1".into()),
                _ => {}
            }
            if self.publishers > 100_000 {
                return Err("--publishers must be at most 100000".into());
            }
            if self.in_flight.is_some() && self.subscribers < self.topics.min(self.publishers) {
                return Err(
                    "--in-flight needs a subscriber on every published topic (subscribers >= topics)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ringcast-loadtest").chain(args.iter().copied()))
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match parse(args).unwrap().command {
            Command::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("16KiB").unwrap(), 16384);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2k").unwrap(), 2048);
        assert!(parse_size("x").is_err());
        assert!(parse_size("1TiB").is_err());
    }

    #[test]
    fn contract_run_line() {
        let r = run_args(&[
            "run",
            "--sub-url",
            "ws://127.0.0.1:9001/ws/{topic}",
            "--topics",
            "10",
            "--subscribers",
            "1000",
            "--connect-rate",
            "5000",
            "--sources",
            "127.0.0.1,127.0.0.2",
            "--pub-url",
            "ws://127.0.0.1:9001/ws/{topic}",
            "--publishers",
            "2",
            "--rate",
            "1000",
            "--size",
            "64",
            "--binary",
            "--duration",
            "10s",
            "--warmup",
            "2s",
            "--threads",
            "2",
            "--io",
            "uring",
            "--slow-fraction",
            "0.1",
            "--slow-mode",
            "slow",
            "--server-pid",
            "42",
            "--json",
            "/tmp/x.json",
            "--quiet",
        ]);
        assert_eq!(r.topics, 10);
        assert_eq!(r.subscribers, 1000);
        assert_eq!(r.connect.connect_rate, Some(5000));
        assert_eq!(r.connect.sources.len(), 2);
        assert_eq!(r.rate, Some(1000.0));
        assert!(r.binary && r.quiet);
        assert_eq!(r.io, IoMode::Uring);
        assert_eq!(r.slow_mode, SlowMode::Slow);
        assert_eq!(r.server_pid, Some(42));
        assert_eq!(r.warmup, Duration::from_secs(2));
        r.validate().unwrap();
    }

    #[test]
    fn run_validation() {
        let base = [
            "run",
            "--sub-url",
            "ws://127.0.0.1:1/",
            "--subscribers",
            "10",
            "--size",
            "64",
        ];
        // No publish target.
        let r = run_args(&[&base[..], &["--rate", "10"]].concat());
        assert!(r.validate().is_err());
        // No rate / in-flight.
        let r = run_args(&[&base[..], &["--pub-url", "ws://127.0.0.1:1/"]].concat());
        assert!(r.validate().is_err());
        // Receive-only is fine.
        let r = run_args(&[&base[..], &["--publishers", "0"]].concat());
        r.validate().unwrap();
        // Too small a message.
        let r = run_args(&[
            "run",
            "--sub-url",
            "u",
            "--subscribers",
            "1",
            "--size",
            "10",
            "--publishers",
            "0",
        ]);
        assert!(r.validate().is_err());
        // Closed loop.
        let r = run_args(
            &[
                &base[..],
                &["--pub-http", "http://127.0.0.1:1/p", "--in-flight", "32"],
            ]
            .concat(),
        );
        r.validate().unwrap();
        // Rate and in-flight together are refused by clap.
        assert!(
            parse(
                &[
                    &base[..],
                    &["--pub-url", "x", "--rate", "1", "--in-flight", "2"]
                ]
                .concat()
            )
            .is_err()
        );
        // Both publish targets are refused by clap.
        assert!(
            parse(
                &[
                    &base[..],
                    &["--pub-url", "x", "--pub-http", "y", "--rate", "1"]
                ]
                .concat()
            )
            .is_err()
        );
    }

    #[test]
    fn chat_line() {
        let c = parse(&[
            "chat",
            "--url",
            "ws://127.0.0.1:1/ws/{topic}",
            "--members",
            "1000",
            "--duration",
            "3s",
            "--metrics-url",
            "http://127.0.0.1:1/metrics",
        ])
        .unwrap();
        let Command::Chat(a) = c.command else {
            panic!("not chat");
        };
        assert_eq!(a.members, 1000);
        assert_eq!(a.rate_per_member, 1.0);
        assert_eq!(a.size, 64);
        assert!(!a.expect_echo);
        a.validate().unwrap();
        for bad in [
            &["--members", "1"][..],
            &["--members", "10", "--rate-per-member", "0"],
            &["--members", "10", "--size", "8"],
        ] {
            let args = [&["chat", "--url", "ws://127.0.0.1:1/"][..], bad].concat();
            match parse(&args).unwrap().command {
                Command::Chat(a) => assert!(a.validate().is_err(), "{bad:?}"),
                other => panic!("not chat: {other:?}"),
            }
        }
    }

    #[test]
    fn other_subcommands() {
        let c = parse(&[
            "idle",
            "--url",
            "ws://127.0.0.1:1/",
            "--connections",
            "5",
            "--hold",
            "1s",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Idle(ref i) if i.connections == 5));
        let c = parse(&[
            "storm",
            "--url",
            "ws://127.0.0.1:1/",
            "--connections",
            "5",
            "--concurrency",
            "8",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Storm(ref s) if s.connect.concurrency == 8));
        let c = parse(&[
            "blast",
            "--listen",
            "127.0.0.1:0",
            "--size",
            "64",
            "--binary",
        ])
        .unwrap();
        assert!(matches!(c.command, Command::Blast(ref b) if b.size == 64 && b.binary));
        assert!(parse(&["blast", "--listen", "nope", "--size", "64"]).is_err());
        let c = parse(&[
            "recover",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--clients",
            "10",
            "--missed",
            "20",
            "--header",
            "Authorization: Bearer k",
        ])
        .unwrap();
        let Command::Recover(r) = c.command else {
            panic!("not recover");
        };
        assert_eq!((r.clients, r.missed, r.size), (10, 20, 64));
        assert_eq!(r.topic, "recover");
        assert_eq!(r.headers.len(), 1);
        r.validate().unwrap();
        for bad in [
            &["--clients", "0"][..],
            &["--missed", "0"],
            &["--size", "8"],
            &["--topic", "a b"],
            &["--timeout", "0s"],
        ] {
            let args = [&["recover", "--url", "ws://127.0.0.1:1/ws"][..], bad].concat();
            match parse(&args).unwrap().command {
                Command::Recover(a) => assert!(a.validate().is_err(), "{bad:?}"),
                other => panic!("not recover: {other:?}"),
            }
        }
    }
}
