//! Boards as network namespaces on a bridge that lives in a namespace of its own, so the host's
//! network is never touched.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static LABS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; panics with its output on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

#[derive(Debug)]
pub struct NetLab {
    pub prefix: String,
    /// Third octet of this lab's 10.250.K.0/24.
    pub subnet: u8,
    boards: usize,
}

impl NetLab {
    /// A leader namespace and `boards` board namespaces on one bridge.
    pub fn new(boards: usize) -> NetLab {
        crate::require_root_and_ip();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("bt{}x{n}", pid % 100_000);
        let subnet = ((pid as usize * 7 + n as usize) % 200 + 20) as u8;
        let lab = NetLab { prefix, subnet, boards };
        lab.cleanup(); // leftovers of an earlier run with the same pid
        let br = lab.bridge_ns();
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        for i in 0..=boards {
            let ns = lab.ns(i);
            let veth = format!("v{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &br, "link", "set", &veth, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", lab.addr(i)), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// Namespace of host `i`: 0 is the leader, 1..=N the boards.
    pub fn ns(&self, i: usize) -> String {
        if i == 0 {
            format!("{}-l", self.prefix)
        } else {
            format!("{}-{i}", self.prefix)
        }
    }

    /// Address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        if i == 0 {
            format!("10.250.{}.1", self.subnet)
        } else {
            format!("10.250.{}.{}", self.subnet, 10 + i)
        }
    }

    /// Cuts (`false`) or restores (`true`) board `i`'s link to the bridge.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&["-n", &self.bridge_ns(), "link", "set", &format!("v{i}"), if up { "up" } else { "down" }]);
    }

    fn cleanup(&self) {
        let mut names = vec![self.bridge_ns()];
        names.extend((0..=self.boards).map(|i| self.ns(i)));
        for ns in names {
            if !std::path::Path::new("/run/netns").join(&ns).exists() {
                continue;
            }
            // Kill what still runs inside, by PID, before deleting the namespace.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.cleanup();
    }
}
