//! Mux mode in the shard: applying [`crate::pubsub::mux`] commands through the pub/sub
//! layer, and the replies.
//!
//! Delivery to mux-mode subscribers is the pub/sub layer's: they are subscribers in the
//! [`Format::Mux`] format, whose envelopes are built once per batch per shard. What is left
//! here is the connection's side: a mux-mode connection keeps its own list of topics
//! ([`MuxConn::topics`], bounded by `--max-topics-per-connection`) so that closing it
//! unsubscribes exactly those. Refused commands get an error reply; more than
//! `--mux-error-budget` of them within [`ERROR_WINDOW`] close the connection with 1008.

use bytes::Bytes;

use crate::io::Token;
use crate::proto::close_code;
use crate::proto::frame::OpCode;
use crate::pubsub::join::{JoinReply, Joined, Kind, Outcome, Want};
use crate::pubsub::mux::{self, Command, Refusal, Start};
use crate::pubsub::{Error, Format, Target, TopicId};

use super::conn::{Phase, Route};
use super::table::ConnTable;
use super::{CLOSE_GRACE, ShardState, frame_once, ticks, ticks_ceil};

/// The window over which refused mux messages are counted.
pub const ERROR_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// A mux-mode connection's own state.
#[derive(Debug, Default)]
pub struct MuxConn {
    /// Topics this connection is subscribed to (this shard's ids).
    pub topics: Vec<TopicId>,
    /// Refused messages in the current window.
    pub errors: u32,
    /// Tick the current error window started.
    pub window_start: u32,
    /// Publishes it may still make (`--client-publish-rate`).
    pub bucket: super::session::PublishBucket,
}

impl ShardState {
    /// Upgrade hook: the route of a new mux-mode connection, subscribed to the topics of
    /// `?subscribe=` (already validated; at most `--max-topics-per-connection` are taken).
    pub(super) fn mux_open(
        &mut self,
        slot: u32,
        subscribe: Vec<String>,
        format: Format,
        caller: crate::pubsub::Caller<'_>,
    ) -> Route {
        let mut mux = MuxConn {
            window_start: self.tick,
            ..MuxConn::default()
        };
        // More than the limit were refused with 400 before the upgrade, and duplicates
        // removed, so every one is new here.
        for topic in subscribe {
            match self
                .pubsub
                .subscribe(slot, format, &topic, mux.topics.len(), caller)
            {
                Ok(id) => mux.topics.push(id),
                Err(e) => {
                    self.count_access_refusal(&e);
                    tracing::debug!(shard = self.id, slot, error = %e, "?subscribe= topic refused")
                }
            }
        }
        self.metrics.mux_connections.inc();
        Route::Mux(mux)
    }

    /// Release hook: unsubscribes a closing mux-mode connection from all its topics.
    pub(super) fn mux_release(&mut self, slot: u32, mux: &MuxConn, format: Format) {
        for &id in &mux.topics {
            self.pubsub.unsubscribe(slot, id, format);
        }
    }

    /// A message received on a mux-mode connection (a copy of its payload).
    pub(super) fn on_mux(&mut self, token: Token, opcode: OpCode, payload: Bytes) {
        let open = self.conns.get_mut(token).is_some_and(|c| c.accepts_data());
        if !open {
            return;
        }
        if opcode == OpCode::Binary {
            self.metrics.mux_command(mux::COMMAND_BINARY_PUBLISH);
            match mux::parse_binary_envelope(&payload) {
                Ok((topic, data)) => {
                    let published =
                        self.mux_publish(token, topic, OpCode::Binary, data, false, false);
                    if let Err(e) = published {
                        self.count_access_refusal(&e);
                        self.mux_refuse(token, &refusal(None, &e));
                    }
                }
                Err(r) => self.mux_refuse(token, &r),
            }
            return;
        }
        let req = match mux::parse(&payload) {
            Ok(r) => r,
            Err(r) => {
                self.metrics.mux_command(mux::COMMAND_INVALID);
                self.mux_refuse(token, &r);
                return;
            }
        };
        self.metrics.mux_command(req.command.name());
        let result = match &req.command {
            Command::Subscribe(topic, start) => {
                match self.mux_subscribe(token, topic, start, req.id.as_ref()) {
                    // The ack follows the home shard's answer.
                    Ok(true) => return,
                    Ok(false) => Ok(()),
                    Err(Sub::Refused(r)) => {
                        self.mux_refuse(token, &r);
                        return;
                    }
                    Err(Sub::Error(e)) => Err(e),
                }
            }
            Command::Unsubscribe(topic) => self.mux_unsubscribe(token, topic),
            Command::Publish {
                topic,
                data,
                echo,
                json,
            } => self.mux_publish(token, topic, OpCode::Text, data.as_bytes(), *echo, *json),
            Command::Ping => Ok(()),
            Command::Auth(jwt) | Command::Refresh(jwt) => {
                // A verification costs up to tens of microseconds (ES256): every token
                // message, accepted or not, spends the error budget, so a connection
                // verifies at most --mux-error-budget + 1 tokens per 10 s.
                if !self.mux_spend_budget(token, 1) {
                    return;
                }
                let refresh = matches!(req.command, Command::Refresh(_));
                if let Err(r) = self.mux_token(token, jwt, refresh, req.id.as_ref()) {
                    // Spent already: answered and counted, not charged twice.
                    self.mux_error_reply(token, &r);
                    return;
                }
                Ok(())
            }
        };
        match result {
            Ok(()) => {
                let reply = match &req.command {
                    Command::Subscribe(topic, start) if *start != Start::Now => {
                        // A topic without history: say so.
                        let kind = match start {
                            Start::Rewind(_) => Kind::Rewind,
                            _ => Kind::Recover,
                        };
                        let none = JoinReply::none(Outcome::NoHistory);
                        mux::join_ack(req.id.as_ref(), topic, &none, kind)
                    }
                    _ => mux::ack(req.id.as_ref(), &req.command),
                };
                self.mux_reply(token, &reply);
            }
            Err(e) => {
                self.count_access_refusal(&e);
                let r = refusal(req.id, &e);
                self.mux_refuse(token, &r);
            }
        }
    }

    /// A `subscribe` command. `Ok(true)`: the connection joins a topic with history and
    /// its ack follows the home shard's answer; `Ok(false)`: subscribed (or already), ack
    /// now.
    fn mux_subscribe(
        &mut self,
        token: Token,
        topic: &str,
        start: &Start,
        id: Option<&serde_json::Value>,
    ) -> Result<bool, Sub> {
        let max = self.settings.max_recovery_publications as u64;
        let want = match start {
            Start::Now => Want::Position,
            Start::Recover { epoch, offset } => Want::Recover {
                epoch: epoch.as_str().into(),
                offset: *offset,
            },
            Start::Rewind(n) if *n <= max => Want::Rewind(*n as u32),
            Start::Rewind(_) => {
                return Err(Sub::Refused(mux::refuse(
                    id.cloned(),
                    mux::ErrorCode::BadMessage,
                    format!("\"rewind\" must be at most {max} (--max-recovery-publications)"),
                )));
            }
        };
        let known = self.pubsub.lookup(topic);
        let Some(c) = self.conns.get_mut(token) else {
            return Ok(false);
        };
        let grants = c
            .session
            .as_deref()
            .map(|s| &s.rights as &dyn crate::pubsub::Grants);
        let format = c.mux_format;
        let Phase::Ws {
            route: Route::Mux(mux),
            ..
        } = &mut c.phase
        else {
            return Ok(false);
        };
        if known.is_some_and(|id| mux.topics.contains(&id)) {
            if want != Want::Position {
                return Err(Sub::Refused(mux::refuse(
                    id.cloned(),
                    mux::ErrorCode::BadMessage,
                    "already subscribed: unsubscribe first to recover or rewind",
                )));
            }
            return Ok(false);
        }
        let caller = crate::pubsub::Caller::Client(grants);
        let joined = self
            .pubsub
            .subscribe_join(
                token.slot,
                format,
                topic,
                mux.topics.len(),
                caller,
                want,
                id.cloned(),
            )
            .map_err(Sub::Error)?;
        mux.topics.push(joined.id());
        Ok(matches!(joined, Joined::Joining(_)))
    }

    /// A mux-mode publish (JSON or binary envelope): the connection's publish rate, then
    /// the access rules and the namespace's limits ([`crate::pubsub::Policy::publish`]).
    fn mux_publish(
        &mut self,
        token: Token,
        topic: &str,
        opcode: OpCode,
        data: &[u8],
        echo: bool,
        json: bool,
    ) -> Result<(), Error> {
        let (rate, burst, tick) = (
            self.settings.client_publish_rate,
            self.settings.client_publish_burst,
            self.tick,
        );
        let Some(c) = self.conns.get_mut(token) else {
            return Ok(());
        };
        let Phase::Ws {
            route: Route::Mux(mux),
            ..
        } = &mut c.phase
        else {
            return Ok(());
        };
        if !mux.bucket.take(rate, burst, tick) {
            return Err(Error::RateLimited);
        }
        let grants = c
            .session
            .as_deref()
            .map(|s| &s.rights as &dyn crate::pubsub::Grants);
        self.pubsub.publish_as(
            Target::Name(topic),
            crate::pubsub::Caller::Client(grants),
            opcode,
            data,
            (!echo).then_some(token.slot),
            json,
        )?;
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.add(data.len() as u64);
        Ok(())
    }

    fn mux_unsubscribe(&mut self, token: Token, topic: &str) -> Result<(), Error> {
        let known = self.pubsub.lookup(topic);
        let format = self
            .conns
            .get_mut(token)
            .map_or(Format::Mux, |c| c.mux_format);
        let Some(mux) = mux_of(&mut self.conns, token) else {
            return Ok(());
        };
        let Some(i) = known.and_then(|id| mux.topics.iter().position(|&t| t == id)) else {
            return Err(Error::NotSubscribed);
        };
        let id = mux.topics.swap_remove(i);
        self.pubsub.unsubscribe(token.slot, id, format);
        Ok(())
    }

    /// Queues a JSON reply (through the send-queue limit, like any data frame).
    fn mux_reply(&mut self, token: Token, json: &[u8]) {
        let frame = frame_once(&mut self.arena, OpCode::Text, json);
        self.deliver(token, frame);
    }

    /// Answers a refused command, counts it, and closes the connection (1008) once it has
    /// used up its error budget.
    fn mux_refuse(&mut self, token: Token, r: &Refusal) {
        self.mux_error_reply(token, r);
        // A publish over the rate is the client's pace, not a malformed message: answered,
        // counted, and bounded by the send queue, but it does not use up the error budget.
        if r.code != mux::ErrorCode::RateLimited {
            self.mux_spend_budget(token, 0);
        }
    }

    /// Sends the error reply of a refusal and counts it.
    fn mux_error_reply(&mut self, token: Token, r: &Refusal) {
        self.metrics.mux_error(r.code);
        tracing::debug!(
            shard = self.id,
            slot = token.slot,
            code = r.code.as_str(),
            reason = %r.message,
            "mux message refused"
        );
        self.mux_reply(token, &mux::error(r));
    }

    /// Spends one unit of the connection's error budget (`--mux-error-budget` per
    /// [`ERROR_WINDOW`], plus `extra`: token messages may use one more, so that a budget of
    /// 0 still lets a connection authenticate); past it the connection is closed with 1008
    /// and false returned.
    fn mux_spend_budget(&mut self, token: Token, extra: u32) -> bool {
        let budget = self.settings.mux_error_budget;
        let window = ticks(ERROR_WINDOW);
        let now = self.tick;
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let Phase::Ws {
            route: Route::Mux(mux),
            ..
        } = &mut c.phase
        else {
            return false;
        };
        if now.saturating_sub(mux.window_start) >= window {
            mux.window_start = now;
            mux.errors = 0;
        }
        mux.errors += 1;
        if mux.errors <= budget.saturating_add(extra) {
            return true;
        }
        self.metrics.protocol_error(close_code::POLICY);
        tracing::info!(
            shard = self.id,
            slot = token.slot,
            errors = mux.errors,
            "too many refused mux messages, closing (1008)"
        );
        c.close_ws(
            close_code::POLICY,
            "too many invalid mux messages",
            &mut self.scratch,
            &mut self.outbox.dirty,
            now + ticks_ceil(CLOSE_GRACE),
        );
        false
    }
}

/// Why a subscribe was refused: a malformed request, or the pub/sub layer's refusal.
enum Sub {
    Refused(Refusal),
    Error(Error),
}

/// A pub/sub refusal as a mux error reply.
fn refusal(id: Option<serde_json::Value>, e: &Error) -> Refusal {
    mux::refuse(id, e.wire().mux_code, e.to_string())
}

/// The mux-mode state of a live connection (`None` for other routes).
fn mux_of(conns: &mut ConnTable, token: Token) -> Option<&mut MuxConn> {
    match &mut conns.get_mut(token)?.phase {
        Phase::Ws {
            route: Route::Mux(mux),
            ..
        } => Some(mux),
        _ => None,
    }
}
