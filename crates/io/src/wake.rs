//! Wake-ups from any thread: an eventfd per shard.
//!
//! Shards wake each other through their own driver (`IORING_OP_MSG_RING` queued in the
//! sender's ring costs no system call; on epoll, mio's waker). A thread that is not a shard
//! (the broker bridge, a test) has no ring to send from, so each io_uring shard also keeps
//! an eventfd with a read armed on it: one `write(2)` from anywhere completes that read and
//! ends the shard's wait at once, instead of at its next 100 ms tick. (The epoll backend's
//! mio waker is an eventfd already and works from any thread.)

#![allow(unsafe_code)]

use std::io;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd, shared by the shard that waits on it and any thread that wakes it.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd with a zero counter.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the waiter. Never blocks: a full counter (EAGAIN) means a wake-up is already
    /// pending, which is all a wake-up has to say.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to a descriptor this value owns.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                tracing::warn!(error = %e, "waking a shard through its eventfd failed");
            }
        }
    }

    /// The descriptor, for the driver that arms a read on it.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_makes_it_readable_and_never_blocks() {
        let e = EventFd::new().expect("eventfd");
        for _ in 0..3 {
            e.signal();
        }
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live local from a descriptor `e` owns.
        let n = unsafe { libc::read(e.raw(), (&raw mut v).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(v, 3, "signals add up until read");
        // SAFETY: as above.
        let n = unsafe { libc::read(e.raw(), (&raw mut v).cast(), 8) };
        assert_eq!(n, -1, "nothing pending after the read");
    }
}
