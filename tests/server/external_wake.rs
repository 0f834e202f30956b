//! A thread that is not a shard (the future broker bridge) publishes into a shard's inbox
//! and the shard wakes at once, not at its next 100 ms timer tick. In-process: the server
//! runs on threads of this test, so the test can reach its bus.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast::proto::frame::OpCode;

use crate::both;
use crate::util::{Client, Msg};

both!(a_plain_thread_publishes_and_the_shard_wakes_at_once, |io| {
    let server = crate::util::in_process(io, 2);
    let mut sub = Client::connect(server.addrs[0], "/ws/news").expect("subscriber");
    // The subscription is made by the upgrade; a sentinel through the normal path proves it.
    let mut publisher = Client::connect(server.addrs[0], "/ws/news").expect("publisher");
    publisher.text("ready");
    assert_eq!(sub.recv(), Msg::Text("ready".into()));

    let bus = Arc::clone(&server.shared.bus);
    let mut latencies = Vec::new();
    for i in 0..10 {
        // Between the shards' ticks: a wake-up that waited for the tick would take up to
        // 100 ms; spread the starts so they do not all fall just before one.
        std::thread::sleep(Duration::from_millis(7 * i + 3));
        let text = format!("from a plain thread {i}");
        let bus2 = Arc::clone(&bus);
        let payload = text.clone();
        let start = Instant::now();
        // A plain thread does not know which shard SO_REUSEPORT gave the subscriber: the
        // bus pushes to every shard; the one without a subscriber delivers nothing.
        std::thread::spawn(move || {
            let refused = bus2.publish_from_any_thread("news", OpCode::Text, payload.as_bytes());
            assert_eq!(refused, 0, "no inbox is full");
        })
        .join()
        .unwrap();
        assert_eq!(sub.recv(), Msg::Text(text), "delivered once, in order");
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    // Waiting for the tick gives a median near 50 ms; a wake-up, well under a millisecond
    // on a quiet machine. 25 ms leaves room for a busy one.
    assert!(
        median < Duration::from_millis(25),
        "median delivery {median:?} from a plain thread: the shard waited for its tick ({latencies:?})"
    );
    server.stop();
});
