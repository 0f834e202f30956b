//! ringcast: a WebSocket pub/sub broadcast server for Linux, thread-per-core on io_uring.
#![deny(unsafe_code)]

pub mod config;
pub mod proto;
