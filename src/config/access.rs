//! The access-control part of the configuration: its checks, and what the server builds
//! from it at start-up (the verifier's settings, with secrets read from their files; the
//! namespace table).

use std::time::Duration;

use super::{Config, ConfigError, GIB, KIB, MIB, format_duration, format_size};
use crate::pubsub::{Anonymous, NamespaceOptions, Namespaces};

/// Longest `jwt_leeway`.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl Config {
    /// Whether any JWT key is configured (access control is on).
    pub fn tokens_configured(&self) -> bool {
        self.jwt_hmac_secret.is_some()
            || self.jwt_hmac_secret_file.is_some()
            || !self.jwt_public_key_file.is_empty()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }

    /// Whether any API key is configured (the backend API needs one).
    pub fn api_keys_configured(&self) -> bool {
        !self.api_key.is_empty() || self.api_key_file.is_some()
    }

    /// The access-control checks of [`Config::validate`].
    pub(super) fn check_access(
        &self,
        invalid: &dyn Fn(&'static str, String, String) -> ConfigError,
        conflict: &dyn Fn(&'static str, String, &str, &'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.jwt_leeway > MAX_LEEWAY {
            return Err(invalid(
                "jwt_leeway",
                format_duration(self.jwt_leeway),
                format!("must be at most {}", format_duration(MAX_LEEWAY)),
            ));
        }
        let token = self.max_token_size as u64;
        if !(256..=64 * KIB).contains(&token) {
            return Err(invalid(
                "max_token_size",
                format_size(token),
                "must be between 256 and 64KiB".to_owned(),
            ));
        }
        if self.client_publish_rate > 1_000_000 {
            return Err(invalid(
                "client_publish_rate",
                self.client_publish_rate.to_string(),
                "must be between 0 and 1000000".to_owned(),
            ));
        }
        if !(1..=1_000_000).contains(&self.client_publish_burst) {
            return Err(invalid(
                "client_publish_burst",
                self.client_publish_burst.to_string(),
                "must be between 1 and 1000000".to_owned(),
            ));
        }
        // Both HMAC forms may be set: two secrets verify (a key rotation).
        let keyless = |key: &'static str, shown: String| {
            invalid(
                key,
                shown,
                "only applies with a JWT key (set jwt_hmac_secret, jwt_hmac_secret_file, jwt_public_key_file, jwks_file or jwks_url); without one everyone may subscribe and publish".to_owned(),
            )
        };
        if !self.tokens_configured() {
            if let Some(a) = self.anonymous
                && a != Anonymous::Publish
            {
                return Err(keyless("anonymous", format!("{:?}", a.to_string())));
            }
            if let Some(aud) = &self.jwt_audience {
                return Err(keyless("jwt_audience", format!("{aud:?}")));
            }
            if let Some(iss) = &self.jwt_issuer {
                return Err(keyless("jwt_issuer", format!("{iss:?}")));
            }
            for ns in &self.namespaces {
                if let Some(a) = ns.anonymous
                    && a != Anonymous::Publish
                {
                    return Err(keyless(
                        "namespaces",
                        format!("{:?}: anonymous = {:?}", ns.name, a.to_string()),
                    ));
                }
            }
        }
        let history = |key: &'static str, prefix: String, size: u32, ttl: Duration| {
            if size > 1_000_000 {
                return Err(invalid(
                    key,
                    format!("{prefix}history_size = {size}"),
                    "must be between 0 and 1000000".to_owned(),
                ));
            }
            // A TTL bounds how long a topic's state lives: never unbounded.
            if !(Duration::from_secs(1)..=Duration::from_secs(30 * 86_400)).contains(&ttl) {
                return Err(invalid(
                    key,
                    format!("{prefix}history_ttl = {}", format_duration(ttl)),
                    "must be between 1s and 30d".to_owned(),
                ));
            }
            Ok(())
        };
        history(
            "history_size",
            String::new(),
            self.history_size,
            self.history_ttl,
        )?;
        for ns in &self.namespaces {
            history(
                "namespaces",
                format!("{:?}: ", ns.name),
                ns.history_size.unwrap_or(self.history_size),
                ns.history_ttl.unwrap_or(self.history_ttl),
            )?;
        }
        self.check_broker(invalid, conflict)?;
        let mem = self.history_memory_limit as u64;
        if !(MIB..=1024 * GIB).contains(&mem) {
            return Err(invalid(
                "history_memory_limit",
                format_size(mem),
                "must be between 1MiB and 1TiB".to_owned(),
            ));
        }
        if !(1..=100_000).contains(&self.max_recovery_publications) {
            return Err(invalid(
                "max_recovery_publications",
                self.max_recovery_publications.to_string(),
                "must be between 1 and 100000".to_owned(),
            ));
        }
        for ns in &self.namespaces {
            if let Some(max) = ns.max_message_size
                && (max == 0 || max > self.max_message_size)
            {
                return Err(conflict(
                    "namespaces",
                    format!(
                        "{:?}: max_message_size = {}",
                        ns.name,
                        format_size(max as u64)
                    ),
                    "must be at least 1 byte and at most",
                    "max_message_size",
                    format_size(self.max_message_size as u64),
                ));
            }
        }
        Ok(())
    }

    /// The namespace table: the default namespace from the top-level keys, then every
    /// `[namespaces.NAME]`. Without a JWT key, `anonymous` is `publish` everywhere (nobody
    /// presents a token, and everything is open as it was before access control).
    pub fn namespace_table(&self) -> Result<Namespaces, String> {
        let tokens = self.tokens_configured();
        let anonymous = |a: Option<Anonymous>| {
            if tokens {
                a.unwrap_or(Anonymous::None)
            } else {
                Anonymous::Publish
            }
        };
        let mut table = Namespaces::new(NamespaceOptions {
            anonymous: anonymous(self.anonymous),
            client_publish: self.client_publish,
            max_message_size: self.max_message_size,
            history_size: self.history_size,
            history_ttl: self.history_ttl,
        });
        for ns in &self.namespaces {
            table.add(
                &ns.name,
                NamespaceOptions {
                    anonymous: anonymous(ns.anonymous),
                    client_publish: ns.client_publish,
                    max_message_size: ns.max_message_size.unwrap_or(self.max_message_size),
                    history_size: ns.history_size.unwrap_or(self.history_size),
                    history_ttl: ns.history_ttl.unwrap_or(self.history_ttl),
                },
            )?;
        }
        Ok(table)
    }

    /// The verifier's settings, with the secrets of `jwt_hmac_secret_file` and
    /// `api_key_file` read. Err: a file that cannot be read or holds no secret (the message
    /// names the file, never its contents).
    pub fn auth_settings(&self) -> Result<crate::auth::AuthSettings, String> {
        let mut hmac_secrets = Vec::new();
        if let Some(s) = &self.jwt_hmac_secret {
            hmac_secrets.push(s.0.as_bytes().to_vec());
        }
        if let Some(path) = &self.jwt_hmac_secret_file {
            let text = read_secret_file(path, "jwt_hmac_secret_file")?;
            let secret = text.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(format!(
                    "jwt_hmac_secret_file {}: the file is empty",
                    path.display()
                ));
            }
            hmac_secrets.push(secret.as_bytes().to_vec());
        }
        let mut api_keys: Vec<Vec<u8>> = self
            .api_key
            .iter()
            .map(|k| k.0.as_bytes().to_vec())
            .collect();
        if let Some(path) = &self.api_key_file {
            let text = read_secret_file(path, "api_key_file")?;
            let before = api_keys.len();
            api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.as_bytes().to_vec()),
            );
            if api_keys.len() == before {
                return Err(format!(
                    "api_key_file {}: the file holds no key (one per line)",
                    path.display()
                ));
            }
        }
        Ok(crate::auth::AuthSettings {
            hmac_secrets,
            public_key_files: self.jwt_public_key_file.clone(),
            jwks_file: self.jwks_file.clone(),
            jwks_url: self.jwks_url.clone(),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            leeway: self.jwt_leeway,
            max_token_bytes: self.max_token_size,
            api_keys,
            ..crate::auth::AuthSettings::default()
        })
    }
}

fn read_secret_file(path: &std::path::Path, key: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}
