//! Control mode in the shard: applying [`crate::control`] commands to the topic table, and
//! delivering published messages to control-mode subscribers in their topic envelope.
//!
//! The envelope is built once per publish on each shard that has a control-mode subscriber
//! for the topic (the first time one needs it), framed once into the shard's arena and
//! shared by reference count, exactly like the bare simple-mode frame; a shard with no
//! control-mode subscription at all pays one integer compare per publish
//! ([`super::surface::SurfaceState::control_subs`]).
//!
//! A connection keeps its own list of topics ([`ControlConn::topics`], bounded by
//! `--max-topics-per-connection`) so that closing it unsubscribes exactly those. Refused
//! commands get an error reply; more than `--control-error-budget` of them within
//! [`ERROR_WINDOW`] close the connection with 1008.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::control::{self, Command, ErrorCode, Refusal};
use crate::io::Token;
use crate::proto::close_code;
use crate::proto::frame::{FrameHeader, MAX_HEADER_LEN, OpCode, encode_frame};

use super::batch::{Exclusion, Part};
use super::conn::{Conn, Phase, Route};
use super::{CLOSE_GRACE, ShardState, conn_mut, frame_once, ticks, ticks_ceil};

/// The window over which refused control messages are counted.
pub const ERROR_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// A control-mode connection's own state.
#[derive(Debug, Default)]
pub struct ControlConn {
    /// Topics this connection is subscribed to (shared names from the topic table).
    pub topics: Vec<Arc<str>>,
    /// Refused messages in the current window.
    pub errors: u32,
    /// Tick the current error window started.
    pub window_start: u32,
}

/// Builds the control-mode envelope of every frame in `frames` (complete, unmasked server
/// frames built by this process) as one contiguous run of envelope frames; `offsets` gets
/// the start of each message's envelope in the run, plus its end, so that a publisher's
/// share of the batch is a slice of this one run.
fn envelopes(arena: &mut BytesMut, topic: &str, frames: &[u8], offsets: &mut Vec<usize>) -> Bytes {
    let mut body = Vec::new();
    offsets.clear();
    let base = arena.len();
    let mut rest: &[u8] = frames;
    while let Ok(Some((h, at))) = FrameHeader::parse(rest) {
        let Some(payload) = usize::try_from(h.payload_len)
            .ok()
            .and_then(|n| rest.get(at..at + n))
        else {
            tracing::error!("a published frame could not be read back");
            break;
        };
        body.clear();
        match h.opcode {
            OpCode::Text => control::envelope_text(
                topic,
                std::str::from_utf8(payload).unwrap_or_default(),
                &mut body,
            ),
            _ => control::envelope_binary(topic, payload, &mut body),
        }
        let need = body.len() + MAX_HEADER_LEN;
        if arena.capacity() - arena.len() < need {
            arena.reserve(need.max(16 * 1024));
        }
        offsets.push(arena.len() - base);
        encode_frame(arena, true, h.opcode, None, &body);
        rest = &rest[at + payload.len()..];
    }
    offsets.push(arena.len() - base);
    arena.split().freeze()
}

impl ShardState {
    /// Upgrade hook: the route of a new control-mode connection, subscribed to the topics of
    /// `?subscribe=` (already validated; at most `--max-topics-per-connection` are taken).
    pub(super) fn control_open(&mut self, slot: u32, subscribe: Vec<String>) -> Route {
        let mut ctl = ControlConn {
            window_start: self.tick,
            ..ControlConn::default()
        };
        let max = self.settings.surface.max_topics_per_connection;
        // More than `max` topics were refused with 400 before the upgrade.
        for topic in subscribe.into_iter().take(max) {
            let (name, new) = self.topics.subscribe_control(&topic, slot);
            if new {
                ctl.topics.push(name);
                self.surface.control_subs += 1;
                self.metrics.subscriptions.add(1);
            }
        }
        self.metrics.topics.set(self.topics.len() as u64);
        self.metrics.control_connections.inc();
        Route::Control(ctl)
    }

    /// Release hook: unsubscribes a closing control-mode connection from all its topics.
    pub(super) fn control_release(&mut self, slot: u32, phase: &Phase) {
        let Phase::Ws {
            route: Route::Control(ctl),
            ..
        } = phase
        else {
            return;
        };
        for topic in &ctl.topics {
            self.control_forget(topic, slot);
        }
        self.metrics.topics.set(self.topics.len() as u64);
    }

    /// Takes `slot` out of `topic`'s control-mode subscribers, with the counters.
    fn control_forget(&mut self, topic: &str, slot: u32) {
        if self.topics.unsubscribe_control(topic, slot) {
            self.surface.control_subs = self.surface.control_subs.saturating_sub(1);
            self.metrics
                .subscriptions
                .set(self.metrics.subscriptions.get().saturating_sub(1));
        }
    }

    /// Fan-out hook: queues a batch of `count` messages on `topic` to its control-mode
    /// subscribers, as envelopes (`{"type":"message","topic":..,"data":..}` for text, the
    /// binary envelope for binary). The envelopes are built once per batch, on the first
    /// subscriber that needs them, into one contiguous run shared by all; a control-mode
    /// publisher that must not receive its own messages gets slices of that run (its
    /// `parts`, located by message index), never a copy. Admission follows
    /// `fan_out_local`: whole, while the unsent backlog is under the limit. Uses the
    /// exclusion index `fan_out_local` built for this batch.
    pub(super) fn fan_out_control(
        &mut self,
        topic: &str,
        frames: &Bytes,
        count: u32,
        parts: &[Part],
        excluded: &[Exclusion],
    ) {
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        if t.control.is_empty() {
            return;
        }
        let mut env: Option<Bytes> = None;
        let limit = self.settings.send_queue_limit;
        let mut queued = 0u64;
        let fo = &mut self.fanout;
        fo.slow.clear();
        fo.closed.clear();
        let any_excluded = !excluded.is_empty();
        for &slot in &t.control {
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
            let n = ex.map_or(count, |e| e.count);
            if n == 0 {
                continue;
            }
            if c.queued >= limit {
                fo.slow.push((slot, n));
                continue;
            }
            let run = env.get_or_insert_with(|| {
                envelopes(&mut self.arena, &t.name, frames, &mut fo.env_offsets)
            });
            match ex {
                None => c.push_data(run.clone(), usize::MAX, &mut self.dirty),
                Some(e) => {
                    for p in parts.get(e.parts.clone()).unwrap_or_default() {
                        let at = |m: u32| fo.env_offsets.get(m as usize).copied();
                        if let (Some(a), Some(b)) = (at(p.msgs.start), at(p.msgs.end))
                            && a <= b
                            && b <= run.len()
                        {
                            c.push_data(run.slice(a..b), usize::MAX, &mut self.dirty);
                        }
                    }
                    true
                }
            };
            queued += u64::from(n);
        }
        self.metrics.messages_out.add(queued);
        if !self.fanout.closed.is_empty() {
            self.prune_closed(topic, true);
        }
        self.apply_slow();
    }

    /// A message received on a control-mode connection (a copy of its payload).
    pub(super) fn on_control(&mut self, token: Token, opcode: OpCode, payload: Bytes) {
        let open = conn_mut(&mut self.conns, token).is_some_and(|c| c.accepts_data());
        if !open {
            return;
        }
        if opcode == OpCode::Binary {
            self.metrics
                .control_command(control::COMMAND_BINARY_PUBLISH);
            match control::parse_binary_envelope(&payload) {
                Ok((topic, data)) => {
                    self.metrics.messages_in.inc();
                    self.metrics.bytes_in.add(data.len() as u64);
                    let topic = self.shared_name(topic);
                    self.publish(&topic, OpCode::Binary, data, Some(token.slot));
                }
                Err(r) => self.control_refuse(token, &r),
            }
            return;
        }
        let req = match control::parse(&payload) {
            Ok(r) => r,
            Err(r) => {
                self.metrics.control_command(control::COMMAND_INVALID);
                self.control_refuse(token, &r);
                return;
            }
        };
        self.metrics.control_command(req.command.name());
        let result = match &req.command {
            Command::Subscribe(topic) => self.control_subscribe(token, topic),
            Command::Unsubscribe(topic) => self.control_unsubscribe(token, topic),
            Command::Publish { topic, data, echo } => {
                self.metrics.messages_in.inc();
                self.metrics.bytes_in.add(data.len() as u64);
                let topic = self.shared_name(topic);
                self.publish(
                    &topic,
                    OpCode::Text,
                    data.as_bytes(),
                    (!*echo).then_some(token.slot),
                );
                Ok(())
            }
            Command::Ping => Ok(()),
        };
        match result {
            Ok(()) => {
                let reply = control::ack(req.id.as_ref(), &req.command);
                self.control_reply(token, &reply);
            }
            Err((code, message)) => {
                let r = control::refuse(req.id, code, message);
                self.control_refuse(token, &r);
            }
        }
    }

    /// The topic table's shared name when the topic has local subscribers (no allocation),
    /// else a new one.
    pub(super) fn shared_name(&self, topic: &str) -> Arc<str> {
        self.topics
            .get(topic)
            .map_or_else(|| Arc::from(topic), |t| Arc::clone(&t.name))
    }

    fn control_subscribe(&mut self, token: Token, topic: &str) -> Result<(), (ErrorCode, String)> {
        let max = self.settings.surface.max_topics_per_connection;
        let Some(ctl) = control_of(&mut self.conns, token) else {
            return Ok(());
        };
        if ctl.topics.iter().any(|t| &**t == topic) {
            return Ok(());
        }
        if ctl.topics.len() >= max {
            return Err((
                ErrorCode::TooManyTopics,
                format!("this connection is subscribed to {max} topics, the most allowed"),
            ));
        }
        let (name, new) = self.topics.subscribe_control(topic, token.slot);
        ctl.topics.push(name);
        if new {
            self.surface.control_subs += 1;
            self.metrics.subscriptions.add(1);
        }
        self.metrics.topics.set(self.topics.len() as u64);
        Ok(())
    }

    fn control_unsubscribe(
        &mut self,
        token: Token,
        topic: &str,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(ctl) = control_of(&mut self.conns, token) else {
            return Ok(());
        };
        let Some(i) = ctl.topics.iter().position(|t| &**t == topic) else {
            return Err((
                ErrorCode::NotSubscribed,
                "this connection is not subscribed to that topic".to_owned(),
            ));
        };
        ctl.topics.swap_remove(i);
        self.control_forget(topic, token.slot);
        self.metrics.topics.set(self.topics.len() as u64);
        Ok(())
    }

    /// Queues a JSON reply (through the send-queue limit, like any data frame).
    fn control_reply(&mut self, token: Token, json: &[u8]) {
        let frame = frame_once(&mut self.arena, OpCode::Text, json);
        let limit = self.settings.send_queue_limit;
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        if !c.accepts_data() {
            return;
        }
        // The same rule as fan-out: admitted while the unsent backlog is under the limit.
        if c.queued < limit {
            c.push_data(frame, usize::MAX, &mut self.dirty);
            return;
        }
        self.slow_consumer(token.slot, 1);
    }

    /// Answers a refused command, counts it, and closes the connection (1008) once it has
    /// used up its error budget.
    fn control_refuse(&mut self, token: Token, r: &Refusal) {
        self.metrics.control_error(r.code);
        tracing::debug!(
            shard = self.id,
            slot = token.slot,
            code = r.code.as_str(),
            reason = %r.message,
            "control message refused"
        );
        self.control_reply(token, &control::error(r));
        let budget = self.settings.surface.control_error_budget;
        let window = ticks(ERROR_WINDOW);
        let now = self.tick;
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return;
        };
        let Phase::Ws {
            ws,
            route: Route::Control(ctl),
        } = &mut c.phase
        else {
            return;
        };
        if now.saturating_sub(ctl.window_start) >= window {
            ctl.window_start = now;
            ctl.errors = 0;
        }
        ctl.errors += 1;
        if ctl.errors <= budget {
            return;
        }
        self.metrics.protocol_error(close_code::POLICY);
        tracing::info!(
            shard = self.id,
            slot = token.slot,
            errors = ctl.errors,
            "too many refused control messages, closing (1008)"
        );
        ws.close(
            close_code::POLICY,
            "too many invalid control messages",
            &mut self.scratch,
        );
        let out = self.scratch.split().freeze();
        c.push_control(out, &mut self.dirty);
        c.close_after_flush = true;
        c.deadline = now + ticks_ceil(CLOSE_GRACE);
    }
}

/// The control-mode state of a live connection (`None` for other routes).
fn control_of(conns: &mut [Option<Conn>], token: Token) -> Option<&mut ControlConn> {
    match &mut conn_mut(conns, token)?.phase {
        Phase::Ws {
            route: Route::Control(ctl),
            ..
        } => Some(ctl),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back the frames of a contiguous run: (opcode, payload).
    fn read_frames(mut b: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some((h, at))) = FrameHeader::parse(b) {
            let n = h.payload_len as usize;
            out.push((h.opcode, b[at..at + n].to_vec()));
            b = &b[at + n..];
        }
        assert!(b.is_empty(), "whole frames only");
        out
    }

    #[test]
    fn envelopes_of_a_batch_at_every_length_encoding() {
        let mut arena = BytesMut::new();
        let lens = [0usize, 1, 125, 126, 65535, 65536, 70000];
        let mut batch = BytesMut::new();
        for &len in &lens {
            encode_frame(&mut batch, true, OpCode::Binary, None, &vec![7u8; len]);
        }
        encode_frame(&mut batch, true, OpCode::Text, None, b"hi \"there\"");
        let all = batch.freeze();
        // Split in two parts at a frame boundary, as an excluded publisher's view would be.
        let first = all.slice(..2 + 3 + 125 + 2);
        let second = all.slice(first.len()..);
        let mut offsets = Vec::new();
        let env = envelopes(&mut arena, "t", &all, &mut offsets);
        assert_eq!(
            offsets.len(),
            lens.len() + 2,
            "one start per message, and the end"
        );
        assert_eq!(offsets.last(), Some(&env.len()));
        // A part at message boundaries is a slice of the one run.
        let got_first = read_frames(&env[offsets[0]..offsets[3]]);
        assert_eq!(got_first.len(), 3);
        assert_eq!(first.len() + second.len(), all.len());
        let got = read_frames(&env);
        assert_eq!(got.len(), lens.len() + 1);
        for (i, &len) in lens.iter().enumerate() {
            let mut want = Vec::new();
            control::envelope_binary("t", &vec![7u8; len], &mut want);
            assert_eq!(got[i], (OpCode::Binary, want), "length {len}");
        }
        let mut want = Vec::new();
        control::envelope_text("t", "hi \"there\"", &mut want);
        assert_eq!(got[lens.len()], (OpCode::Text, want));
    }
}
