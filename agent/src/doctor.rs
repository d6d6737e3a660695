//! `bramble-agent check`: can this board run containers? Each piece the agent needs is looked at
//! (or tried, where a look can mislead), and each problem comes with the exact fix.
//!
//! The judgements are pure functions of what was read (`/proc/cgroups`, the kernel's command line,
//! `statvfs`, …) so they are unit-tested with the files of boards we do not have, a Raspberry Pi
//! with its memory controller off among them. The gathering around them is real and runs on the
//! board: an overlay is mounted in the data dir's filesystem, namespaces are created.

use crate::net::check::Finding;
use std::path::{Path, PathBuf};

/// The oldest kernel we support: cgroup v2's pids and memory controllers, overlayfs in a user's
/// data dir, and the eBPF device filter libcontainer attaches on cgroup v2 (4.15).
pub const MIN_KERNEL: (u32, u32) = (4, 19);

/// Below this free space in the data dir, a pull of a small image may not fit.
pub const MIN_FREE_BYTES: u64 = 200 << 20;
/// Below this many free inodes, unpacking an image (thousands of small files) fails.
pub const MIN_FREE_INODES: u64 = 20_000;
/// A clock before this is wrong for certain: certificates would not be valid yet.
pub const CLOCK_FLOOR_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn ok(what: &'static str, required: bool, detail: impl Into<String>) -> Finding {
    Finding { what, required, ok: true, detail: detail.into() }
}

fn bad(what: &'static str, required: bool, detail: impl Into<String>) -> Finding {
    Finding { what, required, ok: false, detail: detail.into() }
}

/// `6.1.0-57-arm64` → (6, 1).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn kernel(release: &str) -> Finding {
    match kernel_version(release) {
        Some(v) if v >= MIN_KERNEL => ok("kernel", true, format!("{release} (≥ {}.{})", MIN_KERNEL.0, MIN_KERNEL.1)),
        Some(_) => bad(
            "kernel",
            true,
            format!("{release} is older than {}.{}: upgrade the kernel (apt-get install linux-image-arm64, or the board's own)", MIN_KERNEL.0, MIN_KERNEL.1),
        ),
        None => bad("kernel", true, format!("cannot read the kernel version from {release:?}")),
    }
}

/// What the cgroup hierarchy offers. `v2_controllers` is `/sys/fs/cgroup/cgroup.controllers` when
/// the unified hierarchy is mounted there; `proc_cgroups` is `/proc/cgroups`; `cmdline` is
/// `/proc/cmdline` (where a board's boot flags turn controllers off).
pub fn cgroups(v2_controllers: Option<&str>, proc_cgroups: &str, cmdline: &str) -> Vec<Finding> {
    let required = ["cpu", "memory", "pids"];
    let (version, present): (&str, Vec<String>) = match v2_controllers {
        Some(list) => ("v2", list.split_whitespace().map(String::from).collect()),
        None => (
            "v1",
            proc_cgroups
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() >= 4 && f[3] == "1").then(|| f[0].to_string())
                })
                .collect(),
        ),
    };
    let missing: Vec<&str> = required.iter().copied().filter(|c| !present.iter().any(|p| p == c)).collect();
    let mut out = Vec::new();
    if missing.is_empty() {
        out.push(ok("cgroups", true, format!("{version}: {}", present.join(" "))));
    } else {
        let flags: Vec<&str> = cmdline.split_whitespace().filter(|w| w.starts_with("cgroup_disable=")).collect();
        let mut fix = format!("{version} without the {} controller", missing.join(", "));
        if missing.contains(&"memory") {
            // Raspberry Pi kernels turn the memory controller off unless the boot line asks for it.
            fix.push_str(
                ": add `cgroup_enable=memory cgroup_memory=1` to the end of the one line in \
                 /boot/firmware/cmdline.txt (/boot/cmdline.txt on older Raspberry Pi OS) and reboot",
            );
        } else {
            fix.push_str(": enable it in the kernel (CONFIG_CGROUP_PIDS, CONFIG_CGROUP_SCHED, CONFIG_MEMCG)");
        }
        if !flags.is_empty() {
            fix.push_str(&format!("; the boot line has {} (remove it)", flags.join(" ")));
        }
        out.push(bad("cgroups", true, fix));
    }
    if version == "v1" {
        out.push(ok(
            "cgroup v2",
            false,
            "not in use (v1 works; for v2 boot with systemd.unified_cgroup_hierarchy=1, the default since Debian 11)",
        ));
    }
    out
}

/// Free space and inodes of the data dir's filesystem.
pub fn disk(path: &Path, free_bytes: u64, free_inodes: Option<u64>) -> Finding {
    let mib = free_bytes >> 20;
    if free_bytes < MIN_FREE_BYTES {
        return bad(
            "disk space of the data dir",
            true,
            format!("{mib} MiB free at {}: free space (bramble-agent image prune) or move data_dir", path.display()),
        );
    }
    match free_inodes {
        Some(n) if n < MIN_FREE_INODES => bad(
            "disk space of the data dir",
            true,
            format!(
                "only {n} inodes free at {}: unpacked images need many files; free some or move data_dir",
                path.display()
            ),
        ),
        Some(n) => {
            ok("disk space of the data dir", true, format!("{mib} MiB and {n} inodes free at {}", path.display()))
        }
        // Filesystems such as btrfs report no inode count: they have no fixed number.
        None => ok("disk space of the data dir", true, format!("{mib} MiB free at {}", path.display())),
    }
}

/// `synced` is the kernel's view (adjtimex: not TIME_ERROR), `now_ms` the wall clock.
pub fn clock(now_ms: u64, synced: bool) -> Finding {
    if now_ms < CLOCK_FLOOR_MS {
        let date = crate::runtime::logs::rfc3339(u128::from(now_ms) * 1_000_000);
        let date = date.split('.').next().unwrap_or(&date).to_string() + "Z";
        return bad(
            "clock",
            true,
            format!(
                "the clock says {date}: certificates are not valid yet; set the time (a board without a \
                 real-time clock needs network time: apt-get install systemd-timesyncd)"
            ),
        );
    }
    if synced {
        ok("clock", false, "synchronised")
    } else {
        bad(
            "clock",
            false,
            "not synchronised: a board without a real-time clock starts in the past after a power cut; \
             apt-get install systemd-timesyncd (or chrony)",
        )
    }
}

/// From `/proc/meminfo`.
pub fn memory(meminfo: &str) -> Finding {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if avail < 64 << 10 => bad(
            "memory",
            true,
            format!("{} MiB available of {} MiB: too little to start containers", avail >> 10, total >> 10),
        ),
        (Some(total), Some(avail)) => {
            ok("memory", true, format!("{} MiB available of {} MiB", avail >> 10, total >> 10))
        }
        _ => bad("memory", false, "cannot read /proc/meminfo"),
    }
}

/// The default seccomp profile, tried for real in a child (`runtime::seccomp::works`).
pub fn seccomp(tried: Result<(), String>) -> Finding {
    match tried {
        Ok(()) => {
            ok("seccomp", true, "the default profile installs and refuses keyctl (filters built in, no libseccomp)")
        }
        Err(e) => bad(
            "seccomp",
            true,
            format!(
                "{e}: containers cannot start with the default profile; a kernel with CONFIG_SECCOMP_FILTER is needed \
                 (Raspberry Pi OS and Debian kernels have it)"
            ),
        ),
    }
}

/// On cgroup v2, the device rules are a BPF program (`runtime::devices`): loaded for real.
pub fn device_program(v2: bool, tried: impl FnOnce() -> std::io::Result<()>) -> Option<Finding> {
    if !v2 {
        return None;
    }
    Some(match tried() {
        Ok(()) => ok("devices (cgroup v2)", true, "the device program loads (CONFIG_CGROUP_BPF)"),
        Err(e) => bad(
            "devices (cgroup v2)",
            true,
            format!(
                "{e}: containers cannot be kept from the board's devices; a kernel with CONFIG_CGROUP_BPF is needed"
            ),
        ),
    })
}

/// Every check of the board, the pod network's included.
pub fn board(data_dir: &Path) -> Vec<Finding> {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().to_string()).unwrap_or_default();
    let mut out = vec![ok_root(), shim(), kernel(&release)];
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    out.extend(cgroups(
        v2.as_deref(),
        &std::fs::read_to_string("/proc/cgroups").unwrap_or_default(),
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    ));
    out.push(namespaces());
    out.push(overlay(data_dir));
    out.push(seccomp(crate::runtime::seccomp::works()));
    out.extend(device_program(v2.is_some(), || {
        crate::runtime::devices::load(&crate::runtime::devices::DEFAULTS).map(drop)
    }));
    let dir = nearest_existing(data_dir);
    out.push(match nix::sys::statvfs::statvfs(&dir) {
        // (statvfs's fields are 32 bits on 32-bit ARM: the casts are not idle there.)
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => {
            let inodes = (s.files() > 0).then(|| s.files_available() as u64);
            disk(&dir, s.blocks_available() as u64 * s.fragment_size() as u64, inodes)
        }
        Err(e) => bad("disk space of the data dir", true, format!("cannot statvfs {}: {e}", dir.display())),
    });
    out.push(clock(bramble_proto::time::now_ms(), clock_synced()));
    out.push(memory(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default()));
    out
}

fn ok_root() -> Finding {
    if nix::unistd::geteuid().is_root() {
        ok("root", true, "yes")
    } else {
        bad(
            "root",
            true,
            "the agent runs as root (namespaces, cgroups, mounts): run it with sudo or as the systemd service",
        )
    }
}

/// `bramble-shim` beside this binary: there, executable, and built for the same machine. (Read,
/// not run: under qemu-user without binfmt, as in `cross/build.sh`, running it would fail.)
fn shim() -> Finding {
    const WHAT: &str = "bramble-shim";
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return bad(WHAT, true, format!("cannot tell where this binary is: {e}")),
    };
    let bin = match crate::runtime::shim_binary_for(&exe) {
        Ok(b) => b,
        Err(e) => return bad(WHAT, true, e),
    };
    let executable = std::fs::metadata(&bin).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o111 != 0
    });
    if !executable {
        return bad(WHAT, true, format!("{} is not executable: chmod 755 it (or reinstall)", bin.display()));
    }
    match (elf_machine(Path::new("/proc/self/exe")), elf_machine(&bin)) {
        (_, None) => bad(WHAT, true, format!("{} is not a program (no ELF header): reinstall it", bin.display())),
        (Some(own), Some(its)) if own != its => bad(
            WHAT,
            true,
            format!(
                "{} is built for another machine (ELF machine {its}, this binary {own}): install the shim of this build",
                bin.display()
            ),
        ),
        _ => ok(WHAT, true, format!("{} (beside this binary, built for this machine)", bin.display())),
    }
}

/// The `e_machine` of an ELF file (little-endian, as every target Bramble builds for).
fn elf_machine(path: &Path) -> Option<u16> {
    use std::io::Read;
    let mut header = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut header).ok()?;
    (header[..4] == *b"\x7fELF").then(|| u16::from_le_bytes([header[18], header[19]]))
}

/// The data dir, or its nearest existing parent (before the first run).
fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent.to_path_buf(),
            _ => break,
        }
    }
    p
}

fn clock_synced() -> bool {
    // SAFETY: adjtimex with modes = 0 only reads; the struct is zeroed and ours.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    state >= 0 && state != libc::TIME_ERROR
}

/// Creates each namespace a container gets, in a thread of its own (gone with it).
fn namespaces() -> Finding {
    use nix::sched::CloneFlags;
    let kinds = [
        (CloneFlags::CLONE_NEWNS, "mount"),
        (CloneFlags::CLONE_NEWUTS, "uts"),
        (CloneFlags::CLONE_NEWIPC, "ipc"),
        (CloneFlags::CLONE_NEWPID, "pid"),
        (CloneFlags::CLONE_NEWNET, "net"),
        (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    ];
    let result = std::thread::spawn(move || {
        let failed: Vec<String> = kinds
            .iter()
            .filter_map(|(flag, name)| nix::sched::unshare(*flag).err().map(|e| format!("{name} ({e})")))
            .collect();
        failed
    })
    .join();
    match result {
        Ok(failed) if failed.is_empty() => ok("namespaces", true, "mount, uts, ipc, pid, net, cgroup"),
        Ok(failed) => bad(
            "namespaces",
            true,
            format!("cannot create {}: run as root, and enable CONFIG_NAMESPACES and its parts", failed.join(", ")),
        ),
        Err(_) => bad("namespaces", true, "the probe thread panicked"),
    }
}

/// Mounts a small overlay in the data dir's filesystem (where the root filesystems go), in a
/// mount namespace of its own, and removes it.
fn overlay(data_dir: &Path) -> Finding {
    let base = nearest_existing(data_dir);
    let result = std::thread::spawn(move || -> Result<String, String> {
        use nix::mount::{mount, umount, MsFlags};
        let dir = probe_dir_in(&base)?;
        let r = (|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("a mount namespace: {e}"))?;
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| format!("making / private: {e}"))?;
            for d in ["lower", "upper", "work", "merged"] {
                std::fs::create_dir(dir.join(d)).map_err(|e| format!("{}: {e}", dir.join(d).display()))?;
            }
            std::fs::write(dir.join("lower/f"), b"x").map_err(|e| e.to_string())?;
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                dir.join("lower").display(),
                dir.join("upper").display(),
                dir.join("work").display()
            );
            mount(Some("overlay"), &dir.join("merged"), Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
                .map_err(|e| e.to_string())?;
            let seen = std::fs::read(dir.join("merged/f")).map_err(|e| e.to_string());
            let _ = umount(&dir.join("merged"));
            match seen {
                Ok(b) if b == b"x" => Ok(format!("mounts in {}", base.display())),
                Ok(_) => Err("the overlay shows the wrong content".into()),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_dir_all(&dir);
        r
    })
    .join()
    .unwrap_or_else(|_| Err("the probe thread panicked".into()));
    match result {
        Ok(detail) => ok("overlayfs", true, detail),
        Err(e) => bad(
            "overlayfs",
            true,
            format!(
                "cannot mount an overlay under {}: {e}: enable CONFIG_OVERLAY_FS (modprobe overlay), and keep \
                 data_dir on ext4, xfs or btrfs (not on NFS, 9p or another overlay)",
                data_dir.display()
            ),
        ),
    }
}

/// A directory of this process's own to try things in, under `base`.
fn probe_dir_in(base: &Path) -> Result<PathBuf, String> {
    let dir = base.join(format!(".bramble-check-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_told_by_their_elf_machine() {
        let own = elf_machine(Path::new("/proc/self/exe")).expect("this test is an ELF program");
        assert_eq!(elf_machine(&std::env::current_exe().unwrap()), Some(own));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("script"), "#!/bin/sh\n").unwrap();
        assert_eq!(elf_machine(&dir.path().join("script")), None);
        assert_eq!(elf_machine(&dir.path().join("absent")), None);
    }

    #[test]
    fn kernels_old_and_new() {
        assert_eq!(kernel_version("6.1.0-57-arm64"), Some((6, 1)));
        assert_eq!(kernel_version("4.9.253-tegra"), Some((4, 9)));
        assert!(kernel("6.12.20+rpt-rpi-v8").ok);
        let old = kernel("4.9.253-tegra");
        assert!(!old.ok && old.required && old.detail.contains("older than 4.19"), "{old:?}");
        assert!(!kernel("weird").ok);
    }

    #[test]
    fn cgroup_v2_with_every_controller() {
        let f = cgroups(Some("cpuset cpu io memory hugetlb pids rdma misc\n"), "", "console=ttyS0");
        assert_eq!(f.len(), 1);
        assert!(f[0].ok && f[0].detail.starts_with("v2: cpuset cpu io memory"), "{f:?}");
    }

    /// A Raspberry Pi with Raspberry Pi OS's default boot line: no memory controller.
    #[test]
    fn a_raspberry_pi_without_its_memory_controller_is_told_the_boot_flag() {
        let cmdline =
            "coherent_pool=1M 8250.nr_uarts=0 cgroup_disable=memory console=ttyS0,115200 root=PARTUUID=1-02 rootwait";
        let f = cgroups(Some("cpuset cpu io pids\n"), "", cmdline);
        assert!(!f[0].ok && f[0].required);
        assert!(f[0].detail.contains("without the memory controller"), "{}", f[0].detail);
        assert!(f[0].detail.contains("cgroup_enable=memory cgroup_memory=1"), "{}", f[0].detail);
        assert!(f[0].detail.contains("/boot/firmware/cmdline.txt"), "{}", f[0].detail);
        assert!(f[0].detail.contains("has cgroup_disable=memory (remove it)"), "{}", f[0].detail);
    }

    #[test]
    fn cgroup_v1_from_proc_cgroups() {
        let proc = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t1\t1\ncpu\t3\t50\t1\ncpuacct\t3\t50\t1\nmemory\t4\t60\t1\npids\t5\t60\t1\n";
        let f = cgroups(None, proc, "");
        assert!(f[0].ok && f[0].detail.starts_with("v1:"), "{f:?}");
        assert!(f[1].ok && !f[1].required && f[1].detail.contains("systemd.unified_cgroup_hierarchy=1"));
        let no_pids = proc.replace("pids\t5\t60\t1", "pids\t0\t1\t0");
        let f = cgroups(None, &no_pids, "");
        assert!(
            !f[0].ok
                && f[0].detail.contains("without the pids controller")
                && f[0].detail.contains("CONFIG_CGROUP_PIDS")
        );
    }

    #[test]
    fn disk_space_and_inodes() {
        let p = Path::new("/var/lib/bramble");
        assert!(disk(p, 8 << 30, Some(1_000_000)).ok);
        assert!(disk(p, 8 << 30, None).ok, "btrfs reports no inode count");
        let full = disk(p, 50 << 20, Some(1_000_000));
        assert!(
            !full.ok && full.detail.contains("50 MiB free at /var/lib/bramble") && full.detail.contains("image prune")
        );
        let inodes = disk(p, 8 << 30, Some(500));
        assert!(!inodes.ok && inodes.detail.contains("only 500 inodes"));
    }

    #[test]
    fn a_clock_in_the_past_blocks_and_an_unsynced_one_warns() {
        let past = clock(1_000_000_000_000, false); // 2001
        assert!(!past.ok && past.required && past.detail.contains("2001-09-09") && past.detail.contains("timesyncd"));
        let unsynced = clock(CLOCK_FLOOR_MS + 1, false);
        assert!(!unsynced.ok && !unsynced.required);
        assert!(clock(CLOCK_FLOOR_MS + 1, true).ok);
    }

    #[test]
    fn memory_from_meminfo() {
        let m = memory("MemTotal:        1918000 kB\nMemFree:  100 kB\nMemAvailable:    1500000 kB\n");
        assert!(m.ok && m.detail == "1464 MiB available of 1873 MiB", "{m:?}");
        let low = memory("MemTotal:  500000 kB\nMemAvailable:  30000 kB\n");
        assert!(!low.ok && low.required);
    }

    #[test]
    fn seccomp_and_devices_are_tried_and_required() {
        assert!(seccomp(Ok(())).ok);
        let f = seccomp(Err("the kernel refused a seccomp filter".into()));
        assert!(!f.ok && f.required, "{f:?}");
        assert!(device_program(false, || unreachable!()).is_none(), "v1 has its devices controller");
        let f = device_program(true, || Err(std::io::Error::other("EPERM"))).unwrap();
        assert!(!f.ok && f.required && f.detail.contains("CONFIG_CGROUP_BPF"), "{f:?}");
        assert!(seccomp(crate::runtime::seccomp::works()).ok, "this machine's kernel filters");
    }
}
