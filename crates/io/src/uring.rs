//! The io_uring backend: one ring per shard, created on the shard's own thread.
//!
//! - Ring set-up: `SINGLE_ISSUER | DEFER_TASKRUN` (completion work runs only when this thread
//!   asks for events, so it never interrupts the loop), falling back to `COOP_TASKRUN`, then
//!   plain, on kernels without them. The completion queue is sized generously because every
//!   connection's multishot receive can post into it.
//! - Multishot accept on each listener; multishot receive into the shard's
//!   [`BufRing`](super::bufring::BufRing); re-armed when the kernel ends them (`ENOBUFS`
//!   when the buffer ring ran dry, or no `IORING_CQE_F_MORE`).
//! - One vectored `sendmsg` per connection per turn, continued after short writes.
//! - Wake-ups from other shards arrive as `IORING_OP_MSG_RING` completions.
//! - Everything is submitted by a single `io_uring_enter` per loop turn ([`Driver::wait`]).
//!
//! Ownership: a send's frames, iovecs and `msghdr` live in a boxed [`SendOp`] held by the
//! connection's slot until the kernel posts the send's completion, whatever happened to the
//! connection meanwhile. A slot's file descriptor is closed only after its receive and send
//! have both completed; only then is [`Event::Released`] emitted.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::bufring::BufRing;
use super::wake::EventFd;
use super::{Driver, DriverStats, Event, Token, WakeTarget};

/// Buffer group id of the shard's receive buffer ring.
const BGID: u16 = 0;
/// Send ops kept for reuse once the shard is idle (under load the pool keeps as many as the
/// load needs: allocating and freeing an op per send per turn measurably cost throughput).
const SEND_POOL_IDLE: usize = 64;
/// The most iovecs one `sendmsg` takes (IOV_MAX on Linux).
const MAX_IOV: usize = 1024;

// user_data layout: kind (8 bits) | generation (24 bits) | slot (32 bits).
const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_WAKE: u64 = 4;
const K_IGNORE: u64 = 5;
const K_SHUTDOWN: u64 = 6;
/// The read armed on the shard's eventfd (wake-ups from threads that are not shards).
const K_EVENTFD: u64 = 8;
/// The cancel of a paused connection's multishot receive.
const K_PAUSE: u64 = 7;
/// How long accepting pauses after EMFILE, ENFILE, ENOBUFS or ENOMEM (retried sooner when
/// this driver closes a descriptor).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn ud(kind: u64, token: Token) -> u64 {
    (kind << 56) | ((u64::from(token.generation) & 0xff_ffff) << 32) | u64::from(token.slot)
}

fn ud_kind(ud: u64) -> u64 {
    ud >> 56
}

fn ud_slot(ud: u64) -> u32 {
    (ud & 0xffff_ffff) as u32
}

fn ud_gen(ud: u64) -> u32 {
    ((ud >> 32) & 0xff_ffff) as u32
}

/// Settings the shard passes to its driver.
#[derive(Debug, Clone, Copy)]
pub struct UringSettings {
    /// Submission queue entries.
    pub ring_entries: u32,
    /// Receive buffers in the provided-buffer ring.
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    pub recv_buffer_size: u32,
}

/// A send in flight: everything the kernel reads from until the completion arrives.
struct SendOp {
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// Bytes of `frames` already written.
    done: usize,
    total: usize,
}

impl SendOp {
    fn new() -> Box<Self> {
        Box::new(SendOp {
            frames: Vec::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
            msg: unsafe { std::mem::zeroed() },
            done: 0,
            total: 0,
        })
    }

    /// The submission entry for the prepared part: a plain `send` when it is one buffer
    /// (the common case at low rates: one message per turn), which spares the kernel
    /// copying and checking a `msghdr` and an iovec array (about 8% of a send's kernel time
    /// in a profile at 100 k deliveries/s); a vectored `sendmsg` otherwise.
    fn entry(&self, fd: RawFd) -> squeue::Entry {
        if let [one] = self.iov.as_slice() {
            let len = u32::try_from(one.iov_len).unwrap_or(u32::MAX);
            opcode::Send::new(types::Fd(fd), one.iov_base.cast::<u8>(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            opcode::SendMsg::new(types::Fd(fd), &self.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        }
    }

    /// Points the iovecs at the unsent part of `frames` (at most [`MAX_IOV`] of them).
    fn prepare(&mut self) {
        self.iov.clear();
        let mut skip = self.done;
        for f in &self.frames {
            if self.iov.len() == MAX_IOV {
                break;
            }
            if skip >= f.len() {
                skip -= f.len();
                continue;
            }
            self.iov.push(libc::iovec {
                iov_base: f[skip..].as_ptr() as *mut libc::c_void,
                iov_len: f.len() - skip,
            });
            skip = 0;
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
    }
}

#[derive(Default)]
struct Slot {
    generation: u32,
    fd: Option<OwnedFd>,
    recv_active: bool,
    recv_rearm: bool,
    send: Option<Box<SendOp>>,
    /// A shutdown entry names this fd by number and may run late (io-wq): the fd must stay
    /// open until its completion.
    shutdown_pending: bool,
    releasing: bool,
    /// Backpressure: the receive is cancelled and not re-armed until resumed.
    paused: bool,
    /// The pause's cancel has not completed: no new receive may be armed before it has
    /// (the cancel matches by user_data and would hit it).
    cancel_pending: bool,
    /// A completion named a buffer the kernel could not have filled: the stream is corrupt,
    /// nothing more of it is delivered.
    recv_broken: bool,
}

/// `IOU_PBUF_RING_INC` from the kernel ABI (the crate defines it but does not export it).
const IOU_PBUF_RING_INC: u16 = 2;

/// The io_uring driver of one shard. Field order matters for drop: the ring goes before
/// the buffer ring it points into.
pub struct UringDriver {
    ring: IoUring,
    bufs: BufRing,
    listeners: Vec<OwnedFd>,
    accept_rearm: Vec<usize>,
    /// Listeners not re-armed until this instant (resource errors: see
    /// [`super::accept_backs_off`]).
    accept_backoff: Vec<Option<std::time::Instant>>,
    /// Entries that did not fit in a full submission queue whose submit failed: pushed
    /// first at the next [`Driver::wait`], so no operation the slots count as in flight is
    /// ever lost.
    overflow: VecDeque<squeue::Entry>,
    #[cfg(test)]
    fail_submit: bool,
    slots: Vec<Slot>,
    rearm_recv: Vec<u32>,
    /// Buffer lent out by the last `Data` event, returned on the next `next_event`.
    lent: Option<u16>,
    ready: VecDeque<Event<'static>>,
    // Boxed on purpose: the kernel holds pointers into a SendOp (its msghdr and iovecs)
    // while the op is in flight, so its address must not move when the pool grows.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendOp>>,
    stats: DriverStats,
    /// Wake-ups from threads that are not shards (see `io::wake`).
    event: Arc<EventFd>,
    /// Where the armed eventfd read writes its counter: the kernel owns it while the read
    /// is in flight (`event_armed`), so it is boxed (stable address) and leaked on drop if
    /// the read is still armed.
    event_buf: Box<u64>,
    event_armed: bool,
}

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field("ring_fd", &self.ring.as_raw_fd())
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Builds a ring with the best set-up flags this kernel accepts.
pub fn build_ring(entries: u32) -> io::Result<IoUring> {
    let cq = (entries.saturating_mul(8)).clamp(entries, 65536);
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        },
        |b| {
            b.setup_coop_taskrun();
        },
        |_| {},
    ];
    let mut last = None;
    for set in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_submit_all();
        set(&mut b);
        match b.build(entries) {
            Ok(r) => return Ok(r),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::Unsupported)))
}

impl UringDriver {
    /// Creates the ring (on the calling thread, which must be the shard's), registers the
    /// buffer ring and arms multishot accept on every listener.
    pub fn new(settings: UringSettings, listeners: Vec<OwnedFd>) -> io::Result<Self> {
        let ring = build_ring(settings.ring_entries)?;
        let bufs = BufRing::new(settings.recv_buffers, settings.recv_buffer_size)?;
        // Incremental consumption where the kernel has it (6.12+), plain otherwise: the
        // completions say which (`IORING_CQE_F_BUF_MORE`), so nothing else depends on it.
        let register = |flags: u16| {
            // SAFETY: the buffer ring's memory stays valid until the ring is unregistered in
            // `Drop`, before `bufs` is freed.
            unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    bufs.ring_addr(),
                    bufs.entries(),
                    BGID,
                    flags,
                )
            }
        };
        if let Err(e) = register(IOU_PBUF_RING_INC) {
            tracing::debug!(error = %e, "incremental buffer consumption unavailable");
            register(0)?;
        }
        let mut d = UringDriver {
            ring,
            bufs,
            accept_rearm: (0..listeners.len()).collect(),
            accept_backoff: vec![None; listeners.len()],
            overflow: VecDeque::new(),
            #[cfg(test)]
            fail_submit: false,
            listeners,
            slots: Vec::new(),
            rearm_recv: Vec::new(),
            lent: None,
            ready: VecDeque::new(),
            send_pool: Vec::new(),
            stats: DriverStats::default(),
            event: Arc::new(EventFd::new()?),
            event_buf: Box::new(0),
            event_armed: false,
        };
        d.rearm();
        Ok(d)
    }

    /// Pushes an entry, submitting first if the submission queue is full. If that submit
    /// fails (other than EBUSY/EINTR, which are retried), the entry waits in `overflow`,
    /// in order, for the next [`Driver::wait`]; if the submission there fails too, `wait`
    /// returns the error and the shard stops. An entry is never dropped.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(entry);
            return;
        }
        if !self.try_push(&entry) {
            self.overflow.push_back(entry);
        }
    }

    /// Pushes one entry, submitting when the queue is full; false if the submit failed.
    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        loop {
            // SAFETY: every entry pushed here points only at memory that outlives the
            // operation: listener and connection fds owned by this driver until their
            // operations complete, and boxed SendOps held in their slot until completion.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return true;
            }
            self.stats.submissions += 1;
            #[cfg(test)]
            if self.fail_submit {
                return false;
            }
            if let Err(e) = self.ring.submit()
                && e.raw_os_error() != Some(libc::EBUSY)
                && e.raw_os_error() != Some(libc::EINTR)
            {
                tracing::warn!(error = %e, "io_uring submit with a full submission queue failed; retried next turn");
                return false;
            }
        }
    }

    /// Moves `overflow` into the submission queue (submitting as it fills).
    fn push_overflow(&mut self) {
        while let Some(e) = self.overflow.pop_front() {
            if !self.try_push(&e) {
                self.overflow.push_front(e);
                return;
            }
        }
    }

    /// A descriptor was freed: listeners backing off at the descriptor limit re-arm now.
    fn retry_accept_now(&mut self) {
        super::end_accept_backoffs(&mut self.accept_backoff, &mut self.accept_rearm);
    }

    fn rearm(&mut self) {
        if !self.event_armed {
            self.event_armed = true;
            let buf: *mut u64 = &mut *self.event_buf;
            let e = opcode::Read::new(types::Fd(self.event.raw()), buf.cast::<u8>(), 8)
                .build()
                .user_data(K_EVENTFD << 56);
            self.push(e);
        }
        self.push_overflow();
        for i in std::mem::take(&mut self.accept_rearm) {
            if self.accept_backoff.get(i).is_some_and(Option::is_some) {
                continue;
            }
            let Some(fd) = self.listeners.get(i).map(AsRawFd::as_raw_fd) else {
                continue;
            };
            let e = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data((K_ACCEPT << 56) | i as u64);
            self.push(e);
        }
        for slot in std::mem::take(&mut self.rearm_recv) {
            self.arm_recv(slot);
        }
    }

    fn arm_recv(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.recv_rearm = false;
        if s.releasing || s.recv_active || s.paused || s.cancel_pending || s.recv_broken {
            return;
        }
        let Some(fd) = s.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        s.recv_active = true;
        let token = Token {
            slot,
            generation: s.generation,
        };
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(ud(K_RECV, token));
        self.push(e);
    }

    /// The live slot a completion belongs to (not a later connection in the same slot).
    fn slot_of(&self, user_data: u64) -> Option<Token> {
        let slot = ud_slot(user_data);
        let s = self.slots.get(slot as usize)?;
        (s.generation & 0xff_ffff == ud_gen(user_data) && s.fd.is_some()).then_some(Token {
            slot,
            generation: s.generation,
        })
    }

    /// Accounts for a receive completion's buffer whose data nobody reads.
    fn discard(&mut self, bid: u16, res: i32, buf_more: bool) {
        let len = usize::try_from(res).unwrap_or(0);
        if self.bufs.take(bid, len, buf_more).is_some() {
            self.bufs.recycle(bid);
        }
    }

    /// Closes a releasing slot once nothing of it is left in the kernel.
    fn maybe_finish(&mut self, token: Token) {
        let Some(s) = self.slots.get_mut(token.slot as usize) else {
            return;
        };
        if s.releasing && !s.recv_active && s.send.is_none() && !s.shutdown_pending {
            s.fd = None; // close(2): no operation refers to it any more
            s.releasing = false;
            self.ready.push_back(Event::Released { token });
            self.retry_accept_now();
        }
    }

    fn on_send(&mut self, user_data: u64, res: i32) -> Option<Event<'static>> {
        let token = self.slot_of(user_data)?;
        let s = &mut self.slots[token.slot as usize];
        let mut op = s.send.take()?;
        if res > 0 {
            op.done += res as usize;
            if op.done < op.total && !s.releasing {
                op.prepare();
                let fd = s.fd.as_ref().map(AsRawFd::as_raw_fd)?;
                let e = op.entry(fd).user_data(ud(K_SEND, token));
                s.send = Some(op);
                self.push(e);
                return None;
            }
        }
        let result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else if op.done < op.total {
            Err(io::Error::from(io::ErrorKind::WriteZero))
        } else {
            Ok(op.total)
        };
        let frames = std::mem::take(&mut op.frames);
        op.iov.clear();
        self.send_pool.push(op);
        self.maybe_finish(token);
        Some(Event::Sent {
            token,
            result,
            frames,
        })
    }
}

impl Driver for UringDriver {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn wake_target(&self) -> WakeTarget {
        WakeTarget::Ring {
            ring: self.ring.as_raw_fd(),
            event: Arc::clone(&self.event),
        }
    }

    fn register(&mut self, token: Token, fd: OwnedFd) -> io::Result<()> {
        let idx = token.slot as usize;
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, Slot::default);
        }
        let s = &mut self.slots[idx];
        if s.fd.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "slot still in use",
            ));
        }
        *s = Slot {
            generation: token.generation,
            fd: Some(fd),
            ..Slot::default()
        };
        self.arm_recv(token.slot);
        Ok(())
    }

    fn send(&mut self, token: Token, frames: Vec<Bytes>) {
        let Some(s) = self.slots.get_mut(token.slot as usize) else {
            return;
        };
        let fd = match (&s.fd, s.generation == token.generation, s.send.is_some()) {
            (Some(fd), true, false) if !s.releasing => fd.as_raw_fd(),
            _ => {
                self.ready.push_back(Event::send_failed(
                    token,
                    io::ErrorKind::NotConnected,
                    frames,
                ));
                return;
            }
        };
        let mut op = self.send_pool.pop().unwrap_or_else(SendOp::new);
        op.total = super::frames_len(&frames);
        op.frames = frames;
        op.done = 0;
        op.prepare();
        let e = op.entry(fd).user_data(ud(K_SEND, token));
        s.send = Some(op);
        self.push(e);
    }

    fn release(&mut self, token: Token) {
        let Some(s) = self.slots.get_mut(token.slot as usize) else {
            return;
        };
        if s.generation != token.generation || s.fd.is_none() || s.releasing {
            return;
        }
        s.releasing = true;
        let Some(fd) = s.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let recv_active = s.recv_active;
        if !recv_active && s.send.is_none() {
            // Nothing in flight: close now. No entry naming this fd *number* may be queued
            // after this point, or it would hit whichever socket reuses the number.
            self.maybe_finish(token);
            return;
        }
        // shutdown() ends the multishot receive with EOF and fails a pending send, so both
        // completions arrive promptly; the cancel covers a socket shutdown cannot reach. The
        // fd stays open until those completions arrive, which is after these entries were
        // submitted, so they cannot reach a reused fd number.
        s.shutdown_pending = true;
        self.push(
            opcode::Shutdown::new(types::Fd(fd), libc::SHUT_RDWR)
                .build()
                .user_data(ud(K_SHUTDOWN, token)),
        );
        if recv_active {
            self.push(
                opcode::AsyncCancel::new(ud(K_RECV, token))
                    .build()
                    .user_data(K_IGNORE << 56),
            );
        }
    }

    fn pause_recv(&mut self, token: Token) {
        let Some(s) = self.slots.get_mut(token.slot as usize) else {
            return;
        };
        if s.generation != token.generation || s.fd.is_none() || s.releasing || s.paused {
            return;
        }
        s.paused = true;
        if s.recv_active && !s.cancel_pending {
            // Completions already posted, or posted before the cancel takes effect, are
            // still delivered (dropping them would corrupt the stream); the final one
            // (ECANCELED, or data without F_MORE) is not followed by a re-arm while paused.
            s.cancel_pending = true;
            self.push(
                opcode::AsyncCancel::new(ud(K_RECV, token))
                    .build()
                    .user_data(ud(K_PAUSE, token)),
            );
        }
    }

    fn resume_recv(&mut self, token: Token) {
        let Some(s) = self.slots.get_mut(token.slot as usize) else {
            return;
        };
        if s.generation != token.generation || !s.paused {
            return;
        }
        s.paused = false;
        // Re-armed next submission if the receive has ended and its cancel completed;
        // otherwise when the later of the two completions arrives.
        if !s.recv_active && !s.cancel_pending && !s.recv_rearm {
            s.recv_rearm = true;
            self.rearm_recv.push(token.slot);
        }
    }

    fn wake(&mut self, target: &WakeTarget) {
        if let WakeTarget::Ring { ring, .. } = target {
            let e = opcode::MsgRingData::new(types::Fd(*ring), 0, K_WAKE << 56, None)
                .build()
                .user_data(K_IGNORE << 56)
                .flags(squeue::Flags::SKIP_SUCCESS);
            self.push(e);
        }
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if let Some(bid) = self.lent.take() {
            self.bufs.recycle(bid);
        }
        let mut timeout = timeout;
        let now = std::time::Instant::now();
        timeout = super::expire_accept_backoffs(
            &mut self.accept_backoff,
            now,
            timeout,
            &mut self.accept_rearm,
        );
        self.bufs.replenish();
        self.rearm();
        let want = if self.ready.is_empty() && self.ring.completion().is_empty() {
            1
        } else {
            0
        };
        self.stats.submissions += 1;
        submit_wait(&self.ring, want, timeout)
    }

    fn next_event(&mut self) -> Option<Event<'_>> {
        if let Some(bid) = self.lent.take() {
            self.bufs.recycle(bid);
        }
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            let cqe = self.ring.completion().next()?;
            let (user_data, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            match ud_kind(user_data) {
                K_EVENTFD => {
                    // Counter read (or the read failed): re-armed before the next wait.
                    self.event_armed = false;
                    self.stats.external_wakes += 1;
                    return Some(Event::Wake);
                }
                K_ACCEPT => {
                    let idx = (user_data & 0xffff_ffff) as usize;
                    if !cqueue::more(flags) {
                        let err = (res < 0).then(|| io::Error::from_raw_os_error(-res));
                        if err.as_ref().is_some_and(super::accept_backs_off) {
                            // Re-armed at once it would fail at once while a connection
                            // waits in the backlog: the loop would never sleep.
                            if let Some(b) = self.accept_backoff.get_mut(idx) {
                                *b = Some(std::time::Instant::now() + ACCEPT_BACKOFF);
                            }
                        }
                        self.accept_rearm.push(idx);
                    }
                    if res >= 0 {
                        // SAFETY: a non-negative accept result is a new file descriptor that
                        // nothing else owns.
                        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) };
                        return Some(Event::Accepted(fd));
                    }
                    if res != -libc::ECANCELED {
                        return Some(Event::AcceptError(io::Error::from_raw_os_error(-res)));
                    }
                }
                K_RECV => {
                    let bid = cqueue::buffer_select(flags);
                    let buf_more = cqueue::buffer_more(flags);
                    let Some(token) = self.slot_of(user_data) else {
                        if let Some(bid) = bid {
                            self.discard(bid, res, buf_more);
                        }
                        continue;
                    };
                    let s = &mut self.slots[token.slot as usize];
                    let more = cqueue::more(flags);
                    if !more {
                        s.recv_active = false;
                    }
                    let releasing = s.releasing;
                    if s.recv_broken {
                        if let Some(bid) = bid {
                            self.discard(bid, res, buf_more);
                        }
                        if releasing {
                            self.maybe_finish(token);
                        }
                        continue;
                    }
                    if res > 0 {
                        let Some(bid) = bid else { continue };
                        if releasing {
                            self.discard(bid, res, buf_more);
                            self.maybe_finish(token);
                            continue;
                        }
                        if !more {
                            self.rearm_recv.push(token.slot);
                        }
                        if !self.bufs.can_take(bid, res as usize) {
                            // Skipping these bytes would hand the protocol core a stream
                            // with a hole in it: close the connection instead.
                            self.stats.recv_bad_buffer += 1;
                            tracing::error!(
                                bid,
                                res,
                                "receive completion outside the buffer ring, closing"
                            );
                            let s = &mut self.slots[token.slot as usize];
                            s.recv_broken = true;
                            return Some(Event::RecvClosed {
                                token,
                                error: Some(io::Error::from(io::ErrorKind::InvalidData)),
                            });
                        }
                        self.lent = Some(bid);
                        let data = self.bufs.take(bid, res as usize, buf_more)?;
                        return Some(Event::Data { token, data });
                    }
                    if let Some(bid) = bid {
                        self.discard(bid, res, buf_more);
                    }
                    if releasing {
                        self.maybe_finish(token);
                        continue;
                    }
                    if res == -libc::ECANCELED && !more {
                        // The pause's cancel ended it; resumed meanwhile: re-arm.
                        let s = &mut self.slots[token.slot as usize];
                        if !s.paused && !s.cancel_pending && !s.recv_rearm {
                            s.recv_rearm = true;
                            self.rearm_recv.push(token.slot);
                        }
                        continue;
                    }
                    if res == -libc::ENOBUFS {
                        // The buffer ring ran dry: buffers come back as events are handled,
                        // so re-arm on the next submission.
                        self.stats.recv_buffer_exhausted += 1;
                        self.bufs.note_exhausted();
                        let s = &mut self.slots[token.slot as usize];
                        if !s.recv_rearm {
                            s.recv_rearm = true;
                            self.rearm_recv.push(token.slot);
                        }
                        continue;
                    }
                    if more {
                        continue;
                    }
                    let error = (res < 0).then(|| io::Error::from_raw_os_error(-res));
                    return Some(Event::RecvClosed { token, error });
                }
                K_SEND => {
                    if let Some(ev) = self.on_send(user_data, res) {
                        return Some(ev);
                    }
                }
                K_WAKE => return Some(Event::Wake),
                K_PAUSE => {
                    if let Some(token) = self.slot_of(user_data) {
                        let s = &mut self.slots[token.slot as usize];
                        s.cancel_pending = false;
                        if !s.paused && !s.recv_active && !s.recv_rearm && !s.releasing {
                            s.recv_rearm = true;
                            self.rearm_recv.push(token.slot);
                        }
                    }
                }
                K_SHUTDOWN => {
                    if let Some(token) = self.slot_of(user_data) {
                        self.slots[token.slot as usize].shutdown_pending = false;
                        self.maybe_finish(token);
                    }
                }
                _ => {}
            }
        }
    }

    fn trim(&mut self) {
        self.send_pool.truncate(SEND_POOL_IDLE);
        self.send_pool.shrink_to_fit();
        self.bufs.trim();
    }

    fn stats(&self) -> DriverStats {
        DriverStats {
            buffers_in_use: self.bufs.lent(),
            ..self.stats
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Stop the kernel from picking buffers before the buffer memory goes away; in-flight
        // sends are cancelled when the ring itself is torn down, and their SendOps (leaked
        // below, if any) must outlive that.
        if let Err(e) = self.ring.submitter().unregister_buf_ring(BGID) {
            tracing::debug!(error = %e, "unregistering the buffer ring");
        }
        if self.event_armed {
            // The armed eventfd read may still write its counter until the ring is gone.
            std::mem::forget(std::mem::replace(&mut self.event_buf, Box::new(0)));
        }
        for s in &mut self.slots {
            if let Some(op) = s.send.take() {
                // The kernel may still read these iovecs until the ring is gone: leak rather
                // than free memory an operation owns. Only happens at shard exit.
                std::mem::forget(op);
            }
        }
    }
}

/// Submits queued entries and waits for `want` completions or `timeout`. A timeout, a signal
/// or a full completion queue (EBUSY: completions are waiting to be reaped) is not an error.
pub fn submit_wait(ring: &IoUring, want: usize, timeout: Duration) -> io::Result<()> {
    let ts = types::Timespec::from(timeout);
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(want, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The raw fd of a listener, for the shard's logs.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn driver(ring_entries: u32) -> Option<UringDriver> {
        let settings = UringSettings {
            ring_entries,
            recv_buffers: 16,
            recv_buffer_size: 4096,
        };
        // Sandboxes without io_uring skip these tests (the probe decides in production).
        UringDriver::new(settings, Vec::new()).ok()
    }

    /// Events of the next turns until `done` holds or 2 s pass, as (kind, token, ok).
    fn collect(
        d: &mut UringDriver,
        mut done: impl FnMut(&[(char, Token, bool)]) -> bool,
    ) -> Vec<(char, Token, bool)> {
        let mut seen = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(2);
        while !done(&seen) && std::time::Instant::now() < end {
            d.wait(Duration::from_millis(20)).unwrap();
            while let Some(ev) = d.next_event() {
                match ev {
                    Event::Sent { token, result, .. } => seen.push(('s', token, result.is_ok())),
                    Event::RecvClosed { token, error } => seen.push((
                        'c',
                        token,
                        error.is_some_and(|e| e.kind() == io::ErrorKind::InvalidData),
                    )),
                    Event::Data { token, .. } => seen.push(('d', token, true)),
                    _ => {}
                }
            }
        }
        seen
    }

    fn tok(slot: u32) -> Token {
        Token {
            slot,
            generation: 1,
        }
    }

    #[test]
    fn a_failed_submit_loses_no_entry() {
        let Some(mut d) = driver(8) else { return };
        let mut peers = Vec::new();
        // Twenty receives and twenty sends through an 8-entry submission queue whose
        // submit "fails": the entries that do not fit must wait, not vanish.
        d.fail_submit = true;
        for slot in 0..20 {
            let (a, b) = UnixStream::pair().unwrap();
            d.register(tok(slot), OwnedFd::from(a)).unwrap();
            d.send(tok(slot), vec![Bytes::from_static(b"hello")]);
            peers.push(b);
        }
        assert!(!d.overflow.is_empty());
        d.fail_submit = false;
        let seen = collect(&mut d, |s| s.iter().filter(|e| e.0 == 's').count() == 20);
        let sent = seen.iter().filter(|e| e.0 == 's' && e.2).count();
        assert_eq!(sent, 20, "every send completes: {seen:?}");
        for mut p in peers {
            let mut buf = [0u8; 5];
            std::io::Read::read_exact(&mut p, &mut buf).unwrap();
            assert_eq!(&buf, b"hello");
        }
    }

    #[test]
    fn an_impossible_receive_buffer_closes_the_connection() {
        let Some(mut d) = driver(8) else { return };
        let (a, _b) = UnixStream::pair().unwrap();
        d.register(tok(0), OwnedFd::from(a)).unwrap();
        // A completion for this connection's receive naming buffer 999 (the ring has 16),
        // posted through MSG_RING with the receive's user_data and buffer flags.
        // IORING_CQE_F_BUFFER | IORING_CQE_F_MORE, buffer id above IORING_CQE_BUFFER_SHIFT.
        let flags: u32 = 1 | 2 | (999 << 16);
        let fd = d.ring.as_raw_fd();
        d.push(
            opcode::MsgRingData::new(types::Fd(fd), 100, ud(K_RECV, tok(0)), Some(flags))
                .build()
                .user_data(K_IGNORE << 56),
        );
        let seen = collect(&mut d, |s| !s.is_empty());
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|x| x.parse::<u32>().ok());
        if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (6, 3) {
            return; // no IORING_MSG_RING_FLAGS_PASS before 6.3
        }
        assert_eq!(
            seen,
            vec![('c', tok(0), true)],
            "closed as corrupt, no data delivered"
        );
        assert_eq!(d.stats().recv_bad_buffer, 1);
    }

    /// The owner of a frame's bytes: counts its drop, so a test sees when the last
    /// reference to the frame went.
    struct Probe {
        data: Vec<u8>,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl AsRef<[u8]> for Probe {
        fn as_ref(&self) -> &[u8] {
            &self.data
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_released_connection_keeps_its_frames_until_the_send_completes() {
        let settings = UringSettings {
            ring_entries: 8,
            recv_buffers: 16,
            recv_buffer_size: 4096,
        };
        let mut d = match UringDriver::new(settings, Vec::new()) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipped: io_uring is unavailable here ({e})");
                return;
            }
        };
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gone = || dropped.load(std::sync::atomic::Ordering::SeqCst);
        // 8 MiB towards a peer that never reads, through a small send buffer: the send
        // stays in the kernel, reading these bytes, for as long as the test wants.
        let frame = Bytes::from_owner(Probe {
            data: vec![0x5a; 8 << 20],
            dropped: Arc::clone(&dropped),
        });
        let (a, peer) = UnixStream::pair().unwrap();
        socket2::SockRef::from(&a)
            .set_send_buffer_size(4096)
            .unwrap();
        d.register(tok(0), OwnedFd::from(a)).unwrap();
        d.send(tok(0), vec![frame]);
        // A few turns: the kernel takes what fits, the rest waits for the peer.
        for _ in 0..5 {
            d.wait(Duration::from_millis(10)).unwrap();
            while let Some(ev) = d.next_event() {
                assert!(
                    !matches!(ev, Event::Sent { .. } | Event::Released { .. }),
                    "the send cannot finish while the peer does not read: {ev:?}"
                );
            }
        }
        assert!(d.slots[0].send.is_some(), "the send is in flight");
        assert!(!gone(), "frames alive while their send is in flight");
        d.release(tok(0));
        assert!(!gone(), "release frees nothing the kernel still reads");
        // The release shuts the socket down, which fails the send: its completion hands the
        // frames back (only then may they go), then the slot is released.
        let (mut sent, mut released) = (false, false);
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !released && std::time::Instant::now() < end {
            d.wait(Duration::from_millis(20)).unwrap();
            while let Some(ev) = d.next_event() {
                match ev {
                    Event::Sent { token, frames, .. } => {
                        assert_eq!(token, tok(0));
                        assert!(!gone(), "frames alive until their completion is reported");
                        assert_eq!(frames.len(), 1, "the frames come back with the completion");
                        drop(frames);
                        assert!(gone(), "the completion held the last reference");
                        sent = true;
                    }
                    Event::Released { token } => {
                        assert_eq!(token, tok(0));
                        assert!(sent, "released only after the send completed");
                        released = true;
                    }
                    _ => {}
                }
                assert!(sent || !gone(), "frames freed before their send completed");
            }
        }
        assert!(released, "the connection is released within 5 s");
        drop(peer);
    }
}
