//! `recover`: history recovery under a reconnect storm, against ringcast's mux
//! mode. Order of events, each phase bounded by `--timeout`:
//! 1. one message is published over HTTP (so the topic's history has started: an epoch);
//! 2. N clients connect and subscribe; each ack gives (epoch, offset);
//! 3. one more message is published: each client must receive it with offset ack + 1,
//!    which is where it will recover from (`last`);
//! 4. all clients close at once; M messages are published over HTTP (batch publish);
//! 5. N clients connect again, and once all are connected each sends
//!    `subscribe` with `recover: {epoch, last}` in one tight loop;
//! 6. per client: the time from writing that subscribe to receiving the message with
//!    offset `last + M` (p50/p99/max), and whether it got exactly `last+1 ..= last+M`,
//!    in order, each with the payload published as it, an ack with `recovered: true`,
//!    and nothing more (for a short grace after the last client is done).
//!
//! A client that misses, repeats or reorders anything, or is not recovered, fails the run
//! (exit status 2); a setup problem (nothing connects, publishing refused, no epoch in
//! the acks: no history on the topic) is an error (exit status 1). What each client checks
//! in each phase is in [`crate::recover_phases`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::cli::RecoverArgs;
use crate::connect::{ConnectOpts, ConnectStats, Established, connect_many};
use crate::envelope;
use crate::http_req::message;
use crate::mux_client::MuxSet;
use crate::recover_phases::{FirstPhase, Replay, ReplayClient, Stage};
use crate::report::{ConnectReport, us, write_json};
use crate::scrape;
use crate::stats::{Percentiles, new_hist};
use crate::target::{Scheme, Target};

/// Sequence numbers of the two messages published before the clients leave (the missed
/// ones are 0..M, so the message at offset `last + k` carries sequence `k - 1`).
const PRIME_SEQ: u64 = 1 << 40;
const LIVE_SEQ: u64 = PRIME_SEQ + 1;
/// How long to keep reading after the last client is done, for anything extra.
const GRACE: Duration = Duration::from_millis(200);

/// The result of `recover`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoverReport {
    /// The topic.
    pub topic: String,
    /// Clients asked for.
    pub clients: u64,
    /// Messages published while they were away.
    pub missed: u64,
    /// The topic's epoch (from the first acks).
    pub epoch: String,
    /// Clients that connected, subscribed and saw the live message the first time.
    pub ready: u64,
    /// Of those, clients that connected again.
    pub reconnected: u64,
    /// Acks with `"recovered": true`.
    pub recovered: u64,
    /// Acks with `"recovered": false`, by reason.
    pub not_recovered: BTreeMap<String, u64>,
    /// Clients that got exactly offsets last+1..=last+missed (the goal: all of them).
    pub exact: u64,
    /// Why the others did not (the first problem of each) -> count.
    pub failures: BTreeMap<String, u64>,
    /// The offset every client recovered from (min and max over clients; equal normally).
    pub last_offset_min: u64,
    /// See `last_offset_min`.
    pub last_offset_max: u64,
    /// Replayed messages received over all clients.
    pub replayed: u64,
    /// Per client: from writing the recovering subscribe to the message with the top offset.
    pub recovery_us: Percentiles,
    /// From the first recovering subscribe to the last client done (ms).
    pub replay_wall_ms: f64,
    /// Publishing the missed messages (s).
    pub publish_s: f64,
    /// The first connections.
    pub connect: ConnectReport,
    /// The reconnections.
    pub reconnect: ConnectReport,
    /// Things worth knowing.
    pub notes: Vec<String>,
    /// Why this run fails (exit status 2), null when every client recovered exactly.
    pub failure: Option<String>,
}

impl RecoverReport {
    /// The human summary (stdout).
    pub fn summary(&self) -> String {
        let p = &self.recovery_us;
        let mut s = format!(
            "recover: {} clients on {:?} (epoch {}), {} missed: {} exact, {} recovered, replayed {}\n",
            self.clients,
            self.topic,
            self.epoch,
            self.missed,
            self.exact,
            self.recovered,
            self.replayed
        );
        s += &format!(
            "recovery time (subscribe -> last replayed message): p50 {}  p90 {}  p99 {}  max {}  all done in {:.1} ms\n",
            us(p.p50),
            us(p.p90),
            us(p.p99),
            us(p.max),
            self.replay_wall_ms
        );
        s += &format!(
            "publish of the missed messages: {:.1} ms  connect: {} ok ({} failed), reconnect: {} ok ({} failed), p99 {}\n",
            self.publish_s * 1e3,
            self.connect.ok,
            self.connect.failed,
            self.reconnect.ok,
            self.reconnect.failed,
            us(self.reconnect.p99_us)
        );
        if !self.not_recovered.is_empty() {
            s += &format!("not recovered: {:?}\n", self.not_recovered);
        }
        for (why, n) in &self.failures {
            s += &format!("  {n} x {why}\n");
        }
        if let Some(f) = &self.failure {
            s += &format!("RECOVERY CHECK FAILED: {f}\n");
        }
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s
    }
}

/// Runs `recover`.
pub fn recover(args: &RecoverArgs) -> Result<RecoverReport, String> {
    args.validate()?;
    let allow_remote = args.connect.allow_remote;
    let ws = Target::parse(&args.url, allow_remote)?;
    if ws.scheme != Scheme::Ws || !envelope::is_mux_url(&args.url) {
        return Err("--url must be ringcast's mux endpoint, ws://HOST:PORT/ws[?...]".into());
    }
    let v2 = envelope::is_v2_url(&args.url);
    let publish_url = args
        .publish_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/publish", ws.host_header));
    let http = Target::parse(&publish_url, allow_remote)?;
    if http.scheme != Scheme::Http {
        return Err("--publish-url must be an http:// URL".into());
    }
    let mut notes = Vec::new();
    let needed = (args.clients + 64) as u64;
    match crate::sys::raise_nofile_limit() {
        Ok((soft, _)) if soft < needed => {
            return Err(format!(
                "the open-file limit is {soft}, below the {needed} descriptors this run needs"
            ));
        }
        Ok(_) => {}
        Err(e) => notes.push(format!("could not raise RLIMIT_NOFILE: {e}")),
    }
    let publisher = Publisher {
        target: &http,
        path: http.path_for(0),
        headers: &args.headers,
        topic: &args.topic,
        size: args.size,
        timeout: args.timeout,
    };
    let topic_json = serde_json::to_string(&args.topic).map_err(|e| e.to_string())?;
    let mut report = RecoverReport {
        topic: args.topic.clone(),
        clients: args.clients as u64,
        missed: args.missed,
        ..RecoverReport::default()
    };

    // 1-3: subscribe, learn (epoch, last).
    publisher.publish(PRIME_SEQ..PRIME_SEQ + 1)?;
    let (mut first, cstats) = connect(&ws, args, args.clients)?;
    report.connect = ConnectReport::of(&cstats);
    if first.is_empty() {
        return Err(format!(
            "no client could connect to {}: {}",
            args.url,
            cstats.top_reason().unwrap_or("unknown reason")
        ));
    }
    let mut fp = FirstPhase::new(first.len(), v2);
    let subscribe = format!(r#"{{"type":"subscribe","topic":{topic_json},"id":1}}"#);
    for i in 0..first.len() {
        first.send_text(i, subscribe.as_bytes());
    }
    let deadline = Instant::now() + args.timeout;
    fp.stage = Stage::Acks;
    first.pump(&mut fp, deadline).map_err(|e| e.to_string())?;
    let epoch = fp.epoch()?;
    publisher.publish(LIVE_SEQ..LIVE_SEQ + 1)?;
    fp.stage = Stage::Live;
    first.pump(&mut fp, deadline).map_err(|e| e.to_string())?;
    first.close_all();
    drop(first);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut ready = Vec::new();
    for (i, c) in fp.clients.iter().enumerate() {
        match (&c.bad, c.last, &c.epoch) {
            (None, Some(last), Some(e)) if *e == epoch => ready.push((i, last)),
            (None, Some(_), Some(e)) => {
                *failures
                    .entry(format!("first subscribe: epoch {e}, not {epoch}"))
                    .or_insert(0) += 1
            }
            (Some(b), _, _) => *failures.entry(format!("first subscribe: {b}")).or_insert(0) += 1,
            (None, _, _) => {
                *failures
                    .entry("first subscribe: no ack or no live message before --timeout".into())
                    .or_insert(0) += 1
            }
        }
    }
    if cstats.failed > 0 {
        *failures
            .entry("could not connect the first time".into())
            .or_insert(0) += cstats.failed;
    }
    report.epoch = epoch.clone();
    report.ready = ready.len() as u64;
    report.last_offset_min = ready.iter().map(|r| r.1).min().unwrap_or(0);
    report.last_offset_max = ready.iter().map(|r| r.1).max().unwrap_or(0);

    // 4: the missed messages.
    let t = Instant::now();
    publisher.publish(0..args.missed)?;
    report.publish_s = t.elapsed().as_secs_f64();

    // 5-6: reconnect, recover, replay.
    let (mut second, rstats) = connect(&ws, args, ready.len())?;
    report.reconnect = ConnectReport::of(&rstats);
    report.reconnected = second.len() as u64;
    if rstats.failed > 0 {
        *failures
            .entry("could not connect again".into())
            .or_insert(0) += rstats.failed;
    }
    // Connection j of the second set is the j-th established one; it recovers as ready[j].
    let mut rp = Replay {
        clients: ready
            .iter()
            .take(second.len())
            .map(|&(_, last)| ReplayClient::new(last, args.missed))
            .collect(),
        v2,
        topic: args.topic.as_bytes().to_vec(),
        unfinished: second.len(),
        replayed: 0,
    };
    let start = Instant::now();
    for (j, c) in rp.clients.iter_mut().enumerate() {
        let cmd = format!(
            r#"{{"type":"subscribe","topic":{topic_json},"id":2,"recover":{{"epoch":"{epoch}","offset":{}}}}}"#,
            c.last
        );
        c.sent = Instant::now();
        second.send_text(j, cmd.as_bytes());
    }
    let in_time = second
        .pump(&mut rp, start + args.timeout)
        .map_err(|e| e.to_string())?;
    let done_at = rp.clients.iter().filter_map(|c| c.done).max();
    // Anything more (a duplicate past the top) shows up in this grace.
    rp.unfinished = usize::MAX;
    let _ = second.pump(&mut rp, Instant::now() + GRACE);
    second.close_all();
    if !in_time {
        notes.push(format!(
            "the replay did not finish within --timeout ({:?})",
            args.timeout
        ));
    }
    let mut hist = new_hist();
    for c in &rp.clients {
        match &c.ack {
            Some(Ok(_)) => report.recovered += 1,
            Some(Err(reason)) => *report.not_recovered.entry(reason.clone()).or_insert(0) += 1,
            None => {}
        }
        match c.verdict() {
            Ok(ns) => {
                report.exact += 1;
                hist.saturating_record(ns.max(1));
            }
            Err(why) => *failures.entry(why).or_insert(0) += 1,
        }
    }
    report.replayed = rp.replayed;
    report.recovery_us = Percentiles::of(&hist);
    report.replay_wall_ms = done_at.map_or(0.0, |d| (d - start).as_secs_f64() * 1e3);
    if report.exact < report.clients {
        report.failure = Some(format!(
            "{} of {} clients did not recover exactly the offsets they missed",
            report.clients - report.exact,
            report.clients
        ));
    }
    report.failures = failures;
    report.notes = notes;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

/// Opens `n` mux connections (all at once unless `--connect-rate`).
fn connect(ws: &Target, args: &RecoverArgs, n: usize) -> Result<(MuxSet, ConnectStats), String> {
    let mut set = MuxSet::new().map_err(|e| format!("poll: {e}"))?;
    let opts = ConnectOpts {
        rate: args.connect.connect_rate.unwrap_or(0),
        concurrency: args.connect.concurrency,
        timeout: args.connect.connect_timeout,
        sources: args.connect.sources.clone(),
        deadline: Some(Instant::now() + args.timeout.max(Duration::from_secs(10))),
        tokens: None,
    };
    let path = ws.path_for(0);
    let mut err = None;
    let stats = connect_many(
        ws,
        n,
        &|_| path.clone(),
        &opts,
        &mut |e: Established| {
            if let Err(e) = set.add(e) {
                err.get_or_insert(e);
            }
        },
        None,
    )
    .map_err(|e| format!("connecting: {e}"))?;
    if let Some(e) = err {
        return Err(format!("registering a connection: {e}"));
    }
    Ok((set, stats))
}

/// Publishes over ringcast's batch publish (`POST /publish`, a JSON array).
struct Publisher<'a> {
    target: &'a Target,
    path: String,
    headers: &'a [String],
    topic: &'a str,
    size: usize,
    timeout: Duration,
}

impl Publisher<'_> {
    /// Publishes the messages with these sequence numbers, in order, in batches of at most
    /// 1,000 items and about 3 MiB (under ringcast's default batch limits).
    fn publish(&self, seqs: std::ops::Range<u64>) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let topic_json = serde_json::to_string(self.topic).map_err(|e| e.to_string())?;
        let per = ((3 << 20) / (self.size + topic_json.len() + 24)).clamp(1, 1000) as u64;
        let mut seq = seqs.start;
        while seq < seqs.end {
            let end = (seq + per).min(seqs.end);
            let body = batch(&topic_json, self.size, seq..end);
            let answer = scrape::post(
                self.target,
                &self.path,
                self.headers,
                "application/json",
                &body,
                deadline,
            )
            .map_err(|e| format!("publishing to {}: {e}", self.path))?;
            check_batch_answer(&answer, end - seq)?;
            seq = end;
        }
        Ok(())
    }
}

/// `[{"topic":T,"data":"<message(size, seq)>"},...]`.
fn batch(topic_json: &str, size: usize, seqs: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity((seqs.end - seqs.start) as usize * (size + 40) + 2);
    out.push(b'[');
    for seq in seqs {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"topic\":");
        out.extend_from_slice(topic_json.as_bytes());
        out.extend_from_slice(b",\"data\":\"");
        out.extend_from_slice(&message(size, seq));
        out.extend_from_slice(b"\"}");
    }
    out.push(b']');
    out
}

/// Every item of a batch answer must be published: `{"results":[{"queued":N},...]}`.
fn check_batch_answer(answer: &str, items: u64) -> Result<(), String> {
    let v: Value = serde_json::from_str(answer).map_err(|e| format!("batch answer: {e}"))?;
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("batch answer without results: {answer:.200}"))?;
    if results.len() as u64 != items {
        return Err(format!(
            "batch answer has {} results for {items} items",
            results.len()
        ));
    }
    if let Some(bad) = results.iter().find(|r| r.get("queued").is_none()) {
        return Err(format!("a publish was refused: {bad}"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::payload;

    #[test]
    fn batches_and_answers() {
        let b = batch("\"t\"", 64, 5..7);
        let v: Value = serde_json::from_slice(&b).unwrap();
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), 2);
        let data = items[1]["data"].as_str().unwrap();
        assert_eq!(payload::decode(data.as_bytes()).unwrap().seq, 6);
        check_batch_answer(r#"{"results":[{"queued":1},{"queued":0}]}"#, 2).unwrap();
        assert!(check_batch_answer(r#"{"results":[{"queued":1}]}"#, 2).is_err());
        assert!(check_batch_answer(r#"{"results":[{"index":0,"error":"bad_topic"}]}"#, 1).is_err());
        assert!(check_batch_answer("<html>", 1).is_err());
    }
}
