//! ringcast: a WebSocket pub/sub broadcast server for Linux, thread-per-core on io_uring.
//!
//! # Layout
//!
//! - [`proto`]: the sans-I/O RFC 6455 core: handshake, frames, masking, UTF-8, the
//!   connection state machine. No sockets, no clock.
//! - [`config`]: flags, TOML file and `RINGCAST_*` environment merged into one validated
//!   [`config::Config`].
//! - [`io`]: the driver boundary: io_uring ([`io::uring`]) and epoll ([`io::epoll`])
//!   behind one completion-shaped [`io::Driver`] trait; the start-up probe.
//! - [`shard`]: the per-core event loop: connections, send queues, timers.
//! - [`pubsub`]: a shard's topic table.
//! - [`bus`]: lock-free inboxes between shards and their wake-ups.
//! - [`http`]: what the plain HTTP requests on the WebSocket port get.
//! - [`control`]: the control-mode JSON protocol (`GET /ws`), pure parse and serialize.
//! - [`metrics`]: per-shard counters and their Prometheus rendering.
//! - [`server`]: start-up: backend choice, listeners, shard threads.
//! - [`alloc`]: tuning of the global allocator (mimalloc).
//! - [`throttle`]: log lines a peer can cause, at most one per interval per kind.
//!
//! `unsafe` is denied crate-wide and allowed only in `io::uring`, `io::bufring`,
//! `io::probe` (the ring and its buffers), `proto::mask` (SIMD) and `alloc` (two FFI calls
//! to mimalloc's option table); every block there carries a `// SAFETY:` comment.
#![deny(unsafe_code)]

pub mod alloc;
pub mod bus;
pub mod config;
pub mod control;
pub mod http;
pub mod io;
pub mod metrics;
pub mod proto;
pub mod pubsub;
pub mod server;
pub mod shard;
pub mod throttle;
