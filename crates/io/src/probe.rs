//! Deciding, once at start-up, whether this process can use io_uring.
//!
//! Creating a ring is not enough: Docker's default seccomp profile fails `io_uring_setup`
//! with EPERM, `kernel.io_uring_disabled` does the same, old kernels say ENOSYS, and kernels
//! older than 6.0 create rings but lack multishot receive. So the probe creates a ring with
//! the flags the shards will use, checks the opcodes, registers a provided-buffer ring and
//! runs one real multishot receive over a socketpair. One decision covers all shards.

#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use io_uring::{cqueue, opcode, types};

use super::bufring::BufRing;

/// Why io_uring cannot be used, in words for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn explain_setup_error(e: &std::io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    match (e.raw_os_error(), sysctl) {
        (Some(libc::ENOSYS), _) => {
            "io_uring_setup returned ENOSYS: this kernel has no io_uring".into()
        }
        (Some(libc::EPERM), Some(v)) if v > 0 => {
            format!("io_uring_setup returned EPERM: kernel.io_uring_disabled = {v}")
        }
        (Some(libc::EPERM), _) => "io_uring_setup returned EPERM: denied by a seccomp profile \
             (Docker's default profile does this) or a security module"
            .into(),
        _ => format!("io_uring_setup failed: {e}"),
    }
}

/// Checks everything the shards will use. `Ok` means io_uring will work.
pub fn probe() -> Result<(), Unavailable> {
    let mut ring = super::uring::build_ring(8).map_err(|e| Unavailable(explain_setup_error(&e)))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| Unavailable(format!("io_uring opcode probe failed: {e}")))?;
    let needed = [
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::RecvMulti::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("MSG_RING", opcode::MsgRingData::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
        ("SHUTDOWN", opcode::Shutdown::CODE),
        ("READ", opcode::Read::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(Unavailable(format!(
                "io_uring lacks the {name} opcode (kernel too old)"
            )));
        }
    }
    let bufs = BufRing::new(2, 64).map_err(|e| Unavailable(format!("buffer ring: {e}")))?;
    // SAFETY: `bufs` outlives the registration: every path past this point unregisters the
    // group and drops the ring before dropping `bufs`.
    let reg = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), 2, 7, 0)
    };
    reg.map_err(|e| {
        Unavailable(format!(
            "provided-buffer rings unsupported (kernel < 5.19?): {e}"
        ))
    })?;
    let result = multishot_recv_works(&mut ring);
    let _ = ring.submitter().unregister_buf_ring(7);
    drop(ring);
    drop(bufs);
    result
}

fn multishot_recv_works(ring: &mut io_uring::IoUring) -> Result<(), Unavailable> {
    let (a, mut b) = UnixStream::pair().map_err(|e| Unavailable(format!("socketpair: {e}")))?;
    let e = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), 7)
        .build()
        .user_data(1);
    // SAFETY: the entry refers to `a` (alive until this function returns, after the ring has
    // been told to cancel) and to buffer group 7 registered by the caller.
    let pushed = unsafe { ring.submission().push(&e) };
    pushed.map_err(|_| Unavailable("submission queue full".into()))?;
    b.write_all(b"ping")
        .map_err(|e| Unavailable(format!("socketpair write: {e}")))?;
    ring.submit_and_wait(1)
        .map_err(|e| Unavailable(format!("io_uring_enter failed: {e}")))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| Unavailable("no completion".into()))?;
    let (res, flags) = (cqe.result(), cqe.flags());
    // Cancel what is left of the multishot before `a` goes away.
    let cancel = opcode::AsyncCancel::new(1).build().user_data(2);
    // SAFETY: a cancel entry refers to no memory.
    let _ = unsafe { ring.submission().push(&cancel) };
    let _ = ring.submit_and_wait(1);
    if res == 4 && cqueue::buffer_select(flags).is_some() && cqueue::more(flags) {
        Ok(())
    } else if res < 0 {
        Err(Unavailable(format!(
            "multishot receive failed ({}): kernel older than 6.0?",
            std::io::Error::from_raw_os_error(-res)
        )))
    } else {
        Err(Unavailable(
            "multishot receive did not stay armed (kernel older than 6.0?)".into(),
        ))
    }
}
