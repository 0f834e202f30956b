//! Counters and gauges, one set per shard, summed when scraped.
//!
//! Each shard is the only writer of its own [`ShardMetrics`], so an update is a relaxed
//! load and store on a cache line no other core writes (no locked instruction); readers
//! (the `/metrics` endpoint, on any shard) sum relaxed loads. Counters are bumped per
//! publish or per event, never per subscriber.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod access;
pub mod cluster;
pub mod histogram;
pub mod history;
pub mod process;

/// A counter written by one thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Single writer: a plain load and store, no read-modify-write.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Sets a gauge.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Reads the value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Close codes counted individually in `ringcast_protocol_errors_total`.
pub const CLOSE_CODES: [u16; 7] = [1002, 1003, 1007, 1008, 1009, 1010, 1011];
/// HTTP statuses counted individually in `ringcast_handshake_failures_total`.
pub const HTTP_STATUSES: [u16; 12] = [400, 403, 404, 405, 411, 413, 426, 429, 431, 503, 415, 401];

/// Why a request was refused by admission (`ringcast_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// An upgrade past `--max-connections` (503).
    MaxConnections,
    /// An upgrade from an `Origin` not in `--allowed-origins` (403).
    Origin,
    /// A connection past `--max-connections-per-ip` (429).
    IpConnections,
    /// A connection past `--connect-rate-per-ip` (429).
    IpRate,
    /// An upgrade or publish while draining (503).
    Draining,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; 5] = [
        RefusalReason::MaxConnections,
        RefusalReason::Origin,
        RefusalReason::IpConnections,
        RefusalReason::IpRate,
        RefusalReason::Draining,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalReason::MaxConnections => "max_connections",
            RefusalReason::Origin => "origin",
            RefusalReason::IpConnections => "ip_connections",
            RefusalReason::IpRate => "ip_rate",
            RefusalReason::Draining => "draining",
        }
    }
}

/// Everything one shard counts.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Open connections (gauge).
    pub connections: Counter,
    /// Connections accepted since start.
    pub accepted: Counter,
    /// WebSocket handshakes completed.
    pub upgrades: Counter,
    /// Subscriptions (gauge).
    pub subscriptions: Counter,
    /// Topics with a subscriber on this shard (gauge).
    pub topics: Counter,
    /// Messages received from clients and published.
    pub messages_in: Counter,
    /// Payload bytes received in published messages.
    pub bytes_in: Counter,
    /// Frames queued to subscribers (one per subscriber per message).
    pub messages_out: Counter,
    /// Bytes written to sockets.
    pub bytes_out: Counter,
    /// Messages dropped for a slow subscriber (policy `drop`).
    pub dropped: Counter,
    /// Subscribers disconnected for being slow (policy `disconnect`).
    pub slow_disconnects: Counter,
    /// Connections closed for a protocol violation, by close code (index in [`CLOSE_CODES`]).
    pub protocol_errors: [Counter; CLOSE_CODES.len()],
    /// Requests refused before or at the handshake, by status (index in [`HTTP_STATUSES`]).
    pub handshake_failures: [Counter; HTTP_STATUSES.len()],
    /// Connections closed by the handshake timeout.
    pub handshake_timeouts: Counter,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: Counter,
    /// WebSocket connections whose stream ended without a close handshake (or mid-frame):
    /// 1006, the client's doing, not a protocol violation.
    pub abnormal_closures: Counter,
    /// accept(2) failures.
    pub accept_errors: Counter,
    /// accept(2) failures for lack of descriptors or memory, after which accepting paused.
    pub accept_backoffs: Counter,
    /// Times reading from a connection paused because its send queue was backlogged.
    pub recv_pauses: Counter,
    /// Receive completions naming an impossible buffer (each closed its connection).
    pub recv_bad_buffer: Counter,
    /// Event-loop turns.
    pub loop_turns: Counter,
    /// Kernel entries (io_uring_enter or epoll_wait).
    pub submissions: Counter,
    /// Batches received from other shards (or non-shard threads) through the bus.
    pub bus_in: Counter,
    /// Messages queued to local subscribers that came over the bus (one per subscriber per
    /// message): the cross-shard share of `messages_out`.
    pub bus_delivered: Counter,
    /// Batches received for a topic without a local subscriber, dropped (its last one left
    /// while the batch was on its way, or a non-shard publisher sent it to every shard).
    pub bus_stale: Counter,
    /// Interest announcements sent (a topic's first subscriber arrived on this shard, or
    /// its last one left).
    pub announcements: Counter,
    /// Published messages that no shard subscribes to, taken nowhere.
    pub unrouted: Counter,
    /// Receive buffers lent out (gauge; zero between events).
    pub buffers_in_use: Counter,
    /// Mux-mode connections opened.
    pub mux_connections: Counter,
    /// Mux-mode messages received, by kind (index in [`crate::pubsub::mux::COMMANDS`]).
    pub mux_commands: [Counter; crate::pubsub::mux::COMMANDS.len()],
    /// Mux-mode error replies, by code (index in [`crate::pubsub::mux::ErrorCode::ALL`]).
    pub mux_errors: [Counter; crate::pubsub::mux::ErrorCode::ALL.len()],
    /// Messages published with `POST /publish/{topic}`.
    pub http_publishes: Counter,
    /// Requests refused by admission, by reason (index in [`RefusalReason::ALL`]).
    pub refused: [Counter; RefusalReason::ALL.len()],
    /// 1 while this shard drains (gauge).
    pub draining: Counter,
    /// Messages of batches not queued to another shard because its inbox was full.
    pub bus_dropped: Counter,
    /// What this shard's bus inbox holds now (written by the bus).
    pub inbox: std::sync::Arc<crate::bus::InboxGauges>,
    /// Plain HTTP request heads read (upgrade requests included).
    pub http_requests: Counter,
    /// Requests that were not the first on their connection (keep-alive reuse).
    pub http_keepalive_reuses: Counter,
    /// Keep-alive connections closed by `--http-idle-timeout`.
    pub http_idle_timeouts: Counter,
    /// Messages published by batch publishes (`POST /publish`).
    pub http_batch_items: Counter,
    /// Batch items refused, by code (index in [`crate::http::batch::ItemError::CODES`]).
    pub http_batch_refused: [Counter; crate::http::batch::ItemError::CODES.len()],
    /// Access control: tokens, rights, API keys.
    pub access: access::AccessMetrics,
    /// History and recovery.
    pub history: history::HistoryMetrics,
    /// Time to queue one batch to this shard's subscribers, ns (sampled).
    pub fanout_ns: histogram::Histogram,
    /// Bytes handed to the kernel by one connection's send (its queue at flush; sampled).
    pub send_queue_bytes: histogram::Histogram,
    /// From accept to the 101 of a WebSocket handshake, ns (sampled).
    pub handshake_ns: histogram::Histogram,
}

impl ShardMetrics {
    /// Counts a connection closed with a protocol error code.
    pub fn protocol_error(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len() - 1);
        self.protocol_errors[i].inc();
    }

    /// Counts a mux-mode message of kind `name` (one of [`crate::pubsub::mux::COMMANDS`]).
    pub fn mux_command(&self, name: &str) {
        if let Some(i) = crate::pubsub::mux::COMMANDS.iter().position(|&c| c == name) {
            self.mux_commands[i].inc();
        }
    }

    /// Counts a mux-mode error reply.
    pub fn mux_error(&self, code: crate::pubsub::mux::ErrorCode) {
        self.mux_errors[code.index()].inc();
    }

    /// Counts a request refused by admission.
    pub fn refused(&self, reason: RefusalReason) {
        self.refused[reason as usize].inc();
    }

    /// Counts a refused request.
    pub fn handshake_failure(&self, status: u16) {
        if let Some(i) = HTTP_STATUSES.iter().position(|&s| s == status) {
            self.handshake_failures[i].inc();
        }
    }
}

type Getter = fn(&ShardMetrics) -> u64;
/// A counter family: name, help, label name, label values, getter by label index.
type Labelled = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    fn(&ShardMetrics, usize) -> u64,
);

const MUX_ERROR_LABELS: [&str; crate::pubsub::mux::ErrorCode::ALL.len()] = {
    let mut out = [""; crate::pubsub::mux::ErrorCode::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = crate::pubsub::mux::ErrorCode::ALL[i].as_str();
        i += 1;
    }
    out
};

const REFUSAL_LABELS: [&str; RefusalReason::ALL.len()] = {
    let mut out = [""; RefusalReason::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = RefusalReason::ALL[i].as_str();
        i += 1;
    }
    out
};

/// Renders all shards' metrics in the Prometheus text exposition format.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>], backend: &str) -> String {
    let mut out = String::with_capacity(4096);
    let sum = |f: &dyn Fn(&ShardMetrics) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    let simple: [(&str, &str, &str, Getter); 31] = [
        ("ringcast_connections", "gauge", "Open connections.", |m| {
            m.connections.get()
        }),
        (
            "ringcast_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |m| m.accepted.get(),
        ),
        (
            "ringcast_upgrades_total",
            "counter",
            "WebSocket handshakes completed.",
            |m| m.upgrades.get(),
        ),
        (
            "ringcast_subscriptions",
            "gauge",
            "Topic subscriptions.",
            |m| m.subscriptions.get(),
        ),
        (
            "ringcast_topics",
            "gauge",
            "Topics with a subscriber, summed over shards.",
            |m| m.topics.get(),
        ),
        (
            "ringcast_messages_in_total",
            "counter",
            "Messages published.",
            |m| m.messages_in.get(),
        ),
        (
            "ringcast_bytes_in_total",
            "counter",
            "Payload bytes published.",
            |m| m.bytes_in.get(),
        ),
        (
            "ringcast_messages_out_total",
            "counter",
            "Frames queued to subscribers.",
            |m| m.messages_out.get(),
        ),
        (
            "ringcast_bytes_out_total",
            "counter",
            "Bytes written to sockets.",
            |m| m.bytes_out.get(),
        ),
        (
            "ringcast_dropped_messages_total",
            "counter",
            "Messages dropped for slow subscribers.",
            |m| m.dropped.get(),
        ),
        (
            "ringcast_slow_consumer_disconnects_total",
            "counter",
            "Subscribers disconnected for being slow.",
            |m| m.slow_disconnects.get(),
        ),
        (
            "ringcast_handshake_timeouts_total",
            "counter",
            "Connections closed by the handshake timeout.",
            |m| m.handshake_timeouts.get(),
        ),
        (
            "ringcast_idle_timeouts_total",
            "counter",
            "Connections closed by the idle timeout.",
            |m| m.idle_timeouts.get(),
        ),
        (
            "ringcast_abnormal_closures_total",
            "counter",
            "WebSocket connections whose stream ended without a close handshake (close code 1006: the client went away or the network cut it).",
            |m| m.abnormal_closures.get(),
        ),
        (
            "ringcast_accept_errors_total",
            "counter",
            "accept(2) failures.",
            |m| m.accept_errors.get(),
        ),
        (
            "ringcast_accept_backoffs_total",
            "counter",
            "accept(2) failures for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), after which accepting paused for 100 ms or until a descriptor was freed.",
            |m| m.accept_backoffs.get(),
        ),
        (
            "ringcast_recv_pauses_total",
            "counter",
            "Times reading from a connection paused because its send queue was backlogged (TCP backpressure to the client).",
            |m| m.recv_pauses.get(),
        ),
        (
            "ringcast_recv_bad_buffer_total",
            "counter",
            "Receive completions naming a buffer the kernel could not have filled; each closed its connection.",
            |m| m.recv_bad_buffer.get(),
        ),
        (
            "ringcast_bus_batches_in_total",
            "counter",
            "Batches (a topic's messages of one loop turn) received from other shards, or from threads that are not shards. A shard receives a batch only for a topic it has a subscriber of, or is the home of.",
            |m| m.bus_in.get(),
        ),
        (
            "ringcast_bus_delivered_messages_total",
            "counter",
            "Messages queued to local subscribers that came from another shard over the bus (one per subscriber per message; the cross-shard share of ringcast_messages_out_total).",
            |m| m.bus_delivered.get(),
        ),
        (
            "ringcast_bus_stale_batches_total",
            "counter",
            "Batches received for a topic without a local subscriber, dropped: its last one left while the batch was on its way, or a publisher outside the shards sent it to every shard.",
            |m| m.bus_stale.get(),
        ),
        (
            "ringcast_interest_announcements_total",
            "counter",
            "Interest announcements sent to the other shards (a topic's first subscriber arrived on this shard, or its last one left).",
            |m| m.announcements.get(),
        ),
        (
            "ringcast_unrouted_messages_total",
            "counter",
            "Published messages for a topic no shard subscribes to, taken nowhere.",
            |m| m.unrouted.get(),
        ),
        (
            "ringcast_bus_dropped_messages_total",
            "counter",
            "Messages not queued to another shard because its inbox was at --max-inbox-bytes.",
            |m| m.bus_dropped.get(),
        ),
        (
            "ringcast_receive_buffers_in_use",
            "gauge",
            "Receive buffers lent out.",
            |m| m.buffers_in_use.get(),
        ),
        (
            "ringcast_mux_connections_total",
            "counter",
            "Mux-mode (/ws) connections opened.",
            |m| m.mux_connections.get(),
        ),
        (
            "ringcast_http_publishes_total",
            "counter",
            "Messages published with POST /publish/{topic}.",
            |m| m.http_publishes.get(),
        ),
        (
            "ringcast_http_requests_total",
            "counter",
            "Plain HTTP request heads read, WebSocket upgrade requests included.",
            |m| m.http_requests.get(),
        ),
        (
            "ringcast_http_keepalive_reuses_total",
            "counter",
            "HTTP requests that were not the first on their connection (keep-alive reuse).",
            |m| m.http_keepalive_reuses.get(),
        ),
        (
            "ringcast_http_idle_timeouts_total",
            "counter",
            "Keep-alive HTTP connections closed by --http-idle-timeout.",
            |m| m.http_idle_timeouts.get(),
        ),
        (
            "ringcast_http_batch_items_total",
            "counter",
            "Messages published by batch publishes (POST /publish).",
            |m| m.http_batch_items.get(),
        ),
    ];
    for (name, kind, help, f) in simple {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            sum(&f)
        );
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_protocol_errors_total Connections closed for a protocol violation.\n# TYPE ringcast_protocol_errors_total counter"
    );
    for (i, code) in CLOSE_CODES.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringcast_protocol_errors_total{{code=\"{code}\"}} {}",
            sum(&|m| m.protocol_errors[i].get())
        );
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_handshake_failures_total Requests refused, by HTTP status.\n# TYPE ringcast_handshake_failures_total counter"
    );
    for (i, status) in HTTP_STATUSES.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringcast_handshake_failures_total{{status=\"{status}\"}} {}",
            sum(&|m| m.handshake_failures[i].get())
        );
    }
    let labelled: [Labelled; 4] = [
        (
            "ringcast_mux_commands_total",
            "Mux-mode messages received, by type.",
            "type",
            &crate::pubsub::mux::COMMANDS,
            |m, i| m.mux_commands[i].get(),
        ),
        (
            "ringcast_mux_errors_total",
            "Mux-mode error replies, by code.",
            "code",
            &MUX_ERROR_LABELS,
            |m, i| m.mux_errors[i].get(),
        ),
        (
            "ringcast_refused_total",
            "Requests refused by admission, by reason.",
            "reason",
            &REFUSAL_LABELS,
            |m, i| m.refused[i].get(),
        ),
        (
            "ringcast_http_batch_refused_items_total",
            "Batch publish items refused, by code.",
            "code",
            &crate::http::batch::ItemError::CODES,
            |m, i| m.http_batch_refused[i].get(),
        ),
    ];
    for (name, help, label, values, f) in labelled {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, v) in values.iter().enumerate() {
            let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {}", sum(&|m| f(m, i)));
        }
    }
    for (name, help, f) in [
        (
            "ringcast_loop_turns_total",
            "Event-loop turns per shard.",
            &(|m: &ShardMetrics| m.loop_turns.get()) as &dyn Fn(&ShardMetrics) -> u64,
        ),
        (
            "ringcast_ring_submissions_total",
            "Kernel entries per shard (io_uring_enter or epoll_wait).",
            &|m: &ShardMetrics| m.submissions.get(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\",io=\"{backend}\"}} {}", f(m));
        }
    }
    for (name, help, f) in [
        (
            "ringcast_inbox_messages",
            "Messages waiting in each shard's bus inbox.",
            &(|m: &ShardMetrics| m.inbox.messages.load(Ordering::Relaxed))
                as &dyn Fn(&ShardMetrics) -> u64,
        ),
        (
            "ringcast_inbox_bytes",
            "Frame bytes waiting in each shard's bus inbox (bounded by --max-inbox-bytes).",
            &|m: &ShardMetrics| m.inbox.bytes.load(Ordering::Relaxed) as u64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", f(m));
        }
    }
    // One server, one state: 1 while any shard drains (it counted shards before).
    let draining = shards.iter().any(|m| m.draining.get() > 0);
    let _ = writeln!(
        out,
        "# HELP ringcast_draining 1 while the server drains for a graceful shutdown (after SIGTERM/SIGINT), else 0.\n# TYPE ringcast_draining gauge\nringcast_draining {}",
        u8::from(draining)
    );
    access::render(&mut out, shards);
    history::render(&mut out, shards);
    histogram::render(
        &mut out,
        "ringcast_fanout_duration_seconds",
        "Time to queue one batch to a shard's local subscribers",
        shards,
        |m| &m.fanout_ns,
        1e9,
        10,
    );
    histogram::render(
        &mut out,
        "ringcast_send_queue_bytes",
        "Bytes one connection's send hands to the kernel (its send queue at flush)",
        shards,
        |m| &m.send_queue_bytes,
        1.0,
        6,
    );
    histogram::render(
        &mut out,
        "ringcast_handshake_duration_seconds",
        "From accept to the 101 of a WebSocket handshake",
        shards,
        |m| &m.handshake_ns,
        1e9,
        14,
    );
    process::render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_sums_and_labels() {
        let a = Arc::new(ShardMetrics::default());
        let b = Arc::new(ShardMetrics::default());
        a.messages_in.add(2);
        b.messages_in.add(3);
        a.protocol_error(1002);
        b.handshake_failure(404);
        b.loop_turns.add(7);
        let text = render(&[a, b], "epoll");
        assert!(text.contains("ringcast_messages_in_total 5\n"));
        assert!(text.contains("ringcast_protocol_errors_total{code=\"1002\"} 1\n"));
        assert!(text.contains("ringcast_handshake_failures_total{status=\"404\"} 1\n"));
        assert!(text.contains("ringcast_loop_turns_total{shard=\"1\",io=\"epoll\"} 7\n"));
    }
}
