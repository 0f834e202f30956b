//! The generator's io_uring receive loop: one ring per receive thread, one
//! multishot RECV per subscriber selecting from a provided-buffer ring, every
//! completion parsed in place by [`Core::on_data`] and its buffer recycled at
//! once; the new ring tail is published once per batch of completions.
//!
//! Ownership: the provided buffers belong to the kernel except between a
//! completion that names one and its `recycle`. A socket stays open while its
//! receive is armed; at teardown every socket is shut down and the loop waits
//! for each receive's final completion before unregistering the buffer ring
//! (if that does not happen within a second, the buffer memory is leaked, not
//! freed).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::bufring::BufRing;
use super::{new_ring, submit_wait};
use crate::sys::now_ns;
use crate::worker::{Core, NewSub, WorkerResult};

/// Runs a receive thread on io_uring until the core says stop.
pub fn run(
    mut core: Core,
    subs: Receiver<NewSub>,
    nbufs: u16,
    buf_size: u32,
) -> io::Result<WorkerResult> {
    core.stats
        .tid
        .store(crate::sys::gettid(), std::sync::atomic::Ordering::Relaxed);
    let mut ring = new_ring(4096, 32768)?;
    let mut br = BufRing::new(&ring, 0, nbufs, buf_size)?;
    let mut armed: Vec<bool> = Vec::new();
    let mut pending: Vec<usize> = Vec::new();
    let mut enobufs = 0u64;
    loop {
        while let Ok(sub) = subs.try_recv() {
            let idx = core.add(sub);
            armed.push(false);
            pending.push(idx);
        }
        arm(&mut ring, &core, &mut armed, &mut pending, br.bgid())?;
        submit_wait(&ring, 10)?;
        let now = now_ns();
        let mut recycled = false;
        for cqe in ring.completion() {
            let idx = cqe.user_data() as usize;
            let res = cqe.result();
            let flags = cqe.flags();
            if res > 0 {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    core.on_data(idx, br.data(bid, res as usize), now);
                    br.recycle(bid);
                    recycled = true;
                }
            } else if res == 0 {
                core.on_eof(idx);
            } else if res == -libc::ENOBUFS {
                enobufs += 1;
            } else if res != -libc::ECANCELED {
                core.on_error(idx, &io::Error::from_raw_os_error(-res));
            }
            if !cqueue::more(flags)
                && let Some(a) = armed.get_mut(idx)
            {
                *a = false;
                pending.push(idx);
            }
        }
        if recycled {
            br.commit();
        }
        if !core.tick(now) {
            break;
        }
    }
    // Teardown: shut every socket so each armed receive completes, then wait for them.
    for c in &core.conns {
        if let Some(s) = &c.stream {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while armed.iter().any(|&a| a) && Instant::now() < deadline {
        submit_wait(&ring, 10)?;
        for cqe in ring.completion() {
            if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                br.recycle(bid);
            }
            if !cqueue::more(cqe.flags())
                && let Some(a) = armed.get_mut(cqe.user_data() as usize)
            {
                *a = false;
            }
        }
        br.commit();
    }
    let mut notes = Vec::new();
    if enobufs > 0 {
        notes.push(format!(
            "{enobufs} receives re-armed after the buffer ring ran empty (ENOBUFS)"
        ));
    }
    if armed.iter().any(|&a| a) {
        notes.push("receives still armed at teardown: buffer memory leaked on purpose".into());
        br.leak();
    } else {
        br.unregister(&ring);
        drop(br);
    }
    drop(ring);
    Ok(core.finish_all("io_uring", notes))
}

/// Arms a multishot receive on every pending connection that wants input.
fn arm(
    ring: &mut io_uring::IoUring,
    core: &Core,
    armed: &mut [bool],
    pending: &mut Vec<usize>,
    bgid: u16,
) -> io::Result<()> {
    for idx in pending.drain(..) {
        let Some(c) = core.conns.get(idx) else {
            continue;
        };
        if armed.get(idx).copied().unwrap_or(true) || !c.wants_input() {
            continue;
        }
        let Some(stream) = &c.stream else { continue };
        let sqe = opcode::RecvMulti::new(types::Fd(stream.as_raw_fd()), bgid)
            .build()
            .user_data(idx as u64);
        // SAFETY: the receive selects its memory from the registered buffer ring,
        // which outlives every armed receive (see the teardown in `run`); the fd
        // stays open while the receive is armed.
        while unsafe { ring.submission().push(&sqe) }.is_err() {
            ring.submit()?;
        }
        armed[idx] = true;
    }
    Ok(())
}
