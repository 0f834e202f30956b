//! The checks of the broker keys (several nodes: [`crate::cluster`]).

use std::time::Duration;

use super::{Config, ConfigError, GIB, KIB, format_duration, format_size};

impl Config {
    /// The broker checks of [`Config::validate`].
    pub(super) fn check_broker(
        &self,
        invalid: &dyn Fn(&'static str, String, String) -> ConfigError,
        conflict: &dyn Fn(&'static str, String, &str, &'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let t = self.broker_timeout;
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&t) {
            return Err(invalid(
                "broker_timeout",
                format_duration(t),
                "must be between 100ms and 60s".to_owned(),
            ));
        }
        let p = self.broker_max_pending as u64;
        if !(64 * KIB..=16 * GIB).contains(&p) {
            return Err(invalid(
                "broker_max_pending",
                format_size(p),
                "must be between 64KiB and 16GiB".to_owned(),
            ));
        }
        if self.broker.is_none() {
            for (key, set) in [
                ("broker_required", self.broker_required),
                ("broker_optional", self.broker_optional),
                ("broker_password_file", self.broker_password_file.is_some()),
            ] {
                if set {
                    return Err(conflict(
                        key,
                        "set".to_owned(),
                        "needs",
                        "broker",
                        "unset".to_owned(),
                    ));
                }
            }
        }
        Ok(())
    }
}
