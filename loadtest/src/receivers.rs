//! The receive threads as a group: choosing the backend once (io_uring probe,
//! epoll fallback with the reason), spawning `--threads` threads, handing
//! each new subscriber to a thread round-robin, and the orderly end (close
//! handshake with a deadline, then stop and join).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::cli::IoMode;
use crate::stats::ThreadStats;
use crate::worker::{CLOSE, Core, NewSub, RunShared, STOP, WorkerResult};

/// The receive backend chosen for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring with multishot receive and a provided-buffer ring.
    Uring,
    /// epoll via mio.
    Epoll,
}

/// Decides the backend once: `auto` probes io_uring and falls back with a
/// message; `uring` fails loudly.
pub fn choose_backend(mode: IoMode) -> Result<Backend, String> {
    match mode {
        IoMode::Epoll => Ok(Backend::Epoll),
        IoMode::Uring => crate::uring::probe()
            .map(|()| Backend::Uring)
            .map_err(|e| format!("--io uring: {e}")),
        IoMode::Auto => match crate::uring::probe() {
            Ok(()) => Ok(Backend::Uring),
            Err(e) => {
                eprintln!("io_uring unavailable ({e}); receiving with epoll");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// Receive buffer settings.
#[derive(Clone, Copy, Debug)]
pub struct BufConfig {
    /// Bytes per provided buffer / per read.
    pub size: usize,
    /// Provided buffers per io_uring thread.
    pub count: u16,
}

/// A running group of receive threads.
#[derive(Debug)]
pub struct Receivers {
    senders: Vec<Sender<NewSub>>,
    handles: Vec<JoinHandle<Result<WorkerResult, String>>>,
    /// Per-thread counters.
    pub stats: Vec<Arc<ThreadStats>>,
    /// Run-wide shared state.
    pub shared: Arc<RunShared>,
    next: usize,
}

impl Receivers {
    /// Spawns `threads` receive threads.
    pub fn spawn(
        threads: usize,
        backend: Backend,
        bufs: BufConfig,
        shared: Arc<RunShared>,
        topics: usize,
        publishers: usize,
        slow_rate: usize,
    ) -> Result<Receivers, String> {
        let mut r = Receivers {
            senders: Vec::new(),
            handles: Vec::new(),
            stats: Vec::new(),
            shared,
            next: 0,
        };
        for t in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel::<NewSub>();
            let stats = Arc::new(ThreadStats::default());
            let core = Core::new(
                Arc::clone(&stats),
                Arc::clone(&r.shared),
                topics,
                publishers,
                slow_rate,
            );
            let h = thread::Builder::new()
                .name(format!("recv-{t}"))
                .spawn(move || match backend {
                    Backend::Uring => {
                        crate::uring::recv::run(core, rx, bufs.count, bufs.size as u32)
                            .map_err(|e| format!("io_uring receive thread: {e}"))
                    }
                    Backend::Epoll => crate::epoll::run(core, rx, bufs.size)
                        .map_err(|e| format!("epoll receive thread: {e}")),
                })
                .map_err(|e| format!("spawn receive thread: {e}"))?;
            r.senders.push(tx);
            r.handles.push(h);
            r.stats.push(stats);
        }
        Ok(r)
    }

    /// Hands a subscriber to the next thread.
    pub fn dispatch(&mut self, sub: NewSub) -> Result<(), String> {
        let i = self.next % self.senders.len().max(1);
        self.next += 1;
        self.senders
            .get(i)
            .ok_or("no receive thread")?
            .send(sub)
            .map_err(|_| "a receive thread exited early".to_string())
    }

    /// Sum of a counter over the threads.
    pub fn sum(&self, f: impl Fn(&ThreadStats) -> u64) -> u64 {
        self.stats.iter().map(|s| f(s)).sum()
    }

    /// Whether any thread has ended (which only happens on an error before the end).
    pub fn any_exited(&self) -> bool {
        self.handles.iter().any(|h| h.is_finished())
    }

    /// Close handshake on every connection, wait up to `grace`, then stop and join.
    pub fn close_and_join(self, grace: Duration) -> Result<Vec<WorkerResult>, String> {
        self.shared.phase.fetch_max(CLOSE, Ordering::AcqRel);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.handles.iter().any(|h| !h.is_finished()) {
            thread::sleep(Duration::from_millis(5));
        }
        self.shared.phase.fetch_max(STOP, Ordering::AcqRel);
        drop(self.senders);
        let mut out = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a receive thread panicked".into()),
            }
        }
        Ok(out)
    }
}
