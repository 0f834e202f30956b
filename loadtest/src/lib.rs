//! `ringcast-loadtest`: a load generator for WebSocket broadcast servers
//! (ringcast or any other) and `blast`, the floor server it is measured against.
//!
//! The receive path is built to not be the bottleneck: io_uring multishot
//! receive into a provided-buffer ring (or lean edge-triggered epoll), frames
//! scanned in place with the protocol core's header parser, a 42-byte ASCII
//! stamp per payload decoded with SWAR, one histogram record per message, no
//! allocation per message, subscribers spread over `--threads` threads.
//!
//! # Layout
//! - [`cli`]: the command line (loadtest/README.md) and duration/size parsing.
//! - [`target`]: ws:// and http:// URLs, the `{topic}` template, loopback-only policy.
//! - [`payload`]: the stamp every message carries (publisher, sequence, send time).
//! - [`seq`]: per-publisher order/gap/duplicate classification.
//! - [`checker`]: a subscriber's sequence slots, latency recording, probe acks.
//! - [`rx`]: the client-side frame scanner of one connection.
//! - [`envelope`]: ringcast's mux-mode envelopes (topic, offset, payload), parsed in place.
//! - [`offsets`]: per connection and topic, offsets dense and ordered (ringcast's history).
//! - [`worker`]: a receive thread's connections, close handshake, slow subscribers.
//! - [`uring`]: io_uring rings, the provided-buffer ring, the receive loop, blast's send loop.
//! - [`epoll`]: the mio receive loop (fallback).
//! - [`receivers`]: backend choice and the group of receive threads.
//! - [`connect`]: non-blocking connects, source-address spreading, the upgrade.
//! - [`publish`]: the publisher thread (WebSocket or HTTP POST, rate or closed loop), with
//!   [`http_link`] (an HTTP publisher's requests across the connections the server ends).
//! - [`chat_send`]: chat members publishing from their receive threads, on a schedule.
//! - [`window`]: snapshots, warm-up and measured window, drain, CPU over the window.
//! - [`scrape`]: the server's Prometheus `/metrics` at both ends of the window.
//! - [`token`]: `--token-*`: JWTs minted before the timed part, placed in header, subprotocol or query.
//! - [`pubhttp`] (flags in [`pubhttp_args`]): HTTP publish load over keep-alive or per-request
//!   connections, with [`http_req`] (pre-built requests) and [`http_in`] (pipelined answers).
//! - [`run`], [`chat`], [`idle_storm`], [`recover`], [`blast`]: the subcommands
//!   ([`recover`] drives its mux clients with [`mux_client`], checks them in [`recover_phases`]).
//! - [`tally`]: per-subscriber results to run totals (loss, order, slow subscribers).
//! - [`stats`], [`procstat`], [`report`]: counters, CPU/RSS from /proc, JSON and summaries.
//! - [`sys`]: the few libc calls std lacks.
//!
//! `unsafe` is denied everywhere except [`sys`] and [`uring`].
#![deny(unsafe_code)]

pub mod blast;
pub mod chat;
pub mod chat_send;
pub mod checker;
pub mod cli;
pub mod connect;
pub mod envelope;
pub mod epoll;
pub mod http_in;
pub mod http_link;
pub mod http_req;
pub mod idle_storm;
pub mod mux_client;
pub mod offsets;
pub mod payload;
pub mod procstat;
pub mod pubhttp;
pub mod pubhttp_args;
pub mod publish;
pub mod receivers;
pub mod recover;
pub mod recover_phases;
pub mod report;
pub mod run;
pub mod rx;
pub mod scrape;
pub mod seq;
pub mod stats;
pub mod sys;
pub mod tally;
pub mod target;
pub mod token;
pub mod uring;
pub mod window;
pub mod worker;
