//! Tuning of the global allocator (mimalloc; the binary installs it with
//! `#[global_allocator]`).
//!
//! mimalloc's defaults trade memory for speed in a way that hurts a server holding many idle
//! connections: arenas are committed eagerly and freed pages are purged only after a delay.
//! Measured with `ringcast-loadtest idle --connections 10000` against one shard: about
//! 800 bytes of RSS per idle connection with the defaults, about 420 with eager arena commit
//! off and immediate purging (the system allocator gave 446). These are two options set
//! once, before the server allocates anything of its own.
#![allow(unsafe_code)]

use libmimalloc_sys::{mi_collect, mi_option_set};

// Indices in mimalloc v3's `mi_option_e` (the bindings do not name these two).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the allocator options ringcast runs with. Call first thing in `main`.
pub fn tune() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; both indices
    // are valid options of the linked mimalloc (v3), and no allocation is in progress on
    // another thread this early in `main`.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
    }
}

/// Returns the calling thread's free allocator pages to the kernel. A shard calls it on its
/// first idle tick after activity: a burst (a connect storm, a publish spike) leaves pages
/// that held short-lived buffers free but resident, and without this they stay so until the
/// allocator happens to reuse them (measured: 0 to 1.5 MiB at 10,000 idle connections, the
/// difference between runs of the same test).
pub fn collect() {
    // SAFETY: mi_collect only walks and releases the allocator's own free memory; it is
    // callable from any thread at any time.
    unsafe { mi_collect(true) };
}
