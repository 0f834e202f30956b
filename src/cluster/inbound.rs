//! What the broker sends: checked once per node, framed once per node, handed to the
//! topic's home shard as one batch (which numbers and fans it out like a local one).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::bridge::Options;
use super::envelope::{self, Bad, Kind};
use super::link::Link;
use crate::bus::{Bus, BusMsg, Pushed};
use crate::proto::frame::{MAX_HEADER_LEN, OpCode, encode_frame};
use crate::pubsub::{Batch, Origin, home_shard};

/// How often a refused broker message may be logged.
const BAD_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The bridge's inbound side.
#[derive(Debug)]
pub struct Inbound {
    node: Arc<str>,
    max_message: usize,
    max_envelope: usize,
    frames: BytesMut,
    last_bad_log: Option<Instant>,
    bad_since_log: u64,
    last_full_log: Option<Instant>,
}

impl Inbound {
    /// The inbound side for the node and limits of `o`.
    pub fn new(o: &Options) -> Self {
        Inbound {
            node: Arc::clone(&o.node),
            max_message: o.max_message,
            max_envelope: o.max_envelope,
            frames: BytesMut::new(),
            last_bad_log: None,
            bad_since_log: 0,
            last_full_log: None,
        }
    }

    /// One broker message on `topic`: decoded, framed once, pushed to the topic's home.
    /// A message ringcast did not write is dropped and counted; this node's own echo is
    /// dropped (its home delivered it already) unless the broker numbered it (then the
    /// home waits for it).
    pub fn handle(&mut self, bus: &Bus, link: &Link, topic: &str, payload: Bytes) {
        let env = match envelope::decode(&payload, self.max_message, self.max_envelope) {
            Ok(e) => e,
            Err(why) => return self.bad(link, topic, why),
        };
        if crate::pubsub::validate_topic(topic).is_err() {
            return self.bad(link, topic, Bad::Malformed);
        }
        let own = env.node == self.node.as_bytes();
        if own && env.seq.is_none() {
            return;
        }
        if let Some(seq) = env.seq
            && crate::pubsub::history::Epoch::parse(seq.epoch).is_none()
        {
            return self.bad(link, topic, Bad::Malformed);
        }
        let count = env.messages.len() as u32;
        let size: usize = env
            .messages
            .iter()
            .map(|(_, p)| p.len() + MAX_HEADER_LEN)
            .sum();
        self.frames.reserve(size);
        let mut ends = Vec::with_capacity(env.messages.len());
        let mut json = Vec::new();
        for (i, (kind, p)) in env.messages.iter().enumerate() {
            let op = if *kind == Kind::Binary {
                OpCode::Binary
            } else {
                OpCode::Text
            };
            if *kind == Kind::Json {
                json.push(i as u32);
            }
            encode_frame(&mut self.frames, true, op, None, p);
            ends.push(self.frames.len() as u32);
        }
        let mut batch = Batch::new(
            if own { Origin::Echo } else { Origin::Broker },
            self.frames.split().freeze(),
            ends.into_boxed_slice(),
        );
        batch.json = json.into_boxed_slice();
        if let Some(seq) = env.seq {
            batch.offset = seq.offset;
            batch.epoch = Some(seq.epoch);
        }
        let home = usize::from(home_shard(topic, bus.shards()));
        let msg = BusMsg::Named {
            topic: Arc::from(topic),
            batch: Arc::new(batch),
        };
        link.stats
            .received
            .fetch_add(u64::from(count), Ordering::Relaxed);
        if bus.push_from_any_thread(home, msg) == Pushed::Full {
            link.stats
                .inbound_dropped
                .fetch_add(u64::from(count), Ordering::Relaxed);
            let now = Instant::now();
            if self
                .last_full_log
                .is_none_or(|t| now.duration_since(t) >= BAD_LOG_INTERVAL)
            {
                self.last_full_log = Some(now);
                tracing::warn!(
                    topic,
                    home,
                    "a shard's inbox is full (--max-inbox-bytes): broker messages dropped for this node's subscribers"
                );
            }
        }
    }

    fn bad(&mut self, link: &Link, topic: &str, why: Bad) {
        if let Some(c) = link.stats.bad.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.bad_since_log += 1;
        let now = Instant::now();
        if self
            .last_bad_log
            .is_none_or(|t| now.duration_since(t) >= BAD_LOG_INTERVAL)
        {
            self.last_bad_log = Some(now);
            let suppressed = std::mem::take(&mut self.bad_since_log) - 1;
            tracing::warn!(
                topic = %topic.escape_debug(),
                reason = why.as_str(),
                suppressed,
                "a message on the broker was not written by this ringcast version: dropped"
            );
        }
    }
}

impl Inbound {
    /// A history read, framed for the home shard: the publications the span asks for,
    /// in offset order (an envelope that is not ours is counted and skipped).
    pub fn history(
        &mut self,
        topic: &str,
        r: super::bridge::HistoryRead,
        span: super::link::Span,
    ) -> Option<super::link::Fetched> {
        use crate::pubsub::history::{Epoch, Stored};
        let epoch = Epoch::parse(r.epoch?)?;
        let mut publications: Vec<Stored> = Vec::new();
        for env in &r.envelopes {
            let e = match envelope::decode(env, self.max_message, self.max_envelope) {
                Ok(e) => e,
                Err(why) => {
                    self.bad_log(topic, why);
                    continue;
                }
            };
            let Some(seq) = e.seq else { continue };
            for (i, (kind, p)) in e.messages.iter().enumerate() {
                let offset = seq.offset + i as u64;
                if publications.last().is_some_and(|l| l.offset >= offset) || offset > r.top {
                    continue;
                }
                let op = if *kind == Kind::Binary {
                    OpCode::Binary
                } else {
                    OpCode::Text
                };
                let mut f = BytesMut::with_capacity(p.len() + MAX_HEADER_LEN);
                encode_frame(&mut f, true, op, None, p);
                publications.push(Stored {
                    offset,
                    frame: f.freeze(),
                    json: *kind == Kind::Json,
                });
            }
        }
        match span {
            super::link::Span::Top => publications.clear(),
            super::link::Span::After { since, limit } => {
                publications.retain(|p| p.offset > since);
                publications.truncate(limit);
            }
            super::link::Span::Last(n) => {
                let cut = publications.len().saturating_sub(n);
                publications.drain(..cut);
            }
        }
        Some(super::link::Fetched {
            epoch: Some(epoch),
            top: r.top,
            publications,
        })
    }

    fn bad_log(&mut self, topic: &str, why: Bad) {
        let now = Instant::now();
        if self
            .last_bad_log
            .is_none_or(|t| now.duration_since(t) >= BAD_LOG_INTERVAL)
        {
            self.last_bad_log = Some(now);
            tracing::warn!(topic = %topic.escape_debug(), reason = why.as_str(), "a history entry at the broker was not written by this ringcast version: skipped");
        }
    }
}

/// Tells every topic's home that the topic starts a new epoch (after an outage). A full
/// inbox is retried for up to a second (without blocking the bridge's runtime), then the
/// topic is logged: a recovering client may then miss the outage's gap.
pub async fn new_epochs(bus: &Bus, topics: &[Arc<str>]) {
    for t in topics {
        let home = usize::from(home_shard(t, bus.shards()));
        let mut tries = 0;
        while bus.push_from_any_thread(
            home,
            BusMsg::NewEpoch {
                topic: Arc::clone(t),
            },
        ) == Pushed::Full
        {
            tries += 1;
            if tries > 100 {
                tracing::error!(topic = %t, "could not renew the epoch after the broker outage: the home shard's inbox stays full");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
