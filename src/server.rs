//! Start-up: choose the I/O backend, bind the listeners, start one shard per core.
//!
//! Every shard gets its own listening socket per `--listen` address, bound with
//! `SO_REUSEPORT`, so the kernel spreads incoming connections over the shards and no
//! accepted socket ever crosses a thread. With port 0 the first shard's bind picks the
//! port and the others bind the same one.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::bus::Bus;
use crate::config::{Config, IoBackend};
use crate::io::epoll::EpollDriver;
use crate::io::uring::{UringDriver, UringSettings};
use crate::io::{Driver, probe};
use crate::metrics::ShardMetrics;
use crate::shard::DrainShared;
use crate::shard::{Settings, Shard, Shared};

/// Which backend the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// epoll, through mio.
    Epoll,
}

impl Backend {
    /// The name printed in the start-up line and used as the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// `--io uring` was asked for and io_uring is unavailable.
    UringUnavailable(probe::Unavailable),
    /// Binding or listening failed.
    Bind(SocketAddr, std::io::Error),
    /// A shard failed to set up its driver.
    Shard(usize, std::io::Error),
    /// The access-control setup failed: a key file that cannot be read or parsed, a bad
    /// namespace (the message names the file or key, never a secret).
    Access(String),
    /// The broker (`--broker`) could not be used: unreachable without `--broker-optional`,
    /// a node id collision, a password file that cannot be read.
    Broker(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::UringUnavailable(why) => {
                write!(
                    f,
                    "--io uring was requested but io_uring is unavailable: {why}"
                )
            }
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Shard(i, e) => write!(f, "shard {i} failed to start: {e}"),
            StartError::Access(why) => write!(f, "access control: {why}"),
            StartError::Broker(why) => write!(f, "broker: {why}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Picks the backend: one decision, made once, for all shards.
pub fn choose_backend(io: IoBackend) -> Result<Backend, StartError> {
    match io {
        IoBackend::Epoll => Ok(Backend::Epoll),
        IoBackend::Uring => probe::probe()
            .map(|()| Backend::Uring)
            .map_err(StartError::UringUnavailable),
        IoBackend::Auto => match probe::probe() {
            Ok(()) => Ok(Backend::Uring),
            Err(why) => {
                tracing::warn!(reason = %why, "io_uring is unavailable; falling back to the epoll backend");
                Ok(Backend::Epoll)
            }
        },
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Nagle would hold back the small frames a broadcast server writes (the loop already
    // coalesces a turn's frames into one send). Set once here: Linux copies it to every
    // accepted socket, which saves a setsockopt per connection in a reconnect storm.
    s.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s)
}

/// Refuses an address another process listens on. The shards' own listeners share their
/// port with `SO_REUSEPORT`, which would just as well let a second ringcast (or anything
/// else of the same user that sets it) share it: two servers behind one address, clients
/// split between them. A probe bound *without* `SO_REUSEPORT` fails on a port anyone
/// listens on, so it is tried first (and closed) for every fixed port; port 0 picks a free
/// one anyway.
fn ensure_not_held(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let held = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            StartError::Bind(
                addr,
                std::io::Error::new(
                    e.kind(),
                    "the address is already in use by another process (is another ringcast running?)",
                ),
            )
        } else {
            StartError::Bind(addr, e)
        }
    };
    let probe = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(|e| StartError::Bind(addr, e))?;
    // Like the listeners (TIME_WAIT sockets of a previous run do not count), but without
    // SO_REUSEPORT.
    probe
        .set_reuse_address(true)
        .map_err(|e| StartError::Bind(addr, e))?;
    if addr.is_ipv6() {
        probe
            .set_only_v6(true)
            .map_err(|e| StartError::Bind(addr, e))?;
    }
    // A process that just exited may still hold the port for a moment: the kernel tears
    // an io_uring ring down asynchronously, closing its listeners when the ring's pending
    // requests are cancelled. A restart (systemd, a supervisor) must not fail on that, so
    // "in use" is believed only once it lasts.
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        match probe.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < HELD_PATIENCE =>
            {
                if !std::mem::replace(&mut told, true) {
                    tracing::info!(
                        %addr,
                        "the address is still in use; waiting up to 3 s for a previous process to release it"
                    );
                }
                std::thread::sleep(PROBE_PAUSE);
            }
            Err(e) => return Err(held(e)),
        }
    }
}

/// How long a held listening address is retried at start-up before it counts as taken.
const HELD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);
/// The pause between two tries.
const PROBE_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Binds `shards` listeners per address; returns them per shard, and the bound addresses.
pub fn bind(
    addrs: &[SocketAddr],
    shards: usize,
) -> Result<(Vec<Vec<OwnedFd>>, Vec<SocketAddr>), StartError> {
    let mut per_shard: Vec<Vec<OwnedFd>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        ensure_not_held(addr)?;
        let first = listener(addr).map_err(|e| StartError::Bind(addr, e))?;
        let actual = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| StartError::Bind(addr, std::io::Error::other("no local address")))?;
        bound.push(actual);
        per_shard[0].push(OwnedFd::from(first));
        for shard in per_shard.iter_mut().skip(1) {
            shard.push(OwnedFd::from(
                listener(actual).map_err(|e| StartError::Bind(actual, e))?,
            ));
        }
    }
    Ok((per_shard, bound))
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    /// The admin listener's address, when one is configured.
    pub admin: Option<SocketAddr>,
    /// The backend in use.
    pub backend: Backend,
    /// State every shard shares (stop flag, metrics).
    pub shared: Arc<Shared>,
    /// The verifier built at start-up, until [`Server::take_verifier`] (a JWKS URL's fetch
    /// thread stops with its last clone, so nothing should keep one it does not use).
    verifier: Option<crate::auth::Verifier>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Chooses the backend, binds, starts the shards and returns once all of them run.
    pub fn start(cfg: &Config) -> Result<Server, StartError> {
        let backend = choose_backend(cfg.io)?;
        // Keys and namespaces before binding: a bad key file fails the start-up at once.
        let auth = cfg.auth_settings().map_err(StartError::Access)?;
        let verifier =
            crate::auth::Verifier::new(&auth).map_err(|e| StartError::Access(e.to_string()))?;
        let namespaces = Arc::new(cfg.namespace_table().map_err(StartError::Access)?);
        let shards = cfg.shards.max(1);
        let (mut listeners, addrs) = bind(&cfg.listen, shards)?;
        // The admin listener: one more listener per shard (the shards share its port like
        // the public ones); a shard tells its connections apart by their local address.
        let admin = match cfg.admin_listen {
            Some(addr) => {
                let (admin_fds, bound) = bind(&[addr], shards)?;
                for (shard, fds) in listeners.iter_mut().zip(admin_fds) {
                    shard.extend(fds);
                }
                bound.first().copied()
            }
            None => None,
        };
        let metrics: Vec<Arc<ShardMetrics>> = (0..shards)
            .map(|_| Arc::new(ShardMetrics::default()))
            .collect();
        let gauges: Vec<_> = metrics.iter().map(|m| Arc::clone(&m.inbox)).collect();
        let cluster =
            crate::cluster::config::Setup::from_config(cfg).map_err(StartError::Broker)?;
        let shared = Arc::new(Shared {
            link: cluster.as_ref().map(|c| Arc::clone(&c.link)),
            bus: Bus::with_limit(shards, cfg.max_inbox_bytes, &gauges),
            metrics,
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            backend: backend.name(),
            drain: DrainShared::default(),
            peers: std::sync::Mutex::default(),
            reload: crate::shard::reload::ReloadShared::default(),
        });
        let settings = Settings {
            max_message_size: cfg.max_message_size,
            max_frame_size: cfg.max_frame_size,
            max_header_bytes: cfg.max_header_bytes,
            send_queue_limit: cfg.send_queue_limit,
            slow_consumer: cfg.slow_consumer,
            ping_interval: (!cfg.ping_interval.is_zero()).then_some(cfg.ping_interval),
            idle_timeout: (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout),
            handshake_timeout: cfg.handshake_timeout,
            max_connections: cfg.max_connections,
            write_delay: (!cfg.write_delay.is_zero()).then_some(cfg.write_delay),
            max_batch_bytes: cfg.max_batch_bytes,
            max_topics_per_connection: cfg.max_topics_per_connection,
            mux_error_budget: cfg.mux_error_budget,
            drain_timeout: cfg.drain_timeout,
            drain_grace: cfg.drain_grace,
            admin,
            admission: crate::shard::reload::admission_settings(cfg),
            http_idle_timeout: (!cfg.http_idle_timeout.is_zero()).then_some(cfg.http_idle_timeout),
            http_max_requests_per_connection: cfg.http_max_requests_per_connection,
            max_publish_batch_bytes: cfg.max_publish_batch_bytes,
            max_publish_batch_items: cfg.max_publish_batch_items,
            verifier: verifier.clone(),
            namespaces,
            client_publish_rate: cfg.client_publish_rate,
            client_publish_burst: cfg.client_publish_burst,
            history_memory_limit: cfg.history_memory_limit,
            max_recovery_publications: cfg.max_recovery_publications,
        };
        let uring = UringSettings {
            ring_entries: cfg.ring_entries,
            recv_buffers: u16::try_from(cfg.recv_buffers.min(32768)).unwrap_or(32768),
            recv_buffer_size: u32::try_from(cfg.recv_buffer_size).unwrap_or(u32::MAX),
        };
        let cores = if cfg.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        // Every shard must have published its wake target before any shard publishes.
        let barrier = Arc::new(Barrier::new(shards));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(shards);
        for (id, fds) in listeners.into_iter().enumerate() {
            let (shared, settings, barrier, ready) = (
                Arc::clone(&shared),
                settings.clone(),
                Arc::clone(&barrier),
                ready_tx.clone(),
            );
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let recv_buffer_size = cfg.recv_buffer_size;
            let spawned = std::thread::Builder::new()
                .name(format!("ringcast-shard-{id}"))
                .spawn(move || {
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core)
                    {
                        tracing::debug!(shard = id, "could not pin the shard to a core");
                    }
                    match backend {
                        Backend::Uring => match UringDriver::new(uring, fds) {
                            Ok(d) => run_shard(id, d, settings, shared, &barrier, &ready),
                            Err(e) => fail(id, e, &barrier, &ready),
                        },
                        Backend::Epoll => match EpollDriver::new(recv_buffer_size, fds) {
                            Ok(d) => run_shard(id, d, settings, shared, &barrier, &ready),
                            Err(e) => fail(id, e, &barrier, &ready),
                        },
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => return Err(StartError::Shard(id, e)),
            }
        }
        drop(ready_tx);
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err((id, e))) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(StartError::Shard(id, e));
                }
                Err(_) => {
                    return Err(StartError::Shard(
                        0,
                        std::io::Error::other("shard thread exited"),
                    ));
                }
            }
        }
        if let Some(c) = cluster {
            let node = Arc::clone(&c.link.node);
            match c.start(Arc::clone(&shared.bus)) {
                Ok(()) => {}
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    for i in 0..shards {
                        if let Some(t) = shared.bus.target(i) {
                            t.wake_from_any_thread();
                        }
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(StartError::Broker(format!("node {node}: {e}")));
                }
            }
        }
        Ok(Server {
            addrs,
            admin,
            backend,
            shared,
            verifier: Some(verifier),
            threads,
        })
    }

    /// The verifier the shards started with, for whoever replaces it later (the reload);
    /// `None` once taken.
    pub fn take_verifier(&mut self) -> Option<crate::auth::Verifier> {
        self.verifier.take()
    }

    /// Hands reloaded settings to the shards (each takes them at its next tick).
    pub fn reload(&self, r: crate::shard::reload::Reloadable) {
        self.shared.reload.publish(r);
    }

    /// Asks every shard to stop and waits for them.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.join();
    }

    /// Starts a graceful shutdown: every shard closes its clients with 1001, flushes, and
    /// returns from its loop (see `shard::drain`). Returns at once; see [`Server::finished`].
    pub fn drain(&self) {
        self.shared.drain.draining.store(true, Ordering::Relaxed);
    }

    /// Whether every shard thread has returned.
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Whether any shard thread has returned (before a drain: it failed).
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }

    /// Waits for the shards to exit.
    pub fn join(self) {
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "shard failed"),
                Err(_) => tracing::error!("shard panicked"),
            }
        }
    }
}

type Ready = mpsc::Sender<Result<(), (usize, std::io::Error)>>;

fn run_shard<D: Driver>(
    id: usize,
    driver: D,
    settings: Settings,
    shared: Arc<Shared>,
    barrier: &Barrier,
    ready: &Ready,
) -> std::io::Result<()> {
    let shard = Shard::new(id, driver, settings, shared);
    barrier.wait();
    let _ = ready.send(Ok(()));
    let result = shard.run();
    if let Err(e) = &result {
        tracing::error!(shard = id, error = %e, "shard event loop failed");
    }
    result
}

fn fail(id: usize, e: std::io::Error, barrier: &Barrier, ready: &Ready) -> std::io::Result<()> {
    tracing::error!(shard = id, error = %e, "shard set-up failed");
    let _ = ready.send(Err((id, std::io::Error::new(e.kind(), e.to_string()))));
    barrier.wait();
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection TCP_NODELAY call was dropped because accepted sockets inherit the
    /// listener's: if a kernel stopped doing that, this fails.
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let l =
            listener("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!())).expect("listener");
        let addr = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("bound address");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = l.accept().expect("accept");
        assert!(
            accepted.tcp_nodelay().expect("getsockopt"),
            "TCP_NODELAY inherited"
        );
    }
}
