//! From the configuration to a running bridge: the node id, the password file, the
//! bridge's options, and the start-up decision (`--broker-optional`).

use std::sync::Arc;

use super::link::Link;
use crate::config::Config;

/// What start-up needs to run the bridge.
#[derive(Debug)]
pub struct Setup {
    /// The link the shards get.
    pub link: Arc<Link>,
    /// The bridge's options (without the `cluster` feature: nothing).
    #[cfg(feature = "cluster")]
    options: super::bridge::Options,
    optional: bool,
}

impl Setup {
    /// `None` without `--broker`; an error names the key at fault.
    pub fn from_config(cfg: &Config) -> Result<Option<Setup>, String> {
        let Some(url) = &cfg.broker else {
            return Ok(None);
        };
        let mut url = url.clone();
        if let Some(path) = &cfg.broker_password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!("broker_password_file: cannot read {}: {e}", path.display())
            })?;
            let pw = text.trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                return Err(format!("broker_password_file: {} is empty", path.display()));
            }
            url.password = Some(pw.to_owned());
        }
        let node: Arc<str> = match &cfg.node_id {
            Some(n) => Arc::from(n.as_str()),
            None => Arc::from(random_node_id().as_str()),
        };
        let link = Link::new(
            Arc::clone(&node),
            url.kind,
            cfg.broker_required,
            cfg.broker_max_pending,
        );
        #[cfg(not(feature = "cluster"))]
        {
            let _ = (url, link);
            Err(
                "broker: this build has no broker support (built without the `cluster` feature)"
                    .to_owned(),
            )
        }
        #[cfg(feature = "cluster")]
        {
            let options = super::bridge::Options {
                node,
                instance: getrandom::u64().unwrap_or(std::process::id().into()),
                url,
                timeout: cfg.broker_timeout,
                max_message: cfg.max_message_size,
                max_envelope: cfg
                    .max_batch_bytes
                    .max(cfg.max_message_size)
                    .saturating_mul(2)
                    .saturating_add(64 << 10),
                prefix: cfg.broker_prefix.clone(),
                link: Arc::clone(&link),
            };
            Ok(Some(Setup {
                link,
                options,
                optional: cfg.broker_optional,
            }))
        }
    }

    /// Starts the bridge and waits for its first connection: an error when the broker is
    /// unreachable (unless `--broker-optional`: then a warning, and the node runs
    /// degraded until the bridge connects) or the node id is taken.
    pub fn start(self, bus: Arc<crate::bus::Bus>) -> Result<(), String> {
        #[cfg(not(feature = "cluster"))]
        {
            let _ = (bus, self.optional);
            Err("this build has no broker support".to_owned())
        }
        #[cfg(feature = "cluster")]
        {
            let url = self.options.url.to_string();
            let node = Arc::clone(&self.link.node);
            match super::start(self.options, Arc::clone(&self.link), bus)? {
                Ok(()) => Ok(()),
                Err(e) if e.starts_with("node id collision") => Err(e),
                Err(e) if self.optional => {
                    tracing::warn!(%node, broker = %url, error = %e, "broker unreachable at start: running degraded (--broker-optional), retrying");
                    Ok(())
                }
                Err(e) => Err(format!(
                    "{url} unreachable: {e} (key `broker`; --broker-optional starts without it)"
                )),
            }
        }
    }
}

/// A node id for this run: `node-` and 10 base36 characters from the OS's random source.
fn random_node_id() -> String {
    let mut r = getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()));
    let mut s = String::from("node-");
    for _ in 0..10 {
        let d = (r % 36) as u32;
        r /= 36;
        s.push(char::from_digit(d, 36).unwrap_or('0'));
    }
    s
}
