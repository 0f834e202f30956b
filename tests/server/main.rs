//! Socket-level tests: a real `ringcast` process on 127.0.0.1:0, each test on both I/O
//! backends (io_uring and epoll).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod brokers;
mod cluster;
mod cluster_faults;

mod api;
mod auth;
mod bad_input;
mod drain;
mod external_wake;
mod fallback;
mod history;
mod hostile_fanout;
mod hostile_http;
mod hostile_io;
mod hostile_proto;
mod http_keepalive;
mod http_publish;
mod interest;
mod lifecycle;
mod limits;
mod mux;
mod ops;
mod pubsub;
mod reload;
mod slow;
mod timeouts;
