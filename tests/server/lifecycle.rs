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
                let _ = s.stream.write_all(&[0x82, 0xfe, 0x10, 0x00, 1, 2, 3, 4, 9, 9, 9]);
            }
            if i % 3 == 0 {
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
            }
            drop(s);
        }
        let _ = round;
    }
    assert!(
        srv.wait_for(Duration::from_secs(10), |s| s.metric("ringcast_connections") <= 1),
        "only the publisher is left: {}",
        srv.get("/metrics")
    );
    assert_eq!(srv.metric("ringcast_receive_buffers_in_use"), 0);
    drop(publisher);
    assert!(srv.wait_for(Duration::from_secs(5), |s| s.metric("ringcast_connections") == 0));
    let mut c = srv.ws("/echo");
    c.text("alive");
    assert_eq!(c.recv(), Msg::Text("alive".into()));
});
