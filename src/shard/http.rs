//! The HTTP surface in the shard: responses, `/health`, `/metrics`, the demo page, and
//! `POST /publish/{topic}`.
//!
//! Every plain HTTP answer closes the connection after the response (see [`crate::http`]
//! for the routes). A publish is an HTTP request whose body is published to a topic, for
//! backends that do not want to hold a WebSocket open.
//!
//! The decision is made from the head before any body byte is kept: `Transfer-Encoding`
//! (chunked) → 411, no `Content-Length` → 411, a length above `--max-message-size` → 413.
//! Otherwise the body is read into a buffer allocated once to the Content-Length (so it is
//! bounded by `--max-message-size`; each receive appends, nothing is parsed or copied again) and must arrive within
//! `--handshake-timeout`, like the rest of the request. `Content-Type: text/*` publishes a
//! text message (the body must be UTF-8, else 400), anything else a binary message. The
//! answer is `202 {"queued":N}`, N being the subscribers on the receiving shard the message
//! is queued for (other shards that have subscribers queue it for theirs on their next turn). The connection
//! closes after the response, as for every plain HTTP request.

use bytes::Bytes;

use crate::io::Token;
use crate::proto::frame::OpCode;
use crate::proto::handshake::{self, Head};
use crate::pubsub::Target;

use super::ShardState;
use super::conn::Phase;

/// A publish whose head has been read and whose body is still arriving (kept in the
/// connection's request buffer, allocated once to `len`).
#[derive(Debug)]
pub struct PendingBody {
    /// The validated topic.
    topic: Box<str>,
    /// `Content-Type: text/*`: a text message (the body must be UTF-8).
    text: bool,
    /// The Content-Length.
    pub len: usize,
}

impl ShardState {
    /// Route hook for `Routed::Publish`. `rest` is what followed the request head; when the
    /// body is not complete yet it is kept in a buffer of exactly the Content-Length, which
    /// later receives append to ([`ShardState::finish_publish`] once full).
    pub(super) fn http_publish(&mut self, token: Token, req: &Head<'_>, topic: &str, rest: &[u8]) {
        if req.header("transfer-encoding").is_some() {
            self.respond(
                token,
                411,
                "send the body with a Content-Length (Transfer-Encoding is not supported)\n",
            );
            return;
        }
        let len = match req.content_length() {
            Ok(Some(n)) => n,
            Ok(None) => {
                self.respond(token, 411, "Content-Length required\n");
                return;
            }
            Err(_) => {
                self.respond(token, 400, "invalid Content-Length\n");
                return;
            }
        };
        let max = self.settings.max_message_size;
        if len > max {
            let body =
                format!("body of {len} bytes is over the message size limit of {max} bytes\n");
            self.respond(token, 413, &body);
            return;
        }
        let text = req
            .header("content-type")
            .is_some_and(|ct| ct.len() >= 5 && ct[..5].eq_ignore_ascii_case(b"text/"));
        if rest.len() >= len {
            self.publish_body(token, topic, text, &rest[..len]);
            return;
        }
        let expects_continue = rest.is_empty()
            && req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if let Phase::Http { buf, body, .. } = &mut c.phase {
            let mut b = Vec::with_capacity(len);
            b.extend_from_slice(rest);
            *buf = b;
            *body = Some(Box::new(PendingBody {
                topic: topic.into(),
                text,
                len,
            }));
        }
        if expects_continue {
            c.push_exempt(
                Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
                &mut self.outbox.dirty,
            );
        }
    }

    /// The body of a pending publish is complete: publish it.
    pub(super) fn finish_publish(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let Phase::Http { buf, body, .. } = &mut c.phase else {
            return;
        };
        let (Some(pending), buf) = (body.take(), std::mem::take(buf)) else {
            return;
        };
        self.publish_body(
            token,
            &pending.topic,
            pending.text,
            &buf[..pending.len.min(buf.len())],
        );
    }

    fn publish_body(&mut self, token: Token, topic: &str, text: bool, body: &[u8]) {
        let len = body.len();
        if text && simdutf8::basic::from_utf8(body).is_err() {
            self.respond(
                token,
                400,
                "Content-Type is text/* but the body is not UTF-8\n",
            );
            return;
        }
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.add(len as u64);
        self.metrics.http_publishes.inc();
        // Queued to subscribers with the rest of this turn's batch, at the end of the turn;
        // the reply counts the local subscribers it is queued for (a slow consumer's policy
        // applies when it is queued).
        let queued = match self.pubsub.publish(Target::Name(topic), opcode, body, None) {
            Ok(n) => n,
            Err(e) => {
                self.respond(token, e.wire().http_status, &format!("{e}\n"));
                return;
            }
        };
        tracing::debug!(shard = self.id, topic, bytes = len, queued, "http publish");
        let reply = format!("{{\"queued\":{queued}}}\n");
        self.respond_with(token, 202, "application/json", reply.as_bytes());
    }

    /// Answers a plain HTTP request (or refuses a handshake) and closes after the response.
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

    /// Answers a request and closes after the response; a `HEAD` request gets the headers
    /// only, with the Content-Length the body would have (RFC 9110 §9.3.2).
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

    /// [`ShardState::respond_with`] with extra response headers.
    fn respond_with_headers(
        &mut self,
        token: Token,
        status: u16,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let mut out = Vec::with_capacity(128 + body.len());
        handshake::write_response(status, content_type, headers, body, &mut out);
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
        c.push_exempt(Bytes::from(out), &mut self.outbox.dirty);
        c.close_after_flush = true;
    }

    /// `/health`: 200 while serving, 503 while draining.
    pub(super) fn health(&mut self, token: Token) {
        if self.shared.drain.is_draining() {
            self.respond_with(token, 503, "text/plain; charset=utf-8", b"draining\n");
        } else {
            self.respond_with(token, 200, "text/plain; charset=utf-8", b"ok\n");
        }
    }

    /// `/metrics`: every shard's counters, summed, in the Prometheus text format.
    pub(super) fn metrics_page(&mut self, token: Token) {
        let body = crate::metrics::render(&self.shared.metrics, self.shared.backend);
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
