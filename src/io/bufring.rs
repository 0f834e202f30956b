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
}

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
        let mut br = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_len,
            entries,
            buf_size,
            tail: 0,
            lent: u32::from(entries),
        };
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        br.lent = 0;
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

    /// Takes buffer `bid`, which a completion says holds `len` received bytes.
    ///
    /// Returns `None` for an id or length the kernel could not have produced. The caller must
    /// give the buffer back with [`BufRing::recycle`] when done with the slice.
    pub fn take(&mut self, bid: u16, len: usize) -> Option<&mut [u8]> {
        if bid >= self.entries || len > self.buf_size as usize {
            return None;
        }
        self.lent += 1;
        let offset = usize::from(bid) * self.buf_size as usize;
        // SAFETY: `bid < entries` and `len <= buf_size`, so the range lies inside the buffer
        // block. The kernel filled this buffer and removed it from the ring when it posted
        // the completion; it does not touch it again until we re-add it in `recycle`, and
        // `&mut self` prevents two live slices of the same ring.
        Some(unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(offset), len) })
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        if bid >= self.entries {
            return;
        }
        self.lent = self.lent.saturating_sub(1);
        self.push(bid);
        self.publish();
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
        let b = br.take(3, 10).expect("valid id");
        b.copy_from_slice(b"0123456789");
        assert_eq!(br.lent(), 1);
        assert!(br.take(8, 1).is_none(), "id out of range");
        assert!(br.take(0, 65).is_none(), "length beyond buffer");
        br.recycle(3);
        assert_eq!(br.lent(), 0);
    }
}
