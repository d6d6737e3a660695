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

/// Gives the heap's free pages back to the system every `every`, from a small thread of its own.
/// glibc returns only the top of its heap on `free`: what a burst frees in the middle stays
/// counted in the process's RSS until it is reused. The leader's controller pass over 10,000
/// replicas decodes them all and frees them again; with 500 boards, `malloc_trim` took a leader
/// from 139.8 to 93.8 MiB (2026-12-08, `bramble-bench scale`). The pages come back zeroed on their
/// next use: a page fault each, every `every` at most. Nothing on musl (it returns memory itself).
pub fn trim_heap_every(every: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("heap-trim".into()).stack_size(64 * 1024).spawn(move || loop {
            std::thread::sleep(every);
            // SAFETY: malloc_trim only gives free pages back; any thread may call it at any time.
            unsafe {
                libc::malloc_trim(0);
            }
        });
        if let Err(e) = spawned {
            tracing::debug!("cannot start the heap trimmer: {e}");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
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
