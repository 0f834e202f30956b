//! `GET /history/{topic}?since=OFFSET&limit=N`: a topic's kept publications, asked from
//! its home shard ([`crate::pubsub::PubSub::history_page`]) and answered as JSON once the
//! home replies (a deferred answer; 503 when it does not within the join timeout).
//!
//! Rights are those of subscribing: an API key (or an open server) reads any topic; a
//! bearer JWT its `sub` rights; no credential the namespace's anonymous access.

use std::collections::HashMap;

use base64::Engine as _;

use crate::io::Token;
use crate::proto::frame::{FrameHeader, OpCode};
use crate::proto::handshake::Head;
use crate::pubsub::join::JoinReply;

use super::super::ShardState;
use super::BackendGrant;

/// The history requests of one shard waiting for their topic's home.
#[derive(Debug, Default)]
pub struct HistoryWaits {
    next: u64,
    /// cookie → (connection, `since`).
    waiting: HashMap<u64, (Token, u64)>,
}

impl ShardState {
    /// Starts answering `GET /history/{topic}`.
    pub(in crate::shard) fn http_history(
        &mut self,
        token: Token,
        head: &Head<'_>,
        topic: &str,
        since: u64,
        limit: Option<u64>,
    ) -> Option<usize> {
        let anonymous = matches!(crate::http::presented_credential(head), Ok(None))
            && self.settings.verifier.tokens_enabled();
        let grant = if anonymous {
            None
        } else {
            match self.authorize_backend(head, Some(topic)) {
                Ok(g) => Some(g),
                Err(r) => {
                    self.refuse_backend(token, &r);
                    return None;
                }
            }
        };
        let caller = grant
            .as_ref()
            .map_or(crate::pubsub::Caller::Client(None), BackendGrant::caller);
        let opts = match self.pubsub.may_subscribe(caller, topic) {
            Ok(o) => o,
            Err(e) => {
                self.count_access_refusal(&e);
                self.respond(token, e.wire().http_status, &format!("{e}\n"));
                return None;
            }
        };
        if !opts.has_history() {
            self.respond(
                token,
                404,
                "no history: the topic's namespace keeps none (history_size = 0)\n",
            );
            return None;
        }
        let max = self.settings.max_recovery_publications as u64;
        let limit = limit.unwrap_or(max);
        if limit > max {
            self.respond(
                token,
                400,
                &format!("bad limit: at most {max} (--max-recovery-publications)\n"),
            );
            return None;
        }
        let cookie = self.history.next;
        self.history.next = self.history.next.wrapping_add(1);
        self.history.waiting.insert(cookie, (token, since));
        self.pubsub.history_page(topic, since, limit as u32, cookie);
        self.http_defer(token);
        Some(0)
    }

    /// Answers the history requests whose pages came back.
    pub(in crate::shard) fn history_answers(&mut self) {
        if self.pubsub.pages.is_empty() {
            return;
        }
        let pages = std::mem::take(&mut self.pubsub.pages);
        for (cookie, reply) in pages {
            let Some((token, since)) = self.history.waiting.remove(&cookie) else {
                continue;
            };
            let (status, ctype, body) = history_body(&reply, since);
            self.http_answer_deferred(token, status, ctype, body.as_bytes());
        }
    }
}

/// The answer for a page: 200 with the JSON, 400 for a `since` past the top, 503 when the
/// home shard did not answer.
fn history_body(reply: &JoinReply, since: u64) -> (u16, &'static str, String) {
    use crate::pubsub::join::Outcome;
    if reply.outcome == Outcome::Unavailable {
        return (
            503,
            "text/plain; charset=utf-8",
            "the topic's home shard did not answer in time\n".to_owned(),
        );
    }
    if since > reply.top {
        return (
            400,
            "text/plain; charset=utf-8",
            format!(
                "bad since: {since} is past the topic's latest offset, {}\n",
                reply.top
            ),
        );
    }
    let publications: Vec<serde_json::Value> = reply
        .publications
        .iter()
        .map(|p| {
            let (opcode, payload) = match FrameHeader::parse(&p.frame) {
                Ok(Some((h, at))) => (h.opcode, p.frame.get(at..).unwrap_or_default()),
                _ => (OpCode::Binary, &[][..]),
            };
            let offset = p.offset;
            match (opcode, std::str::from_utf8(payload)) {
                // Published as a JSON value: carried as one, as in mux envelopes.
                (OpCode::Text, Ok(text)) if p.json => {
                    match serde_json::from_str::<serde_json::Value>(text) {
                        Ok(v) => serde_json::json!({"offset": offset, "data": v}),
                        Err(_) => serde_json::json!({"offset": offset, "data": text}),
                    }
                }
                (OpCode::Text, Ok(text)) => serde_json::json!({"offset": offset, "data": text}),
                _ => serde_json::json!({
                    "offset": offset,
                    "b64": base64::engine::general_purpose::STANDARD.encode(payload),
                }),
            }
        })
        .collect();
    let body = serde_json::json!({
        "epoch": reply.epoch.as_ref().map(|e| e.as_str()),
        "offset": reply.top,
        "first": reply.first,
        "publications": publications,
    });
    let mut text = body.to_string();
    text.push('\n');
    (200, "application/json", text)
}
