//! Access-control counters: refused tokens by reason, refused commands by reason, API-key
//! refusals, token expiry, refreshes and disconnects by the backend API. Every refusal of
//! the access layer is counted here (the log lines about them are throttled; these are not).

use super::Counter;

use crate::auth::TokenError;

/// Why a subscribe or publish was refused by the access rules
/// (`ringcast_access_refusals_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessRefusal {
    /// No token, and the namespace grants nothing to anonymous connections.
    Unauthorized,
    /// The token's rights do not cover the topic.
    Forbidden,
    /// The namespace does not let clients publish (`client_publish = false`).
    ClientPublish,
    /// Larger than the namespace's `max_message_size`.
    TooLarge,
    /// Past the connection's `--client-publish-rate`.
    RateLimited,
}

impl AccessRefusal {
    /// Every reason, in label order.
    pub const ALL: [AccessRefusal; 5] = [
        AccessRefusal::Unauthorized,
        AccessRefusal::Forbidden,
        AccessRefusal::ClientPublish,
        AccessRefusal::TooLarge,
        AccessRefusal::RateLimited,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessRefusal::Unauthorized => "unauthorized",
            AccessRefusal::Forbidden => "forbidden",
            AccessRefusal::ClientPublish => "client_publish",
            AccessRefusal::TooLarge => "too_large",
            AccessRefusal::RateLimited => "rate_limited",
        }
    }
}

const ACCESS_LABELS: [&str; AccessRefusal::ALL.len()] = {
    let mut out = [""; AccessRefusal::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = AccessRefusal::ALL[i].as_str();
        i += 1;
    }
    out
};

/// One shard's access-control counters (part of [`super::ShardMetrics`]).
#[derive(Debug, Default)]
pub struct AccessMetrics {
    /// Tokens refused, by reason (index in [`TokenError::ALL`]).
    pub token_refusals: [Counter; TokenError::ALL.len()],
    /// Tokens accepted (at an upgrade, an `auth` or a `refresh` message, an HTTP request).
    pub tokens_accepted: Counter,
    /// Subscribes and publishes refused, by reason (index in [`AccessRefusal::ALL`]).
    pub refusals: [Counter; AccessRefusal::ALL.len()],
    /// Backend requests refused for a missing or wrong API key.
    pub api_key_refusals: Counter,
    /// Connections closed because their token expired (close 4001).
    pub expired_closes: Counter,
    /// `refresh_required` messages sent.
    pub refresh_required: Counter,
    /// Tokens renewed with a `refresh` message.
    pub refreshes: Counter,
    /// Connections closed by `POST /api/disconnect` (close 4004).
    pub disconnects: Counter,
}

impl AccessMetrics {
    /// Counts a refused token.
    pub fn token_refused(&self, e: TokenError) {
        if let Some(i) = TokenError::ALL.iter().position(|&x| x == e) {
            self.token_refusals[i].inc();
        }
    }

    /// Counts a refused subscribe or publish.
    pub fn refused(&self, why: AccessRefusal) {
        self.refusals[why as usize].inc();
    }
}

/// Appends the access-control families to a `/metrics` page.
pub fn render(out: &mut String, shards: &[std::sync::Arc<super::ShardMetrics>]) {
    use std::fmt::Write as _;
    let sum = |f: &dyn Fn(&AccessMetrics) -> u64| shards.iter().map(|s| f(&s.access)).sum::<u64>();
    let _ = writeln!(
        out,
        "# HELP ringcast_token_refusals_total Connection tokens (JWT) refused, by reason.\n# TYPE ringcast_token_refusals_total counter"
    );
    for (i, e) in TokenError::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringcast_token_refusals_total{{reason=\"{}\"}} {}",
            e.reason(),
            sum(&|m| m.token_refusals[i].get())
        );
    }
    let name = "ringcast_access_refusals_total";
    let _ = writeln!(
        out,
        "# HELP {name} Subscribes and publishes refused by the access rules, by reason.\n# TYPE {name} counter"
    );
    for (i, v) in ACCESS_LABELS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{v}\"}} {}",
            sum(&|m| m.refusals[i].get())
        );
    }
    type Simple = (&'static str, &'static str, fn(&AccessMetrics) -> u64);
    let simple: [Simple; 6] = [
        (
            "ringcast_tokens_accepted_total",
            "Connection tokens (JWT) accepted.",
            |m| m.tokens_accepted.get(),
        ),
        (
            "ringcast_api_key_refusals_total",
            "Backend requests refused for a missing or wrong API key (401).",
            |m| m.api_key_refusals.get(),
        ),
        (
            "ringcast_token_expired_closes_total",
            "Connections closed because their token expired (close 4001).",
            |m| m.expired_closes.get(),
        ),
        (
            "ringcast_refresh_required_total",
            "refresh_required messages sent to mux-mode connections.",
            |m| m.refresh_required.get(),
        ),
        (
            "ringcast_token_refreshes_total",
            "Tokens renewed with a refresh message.",
            |m| m.refreshes.get(),
        ),
        (
            "ringcast_api_disconnects_total",
            "Connections closed by POST /api/disconnect (close 4004).",
            |m| m.disconnects.get(),
        ),
    ];
    for (name, help, f) in simple {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            sum(&|m| f(m))
        );
    }
}
