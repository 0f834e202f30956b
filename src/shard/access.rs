//! Access control in the shard: verifying the token of an upgrade or of a mux `auth` /
//! `refresh` message, the token deadlines of a connection (the `auth` message's, the
//! `refresh_required` notice, expiry), and counting and logging refusals.
//!
//! The decisions (who may subscribe or publish where) are the pub/sub layer's
//! ([`crate::pubsub::access`]); the verification is the verifier's ([`crate::auth`]). What
//! is here is the connection's side: which token it presented, when it runs out, and what it
//! is told. Log lines about refusals are throttled (a client choosing to be refused must not
//! choose the log volume) and never contain a token; the metrics count every refusal.

use std::time::Duration;

use bytes::BytesMut;

use crate::auth::TokenError;
use crate::io::Token;
use crate::metrics::ShardMetrics;
use crate::metrics::access::AccessRefusal;
use crate::proto::frame::OpCode;
use crate::proto::handshake;
use crate::pubsub::mux::{self, ErrorCode, Refusal};
use crate::pubsub::{CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_INVALID, Error};

use super::conn::Conn;
use super::session::{self, Session};
use super::{CLOSE_GRACE, ShardState, frame_once, ticks, ticks_ceil};

impl ShardState {
    /// The verified token of an upgrade request, if it presented one. Err: the status and
    /// reason of the refusal (401: a token that does not verify).
    pub(super) fn upgrade_session(
        &mut self,
        head: &handshake::Head<'_>,
        up: &handshake::Upgrade,
    ) -> Result<Option<Box<Session>>, (u16, String)> {
        let Some((source, jwt)) = session::upgrade_token(head, &up.protocols) else {
            return Ok(None);
        };
        if !self.settings.verifier.tokens_enabled() {
            // No key to check it with: a token is not a credential here, and ignoring it
            // would grant nothing anyway (everything is open); refusing would break clients
            // that always send one. It is not logged.
            return Ok(None);
        }
        // A browser fails a connection whose 101 names no protocol it offered; the token
        // itself is never answered, so `ringcast.v1` must be offered with it.
        if source == session::TokenSource::Subprotocol
            && !up.protocols.iter().any(|p| p == session::SUBPROTOCOL)
        {
            self.metrics.access.token_refused(TokenError::Malformed);
            return Err((
                400,
                "offer the subprotocol ringcast.v1 along with ringcast.token.<jwt>\n".to_owned(),
            ));
        }
        let verified = match jwt {
            Some(jwt) => self.session_from(&jwt),
            None => Err(TokenError::Malformed),
        };
        match verified {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                self.token_refused(&e, source_name(source));
                let w = e.wire();
                Err((w.http_status, format!("token refused: {e}\n")))
            }
        }
    }

    /// Verifies `jwt` at the shard's clock and turns it into a connection's session.
    pub(super) fn session_from(&mut self, jwt: &str) -> Result<Box<Session>, TokenError> {
        let s = self.settings.verifier.verify(jwt, self.unix_now)?;
        self.metrics.access.tokens_accepted.inc();
        let left = s.expires.saturating_sub(self.unix_now);
        let expires_tick = self
            .tick
            .saturating_add(ticks_ceil(Duration::from_secs(left)));
        Ok(Box::new(Session {
            user: s.user,
            rights: s.rights,
            expires_unix: s.expires,
            expires_tick,
        }))
    }

    /// The first token deadline of a new connection ([`Conn::auth_at`]): with a token, its
    /// `refresh_required` notice (mux mode) or its expiry; without one, a mux connection on a
    /// server where no namespace admits anonymous connections must send `auth` within
    /// `--handshake-timeout`.
    pub(super) fn first_auth_timer(&self, s: Option<&Session>, mux: bool) -> u32 {
        match s {
            Some(s) => self.next_auth_timer(s, mux),
            None if mux
                && self.settings.verifier.tokens_enabled()
                && !self.settings.namespaces.any_anonymous() =>
            {
                self.tick + ticks_ceil(self.settings.handshake_timeout)
            }
            None => 0,
        }
    }

    /// When a connection holding `s` hears from its token next: mux connections are told to
    /// refresh [`session::refresh_ahead`] before expiry; everything closes at expiry.
    pub(super) fn next_auth_timer(&self, s: &Session, mux: bool) -> u32 {
        if !mux {
            return s.expires_tick.max(1);
        }
        let left = Duration::from_secs(s.expires_unix.saturating_sub(self.unix_now));
        let notice = s
            .expires_tick
            .saturating_sub(ticks(session::refresh_ahead(left)));
        if notice > self.tick {
            notice
        } else {
            s.expires_tick.max(1)
        }
    }

    /// Counts and logs (throttled, without the token) a token that did not verify.
    pub(super) fn token_refused(&mut self, e: &TokenError, source: &'static str) {
        self.metrics.access.token_refused(*e);
        if let Some(suppressed) = self.logs.token.allow(self.tick) {
            tracing::info!(
                shard = self.id,
                reason = e.reason(),
                source,
                suppressed,
                "token refused (similar lines suppressed for 10 s)"
            );
        }
    }

    /// Counts an access refusal of the pub/sub layer (other refusals are not counted here).
    pub(super) fn count_access_refusal(&self, e: &Error) {
        count_refusal(&self.metrics, e);
    }

    /// A simple-mode message the rules refused: dropped, counted, and logged once per
    /// connection (simple mode has no way to answer a message).
    /// `first`: the connection's first refusal (the one logged).
    pub(super) fn simple_publish_refused(&mut self, token: Token, e: &Error, first: bool) {
        self.count_access_refusal(e);
        if !first {
            return;
        }
        if let Some(suppressed) = self.logs.access.allow(self.tick) {
            tracing::info!(
                shard = self.id,
                slot = token.slot,
                error = %e,
                suppressed,
                "simple-mode messages dropped: not allowed (one line per connection; similar lines suppressed for 10 s)"
            );
        }
    }

    /// A mux `auth` or `refresh` message: verifies the token and replaces the connection's
    /// session. A refresh (or an `auth` on a connection that has a token) must keep the
    /// token's `sub`: a connection does not change users. A refusal leaves the connection
    /// as it was (including the deadline of a pending `auth`).
    pub(super) fn mux_token(
        &mut self,
        token: Token,
        jwt: &str,
        refresh: bool,
        id: Option<&serde_json::Value>,
    ) -> Result<(), Refusal> {
        let refuse = |code, msg: String| Err(mux::refuse(id.cloned(), code, msg));
        let held = self
            .conns
            .get_mut(token)
            .and_then(|c| c.session.as_ref().map(|s| std::sync::Arc::clone(&s.user)));
        if refresh && held.is_none() {
            return refuse(
                ErrorCode::Unauthorized,
                "this connection has no token to refresh: send auth".to_owned(),
            );
        }
        if !self.settings.verifier.tokens_enabled() {
            return refuse(
                ErrorCode::Unauthorized,
                "this server has no token key configured".to_owned(),
            );
        }
        let s = match self.session_from(jwt) {
            Ok(s) => s,
            Err(e) => {
                self.token_refused(&e, "mux");
                let code = if e.wire().mux_code == "token_expired" {
                    ErrorCode::TokenExpired
                } else {
                    ErrorCode::Unauthorized
                };
                return refuse(code, format!("token refused: {e}"));
            }
        };
        if let Some(user) = held
            && user != s.user
        {
            self.metrics.access.refused(AccessRefusal::Forbidden);
            return refuse(
                ErrorCode::Forbidden,
                "a new token must have the same sub as the connection's".to_owned(),
            );
        }
        if refresh {
            self.metrics.access.refreshes.inc();
        }
        let at = self.next_auth_timer(&s, true);
        self.users.add(&s.user, token);
        if let Some(c) = self.conns.get_mut(token) {
            c.session = Some(s);
            c.auth_at = at;
        }
        Ok(())
    }
}

/// Counts `e` in `ringcast_access_refusals_total` if it is an access refusal.
pub(super) fn count_refusal(metrics: &ShardMetrics, e: &Error) {
    let why = match e {
        Error::Unauthorized => AccessRefusal::Unauthorized,
        Error::Forbidden { .. } => AccessRefusal::Forbidden,
        Error::ClientPublishOff => AccessRefusal::ClientPublish,
        Error::TooLarge { .. } => AccessRefusal::TooLarge,
        Error::RateLimited => AccessRefusal::RateLimited,
        Error::BadTopic(_) | Error::TooManyTopics { .. } | Error::NotSubscribed => return,
    };
    metrics.access.refused(why);
}

fn source_name(s: session::TokenSource) -> &'static str {
    match s {
        session::TokenSource::Header => "authorization header",
        session::TokenSource::Subprotocol => "subprotocol",
        session::TokenSource::Query => "query",
    }
}

/// A connection's token deadline came: what the once-per-tick timer pass does about it.
#[derive(Debug, Clone, Copy)]
pub(super) struct AuthTimer {
    /// The shard's tick.
    pub now: u32,
    /// The shard's unix time (s).
    pub unix_now: u64,
    /// `--send-queue-limit`, for the `refresh_required` notice.
    pub limit: usize,
}

impl AuthTimer {
    /// `c`'s deadline ([`Conn::auth_at`]) has passed: close it (no `auth` in time: 4002;
    /// token expired: 4001), or tell a mux connection to refresh.
    pub fn fire(
        self,
        c: &mut Conn,
        scratch: &mut BytesMut,
        arena: &mut BytesMut,
        metrics: &ShardMetrics,
        dirty: &mut Vec<u32>,
    ) {
        c.auth_at = 0;
        let notice = match &c.session {
            None => {
                metrics.access.token_refused(TokenError::Missing);
                self.close(
                    c,
                    CLOSE_TOKEN_INVALID,
                    "no auth message within the handshake timeout",
                    scratch,
                    dirty,
                );
                return;
            }
            Some(s) if self.now < s.expires_tick => {
                c.auth_at = s.expires_tick;
                s.expires_unix.saturating_sub(self.unix_now)
            }
            Some(_) => {
                metrics.access.expired_closes.inc();
                self.close(
                    c,
                    CLOSE_TOKEN_EXPIRED,
                    "token expired: reconnect with a new token",
                    scratch,
                    dirty,
                );
                return;
            }
        };
        metrics.access.refresh_required.inc();
        let frame = frame_once(arena, OpCode::Text, &mux::refresh_required(notice));
        // Through the send-queue limit like any data frame: a connection too backlogged to
        // take it is a slow consumer, and its expiry still closes it.
        c.push_data(frame, self.limit, dirty);
    }

    fn close(
        self,
        c: &mut Conn,
        code: u16,
        reason: &str,
        scratch: &mut BytesMut,
        dirty: &mut Vec<u32>,
    ) {
        c.close_ws(
            code,
            reason,
            scratch,
            dirty,
            self.now + ticks_ceil(CLOSE_GRACE),
        );
    }
}
