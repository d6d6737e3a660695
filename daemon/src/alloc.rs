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

/// Keeps transparent huge pages out of the agent. Where THP is `always` (Debian's kernels), a
/// thread's 2 MiB stack or a heap region that happens to be aligned gets a whole huge page at its
/// first touch: measured in an amd64 VM, an idle agent's RSS jumped from 5.2 to 9.2 MiB by two
/// such pages. The flag is inherited across fork and exec, so the shim clears it again
/// (`allow_huge_pages`) before it starts a container: workloads keep the system's setting.
pub fn no_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!("cannot turn transparent huge pages off: {e}");
    }
}

/// Gives a process started by the agent (a shim, and the containers it starts) the system's
/// transparent huge page setting back.
pub fn allow_huge_pages() {
    let _ = nix::sys::prctl::set_thp_disable(false);
}
