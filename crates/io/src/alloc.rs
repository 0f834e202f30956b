//! Tuning of the global allocator (mimalloc; the binary installs it with
//! `#[global_allocator]`).
//!
//! mimalloc's defaults trade memory for speed in a way that hurts a server holding many idle
//! connections: arenas are committed eagerly and freed pages are purged only after a delay.
//! Measured with `ringcast-loadtest idle --connections 10000` against one shard: about
//! 800 bytes of RSS per idle connection with the defaults, about 420 with eager arena commit
//! off and immediate purging (the system allocator gave 446). These are two options set
//! once, before the server allocates anything of its own.
//!
//! Transparent huge pages are turned off for the process: mimalloc asks for them on its
//! arenas (`MADV_HUGEPAGE`), so RSS grew in 2 MiB steps whenever a fault landed in a new
//! huge-page-sized region: 8 MiB resident before the first connection, and 10,000 idle
//! connections measured anywhere from 393 to 650 bytes each from one run to the next with
//! mimalloc's own committed bytes identical to the byte. Per-connection memory should
//! follow touched memory; the hot data of a shard is small enough that huge pages buy it
//! nothing measurable.
#![allow(unsafe_code)]

use libmimalloc_sys::{mi_collect, mi_option_set};

// Indices in mimalloc v3's `mi_option_e` (the bindings do not name these two).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

static THP_LEFT_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`tune`] could not turn transparent huge pages off (for a start-up log line).
pub fn thp_left_on() -> bool {
    THP_LEFT_ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets the allocator options ringcast runs with. Call first thing in `main`.
pub fn tune() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; both indices
    // are valid options of the linked mimalloc (v3), and no allocation is in progress on
    // another thread this early in `main`.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
        // Stops mimalloc from madvising new arenas for huge pages.
        mi_option_set(ALLOW_THP, 0);
    }
    // The arena mimalloc reserved before `main` is already madvised: the process-wide
    // switch covers it (the kernel checks it at every fault). Failure (a kernel without
    // it) only leaves huge pages possible.
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        THP_LEFT_ON.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Returns the calling thread's free allocator pages to the kernel. A shard calls it on its
/// first idle tick after activity: a burst (a connect storm, a publish spike) leaves pages
/// that held short-lived buffers free but resident until the allocator happens to reuse
/// them. Measured side by side with `ringcast-loadtest idle --connections 10000` against one
/// io_uring shard, three runs each: 320, 329, 323 bytes per connection with it, 352, 332,
/// 342 without.
pub fn collect() {
    // SAFETY: mi_collect only walks and releases the allocator's own free memory; it is
    // callable from any thread at any time.
    unsafe { mi_collect(true) };
}
