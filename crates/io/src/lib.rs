//! The driver boundary: everything that touches the kernel's socket and ring interfaces.
//!
//! A shard's event loop is written once, against [`Driver`], and runs unchanged on either
//! backend:
//!
//! - [`uring::UringDriver`]: multishot accept, multishot receive into a provided-buffer ring,
//!   vectored sends, all submitted once per loop turn.
//! - [`epoll::EpollDriver`]: the same contract on readiness (mio), for kernels or sandboxes
//!   where io_uring is unavailable (Docker's default seccomp profile,
//!   `kernel.io_uring_disabled`, old kernels).
//!
//! The contract is completion-shaped because that is the harder of the two to emulate badly:
//! the shard hands over buffers and gets them back in [`Event`]s; it never touches a file
//! descriptor after [`Driver::register`], and it frees a connection slot only when
//! [`Event::Released`] says the driver (and the kernel) hold nothing of it any more.
//!
//! This crate (`ringcast-io`) holds ringcast's unsafe code besides the protocol core's SIMD
//! kernels: the ring and its provided buffers, the eventfd, the start-up probe, and the
//! allocator tuning ([`alloc`]); every block carries a `// SAFETY:` line. Being its own
//! crate lets the server crate forbid unsafe outright (docs/DESIGN.md, "Crates and process
//! boundaries").

#![deny(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;

pub mod alloc;
pub mod bufring;
pub mod epoll;
pub mod probe;
pub mod uring;
pub mod wake;

/// Names one connection slot of a shard for the driver. `gen` distinguishes successive
/// connections that reuse a slot, so a late completion can never be taken for the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    /// Index into the shard's connection table.
    pub slot: u32,
    /// Incremented each time the slot is reused.
    pub generation: u32,
}

/// What a loop turn brings. Borrowed data is only valid until the next call to
/// [`Driver::next_event`].
#[derive(Debug)]
pub enum Event<'a> {
    /// A new TCP connection on one of this shard's listeners.
    Accepted(OwnedFd),
    /// Accepting failed (EMFILE, ENFILE, ENOMEM...): counted and logged by the shard; the
    /// driver keeps accepting.
    AcceptError(io::Error),
    /// Bytes received on a connection. Mutable so the protocol core can unmask in place.
    Data { token: Token, data: &'a mut [u8] },
    /// The receive side ended: `None` is an orderly EOF from the peer.
    RecvClosed {
        token: Token,
        error: Option<io::Error>,
    },
    /// A [`Driver::send`] finished: every byte was written (`Ok`) or the socket failed.
    /// The frames come back as they are (after a failure, still holding what was not
    /// written); the shard empties the vector once, before reusing the allocation.
    Sent {
        token: Token,
        result: io::Result<usize>,
        frames: Vec<Bytes>,
    },
    /// Another shard asked for attention (its inbox has entries).
    Wake,
    /// The connection is fully closed: no operation of it is left in the kernel, and its
    /// slot may be reused.
    Released { token: Token },
}

impl Event<'static> {
    /// A send that never reached the socket, or was cut off (`kind` says why).
    pub(crate) fn send_failed(token: Token, kind: io::ErrorKind, frames: Vec<Bytes>) -> Self {
        Event::Sent {
            token,
            result: Err(io::Error::from(kind)),
            frames,
        }
    }
}

/// Where to send a wake-up to a shard; made by that shard's driver.
#[derive(Clone, Debug)]
pub enum WakeTarget {
    /// io_uring: from another shard, an `IORING_OP_MSG_RING` to `ring`, queued in the
    /// sender's own ring so that it costs no extra system call; from any other thread, a
    /// write to `event`, on which the shard keeps a read armed.
    Ring {
        /// The target shard's ring fd.
        ring: std::os::fd::RawFd,
        /// The target shard's eventfd.
        event: std::sync::Arc<wake::EventFd>,
    },
    /// epoll: mio's eventfd-backed waker (usable from any thread).
    Mio(std::sync::Arc<mio::Waker>),
}

impl WakeTarget {
    /// Wakes the shard from a thread that is not a shard (one system call). Shards use
    /// [`Driver::wake`] instead, which batches the wake-up into their next submission.
    pub fn wake_from_any_thread(&self) {
        match self {
            WakeTarget::Ring { event, .. } => event.signal(),
            WakeTarget::Mio(w) => {
                if let Err(e) = w.wake() {
                    tracing::warn!(error = %e, "waking a shard failed");
                }
            }
        }
    }
}

/// Counters a driver keeps about itself, read by the shard's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverStats {
    /// Times the kernel was entered (io_uring_enter / epoll_wait).
    pub submissions: u64,
    /// Receive buffers currently lent out (must return to zero between events).
    pub buffers_in_use: u32,
    /// Times multishot receive ran out of provided buffers and was re-armed.
    pub recv_buffer_exhausted: u64,
    /// Wake-ups that came through the eventfd (from a thread that is not a shard); on
    /// epoll, mio's waker does not tell them apart and this stays 0.
    pub external_wakes: u64,
    /// Receive completions naming a buffer the kernel could not have filled; each closed
    /// its connection (its byte stream would be corrupt).
    pub recv_bad_buffer: u64,
}

/// One backend's view of the kernel for one shard. Call order per loop turn:
/// `wait` (submits queued work and blocks for at least one event or the timeout), then
/// `next_event` until `None`, then `send`/`release`/`wake` for what the turn produced.
pub trait Driver {
    /// Which backend this is, for the start-up line and metrics.
    fn name(&self) -> &'static str;
    /// How other shards wake this one.
    fn wake_target(&self) -> WakeTarget;
    /// Takes ownership of a connected socket and starts receiving on it.
    fn register(&mut self, token: Token, fd: OwnedFd) -> io::Result<()>;
    /// Writes all of `frames`, in order, as one vectored send (continuing after short
    /// writes). At most one send per token may be outstanding.
    fn send(&mut self, token: Token, frames: Vec<Bytes>);
    /// Closes the connection: stops receiving, abandons nothing the kernel still holds, and
    /// emits [`Event::Released`] once no operation of it is left.
    fn release(&mut self, token: Token);
    /// Stops receiving from a connection (backpressure: its send queue is over its
    /// limit, so the shard reads no more requests whose replies it would have to queue).
    /// Data already received, or completing while the stop takes effect, may still
    /// arrive as [`Event::Data`]. Idempotent; a released token is ignored.
    fn pause_recv(&mut self, token: Token);
    /// Starts receiving again after [`Driver::pause_recv`], including bytes that arrived
    /// while paused. Idempotent.
    fn resume_recv(&mut self, token: Token);
    /// Queues a wake-up for another shard (delivered with the next submission).
    fn wake(&mut self, target: &WakeTarget);
    /// Submits queued work and waits for events, at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> io::Result<()>;
    /// The next event of this turn, or `None` when the turn's events are exhausted.
    fn next_event(&mut self) -> Option<Event<'_>>;
    /// Counters for metrics.
    fn stats(&self) -> DriverStats;
    /// Frees reusable buffers kept for sends; the shard calls it when a tick passed with no
    /// send, so pools sized by a burst do not stay allocated while idle.
    fn trim(&mut self) {}
}

/// Whether an accept error means "out of descriptors or memory", after which accepting
/// again at once fails again at once (the connection stays in the backlog): the drivers back
/// off (retry on a timer, or as soon as they close a descriptor) instead of spinning. Other
/// errors concern only the failed connection, and accepting goes on.
pub fn accept_backs_off(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Bytes of the frames in a send, for accounting.
pub fn frames_len(frames: &[Bytes]) -> usize {
    frames.iter().map(Bytes::len).sum()
}

/// Listeners whose accept back-off (see [`accept_backs_off`]) has ended by `now` go to
/// `retry`; returns `timeout` cut to the nearest end still ahead. Shared by both drivers.
pub(crate) fn expire_accept_backoffs(
    backoff: &mut [Option<std::time::Instant>],
    now: std::time::Instant,
    mut timeout: Duration,
    retry: &mut Vec<usize>,
) -> Duration {
    for (i, b) in backoff.iter_mut().enumerate() {
        if let Some(until) = *b {
            if until <= now {
                *b = None;
                retry.push(i);
            } else {
                timeout = timeout.min(until - now);
            }
        }
    }
    timeout
}

/// A descriptor was freed: every listener backing off goes to `retry` at once.
pub(crate) fn end_accept_backoffs(
    backoff: &mut [Option<std::time::Instant>],
    retry: &mut Vec<usize>,
) {
    for (i, b) in backoff.iter_mut().enumerate() {
        if b.take().is_some() {
            retry.push(i);
        }
    }
}
