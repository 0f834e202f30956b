//! The HTTP surface in the shard: the request loop of a plain-HTTP connection (keep-alive,
//! pipelining, deferred answers), the answers themselves, `/health`, `/metrics`, the demo
//! page, the one authorization point for backend requests, and (in `publish.rs`)
//! `POST /publish/{topic}` and the batch `POST /publish`.
//!
//! # A connection's requests
//!
//! Received bytes are appended to the connection's buffer and [`ShardState::http_pump`]
//! answers every complete request in it, in order, in a loop (never recursion): the end of
//! a head is searched for in the new bytes only ([`HeadScan`]), the head is parsed once,
//! routed (`ShardState::on_request`), and the bytes after its body are the next request.
//! What is left (an incomplete head) moves to the front of the buffer once per pump, so a
//! receive costs time linear in its bytes however many requests it holds.
//!
//! The loop stops, keeping the rest of the buffer unparsed, when
//! - the connection's send queue is backlogged ([`super::conn::Conn::backlogged`]): it is
//!   then paused (not read) like a WebSocket whose client does not read, and resumed, with
//!   the loop run again, once the queue drains (`on_sent`). A client that pipelines
//!   forever without reading holds at most half its send-queue limit plus one answer, and a
//!   few receive buffers;
//! - an answer is deferred ([`ShardState::http_defer`]): a handler that needs replies from
//!   other shards answers in a later turn with [`ShardState::http_answer_deferred`], which
//!   writes the answer and runs the loop again. Meanwhile later bytes are buffered, and the
//!   connection is paused once they pass `--max-header-bytes`;
//! - a publish body is still arriving: it goes to a buffer of its own, at most its
//!   Content-Length (the bytes after it, in the same receive, are the next request).
//!
//! # Keep-alive
//!
//! HTTP/1.1 keeps the connection open unless the request says `Connection: close`;
//! HTTP/1.0 closes unless it says `Connection: keep-alive`. The server closes anyway after
//! an answer with a status of 400 or more (except 404 and 405 to a request without a body),
//! after a request whose body it did not read, while draining, after the
//! `--http-max-requests-per-connection`th request, and always when `--http-idle-timeout`
//! is 0. Every answer says which it is (`Connection: keep-alive` or `Connection: close`).
//! A request must arrive whole within `--handshake-timeout` of its first byte (the first
//! one: of the accept); between requests, an idle connection is closed after
//! `--http-idle-timeout` from its last answer.

mod api;
pub(super) mod history;
mod publish;

pub use publish::PendingBody;

use bytes::Bytes;

use crate::http::Routed;
use crate::io::Token;
use crate::proto::handshake::{self, Head, HeadScan};

use super::conn::Phase;
use super::{CLOSE_GRACE, ShardState, ticks_ceil};

/// Keep-alive bookkeeping of one HTTP connection (in `Phase::Http`).
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// Tick the current wait is measured from: the accept (first request), the last answer
    /// (between requests), or the first byte of a later request.
    mark: u32,
    /// Request heads read on this connection.
    served: u32,
    /// The current request's answer may keep the connection open: the client asked for it
    /// (or did not refuse it) and the server allows it.
    wants: bool,
    /// The current request's body, if any, is consumed: what follows is the next request.
    in_sync: bool,
    /// The current request's answer is deferred: later bytes stay buffered, unparsed.
    deferred: bool,
    /// The client closed its sending side: close once the answers owed are queued.
    eof: bool,
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A request (or the first one) did not arrive whole within `--handshake-timeout`.
    Request,
    /// A keep-alive connection stayed idle `--http-idle-timeout` after its last answer.
    Idle,
}

impl Flow {
    /// A connection accepted at `tick`.
    pub fn new(tick: u32) -> Self {
        Flow {
            mark: tick,
            served: 0,
            wants: false,
            in_sync: false,
            deferred: false,
            eof: false,
        }
    }

    /// Whether an answer is pending ([`ShardState::http_defer`]).
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// Which timeout, if any, has passed at `now` (ticks). `between`: nothing of a next
    /// request has arrived (empty buffer, no body pending). `idle`: `None` when keep-alive
    /// is off (no connection then waits between requests).
    pub fn timed_out(
        &self,
        now: u32,
        request: u32,
        idle: Option<u32>,
        between: bool,
    ) -> Option<Timeout> {
        let waited = now.saturating_sub(self.mark);
        if between && self.served > 0 && !self.deferred {
            return (waited >= idle.unwrap_or(request)).then_some(Timeout::Idle);
        }
        (waited >= request).then_some(Timeout::Request)
    }

    /// Whether an answer with `status` leaves the connection open.
    fn keeps_after(&self, status: u16) -> bool {
        self.wants && self.in_sync && (status < 400 || status == 404 || status == 405)
    }
}

/// Which routes a connection may use when an admin listener is configured: on the admin
/// listener `/metrics`, `/health`, the backend API and HTTP publish (no upgrades,
/// no demo page); on the public port everything but `/metrics` and `/api/...`. Without an
/// admin listener nothing changes.
pub(in crate::shard) fn split_admin(routed: Routed, admin: bool, configured: bool) -> Routed {
    if !configured {
        return routed;
    }
    let admin_route = matches!(
        routed,
        Routed::Health
            | Routed::BrokerHealth
            | Routed::Ready
            | Routed::Metrics
            | Routed::Api(_)
            | Routed::Publish(_)
            | Routed::PublishBatch
            | Routed::History { .. }
            | Routed::NotAllowed { .. }
            | Routed::Respond { .. }
    );
    let admin_only = matches!(routed, Routed::Metrics | Routed::Api(_));
    if (admin && !admin_route) || (!admin && admin_only) {
        return Routed::Respond {
            status: 404,
            body: if admin {
                "not found on the admin listener (it serves /metrics, /health, /api/... and /publish)\n"
            } else {
                "not found (served on the admin listener)\n"
            },
        };
    }
    routed
}

/// What a backend's credential allows, as [`ShardState::authorize_backend`] found it.
#[derive(Debug, Default)]
pub enum BackendGrant {
    /// An API key (or no key configured at all): publish anywhere, also where
    /// `client_publish = false`.
    #[default]
    Backend,
    /// A connection token (JWT) presented as a bearer token: its `pub` rights, as a
    /// client's (the namespace's `client_publish` and size limit apply).
    Token(Box<crate::auth::Rights>),
}

impl BackendGrant {
    /// Who publishes, for the pub/sub layer's rules.
    pub fn caller(&self) -> crate::pubsub::Caller<'_> {
        match self {
            BackendGrant::Backend => crate::pubsub::Caller::Backend,
            BackendGrant::Token(r) => crate::pubsub::Caller::Client(Some(&**r)),
        }
    }
}

/// A backend request refused by [`ShardState::authorize_backend`]: its status (401 asks
/// for a credential, with `WWW-Authenticate: Bearer`; 403 refuses the one presented) and a
/// one-line reason. Never the credential itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401 or 403.
    pub status: u16,
    /// The answer's body, one line.
    pub reason: &'static str,
}

/// Whether a `Connection` header of `head` lists `token` (ASCII case-insensitive).
fn connection_has(head: &Head<'_>, token: &str) -> bool {
    head.headers_named("connection").any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl ShardState {
    /// **The one place where backend requests are authorized**: every `POST /publish` and
    /// `POST /publish/{topic}` passes here once its head is read, before any body byte is
    /// kept. With no key configured (neither API key nor JWT key) everything is allowed, as
    /// before access control. Otherwise the request needs `Authorization: Bearer KEY` or
    /// `X-Api-Key: KEY` with a configured API key (compared in constant time), or a bearer
    /// JWT whose `pub` rights the pub/sub layer then checks per message. Missing or wrong:
    /// 401, counted; the credential is never logged.
    pub(super) fn authorize_backend(
        &mut self,
        head: &Head<'_>,
        topic: Option<&str>,
    ) -> Result<BackendGrant, Refusal> {
        let _ = topic; // rights are checked per message, where the topic is resolved
        let v = &self.settings.verifier;
        let open = !v.api_keys_enabled() && !v.tokens_enabled();
        let cred = match crate::http::presented_credential(head) {
            Ok(c) => c,
            Err(_) if open => None,
            Err(_) => {
                self.metrics.access.api_key_refusals.inc();
                return Err(Refusal {
                    status: 401,
                    reason: "unreadable credential: send Authorization: Bearer KEY or X-Api-Key: KEY",
                });
            }
        };
        let Some(cred) = cred else {
            if open {
                return Ok(BackendGrant::Backend);
            }
            self.metrics.access.api_key_refusals.inc();
            return Err(Refusal {
                status: 401,
                reason: "an API key is needed: Authorization: Bearer KEY or X-Api-Key: KEY",
            });
        };
        if open {
            return Ok(BackendGrant::Backend);
        }
        if v.api_keys_enabled() && v.check_api_key(cred.secret().as_bytes()) {
            return Ok(BackendGrant::Backend);
        }
        let jwt_like = cred.secret().bytes().filter(|&b| b == b'.').count() == 2;
        if let (crate::http::Credential::Bearer(t), true, true) =
            (cred, jwt_like, v.tokens_enabled())
        {
            return match v.verify(t, self.unix_now) {
                Ok(s) => {
                    self.metrics.access.tokens_accepted.inc();
                    Ok(BackendGrant::Token(Box::new(s.rights)))
                }
                Err(e) => {
                    self.token_refused(&e, "http");
                    Err(Refusal {
                        status: e.wire().http_status,
                        reason: "token refused",
                    })
                }
            };
        }
        self.metrics.access.api_key_refusals.inc();
        Err(Refusal {
            status: 401,
            reason: "wrong API key",
        })
    }

    /// The authorization of the backend API's `/api/...` routes: an API key when any key is
    /// configured (a JWT grants publishing, not the API), nothing when none is.
    pub(super) fn authorize_api(&mut self, head: &Head<'_>) -> Result<(), Refusal> {
        let v = &self.settings.verifier;
        if !v.api_keys_enabled() && !v.tokens_enabled() {
            return Ok(());
        }
        let ok = v.api_keys_enabled()
            && matches!(crate::http::presented_credential(head), Ok(Some(c)) if v.check_api_key(c.secret().as_bytes()));
        if ok {
            return Ok(());
        }
        self.metrics.access.api_key_refusals.inc();
        Err(Refusal {
            status: 401,
            reason: if v.api_keys_enabled() {
                "an API key is needed: Authorization: Bearer KEY or X-Api-Key: KEY"
            } else {
                "the API needs an API key, and none is configured (--api-key)"
            },
        })
    }

    /// Answers a refused backend request (and closes: the status is 4xx).
    fn refuse_backend(&mut self, token: Token, refusal: &Refusal) {
        self.metrics.handshake_failure(refusal.status);
        tracing::debug!(
            shard = self.id,
            status = refusal.status,
            reason = refusal.reason,
            "backend request refused"
        );
        let headers: &[(&str, &str)] = if refusal.status == 401 {
            &[("WWW-Authenticate", "Bearer")]
        } else {
            &[]
        };
        let body = format!("{}\n", refusal.reason);
        self.respond_with_headers(
            token,
            refusal.status,
            "text/plain; charset=utf-8",
            headers,
            body.as_bytes(),
        );
    }

    /// Bytes received on a plain-HTTP connection: appended to its request buffer (or to the
    /// body it is reading), then every complete request is answered.
    pub(super) fn http_data(&mut self, token: Token, data: &mut [u8]) {
        let tick = self.tick;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let Phase::Http {
            buf, body, flow, ..
        } = &mut c.phase
        else {
            return;
        };
        if flow.served > 0 && buf.is_empty() && body.is_none() && !flow.deferred {
            // The next request starts: `--handshake-timeout` now counts from here.
            flow.mark = tick;
        }
        if let Some(pending) = body {
            // A publish body: appended to its buffer, which doubles as needed but never
            // past the Content-Length.
            let room = pending.len.saturating_sub(buf.len());
            let take = room.min(data.len());
            let need = buf.len() + take;
            if need > buf.capacity() {
                let cap = (buf.capacity() * 2).max(need).min(pending.len);
                buf.reserve_exact(cap - buf.len());
            }
            buf.extend_from_slice(&data[..take]);
            if buf.len() < pending.len {
                return;
            }
            self.finish_body(token);
            // What follows the body is the next request.
            let rest = &data[take..];
            if !rest.is_empty()
                && let Some(c) = self.conns.get_mut(token)
                && let Phase::Http { buf, .. } = &mut c.phase
            {
                buf.extend_from_slice(rest);
            }
        } else {
            buf.extend_from_slice(data);
        }
        self.http_pump(token);
    }

    /// Answers every complete request buffered on the connection, in order, unless it is
    /// backlogged, waiting for a deferred answer or reading a body (see the module doc);
    /// then pauses or resumes reading, or closes after a client's EOF.
    pub(super) fn http_pump(&mut self, token: Token) {
        self.answer_buffered(token);
        self.after_pump(token);
    }

    /// The loop over complete requests in the buffer.
    fn answer_buffered(&mut self, token: Token) {
        let limits = self.handshake_limits;
        let limit = self.settings.send_queue_limit;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let Phase::Http { buf, .. } = &mut c.phase else {
            return;
        };
        // The buffer leaves the connection so that each parsed head can borrow it while the
        // shard acts on it; what is left goes back after the loop.
        let mut buf = std::mem::take(buf);
        let mut at = 0;
        loop {
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            if c.releasing || c.close_after_flush {
                // Closing (a failed send, say): nothing more is answered.
                return;
            }
            let backlogged = c.backlogged(limit);
            let Phase::Http {
                scan,
                head_only,
                body,
                flow,
                ..
            } = &mut c.phase
            else {
                // Answered and closing, or upgraded: the rest is not ours.
                return;
            };
            if flow.deferred || body.is_some() || backlogged || at == buf.len() {
                break;
            }
            let input = &buf[at..];
            let end = match scan.find(input, &limits) {
                Ok(None) => break,
                Ok(Some(end)) => end,
                Err(e) => {
                    self.respond(token, e.status(), &format!("{e}\n"));
                    return;
                }
            };
            *scan = HeadScan::default();
            let head = match handshake::parse_head(&input[..end], &limits) {
                Ok(head) => head,
                Err(e) => {
                    self.respond(token, e.status(), &format!("{e}\n"));
                    return;
                }
            };
            *head_only = head.method == "HEAD";
            flow.served = flow.served.saturating_add(1);
            let max = self.settings.http_max_requests_per_connection;
            let client_keeps = if head.version >= 1 {
                !connection_has(&head, "close")
            } else {
                connection_has(&head, "keep-alive")
            };
            flow.wants = client_keeps
                && self.settings.http_idle_timeout.is_some()
                && !self.shared.drain.is_draining()
                && (max == 0 || flow.served < max);
            // A body this request's handler does not read would be taken for the next
            // request: such an answer closes (publish handlers set this once they read it).
            flow.in_sync = head.header("transfer-encoding").is_none()
                && matches!(head.content_length(), Ok(None | Some(0)));
            self.metrics.http_requests.inc();
            if flow.served > 1 {
                self.metrics.http_keepalive_reuses.inc();
            }
            let rest = &input[end..];
            match self.on_request(token, &head, rest) {
                Some(used) => at += end + used.min(rest.len()),
                None => return,
            }
        }
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if let Phase::Http { buf: slot, .. } = &mut c.phase {
            buf.drain(..at);
            // An idle keep-alive connection holds no request buffer.
            *slot = if buf.is_empty() { Vec::new() } else { buf };
        }
    }

    /// After the loop: a client that closed its side is closed once nothing more can be
    /// answered; a backlogged connection (or one whose deferred answer has a buffer past
    /// `--max-header-bytes` behind it) is paused, and one that is neither any more resumed.
    fn after_pump(&mut self, token: Token) {
        let limit = self.settings.send_queue_limit;
        let max_head = self.handshake_limits.max_header_bytes;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let backlogged = c.backlogged(limit);
        let Phase::Http { buf, flow, .. } = &c.phase else {
            return;
        };
        // Requests still buffered behind a backlog are answered once it drains.
        let held = backlogged && !buf.is_empty();
        if flow.eof && !flow.deferred && !held {
            // Nothing more will arrive, and every complete request is answered: an
            // unfinished one is dropped.
            c.phase = Phase::Done;
            c.close_after_flush = true;
            c.mark_dirty(&mut self.outbox.dirty);
            return;
        }
        let blocked = backlogged || (flow.deferred && buf.len() > max_head);
        if blocked && !c.paused && !c.releasing {
            c.paused = true;
            self.metrics.recv_pauses.inc();
            self.outbox.recv_switch.push((token, false));
        } else if !blocked && c.may_resume(limit) {
            c.paused = false;
            self.outbox.recv_switch.push((token, true));
        }
    }

    /// A paused HTTP connection was resumed (its answers drained): answer what it buffered.
    pub(super) fn http_resumed(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(token)
            && matches!(c.phase, Phase::Http { .. })
        {
            self.http_pump(token);
        }
    }

    /// The client closed its sending side (or the connection failed) while in HTTP: the
    /// answers owed (buffered pipelined requests, a deferred answer) are still written,
    /// within the close grace; then the connection closes.
    pub(super) fn http_recv_closed(&mut self, token: Token) {
        let tick = self.tick;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if let Phase::Http { flow, .. } = &mut c.phase {
            flow.eof = true;
        }
        if c.deadline == 0 {
            c.deadline = tick + ticks_ceil(CLOSE_GRACE);
        }
        self.http_pump(token);
    }

    /// Defers the current request's answer: call from a route handler instead of
    /// answering, when the answer needs something that arrives in a later loop turn (replies
    /// from other shards). Until [`ShardState::http_answer_deferred`] is called, later
    /// pipelined bytes are kept, unparsed (the connection stops being read once they pass
    /// `--max-header-bytes`), and `--handshake-timeout`, counted from the request's start,
    /// still bounds the wait.
    pub(super) fn http_defer(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(token)
            && let Phase::Http { flow, .. } = &mut c.phase
        {
            flow.deferred = true;
        }
    }

    /// Writes the answer of a request deferred with [`ShardState::http_defer`] (keep-alive
    /// and `HEAD` apply as for any answer), then answers what was pipelined behind it.
    /// Returns false, and does nothing, when that connection is gone (`token` names one
    /// connection; a reused slot has another generation) or has no deferred answer.
    ///
    /// Call it from the loop turn where the missing piece arrived (e.g. while draining the
    /// bus); pauses and resumes it asks for are applied after the next driver event.
    pub(super) fn http_answer_deferred(
        &mut self,
        token: Token,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) -> bool {
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let Phase::Http { flow, .. } = &mut c.phase else {
            return false;
        };
        if !flow.deferred {
            return false;
        }
        flow.deferred = false;
        if status >= 400 {
            self.metrics.handshake_failure(status);
        }
        self.respond_with(token, status, content_type, body);
        self.http_pump(token);
        true
    }

    /// Answers a plain HTTP request (or refuses a handshake) with a one-line text body.
    pub(super) fn respond(&mut self, token: Token, status: u16, body: &str) {
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

    /// Answers a request; a `HEAD` request gets the headers only, with the Content-Length
    /// the body would have (RFC 9110 §9.3.2).
    pub(super) fn respond_with(
        &mut self,
        token: Token,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) {
        self.respond_with_headers(token, status, content_type, &[], body);
    }

    /// `405 Method Not Allowed`, with the `Allow` header naming what the path takes.
    pub(super) fn not_allowed(&mut self, token: Token, allow: &str) {
        self.metrics.handshake_failure(405);
        let body = format!("method not allowed: use {allow}\n");
        let ct = "text/plain; charset=utf-8";
        self.respond_with_headers(token, 405, ct, &[("Allow", allow)], body.as_bytes());
    }

    /// [`ShardState::respond_with`] with extra response headers. Keeps the connection for
    /// the next request, or closes it after this answer (see the module doc); the answer
    /// says which in its `Connection` header.
    ///
    /// The answer is queued whatever the backlog (one answer must go out), which is
    /// bounded all the same: the request loop reads no further request from a
    /// backlogged connection.
    fn respond_with_headers(
        &mut self,
        token: Token,
        status: u16,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let tick = self.tick;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let (head_only, keep) = match &c.phase {
            Phase::Http {
                head_only, flow, ..
            } => (*head_only, flow.keeps_after(status)),
            _ => (false, false),
        };
        let connection = ("Connection", if keep { "keep-alive" } else { "close" });
        let mut out = Vec::with_capacity(160 + body.len());
        match headers {
            [] => handshake::write_response(status, content_type, &[connection], body, &mut out),
            [h] => {
                handshake::write_response(status, content_type, &[*h, connection], body, &mut out);
            }
            _ => {
                let mut all = headers.to_vec();
                all.push(connection);
                handshake::write_response(status, content_type, &all, body, &mut out);
            }
        }
        if head_only {
            out.truncate(out.len() - body.len());
        }
        if keep {
            if let Phase::Http {
                head_only, flow, ..
            } = &mut c.phase
            {
                *head_only = false;
                flow.wants = false;
                flow.in_sync = false;
                flow.mark = tick;
            }
        } else {
            c.phase = Phase::Done;
            c.close_after_flush = true;
        }
        c.push_exempt(Bytes::from(out), &mut self.outbox.dirty);
    }

    /// `/health`: liveness. 200 while the process serves, draining included (a liveness
    /// probe must not restart a server that is shutting down cleanly).
    pub(super) fn health(&mut self, token: Token) {
        self.respond_with(token, 200, "text/plain; charset=utf-8", b"ok\n");
    }

    /// `/ready`: readiness. 200 while serving; 503 while draining, so that a load balancer
    /// stops sending new clients (during `--drain-grace` the connected ones are still served).
    /// With `--broker-required`, also 503 while the broker is lost.
    pub(super) fn ready(&mut self, token: Token) {
        if self.shared.drain.is_draining() {
            self.respond_with(token, 503, "text/plain; charset=utf-8", b"draining\n");
        } else if self
            .shared
            .link
            .as_ref()
            .is_some_and(|l| l.required && !l.is_up())
        {
            self.respond_with(token, 503, "text/plain; charset=utf-8", b"broker down\n");
        } else {
            self.respond_with(token, 200, "text/plain; charset=utf-8", b"ready\n");
        }
    }

    /// `/health/broker`: the broker's state (several nodes). 200 with `"broker":"up"`,
    /// 503 with `"broker":"down"` while it is lost, 200 with `"broker":"none"` on a single
    /// node. The node itself stays live (`/health` 200) whatever the broker does.
    pub(super) fn broker_health(&mut self, token: Token) {
        let ct = "application/json";
        match self.shared.link.as_deref() {
            None => self.respond_with(token, 200, ct, b"{\"broker\":\"none\"}\n"),
            Some(l) => {
                let up = l.is_up();
                let body = format!(
                    "{{\"broker\":\"{}\",\"kind\":\"{}\",\"node\":\"{}\"}}\n",
                    if up { "up" } else { "down" },
                    l.kind.as_str(),
                    l.node
                );
                self.respond_with(token, if up { 200 } else { 503 }, ct, body.as_bytes());
            }
        }
    }

    /// `/metrics`: every shard's counters, summed, in the Prometheus text format.
    pub(super) fn metrics_page(&mut self, token: Token) {
        let mut body = crate::metrics::render(&self.shared.metrics, self.shared.backend);
        crate::metrics::cluster::render(&mut body, self.shared.link.as_deref());
        self.respond_with(
            token,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            body.as_bytes(),
        );
    }

    /// `GET /`: the demo page.
    pub(super) fn demo(&mut self, token: Token) {
        self.respond_with(
            token,
            200,
            "text/html; charset=utf-8",
            crate::http::DEMO_HTML.as_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_measure_the_right_wait() {
        let mut f = Flow::new(10);
        // First request: from the accept, whatever arrived.
        assert_eq!(f.timed_out(19, 10, Some(300), true), None);
        assert_eq!(f.timed_out(20, 10, Some(300), true), Some(Timeout::Request));
        // Answered at 15: idle from then on, with the idle timeout.
        f.served = 1;
        f.mark = 15;
        assert_eq!(f.timed_out(300, 10, Some(300), true), None);
        assert_eq!(f.timed_out(315, 10, Some(300), true), Some(Timeout::Idle));
        // A request under way (bytes buffered): the request timeout.
        assert_eq!(
            f.timed_out(25, 10, Some(300), false),
            Some(Timeout::Request)
        );
        // Deferred: the request timeout too, even with nothing buffered.
        f.deferred = true;
        assert_eq!(f.timed_out(25, 10, Some(300), true), Some(Timeout::Request));
    }

    #[test]
    fn which_answers_keep_the_connection() {
        let mut f = Flow::new(0);
        f.wants = true;
        f.in_sync = true;
        for s in [200, 202, 404, 405] {
            assert!(f.keeps_after(s), "{s}");
        }
        for s in [400, 403, 411, 413, 415, 431, 503] {
            assert!(!f.keeps_after(s), "{s}");
        }
        f.in_sync = false;
        assert!(!f.keeps_after(404), "an unread body closes");
        f.in_sync = true;
        f.wants = false;
        assert!(!f.keeps_after(200), "Connection: close");
    }
}
