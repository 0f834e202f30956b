//! The two phases of `recover` as [`Handler`]s of its mux connections: the first
//! subscribe (ack with epoch and offset, then one live envelope: where each client will
//! recover from) and the replay (ack with `recovered`, then exactly the missed offsets, each
//! with the payload published there, and nothing more). Acks and errors are read with serde
//! (a few per client); envelopes in place ([`crate::envelope`]).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;

use crate::envelope;
use crate::mux_client::Handler;
use crate::payload;

/// What the first connections are waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Acks,
    Live,
}

/// A first-phase client.
#[derive(Debug, Default)]
pub(crate) struct FirstClient {
    pub(crate) epoch: Option<String>,
    pub(crate) ack_offset: Option<u64>,
    pub(crate) last: Option<u64>,
    pub(crate) bad: Option<String>,
    pub(crate) ended: bool,
}

#[derive(Debug)]
pub(crate) struct FirstPhase {
    pub(crate) clients: Vec<FirstClient>,
    pub(crate) v2: bool,
    pub(crate) stage: Stage,
}

impl FirstPhase {
    pub(crate) fn new(n: usize, v2: bool) -> Self {
        FirstPhase {
            clients: (0..n).map(|_| FirstClient::default()).collect(),
            v2,
            stage: Stage::Acks,
        }
    }

    /// The epoch of the acks (the most common one), or why there is none.
    pub(crate) fn epoch(&self) -> Result<String, String> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &self.clients {
            if let Some(e) = &c.epoch {
                *seen.entry(e).or_insert(0) += 1;
            }
        }
        seen.into_iter()
            .max_by_key(|&(_, n)| n)
            .map(|(e, _)| e.to_string())
            .ok_or_else(|| {
                let why = self.clients.iter().find_map(|c| c.bad.clone());
                format!(
                    "no subscribe ack carried an epoch: does the topic's namespace keep history (--history-size)? {}",
                    why.unwrap_or_default()
                )
            })
    }
}

impl Handler for FirstPhase {
    fn message(&mut self, i: usize, text: bool, payload: &[u8], _now: Instant) {
        let v2 = self.v2;
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        if let Some(e) = envelope::parse(text, v2, payload) {
            match (e.offset, c.ack_offset) {
                (Some(o), Some(a)) if c.last.is_none() => {
                    if o != a + 1 {
                        c.bad
                            .get_or_insert(format!("live offset {o} after ack offset {a}"));
                    }
                    c.last = Some(o);
                }
                (None, _) => {
                    c.bad
                        .get_or_insert("a live envelope without an offset".into());
                }
                _ => {}
            }
            return;
        }
        match reply(payload) {
            Reply::Ack {
                id: 1,
                epoch,
                offset,
                ..
            } => match (epoch, offset) {
                (Some(e), Some(o)) => {
                    c.epoch = Some(e);
                    c.ack_offset = Some(o);
                }
                _ => {
                    c.bad
                        .get_or_insert("subscribe ack without epoch and offset".into());
                }
            },
            Reply::Error(code) => {
                c.bad.get_or_insert(format!("error {code}"));
            }
            _ => {}
        }
    }

    fn ended(&mut self, i: usize, why: &str) {
        if let Some(c) = self.clients.get_mut(i) {
            c.ended = true;
            c.bad.get_or_insert(why.to_string());
        }
    }

    fn finished(&self) -> bool {
        self.clients.iter().all(|c| {
            c.ended
                || c.bad.is_some()
                || match self.stage {
                    Stage::Acks => c.ack_offset.is_some(),
                    Stage::Live => c.last.is_some(),
                }
        })
    }
}

/// A reconnected client recovering from `last`.
#[derive(Debug)]
pub(crate) struct ReplayClient {
    pub(crate) last: u64,
    /// The offset due next.
    pub(crate) next: u64,
    /// `last + missed`: where the replay ends.
    pub(crate) top: u64,
    pub(crate) sent: Instant,
    /// `Ok(latest offset)` for `recovered: true`, `Err(reason)` otherwise.
    pub(crate) ack: Option<Result<u64, String>>,
    pub(crate) done: Option<Instant>,
    pub(crate) bad: Option<String>,
    pub(crate) ended: bool,
}

impl ReplayClient {
    pub(crate) fn new(last: u64, missed: u64) -> Self {
        ReplayClient {
            last,
            next: last + 1,
            top: last + missed,
            sent: Instant::now(),
            ack: None,
            done: None,
            bad: None,
            ended: false,
        }
    }

    /// Finished with this phase (done, failed, not recovered, or gone).
    fn finished(&self) -> bool {
        self.bad.is_some()
            || self.ended
            || matches!(self.ack, Some(Err(_)))
            || (self.done.is_some() && self.ack.is_some())
    }

    /// The recovery time (ns) when this client got exactly what it missed; else why not.
    pub(crate) fn verdict(&self) -> Result<u64, String> {
        if let Some(b) = &self.bad {
            return Err(b.clone());
        }
        match (&self.ack, self.done) {
            (Some(Ok(_)), Some(d)) => Ok((d - self.sent).as_nanos() as u64),
            (Some(Err(r)), _) => Err(format!("not recovered: {r}")),
            (None, _) => Err("no ack to the recovering subscribe".into()),
            (Some(Ok(_)), None) => Err(if self.ended {
                "ended before the top offset".into()
            } else {
                "the top offset did not arrive before --timeout".into()
            }),
        }
    }

    fn envelope(&mut self, e: &envelope::Envelope<'_>, now: Instant) {
        let Some(o) = e.offset else {
            self.bad
                .get_or_insert("a replayed envelope without an offset".into());
            return;
        };
        if self.bad.is_some() {
            return;
        }
        if o != self.next {
            self.bad = Some(if self.done.is_some() {
                format!("offset {o} after the top offset {}", self.top)
            } else if o > self.next {
                "a gap in the replayed offsets".into()
            } else {
                "a duplicate or reordered offset in the replay".into()
            });
            return;
        }
        // The message at offset last + k was published as sequence k - 1.
        let want = o - self.last - 1;
        if payload::decode(e.payload).map(|s| s.seq) != Some(want) {
            self.bad = Some("a replayed payload is not the message published at its offset".into());
            return;
        }
        self.next += 1;
        if o == self.top {
            self.done = Some(now);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Replay {
    pub(crate) clients: Vec<ReplayClient>,
    pub(crate) v2: bool,
    pub(crate) topic: Vec<u8>,
    /// Clients not finished yet (`usize::MAX`: the grace, never finished).
    pub(crate) unfinished: usize,
    pub(crate) replayed: u64,
}

impl Handler for Replay {
    fn message(&mut self, i: usize, text: bool, payload: &[u8], now: Instant) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let was = c.finished();
        if let Some(e) = envelope::parse(text, self.v2, payload) {
            let mut buf = [0u8; 256];
            let topic = match e.topic_escaped {
                false => Some(e.topic),
                true => envelope::unescape(e.topic, &mut buf).map(|n| &buf[..n]),
            };
            if topic == Some(&self.topic[..]) {
                self.replayed += 1;
                c.envelope(&e, now);
            }
        } else {
            match reply(payload) {
                Reply::Ack {
                    id: 2,
                    recovered,
                    reason,
                    offset,
                    ..
                } => {
                    if c.ack.is_some() {
                        c.bad.get_or_insert("a second ack".into());
                    } else if recovered == Some(true) {
                        if offset != Some(c.top) {
                            c.bad.get_or_insert(format!(
                                "recovered at offset {offset:?}, not the top {}",
                                c.top
                            ));
                        }
                        c.ack = Some(Ok(offset.unwrap_or(0)));
                    } else {
                        c.ack = Some(Err(reason.unwrap_or_else(|| "no reason".into())));
                    }
                }
                Reply::Error(code) => {
                    c.bad.get_or_insert(format!("error {code}"));
                }
                _ => {}
            }
        }
        if !was && c.finished() {
            self.unfinished = self.unfinished.saturating_sub(1);
        }
    }

    fn ended(&mut self, i: usize, _why: &str) {
        if let Some(c) = self.clients.get_mut(i) {
            let was = c.finished();
            c.ended = true;
            if !was {
                self.unfinished = self.unfinished.saturating_sub(1);
            }
        }
    }

    fn finished(&self) -> bool {
        self.unfinished == 0
    }
}

/// A mux reply that is not a message envelope.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Ack {
        id: i64,
        epoch: Option<String>,
        offset: Option<u64>,
        recovered: Option<bool>,
        reason: Option<String>,
    },
    Error(String),
    Other,
}

/// Reads an ack or an error (serde: a few per client, not the hot path).
pub(crate) fn reply(payload: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return Reply::Other;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("ack") => Reply::Ack {
            id: v.get("id").and_then(Value::as_i64).unwrap_or(-1),
            epoch: v.get("epoch").and_then(Value::as_str).map(str::to_string),
            offset: v.get("offset").and_then(Value::as_u64),
            recovered: v.get("recovered").and_then(Value::as_bool),
            reason: v.get("reason").and_then(Value::as_str).map(str::to_string),
        },
        Some("error") => Reply::Error(
            v.get("code")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
        ),
        _ => Reply::Other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::http_req::message;

    fn text_env(offset: u64, seq: u64) -> Vec<u8> {
        let mut t =
            format!(r#"{{"type":"message","topic":"r","offset":{offset},"data":""#).into_bytes();
        t.extend_from_slice(&message(64, seq));
        t.extend_from_slice(b"\"}");
        t
    }

    fn ack(offset: u64, recovered: bool) -> Vec<u8> {
        format!(
            r#"{{"type":"ack","id":2,"op":"subscribe","topic":"r","epoch":"k3X9aQ2b","offset":{offset},"recovered":{recovered}{}}}"#,
            if recovered { "" } else { r#","reason":"too_old""# }
        )
        .into_bytes()
    }

    fn replay(last: u64, missed: u64) -> Replay {
        Replay {
            clients: vec![ReplayClient::new(last, missed)],
            v2: false,
            topic: b"r".to_vec(),
            unfinished: 1,
            replayed: 0,
        }
    }

    #[test]
    fn exact_replay_is_accepted() {
        let mut r = replay(40, 3);
        let now = Instant::now();
        r.message(0, true, &ack(43, true), now);
        for (k, off) in (41..=43).enumerate() {
            assert!(!r.finished());
            r.message(0, true, &text_env(off, k as u64), now);
        }
        assert!(r.finished());
        assert_eq!(r.replayed, 3);
        assert!(r.clients[0].verdict().is_ok());
        // One more after the top fails it.
        r.message(0, true, &text_env(43, 2), now);
        assert!(
            r.clients[0]
                .verdict()
                .unwrap_err()
                .contains("after the top")
        );
    }

    #[test]
    fn gap_duplicate_payload_and_refusal_fail() {
        let now = Instant::now();
        let mut r = replay(40, 3);
        r.message(0, true, &text_env(41, 0), now);
        r.message(0, true, &text_env(43, 2), now);
        assert!(r.finished(), "a failed client is finished");
        assert!(r.clients[0].verdict().unwrap_err().contains("gap"));

        let mut r = replay(40, 3);
        r.message(0, true, &text_env(41, 0), now);
        r.message(0, true, &text_env(41, 0), now);
        assert!(r.clients[0].verdict().unwrap_err().contains("duplicate"));

        let mut r = replay(40, 3);
        r.message(0, true, &text_env(41, 7), now);
        assert!(r.clients[0].verdict().unwrap_err().contains("payload"));

        let mut r = replay(40, 3);
        r.message(0, true, &ack(43, false), now);
        assert!(
            r.finished(),
            "nothing is replayed to a client that is not recovered"
        );
        assert_eq!(
            r.clients[0].verdict().unwrap_err(),
            "not recovered: too_old"
        );

        let mut r = replay(40, 3);
        r.message(0, true, &ack(44, true), now);
        assert!(
            r.clients[0]
                .verdict()
                .unwrap_err()
                .contains("not the top 43")
        );

        // Messages of another topic are not this replay's.
        let mut r = replay(40, 1);
        r.message(
            0,
            true,
            br#"{"type":"message","topic":"x","offset":41,"data":"rc"}"#,
            now,
        );
        assert_eq!(r.replayed, 0);
        r.ended(0, "eof");
        assert!(r.finished());
        assert_eq!(
            r.clients[0].verdict().unwrap_err(),
            "no ack to the recovering subscribe"
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply(&ack(43, false)),
            Reply::Ack {
                id: 2,
                epoch: Some("k3X9aQ2b".into()),
                offset: Some(43),
                recovered: Some(false),
                reason: Some("too_old".into()),
            }
        );
        assert_eq!(
            reply(br#"{"type":"error","id":1,"code":"bad_message","message":"m"}"#),
            Reply::Error("bad_message".into())
        );
        assert_eq!(reply(b"nope"), Reply::Other);
    }
}
