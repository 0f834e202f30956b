//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`) that multishot receive fills.
//!
//! One ring per shard, shared by all its connections: the kernel picks a buffer only when
//! data actually arrives, so an idle connection pins no receive memory (the reason ringcast
//! can hold 10,000 idle clients in a few MiB). The shard lends a buffer to the protocol core
//! for the duration of one [`Event::Data`](super::Event::Data) and gives it straight back.
//!
//! Memory layout: `entries` ring slots of 16 bytes (page-aligned, the kernel maps them) and
//! one contiguous block of `entries * buf_size` bytes for the buffers themselves, mapped
//! with `mmap` and marked `MADV_NOHUGEPAGE`: the kernel writes a few hundred bytes at the
//! start of a buffer for a typical small message, and with transparent huge pages each such
//! write would make a whole 2 MiB page resident (measured: the whole 16 MiB block resident
//! after 10,000 handshakes). Buffer id `i` is always the `i`th `buf_size` chunk.
//!
//! Receive memory follows bytes received, not receives. Two mechanisms:
//! - Incremental consumption (`IOU_PBUF_RING_INC`, Linux 6.12+, used when the kernel takes
//!   it): the kernel packs consecutive receives into the head buffer and hands it over only
//!   when it is full, flagging the partial ones `IORING_CQE_F_BUF_MORE`. Without it every
//!   receive takes a whole buffer, and a connect storm of 256 handshakes of 250 bytes wrote
//!   the first page of 256 buffers: 1 MiB resident, about 100 bytes per connection at
//!   10,000 idle connections. With it the same storm fills a handful of buffers. The driver
//!   tracks where the next receive lands in each buffer (`offset`), as the ABI requires.
//! - An adaptive active set: the kernel takes buffers from the ring in FIFO order, so every
//!   buffer in the ring ends up written however light the traffic. So only `active` buffers
//!   are in the ring at a time; the rest wait in a LIFO spare stack (the most recently used
//!   on top, its pages still warm). `active` starts small, doubles when a turn uses half of
//!   it or the ring runs dry (`ENOBUFS`), and halves on each idle tick
//!   ([`BufRing::trim`]), which also gives the pages of the spare buffers back to the
//!   kernel. A buffer leaves the ring only when the kernel consumes it, so a shrinking ring
//!   drains as traffic trickles in.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::c_void;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// A provided-buffer ring and its buffers. Must outlive its registration: the owner
/// unregisters it (or drops the io_uring) before dropping this.
#[derive(Debug)]
pub struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_len: usize,
    entries: u16,
    buf_size: u32,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    /// Buffers the kernel handed to us and we have not given back yet.
    lent: u32,
    /// Where each buffer is, by id.
    state: Vec<Where>,
    /// Where the kernel writes next in each buffer (non-zero only while it is being
    /// consumed incrementally).
    offset: Vec<u32>,
    /// Buffers in the ring: provided and not yet consumed by the kernel.
    in_ring: u32,
    /// How many buffers the ring should hold (between `MIN_ACTIVE` and `entries`).
    active: u32,
    /// Buffers the kernel consumed since the last [`BufRing::replenish`].
    consumed: u32,
    /// The kernel reported an empty ring since the last [`BufRing::replenish`].
    exhausted: bool,
    /// Buffers out of the ring and not lent, most recently used last.
    spare: Vec<u16>,
    /// Spare buffers written since their pages were last given back (each listed once,
    /// by `is_dirty`).
    dirty: Vec<u16>,
    is_dirty: Vec<bool>,
}

/// Where a buffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    /// Provided to the kernel (possibly partly consumed, with incremental consumption).
    Ring,
    /// Consumed by the kernel and held by the driver.
    Lent,
    /// Ours, out of the ring.
    Spare,
}

/// The smallest active set: enough for the few receives of an idle shard's turn.
const MIN_ACTIVE: u32 = 16;

// SAFETY: the ring owns its allocations exclusively; it is moved into the shard thread before
// registration and never shared, so sending it between threads before use is sound.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Allocates `entries` (a power of two, at most 32768) buffers of `buf_size` bytes and puts
    /// them all in the ring.
    pub fn new(entries: u16, buf_size: u32) -> io::Result<Self> {
        if entries == 0 || !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring entries must be a power of two from 1 to 32768",
            ));
        }
        let ring_layout = Layout::from_size_align(
            usize::from(entries) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bufs_len = usize::from(entries) * buf_size as usize;
        if bufs_len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty buffer ring",
            ));
        }
        let bufs = map_buffers(bufs_len)?;
        // SAFETY: the layout has non-zero size (entries >= 1).
        let ring = NonNull::new(unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>());
        let Some(ring) = ring else {
            unmap(bufs, bufs_len);
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let active = MIN_ACTIVE.min(u32::from(entries));
        let mut br = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_len,
            entries,
            buf_size,
            tail: 0,
            lent: 0,
            state: vec![Where::Spare; usize::from(entries)],
            offset: vec![0; usize::from(entries)],
            in_ring: 0,
            active,
            consumed: 0,
            exhausted: false,
            // Reversed so that the lowest ids come off the stack first.
            spare: (0..entries).rev().collect(),
            dirty: Vec::new(),
            is_dirty: vec![false; usize::from(entries)],
        };
        br.fill();
        br.publish();
        Ok(br)
    }

    /// The address to register with `register_buf_ring_with_flags`.
    pub fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// Number of ring entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Buffers currently lent out.
    pub fn lent(&self) -> u32 {
        self.lent
    }

    /// Buffers currently in the ring.
    pub fn in_ring(&self) -> u32 {
        self.in_ring
    }

    /// The active-set size the ring is kept at.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Whether a completion naming `bid` with `len` bytes is one the kernel could produce:
    /// a buffer in the ring (the kernel fills no other), with room for `len` past its offset.
    pub fn can_take(&self, bid: u16, len: usize) -> bool {
        let i = usize::from(bid);
        bid < self.entries
            && self.state[i] == Where::Ring
            && self.offset[i] as usize + len <= self.buf_size as usize
    }

    /// Takes the `len` bytes a receive completion put in buffer `bid`; `more` is the
    /// completion's `IORING_CQE_F_BUF_MORE` (the kernel keeps filling the buffer).
    ///
    /// Every buffer completion must come through here, also one whose data is discarded,
    /// so that the next one's offset is right. Returns `None` for an id or length the kernel
    /// could not have produced. The caller must call [`BufRing::recycle`] when done with the
    /// slice.
    pub fn take(&mut self, bid: u16, len: usize, more: bool) -> Option<&mut [u8]> {
        if !self.can_take(bid, len) {
            return None;
        }
        let i = usize::from(bid);
        let start = self.offset[i] as usize;
        if more {
            // Still the kernel's: only the bytes up to the new offset are ours to read.
            self.offset[i] = (start + len) as u32;
        } else {
            self.offset[i] = 0;
            self.in_ring -= 1;
            self.consumed += 1;
            self.lent += 1;
            self.state[i] = Where::Lent;
        }
        let at = i * self.buf_size as usize + start;
        // SAFETY: `start + len <= buf_size` and `bid < entries`, so the range lies inside the
        // buffer block. The kernel wrote these bytes before posting the completion and never
        // writes them again: a fully consumed buffer is out of the ring until `recycle`
        // re-adds it, and a partly consumed one is only written past the new offset (which
        // the next completion reports). `&mut self` prevents two live slices of the ring.
        Some(unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(at), len) })
    }

    /// Ends the use of the slice [`BufRing::take`] returned for `bid`. A fully consumed
    /// buffer goes back into the ring, or to the spare stack if the ring already holds its
    /// active set; a partly consumed one stays the kernel's.
    pub fn recycle(&mut self, bid: u16) {
        match self.state.get(usize::from(bid)) {
            Some(Where::Lent) => self.lent -= 1,
            // Partly consumed (still in the ring), or already given back: pushing a buffer
            // twice would let the kernel hand it to two receives.
            Some(Where::Ring | Where::Spare) | None => return,
        }
        if self.in_ring < self.active {
            self.push(bid);
            self.publish();
        } else {
            self.state[usize::from(bid)] = Where::Spare;
            self.spare.push(bid);
            if !self.is_dirty[usize::from(bid)] {
                self.is_dirty[usize::from(bid)] = true;
                self.dirty.push(bid);
            }
        }
    }

    /// Notes that the kernel found the ring empty (a receive ended with `ENOBUFS`).
    pub fn note_exhausted(&mut self) {
        self.exhausted = true;
    }

    /// Once per loop turn, before submitting: grows the active set if the last turn used
    /// half of it or ran it dry, and tops the ring up to it from the spare stack.
    pub fn replenish(&mut self) {
        let entries = u32::from(self.entries);
        if (self.exhausted || self.consumed * 2 >= self.active) && self.active < entries {
            self.active = (self.active * 2).min(entries);
        }
        self.exhausted = false;
        self.consumed = 0;
        if self.in_ring < self.active && !self.spare.is_empty() {
            self.fill();
            self.publish();
        }
    }

    /// On an idle tick: halves the active set and returns the memory of the spare buffers
    /// written since the last trim to the kernel.
    pub fn trim(&mut self) {
        self.active = (self.active / 2).max(MIN_ACTIVE.min(u32::from(self.entries)));
        for bid in std::mem::take(&mut self.dirty) {
            self.is_dirty[usize::from(bid)] = false;
            if self.state[usize::from(bid)] != Where::Spare {
                continue;
            }
            let offset = usize::from(bid) * self.buf_size as usize;
            // SAFETY: `bid` is a spare buffer: not in the ring, so the kernel cannot select
            // it, and not lent, so no slice of it is alive. The range lies inside the buffer
            // block; MADV_DONTNEED on private anonymous memory only drops its contents, and
            // the buffer's next writer (the kernel, after we provide it again) gets zeroed
            // pages. Failure leaves the pages resident, which is harmless.
            let _ = unsafe {
                libc::madvise(
                    self.bufs.as_ptr().add(offset).cast::<c_void>(),
                    self.buf_size as usize,
                    libc::MADV_DONTNEED,
                )
            };
        }
    }

    /// Moves spare buffers into the ring until it holds `active` (not yet published).
    fn fill(&mut self) {
        while self.in_ring < self.active {
            let Some(bid) = self.spare.pop() else { break };
            self.push(bid);
        }
    }

    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.entries - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.buf_size);
        // SAFETY: `idx < entries`, inside the ring allocation. The kernel only reads slots
        // between its head and our published tail, and this slot lies at or after the tail,
        // so the kernel is not reading it now.
        let entry = unsafe { &mut *self.ring.as_ptr().add(idx) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.in_ring += 1;
        self.state[usize::from(bid)] = Where::Ring;
    }

    fn publish(&self) {
        // SAFETY: `ring` points at the first, initialised entry of the ring, as `tail`
        // requires; the tail field overlays that entry's `resv` and is only written by us.
        let tail = unsafe { BufRingEntry::tail(self.ring.as_ptr()) };
        // SAFETY: the tail is a naturally aligned u16 the kernel reads with acquire
        // semantics; viewing it as an AtomicU16 gives the release store the ABI asks for.
        let tail = unsafe { AtomicU16::from_ptr(tail.cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `alloc_zeroed` with exactly this layout. The owner has
        // unregistered the ring (or dropped the io_uring) first, so the kernel no longer
        // refers to this memory.
        unsafe { dealloc(self.ring.as_ptr().cast(), self.ring_layout) };
        unmap(self.bufs, self.bufs_len);
    }
}

/// Maps `len` bytes of private anonymous memory without transparent huge pages.
fn map_buffers(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing aliases
    // nothing; the result is checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p..p+len` is the mapping just created. The advice only changes how the kernel
    // backs it; failure (e.g. THP compiled out) leaves a correct mapping, so it is ignored.
    let _ = unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
}

fn unmap(p: NonNull<u8>, len: usize) {
    // SAFETY: `p..p+len` is a mapping made by `map_buffers` that nothing refers to any more.
    let _ = unsafe { libc::munmap(p.as_ptr().cast::<c_void>(), len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_sizes() {
        assert!(BufRing::new(0, 4096).is_err());
        assert!(BufRing::new(3, 4096).is_err());
        assert!(BufRing::new(4, 0).is_err());
    }

    #[test]
    fn take_and_recycle_balance() {
        let mut br = BufRing::new(8, 64).expect("small ring");
        assert_eq!(br.lent(), 0);
        let b = br.take(3, 10, false).expect("valid id");
        b.copy_from_slice(b"0123456789");
        assert_eq!(br.lent(), 1);
        assert!(br.take(3, 1, false).is_none(), "not in the ring any more");
        assert!(br.take(8, 1, false).is_none(), "id out of range");
        assert!(br.take(0, 65, false).is_none(), "length beyond buffer");
        br.recycle(3);
        assert_eq!(br.lent(), 0);
    }

    /// Simulates the kernel: consumes the next `n` buffers from the ring in FIFO order.
    /// Simulates the kernel without incremental consumption: each receive fully consumes
    /// the next buffer, in FIFO order.
    fn consume(br: &mut BufRing, head: &mut u16, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let idx = usize::from(*head & (br.entries - 1));
                // SAFETY: idx < entries, inside the ring allocation (a test).
                let bid = unsafe { (*br.ring.as_ptr().add(idx)).bid() };
                *head = head.wrapping_add(1);
                assert!(
                    br.take(bid, 1, false).is_some(),
                    "buffer {bid} was in the ring"
                );
                bid
            })
            .collect()
    }

    #[test]
    fn incremental_consumption_hands_out_consecutive_slices() {
        let mut br = BufRing::new(16, 64).expect("ring");
        // Three receives packed into buffer 0, the last one filling it.
        let a = br.take(0, 10, true).expect("first part");
        a.fill(b'a');
        br.recycle(0);
        assert_eq!(
            (br.lent(), br.in_ring()),
            (0, 16),
            "a partial buffer stays the kernel's"
        );
        let b = br.take(0, 30, true).expect("second part");
        b.fill(b'b');
        br.recycle(0);
        let c = br.take(0, 24, false).expect("last part");
        c.fill(b'c');
        assert_eq!((br.lent(), br.in_ring()), (1, 15));
        assert!(br.take(0, 1, true).is_none(), "consumed: not in the ring");
        br.recycle(0);
        assert_eq!((br.lent(), br.in_ring()), (0, 16));
        // SAFETY: buffer 0 is the first 64 bytes of the block, and no slice is alive.
        let whole = unsafe { std::slice::from_raw_parts(br.bufs.as_ptr(), 64) };
        assert_eq!(&whole[..10], &[b'a'; 10]);
        assert_eq!(&whole[10..40], &[b'b'; 30]);
        assert_eq!(&whole[40..], &[b'c'; 24]);
        // Re-added from the start: a receive past the end is refused.
        assert!(br.take(1, 60, true).is_some());
        assert!(br.take(1, 5, false).is_none(), "60 + 5 > 64");
    }

    #[test]
    fn active_set_grows_under_load_and_shrinks_when_idle() {
        let mut br = BufRing::new(256, 64).expect("ring");
        let mut head = 0u16;
        assert_eq!((br.in_ring(), br.active()), (16, 16));
        // A busy turn: 12 receives before the shard gives anything back.
        let got = consume(&mut br, &mut head, 12);
        for bid in got {
            br.recycle(bid);
        }
        br.replenish();
        assert_eq!(
            br.active(),
            32,
            "a turn that used over half the set doubles it"
        );
        assert_eq!(br.in_ring(), 32);
        // Running dry doubles it too.
        br.note_exhausted();
        br.replenish();
        assert_eq!((br.in_ring(), br.active()), (64, 64));
        // Quiet turns: one receive each, given straight back.
        for _ in 0..100 {
            let got = consume(&mut br, &mut head, 1);
            br.recycle(got[0]);
            br.replenish();
        }
        assert_eq!(br.active(), 64, "light traffic does not grow the set");
        br.trim();
        assert_eq!(br.active(), 32);
        // The ring drains towards the smaller set as buffers come back.
        for _ in 0..40 {
            let got = consume(&mut br, &mut head, 1);
            br.recycle(got[0]);
        }
        assert_eq!(br.in_ring(), 32);
        br.trim();
        br.trim();
        assert_eq!(br.active(), 16, "never below the minimum");
    }

    #[test]
    fn every_buffer_is_in_exactly_one_place() {
        let mut br = BufRing::new(64, 64).expect("ring");
        let mut head = 0u16;
        let mut held = Vec::new();
        for round in 0..500u32 {
            let n = (round % 7) as usize;
            let n = n.min(br.in_ring() as usize);
            held.extend(consume(&mut br, &mut head, n));
            // Give back all but the newest, in another order.
            while held.len() > 1 {
                let bid = held.swap_remove(0);
                br.recycle(bid);
            }
            if round % 50 == 0 {
                br.trim();
            }
            br.replenish();
            let spare = br.spare.len() as u32;
            // A buffer consumed but not yet taken still counts as in the ring: the driver
            // learns of it only from its completion.
            assert_eq!(br.in_ring() + br.lent() + spare, 64, "round {round}");
            assert!(br.in_ring() >= 1);
        }
    }
}
