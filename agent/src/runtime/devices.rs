//! Which devices a container may use: none but the defaults every container has (null, zero,
//! full, random, urandom, tty, console, ptmx and its pts, tun). On cgroup v1 that is the devices
//! controller (the spec denies everything; libcontainer then allows these). cgroup v2 has no such
//! files: the same rules are an eBPF program of type `cgroup_device`, built here and attached to
//! the container's cgroup by its shim before the container starts (libcontainer would need
//! libbpf for it, a C library we keep out of the static ARM builds).

/// One rule: a type (`b'c'`, `b'b'`), a major and minor (`None`: any) and the access it allows
/// (`MKNOD | READ | WRITE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub typ: u8,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
const RWM: u32 = MKNOD | READ | WRITE;

const fn char_dev(major: u32, minor: Option<u32>) -> Rule {
    Rule { typ: b'c', major: Some(major), minor, access: RWM }
}

/// What libcontainer allows on v1 after our deny-all: the same set here for v2. (`m` on any
/// device lets an image's device nodes be created; without CAP_MKNOD, which containers do not
/// have, nothing can be, and opening one is refused.)
pub const DEFAULTS: [Rule; 12] = [
    Rule { typ: b'c', major: None, minor: None, access: MKNOD },
    Rule { typ: b'b', major: None, minor: None, access: MKNOD },
    char_dev(1, Some(3)),    // null
    char_dev(1, Some(5)),    // zero
    char_dev(1, Some(7)),    // full
    char_dev(1, Some(8)),    // random
    char_dev(1, Some(9)),    // urandom
    char_dev(5, Some(0)),    // tty
    char_dev(5, Some(1)),    // console
    char_dev(5, Some(2)),    // ptmx
    char_dev(136, None),     // pts
    char_dev(10, Some(200)), // tun
];

/// One eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BpfInsn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const LDX_W: u8 = 0x61;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const AND64_K: u8 = 0x57;
const RSH64_K: u8 = 0x77;
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn { code, regs: dst | (src << 4), off, imm }
}

/// The program: allow (1) what a rule allows, refuse (0) the rest. The context is
/// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` with the access in the
/// upper half of `access_type` and the type (1 block, 2 char) in the lower.
pub fn program(rules: &[Rule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(MOV64_X, 3, 2, 0, 0),
        insn(AND64_K, 3, 0, 0, 0xffff),
        insn(RSH64_K, 2, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules {
        let typ = if r.typ == b'b' { 1 } else { 2 };
        let mut checks = vec![(3u8, typ)];
        checks.extend(r.major.map(|m| (4u8, m as i32)));
        checks.extend(r.minor.map(|m| (5u8, m as i32)));
        // After the checks: r6 = access & ~allowed; if r6 != 0 skip; r0 = 1; exit.
        let tail = 5i16;
        let n = checks.len() as i16;
        for (i, (reg, value)) in checks.into_iter().enumerate() {
            p.push(insn(JNE_K, reg, 0, n - 1 - i as i16 + tail, value));
        }
        p.push(insn(MOV64_X, 6, 2, 0, 0));
        p.push(insn(AND64_K, 6, 0, 0, (!r.access & RWM) as i32));
        p.push(insn(JNE_K, 6, 0, 2, 0));
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Runs `program` as the kernel would, for tests: its verdict on one access.
pub fn run(program: &[BpfInsn], typ: u8, major: u32, minor: u32, access: u32) -> u64 {
    let ctx = [(access << 16) | if typ == b'b' { 1 } else { 2 }, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = program[pc];
        pc += 1;
        let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
        match i.code {
            LDX_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
            MOV64_X => r[dst] = r[src],
            MOV64_K => r[dst] = i.imm as i64 as u64,
            AND64_K => r[dst] &= i.imm as i64 as u64,
            RSH64_K => r[dst] >>= i.imm,
            JNE_K => {
                if r[dst] != i.imm as i64 as u64 {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            EXIT => return r[0],
            c => panic!("unknown instruction {c:#x}"),
        }
    }
}

/// `bpf(2)`'s attributes for `BPF_PROG_LOAD`, the kernel's union padded with zeros.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    rest: [u64; 10],
}

/// …and for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    rest: [u64; 14],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is one of the attribute structs above: what the command reads, then zeros.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// Loads [`program`] of `rules`; the kernel's verifier log in the error if it refuses.
pub fn load(rules: &[Rule]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let prog = program(rules);
    let license = c"GPL";
    let attr = |log: &mut [u8]| LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr(&mut [])) {
        // SAFETY: a new descriptor the kernel gave us.
        Ok(fd) => Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 1 << 16];
            let _ = bpf(BPF_PROG_LOAD, &mut attr(&mut log));
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end.min(2048)]);
            Err(std::io::Error::new(e.kind(), format!("the device program was refused: {e}: {}", text.trim())))
        }
    }
}

/// The rules for an app's devices: each node read and write (never mknod).
pub fn rules_for(devices: &[bramble_proto::device::Device]) -> Vec<Rule> {
    devices
        .iter()
        .map(|d| Rule {
            typ: match d.kind {
                bramble_proto::device::DeviceKind::Char => b'c',
                bramble_proto::device::DeviceKind::Block => b'b',
            },
            major: Some(d.major),
            minor: Some(d.minor),
            access: READ | WRITE,
        })
        .collect()
}

/// Attaches a program for the default devices and `extra` to the cgroup v2 directory `cgroup`:
/// from then on its processes open and create only those devices.
pub fn restrict(cgroup: &std::path::Path, extra: &[Rule]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let rules: Vec<Rule> = DEFAULTS.iter().chain(extra).copied().collect();
    let prog = load(&rules)?;
    let dir = std::fs::File::open(cgroup)?;
    let mut attr = AttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ()).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot attach the device program to {}: {e}", cgroup.display()))
    })
}

/// …and for `BPF_PROG_QUERY`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    rest: [u32; 25],
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// How many device programs are attached to the cgroup v2 directory `cgroup` (its own, not its
/// parents').
pub fn attached(cgroup: &std::path::Path) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(cgroup)?;
    let mut attr =
        QueryAttr { target_fd: dir.as_raw_fd() as u32, attach_type: BPF_CGROUP_DEVICE, ..Default::default() };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(attr.prog_cnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_and_nothing_else() {
        let p = program(&DEFAULTS);
        let rw = READ | WRITE;
        assert_eq!(run(&p, b'c', 1, 3, rw), 1, "/dev/null");
        assert_eq!(run(&p, b'c', 1, 9, READ), 1, "/dev/urandom");
        assert_eq!(run(&p, b'c', 136, 7, rw), 1, "a pts");
        assert_eq!(run(&p, b'c', 1, 1, READ), 0, "/dev/mem");
        assert_eq!(run(&p, b'c', 1, 11, WRITE), 0, "/dev/kmsg");
        assert_eq!(run(&p, b'b', 8, 0, READ), 0, "/dev/sda");
        assert_eq!(run(&p, b'b', 179, 0, rw), 0, "/dev/mmcblk0 (a Pi's SD card)");
        assert_eq!(run(&p, b'c', 254, 0, rw), 0, "/dev/gpiochip0");
        assert_eq!(run(&p, b'b', 8, 0, MKNOD), 1, "mknod is the capability's to refuse");
        assert_eq!(run(&p, b'b', 8, 0, MKNOD | READ), 0);
    }

    #[test]
    fn an_apps_devices_are_allowed_exactly() {
        use bramble_proto::device::{Device, DeviceClass, DeviceKind};
        let d = Device {
            class: DeviceClass::Serial,
            path: "/dev/ttyUSB0".into(),
            kind: DeviceKind::Char,
            major: 188,
            minor: 0,
            mode: 0o660,
            gid: 20,
            usb: None,
            serial: None,
        };
        let loop7 = Device {
            class: DeviceClass::Usb,
            path: "/dev/bus/usb/001/002".into(),
            kind: DeviceKind::Block,
            major: 7,
            minor: 3,
            ..d.clone()
        };
        let rules: Vec<Rule> = DEFAULTS.iter().copied().chain(rules_for(&[d, loop7])).collect();
        let p = program(&rules);
        assert_eq!(run(&p, b'c', 188, 0, READ | WRITE), 1, "the app's serial port");
        assert_eq!(run(&p, b'c', 188, 1, READ), 0, "the next one is not the app's");
        assert_eq!(run(&p, b'b', 188, 0, READ), 0, "nor a block device of the same numbers");
        assert_eq!(run(&p, b'b', 7, 3, READ | WRITE), 1);
        assert_eq!(run(&p, b'c', 7, 3, READ), 0);
        assert_eq!(run(&p, b'c', 1, 11, READ), 0, "/dev/kmsg still refused");
    }

    /// The kernel's verifier takes it (needs root; this machine's cgroups are v1, so the attach
    /// itself is tried on the cgroup v2 board, `scripts/test-boards`).
    #[test]
    fn the_kernel_loads_it() {
        assert!(nix::unistd::geteuid().is_root(), "loading a BPF program needs root: run the tests as root");
        load(&DEFAULTS).unwrap();
    }

    /// Attached for real to a cgroup v2 directory (this hybrid machine's `unified` mount, or
    /// the root of a v2 board): a process in it opens /dev/null, not /dev/kmsg.
    #[test]
    fn attached_it_refuses_other_devices() {
        assert!(nix::unistd::geteuid().is_root(), "attaching a device program needs root: run the tests as root");
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
            .expect("a cgroup v2 hierarchy (/sys/fs/cgroup/unified or /sys/fs/cgroup)");
        let dir = root.join(format!("bramble-devtest-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(attached(&dir).unwrap(), 0);
        restrict(&dir, &[]).unwrap();
        assert_eq!(attached(&dir).unwrap(), 1);
        // SAFETY: the child makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = (|| {
                std::fs::write(dir.join("cgroup.procs"), b"0").ok()?;
                let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").is_ok();
                let kmsg = std::fs::File::open("/dev/kmsg").map(drop).map_err(|e| e.raw_os_error());
                Some(if null && kmsg == Err(Some(libc::EPERM)) { 0 } else { 1 })
            })()
            .unwrap_or(2);
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(code) }
        }
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0),
            "1: /dev/null refused or /dev/kmsg allowed; 2: cannot join the cgroup"
        );
    }
}
