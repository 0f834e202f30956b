//! One `run --pub-http` publisher's requests and the HTTP/1.1 connection they travel on.
//!
//! It owns what the publisher thread must never lose track of: every message it produced is
//! either answered, retried on a new connection, or counted as failed, whatever the server
//! does with the connection (keep-alive and pipelining, `Connection: close` after every
//! answer, a request limit per connection, an idle timeout, an error status that closes).
//!
//! - Messages wait in `waiting` (stamped with their sequence number and production time)
//!   until the connection may take them; `sent` holds those on the current connection, in
//!   order, with where each one's bytes end in the connection's stream.
//! - A new connection carries one request until an answer proves keep-alive (no
//!   `Connection: close`); then up to the pipeline depth. After a server-ended connection
//!   the number of answers it gave is remembered as the server's budget per connection, and
//!   no more than that is put in flight on the next ones (a server that closes with
//!   requests unread may reset the connection, and the answers in flight with it).
//! - When the connection ends: the requests after an answer that said `Connection: close`
//!   were not processed (RFC 9112, 9.6), nor were those not completely written: they go
//!   back to the front of `waiting`, in order, and are sent again (`retried`). A request
//!   written whole and never answered may or may not have been published: it is not sent
//!   twice, it is counted as failed (and in `errors`), and the subscribers' loss count shows
//!   whether it arrived.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::BytesMut;

use crate::http_in::HttpIn;
use crate::publish::PubStats;

/// One produced message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Req {
    /// Its sequence number (the payload stamp).
    pub seq: u64,
    /// When it was produced (the payload stamp; a retry keeps it, so latency includes the retry).
    pub sent_ns: u64,
    /// Where its bytes end in the current connection's stream (0 while waiting).
    end: u64,
}

/// A publisher's requests and the state of its current connection.
#[derive(Debug)]
pub struct HttpLink {
    waiting: VecDeque<Req>,
    sent: VecDeque<Req>,
    queued: u64,
    written: u64,
    answers: HttpIn,
    answered_here: u64,
    proven: bool,
    budget: Option<u64>,
    closing: bool,
    /// The connect of the current connection is in progress.
    pub connecting: bool,
}

impl Default for HttpLink {
    fn default() -> Self {
        HttpLink::new()
    }
}

impl HttpLink {
    /// No request yet, no connection state.
    pub fn new() -> HttpLink {
        HttpLink {
            waiting: VecDeque::new(),
            sent: VecDeque::new(),
            queued: 0,
            written: 0,
            answers: HttpIn::new(16 * 1024),
            answered_here: 0,
            proven: false,
            budget: None,
            closing: false,
            connecting: false,
        }
    }

    /// Messages produced and not answered yet (waiting or on the connection).
    pub fn pending(&self) -> u64 {
        (self.waiting.len() + self.sent.len()) as u64
    }

    /// A new message to send.
    pub fn push(&mut self, seq: u64, sent_ns: u64) {
        self.waiting.push_back(Req {
            seq,
            sent_ns,
            end: 0,
        });
    }

    /// How many requests the connection may carry at once now.
    fn depth(&self, max: u64) -> u64 {
        if self.closing || self.connecting {
            return 0;
        }
        let d = if self.proven { max.max(1) } else { 1 };
        match self.budget {
            Some(b) => d.min(b.saturating_sub(self.answered_here).max(1)),
            None => d,
        }
    }

    /// Moves waiting messages onto the connection while it may take more (at most `max` in
    /// flight): `build(out, seq, sent_ns)` appends one request's bytes to `out`.
    pub fn fill(
        &mut self,
        max: u64,
        out: &mut BytesMut,
        mut build: impl FnMut(&mut BytesMut, u64, u64),
    ) {
        let d = self.depth(max);
        while (self.sent.len() as u64) < d {
            let Some(mut r) = self.waiting.pop_front() else {
                break;
            };
            let before = out.len();
            build(out, r.seq, r.sent_ns);
            self.queued += (out.len() - before) as u64;
            r.end = self.queued;
            self.sent.push_back(r);
        }
    }

    /// `n` bytes of the queued requests were written to the socket.
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// Room to read answers into.
    pub fn input(&mut self) -> &mut [u8] {
        self.answers.spare()
    }

    /// `n` bytes were read into [`HttpLink::input`]: counts the complete answers.
    /// Returns false when the connection is over (an answer said close, or was unreadable).
    pub fn filled(&mut self, n: usize, stats: &PubStats) -> bool {
        self.answers.filled(n);
        loop {
            match self.answers.next_answer() {
                Ok(Some(a)) => {
                    if !self.answered(a.status, a.close, stats) {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }

    /// The server closed its side: an answer that runs to the close is counted.
    pub fn eof(&mut self, stats: &PubStats) {
        match self.answers.at_eof() {
            Ok(Some(a)) => {
                self.answered(a.status, a.close, stats);
            }
            Ok(None) => {}
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One answer, for the oldest request on the connection. False: the server closes now.
    fn answered(&mut self, status: u16, close: bool, stats: &PubStats) -> bool {
        if self.sent.pop_front().is_none() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        stats.http_responses.fetch_add(1, Ordering::Relaxed);
        if !(200..300).contains(&status) {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.answered_here += 1;
        if close {
            self.closing = true;
            self.budget = Some(self.answered_here);
            return false;
        }
        self.proven = true;
        if self.budget.is_some_and(|b| self.answered_here >= b) {
            // The server takes more than it did last time: no known limit any more.
            self.budget = None;
        }
        true
    }

    /// The connection is over (whoever ended it): what it carried unanswered is sent again
    /// when the server cannot have processed it, else counted as failed; the next
    /// connection starts from a clean state.
    pub fn ended(&mut self, stats: &PubStats) {
        let mut retry = Vec::new();
        let mut failed = 0u64;
        for r in self.sent.drain(..) {
            if self.closing || r.end > self.written {
                retry.push(r);
            } else {
                failed += 1;
            }
        }
        if failed > 0 && !self.closing {
            // Closed under requests it had whole: at most what it answered, it seems.
            self.budget = Some(self.answered_here.max(1));
        }
        for r in retry.iter().rev() {
            self.waiting.push_front(*r);
        }
        stats
            .http_retried
            .fetch_add(retry.len() as u64, Ordering::Relaxed);
        stats.http_failed.fetch_add(failed, Ordering::Relaxed);
        stats.errors.fetch_add(failed, Ordering::Relaxed);
        self.queued = 0;
        self.written = 0;
        self.answers.reset();
        self.answered_here = 0;
        self.proven = false;
        self.closing = false;
        self.connecting = false;
    }

    /// The run is over: whatever is still unanswered failed.
    pub fn abandon(&mut self, stats: &PubStats) {
        let n = self.pending();
        self.waiting.clear();
        self.sent.clear();
        stats.http_failed.fetch_add(n, Ordering::Relaxed);
        stats.errors.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn build(out: &mut BytesMut, seq: u64, _ns: u64) {
        out.extend_from_slice(format!("req{seq:04}").as_bytes());
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    fn feed(l: &mut HttpLink, bytes: &[u8], stats: &PubStats) -> bool {
        let room = l.input();
        room[..bytes.len()].copy_from_slice(bytes);
        l.filled(bytes.len(), stats)
    }

    fn seqs(q: &VecDeque<Req>) -> Vec<u64> {
        q.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn one_request_until_keepalive_is_proven_then_the_pipeline() {
        let stats = PubStats::new(1);
        let mut l = HttpLink::new();
        let mut out = BytesMut::new();
        for s in 0..10 {
            l.push(s, 0);
        }
        l.fill(4, &mut out, build);
        assert_eq!(seqs(&l.sent), [0], "one request on a new connection");
        l.wrote(out.len());
        assert!(feed(&mut l, OK, &stats));
        l.fill(4, &mut out, build);
        assert_eq!(seqs(&l.sent), [1, 2, 3, 4]);
        assert_eq!(l.pending(), 9);
    }

    #[test]
    fn after_connection_close_the_rest_is_retried_in_order() {
        let stats = PubStats::new(1);
        let mut l = HttpLink::new();
        let mut out = BytesMut::new();
        for s in 0..6 {
            l.push(s, s * 10);
        }
        l.fill(8, &mut out, build);
        l.wrote(out.len());
        assert!(feed(&mut l, OK, &stats));
        out.clear();
        l.fill(8, &mut out, build);
        l.wrote(out.len());
        // The server answers 1 and 2, the second with close: 3, 4, 5 were not processed.
        let two = [OK, OK_CLOSE].concat();
        assert!(!feed(&mut l, &two, &stats));
        l.ended(&stats);
        assert_eq!(seqs(&l.waiting), [3, 4, 5]);
        assert_eq!(l.waiting[0].sent_ns, 30, "a retry keeps its stamp");
        assert_eq!(stats.http_retried.load(Ordering::Relaxed), 3);
        assert_eq!(stats.http_failed.load(Ordering::Relaxed), 0);
        assert_eq!(stats.http_responses.load(Ordering::Relaxed), 3);
        // The next connection carries at most the 3 answers the last one gave.
        out.clear();
        l.fill(8, &mut out, build);
        assert_eq!(seqs(&l.sent), [3]);
        l.wrote(out.len());
        assert!(feed(&mut l, OK, &stats));
        l.fill(8, &mut out, build);
        assert_eq!(seqs(&l.sent), [4, 5]);
    }

    #[test]
    fn closing_after_every_answer_sends_one_at_a_time() {
        let stats = PubStats::new(1);
        let mut l = HttpLink::new();
        let mut out = BytesMut::new();
        for s in 0..5 {
            l.push(s, 0);
        }
        for s in 0..5 {
            out.clear();
            l.fill(256, &mut out, build);
            assert_eq!(seqs(&l.sent), [s]);
            l.wrote(out.len());
            assert!(!feed(&mut l, OK_CLOSE, &stats));
            l.ended(&stats);
        }
        assert_eq!(l.pending(), 0);
        assert_eq!(stats.http_responses.load(Ordering::Relaxed), 5);
        assert_eq!(stats.http_retried.load(Ordering::Relaxed), 0);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_plain_close_fails_what_was_written_and_retries_the_rest() {
        let stats = PubStats::new(1);
        let mut l = HttpLink::new();
        let mut out = BytesMut::new();
        for s in 0..4 {
            l.push(s, 0);
        }
        l.fill(4, &mut out, build);
        l.wrote(out.len());
        assert!(feed(&mut l, OK, &stats));
        out.clear();
        l.fill(4, &mut out, build);
        // Requests 1 and 2 written whole, 3 half: then EOF without an answer.
        l.wrote(2 * 7 + 3);
        l.eof(&stats);
        l.ended(&stats);
        assert_eq!(seqs(&l.waiting), [3]);
        assert_eq!(stats.http_failed.load(Ordering::Relaxed), 2);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 2);
        assert_eq!(stats.http_retried.load(Ordering::Relaxed), 1);
        l.abandon(&stats);
        assert_eq!(stats.http_failed.load(Ordering::Relaxed), 3);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn error_statuses_count_and_an_answer_without_a_request_ends_the_connection() {
        let stats = PubStats::new(1);
        let mut l = HttpLink::new();
        let mut out = BytesMut::new();
        l.push(0, 0);
        l.fill(4, &mut out, build);
        l.wrote(out.len());
        let refusal =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert!(!feed(&mut l, refusal, &stats));
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        l.ended(&stats);
        assert!(!feed(&mut l, OK, &stats), "nothing was asked");
        assert_eq!(stats.errors.load(Ordering::Relaxed), 2);
    }
}
