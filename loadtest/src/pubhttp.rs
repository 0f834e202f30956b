//! `pubhttp`: HTTP publish load. Publishes small messages with
//! `POST /publish/{topic}` (or batches with `POST /publish`) over keep-alive
//! connections (request/response or pipelined, mio, connections spread over
//! `--threads`) or over a new TCP connection per request (today's baseline:
//! blocking sockets, one loop per `--connections`). Counts messages accepted
//! (2xx answers x items) in the measured window, answer latency, answers by
//! status, and the server's CPU over the window, so that messages per
//! server-CPU-second can be compared between modes.
//!
//! Requests are built once ([`crate::http_req`]); the hot loop writes slices of
//! a pre-built burst and parses answers in place ([`crate::http_in`]): nothing
//! is allocated per message. A keep-alive connection the server closes (or
//! answers with `Connection: close`) is reopened; the requests it had in
//! flight count as `unanswered`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::cli::PubHttpArgs;
use crate::http_in::{Answer, HttpIn};
use crate::http_req::{RequestSpec, burst, request};
use crate::procstat::{self, pct};
use crate::report::write_json;
use crate::stats::{Percentiles, new_hist};
use crate::sys::{now_ns, thread_cpu_ns};
use crate::target::{Scheme, Target};

/// How long answers still outstanding at the end of the window are waited for.
const DRAIN: Duration = Duration::from_secs(1);
/// Most bytes of pre-built requests per connection burst.
const BURST_BYTES: usize = 4 << 20;

/// The result of `pubhttp` (`--json`).
#[derive(Debug, Default, Serialize)]
pub struct PubHttpReport {
    /// Messages accepted per second in the window (2xx answers x items).
    pub messages_per_s: f64,
    /// Answers per second in the window (any status).
    pub requests_per_s: f64,
    /// Messages accepted in the window.
    pub accepted: u64,
    /// Answers in the window (any status).
    pub answers: u64,
    /// Answer latency (µs) of answers received in the window: request queued
    /// (per-request mode: connect started) to answer complete.
    pub latency_us: Percentiles,
    /// Every answer of the run by status code.
    pub status: BTreeMap<String, u64>,
    /// Non-2xx answers in the window.
    pub error_answers: u64,
    /// Connection-level failures (connect, I/O, unreadable answers) by reason, whole run.
    pub io_errors: BTreeMap<String, u64>,
    /// Requests in flight when their connection ended without answering them.
    pub unanswered: u64,
    /// TCP connections opened (keep-alive: reconnects included).
    pub connections_opened: u64,
    /// Server CPU over the window (% of a core), null without --server-pid.
    pub server_cpu_pct: Option<f64>,
    /// Messages accepted per second of server CPU in the window.
    pub messages_per_server_cpu_s: Option<f64>,
    /// This process over the window (% of a core).
    pub generator_cpu_pct: f64,
    /// The busiest generator thread (% of a core).
    pub generator_max_thread_pct: f64,
    /// A generator thread was above 90% of its core: the figure may be the generator's limit.
    pub generator_limited: bool,
    /// The parameters.
    pub mode: PubHttpMode,
    /// Window length (s).
    pub duration_s: f64,
    /// Things worth knowing.
    pub notes: Vec<String>,
    /// The command line.
    pub command: Vec<String>,
}

/// The parameters of a `pubhttp` run, as reported.
#[derive(Debug, Default, Serialize)]
pub struct PubHttpMode {
    /// Target URL as given.
    pub url: String,
    /// Topic.
    pub topic: String,
    /// Connections (or per-request loops).
    pub connections: usize,
    /// Keep-alive.
    pub keepalive: bool,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Items per request (0 = single publishes).
    pub batch: usize,
    /// Message size.
    pub size: usize,
    /// Generator threads.
    pub threads: usize,
    /// Bytes of one request.
    pub request_bytes: usize,
}

/// What every sending thread shares.
#[derive(Debug)]
struct Plan {
    addr: SocketAddr,
    request: Vec<u8>,
    burst: Vec<u8>,
    items: u64,
    pipeline: usize,
    connect_timeout: Duration,
    window: (u64, u64),
    drain_until: u64,
    keep_body: bool,
}

/// Live totals for the per-second line.
#[derive(Debug, Default)]
struct Live {
    accepted: AtomicU64,
    failures: AtomicU64,
}

/// One thread's results.
#[derive(Debug)]
struct Tally {
    accepted: u64,
    answers: u64,
    error_answers: u64,
    status: Box<[u64; 600]>,
    io_errors: BTreeMap<String, u64>,
    unanswered: u64,
    opened: u64,
    hist: Histogram<u64>,
    cpu_at: [Option<u64>; 2],
    first_ok_body: Option<Vec<u8>>,
    /// Accepted over the whole run, and how much of it went to [`Live`] already.
    live_accepted: u64,
    live_reported: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            accepted: 0,
            answers: 0,
            error_answers: 0,
            status: Box::new([0; 600]),
            io_errors: BTreeMap::new(),
            unanswered: 0,
            opened: 0,
            hist: new_hist(),
            cpu_at: [None, None],
            first_ok_body: None,
            live_accepted: 0,
            live_reported: 0,
        }
    }

    fn fail(&mut self, live: &Live, reason: &str) {
        live.failures.fetch_add(1, Ordering::Relaxed);
        match self.io_errors.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.io_errors.insert(reason.to_string(), 1);
            }
        }
    }

    /// Thread CPU when the window opens and closes (the first look after each edge).
    fn mark_cpu(&mut self, now: u64, window: (u64, u64)) {
        if self.cpu_at[0].is_none() && now >= window.0 {
            self.cpu_at[0] = Some(thread_cpu_ns());
        }
        if self.cpu_at[1].is_none() && now >= window.1 {
            self.cpu_at[1] = Some(thread_cpu_ns());
        }
    }

    /// Counts one answer received at `now` for a request sent at `sent`.
    fn answer(&mut self, plan: &Plan, a: &Answer, body: &[u8], sent: Option<u64>, now: u64) {
        let ok = (200..300).contains(&a.status);
        self.status[usize::from(a.status).min(599)] += 1;
        if ok {
            self.live_accepted += plan.items;
            if plan.keep_body && self.first_ok_body.is_none() {
                self.first_ok_body = Some(body.to_vec());
            }
        }
        if (plan.window.0..plan.window.1).contains(&now) {
            self.answers += 1;
            if ok {
                self.accepted += plan.items;
            } else {
                self.error_answers += 1;
            }
            if let Some(s) = sent {
                self.hist.saturating_record(now.saturating_sub(s).max(1));
            }
        }
    }

    fn merge(&mut self, o: Tally) {
        self.accepted += o.accepted;
        self.answers += o.answers;
        self.error_answers += o.error_answers;
        for (a, b) in self.status.iter_mut().zip(o.status.iter()) {
            *a += b;
        }
        for (k, v) in o.io_errors {
            *self.io_errors.entry(k).or_insert(0) += v;
        }
        self.unanswered += o.unanswered;
        self.opened += o.opened;
        let _ = self.hist.add(&o.hist);
        if self.first_ok_body.is_none() {
            self.first_ok_body = o.first_ok_body;
        }
    }
}

fn io_reason(what: &str, e: &io::Error) -> String {
    format!("{what}: {}", e.kind())
}

/// A blocking connect with the options every request connection gets.
fn open(plan: &Plan) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&plan.addr, plan.connect_timeout)?;
    s.set_nodelay(true)?;
    Ok(s)
}

// ---------------------------------------------------------------- per-request connections

/// One loop of per-request connections: connect, send, read the answer, wait
/// for the server's close (so the TIME_WAIT stays on the server's side and this
/// side's ephemeral ports do not run out), repeat until the window ends.
fn per_request_loop(plan: &Plan, live: &Live) -> Tally {
    let mut t = Tally::new();
    let mut inbuf = HttpIn::new(16 * 1024);
    let mut drain = [0u8; 512];
    loop {
        let started = now_ns();
        t.mark_cpu(started, plan.window);
        if started >= plan.window.1 {
            break;
        }
        let mut s = match open(plan) {
            Ok(s) => s,
            Err(e) => {
                t.fail(live, &io_reason("connect", &e));
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
        };
        t.opened += 1;
        let _ = s.set_read_timeout(Some(plan.connect_timeout));
        if let Err(e) = s.write_all(&plan.request) {
            t.fail(live, &io_reason("write", &e));
            t.unanswered += 1;
            continue;
        }
        inbuf.reset();
        let got = loop {
            match s.read(inbuf.spare()) {
                Ok(0) => break inbuf.at_eof().map_err(|e| e.to_string()),
                Ok(n) => {
                    inbuf.filled(n);
                    match inbuf.next_answer() {
                        Ok(Some(a)) => break Ok(Some(a)),
                        Ok(None) => {}
                        Err(e) => break Err(e.to_string()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(io_reason("read", &e)),
            }
        };
        let now = now_ns();
        match got {
            Ok(Some(a)) => t.answer(plan, &a, inbuf.body(&a), Some(started), now),
            Ok(None) => {
                t.unanswered += 1;
                t.fail(live, "closed without an answer");
            }
            Err(r) => {
                t.unanswered += 1;
                t.fail(live, &r);
            }
        }
        // Wait (briefly) for the server's FIN before closing.
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        while let Ok(n) = s.read(&mut drain) {
            if n == 0 {
                break;
            }
        }
        // Threads add what they accepted since their last report (several threads, one total).
        live.accepted
            .fetch_add(t.live_accepted - t.live_reported, Ordering::Relaxed);
        t.live_reported = t.live_accepted;
    }
    t.mark_cpu(u64::MAX, plan.window);
    t
}

// ---------------------------------------------------------------- keep-alive connections

#[derive(Debug)]
struct Conn {
    stream: Option<mio::net::TcpStream>,
    /// Bytes of requests queued and not yet written.
    owed: usize,
    /// Offset into the cycle of identical requests.
    phase: usize,
    /// Send times of the requests in flight, oldest first.
    sent: VecDeque<u64>,
    inbuf: HttpIn,
}

impl Conn {
    fn in_flight(&self) -> usize {
        self.sent.len()
    }
}

fn connect_into(
    c: &mut Conn,
    i: usize,
    poll: &Poll,
    plan: &Plan,
    t: &mut Tally,
    live: &Live,
) -> bool {
    match open(plan).and_then(|s| {
        s.set_nonblocking(true)?;
        let mut m = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut m, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        Ok(m)
    }) {
        Ok(m) => {
            t.opened += 1;
            c.stream = Some(m);
            c.owed = 0;
            c.phase = 0;
            c.sent.clear();
            c.inbuf.reset();
            true
        }
        Err(e) => {
            t.fail(live, &io_reason("connect", &e));
            false
        }
    }
}

/// The connection is over: whatever it had in flight stays unanswered.
fn drop_conn(c: &mut Conn, poll: &Poll, t: &mut Tally) {
    if let Some(mut s) = c.stream.take() {
        let _ = poll.registry().deregister(&mut s);
    }
    t.unanswered += c.in_flight() as u64;
    c.sent.clear();
    c.owed = 0;
    c.phase = 0;
}

/// Queues requests up to the pipeline depth and writes what the socket takes.
fn refill_and_write(c: &mut Conn, plan: &Plan, now: u64, sending: bool) -> io::Result<()> {
    if sending {
        while c.in_flight() < plan.pipeline {
            c.sent.push_back(now);
            c.owed += plan.request.len();
        }
    }
    let Some(s) = c.stream.as_mut() else {
        return Ok(());
    };
    let len = plan.request.len();
    while c.owed > 0 {
        let avail = (plan.burst.len() - c.phase).min(c.owed);
        match s.write(&plan.burst[c.phase..c.phase + avail]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                c.owed -= n;
                c.phase = (c.phase + n) % len;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there and counts the complete answers. Ok(false): the
/// connection ended (server close, `Connection: close`, or an error noted in `t`).
fn read_answers(c: &mut Conn, plan: &Plan, t: &mut Tally, live: &Live) -> bool {
    loop {
        let Some(s) = c.stream.as_mut() else {
            return false;
        };
        let r = s.read(c.inbuf.spare());
        let now = now_ns();
        match r {
            Ok(0) => {
                match c.inbuf.at_eof() {
                    Ok(Some(a)) => {
                        let sent = c.sent.pop_front();
                        let body = c.inbuf.body(&a);
                        t.answer(plan, &a, body, sent, now);
                    }
                    Ok(None) => {}
                    Err(e) => t.fail(live, &e.to_string()),
                }
                if c.in_flight() > 0 {
                    t.fail(live, "server closed with requests in flight");
                }
                return false;
            }
            Ok(n) => {
                c.inbuf.filled(n);
                loop {
                    match c.inbuf.next_answer() {
                        Ok(Some(a)) => {
                            let sent = c.sent.pop_front();
                            if sent.is_none() {
                                t.fail(live, "answer without a request");
                            }
                            let body = c.inbuf.body(&a);
                            t.answer(plan, &a, body, sent, now);
                            if a.close {
                                return false;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            t.fail(live, &e.to_string());
                            return false;
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                t.fail(live, &io_reason("read", &e));
                return false;
            }
        }
    }
}

fn keepalive_thread(plan: &Plan, n: usize, live: &Live) -> io::Result<Tally> {
    let mut t = Tally::new();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Conn> = (0..n)
        .map(|_| Conn {
            stream: None,
            owed: 0,
            phase: 0,
            sent: VecDeque::with_capacity(plan.pipeline),
            inbuf: HttpIn::new(64 * 1024),
        })
        .collect();
    loop {
        let now = now_ns();
        t.mark_cpu(now, plan.window);
        let sending = now < plan.window.1;
        if !sending && (now >= plan.drain_until || conns.iter().all(|c| c.in_flight() == 0)) {
            break;
        }
        for (i, c) in conns.iter_mut().enumerate() {
            if c.stream.is_none() && (!sending || !connect_into(c, i, &poll, plan, &mut t, live)) {
                continue;
            }
            if let Err(e) = refill_and_write(c, plan, now, sending) {
                t.fail(live, &io_reason("write", &e));
                drop_conn(c, &poll, &mut t);
            }
        }
        match poll.poll(&mut events, Some(Duration::from_millis(1))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            let input = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            if input && !read_answers(c, plan, &mut t, live) {
                drop_conn(c, &poll, &mut t);
                continue;
            }
            // Answers free pipeline slots: refill at once rather than after the next poll.
            let now = now_ns();
            if let Err(e) = refill_and_write(c, plan, now, now < plan.window.1) {
                t.fail(live, &io_reason("write", &e));
                drop_conn(c, &poll, &mut t);
            }
        }
        if t.live_accepted != t.live_reported {
            live.accepted
                .fetch_add(t.live_accepted - t.live_reported, Ordering::Relaxed);
            t.live_reported = t.live_accepted;
        }
    }
    for c in conns.iter_mut() {
        drop_conn(c, &poll, &mut t);
    }
    t.mark_cpu(u64::MAX, plan.window);
    Ok(t)
}

// ---------------------------------------------------------------- the subcommand

/// Runs `pubhttp`.
pub fn pubhttp(args: &PubHttpArgs, command: Vec<String>) -> Result<PubHttpReport, String> {
    args.validate()?;
    let server_pid = args.server_pid.filter(|&p| p != 0);
    if let Some(p) = server_pid {
        procstat::sample(&p.to_string()).map_err(|e| format!("--server-pid {p}: {e}"))?;
    }
    let target = Target::parse(&args.url, args.allow_remote)?;
    if target.scheme != Scheme::Http {
        return Err("--url must be an http:// URL".into());
    }
    let (path, query) = match target.path_template.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.path_template.clone(), String::new()),
    };
    let prefix = path.trim_end_matches('/');
    let req = request(&RequestSpec {
        host: &target.host_header,
        prefix,
        query: &query,
        topic: &args.topic,
        size: args.size,
        batch: args.batch,
        headers: &args.headers,
        close: !args.keepalive,
    });
    let plan_burst = burst(&req, args.pipeline + 1, BURST_BYTES);
    let mut notes = Vec::new();
    let _ = crate::sys::raise_nofile_limit();

    let t0 = now_ns();
    let ws = t0 + args.warmup.as_nanos() as u64;
    let we = ws + args.duration.as_nanos() as u64;
    let plan = Arc::new(Plan {
        addr: target.addr,
        burst: plan_burst,
        request: req,
        items: args.batch.max(1) as u64,
        pipeline: args.pipeline,
        connect_timeout: args.connect_timeout,
        window: (ws, we),
        drain_until: we + DRAIN.as_nanos() as u64,
        keep_body: args.batch > 0,
    });
    let live = Arc::new(Live::default());
    let loops = if args.keepalive {
        args.threads
    } else {
        args.connections
    };
    let mut handles = Vec::with_capacity(loops);
    for k in 0..loops {
        let plan = Arc::clone(&plan);
        let live = Arc::clone(&live);
        let per = args.connections / loops + usize::from(k < args.connections % loops);
        let keepalive = args.keepalive;
        let h = thread::Builder::new()
            .name(format!("pubhttp-{k}"))
            .spawn(move || {
                if keepalive {
                    keepalive_thread(&plan, per, &live)
                } else {
                    Ok(per_request_loop(&plan, &live))
                }
            })
            .map_err(|e| format!("spawn: {e}"))?;
        handles.push(h);
    }

    // The window: CPU of the server and of this process at both ends, a live line per second.
    sleep_until(ws);
    let s0 = server_pid.and_then(|p| procstat::sample(&p.to_string()).ok());
    let g0 = procstat::sample("self").ok();
    let w0 = now_ns();
    let mut last = (w0, live.accepted.load(Ordering::Relaxed));
    while now_ns() < we {
        sleep_until((now_ns() + 1_000_000_000).min(we));
        if !args.quiet {
            let now = now_ns();
            let acc = live.accepted.load(Ordering::Relaxed);
            let rate = (acc - last.1.min(acc)) as f64 * 1e9 / (now - last.0).max(1) as f64;
            eprintln!(
                "pubhttp: {:.1}s  {} msgs/s accepted  {} failures",
                (now - w0) as f64 / 1e9,
                crate::report::si(rate),
                live.failures.load(Ordering::Relaxed)
            );
            last = (now, acc);
        }
    }
    let s1 = server_pid.and_then(|p| procstat::sample(&p.to_string()).ok());
    let g1 = procstat::sample("self").ok();
    let w1 = now_ns();

    let mut total = Tally::new();
    let mut thread_pcts = Vec::new();
    for h in handles {
        let t = match h.join() {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(format!("a sending thread failed: {e}")),
            Err(_) => return Err("a sending thread panicked".into()),
        };
        if let [Some(a), Some(b)] = t.cpu_at {
            thread_pcts.push(pct(a, b, we - ws));
        }
        total.merge(t);
    }
    let window_s = (we - ws) as f64 / 1e9;
    let server_cpu_pct = match (s0, s1) {
        (Some(a), Some(b)) => Some(pct(a.cpu_ns, b.cpu_ns, w1 - w0)),
        _ => None,
    };
    let server_cpu_s = match (s0, s1) {
        (Some(a), Some(b)) => Some(b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e9),
        _ => None,
    };
    let max_thread = thread_pcts.iter().copied().fold(0.0, f64::max);
    if total.answers == 0 {
        notes.push("no answer arrived in the measured window".into());
    }
    if let Some(body) = &total.first_ok_body {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => match v.get("results").and_then(|r| r.as_array()) {
                Some(r) if r.len() == args.batch => {}
                Some(r) => notes.push(format!(
                    "a batch answer listed {} results for {} items",
                    r.len(),
                    args.batch
                )),
                None => notes.push("a batch answer had no \"results\" array".into()),
            },
            Err(_) => notes.push("a batch answer was not JSON".into()),
        }
    }
    if !args.keepalive {
        notes.push(
            "per-request connections: latency includes the TCP connect; each loop waits for the server's close before the next request".into(),
        );
    }
    if args.keepalive && total.opened > args.connections as u64 {
        notes.push(format!(
            "{} connections were opened for {} keep-alive connections: the server closed some",
            total.opened, args.connections
        ));
    }
    let status = total
        .status
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 0)
        .map(|(code, &n)| (code.to_string(), n))
        .collect();
    let report = PubHttpReport {
        messages_per_s: total.accepted as f64 / window_s,
        requests_per_s: total.answers as f64 / window_s,
        accepted: total.accepted,
        answers: total.answers,
        latency_us: Percentiles::of(&total.hist),
        status,
        error_answers: total.error_answers,
        io_errors: total.io_errors,
        unanswered: total.unanswered,
        connections_opened: total.opened,
        server_cpu_pct,
        messages_per_server_cpu_s: server_cpu_s
            .filter(|&s| s > 0.0)
            .map(|s| total.accepted as f64 / s),
        generator_cpu_pct: match (g0, g1) {
            (Some(a), Some(b)) => pct(a.cpu_ns, b.cpu_ns, w1 - w0),
            _ => 0.0,
        },
        generator_max_thread_pct: max_thread,
        generator_limited: max_thread > 90.0,
        mode: PubHttpMode {
            url: args.url.clone(),
            topic: args.topic.clone(),
            connections: args.connections,
            keepalive: args.keepalive,
            pipeline: args.pipeline,
            batch: args.batch,
            size: args.size,
            threads: loops,
            request_bytes: plan.request.len(),
        },
        duration_s: window_s,
        notes,
        command,
    };
    if let Some(p) = &args.json {
        write_json(p, &report)?;
    }
    Ok(report)
}

fn sleep_until(t: u64) {
    let now = now_ns();
    if t > now {
        thread::sleep(Duration::from_nanos(t - now));
    }
}

impl PubHttpReport {
    /// The one-line summary.
    pub fn summary(&self) -> String {
        let errors: u64 = self.io_errors.values().sum();
        format!(
            "pubhttp: {} msgs/s accepted ({} answers/s)  p50 {}  p99 {}  non-2xx {}  io errors {}  unanswered {}  server cpu {}  msgs per server cpu-s {}\n",
            crate::report::si(self.messages_per_s),
            crate::report::si(self.requests_per_s),
            crate::report::us(self.latency_us.p50),
            crate::report::us(self.latency_us.p99),
            self.error_answers,
            errors,
            self.unanswered,
            self.server_cpu_pct
                .map_or("n/a".into(), |v| format!("{v:.0}%")),
            self.messages_per_server_cpu_s
                .map_or("n/a".into(), crate::report::si),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    /// A tiny HTTP/1.1 publish endpoint: answers `POST /publish/{t}` with 200 and
    /// `POST /publish` with one result per item; `close` answers with
    /// `Connection: close` and closes (today's ringcast), else keeps the
    /// connection. Stops by itself after 10 s or when `stop` is set.
    fn serve(close: bool, stop: Arc<AtomicBool>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                let Ok((s, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let stop = Arc::clone(&stop);
                thread::spawn(move || handle(s, close, &stop, end));
            }
        });
        addr
    }

    fn handle(mut s: TcpStream, close: bool, stop: &AtomicBool, end: Instant) {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    continue;
                }
                Err(_) => return,
            }
            let mut out = Vec::new();
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut req = httparse::Request::new(&mut headers);
                let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
                    break;
                };
                let len: usize = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                if buf.len() < head + len {
                    break;
                }
                let path = req.path.unwrap_or("").to_string();
                let body = &buf[head..head + len];
                let answer = if path == "/publish" {
                    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                    let n = v.as_array().map_or(0, Vec::len);
                    let items: Vec<&str> = vec![r#"{"ok":true}"#; n];
                    format!("{{\"results\":[{}]}}", items.join(","))
                } else if path.starts_with("/publish/") {
                    String::new()
                } else {
                    "nope".into()
                };
                let status = if answer == "nope" {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{}\r\n{answer}",
                        answer.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    )
                    .as_bytes(),
                );
                buf.drain(..head + len);
                if close {
                    break;
                }
            }
            if s.write_all(&out).is_err() || (close && !out.is_empty()) {
                return;
            }
        }
    }

    fn args(addr: SocketAddr, extra: &[&str]) -> PubHttpArgs {
        let url = format!("http://{addr}");
        let base = [
            "ringcast-loadtest",
            "pubhttp",
            "--url",
            url.as_str(),
            "--duration",
            "400ms",
            "--warmup",
            "100ms",
            "--quiet",
        ];
        match Cli::try_parse_from(base.iter().chain(extra.iter()))
            .unwrap()
            .command
        {
            Command::Pubhttp(a) => a,
            other => panic!("not pubhttp: {other:?}"),
        }
    }

    #[test]
    fn keepalive_pipelined_single_publishes() {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = serve(false, Arc::clone(&stop));
        let r = pubhttp(&args(addr, &["--pipeline", "8"]), vec![]).unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(r.accepted > 100, "{r:?}");
        assert_eq!(r.accepted, r.answers, "one message per 2xx answer");
        assert_eq!(r.error_answers, 0);
        assert!(r.io_errors.is_empty(), "{:?}", r.io_errors);
        assert_eq!(r.unanswered, 0);
        assert_eq!(r.connections_opened, 1, "keep-alive: one connection");
        assert!(r.latency_us.p50 > 0.0);
        assert!(r.status.get("200").copied().unwrap_or(0) >= r.answers);
    }

    #[test]
    fn keepalive_batches_count_items() {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = serve(false, Arc::clone(&stop));
        let r = pubhttp(
            &args(
                addr,
                &[
                    "--batch",
                    "10",
                    "--pipeline",
                    "2",
                    "--connections",
                    "2",
                    "--threads",
                    "2",
                ],
            ),
            vec![],
        )
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(r.answers > 10, "{r:?}");
        assert_eq!(r.accepted, r.answers * 10);
        assert!(
            r.notes.iter().all(|n| !n.contains("batch")),
            "{:?}",
            r.notes
        );
        assert_eq!(r.connections_opened, 2);
    }

    #[test]
    fn per_request_connections_against_a_closing_server() {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = serve(true, Arc::clone(&stop));
        let r = pubhttp(&args(addr, &["--keepalive", "off"]), vec![]).unwrap();
        assert!(r.accepted > 10, "{r:?}");
        assert!(r.io_errors.is_empty(), "{:?}", r.io_errors);
        assert!(r.connections_opened >= r.answers);
        // Keep-alive against the same server: it closes after every answer, the
        // generator reopens, and what was in flight is counted, not hidden.
        let r = pubhttp(&args(addr, &["--pipeline", "4"]), vec![]).unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(r.accepted > 10, "{r:?}");
        assert!(r.connections_opened > 1);
        assert!(r.unanswered > 0);
        assert!(
            r.notes.iter().any(|n| n.contains("closed some")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn non_2xx_answers_are_counted_by_status() {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = serve(false, Arc::clone(&stop));
        // The test server answers 404 outside /publish.
        let mut a = args(addr, &[]);
        a.url = format!("http://{addr}/elsewhere");
        let r = pubhttp(&a, vec![]).unwrap();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(r.accepted, 0);
        assert!(r.error_answers > 0);
        assert!(r.status.contains_key("404"), "{:?}", r.status);
    }
}
