//! Connections dropped while sends and receives are in flight: nothing is freed early,
//! nothing leaks.
//!
//! What could leak differs by backend, and each is checked where it exists:
//! - Both: every connection's descriptor is closed (the io_uring driver closes it only after
//!   the connection's last completion, epoll at release), dead subscribers are
//!   unsubscribed, and every shard still receives afterwards.
//! - io_uring: every receive buffer returns to the shard's provided-buffer ring. The ring
//!   here holds one buffer per shard, so a single buffer that never came back (lent out and
//!   forgotten, or dropped from the driver's books) stops its shard from receiving, which
//!   the echo after the churn (many rings' worth through each shard) sees; a buffer left
//!   lent also shows in `ringcast_receive_buffers_in_use`.
//! - epoll reads every socket into one shard-wide buffer that belongs to no connection: no
//!   receive buffer is lent between events (the gauge is 0 by design) and no connection,
//!   idle or dead, pins one, so what it could leak is the descriptor (and the socket with
//!   it), which the descriptor count sees.

use std::io::Write;
use std::time::Duration;

use ringcast::proto::frame::OpCode;

use crate::both;
use crate::util::{Msg, Server};

/// A client frame header announcing a 1 MiB payload, past the 64 KiB frame limit: refused
/// (1009) from the header alone.
const REFUSED_HEADER: [u8; 14] = [0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4];

both!(dropping_connections_mid_flight_leaks_nothing, |io| {
    let srv = Server::start(
        io,
        &[
            "--send-queue-limit",
            "4MiB",
            "--recv-buffers",
            "1",
            "--recv-buffer-size",
            "4KiB",
        ],
    );
    let mut publisher = srv.ws("/ws/churn");
    // The publisher's own descriptor included; nothing else is connected.
    let fds = srv.open_fds();
    for _round in 0..15 {
        // Refused from their header and writing on until the server has closed them (their
        // close frame goes out at once: nothing else is queued for them), so that they are
        // released with their receive armed and bytes still arriving.
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let mut c = srv.ws("/echo");
                std::thread::spawn(move || {
                    let _ = c.stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = c.stream.write_all(&REFUSED_HEADER);
                    let junk = [0x55u8; 16 * 1024];
                    // At most 4 MiB: the server closes long before.
                    for _ in 0..256 {
                        if c.stream.write_all(&junk).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        let subs: Vec<_> = (0..20).map(|_| srv.ws("/ws/churn")).collect();
        std::thread::sleep(Duration::from_millis(10));
        for i in 0..50u32 {
            publisher.send(OpCode::Binary, &vec![(i % 256) as u8; 8 * 1024]);
        }
        for (i, mut s) in subs.into_iter().enumerate() {
            if i % 2 == 0 {
                // Half a frame in flight towards the server, then gone.
                let _ = s
                    .stream
                    .write_all(&[0x82, 0xfe, 0x10, 0x00, 1, 2, 3, 4, 9, 9, 9]);
            }
            if i % 3 == 0 {
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
            }
            drop(s);
        }
        for w in writers {
            w.join().expect("writer");
        }
    }
    let left = srv.wait_for_fds(fds, Duration::from_secs(10));
    assert_eq!(
        left, fds,
        "{io}: every dropped connection's descriptor is closed"
    );
    // Receiving still works on every shard (twelve clients, so that each shard almost surely
    // has some): each echo client moves 128 KiB each way, 32 times its shard's one 4 KiB
    // buffer.
    let mut echoes: Vec<_> = (0..12).map(|_| srv.ws("/echo")).collect();
    for round in 0..8u8 {
        for (i, c) in echoes.iter_mut().enumerate() {
            c.send(OpCode::Binary, &vec![round ^ i as u8; 16 * 1024]);
        }
        for (i, c) in echoes.iter_mut().enumerate() {
            assert_eq!(
                c.recv_timeout(Duration::from_secs(5)),
                Some(Msg::Binary(vec![round ^ i as u8; 16 * 1024])),
                "{io}: echo client {i}, round {round}: a shard stopped receiving"
            );
        }
    }
    drop(echoes);
    assert!(
        srv.wait_for(Duration::from_secs(10), |s| s.open_connections() <= 1),
        "only the publisher is left: {}",
        srv.get("/metrics")
    );
    // io_uring: a buffer taken for a receive and never recycled stays counted here. epoll
    // lends none (0 by design); a change that made it lend buffers must return them too.
    assert_eq!(
        srv.metric("ringcast_receive_buffers_in_use"),
        0,
        "{io}: every receive buffer is back"
    );
    assert_eq!(
        srv.metric("ringcast_subscriptions"),
        1,
        "dead subscribers were unsubscribed"
    );
    drop(publisher);
    assert!(srv.wait_for(Duration::from_secs(5), |s| s.open_connections() == 0));
    let mut c = srv.ws("/echo");
    c.text("alive");
    assert_eq!(c.recv(), Msg::Text("alive".into()));
});

// Regression: a close queued a shutdown by fd number and closed the fd before the shutdown
// ran (io-wq runs it late); the next accepted socket reused the number and was shut down
// before its 101.
both!(regression_deferred_shutdown_never_hits_a_reused_fd, |io| {
    let srv = Server::start(io, &[]);
    for i in 0..300 {
        let mut bad = srv.ws("/echo");
        // Unmasked frame: the server closes with 1002 while its receive is still armed.
        let _ = bad.stream.write_all(&[0x81, 0x01, b'x']);
        assert_eq!(bad.expect_close(), Some(1002), "iteration {i}");
        assert_eq!(
            bad.recv_timeout(Duration::from_secs(5)),
            Some(Msg::Eof),
            "iteration {i}"
        );
    }
});
