//! An in-memory harness for the shard loop: a fake driver and an injected clock, so that
//! fan-out, the slow-consumer path and release ordering are tested turn by turn, without
//! sockets or timing (in the spirit of quinn-proto's `Pair`).
//!
//! The fake driver delivers the events the test scripts (accepts, bytes, EOFs), completes
//! every send at the next turn unless the test stalls that connection (its send then stays
//! in flight, as against a peer that does not read), and reports a release only once no
//! send of it is in flight, as the real drivers do. Bytes a connection was sent are kept,
//! so a test reads back exactly what a client would have received.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Settings, Shard, Shared};
use crate::bus::Bus;
use crate::config::SlowConsumerPolicy;
use crate::io::{Driver, DriverStats, Event, Token, WakeTarget};
use crate::metrics::ShardMetrics;
use crate::proto::frame::{FrameHeader, OpCode, encode_frame};

enum Scripted {
    Accepted(OwnedFd),
    Data(Token, Vec<u8>),
    RecvClosed(Token),
    Sent(Token, Vec<Bytes>),
    Released(Token),
}

/// The fake driver.
struct FakeDriver {
    events: VecDeque<Scripted>,
    /// The bytes of the current `Data` event (borrowed by the shard until the next event).
    current: Vec<u8>,
    /// Every byte written to each connection, in order.
    written: HashMap<Token, Vec<u8>>,
    /// Sends of stalled connections: in flight until the test unstalls them.
    inflight: HashMap<Token, Vec<Bytes>>,
    stalled: HashSet<Token>,
    /// Released with a send in flight: reported once that send completes.
    releasing: HashSet<Token>,
    registered: Vec<Token>,
    released: Vec<Token>,
    paused: HashSet<Token>,
    target: WakeTarget,
}

impl FakeDriver {
    fn new() -> Self {
        let event = crate::io::wake::EventFd::new().expect("eventfd");
        FakeDriver {
            events: VecDeque::new(),
            current: Vec::new(),
            written: HashMap::new(),
            inflight: HashMap::new(),
            stalled: HashSet::new(),
            releasing: HashSet::new(),
            registered: Vec::new(),
            released: Vec::new(),
            paused: HashSet::new(),
            target: WakeTarget::Ring {
                ring: -1,
                event: Arc::new(event),
            },
        }
    }

    fn complete(&mut self, token: Token, frames: Vec<Bytes>) {
        let out = self.written.entry(token).or_default();
        for f in &frames {
            out.extend_from_slice(f);
        }
        self.events.push_back(Scripted::Sent(token, frames));
        if self.releasing.remove(&token) {
            self.events.push_back(Scripted::Released(token));
        }
    }
}

impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn wake_target(&self) -> WakeTarget {
        self.target.clone()
    }

    fn register(&mut self, token: Token, _fd: OwnedFd) -> std::io::Result<()> {
        self.registered.push(token);
        Ok(())
    }

    fn send(&mut self, token: Token, frames: Vec<Bytes>) {
        assert!(
            !self.inflight.contains_key(&token),
            "one send per connection at a time"
        );
        if self.stalled.contains(&token) {
            self.inflight.insert(token, frames);
        } else {
            self.complete(token, frames);
        }
    }

    fn release(&mut self, token: Token) {
        if self.inflight.contains_key(&token) {
            self.releasing.insert(token);
        } else {
            self.events.push_back(Scripted::Released(token));
        }
    }

    fn pause_recv(&mut self, token: Token) {
        self.paused.insert(token);
    }

    fn resume_recv(&mut self, token: Token) {
        self.paused.remove(&token);
    }

    fn wake(&mut self, _target: &WakeTarget) {}

    fn wait(&mut self, _timeout: Duration) -> std::io::Result<()> {
        Ok(())
    }

    fn next_event(&mut self) -> Option<Event<'_>> {
        Some(match self.events.pop_front()? {
            Scripted::Accepted(fd) => Event::Accepted(fd),
            Scripted::Data(token, bytes) => {
                self.current = bytes;
                Event::Data {
                    token,
                    data: &mut self.current,
                }
            }
            Scripted::RecvClosed(token) => Event::RecvClosed { token, error: None },
            Scripted::Sent(token, frames) => {
                let result = Ok(crate::io::frames_len(&frames));
                Event::Sent {
                    token,
                    result,
                    frames,
                }
            }
            Scripted::Released(token) => {
                self.released.push(token);
                Event::Released { token }
            }
        })
    }

    fn stats(&self) -> DriverStats {
        DriverStats::default()
    }
}

/// What a client received, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Close(u16),
    Other(OpCode),
}

/// Shards on fake drivers, sharing one bus, turned by the test.
struct Harness {
    shards: Vec<Shard<FakeDriver>>,
    shared: Arc<Shared>,
    now: Instant,
}

fn settings() -> Settings {
    Settings {
        max_message_size: 1 << 20,
        max_frame_size: 1 << 20,
        max_header_bytes: 8192,
        send_queue_limit: 1 << 20,
        slow_consumer: SlowConsumerPolicy::Disconnect,
        ping_interval: None,
        idle_timeout: None,
        handshake_timeout: Duration::from_secs(10),
        max_connections: 10_000,
        write_delay: None,
        max_batch_bytes: crate::pubsub::batch::DEFAULT_MAX_BATCH_BYTES,
        max_topics_per_connection: 256,
        mux_error_budget: 20,
        drain_timeout: Duration::from_secs(10),
        drain_grace: Duration::ZERO,
        admin: None,
        admission: super::admission::AdmissionSettings::default(),
        http_idle_timeout: Some(Duration::from_secs(30)),
        http_max_requests_per_connection: 0,
        max_publish_batch_bytes: 4 << 20,
        max_publish_batch_items: 10_000,
        verifier: crate::auth::Verifier::disabled(),
        namespaces: Arc::new(crate::pubsub::Namespaces::new(
            crate::pubsub::NamespaceOptions::open(1 << 20),
        )),
        client_publish_rate: 0,
        client_publish_burst: 20,
        history_memory_limit: 64 << 20,
        max_recovery_publications: 1000,
    }
}

impl Harness {
    fn new(shards: usize, settings: &Settings) -> Self {
        let metrics: Vec<Arc<ShardMetrics>> = (0..shards)
            .map(|_| Arc::new(ShardMetrics::default()))
            .collect();
        let shared = Arc::new(Shared {
            bus: Bus::new(shards),
            metrics,
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            backend: "fake",
            drain: super::DrainShared::default(),
            peers: std::sync::Mutex::default(),
            reload: super::reload::ReloadShared::default(),
            link: None,
        });
        let shards = (0..shards)
            .map(|i| Shard::new(i, FakeDriver::new(), settings.clone(), Arc::clone(&shared)))
            .collect();
        Harness {
            shards,
            shared,
            now: Instant::now(),
        }
    }

    fn driver(&mut self, shard: usize) -> &mut FakeDriver {
        &mut self.shards[shard].driver
    }

    /// One turn of every shard, in order.
    fn turn(&mut self) {
        for s in &mut self.shards {
            assert!(s.turn(self.now).is_some(), "the shard keeps running");
        }
    }

    /// Turns until no shard has an event or an inbox message left (at most 20 rounds).
    fn settle(&mut self) {
        for _ in 0..20 {
            self.turn();
            if self.shards.iter().all(|s| s.driver.events.is_empty())
                && (0..self.shards.len()).all(|i| self.shared.bus.depth(i) == 0)
            {
                return;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// A client on `shard` that completed the upgrade to `path`; its 101 is consumed.
    fn connect(&mut self, shard: usize, path: &str) -> Token {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
        self.driver(shard).events.push_back(Scripted::Accepted(fd));
        self.turn();
        let token = *self.driver(shard).registered.last().expect("registered");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.driver(shard)
            .events
            .push_back(Scripted::Data(token, req.into_bytes()));
        self.settle();
        let out = self.driver(shard).written.entry(token).or_default();
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        assert!(out.starts_with(b"HTTP/1.1 101"), "upgraded");
        out.drain(..end + 4);
        token
    }

    /// A client sends one masked frame.
    fn send(&mut self, shard: usize, token: Token, opcode: OpCode, payload: &[u8]) {
        let mut b = BytesMut::new();
        encode_frame(&mut b, true, opcode, Some([1, 2, 3, 4]), payload);
        self.driver(shard)
            .events
            .push_back(Scripted::Data(token, b.to_vec()));
    }

    fn text(&mut self, shard: usize, token: Token, s: &str) {
        self.send(shard, token, OpCode::Text, s.as_bytes());
    }

    /// Takes what `token` received since the last call, decoded.
    fn received(&mut self, shard: usize, token: Token) -> Vec<Msg> {
        let out = self.driver(shard).written.entry(token).or_default();
        let mut msgs = Vec::new();
        let mut at = 0;
        while let Ok(Some((h, n))) = FrameHeader::parse(&out[at..]) {
            let len = h.payload_len as usize;
            let Some(p) = out.get(at + n..at + n + len) else {
                break;
            };
            msgs.push(match h.opcode {
                OpCode::Text => Msg::Text(String::from_utf8_lossy(p).into_owned()),
                OpCode::Binary => Msg::Binary(p.to_vec()),
                OpCode::Close => Msg::Close(u16::from_be_bytes([p[0], p[1]])),
                op => Msg::Other(op),
            });
            at += n + len;
        }
        out.drain(..at);
        msgs
    }

    fn metrics(&self, shard: usize) -> &ShardMetrics {
        &self.shared.metrics[shard]
    }
}

fn texts(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m {
            Msg::Text(t) => t.clone(),
            other => panic!("not text: {other:?}"),
        })
        .collect()
}

#[test]
fn a_chat_room_gets_everything_but_its_own_in_one_turn() {
    let mut h = Harness::new(1, &settings());
    let members: Vec<Token> = (0..50).map(|_| h.connect(0, "/ws/room")).collect();
    for (i, &m) in members.iter().enumerate() {
        h.text(0, m, &format!("from {i}"));
    }
    h.settle();
    for (i, &m) in members.iter().enumerate() {
        let got = texts(&h.received(0, m));
        let want: Vec<String> = (0..50)
            .filter(|&j| j != i)
            .map(|j| format!("from {j}"))
            .collect();
        assert_eq!(got, want, "member {i}: everyone else's, in order, once");
    }
    assert_eq!(h.metrics(0).messages_out.get(), 50 * 49);
}

#[test]
fn a_slow_subscriber_is_disconnected_and_the_others_are_not_held_back() {
    let mut s = settings();
    s.send_queue_limit = 4096;
    let mut h = Harness::new(1, &s);
    let slow = h.connect(0, "/ws/t");
    let fast = h.connect(0, "/ws/t");
    let publisher = h.connect(0, "/ws/t");
    h.driver(0).stalled.insert(slow);
    let payload = "x".repeat(500);
    for _ in 0..40 {
        h.text(0, publisher, &payload);
        h.settle();
    }
    assert_eq!(
        texts(&h.received(0, fast)).len(),
        40,
        "the fast one got all"
    );
    assert_eq!(h.metrics(0).slow_disconnects.get(), 1, "counted once");
    // The slow one had a batch in flight; once that completes it gets the close, and only
    // after that is it released.
    assert!(
        h.driver(0).released.is_empty(),
        "not released with a send in flight"
    );
    h.driver(0).stalled.remove(&slow);
    let frames = h
        .driver(0)
        .inflight
        .remove(&slow)
        .expect("a send in flight");
    h.driver(0).complete(slow, frames);
    h.advance(Duration::from_millis(100));
    h.settle();
    let got = h.received(0, slow);
    assert_eq!(got.last(), Some(&Msg::Close(1008)), "closed as too slow");
    assert!(
        got.len() < 40,
        "its queued messages were discarded, not all sent"
    );
    assert_eq!(h.driver(0).released, vec![slow]);
    // The others go on.
    h.text(0, publisher, "after");
    h.settle();
    assert_eq!(texts(&h.received(0, fast)), ["after"]);
}

#[test]
fn a_slot_is_reused_only_after_its_release_completes() {
    let mut h = Harness::new(1, &settings());
    let a = h.connect(0, "/ws/t");
    let publisher = h.connect(0, "/ws/t");
    h.driver(0).stalled.insert(a);
    h.text(0, publisher, "one");
    h.settle();
    assert!(
        h.driver(0).inflight.contains_key(&a),
        "a's send is in flight"
    );
    // a's peer goes away; the shard waits for the send, then the close grace ends.
    h.driver(0).events.push_back(Scripted::RecvClosed(a));
    h.settle();
    h.advance(Duration::from_secs(3));
    h.settle();
    assert!(
        h.driver(0).released.is_empty(),
        "released only once the send completes"
    );
    // Meanwhile a new connection does not get a's slot.
    let b = h.connect(0, "/ws/t");
    assert_ne!(b.slot, a.slot);
    h.text(0, publisher, "two");
    h.settle();
    assert_eq!(texts(&h.received(0, b)), ["two"]);
    // The send completes: only now is a released and its slot free again.
    h.driver(0).stalled.remove(&a);
    let frames = h.driver(0).inflight.remove(&a).expect("in flight");
    h.driver(0).complete(a, frames);
    h.settle();
    assert_eq!(h.driver(0).released, vec![a]);
    assert_eq!(
        texts(&h.received(0, a)),
        ["one"],
        "a got nothing after it closed"
    );
    let c = h.connect(0, "/ws/other");
    assert_eq!(c.slot, a.slot, "the freed slot is reused");
    assert_ne!(c.generation, a.generation);
    h.text(0, publisher, "three");
    h.settle();
    assert!(
        h.received(0, c).is_empty(),
        "a's old subscription does not follow its slot"
    );
    assert_eq!(texts(&h.received(0, b)), ["three"]);
}

#[test]
fn batches_cross_shards_only_where_a_subscriber_is() {
    // "t0" has its home on shard 0 (of 3), the publisher's: nothing is forwarded.
    assert_eq!(crate::pubsub::home_shard("t0", 3), 0);
    let mut h = Harness::new(3, &settings());
    let sub1 = h.connect(1, "/ws/t0");
    let publisher = h.connect(0, "/ws/t0");
    h.text(0, publisher, "hello");
    h.settle();
    assert_eq!(texts(&h.received(1, sub1)), ["hello"]);
    assert_eq!(h.metrics(1).bus_in.get(), 1);
    assert_eq!(
        h.metrics(2).bus_in.get(),
        0,
        "shard 2 has no subscriber of t"
    );
    assert_eq!(h.metrics(1).bus_delivered.get(), 1);
    // The subscriber leaves: shard 0 stops sending.
    h.driver(1).events.push_back(Scripted::RecvClosed(sub1));
    h.settle();
    h.text(0, publisher, "nobody");
    h.settle();
    assert_eq!(h.metrics(1).bus_in.get(), 1, "withdrawn: nothing more sent");
    assert_eq!(
        h.metrics(1).bus_stale.get(),
        0,
        "and nothing was sent in vain"
    );
    // A topic nobody subscribes to anywhere: a named (mux) publish is taken nowhere.
    let mux = h.connect(2, "/ws");
    h.text(2, mux, r#"{"type":"publish","topic":"void","data":"x"}"#);
    h.settle();
    assert_eq!(h.metrics(2).unrouted.get(), 1);
    assert_eq!(h.metrics(0).bus_in.get() + h.metrics(1).bus_in.get(), 1);
}

#[test]
fn one_order_per_topic_whoever_publishes_and_publishers_never_get_their_own() {
    // "t" has its home on shard 2 (of 3): publishes on shards 0 and 1 are forwarded there,
    // numbered in one order, and come back.
    assert_eq!(crate::pubsub::home_shard("t", 3), 2);
    let mut h = Harness::new(3, &settings());
    let a = h.connect(0, "/ws/t");
    let b = h.connect(1, "/ws/t");
    let c = h.connect(1, "/ws/t");
    let d = h.connect(2, "/ws/t");
    h.text(0, a, "a1");
    h.text(1, b, "b1");
    h.text(0, a, "a2");
    h.settle();
    h.text(1, b, "b2");
    h.text(2, d, "d1");
    h.settle();
    let order = texts(&h.received(1, c));
    assert_eq!(order.len(), 5, "{order:?}");
    assert_eq!(
        texts(&h.received(2, d)),
        order
            .iter()
            .filter(|m| *m != "d1")
            .cloned()
            .collect::<Vec<_>>(),
        "the same order on every shard, minus d's own"
    );
    let without = |who: &str| -> Vec<String> {
        order
            .iter()
            .filter(|m| !m.starts_with(who))
            .cloned()
            .collect()
    };
    assert_eq!(
        texts(&h.received(0, a)),
        without("a"),
        "a gets everyone's but its own"
    );
    assert_eq!(texts(&h.received(1, b)), without("b"));
    let pos = |m: &str| order.iter().position(|x| x == m);
    assert!(
        pos("a1") < pos("a2") && pos("b1") < pos("b2"),
        "per publisher, publish order"
    );
    assert!(h.metrics(0).history.forwarded.get() > 0);
    assert!(h.metrics(1).history.forwarded.get() > 0);
    assert_eq!(
        h.metrics(2).history.forwarded.get(),
        0,
        "the home forwards nothing"
    );
}

impl Harness {
    /// A plain-HTTP client on `shard`: accepted and registered, nothing sent yet.
    fn accept(&mut self, shard: usize) -> Token {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
        self.driver(shard).events.push_back(Scripted::Accepted(fd));
        self.turn();
        *self.driver(shard).registered.last().expect("registered")
    }

    fn push(&mut self, shard: usize, token: Token, bytes: &[u8]) {
        self.driver(shard)
            .events
            .push_back(Scripted::Data(token, bytes.to_vec()));
    }

    /// Takes the complete HTTP answers `token` received: (status, body) in order.
    fn answers(&mut self, shard: usize, token: Token) -> Vec<(u16, String)> {
        let out = self.driver(shard).written.entry(token).or_default();
        let mut got = Vec::new();
        let mut at = 0;
        while let Some(end) = out[at..].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[at..at + end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let body_at = at + end + 4;
            let Some(body) = out.get(body_at..body_at + len) else {
                break;
            };
            let status = head[9..12].parse().unwrap_or(0);
            got.push((status, String::from_utf8_lossy(body).into_owned()));
            at = body_at + len;
        }
        out.drain(..at);
        got
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn a_deferred_answer_holds_what_is_pipelined_behind_it_in_order() {
    let mut h = Harness::new(1, &settings());
    let t = h.accept(0);
    h.push(
        0,
        t,
        b"GET /__test/deferred HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    h.settle();
    assert!(
        h.answers(0, t).is_empty(),
        "nothing answered before the deferred answer"
    );
    assert!(!h.driver(0).paused.contains(&t), "a few bytes: still read");
    // More pipelined requests arrive meanwhile: kept unparsed; past --max-header-bytes of
    // them the connection is no longer read.
    let more = HEALTH.repeat(8192 / HEALTH.len() + 1);
    h.push(0, t, &more);
    h.settle();
    assert!(h.answers(0, t).is_empty());
    assert!(h.driver(0).paused.contains(&t), "paused while deferred");
    assert!(
        h.shards[0]
            .st
            .http_answer_deferred(t, 200, "text/plain", b"later\n")
    );
    h.settle();
    let got = h.answers(0, t);
    assert_eq!(got[0], (200, "later\n".into()), "the deferred answer first");
    assert_eq!(got[1], (200, "ok\n".into()));
    assert_eq!(got[2].0, 404);
    assert_eq!(
        got.len(),
        3 + more.len() / HEALTH.len(),
        "then every one behind it"
    );
    assert!(got[3..].iter().all(|a| *a == (200, "ok\n".into())));
    assert!(!h.driver(0).paused.contains(&t), "read again");
    assert!(
        !h.shards[0]
            .st
            .http_answer_deferred(t, 200, "text/plain", b"twice\n"),
        "no answer is pending any more"
    );
    // The connection is still open for more.
    h.push(0, t, HEALTH);
    h.settle();
    assert_eq!(h.answers(0, t), vec![(200, "ok\n".into())]);
    // A deferred answer to a connection that went away is dropped.
    h.push(0, t, b"GET /__test/deferred HTTP/1.1\r\nHost: x\r\n\r\n");
    h.settle();
    h.driver(0).events.push_back(Scripted::RecvClosed(t));
    h.settle();
    h.advance(Duration::from_secs(3));
    h.settle();
    assert_eq!(
        h.driver(0).released,
        vec![t],
        "released after the close grace"
    );
    assert!(
        !h.shards[0]
            .st
            .http_answer_deferred(t, 200, "text/plain", b"late\n")
    );
}

#[test]
fn a_deferred_answer_still_goes_out_after_the_client_half_closes() {
    let mut h = Harness::new(1, &settings());
    let t = h.accept(0);
    h.push(0, t, b"GET /__test/deferred HTTP/1.1\r\nHost: x\r\n\r\n");
    h.driver(0).events.push_back(Scripted::RecvClosed(t));
    h.settle();
    assert!(
        h.driver(0).released.is_empty(),
        "kept for the answer it is owed"
    );
    assert!(
        h.shards[0]
            .st
            .http_answer_deferred(t, 200, "text/plain", b"later\n")
    );
    h.settle();
    assert_eq!(h.answers(0, t), vec![(200, "later\n".into())]);
    assert_eq!(h.driver(0).released, vec![t], "then closed");
}

#[test]
fn pipelining_without_reading_pauses_then_every_answer_goes_out_in_order() {
    let mut s = settings();
    s.send_queue_limit = 4096;
    let mut h = Harness::new(1, &s);
    let t = h.accept(0);
    h.driver(0).stalled.insert(t);
    let mut reqs = Vec::new();
    // Alternating answers, so that their order shows.
    let want: Vec<u16> = (0..200)
        .map(|i| if i % 3 == 0 { 404 } else { 200 })
        .collect();
    for &w in &want {
        let path = if w == 404 { "/nope" } else { "/health" };
        reqs.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    h.push(0, t, &reqs);
    h.settle();
    assert!(
        h.driver(0).paused.contains(&t),
        "paused: its answers back up"
    );
    let queued = h.shards[0].st.conns.get_mut(t).expect("open").queued;
    assert!(
        queued <= 4096 / 2 + 256,
        "at most half the limit plus one answer queued: {queued}"
    );
    let parsed = h.metrics(0).http_requests.get();
    assert!(parsed < 200, "the rest is kept unparsed: {parsed}");
    // The client reads: everything goes out, in order.
    h.driver(0).stalled.remove(&t);
    let frames = h.driver(0).inflight.remove(&t).expect("a send in flight");
    h.driver(0).complete(t, frames);
    for _ in 0..20 {
        h.settle();
    }
    let got: Vec<u16> = h.answers(0, t).into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, want, "every request answered, in order");
    assert_eq!(h.metrics(0).http_requests.get(), 200);
    assert_eq!(h.metrics(0).http_keepalive_reuses.get(), 199);
    assert!(!h.driver(0).paused.contains(&t));
}

#[test]
fn an_upgrade_may_follow_keepalive_requests_on_one_connection() {
    let mut h = Harness::new(1, &settings());
    let publisher = h.connect(0, "/ws/room");
    let t = h.accept(0);
    let mut bytes = HEALTH.to_vec();
    bytes.extend_from_slice(
        b"GET /ws/room HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    // A frame right behind the upgrade, in the same receive: the WebSocket's first input.
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, true, OpCode::Text, Some([1, 2, 3, 4]), b"hi");
    bytes.extend_from_slice(&frame);
    h.push(0, t, &bytes);
    h.settle();
    let out = h.driver(0).written.entry(t).or_default().clone();
    let text = String::from_utf8_lossy(&out);
    let ok = text.find("HTTP/1.1 200 OK").expect("the /health answer");
    let up = text.find("HTTP/1.1 101").expect("then the upgrade");
    assert!(ok < up, "in order: {text}");
    assert_eq!(
        texts(&h.received(0, publisher)),
        ["hi"],
        "the frame was published"
    );
}

#[test]
fn pipelined_requests_cut_anywhere_get_the_same_answers() {
    let mut h = Harness::new(1, &settings());
    let sub = h.connect(0, "/ws/cut");
    let mut stream = Vec::new();
    let mut want = Vec::new();
    let mut published = Vec::new();
    for i in 0..40 {
        match i % 5 {
            0 => {
                let body = format!("p{i}");
                stream.extend_from_slice(
                    format!(
                        "POST /publish/cut HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
                want.push(202);
                published.push(body);
            }
            1 => {
                let body = format!(r#"[{{"topic":"cut","data":"b{i}"}},{{"topic":"cut"}}]"#);
                stream.extend_from_slice(
                    format!(
                        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
                want.push(200);
                published.push(format!("b{i}"));
            }
            2 => {
                stream.extend_from_slice(HEALTH);
                want.push(200);
            }
            3 => {
                stream.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
                want.push(404);
            }
            _ => {
                // Empty lines before a request line are allowed (RFC 9112 §2.2).
                stream.extend_from_slice(
                    b"\r\nGET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                );
                want.push(200);
            }
        }
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..50 {
        let t = h.accept(0);
        let mut at = 0;
        while at < stream.len() {
            let n = rng.usize(1..=64).min(stream.len() - at);
            h.push(0, t, &stream[at..at + n]);
            h.turn();
            at += n;
        }
        h.settle();
        let got: Vec<u16> = h.answers(0, t).into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, want, "round {round}");
        assert_eq!(texts(&h.received(0, sub)), published, "round {round}");
        h.driver(0).events.push_back(Scripted::RecvClosed(t));
        h.settle();
    }
}

#[test]
fn a_large_body_buffer_grows_with_its_bytes_never_past_its_length() {
    let mut s = settings();
    s.max_message_size = 4 << 20;
    s.max_frame_size = 4 << 20;
    s.send_queue_limit = 8 << 20;
    let mut h = Harness::new(1, &s);
    let sub = h.connect(0, "/ws/big");
    let t = h.accept(0);
    let len = 3_000_001;
    let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let head = format!(
        "POST /publish/big HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n"
    );
    let mut first = head.into_bytes();
    first.extend_from_slice(&body[..10]);
    h.push(0, t, &first);
    h.settle();
    let cap = |h: &mut Harness| match &h.shards[0].st.conns.get_mut(t).expect("open").phase {
        super::conn::Phase::Http { buf, .. } => buf.capacity(),
        _ => panic!("still reading the body"),
    };
    assert!(
        cap(&mut h) <= 64 * 1024,
        "a head alone reserves little: {}",
        cap(&mut h)
    );
    let mut at = 10;
    while at < len - 100_000 {
        h.push(0, t, &body[at..at + 100_000]);
        h.settle();
        at += 100_000;
        assert!(cap(&mut h) <= len, "never past the Content-Length");
    }
    // The rest, and a pipelined request in the same receive.
    let mut last = body[at..].to_vec();
    last.extend_from_slice(HEALTH);
    h.push(0, t, &last);
    h.settle();
    let statuses: Vec<u16> = h.answers(0, t).into_iter().map(|(s, _)| s).collect();
    assert_eq!(statuses, [202, 200]);
    assert_eq!(
        h.received(0, sub),
        vec![Msg::Text(String::from_utf8(body).unwrap())]
    );
}
