//! The epoll (mio) receive loop: the fallback where io_uring is unavailable
//! (or `--io epoll`). Edge-triggered readiness, one large read buffer per
//! thread, each read parsed in place by [`Core::on_data`]; same behaviour as
//! the io_uring loop.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::sys::now_ns;
use crate::worker::{Core, NewSub, WorkerResult};

/// Runs a receive thread on epoll until the core says stop.
pub fn run(mut core: Core, subs: Receiver<NewSub>, buf_size: usize) -> io::Result<WorkerResult> {
    core.stats
        .tid
        .store(crate::sys::gettid(), std::sync::atomic::Ordering::Relaxed);
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; buf_size];
    loop {
        while let Ok(sub) = subs.try_recv() {
            let idx = core.add(sub);
            let c = &core.conns[idx];
            if c.wants_input()
                && let Some(s) = &c.stream
            {
                let fd = s.as_raw_fd();
                poll.registry()
                    .register(&mut SourceFd(&fd), Token(idx), Interest::READABLE)?;
            }
        }
        match poll.poll(&mut events, Some(Duration::from_millis(10))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = now_ns();
        for ev in events.iter() {
            let idx = ev.token().0;
            loop {
                let r = match core.conns.get(idx) {
                    Some(c) if c.wants_input() => match &c.stream {
                        Some(s) => (&*s).read(&mut buf),
                        None => break,
                    },
                    _ => break,
                };
                match r {
                    Ok(0) => {
                        core.on_eof(idx);
                        break;
                    }
                    Ok(n) => {
                        core.on_data(idx, &buf[..n], now);
                        if n < buf.len() {
                            // Edge-triggered: a short read means the socket is
                            // probably empty; the next edge brings us back.
                            // (One more read would only cost an EAGAIN.)
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        core.on_error(idx, &e);
                        break;
                    }
                }
            }
        }
        if !core.tick(now) {
            break;
        }
    }
    Ok(core.finish_all("epoll", Vec::new()))
}
