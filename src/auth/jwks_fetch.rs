//! The JWKS URL: fetched on its own thread (never a shard thread), cached, and swapped in
//! whole.
//!
//! The thread fetches every `refresh` interval, and sooner when a token names an unknown
//! `kid` (a shard raises a flag and unparks the thread; it never waits for the fetch), but
//! never sooner than `min_refetch` after the previous attempt: a storm of tokens with
//! made-up `kid`s costs the identity provider one request per `min_refetch`. A failed
//! fetch keeps the last good set. While no set has ever been fetched, it retries every
//! `min_refetch`. The thread ends when the last [`Verifier`](super::Verifier) clone is
//! dropped (at its next wake-up: a fetch in flight finishes first, bounded by `timeout`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::error::SetupError;
use super::keys::{self, JwksOrigin, KeySet};

/// A fetched JWK Set larger than this is refused (a real one is a few KiB).
const MAX_JWKS_BYTES: u64 = 1 << 20;

/// How often the thread fetches, and how long one fetch may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub min_refetch: Duration,
    pub refresh: Duration,
    pub timeout: Duration,
}

/// Fetch statistics, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JwksStats {
    /// Fetches that brought a usable set (which was swapped in).
    pub fetched: u64,
    /// Fetches that failed (network, HTTP status, body, no usable key); the last good set
    /// stayed in force.
    pub failed: u64,
}

struct Shared {
    url: String,
    agent: ureq::Agent,
    /// Keys from the settings (secrets, PEM files, JWKS file), part of every set stored.
    static_keys: Vec<keys::Key>,
    /// The set in force, read by every shard.
    current: Arc<ArcSwap<KeySet>>,
    want_refetch: AtomicBool,
    stop: AtomicBool,
    fetched: AtomicU64,
    failed: AtomicU64,
    timing: Timing,
}

/// The Verifier's end of the fetch thread. Dropping it stops the thread.
pub(crate) struct Handle {
    shared: Arc<Shared>,
    thread: Thread,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetch")
            .field("url", &self.shared.url)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

fn check_url(url: &str) -> Result<(), SetupError> {
    let bad = |reason: &str| SetupError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(())
}

fn agent(timeout: Duration) -> ureq::Agent {
    // rustls on the same aws-lc-rs provider jsonwebtoken uses, so crypto is built once.
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .tls_config(tls)
        .user_agent("ringcast-jwks")
        .build()
        .new_agent()
}

impl Shared {
    fn fetch(&self) -> Result<Vec<keys::Key>, String> {
        let mut resp = self
            .agent
            .get(&self.url)
            .call()
            .map_err(|e| e.to_string())?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_JWKS_BYTES)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        keys::jwks(&body, JwksOrigin::Url, &self.url).map_err(|e| e.to_string())
    }

    /// One attempt; on success the new set (static keys + fetched) is swapped in.
    fn attempt(&self) -> bool {
        match self.fetch() {
            Ok(fetched) => {
                let mut all = self.static_keys.clone();
                all.extend(fetched);
                self.current.store(Arc::new(KeySet { keys: all }));
                self.fetched.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // At most one line per attempt, and attempts are rate-limited.
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the last good key set");
                self.failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn run(&self, mut last_attempt: Instant, mut have_good: bool) {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let since = last_attempt.elapsed();
            let urgent = !have_good || self.want_refetch.load(Ordering::Acquire);
            let interval = if urgent {
                self.timing.min_refetch
            } else {
                self.timing.refresh
            };
            let wait = interval.saturating_sub(since);
            if !wait.is_zero() {
                // Woken early by a refetch request or by the stop flag; spurious wake-ups
                // just go round the loop again.
                std::thread::park_timeout(wait);
                continue;
            }
            self.want_refetch.store(false, Ordering::Release);
            last_attempt = Instant::now();
            have_good |= self.attempt();
        }
    }
}

/// Validates the URL, fetches once synchronously (a failure is logged, not fatal: the
/// thread keeps trying) and starts the thread.
pub(crate) fn start(
    url: &str,
    static_keys: Vec<keys::Key>,
    current: Arc<ArcSwap<KeySet>>,
    timing: Timing,
) -> Result<Handle, SetupError> {
    check_url(url)?;
    let shared = Arc::new(Shared {
        url: url.to_string(),
        agent: agent(timing.timeout),
        static_keys,
        current,
        want_refetch: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        fetched: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        timing,
    });
    let first = Instant::now();
    let have_good = shared.attempt();
    let for_thread = Arc::clone(&shared);
    let join = std::thread::Builder::new()
        .name("ringcast-jwks".into())
        .spawn(move || for_thread.run(first, have_good))
        .map_err(SetupError::Thread)?;
    Ok(Handle {
        shared,
        thread: join.thread().clone(),
    })
}

impl Handle {
    /// Asks for a refetch (a token named an unknown `kid`). Never blocks: one atomic swap,
    /// and one unpark only when the flag was not already up.
    pub(crate) fn request_refetch(&self) {
        if !self.shared.want_refetch.swap(true, Ordering::AcqRel) {
            self.thread.unpark();
        }
    }

    pub(crate) fn stats(&self) -> JwksStats {
        JwksStats {
            fetched: self.shared.fetched.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_must_be_http_or_https_with_a_host() {
        assert!(check_url("http://127.0.0.1:8080/jwks.json").is_ok());
        assert!(check_url("https://idp.example/.well-known/jwks.json").is_ok());
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            "not a url",
            "",
            "/relative",
            "http://",
        ] {
            let e = check_url(bad).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("jwks_url")),
                "{bad}: {e:?}"
            );
        }
    }
}
