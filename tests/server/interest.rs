//! Interest routing between shards, tested where each connection lives: the server runs
//! in-process with two shards, and each client is placed on a known shard (connected
//! until SO_REUSEPORT puts it there, the shard read from its upgrade counter). A batch must
//! go only to shards that have a subscriber of its topic, and must reach those.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast::metrics::ShardMetrics;
use ringcast::server::Server;

use crate::both;
use crate::util::{Client, Msg};

fn start(io: &str) -> Server {
    crate::util::in_process(io, 2)
}

fn metrics(server: &Server, shard: usize) -> &Arc<ShardMetrics> {
    &server.shared.metrics[shard]
}

fn on_shard(server: &Server, shard: usize, path: &str) -> Client {
    crate::util::on_shard(server, shard, path)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

both!(a_batch_goes_only_to_shards_with_a_subscriber, |io| {
    let server = start(io);
    let bus_in = |shard| metrics(&server, shard).bus_in.get();
    // Topic "a": subscriber and publisher both on shard 0. Topic "b": a subscriber on each.
    let mut sub_a = on_shard(&server, 0, "/ws/a");
    let mut pub_a = on_shard(&server, 0, "/ws/a");
    let mut sub_b0 = on_shard(&server, 0, "/ws/b");
    let mut sub_b1 = on_shard(&server, 1, "/ws/b");
    let mut pub_b1 = on_shard(&server, 1, "/ws/b");
    let before = (bus_in(0), bus_in(1));
    for i in 0..50 {
        pub_a.text(&format!("a{i}"));
    }
    for i in 0..50 {
        assert_eq!(sub_a.recv(), Msg::Text(format!("a{i}")));
    }
    // Shard 1 has no subscriber of "a": a publish there would have reached it by now
    // (shard 0 routes before it flushes), and a sentinel through shard 1 proves shard 1
    // has drained its inbox since.
    pub_b1.text("sentinel");
    assert_eq!(
        sub_b0.recv(),
        Msg::Text("sentinel".into()),
        "cross-shard delivery"
    );
    assert_eq!(sub_b1.recv(), Msg::Text("sentinel".into()));
    assert_eq!(
        bus_in(1),
        before.1,
        "shard 1 received nothing for a topic it has no subscriber of"
    );
    assert_eq!(
        bus_in(0),
        before.0 + 1,
        "shard 0 received exactly the one batch for \"b\""
    );
    assert_eq!(
        metrics(&server, 0).bus_delivered.get(),
        1,
        "one message delivered to one subscriber over the bus"
    );
    server.stop();
});

both!(interest_is_withdrawn_with_the_last_subscriber, |io| {
    let server = start(io);
    let m0 = Arc::clone(metrics(&server, 0));
    let mut sub0 = on_shard(&server, 0, "/ws/t");
    let mut sub1 = on_shard(&server, 1, "/ws/t");
    let mut pub1 = on_shard(&server, 1, "/ws/t");
    pub1.text("one");
    assert_eq!(sub0.recv(), Msg::Text("one".into()));
    assert_eq!(sub1.recv(), Msg::Text("one".into()));
    let bus_before = m0.bus_in.get();
    // The last subscriber of "t" on shard 0 leaves; once shard 0 has compacted the topic
    // (its subscription gauge drops), its withdrawal is in shard 1's inbox.
    sub0.close(1000);
    assert_eq!(sub0.recv(), Msg::Close(Some(1000), String::new()));
    wait_until("shard 0 forgets the subscription", || {
        m0.subscriptions.get() == 0
    });
    pub1.text("two");
    assert_eq!(sub1.recv(), Msg::Text("two".into()), "shard 1 routed it");
    // Shard 0 may still be told about "two" only if shard 1 ignored the withdrawal. A
    // sentinel on another topic that shard 0 does subscribe to comes after it, in order.
    let mut sub0_s = on_shard(&server, 0, "/ws/s");
    let mut pub1_s = on_shard(&server, 1, "/ws/s");
    pub1_s.text("sentinel");
    assert_eq!(sub0_s.recv(), Msg::Text("sentinel".into()));
    assert_eq!(
        m0.bus_in.get(),
        bus_before + 1,
        "only the sentinel's batch reached shard 0"
    );
    server.stop();
});

both!(
    a_publish_right_after_a_remote_subscribe_is_delivered,
    |io| {
        // The announcement is pushed before the 101 goes out, and the publishing shard drains
        // its inbox before it routes: a publish made after the subscriber saw its 101 reaches
        // it, every time (simple mode, and mux mode, whose publishes name their topic).
        let server = start(io);
        let mut mux_pub = on_shard(&server, 1, "/ws");
        for i in 0..30 {
            let topic = format!("fresh{i}");
            let mut sub = on_shard(&server, 0, &format!("/ws/{topic}"));
            let mut p = on_shard(&server, 1, &format!("/ws/{topic}"));
            p.text("first");
            assert_eq!(sub.recv(), Msg::Text("first".into()), "topic {topic}");
            let mut sub2 = on_shard(&server, 0, &format!("/ws/{topic}-mux"));
            mux_pub.text(&format!(
                r#"{{"type":"publish","topic":"{topic}-mux","data":"m"}}"#
            ));
            assert_eq!(sub2.recv(), Msg::Text("m".into()), "topic {topic}-mux");
        }
        server.stop();
    }
);
