//! Sampling what the board and each running replica use: CPU, memory, load, disk room of the data
//! dir, temperature and throttling (from /proc and /sys), and per replica its cgroup (v1 or v2:
//! CPU, throttling, working set, OOM kills, pids) and its pod's veth counters. Plain file reads,
//! kept in memory and sent up the session; nothing is written.

use crate::runtime::cgroups::CgroupFs;
use bramble_proto::usage::{NodeSample, ReplicaSample, UsageSample};
use std::path::{Path, PathBuf};

/// Clock ticks per second of /proc/stat (USER_HZ: 100 on every Linux the boards run).
const USER_HZ: u64 = 100;

/// Busy CPU time (ns) from /proc/stat's first line: everything but idle and iowait.
pub fn cpu_busy_ns(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    if f.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let total: u64 = f.iter().take(8).sum();
    let idle = f[3] + f.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle) * (1_000_000_000 / USER_HZ))
}

/// (total, used = total − available) from /proc/meminfo, in bytes.
pub fn memory(meminfo: &str) -> Option<(u64, u64)> {
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    let total = kb("MemTotal:")? * 1024;
    let available = kb("MemAvailable:")? * 1024;
    Some((total, total.saturating_sub(available)))
}

/// The 1-minute load average × 1000 from /proc/loadavg.
pub fn load1_milli(loadavg: &str) -> Option<u64> {
    let v: f64 = loadavg.split_whitespace().next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * 1000.0).round() as u64)
}

/// The hottest of `/sys/class/thermal/thermal_zone*/temp` (millidegrees), if any.
fn temperature(sys: &Path) -> Option<i64> {
    std::fs::read_dir(sys.join("class/thermal"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok()?.trim().parse::<i64>().ok())
        .filter(|t| (-50_000..=150_000).contains(t))
        .max()
}

/// A Raspberry Pi's firmware throttling flags (`0x50005`: under-voltage, throttled now …).
fn throttled(sys: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(sys.join("devices/platform/soc/soc:firmware/get_throttled")).ok()?;
    let s = s.trim();
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// Reads the board and its replicas.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
    pub data_dir: PathBuf,
    pub cgroups: CgroupFs,
    /// Where each container's shim keeps its state (OOM kills of earlier runs).
    pub shims_dir: PathBuf,
    /// The cgroup containers' cgroups are under (`[resources] cgroup_parent`).
    pub cgroup_parent: String,
}

impl Sampler {
    pub fn host(data_dir: &Path, cgroup_parent: &str) -> Sampler {
        Sampler {
            cgroup_parent: cgroup_parent.to_string(),
            proc_dir: "/proc".into(),
            sys_dir: "/sys".into(),
            data_dir: data_dir.to_path_buf(),
            cgroups: CgroupFs::host(),
            shims_dir: crate::reconcile::Paths::new(data_dir).shims,
        }
    }

    pub fn node(&self) -> NodeSample {
        let read = |p: &str| std::fs::read_to_string(self.proc_dir.join(p)).unwrap_or_default();
        let (memory_total, memory_used) = memory(&read("meminfo")).unwrap_or((0, 0));
        // (fsblkcnt_t is 32 bits on some ARM targets: the casts are not idle there.)
        #[allow(clippy::unnecessary_cast)]
        let (disk_total, disk_free) = nix::sys::statvfs::statvfs(&self.data_dir)
            .map(|s| {
                let f = s.fragment_size() as u64;
                (s.blocks() as u64 * f, s.blocks_available() as u64 * f)
            })
            .unwrap_or((0, 0));
        NodeSample {
            cpu_busy_ns: cpu_busy_ns(&read("stat")).unwrap_or(0),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_total,
            memory_used,
            load1_milli: load1_milli(&read("loadavg")).unwrap_or(0),
            disk_total,
            disk_free,
            temperature_mc: temperature(&self.sys_dir),
            throttled: throttled(&self.sys_dir),
        }
    }

    /// One replica (its container's cgroup `/<cgroup_parent>/<id>` and its pod's host-side veth); None if
    /// its cgroup is gone.
    pub fn replica(&self, id: &str) -> Option<ReplicaSample> {
        let path = format!("/{}/{id}", self.cgroup_parent);
        let stats = self.cgroups.stats(&path).ok()?;
        let veth = crate::net::pods::host_veth(id);
        let counter = |name: &str| {
            std::fs::read_to_string(self.sys_dir.join("class/net").join(&veth).join("statistics").join(name))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Earlier runs' OOM kills (each run has a new cgroup) from the shim's state.
        let earlier = std::fs::read(crate::runtime::ContainerDir(self.shims_dir.join(id)).state())
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::runtime::protocol::ShimState>(&b).ok())
            .map_or(0, |s| s.lifecycle.oom_kills);
        Some(ReplicaSample {
            replica: id.to_string(),
            cpu_ns: stats.cpu_usage_ns,
            throttled_ns: self.cgroups.throttled_ns(&path).unwrap_or(0),
            memory_working_set: stats.memory_working_set,
            memory_limit: stats.memory_limit,
            oom_kills: earlier + stats.oom_kills,
            pids: stats.pids,
            // The host side's receive is what the pod sent.
            net_rx: counter("tx_bytes"),
            net_tx: counter("rx_bytes"),
        })
    }

    /// Replica `id` with its other containers (`others`: their ids) added in: CPU, memory,
    /// OOM kills and processes together; the pod's network once. The limit is the sum when every
    /// container has one.
    pub fn pod(&self, id: &str, others: &[&str]) -> Option<ReplicaSample> {
        let mut s = self.replica(id)?;
        for o in others {
            let Some(c) = self.replica(o) else { continue };
            s.cpu_ns += c.cpu_ns;
            s.throttled_ns += c.throttled_ns;
            s.memory_working_set += c.memory_working_set;
            s.memory_limit = s.memory_limit.zip(c.memory_limit).map(|(a, b)| a.saturating_add(b));
            s.oom_kills += c.oom_kills;
            s.pids += c.pids;
        }
        Some(s)
    }

    pub fn sample(&self, replicas: &[String]) -> UsageSample {
        // A replica's other containers, found once per sample among the board's containers.
        let ids: Vec<String> = std::fs::read_dir(&self.shims_dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let others = |r: &str| -> Vec<&str> {
            ids.iter().filter(|i| i.split_once('.').is_some_and(|(head, _)| head == r)).map(String::as_str).collect()
        };
        UsageSample {
            at_ms: bramble_proto::time::now_ms(),
            node: self.node(),
            replicas: replicas.iter().filter_map(|r| self.pod(r, &others(r))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(cpu_busy_ns(stat), Some(160 * 10_000_000));
        assert_eq!(cpu_busy_ns("intr 1 2 3"), None);
        let meminfo = "MemTotal:        3884200 kB\nMemFree:          100000 kB\nMemAvailable:    2884200 kB\n";
        assert_eq!(memory(meminfo), Some((3884200 * 1024, 1_000_000 * 1024)));
        assert_eq!(memory("MemTotal: 5 kB\n"), None);
        assert_eq!(load1_milli("0.52 0.58 0.59 1/389 12345\n"), Some(520));
        assert_eq!(load1_milli("nan 0 0"), None);
    }

    #[test]
    fn temperature_and_throttling_from_a_fake_sys() {
        let t = tempfile::tempdir().unwrap();
        for (zone, temp) in [("thermal_zone0", "48312\n"), ("thermal_zone1", "51000\n"), ("cooling_device0", "1\n")] {
            std::fs::create_dir_all(t.path().join("class/thermal").join(zone)).unwrap();
            std::fs::write(t.path().join("class/thermal").join(zone).join("temp"), temp).unwrap();
        }
        assert_eq!(temperature(t.path()), Some(51_000));
        let fw = t.path().join("devices/platform/soc/soc:firmware");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("get_throttled"), "0x50005\n").unwrap();
        assert_eq!(throttled(t.path()), Some(0x50005));
        assert_eq!(temperature(&t.path().join("none")), None);
    }
}
