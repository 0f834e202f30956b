//! The Redis client of the bridge: owns the two connections to Redis (one multiplexed for
//! commands, one RESP2 pub/sub), the node id's claim, the channel and key names, and the
//! Lua scripts that make Redis the sequencer and history store of topics with history.
//!
//! Names (`P` = `--broker-prefix`): channel `P:t:{topic}`; node claim `P:node:{node}`;
//! per topic with history: offset `P:o:{topic}`, epoch `P:e:{topic}`, stream `P:s:{topic}`
//! (one stream entry per batch, id `{first offset}-1`, field `e` = the sequenced envelope).
//!
//! Cancel safety: `recv` reads an owned channel of the pub/sub driver task, so dropping it
//! loses nothing. Every other call may be dropped by the loop's timeout; the connection
//! is then treated as lost and rebuilt, so a half-done pipeline does not matter.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::bridge::{Broker, BrokerError, Options, Publication};
use super::envelope;

/// Claims (or renews) the node id: KEYS[1] claim key; ARGV[1] instance, ARGV[2] PX ms.
/// Returns 1, or the instance holding the claim.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return v
";

/// Sequences, keeps and publishes one batch of a topic with history.
/// KEYS: offset, epoch, stream. ARGV: envelope, count, size, ttl ms, channel, where the
/// sequence goes (0-based byte index: `envelope::sequence_at`), candidate epoch.
/// Returns the offset of the batch's first message.
const PUBLISH: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch or #epoch ~= 8 then
  epoch = ARGV[7]
  redis.call('SET', KEYS[2], epoch)
end
local count = tonumber(ARGV[2])
local last = redis.call('INCRBY', KEYS[1], count)
local first = last - count + 1
local at = tonumber(ARGV[6])
local seq = struct.pack('<I4I4', first % 4294967296, math.floor(first / 4294967296)) .. epoch
local env = ARGV[1]
env = string.sub(env, 1, at) .. seq .. string.sub(env, at + 17)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], string.format('%.0f', first) .. '-1', 'e', env)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], env)
return first
";

/// What [`Redis::history`] read of a topic.
#[cfg_attr(not(test), allow(dead_code))] // Recovery wires it (not yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    /// The topic's epoch; `None` when Redis has no state for it.
    pub epoch: Option<[u8; 8]>,
    /// The offset of the topic's last message (0: none yet).
    pub top: u64,
    /// The kept envelopes (sequenced) holding offsets after `since`, oldest first.
    pub envelopes: Vec<Bytes>,
}

/// A connection to Redis.
pub struct Redis {
    cmd: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
    prefix: String,
    node: Arc<str>,
    instance: String,
    claim_ms: u64,
    claim: redis::Script,
    publish_sha: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn io(e: redis::RedisError) -> BrokerError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        BrokerError::Io(e.to_string())
    } else {
        BrokerError::Refused(e.to_string())
    }
}

/// A fresh epoch: 8 random base62 characters.
fn fresh_epoch() -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..8)
        .map(|_| A[fastrand::usize(..A.len())] as char)
        .collect()
}

/// The number of messages in a sequenced envelope (None: not one).
#[cfg_attr(not(test), allow(dead_code))]
fn sequenced_count(env: &[u8]) -> Option<u64> {
    let node_len = usize::from(*env.get(4)?);
    let at = envelope::sequence_at(node_len) + 16;
    let b = env.get(at..at + 4)?;
    Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
}

/// The first offset of a stream entry id `{first}-1`.
#[cfg_attr(not(test), allow(dead_code))]
fn entry_first(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

impl Redis {
    fn channel(&self, topic: &str) -> String {
        format!("{}:t:{topic}", self.prefix)
    }

    fn key(&self, kind: &str, topic: &str) -> String {
        format!("{}:{kind}:{topic}", self.prefix)
    }

    async fn renew_claim(&mut self) -> Result<(), BrokerError> {
        let r: redis::Value = self
            .claim
            .key(format!("{}:node:{}", self.prefix, self.node))
            .arg(&self.instance)
            .arg(self.claim_ms)
            .invoke_async(&mut self.cmd)
            .await
            .map_err(io)?;
        match r {
            redis::Value::Int(1) => Ok(()),
            other => Err(BrokerError::NodeIdTaken(format!(
                "node id {:?} is held by another process (instance {other:?})",
                &*self.node
            ))),
        }
    }

    /// The topic's kept publications after offset `since`, enough to cover `limit`
    /// messages (one round trip).
    #[cfg_attr(not(test), allow(dead_code))] // Recovery wires it (not yet).
    pub async fn history(
        &mut self,
        topic: &str,
        since: u64,
        limit: usize,
    ) -> Result<HistoryRead, BrokerError> {
        let start = format!("{}-1", since.saturating_add(1));
        type Entries = Vec<(String, Vec<Bytes>)>;
        let (epoch, top, before, after): (Option<Vec<u8>>, Option<u64>, Entries, Entries) =
            redis::pipe()
                .get(self.key("e", topic))
                .get(self.key("o", topic))
                .cmd("XREVRANGE")
                .arg(self.key("s", topic))
                .arg(&start)
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .cmd("XRANGE")
                .arg(self.key("s", topic))
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut self.cmd)
                .await
                .map_err(io)?;
        let epoch = epoch.and_then(|e| <[u8; 8]>::try_from(e.as_slice()).ok());
        let mut envelopes = Vec::new();
        let mut covered = 0u64;
        let mut last_first = None;
        let want = since.saturating_add(1);
        // XREVRANGE gave the entry starting at or before since+1 (it may hold since+1);
        // XRANGE the ones starting at since+1 or later (the first may be the same entry).
        for (id, fields) in before.into_iter().chain(after) {
            let (Some(first), Some(env)) = (entry_first(&id), fields.get(1)) else {
                continue;
            };
            let Some(count) = sequenced_count(env) else {
                continue;
            };
            let end = first.saturating_add(count);
            if end <= want || last_first == Some(first) {
                continue;
            }
            if covered >= limit as u64 {
                break;
            }
            covered += end - want.max(first);
            last_first = Some(first);
            envelopes.push(env.clone());
        }
        Ok(HistoryRead {
            epoch,
            top: top.unwrap_or(0),
            envelopes,
        })
    }
}

impl Broker for Redis {
    async fn connect(o: &Options) -> Result<Self, BrokerError> {
        let mut settings = redis::RedisConnectionInfo::default().set_db(i64::from(o.url.db));
        if let Some(u) = &o.url.user {
            settings = settings.set_username(u);
        }
        if let Some(p) = &o.url.password {
            settings = settings.set_password(p);
        }
        let info: ConnectionInfo = ConnectionAddr::Tcp(o.url.host.clone(), o.url.port)
            .into_connection_info()
            .map_err(io)?
            .set_redis_settings(settings);
        let client = Client::open(info).map_err(io)?;
        // Response timeouts: no command waits without bound even outside the loop's own.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(o.timeout))
            .set_response_timeout(Some(o.timeout));
        let mut cmd = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(io)?;
        // The pub/sub connection has no configurable timeout: bounded by the loop's.
        let pubsub = client.get_async_pubsub().await.map_err(io)?;
        let (mut sink, stream) = pubsub.split();
        let _: String = redis::cmd("PING").query_async(&mut cmd).await.map_err(io)?;
        let _: redis::Value = sink.ping().await.map_err(io)?;
        let publish_sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(PUBLISH)
            .query_async(&mut cmd)
            .await
            .map_err(io)?;
        let mut r = Redis {
            cmd,
            sink,
            stream,
            prefix: o.prefix.clone(),
            node: Arc::clone(&o.node),
            instance: o.instance.to_string(),
            claim_ms: (o.timeout.as_millis() as u64).saturating_mul(3).max(1),
            claim: redis::Script::new(CLAIM),
            publish_sha,
        };
        r.renew_claim().await?;
        Ok(r)
    }

    async fn subscribe(&mut self, topics: &[Arc<str>]) -> Result<(), BrokerError> {
        if topics.is_empty() {
            return Ok(());
        }
        let ch: Vec<String> = topics.iter().map(|t| self.channel(t)).collect();
        self.sink.subscribe(ch).await.map_err(io)
    }

    async fn unsubscribe(&mut self, topics: &[Arc<str>]) -> Result<(), BrokerError> {
        if topics.is_empty() {
            return Ok(());
        }
        let ch: Vec<String> = topics.iter().map(|t| self.channel(t)).collect();
        self.sink.unsubscribe(ch).await.map_err(io)
    }

    async fn publish(&mut self, pubs: &[Publication]) -> Result<(), BrokerError> {
        if pubs.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for x in pubs {
            let channel = self.channel(&x.topic);
            match x.history {
                None => {
                    p.cmd("PUBLISH")
                        .arg(channel)
                        .arg(x.envelope.as_ref())
                        .ignore();
                }
                Some(keep) => {
                    let node_len = usize::from(x.envelope.get(4).copied().unwrap_or(0));
                    p.cmd("EVALSHA")
                        .arg(&self.publish_sha)
                        .arg(3)
                        .arg(self.key("o", &x.topic))
                        .arg(self.key("e", &x.topic))
                        .arg(self.key("s", &x.topic))
                        .arg(x.envelope.as_ref())
                        .arg(x.count)
                        .arg(keep.size.max(1))
                        .arg((keep.ttl.as_millis() as u64).max(1))
                        .arg(channel)
                        .arg(envelope::sequence_at(node_len))
                        .arg(fresh_epoch())
                        .ignore();
                }
            }
        }
        match p.query_async::<()>(&mut self.cmd).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Scripts flushed at the broker: load it again for the next batch; this
                // one is lost (the loop counts it as dropped and reconnects).
                if let Ok(sha) = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(PUBLISH)
                    .query_async::<String>(&mut self.cmd)
                    .await
                {
                    self.publish_sha = sha;
                }
                Err(BrokerError::Refused(e.to_string()))
            }
            Err(e) => Err(io(e)),
        }
    }

    async fn recv(&mut self) -> Result<(Arc<str>, Bytes), BrokerError> {
        let head = format!("{}:t:", self.prefix);
        loop {
            let Some(m) = self.stream.next().await else {
                return Err(BrokerError::Io("the pub/sub connection closed".into()));
            };
            // Only our prefixed channels are subscribed; anything else is skipped.
            if let Some(topic) = m.get_channel_name().strip_prefix(&head) {
                return Ok((
                    Arc::from(topic),
                    Bytes::copy_from_slice(m.get_payload_bytes()),
                ));
            }
        }
    }

    async fn ping(&mut self) -> Result<(), BrokerError> {
        self.renew_claim().await?;
        let _: redis::Value = self.sink.ping().await.map_err(io)?;
        Ok(())
    }

    async fn new_epochs(&mut self, topics: &[Arc<str>]) -> Result<(), BrokerError> {
        if topics.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for t in topics {
            // XX: only topics Redis sequences have an epoch key (no key created for the
            // others); KEEPTTL: the key still expires with the topic's history.
            p.cmd("SET")
                .arg(self.key("e", t))
                .arg(fresh_epoch())
                .arg("XX")
                .arg("KEEPTTL")
                .ignore();
            p.del(self.key("s", t)).ignore();
        }
        p.query_async::<()>(&mut self.cmd).await.map_err(io)
    }
}

#[cfg(test)]
mod tests;
