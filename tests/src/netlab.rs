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
    /// Third octet of this lab's 10.250.K.0/24 (and 10.251.K.0/24 in a routed lab).
    pub subnet: u8,
    boards: usize,
    /// Boards from this index on live on a second subnet behind a router (none: one LAN).
    second_from: Option<usize>,
}

impl NetLab {
    /// A leader namespace and `boards` board namespaces on one bridge.
    pub fn new(boards: usize) -> NetLab {
        Self::build(boards, None)
    }

    /// Like [`NetLab::new`], but boards from `second_from` on are on a second LAN
    /// (10.251.K.0/24), reached through a router namespace: boards on different subnets.
    pub fn routed(boards: usize, second_from: usize) -> NetLab {
        Self::build(boards, Some(second_from))
    }

    fn build(boards: usize, second_from: Option<usize>) -> NetLab {
        crate::require_root_and_ip();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("bt{}x{n}", pid % 100_000);
        let subnet = ((pid as usize * 7 + n as usize) % 200 + 20) as u8;
        let lab = NetLab { prefix, subnet, boards, second_from };
        lab.cleanup(); // leftovers of an earlier run with the same pid
        crate::reaper::namespaces(&lab.namespaces(), true);
        let br = lab.bridge_ns();
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        for b in ["br0", "br1"] {
            ip(&["-n", &br, "link", "add", b, "type", "bridge"]);
            ip(&["-n", &br, "link", "set", b, "up"]);
        }
        for i in 0..=boards {
            let ns = lab.ns(i);
            let veth = format!("v{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &br, "link", "set", &veth, "master", if lab.second(i) { "br1" } else { "br0" }, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", lab.addr(i)), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        if second_from.is_some() {
            lab.router();
        }
        lab
    }

    /// A router namespace with a leg on each LAN; every host routes the other LAN through it.
    fn router(&self) {
        let (br, r) = (self.bridge_ns(), self.router_ns());
        ip(&["netns", "add", &r]);
        for (leg, bridge, addr) in [("r0", "br0", self.gateway(false)), ("r1", "br1", self.gateway(true))] {
            ip(&["-n", &br, "link", "add", leg, "type", "veth", "peer", "name", leg, "netns", &r]);
            ip(&["-n", &br, "link", "set", leg, "master", bridge, "up"]);
            ip(&["-n", &r, "addr", "add", &format!("{addr}/24"), "dev", leg]);
            ip(&["-n", &r, "link", "set", leg, "up"]);
        }
        let out =
            Command::new("ip").args(["netns", "exec", &r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).output();
        assert!(out.is_ok_and(|o| o.status.success()), "cannot enable forwarding in the router namespace");
        for i in 0..=self.boards {
            let other = if self.second(i) {
                format!("10.250.{}.0/24", self.subnet)
            } else {
                format!("10.251.{}.0/24", self.subnet)
            };
            ip(&["-n", &self.ns(i), "route", "add", &other, "via", &self.gateway(self.second(i))]);
        }
    }

    fn router_ns(&self) -> String {
        format!("{}-r", self.prefix)
    }

    /// Whether host `i` is on the second LAN.
    pub fn second(&self, i: usize) -> bool {
        self.second_from.is_some_and(|f| i >= f)
    }

    /// The router's address on a LAN.
    fn gateway(&self, second: bool) -> String {
        format!("10.{}.{}.254", if second { 251 } else { 250 }, self.subnet)
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
        let lan = if self.second(i) { 251 } else { 250 };
        if i == 0 {
            format!("10.{lan}.{}.1", self.subnet)
        } else {
            format!("10.{lan}.{}.{}", self.subnet, 10 + i)
        }
    }

    /// The path of host `i`'s network namespace (to enter it with `setns`).
    pub fn ns_path(&self, i: usize) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(self.ns(i))
    }

    /// Bytes host `i` has received and sent on its LAN link (`eth0` in its namespace).
    pub fn link_bytes(&self, i: usize) -> (u64, u64) {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.ns(i), "-s", "-j", "link", "show", "eth0"])
            .output()
            .expect("ip runs");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
        let stats = &v[0]["stats64"];
        let n = |dir: &str| stats[dir]["bytes"].as_u64().expect("byte counters");
        (n("rx"), n("tx"))
    }

    /// Cuts (`false`) or restores (`true`) board `i`'s link to the bridge.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&["-n", &self.bridge_ns(), "link", "set", &format!("v{i}"), if up { "up" } else { "down" }]);
    }

    fn namespaces(&self) -> Vec<String> {
        let mut names = vec![self.bridge_ns(), self.router_ns()];
        names.extend((0..=self.boards).map(|i| self.ns(i)));
        names
    }

    fn cleanup(&self) {
        let names = self.namespaces();
        crate::reaper::namespaces(&names, false);
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
