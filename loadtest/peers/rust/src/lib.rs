//! Shared plumbing for the comparison peers of ringcast's benchmark suite.
//!
//! Each peer binary (`peer-fastwebsockets`, `peer-tungstenite`) is the
//! idiomatic minimal broadcast server for its library: every message a client
//! sends goes to every *other* connected client, text stays text. What they
//! share lives here and has nothing to do with WebSocket: the `PORT` variable,
//! the accept loop, the broadcast channel's capacity, the counters, and the
//! summary printed on SIGINT/SIGTERM.
//!
//! Why counters at all: tokio's `broadcast` channel is bounded and *drops*
//! the oldest messages for a receiver that falls more than `capacity` behind
//! (`RecvError::Lagged`). The load generator then sees gaps, but the peer
//! itself would say nothing; counting the lagged messages and printing them
//! on exit makes those silent drops visible in the benchmark record.
//!
//! Contract (loadtest/peers/README.md): `PORT=9001 peer-…` listens on `127.0.0.1:$PORT`
//! and upgrades any path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Counters of one peer process. Updated with `Relaxed` atomics: the runtime is
/// single-threaded, so they are uncontended; deliveries are added once per
/// written batch, not once per message, to keep them off the per-message path.
#[derive(Debug)]
pub struct Stats {
    /// WebSocket connections that completed the handshake.
    pub connections: AtomicU64,
    /// Connections that have ended (any reason).
    pub closed: AtomicU64,
    /// Data messages received from clients (each one is broadcast once).
    pub received: AtomicU64,
    /// Messages handed to a connection's writer (deliveries attempted).
    pub delivered: AtomicU64,
    /// Messages skipped by a receiver that fell behind the broadcast channel.
    pub lagged: AtomicU64,
    /// Number of `Lagged` events (how often a receiver fell behind).
    pub lag_events: AtomicU64,
    /// Failed accepts and handshakes.
    pub errors: AtomicU64,
}

/// The process-wide counters.
pub static STATS: Stats = Stats {
    connections: AtomicU64::new(0),
    closed: AtomicU64::new(0),
    received: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
    lagged: AtomicU64::new(0),
    lag_events: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

impl Stats {
    /// Records that a receiver skipped `n` messages, and says so once on stderr
    /// the first time it happens (not every time: that could be millions of lines).
    pub fn record_lag(&self, n: u64) {
        if self.lag_events.fetch_add(1, Relaxed) == 0 {
            eprintln!(
                "warning: a subscriber fell behind the broadcast channel and lost {n} messages \
                 (raise BROADCAST_CAPACITY to trade memory for fewer drops); totals on exit"
            );
        }
        self.lagged.fetch_add(n, Relaxed);
    }

    /// One line, `key=value` pairs, easy to grep out of a benchmark log.
    pub fn summary(&self, peer: &str) -> String {
        format!(
            "{peer} stats: connections={} closed={} received={} delivered={} \
             lagged_messages={} lag_events={} errors={}",
            self.connections.load(Relaxed),
            self.closed.load(Relaxed),
            self.received.load(Relaxed),
            self.delivered.load(Relaxed),
            self.lagged.load(Relaxed),
            self.lag_events.load(Relaxed),
            self.errors.load(Relaxed),
        )
    }
}

/// Slots of the broadcast channel, from `BROADCAST_CAPACITY` (default 4096).
///
/// A receiver more than this many messages behind loses the oldest ones
/// (counted as `lagged`). 4096 slots hold about 50 ms of traffic at 80 k
/// publishes/s, i.e. 80 M deliveries/s with 1,000 subscribers: far more than one
/// core can write, so at the rates the suite reaches, only a subscriber that
/// really stopped reading should lag.
fn broadcast_capacity() -> Result<usize, String> {
    match std::env::var("BROADCAST_CAPACITY") {
        Err(_) => Ok(4096),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "BROADCAST_CAPACITY={v:?}: expected a positive integer"
            )),
        },
    }
}

/// The capacity the channel was created with (read by [`Subscription`]'s `Drop`).
static CAPACITY: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Creates the one broadcast channel of the server, sized from `BROADCAST_CAPACITY`.
pub fn channel<T: Clone>() -> Result<(broadcast::Sender<T>, usize), String> {
    let capacity = broadcast_capacity()?;
    CAPACITY.store(capacity, Relaxed);
    let (tx, _) = broadcast::channel(capacity);
    Ok((tx, capacity))
}

/// A connection's receiver on the broadcast channel.
///
/// A subscriber that stops reading blocks its writer in `flush`, so it never
/// calls `recv` again and never sees `RecvError::Lagged`: the channel drops its
/// messages without anyone noticing. On drop (connection closed, writer
/// aborted) this counts how far behind the channel's window the receiver was,
/// so that those drops show up in the totals too.
#[derive(Debug)]
pub struct Subscription<T: Clone> {
    /// The receiver itself; the writer task reads from it.
    pub rx: broadcast::Receiver<T>,
}

impl<T: Clone> Subscription<T> {
    /// Wraps a receiver from [`channel`]'s sender.
    pub fn new(rx: broadcast::Receiver<T>) -> Self {
        Self { rx }
    }
}

impl<T: Clone> Drop for Subscription<T> {
    fn drop(&mut self) {
        // `len` counts every message sent since this receiver's position,
        // including those already overwritten; beyond `capacity` they are lost.
        let behind = self.rx.len();
        let capacity = CAPACITY.load(Relaxed);
        if behind > capacity {
            STATS.record_lag((behind - capacity) as u64);
        }
    }
}

/// The listen address: `127.0.0.1:$PORT` (default 9001). Loopback only.
pub fn listen_addr() -> Result<SocketAddr, String> {
    let port = match std::env::var("PORT") {
        Err(_) => 9001,
        Ok(v) => v
            .parse::<u16>()
            .map_err(|_| format!("PORT={v:?}: expected a port number"))?,
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Listen backlog: the same as ringcast's (`listen(4096)`, clamped by the kernel to
/// `net.core.somaxconn`). tokio's `TcpListener::bind` uses std's 128, which
/// overflows when the generator opens thousands of connections at 20 k/s: the
/// dropped SYNs come back only after the kernel's 1 s retransmit, and a connect
/// storm would measure that default instead of the server.
pub const BACKLOG: u32 = 4096;

/// Binds the listener with [`BACKLOG`] (and SO_REUSEADDR, as `bind` does).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts the next connection. Errors such as EMFILE (out of file
/// descriptors at 10,000+ connections) are counted, logged once a second at
/// most, and retried after a short pause instead of ending the server.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Broadcast frames are small and latency is measured: do not
                // let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                STATS.errors.fetch_add(1, Relaxed);
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    eprintln!("accept failed: {e} (retrying)");
                    last_log = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM (what scripts/bench sends to stop a server).
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// A fresh id per connection, so that a writer can skip its own client's messages.
pub fn next_conn_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// Most messages a writer takes from the channel before it flushes. Draining
/// what is already queued and writing it with one `flush` packs many frames
/// into one `send()`; the cap keeps one connection from monopolising the
/// single-threaded runtime.
pub const MAX_BATCH: usize = 256;
