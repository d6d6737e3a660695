//! What the long-running daemons (agent, leader) do to themselves at start: they hold the
//! cluster's keys (the CA key, `secrets.key`, board keys) and secrets in memory, so they never
//! write a core dump (`PR_SET_DUMPABLE` off: no core file, and no other user's process may read
//! their memory through /proc or ptrace, whatever `ulimit -c` or `kernel.core_pattern` say); and
//! they raise their open-file limit to the hard limit, since every pod's DNS connection, shim
//! socket and QUIC stream is a descriptor and systemd's default soft limit is 1,024.

/// Not dumpable, and the soft RLIMIT_NOFILE raised to the hard one. Returns the new soft limit.
pub fn harden() -> u64 {
    // SAFETY: prctl with an integer argument changes only this process's flag.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!("cannot turn core dumps off: {}", std::io::Error::last_os_error());
    }
    raise_nofile()
}

/// The soft open-file limit raised to the hard one (at most 1 << 20); the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    let want = hard.min(1 << 20);
    if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return want;
    }
    soft
}

/// Whether this process may dump core.
pub fn dumpable() -> bool {
    // SAFETY: a read of this process's flag.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_core_and_more_descriptors() {
        // In a child: the test process itself stays as it was.
        // SAFETY: the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let before = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, before.1);
            let soft = super::harden();
            let ok = !super::dumpable() && soft == before.1.min(1 << 20);
            // SAFETY: leaving the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0));
    }
}
