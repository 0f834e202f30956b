//! The per-core event loop: one thread, one driver (io_uring or epoll), its own
//! connections and topic table. Nothing here takes a lock.
//!
//! A loop turn, in order:
//! 1. [`Driver::wait`]: one kernel entry submits everything the last turn queued and waits
//!    for completions (or the next timer tick).
//! 2. Handle every [`Event`]: accept, read requests, feed frames to the protocol core,
//!    publish (frame once, queue to local subscribers, push to other shards' inboxes).
//! 3. Drain this shard's bus inbox (messages other shards published).
//! 4. Timers, at most once per tick: handshake and idle timeouts, pings, close deadlines.
//! 5. Flush: register new sockets, one vectored send per connection with queued frames,
//!    releases, and one wake-up per other shard that got messages this turn.
//!
//! The production surface lives beside this file and is called from a few hooks here:
//! `control.rs` (control mode and its envelopes, hooked into upgrade, receive, fan-out and
//! release), `http_publish.rs` (`POST /publish/{topic}`), `surface.rs` (admission: origins,
//! connection and per-IP limits; hooked into accept, request routing and release) and
//! `drain.rs` (graceful shutdown, one call per loop turn).

pub mod batch;
pub mod conn;
mod control;
mod drain;
mod http_publish;
pub mod surface;

pub use control::ControlConn;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::bus::{Bus, BusMsg, Pushed};
use crate::config::SlowConsumerPolicy;
use crate::http::{Endpoint, Routed};
use crate::io::{Driver, Event, Token};
use crate::metrics::ShardMetrics;
use crate::proto::conn::{Event as WsEvent, Limits, Role, State as WsState};
use crate::proto::frame::{OpCode, encode_frame};
use crate::proto::handshake::{self, HandshakeLimits};
use crate::proto::{Connection, close_code};
use crate::pubsub::Topics;
use batch::{Batcher, Exclusion, ExclusionIndex, Part, Ready};
use conn::{Conn, Phase, Route};

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
    /// Control mode, limits and drain.
    pub surface: surface::SurfaceSettings,
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
    /// The draining flag and the per-IP table.
    pub surface: surface::SurfaceShared,
}

/// Ticks since the shard started, from a clock read once per loop turn.
fn ticks(d: Duration) -> u32 {
    (d.as_millis() / TICK.as_millis()).min(u128::from(u32::MAX)) as u32
}

fn ticks_ceil(d: Duration) -> u32 {
    ticks(d + TICK - Duration::from_nanos(1)).max(1)
}

/// Everything of a shard except its driver, so that events borrowed from the driver can be
/// handled with the rest mutably borrowed.
struct ShardState {
    id: usize,
    settings: Settings,
    shared: Arc<Shared>,
    metrics: Arc<ShardMetrics>,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    topics: Topics,
    dirty: Vec<u32>,
    to_register: Vec<(Token, OwnedFd)>,
    to_release: Vec<Token>,
    wake: Vec<bool>,
    /// Output of the protocol core (pongs, closes), split off per connection.
    scratch: BytesMut,
    /// Where echoed frames are built.
    arena: BytesMut,
    /// Published frames of this turn, one contiguous buffer per topic.
    batcher: Batcher,
    send_vecs: Vec<Vec<Bytes>>,
    /// Sends handed to the driver since the last timer tick.
    sends_since_tick: u64,
    /// A tick with sends passed since the last idle trim.
    busy_since_trim: bool,
    /// When this shard last fanned out its publishes (for `write_delay`).
    last_fan_out: Option<Instant>,
    tick: u32,
    handshake_limits: HandshakeLimits,
    ws_limits: Limits,
    /// Control-mode, per-IP and drain state (`surface.rs`).
    surface: surface::SurfaceState,
    /// Receives to pause (`false`) or resume (`true`), applied after each event.
    recv_switch: Vec<(Token, bool)>,
    /// Log throttles for what clients (or their number) can trigger.
    accept_log: crate::throttle::LogThrottle,
    violation_log: crate::throttle::LogThrottle,
    /// Fan-out scratch and log throttles.
    fanout: FanoutState,
}

/// Per-shard scratch of the fan-out (reused across batches, so a fan-out allocates
/// nothing in the steady state) and its log throttles.
#[derive(Debug, Default)]
struct FanoutState {
    /// The current batch's excluded publishers, by slot.
    index: ExclusionIndex,
    /// Message index → offset in the current batch's envelope run (control mode).
    env_offsets: Vec<usize>,
    /// Subscribers found closed during a fan-out, to take out of the topic's list.
    closed: Vec<u32>,
    /// Subscribers whose backlog was at the limit: (slot, messages).
    slow: Vec<(u32, u32)>,
    slow_log: crate::throttle::LogThrottle,
    drop_log: crate::throttle::LogThrottle,
    dropped_close_log: crate::throttle::LogThrottle,
    inbox_full_log: crate::throttle::LogThrottle,
}

/// A shard: its driver and its state.
pub struct Shard<D: Driver> {
    driver: D,
    st: ShardState,
    started: Instant,
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
        // Reserve the whole table up front: untouched capacity costs address space, not
        // memory, and growing by doubling would copy the table and leave the old copies
        // resident in the allocator (measured: hundreds of bytes per idle connection).
        let table = (settings.max_connections / n.max(1) + 1).min(1 << 20);
        let ws_limits = Limits {
            max_frame_size: settings.max_frame_size as u64,
            max_message_size: settings.max_message_size,
        };
        let handshake_limits = HandshakeLimits {
            max_header_bytes: settings.max_header_bytes,
            ..HandshakeLimits::default()
        };
        let max_batch_bytes = settings.max_batch_bytes;
        Shard {
            driver,
            started: Instant::now(),
            st: ShardState {
                id,
                settings,
                shared,
                metrics,
                conns: Vec::with_capacity(table),
                generations: Vec::with_capacity(table),
                free: Vec::new(),
                topics: Topics::default(),
                dirty: Vec::new(),
                to_register: Vec::new(),
                to_release: Vec::new(),
                wake: vec![false; n],
                scratch: BytesMut::with_capacity(256),
                arena: BytesMut::new(),
                batcher: Batcher::new(max_batch_bytes),
                send_vecs: Vec::new(),
                sends_since_tick: 0,
                busy_since_trim: false,
                last_fan_out: None,
                tick: 0,
                handshake_limits,
                ws_limits,
                surface: surface::SurfaceState::default(),
                recv_switch: Vec::new(),
                accept_log: crate::throttle::LogThrottle::default(),
                violation_log: crate::throttle::LogThrottle::default(),
                fanout: FanoutState::default(),
            },
        }
    }

    /// Runs until [`Shared::stop`] is set. Returns an error only if the driver fails.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut next_timer = 0u32;
        let mut timeout = TICK;
        while !self.st.shared.stop.load(Ordering::Relaxed) {
            self.driver.wait(timeout)?;
            let now = Instant::now();
            self.st.tick = ticks(now.duration_since(self.started));
            self.st.metrics.loop_turns.inc();
            while let Some(ev) = self.driver.next_event() {
                self.st.on_event(ev);
                // At once, not at the flush: epoll would read the socket again this turn.
                for (token, on) in self.st.recv_switch.drain(..) {
                    if on {
                        self.driver.resume_recv(token);
                    } else {
                        self.driver.pause_recv(token);
                    }
                }
            }
            timeout = match self.st.fan_out_due(now) {
                None => {
                    self.st.publish_batches();
                    TICK
                }
                Some(wait) => wait.min(TICK),
            };
            self.st.drain_bus();
            if self.st.tick >= next_timer {
                next_timer = self.st.tick + 1;
                self.st.timers();
                // Pools sized by a burst (10,000 handshake responses in one turn) are freed,
                // and the receive buffer ring's active set shrinks, once a whole tick passes
                // without a send; under load they stay warm.
                if std::mem::take(&mut self.st.sends_since_tick) == 0 {
                    self.driver.trim();
                    if std::mem::take(&mut self.st.busy_since_trim) {
                        // First idle tick after activity: also hand the allocator's free
                        // pages back, once (it walks the whole heap).
                        self.st.send_vecs = Vec::new();
                        crate::alloc::collect();
                    }
                } else {
                    self.st.busy_since_trim = true;
                }
            }
            if self.st.drain_turn() {
                break;
            }
            self.st.flush(&mut self.driver);
            let stats = self.driver.stats();
            self.st.metrics.submissions.set(stats.submissions);
            self.st.metrics.recv_bad_buffer.set(stats.recv_bad_buffer);
            self.st
                .metrics
                .buffers_in_use
                .set(u64::from(stats.buffers_in_use));
        }
        Ok(())
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
                if let Some(suppressed) = self.accept_log.allow(self.tick) {
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
        // Nagle would hold back the small frames a broadcast server writes; the loop already
        // coalesces everything queued in a turn into one send.
        let stream = std::net::TcpStream::from(fd);
        // Refused per IP: answered and closed here, holding no slot and no global count.
        let Some(peer) = self.admit_peer(&stream) else {
            self.metrics.accepted.inc();
            return;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let generation = self.generations[slot as usize].wrapping_add(1) & 0xff_ffff;
        self.generations[slot as usize] = generation;
        let token = Token { slot, generation };
        self.conns[slot as usize] = Some(Conn::new(token, self.tick));
        self.count_peer(token, peer);
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.add(1);
        self.metrics.accepted.inc();
        self.to_register.push((token, OwnedFd::from(stream)));
    }

    fn on_data(&mut self, token: Token, data: &mut [u8]) {
        let tick = self.tick;
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        c.last_rx = tick;
        match &mut c.phase {
            Phase::Http { buf, body, .. } => {
                if let Some(pending) = body {
                    // A publish body: appended to its buffer, sized once from the
                    // Content-Length; bytes past it are ignored (the connection closes after
                    // the response).
                    let room = pending.len.saturating_sub(buf.len());
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                    if buf.len() >= pending.len {
                        self.finish_publish(token);
                    }
                    return;
                }
                buf.extend_from_slice(data);
                self.on_request_bytes(token);
            }
            Phase::Ws { .. } => self.on_ws_data(token, data),
            Phase::Done => {}
        }
    }

    /// Looks for the end of the request head in what the last receive added (linear in the
    /// bytes received, whatever the number of receives), then parses it once and acts on it.
    fn on_request_bytes(&mut self, token: Token) {
        let limits = self.handshake_limits;
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        let Phase::Http {
            buf,
            scan,
            head_only,
            ..
        } = &mut c.phase
        else {
            return;
        };
        let end = match scan.find(buf, &limits) {
            Ok(None) => return,
            Ok(Some(end)) => end,
            Err(e) => {
                let status = e.status();
                self.respond(token, status, &format!("{e}\n"));
                return;
            }
        };
        // The buffer leaves the connection so that the parsed head can borrow it while the
        // shard acts on it; it is dropped (or becomes the WebSocket's first input) after.
        let buf = std::mem::take(buf);
        let head = match handshake::parse_head(&buf[..end], &limits) {
            Ok(head) => head,
            Err(e) => {
                let status = e.status();
                self.respond(token, status, &format!("{e}\n"));
                return;
            }
        };
        *head_only = head.method == "HEAD";
        let rest = &buf[end.min(buf.len())..];
        let routed = crate::http::route(
            head.method,
            head.path,
            head.query,
            self.settings.surface.max_topics_per_connection,
        );
        if self.refuse_early(token, &head, &routed) {
            return;
        }
        match routed {
            Routed::Health => self.health(token),
            Routed::Demo => self.demo(token),
            Routed::Publish(topic) => self.http_publish(token, &head, &topic, rest),
            Routed::Metrics => {
                let body = crate::metrics::render(&self.shared.metrics, self.shared.backend);
                self.respond_with(
                    token,
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                );
            }
            Routed::Respond { status, body } => self.respond(token, status, body),
            Routed::Upgrade(endpoint) => {
                if self.shared.connections.load(Ordering::Relaxed) > self.settings.max_connections {
                    self.respond(token, 503, "server at its connection limit\n");
                    return;
                }
                let up = match head.websocket() {
                    Ok(up) => up,
                    Err(e) => {
                        self.respond(token, e.status(), &format!("{e}\n"));
                        return;
                    }
                };
                self.upgrade(token, &up, endpoint, rest.to_vec());
            }
        }
    }

    fn upgrade(
        &mut self,
        token: Token,
        up: &handshake::Upgrade,
        endpoint: Endpoint,
        mut rest: Vec<u8>,
    ) {
        let route = match endpoint {
            Endpoint::Echo => Route::Echo,
            Endpoint::Control { subscribe } => self.control_open(token.slot, subscribe),
            Endpoint::Topic { name, echo } => {
                let topic = self.topics.subscribe(&name, token.slot);
                self.metrics.subscriptions.add(1);
                self.metrics.topics.set(self.topics.len() as u64);
                Route::Topic { topic, echo }
            }
        };
        let mut head = Vec::with_capacity(160);
        handshake::write_101(up, None, &mut head);
        let ws = Connection::new(Role::Server, self.ws_limits);
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        c.phase = Phase::Ws { ws, route };
        c.push_control(Bytes::from(head), &mut self.dirty);
        self.metrics.upgrades.inc();
        tracing::debug!(shard = self.id, slot = token.slot, "websocket open");
        if !rest.is_empty() {
            self.on_ws_data(token, &mut rest);
        }
    }

    /// Answers a plain HTTP request (or refuses a handshake) and closes after the response.
    fn respond(&mut self, token: Token, status: u16, body: &str) {
        if status >= 400 {
            self.metrics.handshake_failure(status);
            tracing::debug!(
                shard = self.id,
                status,
                reason = body.trim_end(),
                "request refused"
            );
        }
        self.respond_with(token, status, "text/plain; charset=utf-8", body.as_bytes());
    }

    /// Answers a request and closes after the response; a `HEAD` request gets the headers
    /// only, with the Content-Length the body would have (RFC 9110 §9.3.2).
    fn respond_with(&mut self, token: Token, status: u16, content_type: &str, body: &[u8]) {
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        let mut out = Vec::with_capacity(128 + body.len());
        handshake::write_response(status, content_type, &[], body, &mut out);
        if matches!(
            c.phase,
            Phase::Http {
                head_only: true,
                ..
            }
        ) {
            out.truncate(out.len() - body.len());
        }
        c.phase = Phase::Done;
        c.push_control(Bytes::from(out), &mut self.dirty);
        c.close_after_flush = true;
    }

    /// Feeds received bytes to the protocol core, one event at a time, then stops reading
    /// from the connection if what it asked for (pongs, echoes, control-mode replies) left
    /// its queue backlogged: TCP backpressure then reaches the client.
    fn on_ws_data(&mut self, token: Token, data: &mut [u8]) {
        self.feed_ws(token, data);
        let limit = self.settings.send_queue_limit;
        if let Some(c) = conn_mut(&mut self.conns, token)
            && !c.paused
            && !c.releasing
            && c.backlogged(limit)
        {
            c.paused = true;
            self.metrics.recv_pauses.inc();
            self.recv_switch.push((token, false));
        }
    }

    fn feed_ws(&mut self, token: Token, data: &mut [u8]) {
        let mut input = data;
        loop {
            let slot = token.slot as usize;
            let Some(Some(c)) = self.conns.get_mut(slot) else {
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
                            if matches!(route, Route::Control(_)) =>
                        {
                            Action::Control(opcode, Bytes::copy_from_slice(payload))
                        }
                        Some(WsEvent::Message { opcode, payload }) => {
                            self.metrics.messages_in.inc();
                            self.metrics.bytes_in.add(payload.len() as u64);
                            match route {
                                Route::Topic { topic, echo } => {
                                    let exclude = (!*echo).then_some(token.slot);
                                    self.batcher.append(topic, opcode, payload, exclude);
                                    Action::Published
                                }
                                Route::Echo => {
                                    Action::Echo(frame_once(&mut self.arena, opcode, payload))
                                }
                                // Taken by the arm above.
                                Route::Control(_) => Action::None,
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
                    if let Some(suppressed) = self.violation_log.allow(self.tick) {
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
                    c.push_pong(out, self.settings.send_queue_limit, &mut self.dirty);
                } else {
                    c.push_control(out, &mut self.dirty);
                }
            }
            match action {
                Action::None | Action::Published | Action::Pong => {}
                Action::Echo(frame) => self.deliver(token.slot, frame),
                Action::Control(opcode, payload) => self.on_control(token, opcode, payload),
                Action::Closed => {
                    if let Some(c) = conn_mut(&mut self.conns, token) {
                        c.close_after_flush = true;
                        c.deadline = self.tick + ticks_ceil(CLOSE_GRACE);
                        c.mark_dirty(&mut self.dirty);
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

    /// Publishes one message: framed once into `topic`'s batch for this turn, queued to
    /// subscribers at the end of the turn. `exclude`: a publisher that must not receive it.
    pub(super) fn publish(
        &mut self,
        topic: &Arc<str>,
        opcode: OpCode,
        payload: &[u8],
        exclude: Option<u32>,
    ) {
        self.batcher.append(topic, opcode, payload, exclude);
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
        if self.batcher.is_empty() || self.shared.surface.is_draining() {
            return None;
        }
        if let Some(last) = self.last_fan_out {
            let due = last + delay;
            if now < due {
                self.publish_ready(true);
                return Some(due - now);
            }
        }
        self.last_fan_out = Some(now);
        None
    }

    /// Queues every batch: to local subscribers, and one bus message per batch to every
    /// other shard.
    fn publish_batches(&mut self) {
        self.publish_ready(false);
    }

    /// Queues the sealed batches (`sealed_only`) or all of them.
    fn publish_ready(&mut self, sealed_only: bool) {
        if self.batcher.is_empty() {
            return;
        }
        let mut batcher = std::mem::take(&mut self.batcher);
        let bus = Arc::clone(&self.shared.bus);
        let f = |r: Ready| {
            self.fan_out_local(&r.topic, &r.frames, r.count, &r.parts, &r.excluded);
            for shard in 0..bus.shards() {
                if shard != self.id {
                    let msg = BusMsg {
                        topic: Arc::clone(&r.topic),
                        frame: r.frames.clone(),
                        count: r.count,
                    };
                    match bus.push(shard, msg) {
                        Pushed::Wake => self.wake[shard] = true,
                        Pushed::Queued => {}
                        Pushed::Full => {
                            self.metrics.bus_dropped.add(u64::from(r.count));
                            if let Some(suppressed) = self.fanout.inbox_full_log.allow(self.tick) {
                                tracing::warn!(
                                    shard = self.id,
                                    to = shard,
                                    suppressed,
                                    "a shard's inbox is full (--max-inbox-bytes): batch dropped for its subscribers"
                                );
                            }
                        }
                    }
                }
            }
        };
        if sealed_only {
            batcher.take_sealed(f);
        } else {
            batcher.take(f);
        }
        self.batcher = batcher;
    }

    /// Queues a batch of `count` messages to every local subscriber of `topic`; the
    /// publishers listed in `excluded` get their `parts` instead of the whole.
    ///
    /// Admission is decided on what a subscriber has not taken: a batch goes whole into a
    /// queue whose unsent backlog (queued plus in flight) is under `--send-queue-limit`,
    /// and otherwise through the slow-consumer policy. A reader is therefore never judged
    /// slow because one batch was large, and a queue holds at most the limit plus one
    /// batch (batches are bounded by `--max-batch-bytes`). The exclusions are indexed once
    /// per batch (O(subscribers + publishers)); closed connections found on the way are
    /// taken out of the topic's list.
    fn fan_out_local(
        &mut self,
        topic: &str,
        frames: &Bytes,
        count: u32,
        parts: &[Part],
        excluded: &[Exclusion],
    ) {
        self.fanout.index.build(excluded);
        if self.surface.control_subs != 0 {
            self.fan_out_control(topic, frames, count, parts, excluded);
        }
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        let limit = self.settings.send_queue_limit;
        let mut queued = 0u64;
        let fo = &mut self.fanout;
        fo.slow.clear();
        fo.closed.clear();
        let any_excluded = !excluded.is_empty();
        for &slot in &t.subscribers {
            let Some(Some(c)) = self.conns.get_mut(slot as usize) else {
                fo.closed.push(slot);
                continue;
            };
            if !c.accepts_data() {
                fo.closed.push(slot);
                continue;
            }
            let ex = if any_excluded {
                fo.index.get(slot).and_then(|i| excluded.get(i))
            } else {
                None
            };
            match ex {
                None => {
                    if c.queued < limit {
                        c.push_data(frames.clone(), usize::MAX, &mut self.dirty);
                        queued += u64::from(count);
                    } else {
                        fo.slow.push((slot, count));
                    }
                }
                Some(e) if e.count == 0 => {}
                Some(e) => {
                    if c.queued < limit {
                        for p in parts.get(e.parts.clone()).unwrap_or_default() {
                            c.push_data(frames.slice(p.bytes.clone()), usize::MAX, &mut self.dirty);
                        }
                        queued += u64::from(e.count);
                    } else {
                        fo.slow.push((slot, e.count));
                    }
                }
            }
        }
        self.metrics.messages_out.add(queued);
        if !self.fanout.closed.is_empty() {
            self.prune_closed(topic, false);
        }
        self.apply_slow();
    }

    /// Takes the connections in `fanout.closed` out of `topic`'s simple-mode list
    /// (`control`: its control-mode list), with the counters, so that later fan-outs do not
    /// test them again. `release` unsubscribes the rest; removing twice is harmless.
    pub(super) fn prune_closed(&mut self, topic: &str, control: bool) {
        let mut closed = std::mem::take(&mut self.fanout.closed);
        closed.sort_unstable();
        let removed = self.topics.remove_slots(topic, &closed, control);
        if removed != 0 {
            if control {
                self.surface.control_subs = self.surface.control_subs.saturating_sub(removed);
            }
            self.metrics.subscriptions.set(
                self.metrics
                    .subscriptions
                    .get()
                    .saturating_sub(removed as u64),
            );
            self.metrics.topics.set(self.topics.len() as u64);
        }
        closed.clear();
        self.fanout.closed = closed;
    }

    /// Applies the slow-consumer policy to the subscribers in `fanout.slow`.
    pub(super) fn apply_slow(&mut self) {
        if self.fanout.slow.is_empty() {
            return;
        }
        let slow = std::mem::take(&mut self.fanout.slow);
        for &(slot, n) in &slow {
            self.slow_consumer(slot, n);
        }
        self.fanout.slow = slow;
        self.fanout.slow.clear();
    }

    /// Queues a frame to one connection (echo), through the same rule: admitted while the
    /// unsent backlog is under the limit.
    fn deliver(&mut self, slot: u32, frame: Bytes) {
        let limit = self.settings.send_queue_limit;
        let Some(Some(c)) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if !c.accepts_data() {
            return;
        }
        if c.queued < limit {
            c.push_data(frame, usize::MAX, &mut self.dirty);
            self.metrics.messages_out.inc();
        } else {
            self.slow_consumer(slot, 1);
        }
    }

    /// Applies the slow-consumer policy to a subscriber whose queue cannot take `messages`
    /// more messages. Peers can trigger its log lines, so they are throttled (the metrics
    /// count every case).
    fn slow_consumer(&mut self, slot: u32, messages: u32) {
        let (shard, tick) = (self.id, self.tick);
        let Some(Some(c)) = self.conns.get_mut(slot as usize) else {
            return;
        };
        match self.settings.slow_consumer {
            SlowConsumerPolicy::Drop => {
                self.metrics.dropped.add(u64::from(messages));
                if c.dropped == 0
                    && let Some(suppressed) = self.fanout.drop_log.allow(tick)
                {
                    tracing::warn!(
                        shard,
                        slot,
                        suppressed,
                        "send queue full: dropping messages for a slow subscriber"
                    );
                }
                c.dropped += u64::from(messages);
            }
            SlowConsumerPolicy::Disconnect => {
                self.metrics.slow_disconnects.inc();
                if let Some(suppressed) = self.fanout.slow_log.allow(tick) {
                    tracing::info!(
                        shard,
                        slot,
                        queued = c.queued,
                        suppressed,
                        "send queue full: disconnecting a slow subscriber (1008)"
                    );
                }
                c.discard_queued();
                if let Phase::Ws { ws, .. } = &mut c.phase {
                    ws.close(
                        close_code::POLICY,
                        "too slow: send queue limit reached",
                        &mut self.scratch,
                    );
                }
                let out = self.scratch.split().freeze();
                c.push_control(out, &mut self.dirty);
                c.close_after_flush = true;
                c.deadline = tick + ticks_ceil(CLOSE_GRACE);
            }
        }
    }

    fn drain_bus(&mut self) {
        let bus = Arc::clone(&self.shared.bus);
        let n = bus.drain(self.id, |m| {
            self.fan_out_local(&m.topic, &m.frame, m.count, &[], &[])
        });
        self.metrics.bus_in.add(n as u64);
    }

    fn on_recv_closed(&mut self, token: Token, error: Option<std::io::Error>) {
        let id = self.id;
        let tick = self.tick;
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        match &mut c.phase {
            // The phase (and with it the subscription) ends in `release`, nowhere else.
            Phase::Ws { ws, .. } => {
                if let Err(e) = ws.eof() {
                    tracing::debug!(shard = id, slot = token.slot, error = %e, io_error = ?error, "abnormal closure");
                    self.metrics.protocol_error(close_code::ABNORMAL);
                }
            }
            Phase::Http { .. } => c.phase = Phase::Done,
            Phase::Done => {}
        }
        c.close_after_flush = true;
        if c.deadline == 0 {
            c.deadline = tick + ticks_ceil(CLOSE_GRACE);
        }
        c.mark_dirty(&mut self.dirty);
    }

    fn on_sent(&mut self, token: Token, result: std::io::Result<usize>, mut frames: Vec<Bytes>) {
        // Kept for reuse (trimmed when a tick passes without sends: see `run`). Emptied here,
        // the one place for every driver and outcome: a failed or aborted send comes back
        // with its frames still in it, and the next connection's send would carry them.
        frames.clear();
        if frames.capacity() <= 4 * MAX_FRAMES_PER_SEND {
            self.send_vecs.push(frames);
        }
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        c.sending = false;
        c.queued = c.queued.saturating_sub(c.inflight);
        let sent = std::mem::take(&mut c.inflight);
        if c.paused && c.drained(self.settings.send_queue_limit) {
            c.paused = false;
            self.recv_switch.push((token, true));
        }
        match result {
            Ok(_) => {
                self.metrics.bytes_out.add(sent as u64);
                c.mark_dirty(&mut self.dirty);
            }
            Err(e) => {
                tracing::debug!(shard = self.id, slot = token.slot, error = %e, "send failed, closing");
                c.discard_queued();
                c.close_after_flush = true;
                c.mark_dirty(&mut self.dirty);
            }
        }
    }

    fn on_released(&mut self, token: Token) {
        let Some(slot) = self.conns.get_mut(token.slot as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|c| c.token != token) {
            return;
        }
        if let Some(c) = slot.take()
            && c.dropped > 0
            && let Some(suppressed) = self.fanout.dropped_close_log.allow(self.tick)
        {
            tracing::info!(
                shard = self.id,
                slot = token.slot,
                dropped = c.dropped,
                suppressed,
                "closed a subscriber that had messages dropped"
            );
        }
        self.free.push(token.slot);
        self.forget_peer(token);
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .connections
            .set(self.metrics.connections.get().saturating_sub(1));
    }

    /// Asks the driver to close a connection; unsubscribes it first so no new frame is
    /// queued to it.
    fn release(&mut self, token: Token) {
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        if c.releasing {
            return;
        }
        c.releasing = true;
        c.discard_queued();
        let phase = std::mem::replace(&mut c.phase, Phase::Done);
        self.control_release(token.slot, &phase);
        if let Phase::Ws {
            route: Route::Topic { topic, .. },
            ..
        } = phase
            && self.topics.unsubscribe(&topic, token.slot)
        {
            self.metrics
                .subscriptions
                .set(self.metrics.subscriptions.get().saturating_sub(1));
            self.metrics.topics.set(self.topics.len() as u64);
        }
        self.to_release.push(token);
    }

    /// Handshake and idle timeouts, pings, close deadlines: one pass per tick.
    fn timers(&mut self) {
        let now = self.tick;
        let hs = ticks_ceil(self.settings.handshake_timeout);
        let idle = self.settings.idle_timeout.map(ticks_ceil);
        let ping = self.settings.ping_interval.map(ticks_ceil);
        let mut expired = Vec::new();
        for c in self.conns.iter_mut().flatten() {
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
            match &mut c.phase {
                Phase::Http { .. } if now.saturating_sub(c.since) >= hs => {
                    self.metrics.handshake_timeouts.inc();
                    tracing::debug!(shard = self.id, slot = c.token.slot, "handshake timeout");
                    expired.push(c.token);
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
                        c.push_control(out, &mut self.dirty);
                    }
                }
                _ => {}
            }
        }
        for t in expired {
            self.release(t);
        }
    }

    /// Hands the turn's work to the driver: registrations, sends, releases, wake-ups.
    fn flush<D: Driver>(&mut self, driver: &mut D) {
        for (token, fd) in self.to_register.drain(..) {
            if let Err(e) = driver.register(token, fd) {
                tracing::warn!(shard = self.id, error = %e, "registering a connection failed");
                if let Some(c) = self
                    .conns
                    .get_mut(token.slot as usize)
                    .and_then(Option::as_mut)
                {
                    c.releasing = true;
                }
                self.to_release.push(token);
            }
        }
        let mut i = 0;
        while i < self.dirty.len() {
            let slot = self.dirty[i];
            i += 1;
            let Some(Some(c)) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            c.dirty = false;
            if c.releasing || c.sending {
                continue;
            }
            if !c.queue.is_empty() {
                let mut frames = self.send_vecs.pop().unwrap_or_default();
                let n = c.queue.len().min(MAX_FRAMES_PER_SEND);
                let mut bytes = 0;
                frames.extend(c.queue.drain(..n).inspect(|f| bytes += f.len()));
                c.inflight = bytes;
                c.sending = true;
                self.sends_since_tick += 1;
                driver.send(c.token, frames);
            } else if c.close_after_flush {
                let token = c.token;
                self.release(token);
            }
        }
        self.dirty.clear();
        for token in self.to_release.drain(..) {
            driver.release(token);
        }
        for (shard, wake) in self.wake.iter_mut().enumerate() {
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
    Echo(Bytes),
    /// A control-mode message: its opcode and a copy of its payload.
    Control(OpCode, Bytes),
    Closed,
}

/// The live connection named by `token` (not a later one in the same slot).
fn conn_mut(conns: &mut [Option<Conn>], token: Token) -> Option<&mut Conn> {
    conns
        .get_mut(token.slot as usize)
        .and_then(Option::as_mut)
        .filter(|c| c.token.generation == token.generation)
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
