//! blast's send loop: every connection always has one SEND in flight of a
//! pre-built batch of frames (many frames per send, no protocol work, no
//! fan-out logic), so it measures how fast this kernel moves frames to the
//! generator. A multishot receive per connection only watches for the
//! client's close frame or EOF.
//!
//! Ownership: batches live in a pool; a batch's `refs` counts the sends in
//! flight on it plus connections part-way through it. Only a batch with no
//! refs is re-stamped (fresh send time) and made current, so the kernel never
//! reads memory being written. The pool only grows (bounded) and is dropped
//! after the ring, whose teardown waits for every send (see `run`).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};
use ringcast::proto::frame::FrameHeader;

use super::bufring::BufRing;
use super::{new_ring, submit_wait};
use crate::payload::write_time;
use crate::sys::now_ns;

/// The server's close frame (code 1000), unmasked; static, so always valid for the kernel.
static CLOSE_FRAME: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];
/// Up to 64 MiB of 64 KiB batches: every connection part-way through a batch holds one,
/// so beyond ~1000 connections rotation stalls and send times go stale (latency overstated).
const MAX_BATCHES: usize = 1024;
const SEND: u64 = 0;
const RECV: u64 = 1;
const CLOSE: u64 = 2;

/// A pre-built batch of frames with the byte offset of each frame's payload.
#[derive(Debug, Clone)]
pub struct Template {
    /// The frames, back to back.
    pub bytes: Vec<u8>,
    /// Offset of each frame's payload (where its stamp starts).
    pub payload_offsets: Vec<usize>,
}

/// Counters the blast thread publishes.
#[derive(Debug, Default)]
pub struct BlastStats {
    /// Connections currently served.
    pub conns: AtomicU64,
    /// Bytes the kernel accepted.
    pub bytes: AtomicU64,
    /// Connections that ended with an error.
    pub errors: AtomicU64,
}

#[derive(Debug)]
struct Batch {
    buf: Box<[u8]>,
    refs: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// The client sent a close frame (or we are stopping): finish the batch, then close.
    Wanted,
    /// Our close frame is in flight or sent.
    Sent,
}

#[derive(Debug)]
struct BConn {
    stream: TcpStream,
    /// Batch this connection is part-way through (holds a ref), and the offset.
    batch: Option<usize>,
    off: usize,
    send_inflight: bool,
    recv_armed: bool,
    closing: Closing,
    dead: bool,
    /// Header bytes of a client frame split across reads, and payload bytes to skip.
    hdr: Vec<u8>,
    skip: u64,
}

/// Serves accepted, upgraded connections from `accepted` until `stop` or `until`.
pub fn run(
    template: &Template,
    accepted: Receiver<TcpStream>,
    stop: Arc<AtomicBool>,
    stats: Arc<BlastStats>,
    until: Instant,
    idle: bool,
) -> io::Result<()> {
    let mut ring = new_ring(4096, 16384)?;
    let mut br = BufRing::new(&ring, 0, 64, 4096)?;
    let mut pool: Vec<Batch> = vec![Batch {
        buf: template.bytes.clone().into_boxed_slice(),
        refs: 0,
    }];
    let mut current = 0usize;
    let mut conns: Vec<Option<BConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut to_send: Vec<usize> = Vec::new();
    let mut to_recv: Vec<usize> = Vec::new();
    let len = template.bytes.len();
    let mut stopping = false;
    // Once stopping, clients get 2 s to finish the close handshake.
    let mut stop_deadline = until + Duration::from_secs(2);
    loop {
        if !stopping && (stop.load(Ordering::Relaxed) || Instant::now() >= until) {
            stopping = true;
            stop_deadline = Instant::now() + Duration::from_secs(2);
            for (i, c) in conns.iter_mut().enumerate() {
                if let Some(c) = c
                    && c.closing == Closing::No
                {
                    c.closing = Closing::Wanted;
                    to_send.push(i);
                }
            }
        }
        if !stopping {
            while let Ok(stream) = accepted.try_recv() {
                let c = BConn {
                    stream,
                    batch: None,
                    off: 0,
                    send_inflight: false,
                    recv_armed: false,
                    closing: Closing::No,
                    dead: false,
                    hdr: Vec::new(),
                    skip: 0,
                };
                let i = match free.pop() {
                    Some(i) => {
                        conns[i] = Some(c);
                        i
                    }
                    None => {
                        conns.push(Some(c));
                        conns.len() - 1
                    }
                };
                stats.conns.fetch_add(1, Ordering::Relaxed);
                if !idle {
                    to_send.push(i);
                }
                to_recv.push(i);
            }
        }
        // Rotate to a batch nobody references, stamped with the current time.
        if pool[current].refs > 0 {
            let now = now_ns();
            let pick = match pool.iter().position(|b| b.refs == 0) {
                Some(p) => Some(p),
                None if pool.len() < MAX_BATCHES => {
                    pool.push(Batch {
                        buf: template.bytes.clone().into_boxed_slice(),
                        refs: 0,
                    });
                    Some(pool.len() - 1)
                }
                None => None,
            };
            if let Some(p) = pick {
                for &o in &template.payload_offsets {
                    write_time(&mut pool[p].buf[o..], now);
                }
                current = p;
            }
        }
        for i in to_send.drain(..) {
            let Some(Some(c)) = conns.get_mut(i) else {
                continue;
            };
            if c.send_inflight || c.dead {
                continue;
            }
            let sqe = if c.closing != Closing::No && c.batch.is_none() {
                if c.closing == Closing::Sent {
                    continue;
                }
                c.closing = Closing::Sent;
                opcode::Send::new(
                    types::Fd(c.stream.as_raw_fd()),
                    CLOSE_FRAME.as_ptr(),
                    CLOSE_FRAME.len() as u32,
                )
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(((i as u64) << 2) | CLOSE)
            } else {
                let b = match c.batch {
                    Some(b) => b,
                    None => {
                        pool[current].refs += 1;
                        c.batch = Some(current);
                        c.off = 0;
                        current
                    }
                };
                let ptr = pool[b].buf[c.off..].as_ptr();
                opcode::Send::new(types::Fd(c.stream.as_raw_fd()), ptr, (len - c.off) as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(((i as u64) << 2) | SEND)
            };
            push(&mut ring, &sqe)?;
            c.send_inflight = true;
        }
        for i in to_recv.drain(..) {
            let Some(Some(c)) = conns.get_mut(i) else {
                continue;
            };
            if c.recv_armed || c.dead {
                continue;
            }
            let sqe = opcode::RecvMulti::new(types::Fd(c.stream.as_raw_fd()), br.bgid())
                .build()
                .user_data(((i as u64) << 2) | RECV);
            push(&mut ring, &sqe)?;
            c.recv_armed = true;
        }
        submit_wait(&ring, 10)?;
        let mut recycled = false;
        for cqe in ring.completion() {
            let i = (cqe.user_data() >> 2) as usize;
            let kind = cqe.user_data() & 3;
            let res = cqe.result();
            let Some(Some(c)) = conns.get_mut(i) else {
                continue;
            };
            match kind {
                SEND => {
                    c.send_inflight = false;
                    if res < 0 {
                        fail(c, &stats);
                    } else {
                        stats.bytes.fetch_add(res as u64, Ordering::Relaxed);
                        c.off += res as usize;
                        if c.off >= len
                            && let Some(b) = c.batch.take()
                        {
                            pool[b].refs -= 1;
                            c.off = 0;
                        }
                    }
                    if !c.dead {
                        to_send.push(i);
                    }
                }
                CLOSE => {
                    c.send_inflight = false;
                    // Our close frame is out: no more writes; wait for the client's EOF.
                    let _ = c.stream.shutdown(Shutdown::Write);
                }
                _ => {
                    if res > 0 {
                        if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                            if client_sent_close(c, br.data(bid, res as usize))
                                && c.closing == Closing::No
                            {
                                c.closing = Closing::Wanted;
                                to_send.push(i);
                            }
                            br.recycle(bid);
                            recycled = true;
                        }
                    } else if res == 0 || res != -libc::ENOBUFS {
                        // EOF or error: the client is gone.
                        if res < 0 && c.closing == Closing::No {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        c.dead = true;
                        let _ = c.stream.shutdown(Shutdown::Both);
                    }
                    if !cqueue::more(cqe.flags()) {
                        c.recv_armed = false;
                        if !c.dead {
                            to_recv.push(i);
                        }
                    }
                }
            }
            // Free the slot once no operation can still touch it.
            if c.dead && !c.send_inflight && !c.recv_armed {
                if let Some(b) = c.batch.take() {
                    pool[b].refs -= 1;
                }
                conns[i] = None;
                free.push(i);
                stats.conns.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if recycled {
            br.commit();
        }
        if stopping && (Instant::now() >= stop_deadline || !conns.iter().any(Option::is_some)) {
            break;
        }
    }
    // Teardown: make every operation finish before the batches and buffers go.
    for c in conns.iter().flatten() {
        let _ = c.stream.shutdown(Shutdown::Both);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut inflight: usize = conns
        .iter()
        .flatten()
        .map(|c| usize::from(c.send_inflight) + usize::from(c.recv_armed))
        .sum();
    while inflight > 0 && Instant::now() < deadline {
        submit_wait(&ring, 10)?;
        for cqe in ring.completion() {
            let i = (cqe.user_data() >> 2) as usize;
            let kind = cqe.user_data() & 3;
            if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                br.recycle(bid);
            }
            let Some(Some(c)) = conns.get_mut(i) else {
                continue;
            };
            if kind == RECV {
                if !cqueue::more(cqe.flags()) && c.recv_armed {
                    c.recv_armed = false;
                    inflight -= 1;
                }
            } else if c.send_inflight {
                c.send_inflight = false;
                inflight -= 1;
            }
        }
        br.commit();
    }
    if inflight > 0 {
        // Some operation may still read a batch or write a buffer: leak, never free early.
        br.leak();
        std::mem::forget(pool);
    } else {
        br.unregister(&ring);
    }
    drop(ring);
    Ok(())
}

fn push(ring: &mut io_uring::IoUring, sqe: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every SQE built in `run` points either at a pool batch (kept alive,
    // with a ref, until its completion) or at the static close frame, or selects
    // from the registered buffer ring (kept until every receive has completed).
    while unsafe { ring.submission().push(sqe) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}

fn fail(c: &mut BConn, stats: &BlastStats) {
    if !c.dead {
        if c.closing == Closing::No {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.dead = true;
        let _ = c.stream.shutdown(Shutdown::Both);
    }
}

/// Scans client frames in `data` for a close frame (headers via the protocol
/// core; payloads skipped).
fn client_sent_close(c: &mut BConn, mut data: &[u8]) -> bool {
    loop {
        if c.skip > 0 {
            let n = usize::try_from(c.skip)
                .unwrap_or(usize::MAX)
                .min(data.len());
            c.skip -= n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return false;
        }
        let start = c.hdr.len();
        c.hdr
            .extend_from_slice(&data[..data.len().min(14 - start.min(14))]);
        match FrameHeader::parse(&c.hdr) {
            Ok(Some((h, hl))) => {
                if h.opcode == ringcast::proto::frame::OpCode::Close {
                    return true;
                }
                data = &data[hl - start..];
                c.hdr.clear();
                c.skip = h.payload_len;
            }
            Ok(None) => {
                if c.hdr.len() >= 14 {
                    return true; // cannot happen with a valid header: treat as a close
                }
                return false;
            }
            Err(_) => return true, // protocol error from the client: close it
        }
    }
}
