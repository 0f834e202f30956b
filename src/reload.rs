//! The configuration reload on SIGHUP, run on the main thread: the configuration is loaded
//! again exactly as at start (the same arguments and environment, the file re-read) and
//! validated with its key files and namespaces; an invalid one is logged and the one in
//! force stays. Otherwise the keys that can change live ([`config::reload::RELOADABLE`])
//! are handed to the log filter and the shards ([`Server::reload`]), and one line says
//! which changed, one warning which changed but need a restart.

use crate::config::{self, Config, ConfigError, reload as keys};
use crate::server::Server;
use crate::shard::reload::Reloadable;

/// Sets the log filter of the running process (a `tracing_subscriber` reload handle).
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration was refused; the one in force stays. The error text.
    Invalid(String),
    /// Nothing differs from the configuration in force.
    Unchanged,
    /// Something changed: what was applied and what needs a restart.
    Changed(keys::Diff),
}

/// The configuration in force and what a reload compares against.
pub struct Reloader {
    active: Config,
    key_files: Vec<(&'static str, Vec<u8>)>,
    verifier: crate::auth::Verifier,
    set_log_level: SetLogLevel,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// The configuration the server started with, and its verifier.
    pub fn new(
        active: Config,
        verifier: crate::auth::Verifier,
        set_log_level: SetLogLevel,
    ) -> Reloader {
        let key_files = keys::key_files(&active);
        Reloader {
            active,
            key_files,
            verifier,
            set_log_level,
        }
    }

    /// The configuration in force (restart-only keys at their start-up values).
    pub fn active(&self) -> &Config {
        &self.active
    }

    /// Loads the configuration from the process's arguments and environment and applies
    /// it; logs the outcome.
    pub fn reload(&mut self, server: &Server) -> Outcome {
        let outcome = self.apply(config::load(), server);
        log(&outcome);
        outcome
    }

    /// Applies a freshly loaded configuration (or refuses it), without logging.
    pub fn apply(&mut self, loaded: Result<Config, ConfigError>, server: &Server) -> Outcome {
        let new = match loaded {
            Ok(c) => c,
            Err(e) => return Outcome::Invalid(e.to_string()),
        };
        // Everything start-up checks before binding: key files and the namespace table.
        let auth = match new.auth_settings() {
            Ok(a) => a,
            Err(e) => return Outcome::Invalid(format!("invalid configuration: {e}")),
        };
        if let Err(e) = new.namespace_table() {
            return Outcome::Invalid(format!("invalid configuration: {e}"));
        }
        let files = keys::key_files(&new);
        let d = keys::diff(
            &self.active,
            &new,
            &keys::files_changed(&self.key_files, &files),
        );
        if d.is_empty() {
            return Outcome::Unchanged;
        }
        let keys_changed = d.applied.iter().any(|k| keys::KEY_KEYS.contains(k));
        let verifier = if keys_changed {
            match crate::auth::Verifier::new(&auth) {
                Ok(v) => v,
                Err(e) => return Outcome::Invalid(format!("invalid configuration: {e}")),
            }
        } else {
            self.verifier.clone()
        };
        if d.applied.contains(&"log_level")
            && let Err(e) = (self.set_log_level)(&new.log_level)
        {
            return Outcome::Invalid(format!("invalid configuration: log_level: {e}"));
        }
        let active = keys::apply(&self.active, &new, &d);
        if !d.applied.is_empty() {
            server.reload(Reloadable::from_config(&active, verifier.clone()));
        }
        self.active = active;
        if keys_changed {
            self.key_files = files;
            self.verifier = verifier;
        }
        Outcome::Changed(d)
    }
}

/// One line per outcome: the error, "nothing changed", the applied keys, and a warning
/// naming the keys that need a restart.
pub fn log(outcome: &Outcome) {
    match outcome {
        Outcome::Invalid(e) => tracing::error!(
            error = %e,
            "configuration reload refused; the configuration in force stays"
        ),
        Outcome::Unchanged => tracing::info!("configuration reloaded: nothing changed"),
        Outcome::Changed(d) => {
            if !d.applied.is_empty() {
                let keys = d.applied.join(", ");
                tracing::info!(keys = %keys, "configuration reloaded: applied");
            }
            if !d.restart.is_empty() {
                let keys = d.restart.join(", ");
                tracing::warn!(
                    keys = %keys,
                    "configuration reloaded: these keys changed but need a restart (the old values still apply)"
                );
            }
        }
    }
}
