//! Applying a reloaded configuration in the shards: the part of [`Settings`] a reload may
//! change ([`Reloadable`]), the versioned holder every shard reads it from
//! ([`ReloadShared`], in [`Shared`](super::Shared)), and the copy into a shard's own
//! settings.
//!
//! The shards own their `Settings` and read them on every path without a lock; a reload
//! must not change that. So the main thread stores a new `Reloadable` and bumps a
//! generation, and each shard compares the generation once per tick, in its timer pass,
//! copying the new values into its settings when it moved. A reload is in force in every
//! shard within a tick (100 ms), each shard logging it at debug level; nothing on a per-message path reads the
//! holder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::Settings;
use super::admission::AdmissionSettings;
use crate::config::Config;

/// The settings a reload changes: every one is read where it is used (at an accept, a
/// request, a publish, a refused mux message, a send, the timer pass), so each applies to
/// every connection, open ones included, from its next use.
#[derive(Debug, Clone)]
pub struct Reloadable {
    /// `max_connections`.
    pub max_connections: usize,
    /// `send_queue_limit`.
    pub send_queue_limit: usize,
    /// `ping_interval`; `None`: no pings.
    pub ping_interval: Option<Duration>,
    /// `idle_timeout`; `None`: none.
    pub idle_timeout: Option<Duration>,
    /// `handshake_timeout`.
    pub handshake_timeout: Duration,
    /// `mux_error_budget`.
    pub mux_error_budget: u32,
    /// Origins and per-IP limits.
    pub admission: AdmissionSettings,
    /// `http_idle_timeout`; `None`: no keep-alive.
    pub http_idle_timeout: Option<Duration>,
    /// `http_max_requests_per_connection`.
    pub http_max_requests_per_connection: u32,
    /// `max_publish_batch_bytes`.
    pub max_publish_batch_bytes: usize,
    /// `max_publish_batch_items`.
    pub max_publish_batch_items: usize,
    /// `client_publish_rate`.
    pub client_publish_rate: u32,
    /// `client_publish_burst`.
    pub client_publish_burst: u32,
    /// Tokens and API keys (rebuilt when a key, a key file or a claim rule changed).
    pub verifier: crate::auth::Verifier,
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Origins and per-IP limits from the configuration (`*` among the origins: any).
pub fn admission_settings(cfg: &Config) -> AdmissionSettings {
    AdmissionSettings {
        allowed_origins: (!cfg.allowed_origins.iter().any(|o| o == "*"))
            .then(|| cfg.allowed_origins.clone()),
        max_connections_per_ip: cfg.max_connections_per_ip,
        connect_rate_per_ip: cfg.connect_rate_per_ip,
        connect_burst_per_ip: cfg.connect_burst_per_ip,
    }
}

impl Reloadable {
    /// The reloadable settings of `cfg`, with `verifier` built from its keys.
    pub fn from_config(cfg: &Config, verifier: crate::auth::Verifier) -> Reloadable {
        Reloadable {
            max_connections: cfg.max_connections,
            send_queue_limit: cfg.send_queue_limit,
            ping_interval: nonzero(cfg.ping_interval),
            idle_timeout: nonzero(cfg.idle_timeout),
            handshake_timeout: cfg.handshake_timeout,
            mux_error_budget: cfg.mux_error_budget,
            admission: admission_settings(cfg),
            http_idle_timeout: nonzero(cfg.http_idle_timeout),
            http_max_requests_per_connection: cfg.http_max_requests_per_connection,
            max_publish_batch_bytes: cfg.max_publish_batch_bytes,
            max_publish_batch_items: cfg.max_publish_batch_items,
            client_publish_rate: cfg.client_publish_rate,
            client_publish_burst: cfg.client_publish_burst,
            verifier,
        }
    }

    /// Copies these values into a shard's settings.
    pub fn apply_to(&self, s: &mut Settings) {
        s.max_connections = self.max_connections;
        s.send_queue_limit = self.send_queue_limit;
        s.ping_interval = self.ping_interval;
        s.idle_timeout = self.idle_timeout;
        s.handshake_timeout = self.handshake_timeout;
        s.mux_error_budget = self.mux_error_budget;
        s.admission = self.admission.clone();
        s.http_idle_timeout = self.http_idle_timeout;
        s.http_max_requests_per_connection = self.http_max_requests_per_connection;
        s.max_publish_batch_bytes = self.max_publish_batch_bytes;
        s.max_publish_batch_items = self.max_publish_batch_items;
        s.client_publish_rate = self.client_publish_rate;
        s.client_publish_burst = self.client_publish_burst;
        s.verifier = self.verifier.clone();
    }
}

/// The latest reloaded settings and their generation (0: never reloaded).
#[derive(Debug, Default)]
pub struct ReloadShared {
    current: ArcSwapOption<Reloadable>,
    generation: AtomicU64,
}

impl ReloadShared {
    /// Publishes new settings; every shard takes them at its next timer pass.
    pub fn publish(&self, r: Reloadable) {
        self.current.store(Some(std::sync::Arc::new(r)));
        // Release: a shard that sees the new generation sees the settings stored before it.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// When the generation moved past `*seen`: the settings to apply (and `*seen` moves).
    pub fn take_new(&self, seen: &mut u64) -> Option<std::sync::Arc<Reloadable>> {
        let g = self.generation.load(Ordering::Acquire);
        if g == *seen {
            return None;
        }
        *seen = g;
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_sees_each_generation_once() {
        let shared = ReloadShared::default();
        let mut seen = 0;
        assert!(shared.take_new(&mut seen).is_none());
        let cfg = Config {
            max_connections_per_ip: 7,
            ..Config::default()
        };
        shared.publish(Reloadable::from_config(
            &cfg,
            crate::auth::Verifier::disabled(),
        ));
        let r = shared.take_new(&mut seen).expect("new settings");
        assert_eq!(r.admission.max_connections_per_ip, 7);
        assert!(shared.take_new(&mut seen).is_none());
    }
}
