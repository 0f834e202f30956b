//! io_uring plumbing: ring set-up with the best flags the kernel takes, the
//! start-up probe, the provided-buffer ring, the generator's receive loop and
//! blast's send loop. With [`crate::sys`], the only place `unsafe` is allowed:
//! every SQE that names memory is pushed here, next to the code that keeps
//! that memory alive until the completion arrives.
#![allow(unsafe_code)]

pub mod blast;
pub mod bufring;
pub mod recv;

use std::io;

use io_uring::{IoUring, opcode};

/// Creates a ring: SINGLE_ISSUER + DEFER_TASKRUN (6.1+), else COOP_TASKRUN, else
/// plain. Must be called on the thread that will use it.
pub fn new_ring(entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    let best = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    if let Ok(r) = best {
        return Ok(r);
    }
    let coop = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_coop_taskrun()
        .build(entries);
    if let Ok(r) = coop {
        return Ok(r);
    }
    IoUring::builder().setup_cqsize(cq_entries).build(entries)
}

/// Checks once that io_uring works here with what the generator needs
/// (RECV/SEND, provided-buffer rings, EXT_ARG waits). Err says why not.
pub fn probe() -> Result<(), String> {
    let ring = new_ring(8, 16).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (needs 5.11+)".into());
    }
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("opcode probe failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("io_uring lacks {name}"));
        }
    }
    let mut br = bufring::BufRing::new(&ring, 0, 1, 4096)
        .map_err(|e| format!("provided-buffer ring registration failed (needs 5.19+): {e}"))?;
    br.unregister(&ring);
    Ok(())
}

/// Waits for at least one completion or `timeout_ms`, submitting pending SQEs.
/// Timeouts and signals are not errors.
pub fn submit_wait(ring: &IoUring, timeout_ms: u32) -> io::Result<()> {
    ringcast::io::uring::submit_wait(
        ring,
        1,
        std::time::Duration::from_millis(u64::from(timeout_ms)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn probe_reports() {
        // Either works or says why; never panics.
        match super::probe() {
            Ok(()) => {}
            Err(e) => assert!(!e.is_empty()),
        }
    }
}
