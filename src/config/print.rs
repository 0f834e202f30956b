//! `--print-config`: the effective configuration, one `key = value` line per key in TOML
//! syntax (so it can be pasted into a file), each with where its value came from; secrets
//! are shown as `"<redacted>"`.

use std::fmt::Write as _;

use super::{Config, KEYS, Provenance, SECRET_KEYS, Source, format_duration, format_size};

/// The effective configuration as text.
pub(super) fn render(cfg: &Config, prov: &Provenance) -> String {
    let mut out =
        String::from("# ringcast effective configuration (flags > environment > file > default)\n");
    for key in KEYS {
        let value = if SECRET_KEYS.contains(&key) && is_set(cfg, key) {
            Some("\"<redacted>\"".to_owned())
        } else {
            value_of(cfg, key)
        };
        let from = match prov.get(key) {
            Some((Source::Flag, _)) => format!("--{}", key.replace('_', "-")),
            Some((Source::Env, _)) => super::env_name(key),
            Some((Source::File(p), _)) => p.display().to_string(),
            Some((Source::Default | Source::Code, _)) | None => "default".to_owned(),
        };
        match value {
            Some(v) => {
                let _ = writeln!(out, "{key} = {v}  # {from}");
            }
            None => {
                let _ = writeln!(out, "# {key} is unset  # {from}");
            }
        }
    }
    for ns in &cfg.namespaces {
        let _ = writeln!(out, "\n[namespaces.{}]", ns.name);
        if let Some(a) = ns.anonymous {
            let _ = writeln!(out, "anonymous = \"{a}\"");
        }
        let _ = writeln!(out, "client_publish = {}", ns.client_publish);
        if let Some(n) = ns.history_size {
            let _ = writeln!(out, "history_size = {n}");
        }
        if let Some(t) = ns.history_ttl {
            let _ = writeln!(out, "history_ttl = \"{}\"", super::format_duration(t));
        }
        if let Some(m) = ns.max_message_size {
            let _ = writeln!(out, "max_message_size = \"{}\"", format_size(m as u64));
        }
    }
    out
}

fn is_set(cfg: &Config, key: &str) -> bool {
    match key {
        "jwt_hmac_secret" => cfg.jwt_hmac_secret.is_some(),
        "api_key" => !cfg.api_key.is_empty(),
        // Shown without its password (BrokerUrl's Display).
        "broker" => false,
        _ => false,
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn list<T: ToString>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| q(&i.to_string())).collect();
    format!("[{}]", inner.join(", "))
}

fn opt<T: ToString>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(|v| q(&v.to_string()))
}

fn size(n: usize) -> String {
    q(&format_size(n as u64))
}

fn dur(d: std::time::Duration) -> String {
    q(&format_duration(d))
}

/// A key's value in TOML syntax (`None`: unset).
fn value_of(c: &Config, key: &str) -> Option<String> {
    let set = match key {
        "listen" => list(&c.listen),
        "shards" => c.shards.to_string(),
        "io" => q(&c.io.to_string()),
        "ring_entries" => c.ring_entries.to_string(),
        "recv_buffer_size" => size(c.recv_buffer_size),
        "recv_buffers" => c.recv_buffers.to_string(),
        "max_connections" => c.max_connections.to_string(),
        "max_message_size" => size(c.max_message_size),
        "max_frame_size" => size(c.max_frame_size),
        "max_header_bytes" => size(c.max_header_bytes),
        "send_queue_limit" => size(c.send_queue_limit),
        "slow_consumer" => q(&c.slow_consumer.to_string()),
        "ping_interval" => dur(c.ping_interval),
        "idle_timeout" => dur(c.idle_timeout),
        "handshake_timeout" => dur(c.handshake_timeout),
        "write_delay" => dur(c.write_delay),
        "pin_cores" => c.pin_cores.to_string(),
        "log_level" => q(&c.log_level),
        "log_format" => q(&c.log_format.to_string()),
        "drain_timeout" => dur(c.drain_timeout),
        "drain_grace" => dur(c.drain_grace),
        "admin_listen" => return opt(&c.admin_listen),
        "allowed_origins" => list(&c.allowed_origins),
        "max_connections_per_ip" => c.max_connections_per_ip.to_string(),
        "connect_rate_per_ip" => c.connect_rate_per_ip.to_string(),
        "connect_burst_per_ip" => c.connect_burst_per_ip.to_string(),
        "max_topics_per_connection" => c.max_topics_per_connection.to_string(),
        "mux_error_budget" => c.mux_error_budget.to_string(),
        "max_batch_bytes" => size(c.max_batch_bytes),
        "max_inbox_bytes" => size(c.max_inbox_bytes),
        "http_idle_timeout" => dur(c.http_idle_timeout),
        "http_max_requests_per_connection" => c.http_max_requests_per_connection.to_string(),
        "max_publish_batch_bytes" => size(c.max_publish_batch_bytes),
        "max_publish_batch_items" => c.max_publish_batch_items.to_string(),
        "jwt_hmac_secret" | "api_key" => return None,
        "jwt_hmac_secret_file" => {
            return opt(&c.jwt_hmac_secret_file.as_ref().map(|p| p.display()));
        }
        "jwt_public_key_file" if c.jwt_public_key_file.is_empty() => return None,
        "jwt_public_key_file" => {
            let v: Vec<String> = c
                .jwt_public_key_file
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            list(&v)
        }
        "jwks_file" => return opt(&c.jwks_file.as_ref().map(|p| p.display())),
        "jwks_url" => return opt(&c.jwks_url),
        "jwt_audience" => return opt(&c.jwt_audience),
        "jwt_issuer" => return opt(&c.jwt_issuer),
        "jwt_leeway" => dur(c.jwt_leeway),
        "max_token_size" => size(c.max_token_size),
        "api_key_file" => return opt(&c.api_key_file.as_ref().map(|p| p.display())),
        "anonymous" => return opt(&c.anonymous),
        "client_publish" => c.client_publish.to_string(),
        "client_publish_rate" => c.client_publish_rate.to_string(),
        "client_publish_burst" => c.client_publish_burst.to_string(),
        "history_size" => c.history_size.to_string(),
        "history_ttl" => dur(c.history_ttl),
        "history_memory_limit" => size(c.history_memory_limit),
        "max_recovery_publications" => c.max_recovery_publications.to_string(),
        "broker" => return opt(&c.broker),
        "broker_password_file" => {
            return opt(&c.broker_password_file.as_ref().map(|p| p.display()));
        }
        "node_id" => return opt(&c.node_id),
        "broker_required" => c.broker_required.to_string(),
        "broker_optional" => c.broker_optional.to_string(),
        "broker_timeout" => dur(c.broker_timeout),
        "broker_max_pending" => size(c.broker_max_pending),
        "broker_prefix" => q(&c.broker_prefix),
        _ => return Some(NO_PRINTER.to_owned()),
    };
    Some(set)
}

/// What a key without a printer shows (a test makes sure none has to).
const NO_PRINTER: &str = "\"?\"";
/// [`NO_PRINTER`] as it appears in a line.
#[cfg(test)]
pub(super) const NO_PRINTER_MARK: &str = " = \"?\"";
