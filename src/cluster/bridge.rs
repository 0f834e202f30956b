//! The bridge thread: one per node, a current-thread tokio runtime that owns the broker
//! client, so no shard ever blocks on the broker or waits for a round trip.
//!
//! One loop ([`run`]), generic over the broker ([`Broker`]: Redis or NATS), does four
//! things: connects (with a timeout, then jittered backoff 250 ms..5 s on failure);
//! drains the [`Link`] when a shard wakes it (interest changes become batched
//! (un)subscribes, with `UNSUBSCRIBE_DELAY` against churn; publications become one
//! envelope per batch, sent pipelined with one flush per drain); hands what the broker
//! sends to the topic's home shard, framed once per node ([`super::inbound`]); and pings
//! every [`Options::timeout`] / 2, so a broker that accepts TCP and answers nothing is
//! lost within about 1.5 × the timeout.
//!
//! When the broker is lost: `ringcast_broker_up` 0 ([`Link::set_up`]), one error line with
//! the reason (then one per minute at most while it stays down), publications counted as
//! dropped by the link instead of queued; on reconnection every topic with subscribers is
//! subscribed again and gets a new epoch ([`super::inbound::new_epochs`]): a client that
//! recovers across the outage is told `recovered: false` rather than given a silent gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::envelope::{self, Kind};
pub use super::link::Keep;
use super::link::{Fetched, Link, Outbound, Span};
use super::url::BrokerUrl;
use crate::bus::Bus;

/// How long a topic stays subscribed at the broker after the node's last subscriber left
/// (a client that reconnects at once does not cost an unsubscribe and a subscribe).
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// First wait before reconnecting; doubled per failure up to [`MAX_BACKOFF`], with jitter.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait before reconnecting.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the bridge needs from the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's id.
    pub node: Arc<str>,
    /// A random number drawn at start: tells this process's claim of the node id from
    /// another process's (a collision).
    pub instance: u64,
    /// Where the broker is.
    pub url: BrokerUrl,
    /// `--broker-timeout`: connect, command and stall-detection bound.
    pub timeout: Duration,
    /// Largest message accepted from the broker (`--max-message-size`).
    pub max_message: usize,
    /// Largest envelope accepted from the broker.
    pub max_envelope: usize,
    /// Prefix of every channel (Redis) or subject (NATS) and key ringcast uses.
    pub prefix: String,
    /// The link (for the counters a client library reports, e.g. NATS slow consumers).
    pub link: Arc<Link>,
}

/// Why a broker operation failed: the connection is treated as lost.
#[derive(Debug)]
pub enum BrokerError {
    /// Could not connect, or the connection broke.
    Io(String),
    /// The broker refused (authentication, unknown command, script error).
    Refused(String),
    /// Another process runs with this node id (detected at the broker): fatal at start.
    NodeIdTaken(String),
    /// The broker did not answer within `--broker-timeout`.
    Timeout,
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Io(e) => write!(f, "{e}"),
            BrokerError::Refused(e) => write!(f, "refused: {e}"),
            BrokerError::NodeIdTaken(e) => write!(f, "node id collision: {e}"),
            BrokerError::Timeout => write!(f, "no answer within --broker-timeout"),
        }
    }
}

/// One publication for the broker: a whole batch in one envelope.
#[derive(Debug)]
pub struct Publication {
    /// The topic.
    pub topic: Arc<str>,
    /// The envelope ([`envelope`]); for one with history the broker's script fills in the
    /// offset and epoch at [`envelope::sequence_at`]`(node id length)`.
    pub envelope: Bytes,
    /// Messages in it.
    pub count: u32,
    /// The topic's history (Redis numbers and keeps the publications of such topics).
    pub history: Option<Keep>,
}

/// A broker client, as the bridge loop uses it. Every method is bounded by the caller's
/// timeout; an error means the connection is lost (the loop reconnects).
#[allow(async_fn_in_trait)] // Used only by this crate's loop, on one thread.
pub trait Broker: Sized {
    /// Connects, authenticates, proves the connection answers, and claims the node id
    /// ([`BrokerError::NodeIdTaken`] when another live process holds it).
    async fn connect(o: &Options) -> Result<Self, BrokerError>;
    /// Starts receiving the topics' publications.
    async fn subscribe(&mut self, topics: &[Arc<str>]) -> Result<(), BrokerError>;
    /// Stops receiving them.
    async fn unsubscribe(&mut self, topics: &[Arc<str>]) -> Result<(), BrokerError>;
    /// Sends every publication, pipelined, with one flush.
    async fn publish(&mut self, pubs: &[Publication]) -> Result<(), BrokerError>;
    /// The next message from the broker: (topic, payload). Must be cancel-safe: the loop
    /// drops it when a shard wakes the bridge or the ping is due.
    async fn recv(&mut self) -> Result<(Arc<str>, Bytes), BrokerError>;
    /// Proves the connection still answers (and renews the node id's claim).
    async fn ping(&mut self) -> Result<(), BrokerError>;
    /// Reads a topic's history (Redis: the topics it numbers): the epoch (created when the
    /// topic has none, so a subscriber always has one to track), the latest offset, and
    /// the sequenced envelopes covering `span`, oldest first. Default: no history here.
    async fn history(
        &mut self,
        _topic: &str,
        _span: Span,
        _keep: Keep,
    ) -> Result<Option<HistoryRead>, BrokerError> {
        Ok(None)
    }
    /// Gives the topics new epochs at the broker after an outage (Redis: the epoch of
    /// topics the broker numbers). Default: nothing to do.
    async fn new_epochs(&mut self, _topics: &[Arc<str>]) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// What [`Broker::history`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRead {
    /// The topic's epoch.
    pub epoch: Option<[u8; 8]>,
    /// The latest offset.
    pub top: u64,
    /// Sequenced envelopes, oldest first (they may cover offsets outside the span: the
    /// bridge keeps what the span asks for).
    pub envelopes: Vec<Bytes>,
}

/// Interest of this node in one topic, as the bridge tracks it.
#[derive(Debug, Clone, Copy)]
struct Want {
    /// The node has subscribers.
    on: bool,
    /// Subscribed at the broker on the current connection.
    subscribed: bool,
    /// When an unsubscribe is due (the last subscriber left at `since`).
    since: Instant,
}

/// The bridge's state across connections.
struct State<'a> {
    o: &'a Options,
    link: &'a Link,
    bus: &'a Bus,
    topics: HashMap<Arc<str>, Want>,
    /// Topics whose interest changed since the last [`State::sync_interest`].
    changed: Vec<Arc<str>>,
    /// Topics the node lost interest in, unsubscribed when their delay is over.
    leaving: Vec<Arc<str>>,
    pubs: Vec<Publication>,
    /// History questions of home shards: (home, cookie, topic, span).
    fetches: Vec<(u16, u64, Arc<str>, Span, Keep)>,
    scratch: BytesMut,
    inbound: super::inbound::Inbound,
}

/// Runs the bridge until the process exits. `first`: the result of the first connection
/// attempt is sent there (start-up decides whether to go on without the broker).
pub async fn run<B: Broker>(
    o: Options,
    link: Arc<Link>,
    bus: Arc<Bus>,
    notify: Arc<tokio::sync::Notify>,
    first: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut st = State {
        o: &o,
        link: &link,
        bus: &bus,
        topics: HashMap::new(),
        changed: Vec::new(),
        leaving: Vec::new(),
        pubs: Vec::new(),
        fetches: Vec::new(),
        scratch: BytesMut::new(),
        inbound: super::inbound::Inbound::new(&o),
    };
    let mut first = Some(first);
    let mut backoff = MIN_BACKOFF;
    let mut outage: Option<(Instant, String)> = None;
    let mut last_log = None::<Instant>;
    let mut ever_up = false;
    loop {
        let attempt = match tokio::time::timeout(o.timeout, B::connect(&o)).await {
            Ok(r) => r,
            Err(_) => Err(BrokerError::Timeout),
        };
        let mut b = match attempt {
            Ok(b) => b,
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e.to_string()));
                }
                if matches!(e, BrokerError::NodeIdTaken(_)) && !ever_up {
                    // Refused at start: main has been told, and exits.
                    return;
                }
                let now = Instant::now();
                if last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
                    last_log = Some(now);
                    tracing::error!(node = %o.node, broker = %o.url, error = %e, "broker unreachable; retrying (local delivery goes on)");
                }
                outage.get_or_insert((now, e.to_string()));
                // Keep the interest current and the queue empty while waiting.
                let wait = jitter(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = notify.notified() => st.take_link(false),
                    }
                }
                continue;
            }
        };
        // Connected: subscribe everything wanted, then say so.
        for w in st.topics.values_mut() {
            w.subscribed = false;
        }
        if let Err(e) = st.sync_interest(&mut b, true).await {
            tracing::warn!(node = %o.node, error = %e, "broker lost while subscribing");
            continue;
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        if ever_up || outage.is_some() {
            // Whatever was published here or elsewhere during the outage may be missing:
            // every topic with subscribers here starts a new epoch.
            let topics: Vec<Arc<str>> = st
                .topics
                .iter()
                .filter(|(_, w)| w.on)
                .map(|(t, _)| Arc::clone(t))
                .collect();
            if let Err(e) = b.new_epochs(&topics).await {
                tracing::warn!(node = %o.node, error = %e, "broker lost while renewing epochs");
                continue;
            }
            super::inbound::new_epochs(&bus, &topics).await;
            link.stats
                .epoch_resets
                .fetch_add(topics.len() as u64, Ordering::Relaxed);
            let (since, why) = outage.take().unwrap_or((Instant::now(), String::new()));
            tracing::info!(node = %o.node, broker = %o.url, down_for = ?since.elapsed(), reason = %why, epochs_renewed = topics.len(), "broker reconnected");
        } else {
            tracing::info!(node = %o.node, broker = %o.url, "broker connected");
        }
        ever_up = true;
        backoff = MIN_BACKOFF;
        link.set_up(true);
        // Publications made while the broker was down were counted as dropped; the queue
        // starts empty with this connection.
        let err = st.serve(&mut b, &notify).await;
        link.set_up(false);
        link.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        tracing::error!(node = %o.node, broker = %o.url, error = %err, "broker connection lost; reconnecting (local delivery goes on, publications to other nodes are dropped and counted)");
        outage = Some((Instant::now(), err.to_string()));
        last_log = Some(Instant::now());
        st.take_link(false);
    }
}

impl State<'_> {
    /// One connection's life: returns why it ended.
    async fn serve<B: Broker>(&mut self, b: &mut B, notify: &tokio::sync::Notify) -> BrokerError {
        let mut ping = tokio::time::interval(self.o.timeout / 2);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Anything a shard queued before the link was up.
        self.take_link(true);
        loop {
            if let Err(e) = self.flush(b).await {
                return e;
            }
            tokio::select! {
                biased;
                _ = notify.notified() => self.take_link(true),
                r = b.recv() => match r {
                    Ok((topic, payload)) => self.inbound.handle(self.bus, self.link, &topic, payload),
                    Err(e) => return e,
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(self.o.timeout, b.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return e,
                        Err(_) => return BrokerError::Timeout,
                    }
                    if let Err(e) = self.sync_interest(b, false).await {
                        return e;
                    }
                }
            }
        }
    }

    /// Takes what the shards queued: interest into the table, publications into envelopes
    /// (`up`: to send; else counted as dropped).
    fn take_link(&mut self, up: bool) {
        let now = Instant::now();
        let link = self.link;
        let (topics, changed, pubs, fetches, scratch) = (
            &mut self.topics,
            &mut self.changed,
            &mut self.pubs,
            &mut self.fetches,
            &mut self.scratch,
        );
        let mut dropped = 0u64;
        link.drain(|m| match m {
            Outbound::Interest { topic, on } => {
                let w = topics.entry(Arc::clone(&topic)).or_insert(Want {
                    on,
                    subscribed: false,
                    since: now,
                });
                w.on = on;
                w.since = now;
                changed.push(topic);
            }
            Outbound::Fetch {
                home,
                cookie,
                topic,
                span,
                keep,
            } => fetches.push((home, cookie, topic, span, keep)),
            Outbound::Publish {
                topic,
                batch,
                history,
            } => {
                if !up {
                    dropped += u64::from(batch.count());
                    return;
                }
                let count = batch.count();
                envelope::encode_head(scratch, link.node.as_bytes(), history.is_some(), count);
                for (i, (binary, payload)) in envelope::payloads(&batch.frames).enumerate() {
                    let kind = if binary {
                        Kind::Binary
                    } else if batch.is_json(i as u32) {
                        Kind::Json
                    } else {
                        Kind::Text
                    };
                    envelope::encode_message(scratch, kind, payload);
                }
                pubs.push(Publication {
                    topic,
                    envelope: scratch.split().freeze(),
                    count,
                    history,
                });
            }
        });
        if dropped > 0 {
            link.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if !up {
            // Not connected: every question is answered at once (the home answers from
            // its own history).
            for (home, cookie, ..) in self.fetches.drain(..) {
                answer(self.bus, home, cookie, None);
            }
        }
    }

    /// Reads the histories the home shards asked for (after the subscribes they follow).
    async fn read_histories<B: Broker>(&mut self, b: &mut B) -> Result<(), BrokerError> {
        let mut err = None;
        for (home, cookie, topic, span, keep) in std::mem::take(&mut self.fetches) {
            if err.is_some() {
                answer(self.bus, home, cookie, None);
                continue;
            }
            let read =
                match tokio::time::timeout(self.o.timeout, b.history(&topic, span, keep)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        err = Some(e);
                        None
                    }
                    Err(_) => {
                        err = Some(BrokerError::Timeout);
                        None
                    }
                };
            let fetched = read.and_then(|r| self.inbound.history(&topic, r, span));
            answer(self.bus, home, cookie, fetched);
        }
        err.map_or(Ok(()), Err)
    }

    /// Sends the publications taken so far, and applies interest gained (subscribes are
    /// not delayed: a subscriber waits for them).
    async fn flush<B: Broker>(&mut self, b: &mut B) -> Result<(), BrokerError> {
        self.sync_interest(b, false).await?;
        if !self.fetches.is_empty() {
            self.read_histories(b).await?;
        }
        if self.pubs.is_empty() {
            return Ok(());
        }
        let count: u64 = self.pubs.iter().map(|p| u64::from(p.count)).sum();
        let sent = match tokio::time::timeout(self.o.timeout, b.publish(&self.pubs)).await {
            Ok(r) => r,
            Err(_) => Err(BrokerError::Timeout),
        };
        let stats = &self.link.stats;
        let envelopes = self.pubs.len() as u64;
        self.pubs.clear();
        match sent {
            Ok(()) => {
                stats.published.fetch_add(count, Ordering::Relaxed);
                stats.envelopes_out.fetch_add(envelopes, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Sent or not, nobody can tell: counted as not delivered to other nodes.
                stats.dropped.fetch_add(count, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// (Un)subscribes at the broker what changed: gains at once, losses after
    /// [`UNSUBSCRIBE_DELAY`]. `all`: after a reconnect, everything wanted is subscribed
    /// again and what is no longer wanted is forgotten. Costs what changed, not the table.
    async fn sync_interest<B: Broker>(&mut self, b: &mut B, all: bool) -> Result<(), BrokerError> {
        let now = Instant::now();
        let mut sub = Vec::new();
        if all {
            self.changed.clear();
            self.leaving.clear();
            self.topics.retain(|_, w| w.on);
            sub.extend(self.topics.keys().cloned());
        } else {
            for t in self.changed.drain(..) {
                match self.topics.get(&t) {
                    Some(w) if w.on && !w.subscribed => sub.push(t),
                    Some(w) if !w.on => self.leaving.push(t),
                    _ => {}
                }
            }
        }
        sub.sort_unstable();
        sub.dedup();
        if !sub.is_empty() {
            match tokio::time::timeout(self.o.timeout, b.subscribe(&sub)).await {
                Ok(r) => r?,
                Err(_) => return Err(BrokerError::Timeout),
            }
            for t in &sub {
                if let Some(w) = self.topics.get_mut(t) {
                    w.subscribed = true;
                }
            }
        }
        let mut removed = false;
        if !self.leaving.is_empty() {
            let topics = &self.topics;
            let mut due = Vec::new();
            self.leaving.retain(|t| match topics.get(t) {
                Some(w) if w.on => false,
                Some(w) if now.duration_since(w.since) >= UNSUBSCRIBE_DELAY => {
                    due.push(Arc::clone(t));
                    false
                }
                Some(_) => true,
                None => false,
            });
            due.sort_unstable();
            due.dedup();
            let was: Vec<Arc<str>> = due
                .iter()
                .filter(|t| self.topics.get(*t).is_some_and(|w| w.subscribed))
                .cloned()
                .collect();
            if !was.is_empty() {
                match tokio::time::timeout(self.o.timeout, b.unsubscribe(&was)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(BrokerError::Timeout),
                }
            }
            removed = !due.is_empty();
            for t in &due {
                self.topics.remove(t);
            }
        }
        if all || removed || !sub.is_empty() {
            let n = self.topics.values().filter(|w| w.subscribed).count();
            self.link
                .stats
                .subscribed
                .store(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Hands a history answer to the home shard that asked.
fn answer(bus: &Bus, home: u16, cookie: u64, read: Option<Fetched>) {
    // A full inbox: the home answers `unavailable` at its deadline.
    let _ = bus.push_from_any_thread(
        usize::from(home),
        crate::bus::BusMsg::Fetched { cookie, read },
    );
}

/// `d` ± 20 %, so that nodes that lost the broker together do not reconnect together.
fn jitter(d: Duration) -> Duration {
    let spread = d.as_millis() as u64 / 5;
    let off = fastrand::u64(0..=spread * 2);
    Duration::from_millis(d.as_millis() as u64 - spread + off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(1000));
            assert!((800..=1200).contains(&(j.as_millis() as u64)), "{j:?}");
        }
    }
}
