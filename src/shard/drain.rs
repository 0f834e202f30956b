//! Graceful shutdown in a shard.
//!
//! `main` sets [`DrainShared::draining`] on the first SIGTERM/SIGINT. From then on `/ready`
//! answers 503 and new upgrades and HTTP publishes get 503 (counted as
//! `ringcast_refused_total{reason="draining"}`). For `--drain-grace` (default 5 s) each shard
//! keeps serving its connected clients as before, so that a load balancer polling
//! `/ready` takes the server out of rotation before any client is closed; then each shard:
//!
//! 1. sends close 1001 `server shutting down` to every open WebSocket, queued behind what
//!    is already queued for it, so queued messages are flushed first;
//! 2. keeps serving: `/ready` answers 503 (`/health`, liveness, stays 200), new upgrades and HTTP publishes get 503
//!    (counted as `ringcast_refused_total{reason="draining"}`), `/metrics` still works;
//! 3. waits for the clients' close replies; once no WebSocket and no unsent data is left it
//!    counts itself drained, and it returns from its loop when every shard has drained (so
//!    that no listener closes while others still answer health checks), or when the drain
//!    deadline (`--drain-timeout`, less a margin for `main` to exit in time) passes.
//!
//! `main` exits 0 when every shard has returned, or at the drain timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::proto::close_code;

use super::conn::Phase;
use super::{ShardState, TICK, ticks};

/// Drain state shared by every shard.
#[derive(Debug, Default)]
pub struct DrainShared {
    /// Set on the first SIGTERM/SIGINT: shards close their clients with 1001 and exit.
    pub draining: AtomicBool,
    /// Shards that have no client left to drain. A shard keeps serving (health checks get
    /// 503, not a reset from a closed listener) until every shard has drained.
    pub drained: AtomicUsize,
}

impl DrainShared {
    /// Whether a graceful shutdown is under way.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// A shard's own drain state.
#[derive(Debug, Default)]
pub struct DrainState {
    /// Tick at which this shard stops waiting for its clients (set when draining starts).
    deadline: Option<u32>,
    /// Tick at which the grace period ends (set when the drain signal is first seen).
    grace_end: Option<u32>,
    /// This shard has counted itself in [`DrainShared::drained`].
    drained: bool,
}

impl ShardState {
    /// Loop hook, once per turn: starts the drain when asked and says when this shard is
    /// done (its loop then returns).
    pub(super) fn drain_turn(&mut self) -> bool {
        if !self.shared.drain.is_draining() {
            return false;
        }
        let Some(deadline) = self.drain.deadline else {
            let grace = self.settings.drain_grace;
            let tick = self.tick;
            let end = *self.drain.grace_end.get_or_insert_with(|| {
                if !grace.is_zero() {
                    tracing::info!(
                        grace = ?grace,
                        "drain signal: /ready answers 503 and new upgrades are refused; clients are closed when the grace period ends"
                    );
                }
                tick.saturating_add(ticks(grace))
            });
            self.metrics.draining.set(1);
            if self.tick >= end {
                self.start_drain();
            }
            return false;
        };
        let left = self
            .conns
            .iter()
            .filter(|c| {
                !c.releasing
                    && (matches!(c.phase, Phase::Ws { .. }) || !c.queue.is_empty() || c.sending)
            })
            .count();
        if left == 0 && !self.drain.drained {
            self.drain.drained = true;
            self.shared.drain.drained.fetch_add(1, Ordering::Relaxed);
            tracing::info!(shard = self.id, "drained");
        }
        // Listeners close when their shard returns: wait for every shard so that none of
        // them resets connections queued on its listener while others still serve.
        if self.shared.drain.drained.load(Ordering::Relaxed) >= self.shared.bus.shards() {
            return true;
        }
        if self.tick >= deadline {
            tracing::warn!(
                shard = self.id,
                connections = left,
                "drain timeout: closing the connections that are left"
            );
            return true;
        }
        false
    }

    fn start_drain(&mut self) {
        self.metrics.draining.set(1);
        // Leave main a little time to exit within --drain-timeout itself.
        let budget = self
            .settings
            .drain_timeout
            .saturating_sub(TICK * 3)
            .max(TICK);
        let deadline = self.tick.saturating_add(ticks(budget).max(1));
        self.drain.deadline = Some(deadline);
        let mut closing = 0usize;
        for c in self.conns.iter_mut() {
            if c.releasing {
                continue;
            }
            if let Phase::Ws { ws, .. } = &mut c.phase {
                if ws.state() == crate::proto::conn::State::Open {
                    ws.close(
                        close_code::GOING_AWAY,
                        "server shutting down",
                        &mut self.scratch,
                    );
                    let out = self.scratch.split().freeze();
                    c.push_exempt(out, &mut self.outbox.dirty);
                }
                // Released when the client answers the close, or at the deadline.
                c.deadline = if c.deadline == 0 {
                    deadline
                } else {
                    c.deadline.min(deadline)
                };
                closing += 1;
            }
        }
        tracing::info!(
            shard = self.id,
            websockets = closing,
            open = self.shared.connections.load(Ordering::Relaxed),
            "draining: sent close 1001 to every client"
        );
    }
}
