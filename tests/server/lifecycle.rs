//! Connections dropped while sends and receives are in flight: nothing is freed early,
//! nothing leaks (connection count and receive buffers in use return to zero).

use std::io::Write;
use std::time::Duration;

use ringcast::proto::frame::OpCode;

use crate::both;
use crate::util::{Msg, Server};

both!(dropping_connections_mid_flight_leaks_nothing, |io| {
    let srv = Server::start(io, &["--send-queue-limit", "4MiB"]);
    let mut publisher = srv.ws("/ws/churn");
    for round in 0..15 {
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
        let _ = round;
    }
    assert!(
        srv.wait_for(Duration::from_secs(10), |s| s.open_connections() <= 1),
        "only the publisher is left: {}",
        srv.get("/metrics")
    );
    assert_eq!(srv.metric("ringcast_receive_buffers_in_use"), 0);
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
