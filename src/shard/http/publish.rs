//! `POST /publish/{topic}` (the body is one message) and `POST /publish` (the body is a
//! batch of items, each naming its topic: see [`crate::http::batch`]).
//!
//! Both are decided from the head before any body byte is kept: the authorization hook
//! ([`ShardState::authorize_backend`]), then `Transfer-Encoding` (chunked) → 411, no
//! `Content-Length` → 411, an invalid one → 400, one above the bound → 413
//! (`--max-message-size` for one message, `--max-publish-batch-bytes` for a batch, whose
//! `Content-Type` must also be JSON or NDJSON, else 415). A body already in the request
//! buffer is used where it lies; one still arriving goes to a buffer of its own, which each
//! receive appends to (nothing is parsed again) and which grows by doubling, from
//! [`BODY_FIRST_ALLOC`], up to exactly the Content-Length: a head that claims a 4 MiB body
//! reserves 64 KiB until the bytes come, and the copies stay linear in the body. The body
//! must arrive within `--handshake-timeout` of the request's start.
//!
//! One message: a textual `Content-Type` (`text/*`, `application/json`, `application/*+json`,
//! XML, JavaScript: [`crate::http::body_type`]) publishes a text message (the body must be UTF-8,
//! else 400), anything else a binary message; the answer is `202 {"queued":N}`, N being
//! the subscribers on the receiving shard the message is queued for (other shards that
//! have subscribers queue it for theirs on their next turn).
//!
//! A batch: every item is published in order through the same pub/sub call; the answer is
//! `200 {"results":[...]}` with one result per item, `{"queued":N}` or
//! `{"index":i,"error":"code","message":"..."}`.

use bytes::Bytes;

use crate::http::batch::{self, ItemError};
use crate::io::Token;
use crate::proto::frame::OpCode;
use crate::proto::handshake::Head;
use crate::pubsub::Target;

use super::super::ShardState;
use super::super::conn::Phase;
use super::BackendGrant;

/// The first allocation for a body that is still arriving (the most a head alone can make
/// the server reserve).
pub const BODY_FIRST_ALLOC: usize = 64 * 1024;

/// A publish whose head has been read and whose body is still arriving (kept in the
/// connection's request buffer, which grows to `len` at most).
#[derive(Debug)]
pub struct PendingBody {
    /// What the body is.
    kind: BodyKind,
    /// The Content-Length.
    pub len: usize,
}

#[derive(Debug)]
pub(super) enum BodyKind {
    /// One message to the (validated) topic, of the body type its `Content-Type` says.
    Message {
        topic: Box<str>,
        body: crate::http::BodyType,
        grant: BackendGrant,
    },
    /// A batch, with what the backend may publish to.
    Batch {
        format: batch::Format,
        grant: BackendGrant,
    },
    /// `POST /api/disconnect`: `{"user":"..."}`.
    Disconnect,
}

impl ShardState {
    /// Route hook for `Routed::Publish`. `rest` is what followed the request head. Returns
    /// the body's length when it was in `rest` (and is published), `None` when the
    /// connection answered and closes or reads the body into its own buffer.
    pub(in crate::shard) fn http_publish(
        &mut self,
        token: Token,
        req: &Head<'_>,
        topic: &str,
        rest: &[u8],
    ) -> Option<usize> {
        let grant = match self.authorize_backend(req, Some(topic)) {
            Ok(grant) => grant,
            Err(r) => {
                self.refuse_backend(token, &r);
                return None;
            }
        };
        let body = crate::http::body_type(req.header("content-type"));
        match body {
            crate::http::BodyType::Text
            | crate::http::BodyType::Json
            | crate::http::BodyType::Binary => {}
            crate::http::BodyType::UnsupportedCharset => {
                self.respond(
                    token,
                    415,
                    "a text Content-Type must be UTF-8 (charset=utf-8 or none)\n",
                );
                return None;
            }
        }
        let max = self.settings.max_message_size;
        let len = self.body_length(token, req, max, "the message size limit")?;
        if rest.len() >= len {
            self.body_read(token);
            self.publish_body(token, topic, body, &grant, &rest[..len]);
            return Some(len);
        }
        let kind = BodyKind::Message {
            topic: topic.into(),
            body,
            grant,
        };
        self.await_body(token, req, rest, len, kind);
        None
    }

    /// Route hook for `Routed::PublishBatch`, as [`ShardState::http_publish`].
    pub(in crate::shard) fn http_publish_batch(
        &mut self,
        token: Token,
        req: &Head<'_>,
        rest: &[u8],
    ) -> Option<usize> {
        let grant = match self.authorize_backend(req, None) {
            Ok(grant) => grant,
            Err(r) => {
                self.refuse_backend(token, &r);
                return None;
            }
        };
        let Some(format) = batch::Format::from_content_type(req.header("content-type")) else {
            self.respond(
                token,
                415,
                "a batch is application/json (an array of items) or application/x-ndjson\n",
            );
            return None;
        };
        let max = self.settings.max_publish_batch_bytes;
        let len = self.body_length(token, req, max, "the batch size limit")?;
        if rest.len() >= len {
            self.body_read(token);
            self.publish_batch(token, format, &grant, &rest[..len]);
            return Some(len);
        }
        self.await_body(token, req, rest, len, BodyKind::Batch { format, grant });
        None
    }

    /// The Content-Length of a publish, at most `max`; otherwise answers (and closes) and
    /// returns `None`.
    pub(super) fn body_length(
        &mut self,
        token: Token,
        req: &Head<'_>,
        max: usize,
        what: &str,
    ) -> Option<usize> {
        if req.header("transfer-encoding").is_some() {
            self.respond(
                token,
                411,
                "send the body with a Content-Length (Transfer-Encoding is not supported)\n",
            );
            return None;
        }
        match req.content_length() {
            Ok(Some(len)) if len > max => {
                let body = format!("body of {len} bytes is over {what} of {max} bytes\n");
                self.respond(token, 413, &body);
                None
            }
            Ok(Some(len)) => Some(len),
            Ok(None) => {
                self.respond(token, 411, "Content-Length required\n");
                None
            }
            Err(_) => {
                self.respond(token, 400, "invalid Content-Length\n");
                None
            }
        }
    }

    /// The request's body is consumed: what follows is the next request, so the answer may
    /// keep the connection open.
    pub(super) fn body_read(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(token)
            && let Phase::Http { flow, .. } = &mut c.phase
        {
            flow.in_sync = true;
        }
    }

    /// The body is not all here: it goes to a buffer of its own (at most `len` bytes), which
    /// later receives append to ([`ShardState::finish_body`] once full).
    pub(super) fn await_body(
        &mut self,
        token: Token,
        req: &Head<'_>,
        rest: &[u8],
        len: usize,
        kind: BodyKind,
    ) {
        let expects_continue = rest.is_empty()
            && req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if let Phase::Http { buf, body, .. } = &mut c.phase {
            let mut b = Vec::with_capacity(len.min(rest.len().max(BODY_FIRST_ALLOC)));
            b.extend_from_slice(rest);
            *buf = b;
            *body = Some(Box::new(PendingBody { kind, len }));
        }
        if expects_continue {
            c.push_exempt(
                Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
                &mut self.outbox.dirty,
            );
        }
    }

    /// The body of a pending publish is complete: publish it. The connection's buffer is
    /// left empty, for the next request.
    pub(super) fn finish_body(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let Phase::Http {
            buf, body, flow, ..
        } = &mut c.phase
        else {
            return;
        };
        let (Some(pending), buf) = (body.take(), std::mem::take(buf)) else {
            return;
        };
        flow.in_sync = true;
        let body = &buf[..pending.len.min(buf.len())];
        match &pending.kind {
            BodyKind::Message {
                topic,
                body: kind,
                grant,
            } => self.publish_body(token, topic, *kind, grant, body),
            BodyKind::Batch { format, grant } => self.publish_batch(token, *format, grant, body),
            BodyKind::Disconnect => self.api_disconnect_body(token, body),
        }
    }

    fn publish_body(
        &mut self,
        token: Token,
        topic: &str,
        kind: crate::http::BodyType,
        grant: &BackendGrant,
        body: &[u8],
    ) {
        let len = body.len();
        let text = matches!(
            kind,
            crate::http::BodyType::Text | crate::http::BodyType::Json
        );
        // A JSON body that is an object or an array travels as a JSON value in mux
        // envelopes (docs/protocol.md, "Delivered messages").
        let json = kind == crate::http::BodyType::Json && crate::pubsub::mux::is_json_value(body);
        if text && simdutf8::basic::from_utf8(body).is_err() {
            self.respond(
                token,
                400,
                "the Content-Type is textual but the body is not UTF-8\n",
            );
            return;
        }
        if self.refuse_without_broker(token) {
            return;
        }
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.add(len as u64);
        self.metrics.http_publishes.inc();
        // Queued to subscribers with the rest of this turn's batch, at the end of the turn;
        // the reply counts the local subscribers it is queued for (a slow consumer's policy
        // applies when it is queued).
        let queued = match self.pubsub.publish_as(
            Target::Name(topic),
            grant.caller(),
            opcode,
            body,
            None,
            json,
        ) {
            Ok(n) => n,
            Err(e) => {
                self.count_access_refusal(&e);
                self.respond(token, e.wire().http_status, &format!("{e}\n"));
                return;
            }
        };
        tracing::debug!(shard = self.id, topic, bytes = len, queued, "http publish");
        let mut reply = Vec::with_capacity(24);
        reply.extend_from_slice(b"{\"queued\":");
        crate::pubsub::mux::push_decimal(&mut reply, queued as u64);
        reply.extend_from_slice(self.broker_field());
        reply.extend_from_slice(b"}\n");
        self.respond_with(token, 202, "application/json", &reply);
    }

    /// Publishes a batch's items in order and answers with one result per item.
    fn publish_batch(
        &mut self,
        token: Token,
        format: batch::Format,
        grant: &BackendGrant,
        body: &[u8],
    ) {
        if self.refuse_without_broker(token) {
            return;
        }
        let limits = batch::Limits {
            max_items: self.settings.max_publish_batch_items,
            max_message_size: self.settings.max_message_size,
        };
        let mut results = Vec::with_capacity(64 + body.len() / 4);
        results.extend_from_slice(b"{\"results\":[");
        let (mut published, mut bytes, mut refused) = (0u64, 0u64, 0u64);
        let pubsub = &mut self.pubsub;
        let metrics = &self.metrics;
        let mut scratch = Vec::new();
        let parsed = batch::parse(body, format, &limits, &mut scratch, |i, item| {
            if i > 0 {
                results.push(b',');
            }
            let refused_item = match item {
                Ok(m) => match pubsub.publish(
                    Target::Name(m.topic),
                    grant.caller(),
                    m.opcode,
                    m.payload,
                    None,
                ) {
                    Ok(queued) => {
                        published += 1;
                        bytes += m.payload.len() as u64;
                        results.extend_from_slice(b"{\"queued\":");
                        crate::pubsub::mux::push_decimal(&mut results, queued as u64);
                        results.push(b'}');
                        return;
                    }
                    // The parser validated the topic already; kept for the day the layer
                    // refuses more.
                    Err(crate::pubsub::Error::BadTopic(t)) => ItemError::BadTopic(t),
                    Err(
                        e @ (crate::pubsub::Error::Unauthorized
                        | crate::pubsub::Error::Forbidden { .. }
                        | crate::pubsub::Error::ClientPublishOff),
                    ) => {
                        crate::shard::access::count_refusal(metrics, &e);
                        ItemError::Forbidden
                    }
                    Err(crate::pubsub::Error::TooLarge { max }) => {
                        crate::shard::access::count_refusal(
                            metrics,
                            &crate::pubsub::Error::TooLarge { max },
                        );
                        ItemError::TooLarge {
                            len: m.payload.len(),
                            max,
                        }
                    }
                    Err(e) => ItemError::BadMessage(e.to_string()),
                },
                Err(e) => e,
            };
            metrics.http_batch_refused[refused_item.index()].inc();
            refused += 1;
            results.extend_from_slice(b"{\"index\":");
            crate::pubsub::mux::push_decimal(&mut results, i as u64);
            results.extend_from_slice(b",\"error\":\"");
            results.extend_from_slice(refused_item.code().as_bytes());
            results.extend_from_slice(b"\",\"message\":");
            // Serializing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut results, &refused_item.to_string());
            results.push(b'}');
        });
        if let Err(e) = parsed {
            self.respond(token, e.status(), &format!("{e}\n"));
            return;
        }
        self.metrics.messages_in.add(published);
        self.metrics.bytes_in.add(bytes);
        self.metrics.http_batch_items.add(published);
        tracing::debug!(shard = self.id, published, refused, "http batch publish");
        results.push(b']');
        results.extend_from_slice(self.broker_field());
        results.extend_from_slice(b"}\n");
        self.respond_with(token, 200, "application/json", &results);
    }

    /// With `--broker-required`, a publish while the broker is lost is refused (503):
    /// other nodes would not get it. Returns whether it answered.
    fn refuse_without_broker(&mut self, token: Token) -> bool {
        let refuse = self
            .shared
            .link
            .as_ref()
            .is_some_and(|l| l.required && !l.is_up());
        if refuse {
            self.respond(
                token,
                503,
                "the broker is down (--broker-required): not published; retry later\n",
            );
        }
        refuse
    }

    /// The reply's broker field: `,"broker":"down"` while the broker is lost (the
    /// publication reached this node's subscribers only), nothing otherwise.
    fn broker_field(&self) -> &'static [u8] {
        match &self.shared.link {
            Some(l) if !l.is_up() => b",\"broker\":\"down\"",
            _ => b"",
        }
    }
}
