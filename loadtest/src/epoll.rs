//! The epoll (mio) receive loop: the fallback where io_uring is unavailable
//! (or `--io epoll`). Edge-triggered readiness, one large read buffer per
//! thread, each read parsed in place by [`Core::on_data`]; same behaviour as
//! the io_uring loop.
//!
//! Fairness: a connection gets at most `READS_PER_TURN` reads per loop turn;
//! one that still had data goes on the ready list and is served next turn
//! (edge-triggered epoll will not report it again until new data arrives).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::sys::now_ns;
use crate::worker::{Core, NewSub, WorkerResult};

const READS_PER_TURN: usize = 4;

/// Runs a receive thread on epoll until the core says stop.
pub fn run(mut core: Core, subs: Receiver<NewSub>, buf_size: usize) -> io::Result<WorkerResult> {
    core.stats
        .tid
        .store(crate::sys::gettid(), std::sync::atomic::Ordering::Relaxed);
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; buf_size];
    let mut ready: VecDeque<usize> = VecDeque::new();
    let mut queued: Vec<bool> = Vec::new();
    loop {
        while let Ok(sub) = subs.try_recv() {
            let idx = core.add(sub);
            queued.push(false);
            let c = &core.conns[idx];
            if c.wants_input()
                && let Some(s) = &c.stream
            {
                let fd = s.as_raw_fd();
                poll.registry()
                    .register(&mut SourceFd(&fd), Token(idx), Interest::READABLE)?;
            }
        }
        let timeout = if ready.is_empty() {
            Duration::from_millis(10)
        } else {
            Duration::ZERO
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            let idx = ev.token().0;
            if let Some(q) = queued.get_mut(idx)
                && !*q
            {
                *q = true;
                ready.push_back(idx);
            }
        }
        let now = now_ns();
        for _ in 0..ready.len() {
            let Some(idx) = ready.pop_front() else { break };
            if read_some(&mut core, idx, &mut buf, now) {
                ready.push_back(idx);
            } else if let Some(q) = queued.get_mut(idx) {
                *q = false;
            }
        }
        if !core.tick(now) {
            break;
        }
    }
    Ok(core.finish_all("epoll", Vec::new()))
}

/// Up to READS_PER_TURN reads; true when the socket may still hold data.
fn read_some(core: &mut Core, idx: usize, buf: &mut [u8], now: u64) -> bool {
    for _ in 0..READS_PER_TURN {
        let r = match core.conns.get(idx) {
            Some(c) if c.wants_input() => match &c.stream {
                Some(s) => (&*s).read(buf),
                None => return false,
            },
            _ => return false,
        };
        match r {
            Ok(0) => {
                core.on_eof(idx);
                return false;
            }
            Ok(n) => {
                core.on_data(idx, &buf[..n], now);
                if n < buf.len() {
                    // A short read on TCP means the socket was emptied; new data brings a new edge.
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                core.on_error(idx, &e);
                return false;
            }
        }
    }
    true
}
