//! Who a connection is: the verified token it presented (user, rights, expiry), where
//! tokens are looked for in an upgrade request, and the per-connection publish rate.
//!
//! A connection with a token holds a boxed [`Session`]; one without holds nothing, so an
//! anonymous idle connection pays one pointer. Rights are checked by the pub/sub layer when
//! a connection subscribes or a mux command names a topic ([`crate::pubsub::access`]);
//! nothing here runs per delivered message. Expiry is a tick in the connection
//! (`Conn::auth_at`) that the shard's once-per-tick timer pass compares.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Rights;
use crate::http::Credential;
use crate::proto::handshake::Head;
use crate::pubsub::Grants;

impl Grants for Rights {
    fn may_subscribe(&self, topic: &str) -> bool {
        Rights::may_subscribe(self, topic)
    }
    fn may_publish(&self, topic: &str) -> bool {
        Rights::may_publish(self, topic)
    }
}

/// The subprotocol a browser offers (and the server answers) when it passes its token as a
/// second subprotocol `ringcast.token.<jwt>`.
pub const SUBPROTOCOL: &str = "ringcast.v1";
/// The prefix of the subprotocol that carries a token.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "ringcast.token.";

/// A verified token, kept by its connection.
#[derive(Debug)]
pub struct Session {
    /// The token's `sub` (may be empty).
    pub user: Arc<str>,
    /// What the token allows.
    pub rights: Rights,
    /// Unix time (s) at which the token expires.
    pub expires_unix: u64,
    /// Tick at which the token expires (the connection closes with 4001 unless refreshed).
    pub expires_tick: u32,
}

/// Where a token was found in an upgrade request (the first of these wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <jwt>`.
    Header,
    /// `Sec-WebSocket-Protocol: ringcast.v1, ringcast.token.<jwt>`.
    Subprotocol,
    /// `?token=<jwt>` (least safe: query strings land in proxy logs).
    Query,
}

/// The token of an upgrade request, and where it was found: the `Authorization: Bearer`
/// header (read by [`crate::http::presented_credential`], the same rules as the backend
/// API), then the `ringcast.token.` subprotocol, then `?token=`. `None` inside: a token was
/// presented but cannot be read (a malformed header or query escape, two credentials).
pub fn upgrade_token<'a>(
    head: &Head<'a>,
    protocols: &'a [String],
) -> Option<(TokenSource, Option<Cow<'a, str>>)> {
    match crate::http::presented_credential(head) {
        Ok(Some(Credential::Bearer(t))) => {
            return Some((TokenSource::Header, Some(Cow::Borrowed(t))));
        }
        Err(_) => return Some((TokenSource::Header, None)),
        // An API key is not a connection token.
        Ok(Some(Credential::ApiKey(_)) | None) => {}
    }
    if let Some(t) = protocols
        .iter()
        .find_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
    {
        return Some((TokenSource::Subprotocol, Some(Cow::Borrowed(t))));
    }
    let q = head.query?;
    let raw = q.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    Some((
        TokenSource::Query,
        crate::http::percent_decode(raw).map(Cow::Owned),
    ))
}

/// When to tell a mux-mode connection to refresh its token: `min(30 s, half of what is
/// left)` before it expires.
pub fn refresh_ahead(left: Duration) -> Duration {
    (left / 2).min(Duration::from_secs(30))
}

/// A per-connection token bucket for publishes (`--client-publish-rate` per second, up to
/// `--client-publish-burst` at once), refilled by the shard's tick (100 ms). Eight bytes per
/// connection; untouched when the rate is 0 (no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishBucket {
    /// Thousandths of a publish available.
    milli: u32,
    /// Tick of the last refill; 0 before the first publish (the bucket then starts full).
    last: u32,
}

impl PublishBucket {
    /// Takes one publish if the bucket has one. `rate` per second (0: unlimited), `burst`
    /// at most, at tick `now`.
    pub fn take(&mut self, rate: u32, burst: u32, now: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let cap = u64::from(burst.max(1)) * 1000;
        let level = if self.last == 0 {
            cap
        } else {
            // One tick is 100 ms: rate/10 publishes, rate*100 thousandths.
            let refill = u64::from(now.saturating_sub(self.last)) * u64::from(rate) * 100;
            (u64::from(self.milli) + refill).min(cap)
        };
        self.last = now.max(1);
        if level >= 1000 {
            self.milli = u32::try_from(level - 1000).unwrap_or(u32::MAX);
            true
        } else {
            self.milli = u32::try_from(level).unwrap_or(u32::MAX);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let mut b = PublishBucket::default();
        let (rate, burst) = (10, 3);
        assert!((0..3).all(|_| b.take(rate, burst, 5)), "the burst at once");
        assert!(!b.take(rate, burst, 5), "then nothing in the same tick");
        assert!(b.take(rate, burst, 6), "10/s: one per 100 ms tick");
        assert!(!b.take(rate, burst, 6));
        assert!(b.take(rate, burst, 100) && b.take(rate, burst, 100) && b.take(rate, burst, 100));
        assert!(!b.take(rate, burst, 100), "refill is capped at the burst");
        assert!(b.take(0, 0, 1), "rate 0: no limit");
    }

    #[test]
    fn refresh_comes_ahead_of_expiry() {
        assert_eq!(
            refresh_ahead(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            refresh_ahead(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
    }
}
