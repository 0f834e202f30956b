//! Admission: which connections and requests are refused before they do anything (draining, `--max-connections`, `--allowed-origins`, per-IP
//! connection and connect-rate limits), each with a status, a one-line reason, a debug log
//! line and `ringcast_refused_total{reason}`.
//!
//! Per-IP state is global (one [`PeerTable`] in [`super::Shared`] behind a mutex) so that the limits
//! mean what they say whatever shard `SO_REUSEPORT` hands a connection to. The table is
//! touched only when a connection is accepted or released, and only when a per-IP limit is
//! configured: the per-message path never sees it. A connection over a per-IP limit is
//! answered 429 and closed at accept, without reading: it never takes a slot, a buffer or a
//! place in the global connection count, so one address cannot exhaust what every address
//! shares (it used to be held until its request head arrived, counted against
//! `--max-connections`, which let one address make every other one get 503).
//!
//! The origin policy (`--allowed-origins`) applies to every request that carries an
//! `Origin` header, not only upgrades: a cross-site page can `POST /publish` with a
//! `text/plain` body, which browsers send without a CORS preflight.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::http::Routed;
use crate::io::Token;
use crate::metrics::RefusalReason;
use crate::proto::handshake::{self, Head};

use super::ShardState;

/// What admission needs from the configuration.
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// Allowed browser origins, lower-case; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Open connections per IP; 0: no limit.
    pub max_connections_per_ip: usize,
    /// New connections per second per IP; 0: no limit.
    pub connect_rate_per_ip: u32,
    /// Token bucket size for the connect rate.
    pub connect_burst_per_ip: u32,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            allowed_origins: None,
            max_connections_per_ip: 0,
            connect_rate_per_ip: 0,
            connect_burst_per_ip: 20,
        }
    }
}

impl AdmissionSettings {
    fn per_ip(&self) -> bool {
        self.max_connections_per_ip != 0 || self.connect_rate_per_ip != 0
    }
}

/// One IP's open connections and connect tokens.
#[derive(Debug)]
struct Peer {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

/// Every IP with an open connection or a bucket that is not full.
#[derive(Debug, Default)]
pub struct PeerTable {
    map: HashMap<IpAddr, Peer>,
    /// Size after the last sweep of idle entries; the next sweep runs at twice this.
    swept_at: usize,
}

impl PeerTable {
    /// Admits one new connection from `ip`, or says which limit it hits.
    fn admit(
        &mut self,
        ip: IpAddr,
        s: &AdmissionSettings,
        now: Instant,
    ) -> Result<(), RefusalReason> {
        let burst = f64::from(s.connect_burst_per_ip.max(1));
        let peer = self.map.entry(ip).or_insert(Peer {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if s.max_connections_per_ip != 0 && peer.open >= s.max_connections_per_ip {
            return Err(RefusalReason::IpConnections);
        }
        if s.connect_rate_per_ip != 0 {
            let dt = now.saturating_duration_since(peer.refilled).as_secs_f64();
            peer.tokens = (peer.tokens + dt * f64::from(s.connect_rate_per_ip)).min(burst);
            peer.refilled = now;
            if peer.tokens < 1.0 {
                return Err(RefusalReason::IpRate);
            }
            peer.tokens -= 1.0;
        }
        peer.open += 1;
        Ok(())
    }

    /// A connection from `ip` closed.
    fn release(&mut self, ip: IpAddr, s: &AdmissionSettings, now: Instant) {
        if let Some(p) = self.map.get_mut(&ip) {
            p.open = p.open.saturating_sub(1);
        }
        // Drop entries that hold nothing: no connection and a full bucket. Refused-only
        // IPs (open 0, bucket empty) stay until their bucket would be full again.
        if self.map.len() > 1024 && self.map.len() >= self.swept_at.saturating_mul(2) {
            let burst = f64::from(s.connect_burst_per_ip.max(1));
            let rate = f64::from(s.connect_rate_per_ip);
            self.map.retain(|_, p| {
                let dt = now.saturating_duration_since(p.refilled).as_secs_f64();
                p.open > 0 || (rate > 0.0 && p.tokens + dt * rate < burst)
            });
            self.swept_at = self.map.len().max(512);
        } else if let Some(p) = self.map.get(&ip)
            && p.open == 0
            && (s.connect_rate_per_ip == 0 || p.tokens >= f64::from(s.connect_burst_per_ip))
        {
            self.map.remove(&ip);
        }
    }

    /// Distinct IPs tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no IP is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A shard's own admission state.
#[derive(Debug, Default)]
pub struct AdmissionState {
    /// Per-IP bookkeeping of each slot (only with per-IP limits), indexed by slot: O(1) at
    /// request and release time, whatever the number of connections.
    peers: Vec<PeerSlot>,
}

/// What a slot's connection means to the per-IP table.
#[derive(Debug, Clone, Copy, Default)]
enum PeerSlot {
    /// Not counted (no per-IP limit, or the slot is free).
    #[default]
    None,
    /// Counted against this IP until released.
    Counted(Token, IpAddr),
}

/// The IP to count: an IPv4-mapped IPv6 address counts as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl ShardState {
    /// Accept hook, before the connection gets a slot: checks its IP's limits (when
    /// configured). `Some(ip)`: admitted (`ip` to count with [`ShardState::count_peer`],
    /// `None` when not tracked); `None`: refused, answered 429 and closed here.
    pub(super) fn admit_peer(&mut self, stream: &std::net::TcpStream) -> Option<Option<IpAddr>> {
        let s = &self.settings.admission;
        if !s.per_ip() {
            return Some(None);
        }
        let ip = match stream.peer_addr() {
            Ok(a) => canonical(a.ip()),
            Err(e) => {
                tracing::debug!(shard = self.id, error = %e, "getpeername failed; not counted per IP");
                return Some(None);
            }
        };
        let verdict = match self.shared.peers.lock() {
            Ok(mut t) => t.admit(ip, s, Instant::now()),
            Err(poisoned) => poisoned.into_inner().admit(ip, s, Instant::now()),
        };
        let Err(reason) = verdict else {
            return Some(Some(ip));
        };
        tracing::debug!(shard = self.id, %ip, reason = reason.as_str(), "connection over a per-IP limit");
        self.metrics.refused(reason);
        self.metrics.handshake_failure(429);
        refuse_at_accept(stream, reason);
        None
    }

    /// Records an admitted connection's IP against its slot, for [`ShardState::forget_peer`].
    pub(super) fn count_peer(&mut self, token: Token, ip: Option<IpAddr>) {
        let Some(ip) = ip else {
            return;
        };
        let slot = token.slot as usize;
        if self.admission.peers.len() <= slot {
            self.admission.peers.resize(slot + 1, PeerSlot::None);
        }
        self.admission.peers[slot] = PeerSlot::Counted(token, ip);
    }

    /// Release hook: gives the connection's IP slot back.
    pub(super) fn forget_peer(&mut self, token: Token) {
        let Some(entry) = self.admission.peers.get_mut(token.slot as usize) else {
            return;
        };
        let ip = match *entry {
            PeerSlot::Counted(t, ip) if t == token => ip,
            _ => return,
        };
        *entry = PeerSlot::None;
        let s = &self.settings.admission;
        match self.shared.peers.lock() {
            Ok(mut t) => t.release(ip, s, Instant::now()),
            Err(poisoned) => poisoned.into_inner().release(ip, s, Instant::now()),
        }
    }

    /// Decides whether a parsed request is refused before it is routed; if so, answers it
    /// and returns true.
    pub(super) fn refuse_early(&mut self, token: Token, req: &Head<'_>, routed: &Routed) -> bool {
        let refusal = self.admission(req, routed);
        let Some((status, reason, body)) = refusal else {
            return false;
        };
        self.metrics.refused(reason);
        self.respond(token, status, body);
        true
    }

    fn admission(
        &mut self,
        req: &Head<'_>,
        routed: &Routed,
    ) -> Option<(u16, RefusalReason, &'static str)> {
        let is_work = matches!(
            routed,
            Routed::Upgrade(_) | Routed::Publish(_) | Routed::PublishBatch
        );
        if is_work && self.shared.drain.is_draining() {
            return Some((503, RefusalReason::Draining, "server is shutting down\n"));
        }
        // Every request with an Origin is checked, whatever its route: a page from another
        // site must be able to use none of them (upgrades, and `POST /publish` with a
        // `text/plain` body, which a browser sends cross-site without a preflight).
        if let Some(allowed) = &self.settings.admission.allowed_origins
            && let Some(origin) = req.header("origin")
        {
            let ok = std::str::from_utf8(origin)
                .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o.trim())));
            if !ok {
                return Some((403, RefusalReason::Origin, "origin not allowed\n"));
            }
        }
        if matches!(routed, Routed::Upgrade(_))
            && self.shared.connections.load(Ordering::Relaxed) > self.settings.max_connections
        {
            return Some((
                503,
                RefusalReason::MaxConnections,
                "server at its connection limit\n",
            ));
        }
        None
    }
}

/// Answers a connection refused at accept with 429 and lets it close: one non-blocking send
/// of a response that fits any fresh socket's send buffer, and a non-blocking read of what
/// the client already sent (closing with unread bytes would reset the connection, and the
/// client might lose the response). Nothing waits; a client that has not sent its request
/// yet may see a reset when it does, after the 429.
fn refuse_at_accept(stream: &std::net::TcpStream, reason: RefusalReason) {
    let body = match reason {
        RefusalReason::IpConnections => "too many connections from your address\n",
        _ => "too many new connections from your address: slow down\n",
    };
    let mut out = Vec::with_capacity(160);
    handshake::write_response(
        429,
        "text/plain; charset=utf-8",
        &[],
        body.as_bytes(),
        &mut out,
    );
    let sock = socket2::SockRef::from(stream);
    let _ = sock.send_with_flags(&out, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    for _ in 0..4 {
        match sock.recv_with_flags(&mut scratch, libc::MSG_DONTWAIT) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn peer_limits() {
        let s = AdmissionSettings {
            max_connections_per_ip: 2,
            connect_rate_per_ip: 1,
            connect_burst_per_ip: 3,
            ..AdmissionSettings::default()
        };
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        let mut t = PeerTable::default();
        assert_eq!(t.admit(ip, &s, t0), Ok(()));
        assert_eq!(t.admit(ip, &s, t0), Ok(()));
        assert_eq!(t.admit(ip, &s, t0), Err(RefusalReason::IpConnections));
        t.release(ip, &s, t0);
        assert_eq!(t.admit(ip, &s, t0), Ok(()), "third token of the burst");
        t.release(ip, &s, t0);
        assert_eq!(t.admit(ip, &s, t0), Err(RefusalReason::IpRate));
        let later = t0 + Duration::from_millis(1100);
        assert_eq!(t.admit(ip, &s, later), Ok(()), "refilled");
        assert_eq!(
            canonical("::ffff:1.2.3.4".parse().unwrap_or(ip)),
            IpAddr::from([1, 2, 3, 4])
        );
    }
}
