//! Reading a container's cgroup: limits and usage, on cgroup v1 (this development machine, hybrid)
//! and v2 (Raspberry Pi OS). Plain file reads; no D-Bus, no library.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What a container uses, from its cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    /// Usage minus inactive file cache, as the kubelet counts it.
    pub memory_working_set: u64,
    pub memory_limit: Option<u64>,
    pub pids: u64,
    pub oom_kills: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

/// The cgroup filesystem: `/sys/fs/cgroup`, or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
    pub version: Version,
}

fn read(p: &Path) -> io::Result<String> {
    fs::read_to_string(p).map(|s| s.trim().to_string())
}

fn num(p: &Path) -> io::Result<u64> {
    let s = read(p)?;
    s.parse().map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: expected a number, found {s:?}", p.display()))
    })
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
fn keyed(p: &Path, key: &str) -> io::Result<Option<u64>> {
    Ok(read(p)?
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())))
}

/// "max" means no limit (v2); v1 reports absurdly large numbers for none.
fn limit(s: &str) -> Option<u64> {
    match s {
        "max" | "-1" => None,
        s => s.parse().ok().filter(|v| *v < (1u64 << 60)),
    }
}

impl CgroupFs {
    /// The host's cgroups: v2 when `/sys/fs/cgroup` is the unified hierarchy.
    pub fn host() -> CgroupFs {
        let root = PathBuf::from("/sys/fs/cgroup");
        let version = if root.join("cgroup.controllers").exists() { Version::V2 } else { Version::V1 };
        CgroupFs { root, version }
    }

    pub fn at(root: &Path, version: Version) -> CgroupFs {
        CgroupFs { root: root.to_path_buf(), version }
    }

    fn dir(&self, controller: &str, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        match self.version {
            Version::V2 => self.root.join(rel),
            Version::V1 => self.root.join(controller).join(rel),
        }
    }

    /// A container's cgroup directory on v2 (none on v1).
    pub fn v2_dir(&self, path: &str) -> Option<PathBuf> {
        (self.version == Version::V2).then(|| self.dir("", path))
    }

    /// Starts the kernel's wait that the first move of a process between cgroups pays, so that
    /// it passes while the shim starts instead of inside libcontainer's move of the container's
    /// first process. The thread is not joined: it ends by itself.
    ///
    /// Every write to a `cgroup.procs` takes the kernel's cgroup threadgroup lock for writing, and
    /// taking it when nobody took it during the last RCU grace period waits for one
    /// (`rcu_sync_enter` → `synchronize_rcu`): 5–16 ms on this machine, most of a container's
    /// start. Within a grace period of another writer, it does not wait. So the agent moves
    /// itself into the cgroup it is already in (a move that changes nothing) on a thread of its
    /// own just before it starts a shim; by the time libcontainer's intermediate process writes
    /// its pid, that grace period is over or under way. What fails here (a cgroup that refuses
    /// processes) is ignored: the lock, and so the wait, was taken before the kernel looked.
    /// No thread (the system refused one) is no error: the start then waits as it would have.
    pub fn warm_migration_lock(&self) -> Option<std::thread::JoinHandle<()>> {
        let procs = self.own_procs_file();
        let thread = std::thread::Builder::new().name("cgroup-warm".into());
        thread
            .spawn(move || {
                let pid = std::process::id().to_string();
                // Only into the cgroup that lists this process already (a cgroup namespace could make
                // /proc/self/cgroup name another one than the mount shows): the move changes nothing.
                let Some(procs) = procs else { return };
                if std::fs::read_to_string(&procs).is_ok_and(|l| l.lines().any(|p| p == pid)) {
                    let _ = std::fs::write(procs, pid);
                }
            })
            .ok()
    }

    /// `cgroup.procs` of the cgroup this process is in (v2), or of its `pids` hierarchy (v1).
    pub(crate) fn own_procs_file(&self) -> Option<PathBuf> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = match self.version {
                Version::V2 => controllers.is_empty(),
                Version::V1 => controllers.split(',').any(|c| c == "pids"),
            };
            wanted.then_some(path)
        })?;
        Some(self.dir("pids", path).join("cgroup.procs"))
    }

    /// Creates the parents of a container's cgroup (v2). libcontainer creates each missing part of
    /// the path with `mkdir` after checking it is absent, so two containers starting at once on a
    /// fresh board race for `/sys/fs/cgroup/bramble` and one fails with "File exists". Creating the
    /// parents first (an existing one is fine) leaves libcontainer only the container's own cgroup.
    pub fn prepare_parents(&self, path: &str) -> io::Result<()> {
        if self.version != Version::V2 {
            return Ok(());
        }
        let Some(parent) = Path::new(path.trim_start_matches('/')).parent() else { return Ok(()) };
        if parent.as_os_str().is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(self.root.join(parent))
    }

    /// The v1 hierarchies a container's cgroup can be in (libcontainer makes it in each).
    const V1_CONTROLLERS: [&'static str; 12] = [
        "memory",
        "pids",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "blkio",
        "net_cls",
        "net_prio",
        "perf_event",
        "hugetlb",
    ];

    fn controllers(&self) -> &'static [&'static str] {
        match self.version {
            Version::V2 => &[""],
            Version::V1 => &Self::V1_CONTROLLERS,
        }
    }

    /// The cgroups directly under `parent` (`/bramble`), by name, in any hierarchy.
    pub fn children(&self, parent: &str) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for c in self.controllers() {
            let Ok(rd) = fs::read_dir(self.dir(c, parent)) else { continue };
            out.extend(rd.flatten().filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()));
        }
        out.into_iter().collect()
    }

    /// The processes in cgroup `path` (every hierarchy, for v1).
    pub fn procs(&self, path: &str) -> Vec<i32> {
        let mut out = std::collections::BTreeSet::new();
        for c in self.controllers() {
            if let Ok(s) = fs::read_to_string(self.dir(c, path).join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0));
            }
        }
        out.into_iter().collect()
    }

    /// Kills every process in cgroup `path` (SIGKILL; thawed first if frozen) and removes it once
    /// empty (waits up to 2 s). Returns how many processes it killed.
    pub fn kill_and_remove(&self, path: &str) -> io::Result<usize> {
        let mut killed = std::collections::BTreeSet::new();
        let started = std::time::Instant::now();
        loop {
            match self.version {
                Version::V2 => {
                    let _ = fs::write(self.dir("", path).join("cgroup.freeze"), "0");
                }
                Version::V1 => {
                    let _ = fs::write(self.dir("freezer", path).join("freezer.state"), "THAWED");
                }
            }
            let procs = self.procs(path);
            if procs.is_empty() {
                break;
            }
            for pid in procs {
                // (Read from the cgroup itself just now: a pid reused since cannot be in it.)
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
                    killed.insert(pid);
                }
            }
            if started.elapsed() > std::time::Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.remove_empty(path)?;
        Ok(killed.len())
    }

    /// Whether the cgroup exists (in any hierarchy, for v1).
    pub fn exists(&self, path: &str) -> bool {
        match self.version {
            Version::V2 => self.dir("", path).is_dir(),
            Version::V1 => ["memory", "pids", "cpu", "cpuacct", "devices", "freezer", "blkio"]
                .iter()
                .any(|c| self.dir(c, path).is_dir()),
        }
    }

    /// Whether no process (zombies included: they stay in their cgroup until reaped) is in the
    /// cgroup; a cgroup that is gone is empty.
    pub fn is_empty(&self, path: &str) -> bool {
        let controller = if self.version == Version::V2 { "" } else { "pids" };
        match fs::read_to_string(self.dir(controller, path).join("cgroup.procs")) {
            Ok(procs) => procs.trim().is_empty(),
            Err(_) => true,
        }
    }

    /// Removes the cgroup if it is empty (in every hierarchy, for v1); gone already is fine.
    pub fn remove_empty(&self, path: &str) -> io::Result<()> {
        for c in self.controllers() {
            match fs::remove_dir(self.dir(c, path)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn stats(&self, path: &str) -> io::Result<Stats> {
        match self.version {
            Version::V2 => {
                let d = self.dir("", path);
                let current = num(&d.join("memory.current"))?;
                let inactive = keyed(&d.join("memory.stat"), "inactive_file")?.unwrap_or(0);
                Ok(Stats {
                    cpu_usage_ns: keyed(&d.join("cpu.stat"), "usage_usec")?.unwrap_or(0) * 1000,
                    memory_working_set: current.saturating_sub(inactive),
                    memory_limit: read(&d.join("memory.max")).ok().and_then(|s| limit(&s)),
                    pids: num(&d.join("pids.current"))?,
                    oom_kills: self.oom_kills(path)?,
                })
            }
            Version::V1 => {
                let mem = self.dir("memory", path);
                let usage = num(&mem.join("memory.usage_in_bytes"))?;
                let inactive = keyed(&mem.join("memory.stat"), "total_inactive_file")?.unwrap_or(0);
                Ok(Stats {
                    cpu_usage_ns: num(&self.dir("cpuacct", path).join("cpuacct.usage"))?,
                    memory_working_set: usage.saturating_sub(inactive),
                    memory_limit: read(&mem.join("memory.limit_in_bytes")).ok().and_then(|s| limit(&s)),
                    pids: num(&self.dir("pids", path).join("pids.current"))?,
                    oom_kills: self.oom_kills(path)?,
                })
            }
        }
    }

    /// How long the CPU quota held the cgroup back (ns, a counter).
    pub fn throttled_ns(&self, path: &str) -> io::Result<u64> {
        Ok(match self.version {
            Version::V2 => keyed(&self.dir("", path).join("cpu.stat"), "throttled_usec")?.unwrap_or(0) * 1000,
            Version::V1 => keyed(&self.dir("cpu", path).join("cpu.stat"), "throttled_time")?.unwrap_or(0),
        })
    }

    /// How many processes of the cgroup the kernel killed for running out of memory.
    pub fn oom_kills(&self, path: &str) -> io::Result<u64> {
        Ok(match self.version {
            Version::V2 => keyed(&self.dir("", path).join("memory.events"), "oom_kill")?.unwrap_or(0),
            Version::V1 => keyed(&self.dir("memory", path).join("memory.oom_control"), "oom_kill")?.unwrap_or(0),
        })
    }

    pub fn limits(&self, path: &str) -> io::Result<Limits> {
        match self.version {
            Version::V2 => {
                let d = self.dir("", path);
                let cpu = read(&d.join("cpu.max"))?;
                let mut parts = cpu.split_whitespace();
                let quota = parts.next().and_then(limit);
                let period = parts.next().and_then(|p| p.parse().ok());
                Ok(Limits {
                    cpu_quota_us: quota,
                    cpu_period_us: period,
                    memory: limit(&read(&d.join("memory.max"))?),
                    pids: limit(&read(&d.join("pids.max"))?),
                })
            }
            Version::V1 => {
                let cpu = self.dir("cpu", path);
                Ok(Limits {
                    cpu_quota_us: limit(&read(&cpu.join("cpu.cfs_quota_us"))?),
                    cpu_period_us: read(&cpu.join("cpu.cfs_period_us"))?.parse().ok(),
                    memory: limit(&read(&self.dir("memory", path).join("memory.limit_in_bytes"))?),
                    pids: limit(&read(&self.dir("pids", path).join("pids.max"))?),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn warming_the_migration_lock_moves_nothing() {
        let host = CgroupFs::host();
        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        let procs = host.own_procs_file().expect("this process's cgroup.procs (pids hierarchy on v1)");
        let listed = fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
        assert!(listed.lines().any(|p| p == std::process::id().to_string()), "{} lists this process", procs.display());
        host.warm_migration_lock().expect("a thread").join().unwrap();
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before, "still in the same cgroups");
    }

    #[test]
    fn parents_are_prepared_on_v2_only() {
        let t = tempfile::tempdir().unwrap();
        let v2 = CgroupFs::at(t.path(), Version::V2);
        v2.prepare_parents("/bramble/c1").unwrap();
        assert!(t.path().join("bramble").is_dir(), "the parent is created");
        assert!(!t.path().join("bramble/c1").exists(), "the container's own cgroup is left to libcontainer");
        v2.prepare_parents("/bramble/c2").unwrap();
        let v1 = tempfile::tempdir().unwrap();
        CgroupFs::at(v1.path(), Version::V1).prepare_parents("/bramble/c1").unwrap();
        assert_eq!(std::fs::read_dir(v1.path()).unwrap().count(), 0, "v1: libcontainer creates each hierarchy's path");
    }

    #[test]
    fn v2_from_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "bramble/c1/memory.current", "10485760\n");
        write(r, "bramble/c1/memory.stat", "anon 1\nfile 3\ninactive_file 2097152\nactive_file 1\n");
        write(r, "bramble/c1/memory.max", "67108864\n");
        write(r, "bramble/c1/memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n");
        write(
            r,
            "bramble/c1/cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 9\nnr_throttled 2\nthrottled_usec 700\n",
        );
        write(r, "bramble/c1/cpu.max", "25000 100000\n");
        write(r, "bramble/c1/pids.current", "3\n");
        write(r, "bramble/c1/pids.max", "max\n");
        let cg = CgroupFs::at(r, Version::V2);
        assert!(cg.exists("/bramble/c1") && !cg.exists("/bramble/c2"));
        let s = cg.stats("/bramble/c1").unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_usage_ns: 1_500_000,
                memory_working_set: 8 << 20,
                memory_limit: Some(64 << 20),
                pids: 3,
                oom_kills: 1
            }
        );
        let l = cg.limits("/bramble/c1").unwrap();
        assert_eq!(
            l,
            Limits { cpu_quota_us: Some(25000), cpu_period_us: Some(100000), memory: Some(64 << 20), pids: None }
        );
        assert!(cg.stats("/bramble/missing").is_err());
        assert_eq!(cg.throttled_ns("/bramble/c1").unwrap(), 700_000);
    }

    #[test]
    fn v1_from_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "memory/bramble/c1/memory.usage_in_bytes", "4096000");
        write(r, "memory/bramble/c1/memory.stat", "cache 1\ntotal_inactive_file 96000\n");
        write(r, "memory/bramble/c1/memory.limit_in_bytes", "9223372036854771712");
        write(r, "memory/bramble/c1/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        write(r, "cpuacct/bramble/c1/cpuacct.usage", "123456789");
        write(r, "cpu/bramble/c1/cpu.cfs_quota_us", "-1");
        write(r, "cpu/bramble/c1/cpu.cfs_period_us", "100000");
        write(r, "cpu/bramble/c1/cpu.stat", "nr_periods 9\nnr_throttled 2\nthrottled_time 123000\n");
        write(r, "pids/bramble/c1/pids.current", "1");
        write(r, "pids/bramble/c1/pids.max", "100");
        let cg = CgroupFs::at(r, Version::V1);
        let s = cg.stats("/bramble/c1").unwrap();
        assert_eq!(
            s,
            Stats { cpu_usage_ns: 123456789, memory_working_set: 4_000_000, memory_limit: None, pids: 1, oom_kills: 2 }
        );
        assert_eq!(
            cg.limits("/bramble/c1").unwrap(),
            Limits { cpu_quota_us: None, cpu_period_us: Some(100000), memory: None, pids: Some(100) }
        );
        assert_eq!(cg.throttled_ns("/bramble/c1").unwrap(), 123_000);
    }
}
