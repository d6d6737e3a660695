//! The default seccomp profile: what Docker's default profile refuses a container that has
//! Docker's default capabilities, as a classic BPF program built here (no libseccomp, so the
//! static ARM builds need no C library), installed by the container's init process just before
//! it executes the workload (libcontainer's `Executor`; `no_new_privileges` is already set then,
//! so no privilege is needed).
//!
//! Refused with `EPERM`: kernel keyrings (`keyctl`, `add_key`, `request_key`), modules, kexec,
//! `bpf`, `perf_event_open`, `io_uring_*`, `userfaultfd`, tracing others (`ptrace`,
//! `process_vm_*`, `kcmp`), mounts and the new mount API, `pivot_root`, `unshare`, `setns` and
//! `clone` with namespace flags, NUMA policy calls, clock and time setting, swap, quotas,
//! `reboot`, `syslog`, `acct`, handles (`open_by_handle_at`), `personality` except the harmless
//! values, `AF_VSOCK` sockets. `clone3` answers `ENOSYS`, so C libraries fall back to `clone`,
//! whose flags a filter can see. Syscalls of another ABI than the agent's (i386 or x32 on
//! amd64, arm on an arm64 agent) are refused: such binaries need `seccomp = "unconfined"`.
//! Unlike Docker's profile this one lists what is refused rather than what is allowed, so a
//! syscall newer than this list is allowed (see docs/SECURITY.md).

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

pub const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// `seccomp_data` offsets: the syscall number, the arch, the low half of the first argument.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;

const fn ld(offset: u32) -> Insn {
    Insn { code: LD_W_ABS, jt: 0, jf: 0, k: offset }
}
const fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code: JEQ_K, jt, jf, k }
}
const fn ret(k: u32) -> Insn {
    Insn { code: RET_K, jt: 0, jf: 0, k }
}
pub const fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

/// `AUDIT_ARCH_*` of the agent's own ABI.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "arm")]
pub const AUDIT_ARCH: u32 = 0x4000_0028;

/// x32 syscalls on amd64 carry this bit.
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;

/// Namespace flags of `clone` (as Docker masks them without CAP_SYS_ADMIN).
pub const CLONE_NAMESPACES: u32 = 0x7E02_0000;
/// `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, both, and the query.
pub const PERSONALITIES: [u32; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];
const AF_VSOCK: u32 = 40;

macro_rules! nrs {
    ($($name:ident),* $(,)?) => { [$((stringify!($name), libc::$name as u32)),*] };
}

/// The syscalls refused outright on every ABI we build for: (name, number).
pub fn refused() -> Vec<(&'static str, u32)> {
    let mut v: Vec<(&'static str, u32)> = nrs![
        SYS_acct,
        SYS_add_key,
        SYS_bpf,
        SYS_clock_adjtime,
        SYS_clock_settime,
        SYS_delete_module,
        SYS_fanotify_init,
        SYS_finit_module,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fsopen,
        SYS_fspick,
        SYS_get_mempolicy,
        SYS_init_module,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_io_uring_setup,
        SYS_kcmp,
        SYS_kexec_load,
        SYS_keyctl,
        SYS_lookup_dcookie,
        SYS_mbind,
        SYS_mount,
        SYS_mount_setattr,
        SYS_move_mount,
        SYS_move_pages,
        SYS_name_to_handle_at,
        SYS_nfsservctl,
        SYS_open_by_handle_at,
        SYS_open_tree,
        SYS_perf_event_open,
        SYS_pivot_root,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_ptrace,
        SYS_quotactl,
        SYS_quotactl_fd,
        SYS_reboot,
        SYS_request_key,
        SYS_set_mempolicy,
        SYS_set_mempolicy_home_node,
        SYS_setns,
        SYS_settimeofday,
        SYS_swapoff,
        SYS_swapon,
        SYS_syslog,
        SYS_umount2,
        SYS_unshare,
        SYS_userfaultfd,
        SYS_vhangup,
    ]
    .to_vec();
    #[cfg(target_arch = "x86_64")]
    v.extend(nrs![SYS_ioperm, SYS_iopl, SYS_kexec_file_load, SYS_sysfs, SYS__sysctl, SYS_uselib, SYS_ustat]);
    // musl's libc crate lacks it on aarch64: the kernel's number.
    #[cfg(target_arch = "aarch64")]
    v.push(("SYS_kexec_file_load", 294));
    #[cfg(target_arch = "arm")]
    v.extend(nrs![SYS_sysfs, SYS__sysctl, SYS_uselib, SYS_ustat]);
    v
}

/// The whole program.
pub fn program() -> Vec<Insn> {
    let deny = errno(libc::EPERM);
    let mut p = vec![ld(ARCH), jeq(AUDIT_ARCH, 1, 0), ret(deny), ld(NR)];
    #[cfg(target_arch = "x86_64")]
    p.extend([Insn { code: JGE_K, jt: 0, jf: 1, k: X32_BIT }, ret(deny)]);
    for (_, nr) in refused() {
        p.extend([jeq(nr, 0, 1), ret(deny)]);
    }
    // clone: no new namespaces.
    p.extend([
        jeq(libc::SYS_clone as u32, 0, 4),
        ld(ARG0),
        Insn { code: JSET_K, jt: 0, jf: 1, k: CLONE_NAMESPACES },
        ret(deny),
        ret(RET_ALLOW),
    ]);
    // clone3 hides its flags in memory a filter cannot read.
    p.extend([jeq(libc::SYS_clone3 as u32, 0, 1), ret(errno(libc::ENOSYS))]);
    // personality: the harmless values only.
    let n = PERSONALITIES.len() as u8;
    p.push(jeq(libc::SYS_personality as u32, 0, n + 3));
    p.push(ld(ARG0));
    for (i, v) in PERSONALITIES.iter().enumerate() {
        p.push(jeq(*v, n - i as u8, 0));
    }
    p.extend([ret(deny), ret(RET_ALLOW)]);
    // socket: no AF_VSOCK (the host's hypervisor sockets).
    p.extend([jeq(libc::SYS_socket as u32, 0, 4), ld(ARG0), jeq(AF_VSOCK, 0, 1), ret(deny), ret(RET_ALLOW)]);
    p.push(ret(RET_ALLOW));
    p
}

/// `seccomp(2)`'s operation and flag (`<linux/seccomp.h>`).
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 1 << 2;

/// Installs the profile on the calling thread (and what it executes). `no_new_privileges`
/// must be set, or the caller must hold CAP_SYS_ADMIN.
pub fn install() -> std::io::Result<()> {
    let prog = program();
    let filters: Vec<libc::sock_filter> =
        prog.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    let fprog = libc::sock_fprog { len: filters.len() as u16, filter: filters.as_ptr() as *mut libc::sock_filter };
    // SPEC_ALLOW, as runc and Docker do: without it the kernel also turns on its speculative
    // store bypass mitigation for the container (spec_store_bypass_disable=seccomp, the x86
    // default), which slows every process in it and cost 5 ms a start here. Kernels before 4.17
    // do not know the flag: then the filter alone.
    // SAFETY: `fprog` points at `filters`, which outlives the calls; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(e);
    }
    // SAFETY: as above.
    let r = unsafe {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog, 0, 0)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `program` over one syscall as the kernel would (for tests): what it returns.
pub fn run(program: &[Insn], nr: u32, arch: u32, arg0: u32) -> u32 {
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = program[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                a = match i.k {
                    NR => nr,
                    ARCH => arch,
                    ARG0 => arg0,
                    _ => 0,
                }
            }
            JEQ_K | JGE_K | JSET_K => {
                let taken = match i.code {
                    JEQ_K => a == i.k,
                    JGE_K => a >= i.k,
                    _ => a & i.k != 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            RET_K => return i.k,
            c => panic!("unknown instruction {c:#x}"),
        }
    }
}

/// libcontainer's executor with the profile: installed after everything libcontainer sets up
/// (mounts, capabilities, user), just before `execvp`, in the container's init or exec process.
#[derive(Debug, Clone, Copy)]
pub struct Confined;

impl libcontainer::workload::Executor for Confined {
    fn exec(&self, spec: &libcontainer::oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        install().map_err(|e| libcontainer::workload::ExecutorError::Other(format!("cannot install seccomp: {e}")))?;
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(
        &self,
        spec: &libcontainer::oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
    }
}

/// Whether this kernel runs the profile: installed in a throwaway child, which then tries
/// `keyctl` (refused) and `getpid` (allowed). For `bramble-agent check`.
pub fn works() -> Result<(), String> {
    // SAFETY: the child only makes raw syscalls and exits; nothing that could take a lock.
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot fork: {}", std::io::Error::last_os_error())),
        0 => {
            // SAFETY: raw syscalls in the child, then _exit.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let code = match install() {
                    Err(_) => 3,
                    Ok(()) => {
                        let keyctl = libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0);
                        let eperm = *libc::__errno_location() == libc::EPERM;
                        let pid = libc::syscall(libc::SYS_getpid);
                        if keyctl == -1 && eperm && pid > 0 {
                            0
                        } else {
                            4
                        }
                    }
                };
                libc::_exit(code)
            }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
                Some(0) => Ok(()),
                Some(3) => Err("the kernel refused a seccomp filter (CONFIG_SECCOMP_FILTER?)".into()),
                Some(4) => Err("a seccomp filter was installed but did not refuse keyctl".into()),
                _ => Err(format!("the seccomp test child ended with status {status}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(nr: i64, arg0: u32) -> u32 {
        run(&program(), nr as u32, AUDIT_ARCH, arg0)
    }

    #[test]
    fn dockers_refusals_and_the_rest_allowed() {
        let eperm = errno(libc::EPERM);
        for nr in [libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_bpf, libc::SYS_ptrace, libc::SYS_kexec_load] {
            assert_eq!(judge(nr, 0), eperm, "{nr}");
        }
        for nr in [libc::SYS_perf_event_open, libc::SYS_io_uring_setup, libc::SYS_unshare, libc::SYS_mount] {
            assert_eq!(judge(nr, 0), eperm, "{nr}");
        }
        for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_getpid, libc::SYS_execve, libc::SYS_futex] {
            assert_eq!(judge(nr, 0), RET_ALLOW, "{nr}");
        }
        // clone: threads and forks yes, new namespaces no; clone3 is "not here".
        assert_eq!(judge(libc::SYS_clone, 0x3d0f00), RET_ALLOW, "pthread_create's flags");
        assert_eq!(judge(libc::SYS_clone, 0x0120_0011), RET_ALLOW, "fork's flags");
        assert_eq!(judge(libc::SYS_clone, 0x1000_0000 | 0x11), eperm, "CLONE_NEWUSER");
        assert_eq!(judge(libc::SYS_clone, 0x2000_0000), eperm, "CLONE_NEWPID");
        assert_eq!(judge(libc::SYS_clone3, 0), errno(libc::ENOSYS));
        assert_eq!(judge(libc::SYS_personality, 0xffff_ffff), RET_ALLOW);
        assert_eq!(judge(libc::SYS_personality, 0x8), RET_ALLOW);
        assert_eq!(judge(libc::SYS_personality, 0x0040_0000), eperm, "READ_IMPLIES_EXEC");
        assert_eq!(judge(libc::SYS_socket, 2), RET_ALLOW, "AF_INET");
        assert_eq!(judge(libc::SYS_socket, 40), eperm, "AF_VSOCK");
        // Another ABI.
        assert_eq!(run(&program(), libc::SYS_getpid as u32, 0x4000_0003, 0), eperm, "i386");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(judge(i64::from(X32_BIT) | libc::SYS_getpid, 0), eperm, "x32");
    }

    #[test]
    fn jumps_stay_inside_the_program_and_every_path_returns() {
        let p = program();
        assert!(p.len() < 4096, "BPF_MAXINSNS");
        for (i, insn) in p.iter().enumerate() {
            if matches!(insn.code, JEQ_K | JGE_K | JSET_K) {
                assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < p.len(), "jump out at {i}");
            }
        }
        assert_eq!(p.last().unwrap().code, RET_K);
        let names: Vec<_> = refused().into_iter().map(|(n, _)| n).collect();
        let unique: std::collections::BTreeSet<_> = refused().into_iter().map(|(_, nr)| nr).collect();
        assert_eq!(unique.len(), names.len(), "no number twice: {names:?}");
    }

    #[test]
    fn this_kernel_runs_it() {
        works().unwrap();
    }
}
