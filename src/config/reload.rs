//! What a reload (SIGHUP) may change in a running server: every key of [`Config`] is
//! sorted here into those applied live and those that need a restart, and [`diff`] says
//! which of them differ between the configuration in force and a newly loaded one.
//!
//! The sorting is exhaustive by construction: [`diff`] destructures `Config` without
//! `..`, so a key added to `Config` and not sorted here does not compile.

use super::Config;

/// The keys that differ between the configuration in force and a new one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Changed and applied by a reload.
    pub applied: Vec<&'static str>,
    /// Changed, but in force only after a restart (the old value still applies).
    pub restart: Vec<&'static str>,
}

impl Diff {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.restart.is_empty()
    }
}

/// The keys whose key material a reload re-reads: the verifier is rebuilt when one of
/// them (or a key file's content) changed.
pub const KEY_KEYS: &[&str] = &[
    "jwt_hmac_secret",
    "jwt_hmac_secret_file",
    "jwt_public_key_file",
    "jwks_file",
    "jwks_url",
    "jwt_audience",
    "jwt_issuer",
    "jwt_leeway",
    "max_token_size",
    "api_key",
    "api_key_file",
];

macro_rules! sorted_keys {
    (reload: [$($r:ident),* $(,)?], restart: [$($s:ident),* $(,)?] $(,)?) => {
        /// Keys a reload applies to the running server.
        pub const RELOADABLE: &[&str] = &[$(stringify!($r)),*];
        /// Keys that need a restart.
        pub const RESTART_ONLY: &[&str] = &[$(stringify!($s)),*];

        /// The keys that differ between `active` and `new`. `files_changed` lists key
        /// keys whose file content changed while the path did not. A change that turns
        /// JWT verification on or off (a key source where there was none, or the last one
        /// removed) needs a restart: the access rules of interned topics depend on it.
        pub fn diff(active: &Config, new: &Config, files_changed: &[&'static str]) -> Diff {
            let Config { $($r: _,)* $($s: _,)* } = new;
            let flip = active.tokens_configured() != new.tokens_configured();
            let mut d = Diff::default();
            $(
                let key = stringify!($r);
                if active.$r != new.$r || files_changed.contains(&key) {
                    if flip && KEY_KEYS.contains(&key) {
                        d.restart.push(key);
                    } else {
                        d.applied.push(key);
                    }
                }
            )*
            $(
                if active.$s != new.$s {
                    d.restart.push(stringify!($s));
                }
            )*
            d
        }

        /// What is in force after a reload: `active` with the applied keys of `d` taken
        /// from `new` (restart-only keys keep their old values).
        pub fn apply(active: &Config, new: &Config, d: &Diff) -> Config {
            let mut c = active.clone();
            $(
                if d.applied.contains(&stringify!($r)) {
                    c.$r = new.$r.clone();
                }
            )*
            c
        }
    };
}

sorted_keys! {
    reload: [
        log_level,
        max_connections,
        send_queue_limit,
        ping_interval,
        idle_timeout,
        handshake_timeout,
        allowed_origins,
        max_connections_per_ip,
        connect_rate_per_ip,
        connect_burst_per_ip,
        mux_error_budget,
        http_idle_timeout,
        http_max_requests_per_connection,
        max_publish_batch_bytes,
        max_publish_batch_items,
        client_publish_rate,
        client_publish_burst,
        jwt_hmac_secret,
        jwt_hmac_secret_file,
        jwt_public_key_file,
        jwks_file,
        jwks_url,
        jwt_audience,
        jwt_issuer,
        jwt_leeway,
        max_token_size,
        api_key,
        api_key_file,
    ],
    restart: [
        listen,
        shards,
        io,
        ring_entries,
        recv_buffer_size,
        recv_buffers,
        max_message_size,
        max_frame_size,
        max_header_bytes,
        slow_consumer,
        write_delay,
        pin_cores,
        log_format,
        drain_timeout,
        drain_grace,
        admin_listen,
        max_topics_per_connection,
        max_batch_bytes,
        max_inbox_bytes,
        anonymous,
        client_publish,
        history_size,
        history_ttl,
        history_memory_limit,
        max_recovery_publications,
        broker,
        broker_password_file,
        node_id,
        broker_required,
        broker_optional,
        broker_timeout,
        broker_max_pending,
        broker_prefix,
        namespaces,
    ],
}

/// The bytes of every key file the configuration names (secret file, PEM files, JWK Set
/// file, API key file), by key; a file that cannot be read counts as empty (loading the
/// keys then reports the error).
pub fn key_files(cfg: &Config) -> Vec<(&'static str, Vec<u8>)> {
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(p) = &cfg.jwt_hmac_secret_file {
        out.push(("jwt_hmac_secret_file", read(p)));
    }
    for p in &cfg.jwt_public_key_file {
        out.push(("jwt_public_key_file", read(p)));
    }
    if let Some(p) = &cfg.jwks_file {
        out.push(("jwks_file", read(p)));
    }
    if let Some(p) = &cfg.api_key_file {
        out.push(("api_key_file", read(p)));
    }
    out
}

/// Keys whose file content differs between two [`key_files`] readings.
pub fn files_changed(
    old: &[(&'static str, Vec<u8>)],
    new: &[(&'static str, Vec<u8>)],
) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for key in [
        "jwt_hmac_secret_file",
        "jwt_public_key_file",
        "jwks_file",
        "api_key_file",
    ] {
        let pick = |v: &[(&'static str, Vec<u8>)]| -> Vec<Vec<u8>> {
            v.iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, b)| b.clone())
                .collect()
        };
        if pick(old) != pick(new) {
            out.push(key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_sorted_once() {
        for key in super::super::KEYS {
            let n = RELOADABLE
                .iter()
                .chain(RESTART_ONLY)
                .filter(|k| **k == key)
                .count();
            assert_eq!(n, 1, "{key}");
        }
        for key in KEY_KEYS {
            assert!(RELOADABLE.contains(key), "{key}");
        }
    }

    #[test]
    fn the_diff_sorts_changed_keys_and_apply_keeps_restart_only_ones() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(diff(&old, &new, &[]).is_empty());
        new.max_connections_per_ip = 3;
        new.log_level = "debug".into();
        new.shards = old.shards + 1;
        let d = diff(&old, &new, &[]);
        assert_eq!(d.applied, ["log_level", "max_connections_per_ip"]);
        assert_eq!(d.restart, ["shards"]);
        let now = apply(&old, &new, &d);
        assert_eq!(now.max_connections_per_ip, 3);
        assert_eq!(now.log_level, "debug");
        assert_eq!(now.shards, old.shards);
        // What still differs is exactly the restart-only key.
        assert_eq!(diff(&now, &new, &[]).restart, ["shards"]);
        assert!(diff(&now, &new, &[]).applied.is_empty());
    }

    #[test]
    fn the_systemd_unit_reloads_with_sighup() {
        let unit = include_str!("../../scripts/ringcast.service");
        assert!(
            unit.lines()
                .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID")
        );
    }

    #[test]
    fn a_changed_key_file_counts_as_a_change_of_its_key() {
        let old = vec![("api_key_file", b"a".to_vec())];
        let new = vec![("api_key_file", b"b".to_vec())];
        assert_eq!(files_changed(&old, &new), ["api_key_file"]);
        assert!(files_changed(&old, &old).is_empty());
    }
}
