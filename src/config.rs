//! Start-up configuration: command-line flags, a TOML file and `RINGCAST_*`
//! environment variables, merged into one validated [`Config`].
//!
//! # Precedence
//!
//! For every key, the first layer that sets it wins:
//!
//! 1. command-line flags (`--max-message-size 1MiB`);
//! 2. environment variables (`RINGCAST_MAX_MESSAGE_SIZE=1MiB`): a deployment (a systemd
//!    unit, a container) overrides the file it ships, as twelve-factor setups expect;
//! 3. the TOML file named by `--config PATH` (or, when that flag is absent,
//!    by `RINGCAST_CONFIG`), with snake_case keys (`max_message_size = "1MiB"`);
//! 4. the built-in defaults ([`Config::default`]).
//!
//! # Validation
//!
//! Loading happens in two steps, and both fail with a [`ConfigError`] that
//! names the key, the offending value, the layer it came from and the problem:
//!
//! * **Parsing** is strict in *every* layer: a malformed value (`"64 KB?"`) is
//!   an error even when a higher layer overrides it, so that a typo is never
//!   silently ignored. The TOML file refuses unknown keys. An environment
//!   variable set to the empty string counts as unset.
//! * **Range and cross-key checks** ([`Config::validate`]) apply to the merged
//!   result only: `max_frame_size <= max_message_size`,
//!   `send_queue_limit >= max_message_size`, `idle_timeout > ping_interval`
//!   when both are enabled, powers of two where the kernel needs them.
//!
//! # Value syntax (the same parser for flags, environment and file)
//!
//! * **Sizes**: a whole number of bytes (`65536`, `64_000`), optionally with a
//!   binary unit `B`, `KiB`, `MiB` or `GiB` (case-insensitive, space allowed:
//!   `64KiB`, `1 mib`). Decimal and ambiguous units (`KB`, `MB`, `GB`, `K`,
//!   `M`, `G`) and fractions are refused rather than guessed. In the TOML file
//!   a plain integer is a number of bytes.
//! * **Durations**: [`humantime`] syntax (`500ms`, `30s`, `2m`, `1h 30m`); `0`
//!   means "disabled" where a key allows it. A bare number other than `0` is
//!   refused (its unit would be a guess), also as a TOML integer.
//! * **Counts**: a whole number (`4096`, `100_000`); a TOML integer is fine.
//! * **Booleans** (`pin_cores`): `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.
//! * **Addresses** (`listen`): `IP:port` literals such as `0.0.0.0:8080` or
//!   `[::1]:8080`, no host names. The flag repeats; the environment variable
//!   takes a comma-separated list; the file takes a string or an array.
//!
//! # Use
//!
//! ```no_run
//! let cfg = match ringcast::config::load() {
//!     Ok(cfg) => cfg,
//!     Err(e) => e.exit(), // prints; exit code 2, or 0 for --help/--version
//! };
//! # let _ = cfg;
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;

mod access;
mod cluster;
mod env_check;
mod print;
pub mod reload;
#[cfg(test)]
mod tests;

pub use env_check::unknown_env;

// ---------------------------------------------------------------------------
// The configuration the engine uses
// ---------------------------------------------------------------------------

/// The validated server configuration.
///
/// Build it with [`load`] (process arguments and environment) or [`load_from`]
/// (injected, for tests). A `Config` built or modified in code can be checked
/// with [`Config::validate`]. Field docs give the flag, environment variable and
/// TOML key; `docs/configuration.md` has the same table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept connections on (`--listen`, repeatable;
    /// `RINGCAST_LISTEN`, comma-separated; `listen`). Every shard listens on
    /// each of them. Port 0 asks the kernel for a free port. Default
    /// `127.0.0.1:8080`; never empty; no duplicates.
    pub listen: Vec<SocketAddr>,
    /// Number of shards, i.e. event-loop threads, each with its own ring and
    /// connections (`--shards`, `RINGCAST_SHARDS`, `shards`). Default: the
    /// number of CPUs this process may run on (its affinity mask, as reported
    /// by [`std::thread::available_parallelism`]). 1..=1024.
    pub shards: usize,
    /// Which I/O backend the shards use (`--io`, `RINGCAST_IO`, `io`).
    /// Default [`IoBackend::Auto`].
    pub io: IoBackend,
    /// Submission-queue entries per io_uring ring; the completion queue is
    /// sized from it by the engine (`--ring-entries`, `RINGCAST_RING_ENTRIES`,
    /// `ring_entries`). Default 4096; a power of two in 8..=32768.
    pub ring_entries: u32,
    /// Size of each provided receive buffer, i.e. the most bytes one receive
    /// completion can carry (`--recv-buffer-size`, `RINGCAST_RECV_BUFFER_SIZE`,
    /// `recv_buffer_size`). Default 16 KiB; 512 B..=1 MiB.
    pub recv_buffer_size: usize,
    /// Number of receive buffers in each shard's provided-buffer ring; shared
    /// by all of the shard's connections, so an idle connection pins none
    /// (`--recv-buffers`, `RINGCAST_RECV_BUFFERS`, `recv_buffers`). Default
    /// 256 (each buffer the kernel has written stays resident, so this is a
    /// fixed memory cost per shard); a power of two in 1..=32768 (the kernel's buffer-ring limit).
    pub recv_buffers: u32,
    /// Most connections the whole server holds at once, counting those still
    /// in the handshake; excess upgrades get 503 (`--max-connections`,
    /// `RINGCAST_MAX_CONNECTIONS`, `max_connections`). Default 100_000;
    /// 1..=16_777_216.
    pub max_connections: usize,
    /// Largest WebSocket message payload accepted from a client, after
    /// reassembling fragments: exactly this many bytes is accepted, one more
    /// is refused with close code 1009 (`--max-message-size`,
    /// `RINGCAST_MAX_MESSAGE_SIZE`, `max_message_size`). Default 64 KiB;
    /// 125 B..=1 GiB.
    pub max_message_size: usize,
    /// Largest payload of one incoming frame; a longer frame header is refused
    /// (1009) before its payload is read (`--max-frame-size`,
    /// `RINGCAST_MAX_FRAME_SIZE`, `max_frame_size`). Default: equal to
    /// `max_message_size`. Must be at least 125 (the largest control frame)
    /// and at most `max_message_size`, since a bigger frame could only carry
    /// a message that is refused anyway.
    pub max_frame_size: usize,
    /// Most bytes of HTTP request line plus headers read before a handshake
    /// is refused with 431 (`--max-header-bytes`, `RINGCAST_MAX_HEADER_BYTES`,
    /// `max_header_bytes`). Default 8 KiB; 256 B..=1 MiB.
    pub max_header_bytes: usize,
    /// Most bytes of framed, not yet sent data queued for one connection;
    /// beyond it the slow-consumer policy applies (`--send-queue-limit`,
    /// `RINGCAST_SEND_QUEUE_LIMIT`, `send_queue_limit`). Default 1 MiB, or
    /// `max_message_size` when that is larger; at least `max_message_size`
    /// (so one largest message always fits) and at most 1 GiB.
    pub send_queue_limit: usize,
    /// What to do when a connection's send queue is full
    /// (`--slow-consumer`, `RINGCAST_SLOW_CONSUMER`, `slow_consumer`).
    /// Default [`SlowConsumerPolicy::Disconnect`].
    pub slow_consumer: SlowConsumerPolicy,
    /// How often the server pings an otherwise quiet connection
    /// (`--ping-interval`, `RINGCAST_PING_INTERVAL`, `ping_interval`).
    /// Default 30s; zero disables pings; otherwise 10ms..=24h.
    pub ping_interval: Duration,
    /// How long a connection may stay silent (nothing received, not even a
    /// pong) before it is closed with 1001 (`--idle-timeout`,
    /// `RINGCAST_IDLE_TIMEOUT`, `idle_timeout`). Default 90s; zero disables;
    /// otherwise 10ms..=24h and, when pings are enabled, longer than
    /// `ping_interval` (so a healthy client has a chance to answer).
    pub idle_timeout: Duration,
    /// How long a new connection has to complete its HTTP upgrade before it
    /// is dropped (`--handshake-timeout`, `RINGCAST_HANDSHAKE_TIMEOUT`,
    /// `handshake_timeout`). Default 10s; 10ms..=24h; cannot be disabled
    /// (it is the slowloris defence).
    pub handshake_timeout: Duration,
    /// Shortest time between two fan-outs of a shard's publishes
    /// (`--write-delay`, `RINGCAST_WRITE_DELAY`, `write_delay`). Default 0:
    /// every publish goes out in the loop turn that received it. With a
    /// delay, publishes that follow one another within it are held and sent
    /// together, one send per subscriber per window: less CPU per delivered
    /// message at the price of up to this much added latency. 0, or
    /// 100us..=1s.
    pub write_delay: Duration,
    /// Whether each shard thread is pinned to one CPU of the affinity mask
    /// (`--pin-cores` / `--no-pin-cores`, `RINGCAST_PIN_CORES`, `pin_cores`).
    /// Default true.
    pub pin_cores: bool,
    /// The log filter, as a `tracing_subscriber::EnvFilter` directive string
    /// such as `info` or `ringcast=debug,info` (`--log-level`,
    /// `RINGCAST_LOG_LEVEL`, `log_level`). Default `info`.
    pub log_level: String,
    /// Log line format (`--log-format`, `RINGCAST_LOG_FORMAT`, `log_format`).
    /// Default [`LogFormat::Text`].
    pub log_format: LogFormat,
    /// How long a graceful shutdown (SIGTERM/SIGINT) may take: clients get
    /// close 1001, queued frames are flushed, then the process exits 0 at the
    /// latest after this long (`--drain-timeout`, `RINGCAST_DRAIN_TIMEOUT`,
    /// `drain_timeout`). Default 10s; 10ms..=24h.
    pub drain_timeout: Duration,
    /// After SIGTERM/SIGINT, how long to keep serving the connected clients while `/health`
    /// answers 503 and new upgrades are refused, before closing them (so that a load
    /// balancer polling `/ready` stops sending new clients first) (`--drain-grace`,
    /// `RINGCAST_DRAIN_GRACE`, `drain_grace`). Default 5s; 0 (none) ..=10m. The drain
    /// timeout counts from its end.
    pub drain_grace: Duration,
    /// A separate address for `/metrics`, `/health`, the backend API and HTTP
    /// publish, off the public port and outside the per-IP limits (`--admin-listen`,
    /// `RINGCAST_ADMIN_LISTEN`, `admin_listen`). Default: none (everything on `listen`). When
    /// set, the public port no longer serves `/metrics` and `/api/...`.
    pub admin_listen: Option<SocketAddr>,
    /// Origins whose browsers may open WebSockets: exact origins such as
    /// `https://app.example.com`, or `*` for any (`--allowed-origins`,
    /// comma-separated; `RINGCAST_ALLOWED_ORIGINS`; `allowed_origins`, a
    /// string or an array). Upgrades with another `Origin` get 403; requests
    /// without an `Origin` header (non-browser clients) are not checked.
    /// Default `*`.
    pub allowed_origins: Vec<String>,
    /// Most open connections from one IP address, whole server; past it a
    /// request gets 429 (`--max-connections-per-ip`,
    /// `RINGCAST_MAX_CONNECTIONS_PER_IP`, `max_connections_per_ip`).
    /// Default 0 (no limit); 0..=16_777_216.
    pub max_connections_per_ip: usize,
    /// New connections per second allowed from one IP address (a token
    /// bucket holding `connect_burst_per_ip`), whole server; past it a
    /// request gets 429 (`--connect-rate-per-ip`,
    /// `RINGCAST_CONNECT_RATE_PER_IP`, `connect_rate_per_ip`). Default 0 (no
    /// limit); 0..=1_000_000.
    pub connect_rate_per_ip: u32,
    /// Size of the per-IP connect token bucket: how many connections one IP
    /// may open at once before `connect_rate_per_ip` applies
    /// (`--connect-burst-per-ip`, `RINGCAST_CONNECT_BURST_PER_IP`,
    /// `connect_burst_per_ip`). Default 20; 1..=1_000_000.
    pub connect_burst_per_ip: u32,
    /// Most topics one mux-mode connection may subscribe to; one more is
    /// refused with `too_many_topics` (`--max-topics-per-connection`,
    /// `RINGCAST_MAX_TOPICS_PER_CONNECTION`, `max_topics_per_connection`).
    /// Default 256; 1..=65536.
    pub max_topics_per_connection: usize,
    /// Malformed or refused mux messages one connection may send per
    /// 10 seconds; one more closes it with 1008 (`--mux-error-budget`,
    /// `RINGCAST_MUX_ERROR_BUDGET`, `mux_error_budget`). Default 20;
    /// 0..=1_000_000 (0: the first malformed message closes).
    pub mux_error_budget: u32,
    /// Most framed bytes in one topic batch: a publish that would take a batch past it
    /// seals the batch (sent at the end of the turn, even inside a write-delay window) and
    /// starts a new one (`--max-batch-bytes`, `RINGCAST_MAX_BATCH_BYTES`,
    /// `max_batch_bytes`). A subscriber's queue holds at most `send_queue_limit` plus one
    /// batch. Default 128 KiB; 1 KiB..=64 MiB (a batch always holds one message).
    pub max_batch_bytes: usize,
    /// Most frame bytes waiting in one shard's inbox from the other shards; a batch that
    /// does not fit is dropped for that shard's subscribers and counted
    /// (`ringcast_bus_dropped_messages_total`) (`--max-inbox-bytes`,
    /// `RINGCAST_MAX_INBOX_BYTES`, `max_inbox_bytes`). Default 64 MiB; at least
    /// `max_batch_bytes`, at most 4 GiB.
    pub max_inbox_bytes: usize,
    /// How long a keep-alive HTTP connection (publish, health, metrics...) may wait for its
    /// next request, counted from its last answer; then it is closed
    /// (`--http-idle-timeout`, `RINGCAST_HTTP_IDLE_TIMEOUT`, `http_idle_timeout`).
    /// Default 30s; zero turns keep-alive off (every answer closes its connection);
    /// otherwise 10ms..=24h.
    pub http_idle_timeout: Duration,
    /// Requests one HTTP connection may make; the answer to the last one closes it, so a
    /// long-lived backend connection reconnects now and then and lands on another shard
    /// (`--http-max-requests-per-connection`, `RINGCAST_HTTP_MAX_REQUESTS_PER_CONNECTION`,
    /// `http_max_requests_per_connection`). Default 0 (no limit); 0..=4_294_967_295.
    pub http_max_requests_per_connection: u32,
    /// Largest body of a batch publish (`POST /publish`): a larger Content-Length is
    /// refused with 413 before a byte of the body is read (`--max-publish-batch-bytes`,
    /// `RINGCAST_MAX_PUBLISH_BATCH_BYTES`, `max_publish_batch_bytes`). Default 4 MiB;
    /// 1 KiB..=1 GiB.
    pub max_publish_batch_bytes: usize,
    /// Most items in one batch publish; a batch with more is refused whole with 413
    /// (`--max-publish-batch-items`, `RINGCAST_MAX_PUBLISH_BATCH_ITEMS`,
    /// `max_publish_batch_items`). Default 10000; 1..=1_000_000.
    pub max_publish_batch_items: usize,
    /// HMAC secret for HS256/384/512 connection tokens (`--jwt-hmac-secret`,
    /// `RINGCAST_JWT_HMAC_SECRET`, `jwt_hmac_secret`). Prefer the file form: a flag shows
    /// in `ps`. Never logged.
    pub jwt_hmac_secret: Option<Secret>,
    /// File holding the HMAC secret (trailing newline ignored) (`--jwt-hmac-secret-file`,
    /// `RINGCAST_JWT_HMAC_SECRET_FILE`, `jwt_hmac_secret_file`).
    pub jwt_hmac_secret_file: Option<PathBuf>,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519) for RS*/PS*/ES*/EdDSA tokens
    /// (`--jwt-public-key-file`, repeatable; `RINGCAST_JWT_PUBLIC_KEY_FILE`,
    /// comma-separated; `jwt_public_key_file`, a string or an array).
    pub jwt_public_key_file: Vec<PathBuf>,
    /// A JWK Set file; a token's `kid` picks the key (`--jwks-file`, `RINGCAST_JWKS_FILE`,
    /// `jwks_file`).
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set URL, fetched off the shard threads and cached; refetched on an unknown
    /// `kid` at most once per 10 s (`--jwks-url`, `RINGCAST_JWKS_URL`, `jwks_url`).
    pub jwks_url: Option<String>,
    /// Required `aud` of tokens, when set (`--jwt-audience`, `RINGCAST_JWT_AUDIENCE`,
    /// `jwt_audience`).
    pub jwt_audience: Option<String>,
    /// Required `iss` of tokens, when set (`--jwt-issuer`, `RINGCAST_JWT_ISSUER`,
    /// `jwt_issuer`).
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (`--jwt-leeway`, `RINGCAST_JWT_LEEWAY`,
    /// `jwt_leeway`). Default 5s; at most 5m.
    pub jwt_leeway: Duration,
    /// Longest token accepted, in bytes; longer ones are refused before any decoding
    /// (`--max-token-size`, `RINGCAST_MAX_TOKEN_SIZE`, `max_token_size`). Default 8 KiB;
    /// 256 B..=64 KiB.
    pub max_token_size: usize,
    /// API keys for the backend API (`POST /publish…`, `/api/…`) (`--api-key`, repeatable;
    /// `RINGCAST_API_KEY`, comma-separated; `api_key`, a string or an array). Never logged.
    pub api_key: Vec<Secret>,
    /// File of API keys, one per line (`--api-key-file`, `RINGCAST_API_KEY_FILE`,
    /// `api_key_file`).
    pub api_key_file: Option<PathBuf>,
    /// What connections without a token may do in the default namespace (topics without a
    /// `:`) when a JWT key is configured: none, subscribe or publish (`--anonymous`,
    /// `RINGCAST_ANONYMOUS`, `anonymous`). Default none; without a JWT key everyone may do
    /// everything, and setting this is an error.
    pub anonymous: Option<crate::pubsub::Anonymous>,
    /// Whether clients may publish in the default namespace (`false`: only the backend API)
    /// (`--client-publish`, `RINGCAST_CLIENT_PUBLISH`, `client_publish`). Default true.
    pub client_publish: bool,
    /// Publishes per second one client connection may make; past it mux mode answers
    /// `rate_limited` and simple mode drops the message, both counted
    /// (`--client-publish-rate`, `RINGCAST_CLIENT_PUBLISH_RATE`, `client_publish_rate`).
    /// Default 0 (no limit); at most 1,000,000.
    pub client_publish_rate: u32,
    /// Publishes one connection may make at once before the rate applies
    /// (`--client-publish-burst`, `RINGCAST_CLIENT_PUBLISH_BURST`, `client_publish_burst`).
    /// Default 20; 1..=1,000,000.
    pub client_publish_burst: u32,
    /// Publications kept per topic in the default namespace (`--history-size`,
    /// `RINGCAST_HISTORY_SIZE`, `history_size`). Default 0 (no history); at most 1,000,000.
    pub history_size: u32,
    /// A default-namespace topic's history is forgotten this long after its last
    /// publication (`--history-ttl`, `RINGCAST_HISTORY_TTL`, `history_ttl`). Default 5m;
    /// 1s..=30d.
    pub history_ttl: Duration,
    /// What all topic histories together may weigh, frames plus 64 bytes of bookkeeping
    /// each (`--history-memory-limit`, `RINGCAST_HISTORY_MEMORY_LIMIT`,
    /// `history_memory_limit`). Default 256 MiB; 1 MiB..=1 TiB.
    pub history_memory_limit: usize,
    /// Most publications one recovery, rewind or `GET /history` returns
    /// (`--max-recovery-publications`, `RINGCAST_MAX_RECOVERY_PUBLICATIONS`,
    /// `max_recovery_publications`). Default 1000; 1..=100,000.
    pub max_recovery_publications: usize,
    /// The broker this node shares its topics through with other nodes: `redis://host:port[/db]`
    /// or `nats://host:port`, with optional credentials (`--broker`, `RINGCAST_BROKER`,
    /// `broker`). Default: none (a single node; nothing extra is started).
    pub broker: Option<crate::cluster::BrokerUrl>,
    /// A file holding the broker's password (Redis, NATS user) or token (NATS), read at
    /// start; overrides one in the URL (`--broker-password-file`,
    /// `RINGCAST_BROKER_PASSWORD_FILE`, `broker_password_file`).
    pub broker_password_file: Option<PathBuf>,
    /// This node's id in logs, metrics and the broker: 1..=64 of `A-Z a-z 0-9 - _ .`
    /// (`--node-id`, `RINGCAST_NODE_ID`, `node_id`). Default: random at start. Two live
    /// nodes with one id are refused at start.
    pub node_id: Option<String>,
    /// Whether the broker is required: while it is lost, HTTP publish answers 503 and
    /// `/ready` 503 (`--broker-required`, `RINGCAST_BROKER_REQUIRED`, `broker_required`).
    /// Default false (publications go on locally and the answer says the broker is down).
    pub broker_required: bool,
    /// Whether a broker unreachable at start is tolerated: the node starts degraded and
    /// keeps retrying (`--broker-optional`, `RINGCAST_BROKER_OPTIONAL`, `broker_optional`).
    /// Default false (start-up fails with the reason).
    pub broker_optional: bool,
    /// Bound of every broker operation and of stall detection: a broker that answers
    /// nothing for this long is lost (`--broker-timeout`, `RINGCAST_BROKER_TIMEOUT`,
    /// `broker_timeout`). Default 3s; 100ms..=60s.
    pub broker_timeout: Duration,
    /// Publications (frame bytes) waiting for the bridge before more are dropped and
    /// counted (`--broker-max-pending`, `RINGCAST_BROKER_MAX_PENDING`,
    /// `broker_max_pending`). Default 64MiB; 64KiB..=16GiB.
    pub broker_max_pending: usize,
    /// Prefix of every channel, subject and key ringcast uses at the broker (several
    /// clusters on one broker) (`--broker-prefix`, `RINGCAST_BROKER_PREFIX`,
    /// `broker_prefix`). Default `ringcast`.
    pub broker_prefix: String,
    /// Named namespaces, from the file's `[namespaces.NAME]` tables (the file only: a table
    /// has no flag form). Topics `NAME:rest` belong to namespace `NAME`.
    pub namespaces: Vec<NamespaceConfig>,
}

/// A secret value (HMAC secret, API key): compared and used, never shown. Its `Debug` and
/// `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One `[namespaces.NAME]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// The namespace's name (the part of a topic before `:`).
    pub name: String,
    /// `anonymous = "none" | "subscribe" | "publish"`: what connections without a token may
    /// do here (default none; only with a JWT key configured).
    pub anonymous: Option<crate::pubsub::Anonymous>,
    /// `client_publish = true | false` (default true).
    pub client_publish: bool,
    /// `max_message_size`: the largest message clients may publish here (default and
    /// maximum: the server's `max_message_size`).
    pub max_message_size: Option<usize>,
    /// `history_size`: publications kept per topic (default: the server's `history_size`).
    pub history_size: Option<u32>,
    /// `history_ttl` (default: the server's `history_ttl`).
    pub history_ttl: Option<Duration>,
}

/// The I/O backend shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoBackend {
    /// Probe io_uring at start-up; use it if it works, else log why and use
    /// epoll. (`auto`)
    Auto,
    /// io_uring or fail at start-up. (`uring`)
    Uring,
    /// epoll, never touching io_uring. (`epoll`)
    Epoll,
}

/// What happens to a subscriber whose send queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlowConsumerPolicy {
    /// Close it with code 1008 and a reason saying it was too slow, so that
    /// it can reconnect. (`disconnect`)
    Disconnect,
    /// Drop the new message for that subscriber only, and count it. (`drop`)
    Drop,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines. (`text`)
    Text,
    /// One JSON object per line. (`json`)
    Json,
}

impl IoBackend {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("uring", Self::Uring),
        ("epoll", Self::Epoll),
    ];
}
impl SlowConsumerPolicy {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("disconnect", Self::Disconnect), ("drop", Self::Drop)];
}
impl LogFormat {
    const CHOICES: &'static [(&'static str, Self)] = &[("text", Self::Text), ("json", Self::Json)];
}

macro_rules! display_choice {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let name = Self::CHOICES
                    .iter()
                    .find(|(_, v)| v == self)
                    .map_or("?", |(n, _)| n);
                f.write_str(name)
            }
        }
    )*};
}
display_choice!(IoBackend, SlowConsumerPolicy, LogFormat);

// ---------------------------------------------------------------------------
// Keys, defaults and limits
// ---------------------------------------------------------------------------

/// Every configuration key, by its TOML name. The flag is `--` plus the key
/// with `-` for `_`; the environment variable is `RINGCAST_` plus the key in
/// upper case (see [`flag_name`] and [`env_name`]).
pub const KEYS: [&str; 61] = [
    "listen",
    "shards",
    "io",
    "ring_entries",
    "recv_buffer_size",
    "recv_buffers",
    "max_connections",
    "max_message_size",
    "max_frame_size",
    "max_header_bytes",
    "send_queue_limit",
    "slow_consumer",
    "ping_interval",
    "idle_timeout",
    "handshake_timeout",
    "write_delay",
    "pin_cores",
    "log_level",
    "log_format",
    "drain_timeout",
    "drain_grace",
    "admin_listen",
    "allowed_origins",
    "max_connections_per_ip",
    "connect_rate_per_ip",
    "connect_burst_per_ip",
    "max_topics_per_connection",
    "mux_error_budget",
    "max_batch_bytes",
    "max_inbox_bytes",
    "http_idle_timeout",
    "http_max_requests_per_connection",
    "max_publish_batch_bytes",
    "max_publish_batch_items",
    "jwt_hmac_secret",
    "jwt_hmac_secret_file",
    "jwt_public_key_file",
    "jwks_file",
    "jwks_url",
    "jwt_audience",
    "jwt_issuer",
    "jwt_leeway",
    "max_token_size",
    "api_key",
    "api_key_file",
    "anonymous",
    "client_publish",
    "client_publish_rate",
    "client_publish_burst",
    "history_size",
    "history_ttl",
    "history_memory_limit",
    "max_recovery_publications",
    "broker",
    "broker_password_file",
    "node_id",
    "broker_required",
    "broker_optional",
    "broker_timeout",
    "broker_max_pending",
    "broker_prefix",
];

/// Keys whose values are secrets: never shown in errors or logs.
pub const SECRET_KEYS: [&str; 3] = ["jwt_hmac_secret", "api_key", "broker"];

/// The environment variable that names a config file when `--config` is absent.
pub const CONFIG_FILE_ENV: &str = "RINGCAST_CONFIG";

/// The command-line flag for a key: `max_message_size` → `--max-message-size`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The environment variable for a key: `max_message_size` →
/// `RINGCAST_MAX_MESSAGE_SIZE`.
pub fn env_name(key: &str) -> String {
    format!("RINGCAST_{}", key.to_ascii_uppercase())
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const MAX_SHARDS: u64 = 1024;
const MIN_TIMER: Duration = Duration::from_millis(10);
const MIN_WRITE_DELAY: Duration = Duration::from_micros(100);
const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);
const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);
/// Largest payload of a control frame (RFC 6455 §5.5).
const CONTROL_FRAME_MAX: u64 = 125;

/// File descriptors kept in reserve beyond `max_connections`: listeners,
/// rings, eventfds, log files, the odd accept that races the limit.
pub const NOFILE_SLACK: u64 = 256;

/// The open-file limit `max_connections` needs: connections plus
/// [`NOFILE_SLACK`]. Compare it with the hard limit [`raise_nofile_limit`]
/// reports and warn when that is lower.
pub fn nofile_needed(max_connections: usize) -> u64 {
    (max_connections as u64).saturating_add(NOFILE_SLACK)
}

fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for Config {
    /// The built-in defaults (see each field).
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            shards: default_shards(),
            io: IoBackend::Auto,
            ring_entries: 4096,
            recv_buffer_size: 16 * KIB as usize,
            recv_buffers: 256,
            max_connections: 100_000,
            max_message_size: 64 * KIB as usize,
            max_frame_size: 64 * KIB as usize,
            max_header_bytes: 8 * KIB as usize,
            send_queue_limit: MIB as usize,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            write_delay: Duration::ZERO,
            pin_cores: true,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            drain_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(5),
            admin_listen: None,
            allowed_origins: vec!["*".to_owned()],
            max_connections_per_ip: 0,
            connect_rate_per_ip: 0,
            connect_burst_per_ip: 20,
            max_topics_per_connection: 256,
            mux_error_budget: 20,
            max_batch_bytes: crate::pubsub::batch::DEFAULT_MAX_BATCH_BYTES,
            max_inbox_bytes: crate::bus::DEFAULT_MAX_INBOX_BYTES,
            http_idle_timeout: Duration::from_secs(30),
            http_max_requests_per_connection: 0,
            max_publish_batch_bytes: 4 * MIB as usize,
            max_publish_batch_items: 10_000,
            jwt_hmac_secret: None,
            jwt_hmac_secret_file: None,
            jwt_public_key_file: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway: Duration::from_secs(5),
            max_token_size: 8 * KIB as usize,
            api_key: Vec::new(),
            api_key_file: None,
            anonymous: None,
            client_publish: true,
            client_publish_rate: 0,
            client_publish_burst: 20,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            history_memory_limit: 256 << 20,
            broker: None,
            broker_password_file: None,
            node_id: None,
            broker_required: false,
            broker_optional: false,
            broker_timeout: Duration::from_secs(3),
            broker_max_pending: 64 << 20,
            broker_prefix: "ringcast".to_owned(),
            max_recovery_publications: 1000,
            namespaces: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// The TOML file at this path.
    File(PathBuf),
    /// A `RINGCAST_*` environment variable.
    Env,
    /// The built-in default.
    Default,
    /// Set in code on a [`Config`] checked with [`Config::validate`].
    Code,
}

/// A [`Source`] shown together with its key: `from --shards`,
/// `from RINGCAST_SHARDS`, `from ringcast.toml`, `default`.
struct Origin<'a>(&'a str, &'a Source);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Source::Flag => write!(f, "from {}", flag_name(self.0)),
            Source::Env => write!(f, "from {}", env_name(self.0)),
            Source::File(p) => write!(f, "from {}", p.display()),
            Source::Default => f.write_str("default"),
            Source::Code => f.write_str("set in code"),
        }
    }
}

/// Why a configuration could not be loaded. [`ConfigError::exit`] prints it and
/// exits with [`exit_code`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The command line did not parse (clap's usage error, exit code 2), or it
    /// asked for `--help` or `--version` (exit code 0; the "error" carries the
    /// text to print).
    Cli(clap::Error),
    /// One value is malformed or out of range.
    Invalid {
        /// The TOML-style key, e.g. `max_message_size`.
        key: &'static str,
        /// The value as given (quoted if it was text).
        value: String,
        /// The layer it came from.
        source: Source,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// A value conflicts with another key's value.
    Conflict {
        /// The key reported as wrong.
        key: &'static str,
        /// Its value.
        value: String,
        /// Where it came from.
        source: Source,
        /// The key it conflicts with.
        other: &'static str,
        /// The rule, including the other key's value and origin.
        problem: String,
    },
    /// The config file could not be read.
    ReadFile {
        /// The path given to `--config` or `RINGCAST_CONFIG`.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Not an error: `--check-config` or `--print-config` finished; the text (possibly
    /// empty) goes to stdout and the process exits 0.
    Report(String),
    /// The access-control setup failed (`--check-config`): a key file that cannot be read
    /// or parsed, a bad namespace. Names the file or key, never a secret.
    Setup(String),
    /// The config file is not valid TOML, has an unknown key or a value of
    /// the wrong type.
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Cli(e) => write!(f, "{}", e.render()),
            ConfigError::Invalid {
                key,
                value,
                source,
                problem,
            } => write!(
                f,
                "invalid configuration: {key} = {value} ({}): {problem}",
                Origin(key, source)
            ),
            ConfigError::Conflict {
                key,
                value,
                source,
                problem,
                ..
            } => write!(
                f,
                "invalid configuration: {key} = {value} ({}): {problem}",
                Origin(key, source)
            ),
            ConfigError::ReadFile { path, error } => write!(
                f,
                "invalid configuration: cannot read config file {}: {error}",
                path.display()
            ),
            ConfigError::Report(text) => f.write_str(text),
            ConfigError::Setup(why) => write!(f, "invalid configuration: {why}"),
            ConfigError::ParseFile { path, message } => write!(
                f,
                "invalid configuration: config file {}: {}",
                path.display(),
                message.trim_end()
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Cli(e) => Some(e),
            ConfigError::ReadFile { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl ConfigError {
    /// The TOML-style key this error is about, if it is about one key.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::Conflict { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Print the error (help and version text to stdout, everything else to
    /// stderr) and exit the process with [`exit_code`].
    pub fn exit(&self) -> ! {
        match self {
            ConfigError::Cli(e) => e.exit(),
            ConfigError::Report(text) => {
                print!("{text}");
                std::process::exit(0)
            }
            _ => {
                eprintln!("error: {self}");
                std::process::exit(exit_code(self))
            }
        }
    }
}

/// The process exit code for a configuration error: 2 for every invalid
/// configuration and command-line usage error, 0 for `--help` and `--version`.
pub fn exit_code(err: &ConfigError) -> i32 {
    match err {
        ConfigError::Cli(e) => e.exit_code(),
        ConfigError::Report(_) => 0,
        _ => 2,
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Command-line flags. Every knob is optional and has no clap default, so that
/// "given on the command line" is detectable and lower layers can fill in.
#[derive(Debug, Parser)]
#[command(
    name = "ringcast",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RINGCAST_COMMIT"), ")"),
    about = "WebSocket pub/sub broadcast server on io_uring, thread-per-core.",
    long_about = "WebSocket pub/sub broadcast server on io_uring, thread-per-core.\n\n\
        Configuration comes from these flags, RINGCAST_* environment variables and a TOML \
        file (--config), in that order of precedence, then the built-in defaults. \
        Each flag below names its environment variable and TOML key. Sizes are bytes or \
        take KiB/MiB/GiB (64KiB); decimal units such as KB are refused. Durations look \
        like 500ms, 30s or 2m. See docs/configuration.md.",
    after_help = "Invalid configuration exits with code 2 and names the key at fault."
)]
struct Cli {
    /// Check the whole configuration (values, key files, namespaces) and exit: nothing is printed when it is valid (exit 0), the error otherwise (exit 2).
    #[arg(long)]
    check_config: bool,

    /// Print the effective configuration (TOML, each value with where it came from; secrets redacted) and exit 0.
    #[arg(long)]
    print_config: bool,

    /// Read settings from this TOML file (snake_case keys, e.g. `max_message_size = "1MiB"`); unknown keys are errors. [env: RINGCAST_CONFIG]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Address to listen on, IP:port (repeat the flag for more). [default: 127.0.0.1:8080] [env: RINGCAST_LISTEN, comma-separated] [toml: listen]
    #[arg(long, value_name = "ADDR", action = ArgAction::Append)]
    listen: Vec<String>,

    /// Number of shards (event-loop threads). [default: the CPUs this process may run on] [env: RINGCAST_SHARDS] [toml: shards]
    #[arg(long, value_name = "N")]
    shards: Option<String>,

    /// I/O backend: auto (io_uring, else epoll), uring (io_uring or fail), epoll. [default: auto] [env: RINGCAST_IO] [toml: io]
    #[arg(long, value_name = "auto|uring|epoll")]
    io: Option<String>,

    /// Submission-queue entries per io_uring ring, a power of two in 8..=32768. [default: 4096] [env: RINGCAST_RING_ENTRIES] [toml: ring_entries]
    #[arg(long, value_name = "N")]
    ring_entries: Option<String>,

    /// Size of each provided receive buffer, 512B..=1MiB. [default: 16KiB] [env: RINGCAST_RECV_BUFFER_SIZE] [toml: recv_buffer_size]
    #[arg(long, value_name = "SIZE")]
    recv_buffer_size: Option<String>,

    /// Receive buffers per shard (shared by its connections), a power of two in 1..=32768. [default: 256] [env: RINGCAST_RECV_BUFFERS] [toml: recv_buffers]
    #[arg(long, value_name = "N")]
    recv_buffers: Option<String>,

    /// Most connections for the whole server; excess upgrades get 503. [default: 100000] [env: RINGCAST_MAX_CONNECTIONS] [toml: max_connections]
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,

    /// Largest message accepted from a client; one byte more is closed with 1009. [default: 64KiB] [env: RINGCAST_MAX_MESSAGE_SIZE] [toml: max_message_size]
    #[arg(long, value_name = "SIZE")]
    max_message_size: Option<String>,

    /// Largest payload of one incoming frame, 125B..=max-message-size. [default: the max-message-size] [env: RINGCAST_MAX_FRAME_SIZE] [toml: max_frame_size]
    #[arg(long, value_name = "SIZE")]
    max_frame_size: Option<String>,

    /// Most bytes of HTTP request line and headers in a handshake (431 beyond). [default: 8KiB] [env: RINGCAST_MAX_HEADER_BYTES] [toml: max_header_bytes]
    #[arg(long, value_name = "SIZE")]
    max_header_bytes: Option<String>,

    /// Most bytes queued for sending to one connection, at least max-message-size. [default: 1MiB, or max-message-size if larger] [env: RINGCAST_SEND_QUEUE_LIMIT] [toml: send_queue_limit]
    #[arg(long, value_name = "SIZE")]
    send_queue_limit: Option<String>,

    /// When a send queue is full: disconnect (close 1008) or drop (skip the message, counted). [default: disconnect] [env: RINGCAST_SLOW_CONSUMER] [toml: slow_consumer]
    #[arg(long, value_name = "disconnect|drop")]
    slow_consumer: Option<String>,

    /// How often to ping a connection; 0 disables. [default: 30s] [env: RINGCAST_PING_INTERVAL] [toml: ping_interval]
    #[arg(long, value_name = "DURATION")]
    ping_interval: Option<String>,

    /// Close a connection silent this long (1001); 0 disables; must exceed ping-interval. [default: 90s] [env: RINGCAST_IDLE_TIMEOUT] [toml: idle_timeout]
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,

    /// Drop a connection whose HTTP upgrade (or, on a keep-alive connection, whose next request) takes longer than this. [default: 10s] [env: RINGCAST_HANDSHAKE_TIMEOUT] [toml: handshake_timeout]
    #[arg(long, value_name = "DURATION")]
    handshake_timeout: Option<String>,

    /// Hold publishes that follow one another within this window and send them together (less CPU per delivery, up to this much added latency); 0 sends at once. [default: 0] [env: RINGCAST_WRITE_DELAY] [toml: write_delay]
    #[arg(long, value_name = "DURATION")]
    write_delay: Option<String>,

    /// Pin each shard thread to its own CPU: `--pin-cores` alone means true; also takes a boolean (`--pin-cores false`), like every boolean flag. [default: on] [env: RINGCAST_PIN_CORES=true|false] [toml: pin_cores]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", overrides_with = "no_pin_cores")]
    pin_cores: Option<String>,

    /// Do not pin shard threads to CPUs (see --pin-cores).
    #[arg(long, overrides_with = "pin_cores")]
    no_pin_cores: bool,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as `ringcast=debug,info`. [default: info] [env: RINGCAST_LOG_LEVEL] [toml: log_level]
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,

    /// Log format: text or json. [default: text] [env: RINGCAST_LOG_FORMAT] [toml: log_format]
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,

    /// Longest graceful shutdown after SIGTERM/SIGINT (close 1001, flush, exit 0). [default: 10s] [env: RINGCAST_DRAIN_TIMEOUT] [toml: drain_timeout]
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,

    /// After SIGTERM, keep serving connected clients this long with /ready at 503 and new upgrades refused, then drain (0 = drain at once). [default: 5s] [env: RINGCAST_DRAIN_GRACE] [toml: drain_grace]
    #[arg(long, value_name = "DURATION")]
    drain_grace: Option<String>,

    /// Serve /metrics, /health, /ready, the backend API and HTTP publish on this separate IP:port (not subject to per-IP limits); the public port then no longer serves /metrics and /api. [default: none] [env: RINGCAST_ADMIN_LISTEN] [toml: admin_listen]
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,

    /// Browser origins allowed to upgrade (others get 403): comma-separated exact origins such as https://app.example.com, or *. [default: *] [env: RINGCAST_ALLOWED_ORIGINS] [toml: allowed_origins]
    #[arg(long, value_name = "ORIGINS")]
    allowed_origins: Option<String>,

    /// Most open connections from one IP (429 beyond); 0 = no limit. [default: 0] [env: RINGCAST_MAX_CONNECTIONS_PER_IP] [toml: max_connections_per_ip]
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<String>,

    /// New connections per second from one IP (token bucket, 429 beyond); 0 = no limit. [default: 0] [env: RINGCAST_CONNECT_RATE_PER_IP] [toml: connect_rate_per_ip]
    #[arg(long, value_name = "N")]
    connect_rate_per_ip: Option<String>,

    /// Connections one IP may open at once before connect-rate-per-ip applies. [default: 20] [env: RINGCAST_CONNECT_BURST_PER_IP] [toml: connect_burst_per_ip]
    #[arg(long, value_name = "N")]
    connect_burst_per_ip: Option<String>,

    /// Most topics one mux-mode connection may subscribe to. [default: 256] [env: RINGCAST_MAX_TOPICS_PER_CONNECTION] [toml: max_topics_per_connection]
    #[arg(long, value_name = "N")]
    max_topics_per_connection: Option<String>,

    /// Malformed mux messages a connection may send per 10 s before close 1008. [default: 20] [env: RINGCAST_MUX_ERROR_BUDGET] [toml: mux_error_budget]
    #[arg(long, value_name = "N")]
    mux_error_budget: Option<String>,

    /// Most framed bytes in one topic batch; a fuller batch is sealed and sent at the end of the turn, even inside a write-delay window. [default: 128KiB] [env: RINGCAST_MAX_BATCH_BYTES] [toml: max_batch_bytes]
    #[arg(long, value_name = "SIZE")]
    max_batch_bytes: Option<String>,

    /// Most frame bytes waiting in one shard's inbox from other shards; a batch that does not fit is dropped for that shard and counted, at least max-batch-bytes. [default: 64MiB] [env: RINGCAST_MAX_INBOX_BYTES] [toml: max_inbox_bytes]
    #[arg(long, value_name = "SIZE")]
    max_inbox_bytes: Option<String>,

    /// Close a keep-alive HTTP connection idle this long after its last answer; 0 turns keep-alive off. [default: 30s] [env: RINGCAST_HTTP_IDLE_TIMEOUT] [toml: http_idle_timeout]
    #[arg(long, value_name = "DURATION")]
    http_idle_timeout: Option<String>,

    /// Requests one HTTP connection may make (the last answer closes it); 0 = no limit. [default: 0] [env: RINGCAST_HTTP_MAX_REQUESTS_PER_CONNECTION] [toml: http_max_requests_per_connection]
    #[arg(long, value_name = "N")]
    http_max_requests_per_connection: Option<String>,

    /// Largest body of a batch publish (POST /publish); larger gets 413. [default: 4MiB] [env: RINGCAST_MAX_PUBLISH_BATCH_BYTES] [toml: max_publish_batch_bytes]
    #[arg(long, value_name = "SIZE")]
    max_publish_batch_bytes: Option<String>,

    /// Most items in one batch publish; more gets 413. [default: 10000] [env: RINGCAST_MAX_PUBLISH_BATCH_ITEMS] [toml: max_publish_batch_items]
    #[arg(long, value_name = "N")]
    max_publish_batch_items: Option<String>,
    /// HMAC secret for HS256/384/512 connection tokens; prefer --jwt-hmac-secret-file (a flag shows in `ps`). Setting any JWT key turns access control on. [default: none] [env: RINGCAST_JWT_HMAC_SECRET] [toml: jwt_hmac_secret]
    #[arg(long, value_name = "SECRET")]
    jwt_hmac_secret: Option<String>,

    /// File holding the HMAC secret for HS* tokens (a trailing newline is ignored). [default: none] [env: RINGCAST_JWT_HMAC_SECRET_FILE] [toml: jwt_hmac_secret_file]
    #[arg(long, value_name = "PATH")]
    jwt_hmac_secret_file: Option<String>,

    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) for RS*/PS*/ES*/EdDSA tokens; repeat for more. [default: none] [env: RINGCAST_JWT_PUBLIC_KEY_FILE, comma-separated] [toml: jwt_public_key_file]
    #[arg(long, value_name = "PATH", action = ArgAction::Append)]
    jwt_public_key_file: Vec<String>,

    /// JWK Set file; a token's `kid` picks the key. [default: none] [env: RINGCAST_JWKS_FILE] [toml: jwks_file]
    #[arg(long, value_name = "PATH")]
    jwks_file: Option<String>,

    /// JWK Set URL, fetched off the shard threads, cached, refetched on an unknown kid at most once per 10 s. [default: none] [env: RINGCAST_JWKS_URL] [toml: jwks_url]
    #[arg(long, value_name = "URL")]
    jwks_url: Option<String>,

    /// Required `aud` claim of connection tokens. [default: not checked] [env: RINGCAST_JWT_AUDIENCE] [toml: jwt_audience]
    #[arg(long, value_name = "AUD")]
    jwt_audience: Option<String>,

    /// Required `iss` claim of connection tokens. [default: not checked] [env: RINGCAST_JWT_ISSUER] [toml: jwt_issuer]
    #[arg(long, value_name = "ISS")]
    jwt_issuer: Option<String>,

    /// Clock skew allowed on a token's exp and nbf, at most 5m. [default: 5s] [env: RINGCAST_JWT_LEEWAY] [toml: jwt_leeway]
    #[arg(long, value_name = "DURATION")]
    jwt_leeway: Option<String>,

    /// Longest connection token accepted, 256B..=64KiB; longer ones are refused before decoding. [default: 8KiB] [env: RINGCAST_MAX_TOKEN_SIZE] [toml: max_token_size]
    #[arg(long, value_name = "SIZE")]
    max_token_size: Option<String>,

    /// API key for the backend API (POST /publish, /api/*), sent as `Authorization: Bearer KEY` or `X-Api-Key: KEY`; repeat for more. [default: none: the backend API is open] [env: RINGCAST_API_KEY, comma-separated] [toml: api_key]
    #[arg(long, value_name = "KEY", action = ArgAction::Append)]
    api_key: Vec<String>,

    /// File of API keys, one per line (blank lines and lines starting with # ignored). [default: none] [env: RINGCAST_API_KEY_FILE] [toml: api_key_file]
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<String>,

    /// What connections without a token may do in the default namespace when a JWT key is set: none, subscribe, publish. [default: none] [env: RINGCAST_ANONYMOUS] [toml: anonymous]
    #[arg(long, value_name = "none|subscribe|publish")]
    anonymous: Option<String>,

    /// Whether clients may publish in the default namespace (false: only the backend API). [default: true] [env: RINGCAST_CLIENT_PUBLISH] [toml: client_publish]
    #[arg(long, value_name = "BOOL")]
    client_publish: Option<String>,

    /// Publishes per second one client connection may make (mux: rate_limited error; simple: dropped and counted); 0 = no limit. [default: 0] [env: RINGCAST_CLIENT_PUBLISH_RATE] [toml: client_publish_rate]
    #[arg(long, value_name = "N")]
    client_publish_rate: Option<String>,

    /// Publishes one connection may make at once before client-publish-rate applies. [default: 20] [env: RINGCAST_CLIENT_PUBLISH_BURST] [toml: client_publish_burst]
    #[arg(long, value_name = "N")]
    client_publish_burst: Option<String>,

    /// Publications kept per topic in the default namespace, for recovery, rewind and GET /history; 0 = no history. [default: 0] [env: RINGCAST_HISTORY_SIZE] [toml: history_size]
    #[arg(long, value_name = "N")]
    history_size: Option<String>,

    /// A topic's history (and epoch) is forgotten this long after its last publication (default namespace). [default: 5m] [env: RINGCAST_HISTORY_TTL] [toml: history_ttl]
    #[arg(long, value_name = "DURATION")]
    history_ttl: Option<String>,

    /// What all topic histories together may weigh; past it the oldest publications of the largest histories go first. [default: 256MiB] [env: RINGCAST_HISTORY_MEMORY_LIMIT] [toml: history_memory_limit]
    #[arg(long, value_name = "SIZE")]
    history_memory_limit: Option<String>,

    /// Most publications one recovery, rewind or GET /history returns. [default: 1000] [env: RINGCAST_MAX_RECOVERY_PUBLICATIONS] [toml: max_recovery_publications]
    #[arg(long, value_name = "N")]
    max_recovery_publications: Option<String>,

    /// Share topics with other nodes through this broker: redis://[user:password@]host:port[/db] or nats://[token@|user:password@]host:port. [default: none] [env: RINGCAST_BROKER] [toml: broker]
    #[arg(long, value_name = "URL")]
    broker: Option<String>,

    /// File holding the broker's password or token (overrides one in the URL). [default: none] [env: RINGCAST_BROKER_PASSWORD_FILE] [toml: broker_password_file]
    #[arg(long, value_name = "PATH")]
    broker_password_file: Option<String>,

    /// This node's id in logs, metrics and at the broker (A-Z a-z 0-9 - _ ., up to 64); two live nodes with one id are refused. [default: random] [env: RINGCAST_NODE_ID] [toml: node_id]
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,

    /// While the broker is lost, HTTP publish answers 503 and /ready 503. [default: false] [env: RINGCAST_BROKER_REQUIRED] [toml: broker_required]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    broker_required: Option<String>,

    /// Start even when the broker is unreachable (degraded, retrying). [default: false] [env: RINGCAST_BROKER_OPTIONAL] [toml: broker_optional]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    broker_optional: Option<String>,

    /// Bound of every broker operation and of stall detection. [default: 3s] [env: RINGCAST_BROKER_TIMEOUT] [toml: broker_timeout]
    #[arg(long, value_name = "DURATION")]
    broker_timeout: Option<String>,

    /// Publications (frame bytes) waiting for the bridge before more are dropped and counted. [default: 64MiB] [env: RINGCAST_BROKER_MAX_PENDING] [toml: broker_max_pending]
    #[arg(long, value_name = "SIZE")]
    broker_max_pending: Option<String>,

    /// Prefix of every channel, subject and key at the broker. [default: ringcast] [env: RINGCAST_BROKER_PREFIX] [toml: broker_prefix]
    #[arg(long, value_name = "PREFIX")]
    broker_prefix: Option<String>,
}

/// The full `--help` text (for tests and docs).
pub fn help_text() -> String {
    Cli::command().render_long_help().to_string()
}

// ---------------------------------------------------------------------------
// Raw values and their parsers (shared by every layer)
// ---------------------------------------------------------------------------

/// A value as one layer gave it, before parsing.
#[derive(Debug, Clone)]
enum Raw {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Str(s) => write!(f, "{s:?}"),
            Raw::Int(i) => write!(f, "{i}"),
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::List(v) => write!(f, "{v:?}"),
        }
    }
}

const SIZE_EXPECTED: &str = "expected a size such as 65536, 64KiB or 1MiB";
const COUNT_EXPECTED: &str = "expected a whole number such as 4096";
const DURATION_EXPECTED: &str = "expected a duration such as 500ms, 30s or 2m (0 disables)";
const BOOL_EXPECTED: &str = "expected true or false";
const LISTEN_EXPECTED: &str =
    "expected IP:port addresses such as 127.0.0.1:8080 or [::1]:8080 (host names are not resolved)";

/// Parse a size: bytes, optionally with a binary unit. See the module doc.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let digits: String = num.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || num.starts_with('_') {
        return Err(SIZE_EXPECTED.to_owned());
    }
    let unit = unit.trim_start();
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "k" | "kb" | "m" | "mb" | "g" | "gb" | "t" | "tb" | "tib" => {
            return Err(format!(
                "unit {unit:?} is not accepted: use KiB, MiB or GiB (powers of 1024) or a plain number of bytes"
            ));
        }
        _ => return Err(SIZE_EXPECTED.to_owned()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "is too large".to_owned())
}

/// Parse a duration with humantime syntax (`500ms`, `30s`, `2m`); `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    humantime::parse_duration(t).map_err(|_| DURATION_EXPECTED.to_owned())
}

fn parse_count_str(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() || t.starts_with('_') || !t.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(COUNT_EXPECTED.to_owned());
    }
    t.replace('_', "")
        .parse::<u64>()
        .map_err(|_| "is too large".to_owned())
}

fn raw_size(raw: &Raw) -> Result<u64, String> {
    match raw {
        Raw::Str(s) => parse_size(s),
        Raw::Int(i) => u64::try_from(*i).map_err(|_| format!("is negative; {SIZE_EXPECTED}")),
        _ => Err(SIZE_EXPECTED.to_owned()),
    }
}

fn raw_count(raw: &Raw) -> Result<u64, String> {
    match raw {
        Raw::Str(s) => parse_count_str(s),
        Raw::Int(i) => u64::try_from(*i).map_err(|_| format!("is negative; {COUNT_EXPECTED}")),
        _ => Err(COUNT_EXPECTED.to_owned()),
    }
}

fn raw_duration(raw: &Raw) -> Result<Duration, String> {
    match raw {
        Raw::Str(s) => parse_duration(s),
        Raw::Int(0) => Ok(Duration::ZERO),
        Raw::Int(_) => Err(format!(
            "a bare number has no unit; {DURATION_EXPECTED}, written as a string"
        )),
        _ => Err(DURATION_EXPECTED.to_owned()),
    }
}

fn raw_bool(raw: &Raw) -> Result<bool, String> {
    match raw {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(BOOL_EXPECTED.to_owned()),
        },
        _ => Err(BOOL_EXPECTED.to_owned()),
    }
}

fn raw_string(raw: &Raw) -> Result<String, String> {
    match raw {
        Raw::Str(s) => Ok(s.trim().to_owned()),
        _ => Err("expected a string".to_owned()),
    }
}

/// A secret: any non-empty string (its value never appears in an error).
fn raw_secret(raw: &Raw) -> Result<Secret, String> {
    match raw {
        Raw::Str(s) if !s.trim().is_empty() => Ok(Secret(s.trim().to_owned())),
        Raw::Str(_) => Err("must not be empty".to_owned()),
        _ => Err("expected a string".to_owned()),
    }
}

/// Secrets: a comma-separated string, or an array of strings.
fn raw_secrets(raw: &Raw) -> Result<Vec<Secret>, String> {
    let items = list_items(raw, "expected a string or an array of strings")?;
    let out: Vec<Secret> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| Secret(s.to_owned()))
        .collect();
    if out.is_empty() {
        return Err("needs at least one non-empty key".to_owned());
    }
    Ok(out)
}

/// A path to a file (existence is checked when the server reads it, at start-up).
fn raw_path(raw: &Raw) -> Result<PathBuf, String> {
    match raw {
        Raw::Str(s) if !s.trim().is_empty() => Ok(PathBuf::from(s.trim())),
        _ => Err("expected a file path".to_owned()),
    }
}

/// Paths: a comma-separated string, or an array of strings.
fn raw_paths(raw: &Raw) -> Result<Vec<PathBuf>, String> {
    let items = list_items(raw, "expected a file path or an array of them")?;
    let out: Vec<PathBuf> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    if out.is_empty() {
        return Err("expected a file path or an array of them".to_owned());
    }
    Ok(out)
}

/// An `http://` or `https://` URL.
fn raw_url(raw: &Raw) -> Result<String, String> {
    let s = raw_string(raw)?;
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && s.len() > "https://".len()
        && !s.contains(char::is_whitespace);
    if ok {
        Ok(s)
    } else {
        Err("expected an http:// or https:// URL".to_owned())
    }
}

/// The `broker` URL (see [`crate::cluster::BrokerUrl::parse`]).
fn raw_broker(raw: &Raw) -> Result<crate::cluster::BrokerUrl, String> {
    crate::cluster::BrokerUrl::parse(raw_string(raw)?.trim())
}

/// A node id: 1..=64 of `A-Z a-z 0-9 - _ .` (it goes into broker subjects and keys).
fn raw_node_id(raw: &Raw) -> Result<String, String> {
    let s = raw_string(raw)?;
    let ok = !s.is_empty()
        && s.len() <= crate::cluster::envelope::MAX_NODE_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(s)
    } else {
        Err("expected 1 to 64 of A-Z a-z 0-9 - _ .".to_owned())
    }
}

/// A broker prefix: 1..=32 of `A-Z a-z 0-9 - _` (one subject token, one key part).
fn raw_broker_prefix(raw: &Raw) -> Result<String, String> {
    let s = raw_string(raw)?;
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if ok {
        Ok(s)
    } else {
        Err("expected 1 to 32 of A-Z a-z 0-9 - _".to_owned())
    }
}

/// A non-empty string.
fn raw_nonempty(raw: &Raw) -> Result<String, String> {
    let s = raw_string(raw)?;
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s)
    }
}

fn raw_choice<T: Copy>(raw: &Raw, choices: &[(&str, T)]) -> Result<T, String> {
    let expected = || format!("expected one of: {}", choice_list(choices));
    let Raw::Str(s) = raw else {
        return Err(expected());
    };
    let s = s.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(expected)
}

const ORIGINS_EXPECTED: &str = "expected * or exact origins such as https://app.example.com or http://127.0.0.1:8080 (scheme://host[:port], no path), comma-separated";

/// Parses `allowed_origins`: `*`, or exact `scheme://host[:port]` origins (no path, no
/// trailing slash, as browsers send them in the `Origin` header), compared case-insensitively.
fn raw_origins(raw: &Raw) -> Result<Vec<String>, String> {
    let items = list_items(raw, ORIGINS_EXPECTED)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let item = item.trim();
        if item == "*" {
            out.push(item.to_owned());
            continue;
        }
        let ok = item.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#', ' ', '*'])
        });
        if !ok {
            return Err(format!("{item:?} is not an origin; {ORIGINS_EXPECTED}"));
        }
        out.push(item.to_ascii_lowercase());
    }
    if out.is_empty() {
        return Err(ORIGINS_EXPECTED.to_owned());
    }
    if out.len() > 1 && out.iter().any(|o| o == "*") {
        return Err("* allows every origin and cannot be combined with others".to_owned());
    }
    Ok(out)
}

/// The items of a list value: a comma-separated string, or an array of such strings.
fn list_items<'a>(raw: &'a Raw, expected: &str) -> Result<Vec<&'a str>, String> {
    match raw {
        Raw::Str(s) => Ok(s.split(',').collect()),
        Raw::List(v) => Ok(v.iter().flat_map(|s| s.split(',')).collect()),
        _ => Err(expected.to_owned()),
    }
}

/// One `IP:port` address.
fn raw_admin_listen(raw: &Raw) -> Result<SocketAddr, String> {
    match raw_listen(raw)?.as_slice() {
        [one] => Ok(*one),
        _ => Err(format!("expected one address; {LISTEN_EXPECTED}")),
    }
}

fn raw_listen(raw: &Raw) -> Result<Vec<SocketAddr>, String> {
    let items = list_items(raw, LISTEN_EXPECTED)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let item = item.trim();
        let addr: SocketAddr = item
            .parse()
            .map_err(|_| format!("{item:?} is not an address; {LISTEN_EXPECTED}"))?;
        out.push(addr);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

/// The values one layer sets, by key.
#[derive(Debug)]
struct Layer {
    source: Source,
    values: BTreeMap<&'static str, Raw>,
    /// `[namespaces.NAME]` tables (the file layer only).
    namespaces: Vec<NamespaceConfig>,
}

impl Layer {
    /// A layer that sets nothing (no config file).
    fn empty(source: Source) -> Self {
        Layer {
            source,
            values: BTreeMap::new(),
            namespaces: Vec::new(),
        }
    }
}

fn flag_layer(cli: &Cli) -> Layer {
    let mut values = BTreeMap::new();
    let strings: [(&'static str, &Option<String>); 57] = [
        ("shards", &cli.shards),
        ("io", &cli.io),
        ("ring_entries", &cli.ring_entries),
        ("recv_buffer_size", &cli.recv_buffer_size),
        ("recv_buffers", &cli.recv_buffers),
        ("max_connections", &cli.max_connections),
        ("max_message_size", &cli.max_message_size),
        ("max_frame_size", &cli.max_frame_size),
        ("max_header_bytes", &cli.max_header_bytes),
        ("send_queue_limit", &cli.send_queue_limit),
        ("slow_consumer", &cli.slow_consumer),
        ("ping_interval", &cli.ping_interval),
        ("idle_timeout", &cli.idle_timeout),
        ("handshake_timeout", &cli.handshake_timeout),
        ("write_delay", &cli.write_delay),
        ("log_level", &cli.log_level),
        ("log_format", &cli.log_format),
        ("drain_timeout", &cli.drain_timeout),
        ("drain_grace", &cli.drain_grace),
        ("admin_listen", &cli.admin_listen),
        ("allowed_origins", &cli.allowed_origins),
        ("max_connections_per_ip", &cli.max_connections_per_ip),
        ("connect_rate_per_ip", &cli.connect_rate_per_ip),
        ("connect_burst_per_ip", &cli.connect_burst_per_ip),
        ("max_topics_per_connection", &cli.max_topics_per_connection),
        ("mux_error_budget", &cli.mux_error_budget),
        ("max_batch_bytes", &cli.max_batch_bytes),
        ("max_inbox_bytes", &cli.max_inbox_bytes),
        ("http_idle_timeout", &cli.http_idle_timeout),
        (
            "http_max_requests_per_connection",
            &cli.http_max_requests_per_connection,
        ),
        ("max_publish_batch_bytes", &cli.max_publish_batch_bytes),
        ("max_publish_batch_items", &cli.max_publish_batch_items),
        ("jwt_hmac_secret", &cli.jwt_hmac_secret),
        ("jwt_hmac_secret_file", &cli.jwt_hmac_secret_file),
        ("jwks_file", &cli.jwks_file),
        ("jwks_url", &cli.jwks_url),
        ("jwt_audience", &cli.jwt_audience),
        ("jwt_issuer", &cli.jwt_issuer),
        ("jwt_leeway", &cli.jwt_leeway),
        ("max_token_size", &cli.max_token_size),
        ("api_key_file", &cli.api_key_file),
        ("anonymous", &cli.anonymous),
        ("client_publish", &cli.client_publish),
        ("client_publish_rate", &cli.client_publish_rate),
        ("client_publish_burst", &cli.client_publish_burst),
        ("history_size", &cli.history_size),
        ("history_ttl", &cli.history_ttl),
        ("history_memory_limit", &cli.history_memory_limit),
        ("max_recovery_publications", &cli.max_recovery_publications),
        ("broker", &cli.broker),
        ("broker_password_file", &cli.broker_password_file),
        ("node_id", &cli.node_id),
        ("broker_required", &cli.broker_required),
        ("broker_optional", &cli.broker_optional),
        ("broker_timeout", &cli.broker_timeout),
        ("broker_max_pending", &cli.broker_max_pending),
        ("broker_prefix", &cli.broker_prefix),
    ];
    for (key, v) in strings {
        if let Some(v) = v {
            values.insert(key, Raw::Str(v.clone()));
        }
    }
    for (key, list) in [
        ("listen", &cli.listen),
        ("jwt_public_key_file", &cli.jwt_public_key_file),
        ("api_key", &cli.api_key),
    ] {
        if !list.is_empty() {
            values.insert(key, Raw::List(list.clone()));
        }
    }
    if let Some(v) = &cli.pin_cores {
        values.insert("pin_cores", Raw::Str(v.clone()));
    } else if cli.no_pin_cores {
        values.insert("pin_cores", Raw::Bool(false));
    }
    Layer {
        source: Source::Flag,
        values,
        namespaces: Vec::new(),
    }
}

fn env_layer(env: &dyn Fn(&str) -> Option<String>) -> Layer {
    let mut values = BTreeMap::new();
    for key in KEYS {
        if let Some(v) = env(&env_name(key)).filter(|v| !v.trim().is_empty()) {
            values.insert(key, Raw::Str(v));
        }
    }
    Layer {
        source: Source::Env,
        values,
        namespaces: Vec::new(),
    }
}

/// The TOML file's shape. Values stay `toml::Value` so that the same parsers
/// as for flags and environment apply, with messages naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    listen: Option<toml::Value>,
    shards: Option<toml::Value>,
    io: Option<toml::Value>,
    ring_entries: Option<toml::Value>,
    recv_buffer_size: Option<toml::Value>,
    recv_buffers: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    max_message_size: Option<toml::Value>,
    max_frame_size: Option<toml::Value>,
    max_header_bytes: Option<toml::Value>,
    send_queue_limit: Option<toml::Value>,
    slow_consumer: Option<toml::Value>,
    ping_interval: Option<toml::Value>,
    idle_timeout: Option<toml::Value>,
    handshake_timeout: Option<toml::Value>,
    write_delay: Option<toml::Value>,
    pin_cores: Option<toml::Value>,
    log_level: Option<toml::Value>,
    log_format: Option<toml::Value>,
    drain_timeout: Option<toml::Value>,
    drain_grace: Option<toml::Value>,
    admin_listen: Option<toml::Value>,
    allowed_origins: Option<toml::Value>,
    max_connections_per_ip: Option<toml::Value>,
    connect_rate_per_ip: Option<toml::Value>,
    connect_burst_per_ip: Option<toml::Value>,
    max_topics_per_connection: Option<toml::Value>,
    mux_error_budget: Option<toml::Value>,
    max_batch_bytes: Option<toml::Value>,
    max_inbox_bytes: Option<toml::Value>,
    http_idle_timeout: Option<toml::Value>,
    http_max_requests_per_connection: Option<toml::Value>,
    max_publish_batch_bytes: Option<toml::Value>,
    max_publish_batch_items: Option<toml::Value>,
    jwt_hmac_secret: Option<toml::Value>,
    jwt_hmac_secret_file: Option<toml::Value>,
    jwt_public_key_file: Option<toml::Value>,
    jwks_file: Option<toml::Value>,
    jwks_url: Option<toml::Value>,
    jwt_audience: Option<toml::Value>,
    jwt_issuer: Option<toml::Value>,
    jwt_leeway: Option<toml::Value>,
    max_token_size: Option<toml::Value>,
    api_key: Option<toml::Value>,
    api_key_file: Option<toml::Value>,
    anonymous: Option<toml::Value>,
    client_publish: Option<toml::Value>,
    client_publish_rate: Option<toml::Value>,
    client_publish_burst: Option<toml::Value>,
    history_size: Option<toml::Value>,
    history_ttl: Option<toml::Value>,
    history_memory_limit: Option<toml::Value>,
    max_recovery_publications: Option<toml::Value>,
    broker: Option<toml::Value>,
    broker_password_file: Option<toml::Value>,
    node_id: Option<toml::Value>,
    broker_required: Option<toml::Value>,
    broker_optional: Option<toml::Value>,
    broker_timeout: Option<toml::Value>,
    broker_max_pending: Option<toml::Value>,
    broker_prefix: Option<toml::Value>,
    namespaces: Option<toml::Table>,
}

fn file_layer_from_str(text: &str, path: &Path) -> Result<Layer, ConfigError> {
    let source = Source::File(path.to_owned());
    let file: FileLayer = toml::from_str(text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let FileLayer {
        listen,
        shards,
        io,
        ring_entries,
        recv_buffer_size,
        recv_buffers,
        max_connections,
        max_message_size,
        max_frame_size,
        max_header_bytes,
        send_queue_limit,
        slow_consumer,
        ping_interval,
        idle_timeout,
        handshake_timeout,
        write_delay,
        pin_cores,
        log_level,
        log_format,
        drain_timeout,
        drain_grace,
        admin_listen,
        allowed_origins,
        max_connections_per_ip,
        connect_rate_per_ip,
        connect_burst_per_ip,
        max_topics_per_connection,
        mux_error_budget,
        max_batch_bytes,
        max_inbox_bytes,
        http_idle_timeout,
        http_max_requests_per_connection,
        max_publish_batch_bytes,
        max_publish_batch_items,
        jwt_hmac_secret,
        jwt_hmac_secret_file,
        jwt_public_key_file,
        jwks_file,
        jwks_url,
        jwt_audience,
        jwt_issuer,
        jwt_leeway,
        max_token_size,
        api_key,
        api_key_file,
        anonymous,
        client_publish,
        client_publish_rate,
        client_publish_burst,
        history_size,
        history_ttl,
        history_memory_limit,
        max_recovery_publications,
        broker,
        broker_password_file,
        node_id,
        broker_required,
        broker_optional,
        broker_timeout,
        broker_max_pending,
        broker_prefix,
        namespaces,
    } = file;
    let fields = [
        ("listen", listen),
        ("shards", shards),
        ("io", io),
        ("ring_entries", ring_entries),
        ("recv_buffer_size", recv_buffer_size),
        ("recv_buffers", recv_buffers),
        ("max_connections", max_connections),
        ("max_message_size", max_message_size),
        ("max_frame_size", max_frame_size),
        ("max_header_bytes", max_header_bytes),
        ("send_queue_limit", send_queue_limit),
        ("slow_consumer", slow_consumer),
        ("ping_interval", ping_interval),
        ("idle_timeout", idle_timeout),
        ("handshake_timeout", handshake_timeout),
        ("write_delay", write_delay),
        ("pin_cores", pin_cores),
        ("log_level", log_level),
        ("log_format", log_format),
        ("drain_timeout", drain_timeout),
        ("drain_grace", drain_grace),
        ("admin_listen", admin_listen),
        ("allowed_origins", allowed_origins),
        ("max_connections_per_ip", max_connections_per_ip),
        ("connect_rate_per_ip", connect_rate_per_ip),
        ("connect_burst_per_ip", connect_burst_per_ip),
        ("max_topics_per_connection", max_topics_per_connection),
        ("mux_error_budget", mux_error_budget),
        ("max_batch_bytes", max_batch_bytes),
        ("max_inbox_bytes", max_inbox_bytes),
        ("http_idle_timeout", http_idle_timeout),
        (
            "http_max_requests_per_connection",
            http_max_requests_per_connection,
        ),
        ("max_publish_batch_bytes", max_publish_batch_bytes),
        ("max_publish_batch_items", max_publish_batch_items),
        ("jwt_hmac_secret", jwt_hmac_secret),
        ("jwt_hmac_secret_file", jwt_hmac_secret_file),
        ("jwt_public_key_file", jwt_public_key_file),
        ("jwks_file", jwks_file),
        ("jwks_url", jwks_url),
        ("jwt_audience", jwt_audience),
        ("jwt_issuer", jwt_issuer),
        ("jwt_leeway", jwt_leeway),
        ("max_token_size", max_token_size),
        ("api_key", api_key),
        ("api_key_file", api_key_file),
        ("anonymous", anonymous),
        ("client_publish", client_publish),
        ("client_publish_rate", client_publish_rate),
        ("client_publish_burst", client_publish_burst),
        ("history_size", history_size),
        ("history_ttl", history_ttl),
        ("history_memory_limit", history_memory_limit),
        ("max_recovery_publications", max_recovery_publications),
        ("broker", broker),
        ("broker_password_file", broker_password_file),
        ("node_id", node_id),
        ("broker_required", broker_required),
        ("broker_optional", broker_optional),
        ("broker_timeout", broker_timeout),
        ("broker_max_pending", broker_max_pending),
        ("broker_prefix", broker_prefix),
    ];
    let mut values = BTreeMap::new();
    for (key, value) in fields {
        let Some(value) = value else { continue };
        let raw = match value {
            toml::Value::String(s) => Raw::Str(s),
            toml::Value::Integer(i) => Raw::Int(i),
            toml::Value::Boolean(b) => Raw::Bool(b),
            toml::Value::Array(items) => {
                let mut list = Vec::with_capacity(items.len());
                for item in &items {
                    match item {
                        toml::Value::String(s) => list.push(s.clone()),
                        _ => return Err(wrong_type(key, &toml::Value::Array(items), &source)),
                    }
                }
                Raw::List(list)
            }
            other => return Err(wrong_type(key, &other, &source)),
        };
        values.insert(key, raw);
    }
    let namespaces = match namespaces {
        Some(table) => parse_namespaces(table, path)?,
        None => Vec::new(),
    };
    Ok(Layer {
        source,
        values,
        namespaces,
    })
}

/// One `[namespaces.NAME]` table as the file writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceFile {
    anonymous: Option<String>,
    client_publish: Option<bool>,
    max_message_size: Option<toml::Value>,
    history_size: Option<toml::Value>,
    history_ttl: Option<toml::Value>,
}

/// A TOML scalar as a raw value (strings, integers; anything else is refused by the
/// parser it is given to).
fn toml_raw(v: &toml::Value) -> Raw {
    match v {
        toml::Value::String(s) => Raw::Str(s.clone()),
        toml::Value::Integer(i) => Raw::Int(*i),
        _ => Raw::Bool(false),
    }
}

/// The `[namespaces]` tables of the file, checked: names, option values.
fn parse_namespaces(table: toml::Table, path: &Path) -> Result<Vec<NamespaceConfig>, ConfigError> {
    let source = Source::File(path.to_owned());
    let invalid = |name: &str, value: String, problem: String| ConfigError::Invalid {
        key: "namespaces",
        value: format!("{name:?}: {value}"),
        source: source.clone(),
        problem,
    };
    let mut out = Vec::with_capacity(table.len());
    for (name, value) in table {
        crate::pubsub::namespace::valid_name(&name)
            .map_err(|p| invalid(&name, "[namespaces.".to_owned() + &name + "]", p))?;
        let shown = value.to_string();
        let file: NamespaceFile = value.try_into().map_err(|e: toml::de::Error| {
            invalid(
                &name,
                shown.clone(),
                format!(
                    "{}; a namespace takes anonymous = \"none\"|\"subscribe\"|\"publish\", client_publish = true|false, max_message_size = SIZE, history_size = N, history_ttl = DURATION",
                    e.message().trim_end()
                ),
            )
        })?;
        let anonymous = match &file.anonymous {
            None => None,
            Some(a) => Some(
                raw_choice(&Raw::Str(a.clone()), crate::pubsub::Anonymous::CHOICES)
                    .map_err(|p| invalid(&name, format!("anonymous = {a:?}"), p))?,
            ),
        };
        let max_message_size = match file.max_message_size {
            None => None,
            Some(v) => {
                let raw = match &v {
                    toml::Value::String(s) => Raw::Str(s.clone()),
                    toml::Value::Integer(i) => Raw::Int(*i),
                    _ => Raw::Bool(false),
                };
                let n = raw_size(&raw)
                    .map_err(|p| invalid(&name, format!("max_message_size = {v}"), p))?;
                Some(usize::try_from(n).unwrap_or(usize::MAX))
            }
        };
        let history_size = match &file.history_size {
            None => None,
            Some(v) => {
                let n = raw_count(&toml_raw(v))
                    .map_err(|p| invalid(&name, format!("history_size = {v}"), p))?;
                Some(u32::try_from(n).unwrap_or(u32::MAX))
            }
        };
        let history_ttl = match &file.history_ttl {
            None => None,
            Some(v) => Some(
                raw_duration(&toml_raw(v))
                    .map_err(|p| invalid(&name, format!("history_ttl = {v}"), p))?,
            ),
        };
        out.push(NamespaceConfig {
            name,
            anonymous,
            client_publish: file.client_publish.unwrap_or(true),
            max_message_size,
            history_size,
            history_ttl,
        });
    }
    Ok(out)
}

/// What a key's value should look like, for messages about wrong TOML types.
fn expected_for(key: &str) -> String {
    match key {
        "listen" | "admin_listen" => LISTEN_EXPECTED.to_owned(),
        "io" => format!("expected a string: {}", choice_list(IoBackend::CHOICES)),
        "slow_consumer" => format!(
            "expected a string: {}",
            choice_list(SlowConsumerPolicy::CHOICES)
        ),
        "log_format" => format!("expected a string: {}", choice_list(LogFormat::CHOICES)),
        "log_level" => "expected a string such as \"info\"".to_owned(),
        "pin_cores" | "client_publish" | "broker_required" | "broker_optional" => {
            BOOL_EXPECTED.to_owned()
        }
        "broker" | "node_id" | "broker_prefix" => "expected a string".to_owned(),
        "broker_password_file" => "expected a string naming a file".to_owned(),
        "anonymous" => format!(
            "expected a string: {}",
            choice_list(crate::pubsub::Anonymous::CHOICES)
        ),
        "jwt_hmac_secret" | "jwks_url" | "jwt_audience" | "jwt_issuer" => {
            "expected a string".to_owned()
        }
        "jwt_hmac_secret_file" | "jwks_file" | "api_key_file" => {
            "expected a string naming a file".to_owned()
        }
        "jwt_public_key_file" => "expected a file path or an array of them".to_owned(),
        "api_key" => "expected a string or an array of strings".to_owned(),
        "shards"
        | "ring_entries"
        | "recv_buffers"
        | "max_connections"
        | "max_connections_per_ip"
        | "connect_rate_per_ip"
        | "connect_burst_per_ip"
        | "max_topics_per_connection"
        | "mux_error_budget"
        | "http_max_requests_per_connection"
        | "max_publish_batch_items"
        | "client_publish_rate"
        | "client_publish_burst"
        | "history_size"
        | "max_recovery_publications" => COUNT_EXPECTED.to_owned(),
        "ping_interval" | "idle_timeout" | "handshake_timeout" | "drain_timeout"
        | "drain_grace" | "write_delay" | "http_idle_timeout" | "jwt_leeway" | "history_ttl" => {
            DURATION_EXPECTED.to_owned()
        }
        "allowed_origins" => ORIGINS_EXPECTED.to_owned(),
        _ => SIZE_EXPECTED.to_owned(),
    }
}

fn choice_list<T>(choices: &[(&str, T)]) -> String {
    choices
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn wrong_type(key: &'static str, value: &toml::Value, source: &Source) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        source: source.clone(),
        problem: format!(
            "a TOML {} is not accepted here; {}",
            value.type_str(),
            expected_for(key)
        ),
    }
}

fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::ReadFile {
        path: path.to_owned(),
        error,
    })?;
    file_layer_from_str(&text, path)
}

// ---------------------------------------------------------------------------
// Merging
// ---------------------------------------------------------------------------

/// For each key: where its value came from and how it was written.
type Provenance = BTreeMap<&'static str, (Source, String)>;

/// Layers in order of precedence, highest first: flags, environment, file.
struct Merge<'a> {
    layers: [&'a Layer; 3],
    provenance: Provenance,
}

impl Merge<'_> {
    /// Parse `key` in every layer that sets it (strictly: a malformed value is
    /// an error even when overridden) and keep the highest layer's value.
    fn take<T>(
        &mut self,
        key: &'static str,
        parse: impl Fn(&Raw) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let mut winner: Option<T> = None;
        for layer in self.layers {
            let Some(raw) = layer.values.get(key) else {
                continue;
            };
            let source = layer.source.clone();
            // A secret's value is never shown, even when it is malformed.
            let shown = if SECRET_KEYS.contains(&key) {
                "<redacted>".to_owned()
            } else {
                raw.to_string()
            };
            match parse(raw) {
                Ok(v) => {
                    if winner.is_none() {
                        self.provenance.insert(key, (source, shown));
                        winner = Some(v);
                    }
                }
                Err(problem) => {
                    return Err(ConfigError::Invalid {
                        key,
                        value: shown,
                        source,
                        problem,
                    });
                }
            }
        }
        Ok(winner)
    }

    /// [`Merge::take`], narrowed to an integer type, or `default`.
    fn int<T: TryFrom<u64>>(
        &mut self,
        key: &'static str,
        parse: fn(&Raw) -> Result<u64, String>,
        default: T,
    ) -> Result<T, ConfigError> {
        let narrow = |raw: &Raw| {
            parse(raw).and_then(|v| T::try_from(v).map_err(|_| "is too large".to_owned()))
        };
        Ok(self.take(key, narrow)?.unwrap_or(default))
    }
}

fn merge(flags: &Layer, file: &Layer, env: &Layer) -> Result<(Config, Provenance), ConfigError> {
    let d = Config::default();
    let mut m = Merge {
        layers: [flags, env, file],
        provenance: Provenance::new(),
    };
    let max_message_size = m.int("max_message_size", raw_size, d.max_message_size)?;
    let cfg = Config {
        listen: m.take("listen", raw_listen)?.unwrap_or(d.listen),
        shards: m.int("shards", raw_count, d.shards)?,
        io: m
            .take("io", |r| raw_choice(r, IoBackend::CHOICES))?
            .unwrap_or(d.io),
        ring_entries: m.int("ring_entries", raw_count, d.ring_entries)?,
        recv_buffer_size: m.int("recv_buffer_size", raw_size, d.recv_buffer_size)?,
        recv_buffers: m.int("recv_buffers", raw_count, d.recv_buffers)?,
        max_connections: m.int("max_connections", raw_count, d.max_connections)?,
        max_message_size,
        // Default: follows max_message_size, wherever that came from.
        max_frame_size: m.int("max_frame_size", raw_size, max_message_size)?,
        max_header_bytes: m.int("max_header_bytes", raw_size, d.max_header_bytes)?,
        // Default: 1 MiB, or max_message_size if that is larger.
        send_queue_limit: m.int(
            "send_queue_limit",
            raw_size,
            d.send_queue_limit.max(max_message_size),
        )?,
        slow_consumer: m
            .take("slow_consumer", |r| {
                raw_choice(r, SlowConsumerPolicy::CHOICES)
            })?
            .unwrap_or(d.slow_consumer),
        ping_interval: m
            .take("ping_interval", raw_duration)?
            .unwrap_or(d.ping_interval),
        idle_timeout: m
            .take("idle_timeout", raw_duration)?
            .unwrap_or(d.idle_timeout),
        handshake_timeout: m
            .take("handshake_timeout", raw_duration)?
            .unwrap_or(d.handshake_timeout),
        write_delay: m
            .take("write_delay", raw_duration)?
            .unwrap_or(d.write_delay),
        pin_cores: m.take("pin_cores", raw_bool)?.unwrap_or(d.pin_cores),
        log_level: m.take("log_level", raw_string)?.unwrap_or(d.log_level),
        log_format: m
            .take("log_format", |r| raw_choice(r, LogFormat::CHOICES))?
            .unwrap_or(d.log_format),
        drain_timeout: m
            .take("drain_timeout", raw_duration)?
            .unwrap_or(d.drain_timeout),
        drain_grace: m
            .take("drain_grace", raw_duration)?
            .unwrap_or(d.drain_grace),
        admin_listen: m.take("admin_listen", raw_admin_listen)?,
        allowed_origins: m
            .take("allowed_origins", raw_origins)?
            .unwrap_or(d.allowed_origins),
        max_connections_per_ip: m.int(
            "max_connections_per_ip",
            raw_count,
            d.max_connections_per_ip,
        )?,
        connect_rate_per_ip: m.int("connect_rate_per_ip", raw_count, d.connect_rate_per_ip)?,
        connect_burst_per_ip: m.int("connect_burst_per_ip", raw_count, d.connect_burst_per_ip)?,
        max_topics_per_connection: m.int(
            "max_topics_per_connection",
            raw_count,
            d.max_topics_per_connection,
        )?,
        mux_error_budget: m.int("mux_error_budget", raw_count, d.mux_error_budget)?,
        max_batch_bytes: m.int("max_batch_bytes", raw_size, d.max_batch_bytes)?,
        max_inbox_bytes: m.int("max_inbox_bytes", raw_size, d.max_inbox_bytes)?,
        http_idle_timeout: m
            .take("http_idle_timeout", raw_duration)?
            .unwrap_or(d.http_idle_timeout),
        http_max_requests_per_connection: m.int(
            "http_max_requests_per_connection",
            raw_count,
            d.http_max_requests_per_connection,
        )?,
        max_publish_batch_bytes: m.int(
            "max_publish_batch_bytes",
            raw_size,
            d.max_publish_batch_bytes,
        )?,
        max_publish_batch_items: m.int(
            "max_publish_batch_items",
            raw_count,
            d.max_publish_batch_items,
        )?,
        jwt_hmac_secret: m.take("jwt_hmac_secret", raw_secret)?,
        jwt_hmac_secret_file: m.take("jwt_hmac_secret_file", raw_path)?,
        jwt_public_key_file: m
            .take("jwt_public_key_file", raw_paths)?
            .unwrap_or_default(),
        jwks_file: m.take("jwks_file", raw_path)?,
        jwks_url: m.take("jwks_url", raw_url)?,
        jwt_audience: m.take("jwt_audience", raw_nonempty)?,
        jwt_issuer: m.take("jwt_issuer", raw_nonempty)?,
        jwt_leeway: m.take("jwt_leeway", raw_duration)?.unwrap_or(d.jwt_leeway),
        max_token_size: m.int("max_token_size", raw_size, d.max_token_size)?,
        api_key: m.take("api_key", raw_secrets)?.unwrap_or_default(),
        api_key_file: m.take("api_key_file", raw_path)?,
        anonymous: m.take("anonymous", |r| {
            raw_choice(r, crate::pubsub::Anonymous::CHOICES)
        })?,
        client_publish: m
            .take("client_publish", raw_bool)?
            .unwrap_or(d.client_publish),
        client_publish_rate: m.int("client_publish_rate", raw_count, d.client_publish_rate)?,
        client_publish_burst: m.int("client_publish_burst", raw_count, d.client_publish_burst)?,
        history_size: m.int("history_size", raw_count, d.history_size)?,
        history_ttl: m
            .take("history_ttl", raw_duration)?
            .unwrap_or(d.history_ttl),
        history_memory_limit: m.int("history_memory_limit", raw_size, d.history_memory_limit)?,
        max_recovery_publications: m.int(
            "max_recovery_publications",
            raw_count,
            d.max_recovery_publications,
        )?,
        broker: m.take("broker", raw_broker)?,
        broker_password_file: m.take("broker_password_file", raw_path)?,
        node_id: m.take("node_id", raw_node_id)?,
        broker_required: m
            .take("broker_required", raw_bool)?
            .unwrap_or(d.broker_required),
        broker_optional: m
            .take("broker_optional", raw_bool)?
            .unwrap_or(d.broker_optional),
        broker_timeout: m
            .take("broker_timeout", raw_duration)?
            .unwrap_or(d.broker_timeout),
        broker_max_pending: m.int("broker_max_pending", raw_size, d.broker_max_pending)?,
        broker_prefix: m
            .take("broker_prefix", raw_broker_prefix)?
            .unwrap_or(d.broker_prefix),
        namespaces: file.namespaces.clone(),
    };
    Ok((cfg, m.provenance))
}

/// Load the configuration from the process's arguments and environment.
///
/// Equivalent to `load_from(std::env::args_os(), &|k| std::env::var(k).ok())`.
pub fn load() -> Result<Config, ConfigError> {
    load_from(std::env::args_os(), &|k| std::env::var(k).ok())
}

/// Load the configuration from `args` (including the program name first, as
/// [`std::env::args_os`] yields it) and the environment lookup `env`, which is
/// asked for `RINGCAST_*` names only and never touches the process
/// environment itself.
pub fn load_from<I, T>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = parse_cli(args)?;
    let file_path = cli.config.clone().or_else(|| {
        env(CONFIG_FILE_ENV)
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from)
    });
    let file = match &file_path {
        Some(path) => file_layer(path)?,
        None => Layer::empty(Source::Default),
    };
    finish(&cli, &file, env)
}

fn parse_cli<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(ConfigError::Cli)?;
    Cli::from_arg_matches(&matches).map_err(ConfigError::Cli)
}

/// Merge the three layers and validate the result.
fn finish(
    cli: &Cli,
    file: &Layer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let (cfg, provenance) = merge(&flag_layer(cli), file, &env_layer(env))?;
    cfg.check(&provenance, Source::Default)?;
    if cli.print_config {
        return Err(ConfigError::Report(print::render(&cfg, &provenance)));
    }
    if cli.check_config {
        // Everything the server would read at start-up before binding: the key files
        // (and a JWKS URL's first fetch) and the namespace table.
        let auth = cfg.auth_settings().map_err(ConfigError::Setup)?;
        crate::auth::Verifier::new(&auth).map_err(|e| ConfigError::Setup(e.to_string()))?;
        cfg.namespace_table().map_err(ConfigError::Setup)?;
        return Err(ConfigError::Report(String::new()));
    }
    Ok(cfg)
}

/// Load from arguments, TOML text and environment, as if the text were the
/// file at `path` (tests and examples).
#[cfg(test)]
fn load_with_file_text<I, T>(
    args: I,
    path: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = parse_cli(args)?;
    finish(&cli, &file_layer_from_str(text, Path::new(path))?, env)
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Show a size the way a person would write it: `64KiB`, `1MiB`, `1000`.
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    bytes.to_string()
}

fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".to_owned()
    } else {
        humantime::format_duration(d).to_string()
    }
}

impl Config {
    /// Check ranges and cross-key rules on a `Config` built or changed in code
    /// (errors say "set in code"). [`load_from`] runs the same checks and
    /// names the flag, file or environment variable instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&Provenance::new(), Source::Code)
    }

    /// The checks; a key absent from `prov` is reported as coming from `fallback`.
    fn check(&self, prov: &Provenance, fallback: Source) -> Result<(), ConfigError> {
        let origin = |key: &'static str, shown: String| -> (Source, String) {
            prov.get(key).cloned().unwrap_or((fallback.clone(), shown))
        };
        let invalid = |key: &'static str, shown: String, problem: String| {
            let (source, value) = origin(key, shown);
            ConfigError::Invalid {
                key,
                value,
                source,
                problem,
            }
        };
        let conflict = |key: &'static str,
                        shown: String,
                        rule: &str,
                        other: &'static str,
                        other_shown: String| {
            let (source, value) = origin(key, shown);
            let (osource, ovalue) = origin(other, other_shown);
            ConfigError::Conflict {
                key,
                value,
                source,
                other,
                problem: format!("{rule} {other} = {ovalue} ({})", Origin(other, &osource)),
            }
        };
        let size_range = |key: &'static str, v: usize, lo: u64, hi: u64| {
            let v = v as u64;
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format_size(v),
                    format!(
                        "must be between {} and {}",
                        format_size(lo),
                        format_size(hi)
                    ),
                ))
            }
        };
        let pow2_range = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if v.is_power_of_two() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    v.to_string(),
                    format!("must be a power of two from {lo} to {hi}"),
                ))
            }
        };
        let timer = |key: &'static str, d: Duration, zero_ok: bool| {
            if d.is_zero() && zero_ok || (MIN_TIMER..=MAX_TIMER).contains(&d) {
                Ok(())
            } else {
                let also = if zero_ok { " (or 0 to disable)" } else { "" };
                Err(invalid(
                    key,
                    format_duration(d),
                    format!(
                        "must be between {} and {}{also}",
                        format_duration(MIN_TIMER),
                        format_duration(MAX_TIMER)
                    ),
                ))
            }
        };

        let shown_listen = || {
            format!(
                "{:?}",
                self.listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
            )
        };
        if self.listen.is_empty() {
            return Err(invalid(
                "listen",
                shown_listen(),
                "needs at least one address".to_owned(),
            ));
        }
        if let Some(admin) = self.admin_listen
            && admin.port() != 0
            && self.listen.contains(&admin)
        {
            return Err(invalid(
                "admin_listen",
                admin.to_string(),
                "must differ from every listen address".to_owned(),
            ));
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                return Err(invalid(
                    "listen",
                    shown_listen(),
                    format!("lists {a} twice"),
                ));
            }
        }
        if !(1..=MAX_SHARDS).contains(&(self.shards as u64)) {
            return Err(invalid(
                "shards",
                self.shards.to_string(),
                format!("must be between 1 and {MAX_SHARDS}"),
            ));
        }
        pow2_range("ring_entries", self.ring_entries.into(), 8, 32768)?;
        size_range("recv_buffer_size", self.recv_buffer_size, 512, MIB)?;
        pow2_range("recv_buffers", self.recv_buffers.into(), 1, 32768)?;
        if !(1..=1 << 24).contains(&self.max_connections) {
            return Err(invalid(
                "max_connections",
                self.max_connections.to_string(),
                format!("must be between 1 and {}", 1 << 24),
            ));
        }
        size_range(
            "max_message_size",
            self.max_message_size,
            CONTROL_FRAME_MAX,
            GIB,
        )?;
        size_range(
            "max_frame_size",
            self.max_frame_size,
            CONTROL_FRAME_MAX,
            GIB,
        )?;
        if self.max_frame_size > self.max_message_size {
            return Err(conflict(
                "max_frame_size",
                format_size(self.max_frame_size as u64),
                "must not exceed",
                "max_message_size",
                format_size(self.max_message_size as u64),
            ));
        }
        size_range("max_header_bytes", self.max_header_bytes, 256, MIB)?;
        size_range(
            "send_queue_limit",
            self.send_queue_limit,
            CONTROL_FRAME_MAX,
            GIB,
        )?;
        if self.send_queue_limit < self.max_message_size {
            return Err(conflict(
                "send_queue_limit",
                format_size(self.send_queue_limit as u64),
                "must hold at least one message of the largest size:",
                "max_message_size",
                format_size(self.max_message_size as u64),
            ));
        }
        timer("ping_interval", self.ping_interval, true)?;
        timer("idle_timeout", self.idle_timeout, true)?;
        timer("handshake_timeout", self.handshake_timeout, false)?;
        timer("drain_timeout", self.drain_timeout, false)?;
        if self.drain_grace > Duration::from_secs(600) {
            return Err(invalid(
                "drain_grace",
                format_duration(self.drain_grace),
                "must be at most 10m (or 0: drain at once)".to_owned(),
            ));
        }
        if !self.write_delay.is_zero()
            && !(MIN_WRITE_DELAY..=MAX_WRITE_DELAY).contains(&self.write_delay)
        {
            return Err(invalid(
                "write_delay",
                format_duration(self.write_delay),
                format!(
                    "must be 0 (off) or between {} and {}",
                    format_duration(MIN_WRITE_DELAY),
                    format_duration(MAX_WRITE_DELAY)
                ),
            ));
        }
        let count_range = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    v.to_string(),
                    format!("must be between {lo} and {hi}"),
                ))
            }
        };
        if self.allowed_origins.is_empty() {
            return Err(invalid(
                "allowed_origins",
                "[]".to_owned(),
                "needs * or at least one origin".to_owned(),
            ));
        }
        count_range(
            "max_connections_per_ip",
            self.max_connections_per_ip as u64,
            0,
            1 << 24,
        )?;
        count_range(
            "connect_rate_per_ip",
            self.connect_rate_per_ip.into(),
            0,
            1_000_000,
        )?;
        count_range(
            "connect_burst_per_ip",
            self.connect_burst_per_ip.into(),
            1,
            1_000_000,
        )?;
        count_range(
            "max_topics_per_connection",
            self.max_topics_per_connection as u64,
            1,
            65536,
        )?;
        count_range(
            "mux_error_budget",
            self.mux_error_budget.into(),
            0,
            1_000_000,
        )?;
        size_range("max_batch_bytes", self.max_batch_bytes, KIB, 64 * MIB)?;
        size_range("max_inbox_bytes", self.max_inbox_bytes, KIB, 4 * GIB)?;
        if self.max_inbox_bytes < self.max_batch_bytes {
            return Err(conflict(
                "max_inbox_bytes",
                format_size(self.max_inbox_bytes as u64),
                "must hold at least one batch:",
                "max_batch_bytes",
                format_size(self.max_batch_bytes as u64),
            ));
        }
        timer("http_idle_timeout", self.http_idle_timeout, true)?;
        size_range(
            "max_publish_batch_bytes",
            self.max_publish_batch_bytes,
            KIB,
            GIB,
        )?;
        count_range(
            "max_publish_batch_items",
            self.max_publish_batch_items as u64,
            1,
            1_000_000,
        )?;
        if !self.ping_interval.is_zero()
            && !self.idle_timeout.is_zero()
            && self.idle_timeout <= self.ping_interval
        {
            return Err(conflict(
                "idle_timeout",
                format_duration(self.idle_timeout),
                "must be longer than",
                "ping_interval",
                format_duration(self.ping_interval),
            ));
        }
        self.check_access(&invalid, &conflict)?;
        if self.log_level.trim().is_empty() {
            return Err(invalid(
                "log_level",
                String::new(),
                "must not be empty".to_owned(),
            ));
        }
        if let Some(bad) = self
            .log_level
            .split(',')
            .map(str::trim)
            .find(|d| !log_directive_ok(d))
        {
            return Err(invalid(
                "log_level",
                format!("{:?}", self.log_level),
                format!(
                    "{bad:?} is not a log level: use one of {}, or directives such as ringcast=debug,info (a bare word would silence everything but that target)",
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(invalid(
                "log_level",
                format!("{:?}", self.log_level),
                format!(
                    "is not a log filter ({e}); expected a level such as info, or directives such as ringcast=debug,info"
                ),
            ));
        }
        Ok(())
    }
}

/// The levels `log_level` takes, alone or after `target=`.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// One directive of `log_level`: a level, or `target=level` (the target may carry a span
/// filter, `target[span]=level`). A bare word is refused: tracing would read `verbose` as
/// "everything from the target named verbose", which silences every other line.
fn log_directive_ok(d: &str) -> bool {
    let level_ok = |l: &str| LOG_LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l.trim()));
    match d.rsplit_once('=') {
        Some((target, level)) => !target.trim().is_empty() && level_ok(level),
        None => level_ok(d),
    }
}

// ---------------------------------------------------------------------------
// Open-file limit
// ---------------------------------------------------------------------------

/// Raise this process's open-file soft limit (`RLIMIT_NOFILE`) to its hard
/// limit, and return `(soft, hard)` as they are afterwards.
///
/// If the hard limit is unlimited (not possible for `RLIMIT_NOFILE` on Linux,
/// whose hard limit is capped by `fs.nr_open`, but handled), the soft limit is
/// raised to [`nofile_needed`]`(max_connections)` instead, and `u64::MAX`
/// stands for "unlimited" in the result. The caller should warn when `hard`
/// is below [`nofile_needed`]`(max_connections)`.
pub fn raise_nofile_limit(max_connections: usize) -> Result<(u64, u64), std::io::Error> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    let soft = old.current.unwrap_or(u64::MAX);
    let hard = old.maximum.unwrap_or(u64::MAX);
    let target = match old.maximum {
        Some(h) => h,
        None => soft.max(nofile_needed(max_connections)),
    };
    if soft < target {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: old.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((now.current.unwrap_or(u64::MAX), now.maximum.unwrap_or(hard)))
}
