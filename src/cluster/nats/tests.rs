//! The NATS client against a real `nats-server` (a child process on a free loopback
//! port), and the subject mapping.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::cluster::url::{BrokerKind, BrokerUrl};

const T: Duration = Duration::from_secs(1);

#[test]
fn subject_round_trip_over_all_byte_classes() {
    let mut topics: Vec<String> = (0x21u8..=0x7e).map(|b| (b as char).to_string()).collect();
    topics.extend(
        [
            "chat", "a:b-c_d", "_x", "__", "_", "a.b", "a*", ">", "x_", "-", ":", "room.*.>",
            "a..b", "Zz09", "_abc", "YWJj",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let all: String = (0x21u8..=0x7e).map(|b| b as char).collect();
    topics.push(all);
    topics.push("~".repeat(255));
    topics.sort();
    topics.dedup();
    let mut seen = std::collections::HashSet::new();
    for t in &topics {
        let s = subject("rc", t);
        let token = s.strip_prefix("rc.t.").expect("prefix");
        assert!(!token.is_empty(), "{t:?}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b)),
            "{t:?} -> {s:?}"
        );
        assert_eq!(
            topic_of("rc", &s).as_deref(),
            Some(t.as_str()),
            "{t:?} -> {s:?}"
        );
        assert!(seen.insert(s.clone()), "collision on {s:?}");
    }
    // Readable topics keep their name; a leading `_` forces the encoded form.
    assert_eq!(subject("rc", "chat"), "rc.t.chat");
    assert!(subject("rc", "_x").starts_with("rc.t._"));
    assert_ne!(subject("rc", "_x"), "rc.t._x");
    // Subjects that are not ours, or a second spelling of a readable topic.
    for bad in [
        "rc.t.",
        "rc.t._",
        "rc.t._!!",
        "other.t.chat",
        "rc.x.chat",
        "rc.t.a.b",
        "rc.t.a*",
        &format!("rc.t._{}", URL_SAFE_NO_PAD.encode("chat")),
        &format!("rc.t._{}", URL_SAFE_NO_PAD.encode("a b")),
    ] {
        assert_eq!(topic_of("rc", bad), None, "{bad:?}");
    }
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill {sig}");
    }
}

/// A nats-server on a free loopback port, or `None` (skipped) when not installed.
fn server() -> Option<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = match Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("RINGCAST_REQUIRE_BROKERS").as_deref() == Ok("1") {
                panic!("nats-server required: {e}");
            }
            println!("skipped: nats-server not installed");
            return None;
        }
    };
    let s = Server { child, port };
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < until,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(s)
}

fn options(port: u16, node: &str, instance: u64) -> Options {
    Options {
        node: Arc::from(node),
        instance,
        url: BrokerUrl {
            kind: BrokerKind::Nats,
            host: "127.0.0.1".into(),
            port,
            user: None,
            password: None,
            db: 0,
        },
        timeout: T,
        max_message: 1 << 16,
        max_envelope: 1 << 20,
        prefix: "rctest".into(),
        link: Link::new(Arc::from(node), BrokerKind::Nats, false, 1 << 20),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(o: &Options) -> Result<Nats, BrokerError> {
    tokio::time::timeout(o.timeout * 2, Nats::connect(o))
        .await
        .unwrap_or(Err(BrokerError::Timeout))
}

fn publication(topic: &str, body: &[u8]) -> Publication {
    Publication {
        topic: Arc::from(topic),
        envelope: Bytes::copy_from_slice(body),
        count: 1,
        history: None,
    }
}

async fn next(n: &mut Nats) -> (Arc<str>, Bytes) {
    tokio::time::timeout(Duration::from_secs(3), n.recv())
        .await
        .expect("a message within 3 s")
        .expect("recv ok")
}

#[test]
fn round_trip_between_two_nodes() {
    let Some(s) = server() else { return };
    rt().block_on(async {
        let mut a = connect(&options(s.port, "a", 1)).await.expect("a connects");
        let mut b = connect(&options(s.port, "b", 2)).await.expect("b connects");
        let topics: Vec<Arc<str>> = ["plain", "a*b", "x.>", "_x", "sp.*", ">", "~"]
            .iter()
            .map(|t| Arc::from(*t))
            .collect();
        b.subscribe(&topics).await.expect("subscribe");
        b.ping().await.expect("ping");
        let pubs: Vec<Publication> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| publication(t, &[0, 1, 2, 0xff, i as u8]))
            .collect();
        a.publish(&pubs).await.expect("publish");
        // Order holds per topic, not across topics (one forwarding task per topic).
        let mut got = std::collections::HashMap::new();
        for _ in &topics {
            let (topic, body) = next(&mut b).await;
            assert!(got.insert(topic, body).is_none(), "a topic twice");
        }
        for (i, t) in topics.iter().enumerate() {
            assert_eq!(
                got.get(t).map(|b| &b[..]),
                Some(&[0, 1, 2, 0xff, i as u8][..]),
                "{t:?}"
            );
        }
        // A subject under our prefix that does not map back is skipped and counted.
        let bad_before = b.link.stats.bad[Bad::Malformed as usize].load(Ordering::Relaxed);
        let raw = async_nats::connect(format!("127.0.0.1:{}", s.port))
            .await
            .expect("raw client");
        // Route the wildcard subscription into b's queue like a topic's.
        let (stop, stopped) = oneshot::channel();
        let h = tokio::spawn(forward(
            b.client.subscribe("rctest.t.*").await.expect("sub"),
            b.tx.clone(),
            Arc::clone(&b.link),
            stopped,
        ));
        b.ping().await.expect("ping");
        raw.publish("rctest.t._!!", Bytes::from_static(b"x"))
            .await
            .expect("raw pub");
        raw.publish("rctest.t.plain", Bytes::from_static(b"ok"))
            .await
            .expect("raw pub");
        raw.flush().await.expect("flush");
        // `plain` arrives twice (its subscription and the wildcard one); `_!!` is refused.
        for _ in 0..2 {
            let (topic, body) = next(&mut b).await;
            assert_eq!((&*topic, &body[..]), ("plain", &b"ok"[..]));
        }
        assert_eq!(
            b.link.stats.bad[Bad::Malformed as usize].load(Ordering::Relaxed),
            bad_before + 1
        );
        let _ = stop.send(());
        let _ = h.await;
    });
}

#[test]
fn node_id_collision_then_free_again() {
    let Some(s) = server() else { return };
    rt().block_on(async {
        let first = connect(&options(s.port, "same", 1))
            .await
            .expect("first connects");
        match connect(&options(s.port, "same", 2)).await {
            Err(BrokerError::NodeIdTaken(m)) => assert!(m.contains("same"), "{m}"),
            other => panic!("expected NodeIdTaken, got {other:?}"),
        }
        // Our own instance reconnecting (the loop's next connect) is not a collision.
        let again = connect(&options(s.port, "same", 1))
            .await
            .expect("same instance");
        drop(again);
        drop(first);
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match connect(&options(s.port, "same", 2)).await {
                Ok(_) => break,
                Err(BrokerError::NodeIdTaken(_)) if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node id not freed: {e}"),
            }
        }
    });
}

#[test]
fn killed_server_is_an_error() {
    let Some(mut s) = server() else { return };
    rt().block_on(async {
        let mut a = connect(&options(s.port, "k", 1)).await.expect("connects");
        a.subscribe(&[Arc::from("t")]).await.expect("subscribe");
        s.child.kill().expect("kill -9");
        let _ = s.child.wait();
        let r = tokio::time::timeout(Duration::from_secs(3), a.recv()).await;
        assert!(matches!(r, Ok(Err(_))), "recv after kill: {r:?}");
        let p = tokio::time::timeout(Duration::from_secs(3), a.ping()).await;
        assert!(matches!(p, Ok(Err(_))), "ping after kill: {p:?}");
    });
}

#[test]
fn stopped_server_fails_the_ping() {
    let Some(s) = server() else { return };
    rt().block_on(async {
        let o = options(s.port, "st", 1);
        let mut a = connect(&o).await.expect("connects");
        tokio::time::timeout(o.timeout, a.ping())
            .await
            .expect("ping in time")
            .expect("ping ok");
        s.signal("-STOP");
        let r = tokio::time::timeout(o.timeout, a.ping()).await;
        s.signal("-CONT");
        assert!(
            !matches!(r, Ok(Ok(()))),
            "ping succeeded with a stopped server"
        );
    });
}

#[test]
fn unsubscribed_topic_no_longer_arrives() {
    let Some(s) = server() else { return };
    rt().block_on(async {
        let mut a = connect(&options(s.port, "ua", 1)).await.expect("a");
        let mut b = connect(&options(s.port, "ub", 2)).await.expect("b");
        let (gone, sentinel): (Arc<str>, Arc<str>) = (Arc::from("gone"), Arc::from("sentinel"));
        b.subscribe(&[Arc::clone(&gone), Arc::clone(&sentinel)])
            .await
            .expect("subscribe");
        b.ping().await.expect("ping");
        a.publish(&[publication("gone", b"1")])
            .await
            .expect("publish");
        assert_eq!(&*next(&mut b).await.0, "gone");
        b.unsubscribe(&[Arc::clone(&gone)])
            .await
            .expect("unsubscribe");
        // A round trip: the server has processed the UNSUB before `a` publishes.
        b.ping().await.expect("ping");
        a.publish(&[publication("gone", b"2"), publication("sentinel", b"3")])
            .await
            .expect("publish");
        let (topic, body) = next(&mut b).await;
        assert_eq!((&*topic, &body[..]), ("sentinel", &b"3"[..]));
    });
}
