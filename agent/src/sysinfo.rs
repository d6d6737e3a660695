//! What the agent reports about its board.

use crate::config::AgentConfig;
use bramble_proto::model::{Arch, NodeInfo, Resources};
use std::net::IpAddr;

/// Reads the board's facts and applies the reservations from the config.
pub fn node_info(config: &AgentConfig) -> NodeInfo {
    let cpu_millis = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 1000;
    let memory_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| parse_mem_total(&m)).unwrap_or(0);
    let capacity = Resources { cpu_millis, memory_bytes, replicas: config.resources.max_replicas };
    let allocatable = Resources {
        cpu_millis: cpu_millis.saturating_sub(config.resources.reserved_cpu.0),
        memory_bytes: memory_bytes.saturating_sub(config.resources.reserved_memory.0),
        replicas: config.resources.max_replicas,
    };
    NodeInfo {
        arch: arch(),
        os: os_name(),
        kernel: nix::sys::utsname::uname()
            .map_or_else(|_| "unknown".into(), |u| u.release().to_string_lossy().into_owned()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: config.labels.clone(),
        capacity,
        allocatable,
        addresses: addresses(),
        network_problem: None,
        devices: config.devices.scan(),
    }
}

/// The architecture of the images this board runs: this binary's family at the version the kernel
/// reports (`uname -m`), so an armv7 agent says `arm/v7` and pulls that variant (the compiler cannot
/// tell v7 from v6).
pub fn arch() -> Arch {
    let machine = nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default();
    Arch::of_board(std::env::consts::ARCH, &machine)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    parse_os_release(&text).unwrap_or_else(|| "Linux".into())
}

/// `PRETTY_NAME` from an os-release file.
pub fn parse_os_release(text: &str) -> Option<String> {
    let v = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    Some(v.trim_matches('"').to_string())
}

/// Global unicast addresses of the board's interfaces.
fn addresses() -> Vec<String> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in ifaddrs {
        // Not the board's own addresses: the pods' bridge, the vxlan device, pods' veths.
        if ["bramble", "bv", "bp"].iter().any(|p| ifa.interface_name.starts_with(p)) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip: IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !ip.is_loopback() && !link_local && !out.contains(&ip.to_string()) {
            out.push(ip.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_mem_total("MemTotal:        3884460 kB\nMemFree: 1 kB\n"), Some(3884460 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
        assert_eq!(
            parse_os_release("ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn reports_this_machine() {
        let cfg = AgentConfig::default();
        let info = node_info(&cfg);
        assert!(info.capacity.cpu_millis >= 1000);
        assert!(info.capacity.memory_bytes > 0);
        assert_eq!(info.allocatable.cpu_millis, info.capacity.cpu_millis - 100);
        assert_eq!(info.allocatable.memory_bytes, info.capacity.memory_bytes - (128 << 20));
        assert!(!info.kernel.is_empty());
    }
}
