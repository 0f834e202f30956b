//! The publication history of the topics a shard is the *home* of: dense offsets, epochs,
//! bounded rings of framed publications, and recovery by (epoch, offset).
//!
//! # What it owns
//!
//! [`Histories`] is a pure data structure (no clock, no random source, no I/O of its own:
//! time is a `now: Instant` parameter, the epoch generator is injected). Per topic it keeps:
//!
//! - the **epoch**, a short random string ([`Epoch`], 8 base62 characters) naming one
//!   unbroken sequence of offsets;
//! - the **next offset**: the first publication of an epoch gets offset 1, each one +1,
//!   never reused within the epoch; `top` is the offset of the latest one (0: none yet),
//!   so a client that saw nothing of an epoch asks from offset 0;
//! - a **ring** of the latest publications, `(offset, frame)`, always a contiguous suffix
//!   `top - len + 1 ..= top` of the offsets (eviction only takes the oldest);
//! - its [`HistoryOptions`] (`size`: most publications kept, 0 = history off: offsets
//!   still advance; `ttl`: idle time after which the history is dropped, zero = none) and
//!   the time of its last publication.
//!
//! It does not own topic names, the bus, the envelopes or the recovery protocol: the home
//! shard calls it with the ids it already has.
//!
//! # Why framed `Bytes`
//!
//! A stored publication is a complete server frame, exactly what a live subscriber got,
//! so a recovery queues it as it is (simple mode) or wraps it once per replay (mux mode).
//! The store keeps whatever `Bytes` it is given and counts `frame.len() + ENTRY_OVERHEAD`
//! per publication against the shard's byte budget ([`ENTRY_OVERHEAD`]: the ring entry
//! itself plus slack for the ring's spare capacity).
//!
//! A slice keeps its whole allocation alive, and the accounting counts slices, not
//! allocations. So the home shard does not hand it slices of the batch buffers (carved out
//! of reused, growing allocations shared by many topics' batches, where one quiet topic's
//! 60-byte publication could pin 128 KiB): it copies the frames a batch leaves in the
//! history once, per batch, into one allocation of exactly their size ([`super::home`]).
//! What a history holds is then what it counts, within one partly evicted batch copy per
//! topic.
//!
//! # Eviction order
//!
//! 1. **Size**: an append past `size` drops that topic's oldest ([`Stats::evicted_by_size`]).
//! 2. **Memory**: after an append, while the shard's histories weigh more than the budget,
//!    the oldest publication of the *largest* history (by bytes, ties: the highest internal
//!    slot) goes ([`Stats::evicted_by_memory`]). The histories are indexed by
//!    `(bytes, slot)` in a `BTreeSet`, so one eviction is O(log topics), never a scan.
//!    This may drop the publication just appended (a frame heavier than the budget).
//! 3. **TTL**: a topic idle (no publication) for `ttl` or more loses its history and its
//!    state ([`Stats::expired_by_ttl`] counts the publications): [`Histories::expire`]
//!    drops at most [`EXPIRE_PER_CALL`] such topics per call, in deadline order (a
//!    `BTreeSet` of `(deadline, slot)`), and reports each key so the caller can drop the
//!    topic; a topic met by another call before `expire` got to it is renewed on the spot,
//!    so an expired history is never served.
//!
//! # Epoch rules
//!
//! The epoch changes exactly when this structure can no longer vouch for the sequence:
//! a topic's state is created (first use, after [`Histories::remove`], after expiry) with a
//! fresh epoch and offsets from 1; a restart of the server forgets everything (new epochs
//! too). Eviction by size or memory does **not** change the epoch: offsets stay dense and
//! `top` stays true, only the oldest are gone, and a recovery asking for a gone offset gets
//! [`Lost::TooOld`], never a silent gap. Two epochs collide with probability 62^-8 per
//! renewal (a renewal in place draws again if it meets the epoch it replaces).
//!
//! # Complexity (n = topics with state, m = publications returned)
//!
//! | operation | cost |
//! |---|---|
//! | [`Histories::append`] | O(log n) + O(log n) per eviction |
//! | [`Histories::since`], [`Histories::last`], [`Histories::page`] | O(1) hash + O(m) (+ a renewal's cost when the topic expired) |
//! | [`Histories::open`] | O(1) hash (+ O(log n) when created or renewed) |
//! | [`Histories::expire`] | O(log n + kept publications) per expired topic, at most [`EXPIRE_PER_CALL`] topics |
//! | [`Histories::remove`] | O(log n + its publications) |

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Bookkeeping charged per stored publication on top of its frame's length: the ring
/// entry (`size_of::<Entry>()`, 40 bytes on 64-bit: the offset and the `Bytes` handle)
/// plus slack for the ring's spare capacity (a `VecDeque` grows by doubling).
pub const ENTRY_OVERHEAD: usize = 64;

/// Bookkeeping charged per topic with state (an epoch) against the same budget: the
/// per-topic record, its index entries and its share of the topic table. So a flood of
/// distinct topics (each subscribe to a topic with history creates its state) is bounded
/// by the budget too, not only by the TTL ([`Histories::shed`]).
pub const STATE_OVERHEAD: usize = 192;

/// The size of one ring entry (the offset and the `Bytes` handle), for reports; the
/// payload itself is shared with the batch buffer.
pub const ENTRY_SIZE: usize = std::mem::size_of::<Entry>();

// The charged overhead covers the entry itself (checked at compile time).
const _: () = assert!(ENTRY_SIZE <= ENTRY_OVERHEAD);

/// Most topics [`Histories::expire`] drops per call.
pub const EXPIRE_PER_CALL: usize = 64;

/// Length of an epoch, in base62 characters.
const EPOCH_LEN: usize = 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Names one unbroken sequence of a topic's offsets: 8 base62 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch([u8; EPOCH_LEN]);

impl Epoch {
    /// The epoch drawn from one random `u64` (62^8 < 2^48: one draw is enough).
    pub fn from_random(mut r: u64) -> Self {
        let mut e = [0u8; EPOCH_LEN];
        for c in &mut e {
            *c = BASE62[(r % 62) as usize];
            r /= 62;
        }
        Epoch(e)
    }

    /// An epoch written by another node (through the broker): 8 base62 characters, or
    /// `None`.
    pub fn parse(b: [u8; EPOCH_LEN]) -> Option<Self> {
        b.iter().all(u8::is_ascii_alphanumeric).then_some(Epoch(b))
    }

    /// The epoch's bytes.
    pub fn bytes(&self) -> [u8; EPOCH_LEN] {
        self.0
    }

    /// The epoch as the client sees it.
    pub fn as_str(&self) -> &str {
        // Always ASCII (drawn from BASE62).
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.as_str())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Epoch {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A topic's history settings (from its namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Most publications kept; 0 = history off (offsets still advance, nothing is kept).
    pub size: usize,
    /// Idle time (since the last publication) after which the history and the epoch are
    /// dropped; zero = never.
    pub ttl: Duration,
}

/// What [`Histories::append`] assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The publication's offset in `epoch`.
    pub offset: u64,
    /// The topic's epoch (a new one when the topic's state was created or renewed).
    pub epoch: Epoch,
}

/// Where a topic stands: what a new subscriber tracks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The current epoch.
    pub epoch: Epoch,
    /// The latest offset (0: no publication in this epoch yet).
    pub top: u64,
}

/// Why a recovery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The client's epoch is not the topic's: the sequence it knew is gone.
    EpochChanged,
    /// Some missed publication is no longer kept (evicted, or history off).
    TooOld,
    /// More than `max` publications were missed.
    TooMany,
    /// The client claims an offset past `top` in the current epoch.
    FromTheFuture,
}

/// The answer of [`Histories::since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Every publication after the client's offset, in order, none missing.
    Recovered {
        /// The epoch (the client's).
        epoch: Epoch,
        /// The latest offset; the last publication's when any.
        top: u64,
        /// Offsets `offset + 1 ..= top`, each with its frame.
        publications: Vec<Stored>,
    },
    /// The client must start over from `(epoch, top)`.
    NotRecovered {
        /// Why.
        reason: Lost,
        /// The current epoch.
        epoch: Epoch,
        /// The latest offset.
        top: u64,
    },
}

/// The answer of [`Histories::last`] and [`Histories::page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The current epoch.
    pub epoch: Epoch,
    /// The latest offset.
    pub top: u64,
    /// The oldest offset kept (`top + 1` when nothing is kept): a `since` below
    /// `first - 1` missed publications that are gone.
    pub first: u64,
    /// Publications in offset order, contiguous.
    pub publications: Vec<Stored>,
}

/// Counters for metrics, all since creation (publications, not topics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Dropped to keep the shard under its byte budget.
    pub evicted_by_memory: u64,
    /// Dropped because their topic kept `size` newer ones (or its history was turned off).
    pub evicted_by_size: u64,
    /// Dropped with a history idle past its TTL.
    pub expired_by_ttl: u64,
    /// Topics whose state expired (dropped by [`Histories::expire`] or renewed in place).
    pub expired_topics: u64,
    /// Topics whose state was dropped to stay under the budget ([`Histories::shed`]).
    pub shed_topics: u64,
}

/// One stored publication, as queries return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// Its complete server frame (what a simple-mode subscriber got).
    pub frame: Bytes,
    /// Published as a JSON value (mux envelopes carry it as one, not as a string).
    pub json: bool,
}

type Entry = Stored;

fn weight(frame: &Bytes) -> usize {
    frame.len().saturating_add(ENTRY_OVERHEAD)
}

/// One topic's state.
#[derive(Debug)]
struct History<K> {
    key: K,
    epoch: Epoch,
    /// The offset the next publication gets.
    next: u64,
    /// Contiguous suffix of the offsets, ending at `next - 1`.
    ring: VecDeque<Entry>,
    /// Sum of the ring's weights.
    bytes: usize,
    /// Last publication (or creation) + ttl; `None`: never expires.
    deadline: Option<Instant>,
}

impl<K> History<K> {
    fn top(&self) -> u64 {
        self.next - 1
    }

    fn first(&self) -> u64 {
        self.ring.front().map_or(self.next, |e| e.offset)
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            top: self.top(),
        }
    }

    /// The kept publications with offset > `after`, at most `limit`.
    fn after(&self, after: u64, limit: usize) -> Vec<Stored> {
        let first = self.first();
        let skip = after.saturating_add(1).saturating_sub(first);
        let skip = usize::try_from(skip).map_or(self.ring.len(), |s| s.min(self.ring.len()));
        // `range` starts in O(1) (the ring is dense: index = offset - first).
        self.ring.range(skip..).take(limit).cloned().collect()
    }

    fn page(&self, publications: Vec<Stored>) -> Page {
        Page {
            epoch: self.epoch,
            top: self.top(),
            first: self.first(),
            publications,
        }
    }
}

fn deadline(now: Instant, ttl: Duration) -> Option<Instant> {
    if ttl.is_zero() {
        None
    } else {
        // Past what an Instant can hold: never.
        now.checked_add(ttl)
    }
}

/// The history store of one shard, for the topics it is the home of.
///
/// Generic over the key (the shard uses [`super::TopicId`]): it needs only
/// `Copy + Eq + Hash`, and tests and benches can use plain integers without building a
/// topic table. Internally each topic has a slot; the eviction and expiry indexes order
/// slots, so the key needs no `Ord`.
pub struct Histories<K, R> {
    budget: usize,
    rng: R,
    index: HashMap<K, usize>,
    slots: Vec<Option<History<K>>>,
    free: Vec<usize>,
    /// `(bytes, slot)` of every history holding publications: the largest is the last.
    by_bytes: BTreeSet<(usize, usize)>,
    /// `(deadline, slot)` of every topic with a TTL: the next to expire is the first.
    by_deadline: BTreeSet<(Instant, usize)>,
    bytes: usize,
    publications: usize,
    stats: Stats,
}

impl<K: fmt::Debug, R> fmt::Debug for Histories<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histories")
            .field("budget", &self.budget)
            .field("topics", &self.index.len())
            .field("bytes", &self.bytes)
            .field("publications", &self.publications)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Eq + Hash, R: FnMut() -> u64> Histories<K, R> {
    /// An empty store whose publications weigh at most `budget_bytes` in all (see
    /// [`ENTRY_OVERHEAD`]); `rng` draws the epochs (the server passes an OS-seeded
    /// generator, tests a fixed sequence).
    pub fn new(budget_bytes: usize, rng: R) -> Self {
        Histories {
            budget: budget_bytes,
            rng,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_bytes: BTreeSet::new(),
            by_deadline: BTreeSet::new(),
            bytes: 0,
            publications: 0,
            stats: Stats::default(),
        }
    }

    /// Assigns the next offset of `key`'s topic to `frame` and keeps the frame (the same
    /// `Bytes`, no copy) when its history is on, then evicts: `key`'s oldest past
    /// `opts.size`, then the oldest of the largest histories while the shard is over its
    /// budget. Creates the topic's state (new epoch, offset 1) when it has none, renews it
    /// when it was idle past its TTL. `opts` applies from this append on (a smaller `size`
    /// evicts at once; the TTL counts from this publication).
    pub fn append(&mut self, key: K, opts: HistoryOptions, frame: Bytes, now: Instant) -> Appended {
        self.append_flagged(key, opts, frame, false, now)
    }

    /// [`Histories::append`] of a publication that was published as a JSON value (`json`).
    pub fn append_flagged(
        &mut self,
        key: K,
        opts: HistoryOptions,
        frame: Bytes,
        json: bool,
        now: Instant,
    ) -> Appended {
        let slot = self.touch(key, opts, now);
        let Some(h) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            // `touch` returns an occupied slot.
            return Appended {
                offset: 0,
                epoch: Epoch::from_random(0),
            };
        };
        if h.next == u64::MAX {
            // 2^64 publications: unreachable, but offsets must stay dense: a new epoch.
            let old = h.epoch;
            h.epoch = draw_epoch(&mut self.rng, Some(old));
            h.next = 1;
            let dropped = h.ring.len();
            h.ring.clear();
            let before = std::mem::take(&mut h.bytes);
            self.stats.evicted_by_size += dropped as u64;
            self.account(slot, before, 0, dropped, 0);
        }
        let Some(h) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return Appended {
                offset: 0,
                epoch: Epoch::from_random(0),
            };
        };
        let offset = h.next;
        h.next += 1;
        let old_deadline = h.deadline;
        h.deadline = deadline(now, opts.ttl);
        let new_deadline = h.deadline;
        let epoch = h.epoch;
        let before = h.bytes;
        let mut dropped = 0usize;
        let mut added = 0usize;
        if opts.size > 0 {
            h.bytes += weight(&frame);
            h.ring.push_back(Entry {
                offset,
                frame,
                json,
            });
            added = 1;
        }
        while h.ring.len() > opts.size {
            if let Some(e) = h.ring.pop_front() {
                h.bytes -= weight(&e.frame);
                dropped += 1;
            }
        }
        let after = h.bytes;
        self.stats.evicted_by_size += dropped as u64;
        self.reindex_deadline(slot, old_deadline, new_deadline);
        self.account(slot, before, after, dropped, added);
        self.enforce_budget();
        Appended { offset, epoch }
    }

    /// Makes `offset` in `epoch` the next offset of `key`'s topic (the broker numbered
    /// the publication that follows: Redis, several nodes). A state in another epoch, or
    /// one that lacks the offsets before `offset` (this node did not receive them), starts
    /// over there, keeping nothing older: the ring stays contiguous. Returns how many
    /// offsets from `offset` on were appended already (a replay overlapping the live
    /// stream): the caller skips that many.
    pub fn align(
        &mut self,
        key: K,
        opts: HistoryOptions,
        epoch: Epoch,
        offset: u64,
        now: Instant,
    ) -> u64 {
        let slot = self.touch(key, opts, now);
        let Some(h) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return 0;
        };
        if h.epoch == epoch && offset <= h.next {
            return h.next - offset;
        }
        h.epoch = epoch;
        h.next = offset.max(1);
        let dropped = h.ring.len();
        h.ring.clear();
        let before = std::mem::take(&mut h.bytes);
        self.stats.evicted_by_size += dropped as u64;
        self.account(slot, before, 0, dropped, 0);
        0
    }

    /// Where `key`'s topic stands, creating its state (a new epoch, top 0) when it has
    /// none and renewing it when it expired: what a new subscriber tracks from.
    pub fn open(&mut self, key: K, opts: HistoryOptions, now: Instant) -> Position {
        let slot = self.touch(key, opts, now);
        self.slots.get(slot).and_then(Option::as_ref).map_or(
            Position {
                epoch: Epoch::from_random(0),
                top: 0,
            },
            History::position,
        )
    }

    /// Recovery for a client that saw everything of `key`'s topic up to `offset` in
    /// `epoch`, returning at most `max` publications. Opens the topic as [`Histories::open`]
    /// does (a topic without state gets a new epoch: `EpochChanged`). In order:
    ///
    /// | condition | answer |
    /// |---|---|
    /// | `epoch` is not the topic's | `NotRecovered(EpochChanged)` |
    /// | `offset > top` | `NotRecovered(FromTheFuture)` |
    /// | `offset == top` | `Recovered` with nothing |
    /// | offset `offset + 1` is not kept (evicted, history off) | `NotRecovered(TooOld)` |
    /// | `top - offset > max` | `NotRecovered(TooMany)` |
    /// | otherwise | `Recovered`: offsets `offset + 1 ..= top`, all of them |
    ///
    /// So a `Recovered` answer never has a gap: it ends at `top` and starts right after
    /// the client's offset.
    pub fn since(
        &mut self,
        key: K,
        opts: HistoryOptions,
        epoch: &str,
        offset: u64,
        max: usize,
        now: Instant,
    ) -> Recovery {
        let slot = self.touch(key, opts, now);
        let Some(h) = self.slots.get(slot).and_then(Option::as_ref) else {
            return Recovery::NotRecovered {
                reason: Lost::EpochChanged,
                epoch: Epoch::from_random(0),
                top: 0,
            };
        };
        let top = h.top();
        let lost = |reason| Recovery::NotRecovered {
            reason,
            epoch: h.epoch,
            top,
        };
        if h.epoch != *epoch {
            return lost(Lost::EpochChanged);
        }
        if offset > top {
            return lost(Lost::FromTheFuture);
        }
        if offset == top {
            return Recovery::Recovered {
                epoch: h.epoch,
                top,
                publications: Vec::new(),
            };
        }
        // offset < top: offset + 1 <= top, kept iff first <= offset + 1 (the ring is a
        // contiguous suffix ending at top; empty: first == top + 1).
        if h.first() > offset + 1 {
            return lost(Lost::TooOld);
        }
        let missed = top - offset;
        if usize::try_from(missed).map_or(true, |m| m > max) {
            return lost(Lost::TooMany);
        }
        Recovery::Recovered {
            epoch: h.epoch,
            top,
            publications: h.after(offset, max),
        }
    }

    /// Rewind: the last `n` publications of `key`'s topic (fewer when `max` or what is
    /// kept is less), in offset order, with the epoch and top. Opens the topic as
    /// [`Histories::open`] does.
    pub fn last(
        &mut self,
        key: K,
        opts: HistoryOptions,
        n: usize,
        max: usize,
        now: Instant,
    ) -> Page {
        let slot = self.touch(key, opts, now);
        let Some(h) = self.slots.get(slot).and_then(Option::as_ref) else {
            return Page {
                epoch: Epoch::from_random(0),
                top: 0,
                first: 1,
                publications: Vec::new(),
            };
        };
        let k = n.min(max).min(h.ring.len());
        let publications = h.ring.range(h.ring.len() - k..).cloned().collect();
        h.page(publications)
    }

    /// `GET /history/{topic}?since=OFFSET&limit=N`: the kept publications with offset
    /// `> since`, at most `limit`, in order, with the epoch, top and the oldest kept
    /// offset (a `since < first - 1` missed some that are gone). `None`: the topic has no
    /// state (no epoch) or it expired; unlike the other queries this creates nothing (a
    /// stranger's GET must not make state).
    pub fn page(&self, key: K, since: u64, limit: usize, now: Instant) -> Option<Page> {
        let h = self
            .index
            .get(&key)
            .and_then(|&s| self.slots.get(s))
            .and_then(Option::as_ref)?;
        if h.expired(now) {
            return None;
        }
        Some(h.page(h.after(since, limit)))
    }

    /// Once per tick: drops the state of at most [`EXPIRE_PER_CALL`] topics idle past
    /// their TTL (the earliest deadlines first), calling `on_expired` with each key (the
    /// caller may drop the topic). Returns how many were dropped; the rest wait for the
    /// next call (queries renew an expired topic they meet, so none is served stale).
    pub fn expire(&mut self, now: Instant, on_expired: impl FnMut(K)) -> usize {
        self.expire_keeping(now, |_| false, on_expired)
    }

    /// [`Histories::expire`], except that a topic for which `keep` says true (it still has
    /// subscribers, who track its offsets) loses only its publications, counted the same:
    /// its epoch and offsets go on (a recovery from before gets [`Lost::TooOld`]) and it
    /// has no deadline until its next publication.
    pub fn expire_keeping(
        &mut self,
        now: Instant,
        mut keep: impl FnMut(K) -> bool,
        mut on_expired: impl FnMut(K),
    ) -> usize {
        let mut done = 0;
        while done < EXPIRE_PER_CALL {
            let Some(&(d, slot)) = self.by_deadline.first() else {
                break;
            };
            if d > now {
                break;
            }
            let Some(h) = self.slots.get(slot).and_then(Option::as_ref) else {
                // Not reachable (the index is kept with the slots); never loop on it.
                self.by_deadline.remove(&(d, slot));
                continue;
            };
            let key = h.key;
            if keep(key) {
                let dropped = self.trim_slot(slot);
                self.stats.expired_by_ttl += dropped as u64;
                done += 1;
                continue;
            }
            let dropped = self.drop_slot(slot);
            self.stats.expired_by_ttl += dropped as u64;
            self.stats.expired_topics += 1;
            on_expired(key);
            done += 1;
        }
        done
    }

    /// While the store weighs more than its budget with no publication left to evict (the
    /// weight is topic states: [`STATE_OVERHEAD`] each), forgets the state of topics
    /// nobody keeps (`keep`: the caller's topics with subscribers, whose offsets must go
    /// on), the least recently published first, at most `max` per call, calling
    /// `on_dropped` with each key. A later use of such a topic starts a new epoch, so a
    /// client that recovers from the old one is told `EpochChanged`, never given a gap.
    /// Returns how many were dropped.
    pub fn shed(
        &mut self,
        max: usize,
        mut keep: impl FnMut(K) -> bool,
        mut on_dropped: impl FnMut(K),
    ) -> usize {
        if self.bytes <= self.budget {
            return 0;
        }
        let mut excess = self.bytes - self.budget;
        let mut victims = Vec::new();
        // Topics kept (subscribed) are skipped, but counted: a call looks at no more than
        // a bounded number of them, however many there are.
        for (seen, &(_, slot)) in self.by_deadline.iter().enumerate() {
            if excess == 0 || victims.len() >= max || seen >= max.saturating_mul(4) {
                break;
            }
            let Some(h) = self.slots.get(slot).and_then(Option::as_ref) else {
                continue;
            };
            if keep(h.key) {
                continue;
            }
            victims.push(slot);
            excess = excess.saturating_sub(h.bytes + STATE_OVERHEAD);
        }
        for &slot in &victims {
            let key = self.slots.get(slot).and_then(Option::as_ref).map(|h| h.key);
            let dropped = self.drop_slot(slot);
            self.stats.evicted_by_memory += dropped as u64;
            self.stats.shed_topics += 1;
            if let Some(k) = key {
                on_dropped(k);
            }
        }
        victims.len()
    }

    /// For a topic that has subscribers (who track its offsets): if its TTL has passed and
    /// [`Histories::expire_keeping`] has not got to it yet, it loses its publications now
    /// and keeps its epoch, instead of being renewed (a new epoch, offsets from 1) by the
    /// next append or query. Call before those when the topic has subscribers.
    pub fn keep_if_expired(&mut self, key: K, now: Instant) {
        let Some(&slot) = self.index.get(&key) else {
            return;
        };
        if self
            .slots
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|h| h.expired(now))
        {
            let dropped = self.trim_slot(slot);
            self.stats.expired_by_ttl += dropped as u64;
        }
    }

    /// The topic is gone: its history and epoch are forgotten (a later use starts a new
    /// epoch). Returns how many publications were dropped.
    pub fn remove(&mut self, key: K) -> usize {
        match self.index.get(&key) {
            Some(&slot) => self.drop_slot(slot),
            None => 0,
        }
    }

    /// What the store weighs against its budget: every stored publication (its frame +
    /// [`ENTRY_OVERHEAD`]) and every topic state ([`STATE_OVERHEAD`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stored publications.
    pub fn publications(&self) -> usize {
        self.publications
    }

    /// Topics with state (an epoch).
    pub fn topics(&self) -> usize {
        self.index.len()
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Eviction counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The slot of `key`'s state, created (new epoch) when absent and renewed when
    /// expired. Options are applied by appends only (size and TTL): a query does not
    /// change when a topic expires.
    fn touch(&mut self, key: K, opts: HistoryOptions, now: Instant) -> usize {
        let slot = match self.index.entry(key) {
            MapEntry::Occupied(o) => *o.get(),
            MapEntry::Vacant(v) => {
                let h = History {
                    key,
                    epoch: draw_epoch(&mut self.rng, None),
                    next: 1,
                    ring: VecDeque::new(),
                    bytes: 0,
                    deadline: deadline(now, opts.ttl),
                };
                let d = h.deadline;
                let slot = match self.free.pop() {
                    Some(s) => {
                        if let Some(place) = self.slots.get_mut(s) {
                            *place = Some(h);
                        }
                        s
                    }
                    None => {
                        self.slots.push(Some(h));
                        self.slots.len() - 1
                    }
                };
                v.insert(slot);
                self.reindex_deadline(slot, None, d);
                self.bytes += STATE_OVERHEAD;
                return slot;
            }
        };
        let Some(h) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return slot;
        };
        if h.expired(now) {
            let old = h.epoch;
            h.epoch = draw_epoch(&mut self.rng, Some(old));
            h.next = 1;
            let dropped = h.ring.len();
            h.ring.clear();
            let before = std::mem::take(&mut h.bytes);
            let old_deadline = h.deadline;
            h.deadline = deadline(now, opts.ttl);
            let new_deadline = h.deadline;
            self.stats.expired_by_ttl += dropped as u64;
            self.stats.expired_topics += 1;
            self.reindex_deadline(slot, old_deadline, new_deadline);
            self.account(slot, before, 0, dropped, 0);
        }
        slot
    }

    /// Drops `slot`'s publications and its deadline, keeping its epoch and offsets;
    /// returns the publications dropped.
    fn trim_slot(&mut self, slot: usize) -> usize {
        let Some(h) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return 0;
        };
        let dropped = h.ring.len();
        h.ring.clear();
        let before = std::mem::take(&mut h.bytes);
        let old_deadline = h.deadline.take();
        self.reindex_deadline(slot, old_deadline, None);
        self.account(slot, before, 0, dropped, 0);
        dropped
    }

    /// Forgets `slot`'s topic entirely; returns the publications dropped.
    fn drop_slot(&mut self, slot: usize) -> usize {
        let Some(h) = self.slots.get_mut(slot).and_then(Option::take) else {
            return 0;
        };
        self.index.remove(&h.key);
        self.reindex_deadline(slot, h.deadline, None);
        let dropped = h.ring.len();
        self.account(slot, h.bytes, 0, dropped, 0);
        self.bytes -= STATE_OVERHEAD;
        self.free.push(slot);
        dropped
    }

    /// Applies a change of `slot`'s weight from `before` to `after` (`dropped` entries
    /// out, `added` in) to the totals and the size index.
    fn account(&mut self, slot: usize, before: usize, after: usize, dropped: usize, added: usize) {
        self.bytes = self.bytes - before + after;
        self.publications = self.publications + added - dropped;
        if before != after {
            if before > 0 {
                self.by_bytes.remove(&(before, slot));
            }
            if after > 0 {
                self.by_bytes.insert((after, slot));
            }
        }
    }

    fn reindex_deadline(&mut self, slot: usize, old: Option<Instant>, new: Option<Instant>) {
        if old == new {
            return;
        }
        if let Some(d) = old {
            self.by_deadline.remove(&(d, slot));
        }
        if let Some(d) = new {
            self.by_deadline.insert((d, slot));
        }
    }

    /// While over budget: the oldest publication of the largest history goes.
    fn enforce_budget(&mut self) {
        while self.bytes > self.budget {
            let Some(&(before, slot)) = self.by_bytes.last() else {
                // Nothing left to evict (cannot be over budget then).
                break;
            };
            let Some(h) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                self.by_bytes.remove(&(before, slot));
                continue;
            };
            let Some(e) = h.ring.pop_front() else {
                self.by_bytes.remove(&(before, slot));
                continue;
            };
            h.bytes -= weight(&e.frame);
            let after = h.bytes;
            self.stats.evicted_by_memory += 1;
            self.account(slot, before, after, 1, 0);
        }
    }
}

/// A fresh epoch, different from `old` when given (a few draws: a broken generator that
/// always repeats must not loop forever).
fn draw_epoch(rng: &mut impl FnMut() -> u64, old: Option<Epoch>) -> Epoch {
    let mut e = Epoch::from_random(rng());
    for _ in 0..4 {
        if Some(e) != old {
            break;
        }
        e = Epoch::from_random(rng());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: HistoryOptions = HistoryOptions {
        size: 100,
        ttl: Duration::ZERO,
    };

    fn rng() -> impl FnMut() -> u64 {
        let mut i = 0u64;
        move || {
            i += 1;
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }
    }

    fn frame(i: u64, len: usize) -> Bytes {
        let mut v = i.to_le_bytes().to_vec();
        v.resize(len.max(8), b'x');
        Bytes::from(v)
    }

    fn offsets(p: &[Stored]) -> Vec<u64> {
        p.iter().map(|p| p.offset).collect()
    }

    /// The internal invariants: totals and indexes agree with the rings, rings are
    /// contiguous suffixes ending at top.
    fn check<K: Copy + Eq + Hash, R: FnMut() -> u64>(h: &Histories<K, R>) {
        let (mut bytes, mut pubs, mut by_bytes, mut by_deadline) =
            (0, 0, BTreeSet::new(), BTreeSet::new());
        for (slot, t) in h.slots.iter().enumerate() {
            let Some(t) = t else { continue };
            assert_eq!(h.index.get(&t.key), Some(&slot));
            let w: usize = t.ring.iter().map(|e| weight(&e.frame)).sum();
            assert_eq!(w, t.bytes);
            for (i, e) in t.ring.iter().enumerate() {
                assert_eq!(e.offset, t.first() + i as u64);
            }
            if let Some(e) = t.ring.back() {
                assert_eq!(e.offset, t.top());
            }
            bytes += w;
            pubs += t.ring.len();
            if w > 0 {
                by_bytes.insert((w, slot));
            }
            if let Some(d) = t.deadline {
                by_deadline.insert((d, slot));
            }
        }
        assert_eq!(h.index.len(), h.slots.iter().flatten().count());
        assert_eq!(bytes + h.index.len() * STATE_OVERHEAD, h.bytes);
        assert_eq!(pubs, h.publications);
        assert_eq!(by_bytes, h.by_bytes);
        assert_eq!(by_deadline, h.by_deadline);
    }

    #[test]
    fn offsets_are_dense_from_one_and_the_frame_is_not_copied() {
        let now = Instant::now();
        let mut h = Histories::new(1 << 20, rng());
        let f = frame(0, 64);
        let a = h.append(7u32, ON, f.clone(), now);
        assert_eq!(a.offset, 1);
        assert_eq!(a.epoch.as_str().len(), 8);
        assert!(a.epoch.as_str().bytes().all(|c| c.is_ascii_alphanumeric()));
        for i in 2..=5 {
            let b = h.append(7, ON, frame(i, 64), now);
            assert_eq!((b.offset, b.epoch), (i, a.epoch));
        }
        let p = h.last(7, ON, 10, 10, now);
        assert_eq!(offsets(&p.publications), [1, 2, 3, 4, 5]);
        assert_eq!(p.publications[0].frame.as_ptr(), f.as_ptr());
        assert_eq!(h.publications(), 5);
        assert_eq!(h.bytes(), 5 * (64 + ENTRY_OVERHEAD) + STATE_OVERHEAD);
        // Another topic has its own epoch and offsets.
        let c = h.append(8, ON, frame(9, 64), now);
        assert_eq!(c.offset, 1);
        assert_ne!(c.epoch, a.epoch);
        check(&h);
    }

    #[test]
    fn since_follows_its_table() {
        let now = Instant::now();
        let mut h = Histories::new(1 << 20, rng());
        let opts = HistoryOptions { size: 3, ..ON };
        let mut e = Epoch::from_random(0);
        for i in 1..=5 {
            e = h.append(1u32, opts, frame(i, 10), now).epoch;
        }
        let e = e.as_str().to_owned();
        let since = |h: &mut Histories<u32, _>, epoch: &str, offset, max| {
            h.since(1, opts, epoch, offset, max, now)
        };
        let lost = |r: Recovery| match r {
            Recovery::NotRecovered { reason, top, .. } => {
                assert_eq!(top, 5);
                Some(reason)
            }
            Recovery::Recovered { .. } => None,
        };
        assert_eq!(
            lost(since(&mut h, "zzzzzzzz", 5, 10)),
            Some(Lost::EpochChanged)
        );
        assert_eq!(lost(since(&mut h, &e, 6, 10)), Some(Lost::FromTheFuture));
        // Kept: 3, 4, 5.
        assert_eq!(lost(since(&mut h, &e, 1, 10)), Some(Lost::TooOld));
        assert_eq!(lost(since(&mut h, &e, 0, 10)), Some(Lost::TooOld));
        assert_eq!(lost(since(&mut h, &e, 2, 2)), Some(Lost::TooMany));
        assert_eq!(lost(since(&mut h, &e, 4, 0)), Some(Lost::TooMany));
        match since(&mut h, &e, 2, 3) {
            Recovery::Recovered {
                publications, top, ..
            } => {
                assert_eq!(offsets(&publications), [3, 4, 5]);
                assert_eq!(top, 5);
            }
            r => panic!("{r:?}"),
        }
        match since(&mut h, &e, 5, 0) {
            Recovery::Recovered { publications, .. } => assert!(publications.is_empty()),
            r => panic!("{r:?}"),
        }
        assert_eq!(h.stats().evicted_by_size, 2);
    }

    #[test]
    fn a_topic_without_state_gets_a_new_epoch() {
        let now = Instant::now();
        let mut h = Histories::new(1 << 20, rng());
        let r = h.since(3u32, ON, "abcdefgh", 0, 10, now);
        let Recovery::NotRecovered {
            reason: Lost::EpochChanged,
            epoch,
            top: 0,
        } = r
        else {
            panic!("{r:?}")
        };
        // The client tracks the new epoch from 0 and recovers what follows.
        let a = h.append(3, ON, frame(1, 8), now);
        assert_eq!((a.epoch, a.offset), (epoch, 1));
        match h.since(3, ON, epoch.as_str(), 0, 10, now) {
            Recovery::Recovered { publications, .. } => assert_eq!(offsets(&publications), [1]),
            r => panic!("{r:?}"),
        }
        assert!(h.page(4, 0, 10, now).is_none());
        assert_eq!(h.topics(), 1);
    }

    #[test]
    fn history_off_advances_offsets_and_keeps_nothing() {
        let now = Instant::now();
        let mut h = Histories::new(1 << 20, rng());
        let off = HistoryOptions { size: 0, ..ON };
        let e = h.append(1u32, off, frame(1, 8), now).epoch;
        assert_eq!(h.append(1, off, frame(2, 8), now).offset, 2);
        assert_eq!((h.publications(), h.bytes()), (0, STATE_OVERHEAD));
        let r = h.since(1, off, e.as_str(), 1, 10, now);
        assert!(matches!(
            r,
            Recovery::NotRecovered {
                reason: Lost::TooOld,
                top: 2,
                ..
            }
        ));
        let r = h.since(1, off, e.as_str(), 2, 10, now);
        assert!(matches!(r, Recovery::Recovered { top: 2, .. }));
        // Turning it on keeps from then on; turning it off drops what was kept.
        h.append(1, ON, frame(3, 8), now);
        assert_eq!(h.publications(), 1);
        h.append(1, off, frame(4, 8), now);
        assert_eq!(h.publications(), 0);
        assert_eq!(h.stats().evicted_by_size, 1);
        check(&h);
    }

    #[test]
    fn memory_evicts_the_oldest_of_the_largest_and_keeps_the_epoch() {
        let now = Instant::now();
        let w = 100 + ENTRY_OVERHEAD;
        let mut h = Histories::new(10 * w + 2 * STATE_OVERHEAD, rng());
        let big = h.append(1u32, ON, frame(1, 100), now).epoch;
        for i in 2..=6 {
            h.append(1, ON, frame(i, 100), now);
        }
        for i in 1..=4 {
            h.append(2, ON, frame(i, 100), now);
        }
        assert_eq!(h.bytes(), 10 * w + 2 * STATE_OVERHEAD);
        assert_eq!(h.stats().evicted_by_memory, 0);
        // Over budget: topic 1 (6 entries) is the largest and loses its oldest.
        h.append(2, ON, frame(5, 100), now);
        assert_eq!(h.stats().evicted_by_memory, 1);
        assert!(h.bytes() <= h.budget());
        let p = h.page(1, 0, 100, now).unwrap_or_else(|| panic!("state"));
        assert_eq!((p.first, p.top, p.epoch), (2, 6, big));
        let r = h.since(1, ON, big.as_str(), 0, 100, now);
        assert!(matches!(
            r,
            Recovery::NotRecovered {
                reason: Lost::TooOld,
                ..
            }
        ));
        // Now both have 5: the tie goes to one of them, and they alternate from there.
        for i in 6..=9 {
            h.append(2, ON, frame(i, 100), now);
        }
        assert_eq!(h.stats().evicted_by_memory, 5);
        let (a, b) = (h.page(1, 0, 99, now), h.page(2, 0, 99, now));
        let len = |p: Option<Page>| p.map_or(0, |p| p.publications.len());
        assert_eq!(len(a) + len(b), 10);
        check(&h);
        // A frame heavier than the whole budget is not kept, the offset still counts.
        let a = h.append(3, ON, frame(1, 20 * w), now);
        assert_eq!(a.offset, 1);
        assert!(h.bytes() <= h.budget());
        assert!(
            h.page(3, 0, 10, now)
                .is_some_and(|p| p.publications.is_empty())
        );
        check(&h);
    }

    #[test]
    fn ttl_expires_and_the_next_publication_starts_a_new_epoch() {
        let t0 = Instant::now();
        let ttl = HistoryOptions {
            size: 10,
            ttl: Duration::from_secs(10),
        };
        let mut h = Histories::new(1 << 20, rng());
        let e1 = h.append(1u32, ttl, frame(1, 8), t0).epoch;
        h.append(1, ttl, frame(2, 8), t0 + Duration::from_secs(5));
        h.append(2u32, ttl, frame(1, 8), t0);
        let mut gone = Vec::new();
        assert_eq!(h.expire(t0 + Duration::from_secs(14), |k| gone.push(k)), 1);
        assert_eq!(gone, [2]);
        assert!(h.page(1, 0, 10, t0 + Duration::from_secs(14)).is_some());
        // Past the deadline, not yet expired: never served, renewed on use.
        let t1 = t0 + Duration::from_secs(15);
        assert!(h.page(1, 0, 10, t1).is_none());
        let a = h.append(1, ttl, frame(3, 8), t1);
        assert_eq!(a.offset, 1);
        assert_ne!(a.epoch, e1);
        let r = h.since(1, ttl, e1.as_str(), 2, 10, t1);
        assert!(matches!(
            r,
            Recovery::NotRecovered {
                reason: Lost::EpochChanged,
                top: 1,
                ..
            }
        ));
        assert_eq!(h.stats().expired_by_ttl, 3);
        assert_eq!(h.stats().expired_topics, 2);
        check(&h);
    }

    #[test]
    fn a_kept_topic_loses_its_publications_not_its_epoch() {
        let t0 = Instant::now();
        let ttl = HistoryOptions {
            size: 10,
            ttl: Duration::from_secs(10),
        };
        let mut h = Histories::new(1 << 20, rng());
        let e1 = h.append(1u32, ttl, frame(1, 8), t0).epoch;
        h.append(1, ttl, frame(2, 8), t0);
        h.append(2u32, ttl, frame(1, 8), t0);
        let later = t0 + Duration::from_secs(11);
        let mut gone = Vec::new();
        assert_eq!(h.expire_keeping(later, |k| k == 1, |k| gone.push(k)), 2);
        assert_eq!(gone, [2], "only the topic nobody keeps is forgotten");
        assert_eq!(h.publications(), 0);
        let r = h.since(1, ttl, e1.as_str(), 0, 10, later);
        assert!(
            matches!(
                r,
                Recovery::NotRecovered {
                    reason: Lost::TooOld,
                    top: 2,
                    ..
                }
            ),
            "{r:?}"
        );
        let a = h.append(1, ttl, frame(3, 8), later + Duration::from_secs(60));
        assert_eq!((a.epoch, a.offset), (e1, 3), "the sequence goes on");
        assert_eq!(h.stats().expired_by_ttl, 3);
        check(&h);
    }

    #[test]
    fn states_count_against_the_budget_and_unkept_ones_are_shed() {
        let t0 = Instant::now();
        let ttl = HistoryOptions {
            size: 10,
            ttl: Duration::from_secs(60),
        };
        // Room for 3 topic states and nothing else.
        let mut h = Histories::new(3 * STATE_OVERHEAD, rng());
        let mut epochs = Vec::new();
        for k in 0..6u32 {
            epochs.push(h.open(k, ttl, t0 + Duration::from_secs(u64::from(k))).epoch);
        }
        assert_eq!(h.topics(), 6);
        assert!(h.bytes() > h.budget(), "states alone are over");
        // Topic 0 has subscribers (the caller keeps it).
        let mut dropped = Vec::new();
        assert_eq!(h.shed(100, |k| k == 0, |k| dropped.push(k)), 3);
        assert_eq!(
            dropped,
            [1, 2, 3],
            "least recently used first, kept ones skipped"
        );
        assert!(h.bytes() <= h.budget());
        assert_eq!(h.stats().shed_topics, 3);
        let r = h.since(1, ttl, epochs[1].as_str(), 0, 10, t0);
        assert!(
            matches!(
                r,
                Recovery::NotRecovered {
                    reason: Lost::EpochChanged,
                    ..
                }
            ),
            "{r:?}"
        );
        // The bound per call holds.
        for k in 10..20u32 {
            h.append(k, ttl, Bytes::new(), t0);
        }
        assert_eq!(h.shed(2, |_| false, |_| {}), 2);
        // A call scans at most 4 x max states: kept ones in front use up the scan.
        assert_eq!(h.shed(1, |k| k < 14, |_| {}), 0, "the first four are kept");
        assert_eq!(h.shed(4, |k| k < 14, |_| {}), 4);
        check(&h);
    }

    #[test]
    fn a_subscribed_topic_past_its_ttl_is_not_renewed() {
        let t0 = Instant::now();
        let ttl = HistoryOptions {
            size: 10,
            ttl: Duration::from_secs(10),
        };
        let mut h = Histories::new(1 << 20, rng());
        let e = h.append(1u32, ttl, frame(1, 8), t0).epoch;
        let later = t0 + Duration::from_secs(11);
        h.keep_if_expired(1, later);
        let a = h.append(1, ttl, frame(2, 8), later);
        assert_eq!((a.epoch, a.offset), (e, 2), "the sequence goes on");
        assert_eq!(h.stats().expired_by_ttl, 1);
        check(&h);
    }

    #[test]
    fn expire_is_bounded_per_call() {
        let t0 = Instant::now();
        let ttl = HistoryOptions {
            size: 1,
            ttl: Duration::from_millis(1),
        };
        let mut h = Histories::new(1 << 20, rng());
        for k in 0..150u32 {
            h.append(k, ttl, frame(1, 8), t0);
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(h.expire(later, |_| {}), EXPIRE_PER_CALL);
        assert_eq!(h.expire(later, |_| {}), EXPIRE_PER_CALL);
        assert_eq!(h.expire(later, |_| {}), 150 - 2 * EXPIRE_PER_CALL);
        assert_eq!((h.topics(), h.publications(), h.bytes()), (0, 0, 0));
        check(&h);
    }

    #[test]
    fn remove_forgets_the_epoch() {
        let now = Instant::now();
        let mut h = Histories::new(1 << 20, rng());
        let e = h.append(1u32, ON, frame(1, 8), now).epoch;
        h.append(1, ON, frame(2, 8), now);
        assert_eq!(h.remove(1), 2);
        assert_eq!(h.remove(1), 0);
        assert_eq!((h.topics(), h.publications(), h.bytes()), (0, 0, 0));
        let a = h.append(1, ON, frame(3, 8), now);
        assert_eq!(a.offset, 1);
        assert_ne!(a.epoch, e);
        check(&h);
    }

    #[test]
    fn last_is_capped_by_max_and_by_what_is_kept() {
        let now = Instant::now();
        let mut h = Histories::new(1 << 20, rng());
        for i in 1..=5 {
            h.append(1u32, ON, frame(i, 8), now);
        }
        assert_eq!(offsets(&h.last(1, ON, 2, 10, now).publications), [4, 5]);
        assert_eq!(offsets(&h.last(1, ON, 9, 3, now).publications), [3, 4, 5]);
        assert_eq!(h.last(1, ON, 99, 99, now).publications.len(), 5);
        let p = h.page(1, 3, 1, now).unwrap_or_else(|| panic!("state"));
        assert_eq!(offsets(&p.publications), [4]);
        assert_eq!((p.first, p.top), (1, 5));
        assert!(
            h.page(1, u64::MAX, 10, now)
                .is_some_and(|p| p.publications.is_empty())
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            key: u8,
            size: usize,
            ttl: u8,
            len: usize,
        },
        Since {
            key: u8,
            back: u64,
            same_epoch: bool,
            max: usize,
            ttl: u8,
        },
        Last {
            key: u8,
            n: usize,
            max: usize,
        },
        Page {
            key: u8,
            since: u64,
            limit: usize,
        },
        Expire,
        Remove {
            key: u8,
        },
        Advance {
            ms: u64,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..4, 0usize..6, 0u8..3, 0usize..60)
                .prop_map(|(key, size, ttl, len)| Op::Append { key, size, ttl, len }),
            2 => (0u8..4, 0u64..8, any::<bool>(), 0usize..8, 0u8..3)
                .prop_map(|(key, back, same_epoch, max, ttl)| Op::Since { key, back, same_epoch, max, ttl }),
            1 => (0u8..4, 0usize..8, 0usize..8).prop_map(|(key, n, max)| Op::Last { key, n, max }),
            1 => (0u8..4, 0u64..10, 0usize..8).prop_map(|(key, since, limit)| Op::Page { key, since, limit }),
            1 => Just(Op::Expire),
            1 => (0u8..4).prop_map(|key| Op::Remove { key }),
            1 => (0u64..15).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    fn ttl_of(t: u8) -> Duration {
        Duration::from_millis([0, 5, 20][usize::from(t % 3)])
    }

    /// What the model knows of one topic: every frame of its epoch.
    struct Model {
        epoch: Epoch,
        top: u64,
        frames: HashMap<u64, Bytes>,
        deadline: Option<Instant>,
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn random_sequences_keep_the_promises(
            budget in 0usize..1200,
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            use proptest::prop_assert as ok;
            use proptest::prop_assert_eq as eq;
            let mut now = Instant::now();
            let mut h = Histories::new(budget, rng());
            let mut model: HashMap<u8, Model> = HashMap::new();
            let (mut stored, mut removed, mut n) = (0u64, 0u64, 0u64);
            // A state the implementation renews on use: the model forgets it first.
            let renew = |model: &mut HashMap<u8, Model>, key: u8, now: Instant| {
                if model.get(&key).is_some_and(|m| m.deadline.is_some_and(|d| now >= d)) {
                    model.remove(&key);
                    true
                } else {
                    false
                }
            };
            for op in ops {
                match op {
                    Op::Append { key, size, ttl, len } => {
                        let opts = HistoryOptions { size, ttl: ttl_of(ttl) };
                        n += 1;
                        let f = frame(n, len);
                        let renewed = renew(&mut model, key, now);
                        let old = model.get(&key).map(|m| (m.epoch, m.top));
                        let a = h.append(key, opts, f.clone(), now);
                        match old {
                            Some((e, top)) => {
                                eq!(a.epoch, e);
                                eq!(a.offset, top + 1);
                            }
                            None => {
                                eq!(a.offset, 1);
                                let _ = renewed;
                            }
                        }
                        let m = model.entry(key).or_insert_with(|| Model {
                            epoch: a.epoch,
                            top: 0,
                            frames: HashMap::new(),
                            deadline: None,
                        });
                        m.top = a.offset;
                        m.frames.insert(a.offset, f);
                        m.deadline = deadline(now, opts.ttl);
                        if size > 0 {
                            stored += 1;
                        }
                        // Over only by topic states, which appends do not shed.
                        ok!(h.bytes() <= budget || h.publications() == 0);
                    }
                    Op::Since { key, back, same_epoch, max, ttl } => {
                        let opts = HistoryOptions { size: 1, ttl: ttl_of(ttl) };
                        let renewed = renew(&mut model, key, now);
                        let (epoch, top) = model
                            .get(&key)
                            .map_or((Epoch([b'z'; 8]), 0), |m| (m.epoch, m.top));
                        let asked = if same_epoch { epoch } else { Epoch([b'z'; 8]) };
                        // back 0: one past top (from the future).
                        let offset = (top + 1).saturating_sub(back);
                        let r = h.since(key, opts, asked.as_str(), offset, max, now);
                        let fresh = !model.contains_key(&key);
                        let first = h.index.get(&key)
                            .and_then(|&s| h.slots[s].as_ref())
                            .map(History::first);
                        match r {
                            Recovery::Recovered { epoch: e, top: t, publications } => {
                                ok!(!fresh);
                                eq!((e, t), (epoch, top));
                                ok!(publications.len() <= max);
                                let want: Vec<u64> = (offset + 1..=top).collect();
                                eq!(offsets(&publications), want);
                                let m = &model[&key];
                                for p in &publications {
                                    eq!(p.frame.as_ptr(), m.frames[&p.offset].as_ptr());
                                }
                            }
                            Recovery::NotRecovered { reason, epoch: e, top: t } => {
                                if fresh {
                                    eq!(reason, Lost::EpochChanged);
                                    eq!(t, 0);
                                    model.insert(key, Model {
                                        epoch: e,
                                        top: 0,
                                        frames: HashMap::new(),
                                        deadline: deadline(now, opts.ttl),
                                    });
                                    let _ = renewed;
                                    continue;
                                }
                                eq!((e, t), (epoch, top));
                                match reason {
                                    Lost::EpochChanged => ok!(!same_epoch),
                                    Lost::FromTheFuture => ok!(same_epoch && offset > top),
                                    Lost::TooOld => {
                                        ok!(same_epoch && offset < top);
                                        ok!(first.is_some_and(|f| f > offset + 1));
                                    }
                                    Lost::TooMany => {
                                        ok!(same_epoch && top - offset > max as u64);
                                        ok!(first.is_some_and(|f| f <= offset + 1));
                                    }
                                }
                            }
                        }
                    }
                    Op::Last { key, n: k, max } => {
                        let opts = HistoryOptions { size: 1, ttl: Duration::ZERO };
                        renew(&mut model, key, now);
                        let p = h.last(key, opts, k, max, now);
                        let m = model.entry(key).or_insert_with(|| Model {
                            epoch: p.epoch,
                            top: 0,
                            frames: HashMap::new(),
                            deadline: None,
                        });
                        eq!((p.epoch, p.top), (m.epoch, m.top));
                        ok!(p.publications.len() <= k.min(max));
                        let want: Vec<u64> =
                            (m.top + 1 - p.publications.len() as u64..=m.top).collect();
                        eq!(offsets(&p.publications), want);
                        for s in &p.publications {
                            eq!(s.frame.as_ptr(), m.frames[&s.offset].as_ptr());
                        }
                    }
                    Op::Page { key, since, limit } => {
                        let live = model.get(&key).filter(|m| m.deadline.is_none_or(|d| now < d));
                        match (h.page(key, since, limit, now), live) {
                            (None, None) => {}
                            (Some(p), Some(m)) => {
                                eq!((p.epoch, p.top), (m.epoch, m.top));
                                ok!(p.publications.len() <= limit);
                                let from = since.max(p.first - 1) + 1;
                                let want: Vec<u64> =
                                    (from..=m.top).take(limit).collect();
                                eq!(offsets(&p.publications), want);
                            }
                            (p, m) => ok!(false, "page {:?} vs model {}", p, m.is_some()),
                        }
                    }
                    Op::Expire => {
                        let mut gone = Vec::new();
                        h.expire(now, |k| gone.push(k));
                        for k in gone {
                            let m = model.remove(&k);
                            ok!(m.is_some_and(|m| m.deadline.is_some_and(|d| now >= d)));
                        }
                    }
                    Op::Remove { key } => {
                        removed += h.remove(key) as u64;
                        model.remove(&key);
                    }
                    Op::Advance { ms } => now += Duration::from_millis(ms),
                }
                check(&h);
                // Every kept frame is the one the model saw published at that offset.
                for t in h.slots.iter().flatten() {
                    let m = &model[&t.key];
                    eq!(t.epoch, m.epoch);
                    eq!(t.top(), m.top);
                    for e in &t.ring {
                        eq!(e.frame.as_ptr(), m.frames[&e.offset].as_ptr());
                    }
                }
                eq!(h.topics(), model.len());
                let s = h.stats();
                eq!(
                    stored,
                    h.publications() as u64
                        + s.evicted_by_size
                        + s.evicted_by_memory
                        + s.expired_by_ttl
                        + removed
                );
            }
        }
    }
}
