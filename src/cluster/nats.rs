//! The NATS client of the bridge: one async-nats connection per [`Broker::connect`], the
//! node id's claim (a responder on `{prefix}.node.{node}`), the topic ↔ subject mapping
//! ([`subject`], [`topic_of`]) and the forwarding of every subscription into one bounded
//! queue that [`Broker::recv`] reads.
//!
//! NATS core has no sequencing: [`Publication::history`] is ignored (history stays per
//! node with NATS). The library's own reconnection cannot be switched off (async-nats
//! reads `max_reconnects(0)` as "unlimited"), so a `Disconnected` or `Closed` event marks
//! the connection lost: the next `recv`/`ping`/`publish` fails and the bridge loop
//! reconnects with a fresh client (and subscribes everything again, with new epochs).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, Message, Subscriber};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::bridge::{Broker, BrokerError, Options, Publication};
use super::envelope::Bad;
use super::link::Link;

/// Messages waiting for [`Broker::recv`], all subscriptions together (bounded memory:
/// beyond it messages are dropped and counted in `inbound_dropped`).
const QUEUE: usize = 4096;
/// Messages async-nats keeps per subscription before it drops them (a slow consumer,
/// reported by an event and counted in `inbound_dropped`). Small: the forwarding task
/// empties it at once into [`QUEUE`].
const SUBSCRIPTION_CAPACITY: usize = 1024;
/// Longest wait for an answer to the node id's claim.
const CLAIM_WAIT: Duration = Duration::from_millis(500);

/// A connection to NATS.
#[derive(Debug)]
pub struct Nats {
    client: Client,
    prefix: String,
    node_subject: String,
    instance: u64,
    link: Arc<Link>,
    /// Set by the event callback when the library saw the connection break.
    lost: Arc<AtomicBool>,
    /// Wakes `recv` when `lost` is set.
    lost_wake: Arc<Notify>,
    rx: mpsc::Receiver<Message>,
    tx: mpsc::Sender<Message>,
    /// One forwarding task per subscribed topic, with its stop signal.
    subs: HashMap<Arc<str>, (oneshot::Sender<()>, JoinHandle<()>)>,
    responder: JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Nats {
    fn drop(&mut self) {
        // The forwarding tasks end when their stop sender (dropped with `subs`) goes;
        // the responder must end too, or this process keeps answering for the node id.
        self.responder.abort();
        for (_, (_, h)) in self.subs.drain() {
            h.abort();
        }
    }
}

/// The NATS subject of `topic`: `{prefix}.t.{token}`; the token is the topic itself when
/// it is readable (only `[A-Za-z0-9_:-]`, not starting with `_`), else `_` followed by
/// the topic in base64url without padding. The two forms cannot collide: only the
/// encoded form starts with `_`.
pub(crate) fn subject(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 3 + topic.len() * 4 / 3 + 2);
    s.push_str(prefix);
    s.push_str(".t.");
    if readable(topic) {
        s.push_str(topic);
    } else {
        s.push('_');
        URL_SAFE_NO_PAD.encode_string(topic.as_bytes(), &mut s);
    }
    s
}

fn readable(topic: &str) -> bool {
    !topic.is_empty()
        && !topic.starts_with('_')
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
}

/// The topic of a subject made by [`subject`] with this prefix; `None` for any other
/// subject (including a non-canonical encoding, so one topic has exactly one subject).
pub(crate) fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let token = subject.strip_prefix(prefix)?.strip_prefix(".t.")?;
    if let Some(enc) = token.strip_prefix('_') {
        let raw = URL_SAFE_NO_PAD.decode(enc).ok()?;
        if raw.is_empty() || !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return None;
        }
        let t = String::from_utf8(raw).ok()?;
        // Readable topics are never encoded: refuse a second spelling of one.
        (!readable(&t)).then_some(t)
    } else {
        readable(token).then(|| token.to_owned())
    }
}

fn io(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Io(e.to_string())
}

/// Asks who holds the node id: `Ok(None)` when nobody answers in `wait` (no responders,
/// or a timeout), `Ok(Some(instance))` otherwise (an answer that is not a number reads as
/// instance 0, i.e. someone else's).
async fn holder(
    client: &Client,
    subject: &str,
    wait: Duration,
) -> Result<Option<u64>, BrokerError> {
    match tokio::time::timeout(wait, client.request(subject.to_owned(), Bytes::new())).await {
        Err(_) => Ok(None),
        Ok(Err(e)) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut => {
                Ok(None)
            }
            _ => Err(io(e)),
        },
        Ok(Ok(m)) => Ok(Some(
            std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        )),
    }
}

impl Nats {
    fn check(&self) -> Result<(), BrokerError> {
        // The library sends its events with `try_send` into a 128-slot channel shared
        // with slow-consumer events, so a `Disconnected` can be lost in a storm; a second
        // connect in its statistics is the same loss, seen after the fact.
        if self.lost.load(Ordering::Acquire)
            || self.client.statistics().connects.load(Ordering::Relaxed) > 1
        {
            Err(BrokerError::Io("connection to NATS lost".into()))
        } else {
            Ok(())
        }
    }
}

/// Forwards one subscription into the shared queue until stopped (then unsubscribes at
/// the server) or the subscription ends.
async fn forward(
    mut sub: Subscriber,
    tx: mpsc::Sender<Message>,
    link: Arc<Link>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            m = sub.next() => match m {
                Some(m) => match tx.try_send(m) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        link.stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                None => return,
            },
            _ = &mut stop => {
                // Queued before whatever the client sends next (the caller's flush).
                let _ = sub.unsubscribe().await;
                return;
            }
        }
    }
}

impl Broker for Nats {
    async fn connect(o: &Options) -> Result<Self, BrokerError> {
        let lost = Arc::new(AtomicBool::new(false));
        let lost_wake = Arc::new(Notify::new());
        let mut opts = match (&o.url.user, &o.url.password) {
            (Some(u), Some(p)) => ConnectOptions::with_user_and_password(u.clone(), p.clone()),
            (Some(u), None) => ConnectOptions::with_user_and_password(u.clone(), String::new()),
            (None, Some(t)) => ConnectOptions::with_token(t.clone()),
            (None, None) => ConnectOptions::new(),
        };
        let (l, w, link) = (
            Arc::clone(&lost),
            Arc::clone(&lost_wake),
            Arc::clone(&o.link),
        );
        opts = opts
            .connection_timeout(o.timeout)
            .ping_interval((o.timeout / 2).max(Duration::from_millis(100)))
            .request_timeout(Some(o.timeout))
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            // 0 would mean "unlimited"; one attempt at most, and the loss is seen anyway.
            .max_reconnects(1)
            .event_callback(move |e| {
                match e {
                    Event::Disconnected | Event::Closed => {
                        l.store(true, Ordering::Release);
                        w.notify_one();
                    }
                    Event::SlowConsumer(_) => {
                        link.stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                async {}
            });
        let host = if o.url.host.contains(':') {
            format!("[{}]", o.url.host)
        } else {
            o.url.host.clone()
        };
        let addr = format!("nats://{host}:{}", o.url.port);
        let client = opts.connect(addr).await.map_err(|e| {
            if e.kind() == async_nats::ConnectErrorKind::Authentication
                || e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation
            {
                BrokerError::Refused(e.to_string())
            } else {
                io(e)
            }
        })?;
        let node_subject = format!("{}.node.{}", o.prefix, o.node);
        match holder(&client, &node_subject, o.timeout.min(CLAIM_WAIT)).await? {
            Some(i) if i != o.instance => {
                return Err(BrokerError::NodeIdTaken(format!(
                    "node id {:?} is held by another process (instance {i})",
                    &*o.node
                )));
            }
            _ => {}
        }
        let mut sub = client.subscribe(node_subject.clone()).await.map_err(io)?;
        let body = Bytes::from(o.instance.to_string());
        let c = client.clone();
        let responder = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(r) = m.reply {
                    let _ = c.publish(r, body.clone()).await;
                }
            }
        });
        client.flush().await.map_err(io)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut n = Nats {
            client,
            prefix: o.prefix.clone(),
            node_subject,
            instance: o.instance,
            link: Arc::clone(&o.link),
            lost,
            lost_wake,
            rx,
            tx,
            subs: HashMap::new(),
            responder,
            timeout: o.timeout,
        };
        // Proves the round trip (and that our responder is the one answering).
        n.ping().await?;
        Ok(n)
    }

    async fn subscribe(&mut self, topics: &[Arc<str>]) -> Result<(), BrokerError> {
        self.check()?;
        for t in topics {
            if self.subs.contains_key(t) {
                continue;
            }
            let sub = self
                .client
                .subscribe(subject(&self.prefix, t))
                .await
                .map_err(io)?;
            let (stop, stopped) = oneshot::channel();
            let h = tokio::spawn(forward(
                sub,
                self.tx.clone(),
                Arc::clone(&self.link),
                stopped,
            ));
            self.subs.insert(Arc::clone(t), (stop, h));
        }
        self.client.flush().await.map_err(io)
    }

    async fn unsubscribe(&mut self, topics: &[Arc<str>]) -> Result<(), BrokerError> {
        self.check()?;
        for t in topics {
            if let Some((stop, h)) = self.subs.remove(t) {
                let _ = stop.send(());
                // The task has queued the UNSUB once it ends.
                let _ = h.await;
            }
        }
        self.client.flush().await.map_err(io)
    }

    async fn publish(&mut self, pubs: &[Publication]) -> Result<(), BrokerError> {
        self.check()?;
        let max = self.client.server_info().max_payload;
        for p in pubs {
            if max > 0 && p.envelope.len() > max {
                // The server would close the connection for it; this one is lost alone.
                self.link
                    .stats
                    .dropped
                    .fetch_add(u64::from(p.count), Ordering::Relaxed);
                continue;
            }
            self.client
                .publish(subject(&self.prefix, &p.topic), p.envelope.clone())
                .await
                .map_err(io)?;
        }
        self.client.flush().await.map_err(io)?;
        self.check()
    }

    async fn recv(&mut self) -> Result<(Arc<str>, Bytes), BrokerError> {
        loop {
            self.check()?;
            tokio::select! {
                m = self.rx.recv() => {
                    let Some(m) = m else {
                        return Err(BrokerError::Io("NATS queue closed".into()));
                    };
                    match topic_of(&self.prefix, m.subject.as_str()) {
                        Some(t) => return Ok((Arc::from(t), m.payload)),
                        None => {
                            self.link.stats.bad[Bad::Malformed as usize]
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                _ = self.lost_wake.notified() => {}
            }
        }
    }

    async fn ping(&mut self) -> Result<(), BrokerError> {
        self.check()?;
        let m = tokio::time::timeout(
            self.timeout,
            self.client.request(self.node_subject.clone(), Bytes::new()),
        )
        .await
        .map_err(|_| BrokerError::Timeout)?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::TimedOut => BrokerError::Timeout,
            _ => io(e),
        })?;
        let who: Option<u64> = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|s| s.parse().ok());
        if who != Some(self.instance) {
            // Two processes claimed the id at the same moment: the one that hears the
            // other gives up this connection (and its next connect is refused).
            return Err(BrokerError::NodeIdTaken(format!(
                "node id answered by another process ({})",
                String::from_utf8_lossy(&m.payload)
            )));
        }
        self.check()
    }
}

#[cfg(test)]
mod tests;
