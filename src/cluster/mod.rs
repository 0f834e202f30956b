//! Several nodes through a broker: the bridge between this node's shards and Redis or NATS
//! (docs/DESIGN.md, "Several nodes through a broker"; docs/protocol.md, "Several nodes").
//!
//! Layout:
//! - [`url`]: the `broker` key (pure).
//! - [`envelope`]: the bytes one node sends the others (pure, property-tested).
//! - [`link`]: the queue and state the shards share with the bridge (no async runtime:
//!   the shards compile and run the same with or without the `cluster` feature).
//! - `bridge`, `inbound`, `redis`, `nats` (feature `cluster`): the bridge thread, a
//!   current-thread tokio runtime that owns the broker client; never a shard.
//!
//! The shard side lives in [`crate::pubsub`] (the home shard of a topic is the one that
//! talks to the broker: `pubsub::cluster`).

pub mod config;
pub mod envelope;
pub mod link;
pub mod url;

#[cfg(feature = "cluster")]
pub mod bridge;
#[cfg(feature = "cluster")]
pub mod inbound;
#[cfg(feature = "cluster")]
mod nats;
#[cfg(feature = "cluster")]
mod redis;

pub use link::{Link, Outbound};
pub use url::{BrokerKind, BrokerUrl};

#[cfg(feature = "cluster")]
use std::sync::Arc;

/// Starts the bridge thread for `o`, connected to the shards through `link` and `bus`.
/// Waits for the first connection attempt: `Err` when it failed (the caller decides
/// whether to go on degraded: `--broker-optional`) or the node id is taken.
#[cfg(feature = "cluster")]
pub fn start(
    o: bridge::Options,
    link: Arc<Link>,
    bus: Arc<crate::bus::Bus>,
) -> Result<Result<(), String>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let notify = Arc::new(tokio::sync::Notify::new());
    let n = Arc::clone(&notify);
    link.set_waker(Box::new(move || n.notify_one()));
    let kind = o.url.kind;
    let wait = o.timeout + std::time::Duration::from_secs(1);
    std::thread::Builder::new()
        .name("ringcast-bridge".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the bridge's runtime: {e}")));
                    return;
                }
            };
            match kind {
                BrokerKind::Redis => {
                    rt.block_on(bridge::run::<redis::Redis>(o, link, bus, notify, tx));
                }
                BrokerKind::Nats => {
                    rt.block_on(bridge::run::<nats::Nats>(o, link, bus, notify, tx))
                }
            }
        })
        .map_err(|e| format!("cannot start the bridge thread: {e}"))?;
    match rx.recv_timeout(wait) {
        Ok(r) => Ok(r),
        Err(_) => Ok(Err(
            "no answer from the broker within --broker-timeout".to_owned()
        )),
    }
}
