//! ringcast: a WebSocket pub/sub broadcast server for Linux, thread-per-core on io_uring.
//!
//! # Layout
//!
//! - [`proto`]: the sans-I/O RFC 6455 core: handshake, frames, masking, UTF-8, the
//!   connection state machine. No sockets, no clock, no random generator. Its own crate,
//!   `ringcast-proto` (`crates/proto`), re-exported here as `proto` (docs/DESIGN.md,
//!   "Crates and process boundaries").
//! - [`config`]: flags, TOML file and `RINGCAST_*` environment merged into one validated
//!   [`config::Config`].
//! - [`io`]: the driver boundary: io_uring ([`io::uring`]) and epoll ([`io::epoll`])
//!   behind one completion-shaped [`io::Driver`] trait; the start-up probe. Its own crate,
//!   `ringcast-io` (`crates/io`), re-exported here as `io`, with [`alloc`].
//! - [`shard`]: the per-core event loop: connection table, phases, timers, flush, drain,
//!   admission.
//! - [`pubsub`]: the one way to subscribe and publish: topic ids, namespaces and the access
//!   rules, batches and delivery formats, fan-out and the slow-consumer decision, interest,
//!   mux mode's JSON codec, the history store.
//! - [`auth`]: pure JWT and API-key verification into rights; key sets swapped in atomically.
//! - [`bus`]: typed messages between shards (batches, interest, the backend API's queries),
//!   bounded lock-free inboxes and their wake-ups, from any thread.
//! - [`cluster`]: several nodes through Redis or NATS: the broker URL, the envelope one
//!   node sends the others, the link the shards share with the bridge thread, and (feature
//!   `cluster`) the bridge itself, a tokio runtime on its own thread, never on a shard.
//! - [`http`]: what the plain HTTP requests on the WebSocket port get: routes, the batch
//!   body parser, the presented credential, textual content types.
//! - [`metrics`]: per-shard counters and their Prometheus rendering.
//! - [`server`]: start-up: backend choice, listeners, shard threads.
//! - [`reload`]: SIGHUP: load the configuration again, validate it, apply what can change
//!   live (the key split in [`config::reload`], the shards' side in [`shard::reload`]).
//! - [`alloc`]: tuning of the global allocator (mimalloc), in `ringcast-io`.
//! - [`throttle`]: log lines a peer can cause, at most one per interval per kind.
//!
//! This crate forbids `unsafe`. All of the server's unsafe code is in `ringcast-io` (the
//! ring, its buffers, the eventfd, the probe, mimalloc's option table and `prctl`) and in
//! `ringcast-proto`'s SIMD unmasking (`proto::mask`); each of those crates denies it
//! outside those modules, and every block there carries a `// SAFETY:` comment.
#![forbid(unsafe_code)]

pub use ringcast_io::alloc;
pub mod auth;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod http;
pub use ringcast_io as io;
pub mod metrics;
pub use ringcast_proto as proto;
pub mod pubsub;
pub mod reload;
pub mod server;
pub mod shard;
pub mod throttle;
