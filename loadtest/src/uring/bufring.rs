//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): `count` buffers of
//! `size` bytes that the kernel picks from for multishot receives, so an idle
//! connection pins no buffer and one completion can carry a large read.
//!
//! Ownership: a buffer belongs to the kernel from the moment it is published
//! in the ring until a completion names its id; the receiver reads it, then
//! gives it back with [`BufRing::recycle`] and publishes the new tail with
//! [`BufRing::commit`] once per batch. The memory must outlive every operation
//! that may select from the group: the owner unregisters the group after the
//! last receive finished, or leaks the memory ([`BufRing::leak`]) when it cannot
//! prove that.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::{IoUring, cqueue, squeue};

/// A registered buffer ring and its buffers.
#[derive(Debug)]
pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    count: u16,
    size: u32,
    bgid: u16,
    tail: u16,
    registered: bool,
}

impl BufRing {
    /// Allocates `count` (a power of two) buffers of `size` bytes and registers
    /// them as group `bgid` on `ring`.
    pub fn new<S: squeue::EntryMarker, C: cqueue::EntryMarker>(
        ring: &IoUring<S, C>,
        bgid: u16,
        count: u16,
        size: u32,
    ) -> io::Result<BufRing> {
        if !count.is_power_of_two() || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring: count must be a power of two",
            ));
        }
        let ring_layout =
            Layout::from_size_align(usize::from(count) * size_of::<BufRingEntry>(), 4096)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bufs_layout = Layout::from_size_align(usize::from(count) * size as usize, 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1).
        let ring_mem = unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        // SAFETY: as above.
        let bufs = unsafe { alloc_zeroed(bufs_layout) };
        if ring_mem.is_null() || bufs.is_null() {
            // SAFETY: each pointer is freed only if it was allocated, with its own layout.
            unsafe {
                if !ring_mem.is_null() {
                    dealloc(ring_mem.cast(), ring_layout);
                }
                if !bufs.is_null() {
                    dealloc(bufs, bufs_layout);
                }
            }
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "buffer ring allocation failed",
            ));
        }
        let mut br = BufRing {
            ring: ring_mem,
            ring_layout,
            bufs,
            bufs_layout,
            count,
            size,
            bgid,
            tail: 0,
            registered: false,
        };
        for bid in 0..count {
            br.recycle(bid);
        }
        br.commit();
        // SAFETY: the ring memory is page-aligned, holds `count` entries and stays
        // allocated until this BufRing is dropped, which unregisters the group
        // first (or leaks the memory, see `leak`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ring_mem as u64, count, bgid, 0)?;
        }
        br.registered = true;
        Ok(br)
    }

    /// The buffer group id to put in receive SQEs.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The bytes the kernel wrote into buffer `bid` (`len` from the completion).
    /// Valid until `recycle(bid)`.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        if bid >= self.count {
            return &[];
        }
        let len = len.min(self.size as usize);
        // SAFETY: `bid < count`, so the range lies inside the allocation; the
        // completion that named `bid` handed the buffer back to us, and the kernel
        // does not touch it again until `recycle` publishes it.
        unsafe {
            std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * self.size as usize), len)
        }
    }

    /// Gives buffer `bid` back to the kernel (visible after `commit`).
    pub fn recycle(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let mask = self.count - 1;
        // SAFETY: `tail & mask < count`, so the entry lies inside the ring
        // allocation; the kernel only reads entries between its head and the
        // committed tail, and this one is beyond the committed tail.
        let entry = unsafe { &mut *self.ring.add(usize::from(self.tail & mask)) };
        // SAFETY: `bid < count`: the address stays inside the buffer allocation.
        let addr = unsafe { self.bufs.add(usize::from(bid) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes recycled buffers to the kernel (one release store).
    pub fn commit(&self) {
        // SAFETY: `self.ring` is the ring's base; the tail field overlays the
        // first entry's reserved field, as the kernel ABI defines.
        let tail = unsafe { BufRingEntry::tail(self.ring) } as *const AtomicU16;
        // SAFETY: the tail is a naturally aligned u16 inside our allocation that
        // the kernel reads concurrently, hence the atomic release store.
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }

    /// Unregisters the group. Call only when no receive can select from it any more.
    pub fn unregister<S: squeue::EntryMarker, C: cqueue::EntryMarker>(
        &mut self,
        ring: &IoUring<S, C>,
    ) {
        if self.registered && ring.submitter().unregister_buf_ring(self.bgid).is_ok() {
            self.registered = false;
        }
    }

    /// Forgets the memory instead of freeing it: for when receives might still
    /// be in flight at teardown (a bounded leak at process exit beats a write
    /// into freed memory).
    pub fn leak(mut self) {
        self.registered = false;
        self.bufs = std::ptr::null_mut();
        self.ring = std::ptr::null_mut();
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            // Still registered: the kernel may write into it. Leak.
            return;
        }
        // SAFETY: the pointers were allocated in `new` with these layouts, are
        // freed once (leak() nulls them), and the group is unregistered.
        unsafe {
            if !self.ring.is_null() {
                dealloc(self.ring.cast(), self.ring_layout);
            }
            if !self.bufs.is_null() {
                dealloc(self.bufs, self.bufs_layout);
            }
        }
    }
}
