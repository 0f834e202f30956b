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

use bytes::Bytes;

use crate::control::{self, Command, ErrorCode, Refusal};
use crate::io::Token;
use crate::proto::close_code;
use crate::proto::frame::OpCode;

use super::conn::{Phase, Route};
use super::{CLOSE_GRACE, ShardState, conn_mut, frame_once, slow_consumer, ticks, ticks_ceil};

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

/// The opcode and payload of a complete, unmasked server frame built by `frame_once`.
pub(super) fn frame_parts(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let b0 = *frame.first()?;
    let b1 = *frame.get(1)?;
    let (len, at): (usize, usize) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(frame.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let op = match b0 & 0x0f {
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        _ => return None,
    };
    Some((op, frame.get(at..at.checked_add(len)?)?))
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
            if self.topics.unsubscribe_control(topic, slot) {
                self.surface.control_subs = self.surface.control_subs.saturating_sub(1);
                self.metrics
                    .subscriptions
                    .set(self.metrics.subscriptions.get().saturating_sub(1));
            }
        }
        self.metrics.topics.set(self.topics.len() as u64);
    }

    /// Fan-out hook: delivers a published frame to this shard's control-mode subscribers of
    /// `topic`, in the envelope, built once.
    pub(super) fn fan_out_control(
        &mut self,
        topic: &str,
        frame: &Bytes,
        publisher: Option<u32>,
        echo: bool,
    ) {
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        if t.control.is_empty() {
            return;
        }
        let mut envelope: Option<Bytes> = None;
        let limit = self.settings.send_queue_limit;
        let mut queued = 0u64;
        for &slot in &t.control {
            if Some(slot) == publisher && !echo {
                continue;
            }
            let Some(Some(c)) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            if !c.accepts_data() {
                continue;
            }
            let env = match &envelope {
                Some(e) => e.clone(),
                None => {
                    let Some((op, payload)) = frame_parts(frame) else {
                        tracing::error!(
                            shard = self.id,
                            "a published frame could not be read back"
                        );
                        return;
                    };
                    let mut body = Vec::with_capacity(
                        payload.len() + control::envelope_text_overhead(&t.name) + 16,
                    );
                    match op {
                        OpCode::Text => control::envelope_text(
                            &t.name,
                            std::str::from_utf8(payload).unwrap_or_default(),
                            &mut body,
                        ),
                        _ => control::envelope_binary(&t.name, payload, &mut body),
                    }
                    let e = frame_once(&mut self.arena, op, &body);
                    envelope = Some(e.clone());
                    e
                }
            };
            // The envelope is a little larger than the message (and JSON escaping can make
            // it several times larger), so with --send-queue-limit at its minimum it might
            // never fit: an idle subscriber always takes one, however large.
            if c.queued == 0 {
                c.push_control(env, &mut self.dirty);
                queued += 1;
                continue;
            }
            if c.push_data(env, limit, &mut self.dirty) {
                queued += 1;
                continue;
            }
            slow_consumer(
                c,
                self.settings.slow_consumer,
                &self.metrics,
                &mut self.scratch,
                &mut self.dirty,
                self.tick,
                self.id,
            );
        }
        self.metrics.messages_out.add(queued);
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
                    let frame = frame_once(&mut self.arena, OpCode::Binary, data);
                    self.metrics.messages_in.inc();
                    self.metrics.bytes_in.add(data.len() as u64);
                    let topic = self.shared_name(topic);
                    self.publish(&topic, frame, Some(token.slot), false);
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
                let frame = frame_once(&mut self.arena, OpCode::Text, data.as_bytes());
                self.metrics.messages_in.inc();
                self.metrics.bytes_in.add(data.len() as u64);
                let topic = self.shared_name(topic);
                self.publish(&topic, frame, Some(token.slot), *echo);
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
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return Ok(());
        };
        let Phase::Ws {
            route: Route::Control(ctl),
            ..
        } = &mut c.phase
        else {
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
        let Some(c) = conn_mut(&mut self.conns, token) else {
            return Ok(());
        };
        let Phase::Ws {
            route: Route::Control(ctl),
            ..
        } = &mut c.phase
        else {
            return Ok(());
        };
        let Some(i) = ctl.topics.iter().position(|t| &**t == topic) else {
            return Err((
                ErrorCode::NotSubscribed,
                "this connection is not subscribed to that topic".to_owned(),
            ));
        };
        ctl.topics.swap_remove(i);
        if self.topics.unsubscribe_control(topic, token.slot) {
            self.surface.control_subs = self.surface.control_subs.saturating_sub(1);
            self.metrics
                .subscriptions
                .set(self.metrics.subscriptions.get().saturating_sub(1));
        }
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
        if !c.accepts_data() || c.push_data(frame, limit, &mut self.dirty) {
            return;
        }
        slow_consumer(
            c,
            self.settings.slow_consumer,
            &self.metrics,
            &mut self.scratch,
            &mut self.dirty,
            self.tick,
            self.id,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn frame_parts_reads_back_every_length_encoding() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![7u8; len];
            let mut arena = BytesMut::new();
            let f = frame_once(&mut arena, OpCode::Binary, &payload);
            assert_eq!(
                frame_parts(&f),
                Some((OpCode::Binary, &payload[..])),
                "{len}"
            );
        }
        assert_eq!(frame_parts(&[0x81]), None);
        assert_eq!(frame_parts(&[0x81, 5, b'a']), None, "short");
    }
}
