//! Allocator settings for the long-running processes.
//!
//! glibc's malloc gives every thread that allocates its own arena (up to 8 per core), and freed
//! memory stays in them: with a tokio runtime and its blocking pool that came to ~15 arenas and
//! 38 MiB of RSS in a leader serving 50 boards. Two arenas are plenty for processes that mostly
//! wait. musl (the ARM builds) has no per-thread arenas; there this does nothing.

/// Caps glibc's malloc arenas at two. Call first thing in `main`, before threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
