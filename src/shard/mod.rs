//! The per-core event loop: one thread, one driver (io_uring or epoll), its own
//! connections and its own pub/sub state. Nothing here takes a lock on the message path.
//!
//! A loop turn, in order:
//! 1. [`Driver::wait`]: one kernel entry submits everything the last turn queued and waits
//!    for completions (or the next timer tick).
//! 2. Drain this shard's bus inbox ([`PubSub::drain_bus`]): batches other shards published,
//!    and their interest announcements.
//! 3. Handle every [`Event`]: accept, read requests, feed frames to the protocol core,
//!    subscribe and publish through [`PubSub`].
//! 4. Drain the inbox again, then fan out this turn's batches ([`PubSub::fan_out`]) unless
//!    a write delay holds them: an announcement pushed before a publish was read (another
//!    shard confirmed a subscription to its client, whose peer then published here) is
//!    known when that publish is routed.
//! 5. Timers, at most once per tick: handshake and idle timeouts, pings, close deadlines.
//! 6. Flush: register new sockets, one vectored send per connection with queued frames,
//!    releases, [`PubSub::end_turn`], and one wake-up per other shard that got messages.
//!
//! The state is split by job: [`table::ConnTable`] (the connections), [`PubSub`] (topics,
//! batches, fan-out, interest), [`Outbox`] (what the flush hands to the driver). The rest of
//! the loop lives beside this file: `mux.rs` (mux mode: commands applied through
//! [`PubSub`]), `http/` (the HTTP surface: keep-alive request loop, publish, batch publish,
//! health, metrics, demo), `admission.rs` (origins, connection and per-IP limits),
//! `drain.rs` (graceful shutdown) and `conn.rs` (one connection's state and send queue).

mod access;
pub mod admission;
mod api;
pub mod conn;
mod drain;
mod http;
mod mux;
pub mod reload;
pub mod session;
pub mod table;

#[cfg(test)]
mod harness;

pub use drain::DrainShared;
pub use mux::MuxConn;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::bus::Bus;
use crate::config::SlowConsumerPolicy;
use crate::http::{Endpoint, Routed};
use crate::io::{Driver, Event, Token};
use crate::metrics::ShardMetrics;
use crate::proto::conn::{Event as WsEvent, Limits, Role, State as WsState};
use crate::proto::frame::{OpCode, encode_frame};
use crate::proto::handshake::{self, HandshakeLimits};
use crate::proto::{Connection, close_code};
use crate::pubsub::{Format, PubSub, Target};
use conn::{Phase, Route};
use table::{ConnTable, Deliveries};

/// Length of a timer tick. Timeouts are checked once per tick, by one pass over the
/// connection table: O(1) per connection per tick, no timer syscalls.
const TICK: Duration = Duration::from_millis(100);
/// How long a closing connection may take to flush its close frame before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames per vectored send (IOV_MAX).
const MAX_FRAMES_PER_SEND: usize = 1024;
/// Allocation unit of the frame arena: many small broadcast frames share one allocation.
const ARENA_CHUNK: usize = 64 * 1024;

/// What a shard needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest accepted message (assembled), in bytes.
    pub max_message_size: usize,
    /// Largest accepted frame payload, in bytes.
    pub max_frame_size: usize,
    /// Largest HTTP request head, in bytes.
    pub max_header_bytes: usize,
    /// Per-connection send queue bound, in bytes.
    pub send_queue_limit: usize,
    /// What happens to a subscriber whose queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Server ping interval; `None` disables pings.
    pub ping_interval: Option<Duration>,
    /// Close connections silent for this long; `None` disables.
    pub idle_timeout: Option<Duration>,
    /// Drop connections whose handshake takes longer.
    pub handshake_timeout: Duration,
    /// Upgrades past this many open connections (whole server) get 503.
    pub max_connections: usize,
    /// Shortest time between two fan-outs of this shard's publishes (`None`: every loop
    /// turn). See [`ShardState::fan_out_due`].
    pub write_delay: Option<Duration>,
    /// Bound of one topic batch, in framed bytes (`--max-batch-bytes`).
    pub max_batch_bytes: usize,
    /// Topics per mux-mode connection (`--max-topics-per-connection`).
    pub max_topics_per_connection: usize,
    /// Refused mux messages per connection per 10 seconds (`mux::ERROR_WINDOW`).
    pub mux_error_budget: u32,
    /// Longest graceful shutdown.
    pub drain_timeout: Duration,
    /// How long to keep serving after the drain signal before closing clients
    /// (`--drain-grace`; `/ready` answers 503 and new upgrades are refused meanwhile).
    pub drain_grace: Duration,
    /// The admin listener's bound address (`--admin-listen`): connections accepted on it
    /// are admin connections (see `shard::http::admin_allows`).
    pub admin: Option<std::net::SocketAddr>,
    /// Origins, per-IP limits.
    pub admission: admission::AdmissionSettings,
    /// How long a keep-alive HTTP connection may wait for its next request, from its last
    /// answer (`--http-idle-timeout`); `None`: no keep-alive, every answer closes.
    pub http_idle_timeout: Option<Duration>,
    /// Requests one HTTP connection may make; the answer to the last closes it
    /// (`--http-max-requests-per-connection`, 0: no limit).
    pub http_max_requests_per_connection: u32,
    /// Largest `POST /publish` (batch) body (`--max-publish-batch-bytes`).
    pub max_publish_batch_bytes: usize,
    /// Most items in one batch publish (`--max-publish-batch-items`).
    pub max_publish_batch_items: usize,
    /// Connection tokens and API keys (shared by every shard; keys swap atomically).
    pub verifier: crate::auth::Verifier,
    /// The namespaces (topic options by name prefix).
    pub namespaces: Arc<crate::pubsub::Namespaces>,
    /// Publishes per second one connection may make; 0: no limit.
    pub client_publish_rate: u32,
    /// Publishes one connection may make at once before the rate applies.
    pub client_publish_burst: u32,
    /// What all histories together may weigh (`--history-memory-limit`; each shard takes
    /// its share: homes are hash-spread).
    pub history_memory_limit: usize,
    /// Most publications one recovery, rewind or history page returns
    /// (`--max-recovery-publications`).
    pub max_recovery_publications: usize,
}

/// State shared by all shards (read-mostly; nothing on the per-message path locks).
#[derive(Debug)]
pub struct Shared {
    /// Cross-shard inboxes.
    pub bus: Arc<Bus>,
    /// Every shard's metrics, for `/metrics`.
    pub metrics: Vec<Arc<ShardMetrics>>,
    /// Open connections in the whole server.
    pub connections: AtomicUsize,
    /// Set to ask every shard to stop.
    pub stop: AtomicBool,
    /// The backend in use, for metrics labels.
    pub backend: &'static str,
    /// The draining flag and the drained count.
    pub drain: DrainShared,
    /// Per-IP connection counts and connect token buckets (accept and release only).
    pub peers: Mutex<admission::PeerTable>,
    /// Settings a reload (SIGHUP) changed, taken by each shard once per tick.
    pub reload: reload::ReloadShared,
    /// The broker bridge, when this node is one of several (`--broker`).
    pub link: Option<Arc<crate::cluster::Link>>,
}

/// Ticks since the shard started, from a clock read once per loop turn.
fn ticks(d: Duration) -> u32 {
    (d.as_millis() / TICK.as_millis()).min(u128::from(u32::MAX)) as u32
}

fn ticks_ceil(d: Duration) -> u32 {
    ticks(d + TICK - Duration::from_nanos(1)).max(1)
}

/// The accepts being timed until their 101: one in
/// [`crate::metrics::histogram::SAMPLE_EVERY`], forgotten at their release.
#[derive(Debug, Default)]
struct HandshakeClock {
    sample: crate::metrics::histogram::Sampler,
    started: std::collections::HashMap<Token, Instant>,
}

/// What the flush hands to the driver, gathered during the turn.
#[derive(Debug, Default)]
struct Outbox {
    /// Slots with something to send (or to close after sending), each listed once.
    dirty: Vec<u32>,
    /// Accepted sockets to register with the driver.
    to_register: Vec<(Token, OwnedFd)>,
    /// Connections to release.
    to_release: Vec<Token>,
    /// Other shards to wake (their inbox got its first message since their last drain).
    wake: Vec<bool>,
    /// Receives to pause (`false`) or resume (`true`), applied after each event.
    recv_switch: Vec<(Token, bool)>,
    /// Emptied frame vectors of finished sends, for reuse.
    send_vecs: Vec<Vec<Bytes>>,
    /// Sends handed to the driver since the last timer tick.
    sends_since_tick: u64,
    /// Which sends are recorded in `ringcast_send_queue_bytes`.
    send_sample: crate::metrics::histogram::Sampler,
}

/// Log throttles for what clients (or their number) can trigger.
#[derive(Debug, Default)]
struct Logs {
    accept: crate::throttle::LogThrottle,
    violation: crate::throttle::LogThrottle,
    slow: crate::throttle::LogThrottle,
    drop: crate::throttle::LogThrottle,
    dropped_close: crate::throttle::LogThrottle,
    /// Tokens that did not verify.
    token: crate::throttle::LogThrottle,
    /// Simple-mode messages refused by the access rules.
    access: crate::throttle::LogThrottle,
}

/// Everything of a shard except its driver, so that events borrowed from the driver can be
/// handled with the rest mutably borrowed.
struct ShardState {
    id: usize,
    settings: Settings,
    shared: Arc<Shared>,
    metrics: Arc<ShardMetrics>,
    /// The connections of this shard.
    conns: ConnTable,
    /// Topics, batches, fan-out and interest: the one way to subscribe and publish.
    pubsub: PubSub,
    /// What the flush hands to the driver.
    outbox: Outbox,
    /// Output of the protocol core (pongs, closes), split off per connection.
    scratch: BytesMut,
    /// Where echoed frames and mux replies are built.
    arena: BytesMut,
    /// A tick with sends passed since the last idle trim.
    busy_since_trim: bool,
    /// When this shard last fanned out its publishes (for `write_delay`).
    last_fan_out: Option<Instant>,
    /// Ticks since the shard started, read once per turn.
    tick: u32,
    /// Unix time in seconds, read once per turn (token expiry is in unix time).
    unix_now: u64,
    handshake_limits: HandshakeLimits,
    ws_limits: Limits,
    /// Per-IP bookkeeping of each slot.
    admission: admission::AdmissionState,
    /// Graceful shutdown.
    drain: drain::DrainState,
    logs: Logs,
    /// This shard's connections by token `sub` (disconnects by user).
    users: api::UserIndex,
    /// The last reload generation copied into `settings`.
    reload_seen: u64,
    /// Backend API requests waiting for the other shards.
    api: api::ApiState,
    /// `GET /history` requests waiting for their topic's home shard.
    history: http::history::HistoryWaits,
    /// Sampled accepts, timed until their 101 (`ringcast_handshake_duration_seconds`).
    handshakes: HandshakeClock,
}

/// A shard: its driver and its state.
pub struct Shard<D: Driver> {
    driver: D,
    st: ShardState,
    /// The clock's origin: ticks count from here.
    started: Instant,
    /// Tick at which the timers run next.
    next_timer: u32,
}

impl<D: Driver> std::fmt::Debug for Shard<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.st.id)
            .field("io", &self.driver.name())
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Shard<D> {
    /// A shard around a driver whose listeners are already armed.
    pub fn new(id: usize, driver: D, settings: Settings, shared: Arc<Shared>) -> Self {
        let metrics = Arc::clone(&shared.metrics[id]);
        shared.bus.set_target(id, driver.wake_target());
        let n = shared.bus.shards();
        let table = (settings.max_connections / n.max(1) + 1).min(1 << 20);
        let ws_limits = Limits {
            max_frame_size: settings.max_frame_size as u64,
            max_message_size: settings.max_message_size,
        };
        let handshake_limits = HandshakeLimits {
            max_header_bytes: settings.max_header_bytes,
            ..HandshakeLimits::default()
        };
        let pubsub = PubSub::new(
            id,
            Arc::clone(&shared.bus),
            crate::pubsub::Limits {
                max_topics_per_connection: settings.max_topics_per_connection,
                max_batch_bytes: settings.max_batch_bytes,
                namespaces: Arc::clone(&settings.namespaces),
                policy: crate::pubsub::Policy {
                    tokens: settings.verifier.tokens_enabled(),
                },
                history_memory: settings.history_memory_limit / n.max(1),
                max_recovery: settings.max_recovery_publications,
                join_timeout_ticks: ticks_ceil(crate::pubsub::join::JOIN_TIMEOUT),
            },
            Arc::clone(&metrics),
        );
        let mut pubsub = pubsub;
        if let Some(link) = &shared.link {
            pubsub.set_link(Arc::clone(link));
        }
        Shard {
            driver,
            started: Instant::now(),
            next_timer: 0,
            st: ShardState {
                id,
                settings,
                shared,
                metrics,
                conns: ConnTable::with_capacity(table),
                pubsub,
                outbox: Outbox {
                    wake: vec![false; n],
                    ..Outbox::default()
                },
                scratch: BytesMut::with_capacity(256),
                arena: BytesMut::new(),
                busy_since_trim: false,
                last_fan_out: None,
                tick: 0,
                unix_now: 0,
                handshake_limits,
                ws_limits,
                admission: admission::AdmissionState::default(),
                drain: drain::DrainState::default(),
                logs: Logs::default(),
                users: api::UserIndex::default(),
                reload_seen: 0,
                api: api::ApiState::default(),
                history: http::history::HistoryWaits::default(),
                handshakes: HandshakeClock::default(),
            },
        }
    }

    /// Runs until [`Shared::stop`] is set. Returns an error only if the driver fails.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut timeout = TICK;
        while !self.st.shared.stop.load(Ordering::Relaxed) {
            self.driver.wait(timeout)?;
            match self.turn(Instant::now()) {
                Some(next) => timeout = next,
                None => break,
            }
        }
        Ok(())
    }

    /// One loop turn after the driver's wait, at `now` (the clock is read once per turn,
    /// by the caller: tests drive it). Returns how long the next wait may be, or `None` when
    /// the shard is done (drained).
    fn turn(&mut self, now: Instant) -> Option<Duration> {
        self.st.tick = ticks(now.duration_since(self.started));
        self.st.unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.st.pubsub.begin_turn(self.st.tick);
        self.st.metrics.loop_turns.inc();
        self.st.drain_bus();
        while let Some(ev) = self.driver.next_event() {
            self.st.on_event(ev);
            // At once, not at the flush: epoll would read the socket again this turn.
            for (token, on) in self.st.outbox.recv_switch.drain(..) {
                if on {
                    self.driver.resume_recv(token);
                } else {
                    self.driver.pause_recv(token);
                }
            }
        }
        // Again before routing this turn's batches: an interest announcement pushed
        // before a publish was read (a subscription confirmed to its client, whose
        // peer then published here) must be known when that publish is routed.
        self.st.drain_bus();
        let timeout = match self.st.fan_out_due(now) {
            None => {
                self.st.fan_out(false);
                TICK
            }
            Some(wait) => wait.min(TICK),
        };
        if self.st.tick >= self.next_timer {
            self.next_timer = self.st.tick + 1;
            self.st.timers();
            // Pools sized by a burst (10,000 handshake responses in one turn) are freed,
            // and the receive buffer ring's active set shrinks, once a whole tick passes
            // without a send; under load they stay warm.
            if std::mem::take(&mut self.st.outbox.sends_since_tick) == 0 {
                self.driver.trim();
                if std::mem::take(&mut self.st.busy_since_trim) {
                    // First idle tick after activity: also hand the allocator's free
                    // pages back, once (it walks the whole heap).
                    self.st.outbox.send_vecs = Vec::new();
                    crate::alloc::collect();
                }
            } else {
                self.st.busy_since_trim = true;
            }
        }
        if self.st.drain_turn() {
            return None;
        }
        self.st.flush(&mut self.driver);
        let stats = self.driver.stats();
        self.st.metrics.submissions.set(stats.submissions);
        self.st.metrics.recv_bad_buffer.set(stats.recv_bad_buffer);
        self.st
            .metrics
            .buffers_in_use
            .set(u64::from(stats.buffers_in_use));
        Some(timeout)
    }
}

impl ShardState {
    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Accepted(fd) => self.on_accept(fd),
            Event::AcceptError(e) => {
                self.metrics.accept_errors.inc();
                let backs_off = crate::io::accept_backs_off(&e);
                if backs_off {
                    self.metrics.accept_backoffs.inc();
                }
                if let Some(suppressed) = self.logs.accept.allow(self.tick) {
                    tracing::warn!(
                        shard = self.id,
                        error = %e,
                        suppressed,
                        backs_off,
                        "accept failed (similar lines suppressed for 10 s)"
                    );
                }
            }
            Event::Data { token, data } => self.on_data(token, data),
            Event::RecvClosed { token, error } => self.on_recv_closed(token, error),
            Event::Sent {
                token,
                result,
                frames,
            } => self.on_sent(token, result, frames),
            Event::Wake => {}
            Event::Released { token } => self.on_released(token),
        }
    }

    fn on_accept(&mut self, fd: OwnedFd) {
        // TCP_NODELAY comes from the listener (`server::listener`): Linux copies it to
        // accepted sockets, so there is no setsockopt per connection.
        let stream = std::net::TcpStream::from(fd);
        // An admin connection (accepted on --admin-listen) is outside the per-IP limits:
        // one getsockname per accept, only when an admin listener is configured.
        let admin = self
            .settings
            .admin
            .is_some_and(|a| stream.local_addr().is_ok_and(|l| l == a));
        // Refused per IP: answered and closed here, holding no slot and no global count.
        let peer = if admin {
            None
        } else {
            let Some(peer) = self.admit_peer(&stream) else {
                self.metrics.accepted.inc();
                return;
            };
            peer
        };
        let token = self.conns.insert(self.tick);
        if admin && let Some(c) = self.conns.get_mut(token) {
            c.admin = true;
        }
        if self.handshakes.sample.take() {
            self.handshakes.started.insert(token, Instant::now());
        }
        self.count_peer(token, peer);
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.add(1);
        self.metrics.accepted.inc();
        self.outbox.to_register.push((token, OwnedFd::from(stream)));
    }

    fn on_data(&mut self, token: Token, data: &mut [u8]) {
        let tick = self.tick;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.last_rx = tick;
        match &mut c.phase {
            Phase::Http { .. } => self.http_data(token, data),
            Phase::Ws { .. } => self.on_ws_data(token, data),
            Phase::Done => {}
        }
    }

    /// Acts on one complete request head (found and parsed by `shard::http`'s request loop,
    /// which also set what its answer may do: keep-alive, `HEAD`). `rest` is what followed
    /// the head: a body, the next pipelined requests, or WebSocket frames after an upgrade.
    /// Returns how many bytes of `rest` the request used (its body), or `None` when the
    /// connection moved on (upgraded, answered and closing, or reading a body into a buffer
    /// of its own) and `rest` is not the next request's.
    fn on_request(
        &mut self,
        token: Token,
        head: &handshake::Head<'_>,
        rest: &[u8],
    ) -> Option<usize> {
        let routed = crate::http::route(
            head.method,
            head.path,
            head.query,
            self.settings.max_topics_per_connection,
        );
        let admin = self.conns.get_mut(token).is_some_and(|c| c.admin);
        let routed = http::split_admin(routed, admin, self.settings.admin.is_some());
        if self.refuse_early(token, head, &routed) {
            return None;
        }
        match routed {
            Routed::Health => self.health(token),
            Routed::BrokerHealth => self.broker_health(token),
            Routed::Ready => self.ready(token),
            Routed::Demo => self.demo(token),
            Routed::Favicon => {
                self.respond_with(token, 200, "image/x-icon", crate::http::FAVICON);
            }
            Routed::ClientJs => {
                let js = crate::http::CLIENT_JS.as_bytes();
                self.respond_with(token, 200, "text/javascript; charset=utf-8", js);
            }
            Routed::History {
                topic,
                since,
                limit,
            } => return self.http_history(token, head, &topic, since, limit),
            Routed::Publish(topic) => return self.http_publish(token, head, &topic, rest),
            Routed::PublishBatch => return self.http_publish_batch(token, head, rest),
            Routed::Api(route) => return self.http_api(token, head, route, rest),
            Routed::Metrics => self.metrics_page(token),
            Routed::Respond { status, body } => self.respond(token, status, body),
            Routed::NotAllowed { allow } => self.not_allowed(token, allow),
            #[cfg(test)]
            Routed::TestDeferred => self.http_defer(token),
            Routed::Upgrade(endpoint) => {
                if self.shared.connections.load(Ordering::Relaxed) > self.settings.max_connections {
                    self.respond(token, 503, "server at its connection limit\n");
                    return None;
                }
                let up = match head.websocket() {
                    Ok(up) => up,
                    Err(e) => {
                        self.respond(token, e.status(), &format!("{e}\n"));
                        return None;
                    }
                };
                self.upgrade(token, head, &up, endpoint, rest.to_vec());
                return None;
            }
        }
        Some(0)
    }

    fn upgrade(
        &mut self,
        token: Token,
        head: &handshake::Head<'_>,
        up: &handshake::Upgrade,
        endpoint: Endpoint,
        mut rest: Vec<u8>,
    ) {
        // Who the client is, before anything is subscribed: a token that does not verify
        // refuses the upgrade (401), whatever the endpoint.
        let session = match self.upgrade_session(head, up) {
            Ok(s) => s,
            Err((status, reason)) => {
                self.respond(token, status, &reason);
                return;
            }
        };
        let grants = session
            .as_deref()
            .map(|s| &s.rights as &dyn crate::pubsub::Grants);
        let caller = crate::pubsub::Caller::Client(grants);
        let route = match endpoint {
            Endpoint::Echo => Route::Echo,
            Endpoint::Mux {
                subscribe,
                envelope_v2,
            } => {
                let format = if envelope_v2 {
                    Format::Mux2
                } else {
                    Format::Mux
                };
                if let Some(c) = self.conns.get_mut(token) {
                    c.mux_format = format;
                }
                self.mux_open(token.slot, subscribe, format, caller)
            }
            Endpoint::Topic { name, echo, rewind } => {
                let max = self.settings.max_recovery_publications as u64;
                let want = match rewind {
                    None => crate::pubsub::join::Want::Position,
                    Some(n) if n <= max => crate::pubsub::join::Want::Rewind(n as u32),
                    Some(_) => {
                        let why =
                            format!("bad rewind: at most {max} (--max-recovery-publications)\n");
                        self.respond(token, 400, &why);
                        return;
                    }
                };
                match self.pubsub.subscribe_join(
                    token.slot,
                    Format::Plain,
                    &name,
                    0,
                    caller,
                    want,
                    None,
                ) {
                    Ok(joined) => {
                        let topic = joined.id();
                        let may_publish = match self.pubsub.may_publish(caller, topic) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::debug!(shard = self.id, slot = token.slot, error = %e, "simple-mode connection may not publish");
                                false
                            }
                        };
                        Route::Topic {
                            topic,
                            echo,
                            may_publish,
                            refusal_logged: false,
                            bucket: session::PublishBucket::default(),
                        }
                    }
                    Err(e) => {
                        self.count_access_refusal(&e);
                        self.respond(token, e.wire().http_status, &format!("{e}\n"));
                        return;
                    }
                }
            }
        };
        let mux = matches!(route, Route::Mux(_));
        let protocol = up
            .protocols
            .iter()
            .any(|p| p == session::SUBPROTOCOL)
            .then_some(session::SUBPROTOCOL);
        let mut head = Vec::with_capacity(160);
        handshake::write_101(up, protocol, &mut head);
        let ws = Connection::new(Role::Server, self.ws_limits);
        let auth_at = self.first_auth_timer(session.as_deref(), mux);
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.phase = Phase::Ws { ws, route };
        if !self.handshakes.started.is_empty()
            && let Some(t0) = self.handshakes.started.remove(&token)
        {
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.metrics.handshake_ns.record(ns);
        }
        if let Some(s) = &session {
            self.users.add(&s.user, token);
        }
        c.session = session;
        c.auth_at = auth_at;
        c.push_exempt(Bytes::from(head), &mut self.outbox.dirty);
        self.metrics.upgrades.inc();
        tracing::debug!(shard = self.id, slot = token.slot, "websocket open");
        if !rest.is_empty() {
            self.on_ws_data(token, &mut rest);
        }
    }

    /// Feeds received bytes to the protocol core, one event at a time, then stops reading
    /// from the connection if what it asked for (pongs, echoes, mux-mode replies) left
    /// its queue backlogged: TCP backpressure then reaches the client.
    fn on_ws_data(&mut self, token: Token, data: &mut [u8]) {
        self.feed_ws(token, data);
        let limit = self.settings.send_queue_limit;
        if let Some(c) = self.conns.get_mut(token)
            && !c.paused
            && !c.releasing
            && c.backlogged(limit)
        {
            c.paused = true;
            self.metrics.recv_pauses.inc();
            self.outbox.recv_switch.push((token, false));
        }
    }

    fn feed_ws(&mut self, token: Token, data: &mut [u8]) {
        let mut input = data;
        loop {
            let slot = token.slot;
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            let Phase::Ws { ws, route } = &mut c.phase else {
                return;
            };
            let action = match ws.feed(input, &mut self.scratch) {
                Ok(p) => {
                    let consumed = p.consumed;
                    let action = match p.event {
                        None => Action::None,
                        Some(WsEvent::Message { opcode, payload })
                            if matches!(route, Route::Mux(_)) =>
                        {
                            Action::Mux(opcode, Bytes::copy_from_slice(payload))
                        }
                        Some(WsEvent::Message { opcode, payload }) => {
                            self.metrics.messages_in.inc();
                            self.metrics.bytes_in.add(payload.len() as u64);
                            match route {
                                Route::Topic {
                                    topic,
                                    echo,
                                    may_publish,
                                    refusal_logged,
                                    bucket,
                                } => {
                                    let exclude = (!*echo).then_some(token.slot);
                                    let s = &self.settings;
                                    let refused = if !*may_publish {
                                        Some(crate::pubsub::Error::Forbidden { op: "publish" })
                                    } else if !bucket.take(
                                        s.client_publish_rate,
                                        s.client_publish_burst,
                                        self.tick,
                                    ) {
                                        Some(crate::pubsub::Error::RateLimited)
                                    } else {
                                        // Checked at the upgrade; only the namespace's size
                                        // limit applies here.
                                        let grants = c
                                            .session
                                            .as_deref()
                                            .map(|s| &s.rights as &dyn crate::pubsub::Grants);
                                        self.pubsub
                                            .publish(
                                                Target::Id(*topic),
                                                crate::pubsub::Caller::Client(grants),
                                                opcode,
                                                payload,
                                                exclude,
                                            )
                                            .err()
                                    };
                                    match refused {
                                        None => Action::Published,
                                        Some(e) => {
                                            let first = !std::mem::replace(refusal_logged, true);
                                            Action::Refused(e, first)
                                        }
                                    }
                                }
                                Route::Echo => {
                                    Action::Echo(frame_once(&mut self.arena, opcode, payload))
                                }
                                // Taken by the arm above.
                                Route::Mux(_) => Action::None,
                            }
                        }
                        Some(WsEvent::Ping(_)) => Action::Pong,
                        Some(WsEvent::Pong(_)) => Action::None,
                        Some(WsEvent::Close { code, .. }) => {
                            tracing::debug!(shard = self.id, slot, code, "close received");
                            Action::Closed
                        }
                    };
                    (consumed, action)
                }
                Err(e) => {
                    let code = e.close_code();
                    self.metrics.protocol_error(code);
                    if let Some(suppressed) = self.logs.violation.allow(self.tick) {
                        tracing::info!(shard = self.id, slot, code, error = %e, suppressed, "protocol violation, closing (similar lines suppressed for 10 s)");
                    }
                    (input.len(), Action::Closed)
                }
            };
            let (consumed, action) = action;
            let had_event = !matches!(action, Action::None);
            // The core's output (pong, close reply) goes out before anything queued later.
            if !self.scratch.is_empty() {
                let out = self.scratch.split().freeze();
                if matches!(action, Action::Pong) {
                    c.push_pong(out, self.settings.send_queue_limit, &mut self.outbox.dirty);
                } else {
                    c.push_exempt(out, &mut self.outbox.dirty);
                }
            }
            match action {
                Action::None | Action::Published | Action::Pong => {}
                Action::Refused(e, first) => self.simple_publish_refused(token, &e, first),
                Action::Echo(frame) => self.deliver(token, frame),
                Action::Mux(opcode, payload) => self.on_mux(token, opcode, payload),
                Action::Closed => {
                    if let Some(c) = self.conns.get_mut(token) {
                        c.close_after_flush = true;
                        c.deadline = self.tick + ticks_ceil(CLOSE_GRACE);
                        c.mark_dirty(&mut self.outbox.dirty);
                    }
                    return;
                }
            }
            let rest = std::mem::take(&mut input);
            let at = consumed.min(rest.len());
            input = &mut rest[at..];
            if input.is_empty() || (consumed == 0 && !had_event) {
                return;
            }
        }
    }

    /// Whether this turn's publishes go out now (`None`) or wait (for how long).
    ///
    /// With a write delay the shard fans out at most once per `write_delay`: the first
    /// publish after a quiet period goes out at once, and those that follow within the
    /// window are held and go out together when it ends, one send per subscriber instead
    /// of one per turn. The added latency is at most the delay; sends per subscriber fall
    /// from one per message to one per window (see docs/DESIGN.md, "Write delay").
    /// Control frames, HTTP responses and messages from other shards are never held, and
    /// neither are batches sealed at `--max-batch-bytes`: those go out here, at the end of
    /// the turn that filled them (held bytes stay bounded per topic).
    fn fan_out_due(&mut self, now: Instant) -> Option<Duration> {
        let delay = self.settings.write_delay?;
        if !self.pubsub.has_pending() || self.shared.drain.is_draining() {
            return None;
        }
        if let Some(last) = self.last_fan_out {
            let due = last + delay;
            if now < due {
                self.fan_out(true);
                return Some(due - now);
            }
        }
        self.last_fan_out = Some(now);
        None
    }

    /// Fans out this turn's batches (`sealed_only`: those sealed at the byte bound) and
    /// applies the slow-consumer policy to whoever could not take them.
    fn fan_out(&mut self, sealed_only: bool) {
        let mut subs = Deliveries {
            conns: &mut self.conns,
            dirty: &mut self.outbox.dirty,
            limit: self.settings.send_queue_limit,
        };
        self.pubsub
            .fan_out(&mut subs, &mut self.outbox.wake, sealed_only);
        self.apply_slow();
        self.history_answers();
    }

    /// Takes what other shards sent: their batches are fanned out here.
    fn drain_bus(&mut self) {
        let mut subs = Deliveries {
            conns: &mut self.conns,
            dirty: &mut self.outbox.dirty,
            limit: self.settings.send_queue_limit,
        };
        self.pubsub.drain_bus(&mut subs, &mut self.outbox.wake);
        self.apply_slow();
        self.api_messages();
        self.history_answers();
    }

    /// Applies the slow-consumer policy to the subscribers the pub/sub layer found slow.
    fn apply_slow(&mut self) {
        if self.pubsub.slow.is_empty() {
            return;
        }
        let mut slow = std::mem::take(&mut self.pubsub.slow);
        for &(slot, n) in &slow {
            self.slow_consumer(slot, n);
        }
        slow.clear();
        self.pubsub.slow = slow;
    }

    /// Queues a frame to one connection (echo, mux replies), through the same rule as
    /// fan-out: admitted while the unsent backlog is under the limit.
    fn deliver(&mut self, token: Token, frame: Bytes) {
        let limit = self.settings.send_queue_limit;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if !c.accepts_data() {
            return;
        }
        if (c.queued as usize) < limit {
            c.push_data(frame, usize::MAX, &mut self.outbox.dirty);
            self.metrics.messages_out.inc();
        } else {
            self.slow_consumer(token.slot, 1);
        }
    }

    /// Applies the slow-consumer policy to a subscriber whose queue cannot take `messages`
    /// more messages. Peers can trigger its log lines, so they are throttled (the metrics
    /// count every case).
    fn slow_consumer(&mut self, slot: u32, messages: u32) {
        let (shard, tick) = (self.id, self.tick);
        let Some(c) = self.conns.slot_mut(slot) else {
            return;
        };
        match self.settings.slow_consumer {
            SlowConsumerPolicy::Drop => {
                self.metrics.dropped.add(u64::from(messages));
                if c.dropped == 0
                    && let Some(suppressed) = self.logs.drop.allow(tick)
                {
                    tracing::warn!(
                        shard,
                        slot,
                        suppressed,
                        "send queue full: dropping messages for a slow subscriber"
                    );
                }
                c.dropped = c.dropped.saturating_add(messages);
            }
            SlowConsumerPolicy::Disconnect => {
                if c.close_after_flush {
                    return;
                }
                self.metrics.slow_disconnects.inc();
                if let Some(suppressed) = self.logs.slow.allow(tick) {
                    tracing::info!(
                        shard,
                        slot,
                        queued = c.queued,
                        suppressed,
                        "send queue full: disconnecting a slow subscriber (1008)"
                    );
                }
                c.discard_queued();
                c.close_ws(
                    close_code::POLICY,
                    "too slow: send queue limit reached",
                    &mut self.scratch,
                    &mut self.outbox.dirty,
                    tick + ticks_ceil(CLOSE_GRACE),
                );
            }
        }
    }

    fn on_recv_closed(&mut self, token: Token, error: Option<std::io::Error>) {
        let id = self.id;
        let tick = self.tick;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if matches!(c.phase, Phase::Http { .. }) {
            // Answers still owed (a deferred one, pipelined requests) go out first.
            self.http_recv_closed(token);
            return;
        }
        match &mut c.phase {
            // The phase (and with it the subscription) ends in `release`, nowhere else.
            Phase::Ws { ws, .. } => {
                if let Err(e) = ws.eof() {
                    tracing::debug!(shard = id, slot = token.slot, error = %e, io_error = ?error, "abnormal closure");
                    self.metrics.abnormal_closures.inc();
                }
            }
            Phase::Http { .. } | Phase::Done => {}
        }
        c.close_after_flush = true;
        if c.deadline == 0 {
            c.deadline = tick + ticks_ceil(CLOSE_GRACE);
        }
        c.mark_dirty(&mut self.outbox.dirty);
    }

    fn on_sent(&mut self, token: Token, result: std::io::Result<usize>, mut frames: Vec<Bytes>) {
        // Kept for reuse (trimmed when a tick passes without sends: see `run`). Emptied here,
        // the one place for every driver and outcome: a failed or aborted send comes back
        // with its frames still in it, and the next connection's send would carry them.
        frames.clear();
        if frames.capacity() <= 4 * MAX_FRAMES_PER_SEND {
            self.outbox.send_vecs.push(frames);
        }
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.sending = false;
        c.queued = c.queued.saturating_sub(c.inflight);
        let sent = std::mem::take(&mut c.inflight);
        let resumed = c.may_resume(self.settings.send_queue_limit);
        if resumed {
            c.paused = false;
            self.outbox.recv_switch.push((token, true));
        }
        match result {
            Ok(_) => {
                self.metrics.bytes_out.add(sent as u64);
                c.mark_dirty(&mut self.outbox.dirty);
            }
            Err(e) => {
                tracing::debug!(shard = self.id, slot = token.slot, error = %e, "send failed, closing");
                c.discard_queued();
                c.close_after_flush = true;
                c.mark_dirty(&mut self.outbox.dirty);
            }
        }
        if resumed {
            // Pipelined requests held while the answers backed up.
            self.http_resumed(token);
        }
    }

    fn on_released(&mut self, token: Token) {
        let Some(c) = self.conns.remove(token) else {
            return;
        };
        if c.dropped > 0
            && let Some(suppressed) = self.logs.dropped_close.allow(self.tick)
        {
            tracing::info!(
                shard = self.id,
                slot = token.slot,
                dropped = c.dropped,
                suppressed,
                "closed a subscriber that had messages dropped"
            );
        }
        self.forget_peer(token);
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .connections
            .set(self.metrics.connections.get().saturating_sub(1));
    }

    /// Asks the driver to close a connection; unsubscribes it first so no new frame is
    /// queued to it (the topic lists are compacted at the end of this turn, before the
    /// slot can be reused).
    fn release(&mut self, token: Token) {
        if !self.handshakes.started.is_empty() {
            self.handshakes.started.remove(&token);
        }
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.releasing {
            return;
        }
        c.releasing = true;
        c.discard_queued();
        if let Some(s) = c.session.take() {
            self.users.remove(&s.user, token);
        }
        let phase = std::mem::replace(&mut c.phase, Phase::Done);
        let mux_format = c.mux_format;
        if let Phase::Ws { route, .. } = phase {
            match route {
                Route::Topic { topic, .. } => {
                    self.pubsub.unsubscribe(token.slot, topic, Format::Plain);
                }
                Route::Mux(mux) => self.mux_release(token.slot, &mux, mux_format),
                Route::Echo => {}
            }
        }
        self.outbox.to_release.push(token);
    }

    /// Handshake and idle timeouts, pings, close deadlines: one pass per tick.
    fn timers(&mut self) {
        // Once per tick, never per message: a reload's settings replace this shard's.
        if let Some(r) = self.shared.reload.take_new(&mut self.reload_seen) {
            r.apply_to(&mut self.settings);
            tracing::debug!(shard = self.id, "reloaded settings in force");
        }
        let now = self.tick;
        let hs = ticks_ceil(self.settings.handshake_timeout);
        let http_idle = self.settings.http_idle_timeout.map(ticks_ceil);
        let idle = self.settings.idle_timeout.map(ticks_ceil);
        let ping = self.settings.ping_interval.map(ticks_ceil);
        let mut expired = Vec::new();
        for c in self.conns.iter_mut() {
            if c.releasing {
                continue;
            }
            if c.deadline != 0 && now >= c.deadline {
                expired.push(c.token);
                continue;
            }
            // An idle connection should hold no queue memory (the 101 response alone leaves
            // a few slots allocated); an active one re-allocates at most once per tick.
            if c.queue.is_empty() && c.queue.capacity() != 0 && !c.sending {
                c.queue = std::collections::VecDeque::new();
            }
            if let Phase::Ws { ws, .. } = &mut c.phase
                && now.saturating_sub(c.last_rx) > 1
            {
                ws.release_memory();
            }
            // Token deadlines: the auth message's, refresh_required, expiry.
            if c.auth_at != 0
                && now >= c.auth_at
                && matches!(&c.phase, Phase::Ws { ws, .. } if ws.state() == WsState::Open)
            {
                let t = access::AuthTimer {
                    now,
                    unix_now: self.unix_now,
                    limit: self.settings.send_queue_limit,
                };
                t.fire(
                    c,
                    &mut self.scratch,
                    &mut self.arena,
                    &self.metrics,
                    &mut self.outbox.dirty,
                );
                continue;
            }
            match &mut c.phase {
                Phase::Http {
                    flow, buf, body, ..
                } => {
                    // From the start of the current request (or the accept), or, between
                    // keep-alive requests, from the last answer.
                    let between = buf.is_empty() && body.is_none();
                    match flow.timed_out(now, hs, http_idle, between) {
                        Some(http::Timeout::Request) => {
                            self.metrics.handshake_timeouts.inc();
                            tracing::debug!(
                                shard = self.id,
                                slot = c.token.slot,
                                "handshake timeout"
                            );
                            expired.push(c.token);
                        }
                        Some(http::Timeout::Idle) => {
                            self.metrics.http_idle_timeouts.inc();
                            tracing::debug!(
                                shard = self.id,
                                slot = c.token.slot,
                                "http keep-alive idle timeout"
                            );
                            expired.push(c.token);
                        }
                        None => {}
                    }
                }
                Phase::Ws { ws, .. } if ws.state() == WsState::Open => {
                    if let Some(idle) = idle
                        && now.saturating_sub(c.last_rx) >= idle
                    {
                        self.metrics.idle_timeouts.inc();
                        tracing::debug!(shard = self.id, slot = c.token.slot, "idle timeout");
                        ws.close(close_code::GOING_AWAY, "idle timeout", &mut self.scratch);
                        c.close_after_flush = true;
                        c.deadline = now + ticks_ceil(CLOSE_GRACE);
                    } else if let Some(ping) = ping
                        && now.saturating_sub(c.last_ping) >= ping
                    {
                        c.last_ping = now;
                        let _ = ws.send(OpCode::Ping, b"", &mut self.scratch);
                    }
                    if !self.scratch.is_empty() {
                        let out = self.scratch.split().freeze();
                        c.push_exempt(out, &mut self.outbox.dirty);
                    }
                }
                _ => {}
            }
        }
        for t in expired {
            self.release(t);
        }
        self.api_timeouts();
        self.pubsub.expire_history();
        let mut subs = Deliveries {
            conns: &mut self.conns,
            dirty: &mut self.outbox.dirty,
            limit: self.settings.send_queue_limit,
        };
        self.pubsub.join_timeouts(&mut subs, &mut self.outbox.wake);
        self.apply_slow();
        self.history_answers();
    }

    /// Hands the turn's work to the driver: registrations, sends, releases (after the
    /// topic lists forget them), wake-ups.
    fn flush<D: Driver>(&mut self, driver: &mut D) {
        let out = &mut self.outbox;
        for (token, fd) in out.to_register.drain(..) {
            if let Err(e) = driver.register(token, fd) {
                tracing::warn!(shard = self.id, error = %e, "registering a connection failed");
                if let Some(c) = self.conns.get_mut(token) {
                    c.releasing = true;
                }
                out.to_release.push(token);
            }
        }
        let mut i = 0;
        while i < self.outbox.dirty.len() {
            let slot = self.outbox.dirty[i];
            i += 1;
            let Some(c) = self.conns.slot_mut(slot) else {
                continue;
            };
            c.dirty = false;
            if c.releasing || c.sending {
                continue;
            }
            if !c.queue.is_empty() {
                let mut frames = self.outbox.send_vecs.pop().unwrap_or_default();
                let n = c.queue.len().min(MAX_FRAMES_PER_SEND);
                let mut bytes = 0;
                frames.extend(c.queue.drain(..n).inspect(|f| bytes += f.len()));
                if self.outbox.send_sample.take() {
                    self.metrics.send_queue_bytes.record(bytes as u64);
                }
                c.inflight = u32::try_from(bytes).unwrap_or(u32::MAX);
                c.sending = true;
                self.outbox.sends_since_tick += 1;
                driver.send(c.token, frames);
            } else if c.close_after_flush {
                let token = c.token;
                self.release(token);
            }
        }
        self.outbox.dirty.clear();
        self.pubsub.end_turn(&mut self.outbox.wake);
        for token in self.outbox.to_release.drain(..) {
            driver.release(token);
        }
        for (shard, wake) in self.outbox.wake.iter_mut().enumerate() {
            if std::mem::take(wake)
                && let Some(t) = self.shared.bus.target(shard)
            {
                driver.wake(t);
            }
        }
    }
}

/// What a received frame leads to, computed while the protocol core is borrowed and
/// applied after.
enum Action {
    None,
    /// A ping: the core wrote its pong.
    Pong,
    /// Appended to the topic's batch for this turn.
    Published,
    /// A simple-mode message the access rules refused: dropped and counted.
    Refused(crate::pubsub::Error, bool),
    Echo(Bytes),
    /// A mux-mode message: its opcode and a copy of its payload.
    Mux(OpCode, Bytes),
    Closed,
}

/// Builds a server frame once, in the shard's arena.
fn frame_once(arena: &mut BytesMut, opcode: OpCode, payload: &[u8]) -> Bytes {
    let need = payload.len() + crate::proto::frame::MAX_HEADER_LEN;
    if arena.capacity() - arena.len() < need {
        arena.reserve(need.max(ARENA_CHUNK));
    }
    encode_frame(arena, true, opcode, None, payload);
    arena.split().freeze()
}
