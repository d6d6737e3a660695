//! Each pod's network: a named network namespace (kept across container restarts, so its
//! address is too), a veth pair from it to the board's bridge, an address from the board's
//! subnet as a /32 with a default route via the bridge (every packet goes through the board, so
//! services and conntrack see both directions), and the container's resolv.conf and hosts.
//!
//! A pod on the host network (`host_network = true`) has no namespace, veth or address of its
//! own: it is reached at the board's bridge address (the gateway of the board's subnet, which every
//! pod and board routes to), recorded in `<replica>/host` so it survives the agent's restarts.

use super::ipam::Ipam;
use super::link::Netlink;
use super::{netns, NetError};
use bramble_proto::network::Cidr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a container needs of its pod's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    /// The namespace to join; none: the board's own (host network).
    pub netns: Option<PathBuf>,
    pub ip: Ipv4Addr,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

/// The board's side, set by the node controller once the leader has given a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    pub bridge: String,
    pub subnet: Cidr,
    pub mtu: u32,
    pub domain: String,
}

#[derive(Debug)]
struct Inner {
    ipam: Ipam,
    board: Option<Board>,
}

/// Pods' networks on this board.
#[derive(Debug)]
pub struct Pods {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

/// The host-side end of replica `replica`'s veth (its counters are the pod's traffic): short (15
/// characters at most) and stable.
pub fn host_veth(replica: &str) -> String {
    let h = replica.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{VETH_PREFIX}{:010x}", h & 0xff_ffff_ffff)
}

/// The start of every pod veth's host-side name.
pub const VETH_PREFIX: &str = "bv";

impl Pods {
    /// Pods' files live in `dir` (`<data>/pods/<replica>/`), addresses in `dir/ipam.json`.
    pub fn open(dir: &Path) -> Result<Pods, NetError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| NetError::Io { what: format!("create {}", dir.display()), error: e })?;
        let ipam = Ipam::load(dir.join("ipam.json"))?;
        Ok(Pods { dir: dir.to_path_buf(), inner: Mutex::new(Inner { ipam, board: None }) })
    }

    /// The board's bridge is up with its subnet: pods can be made.
    pub fn set_board(&self, board: Board) -> Result<(), NetError> {
        let mut g = self.inner.lock().expect("pods lock");
        g.ipam.set_subnet(board.subnet)?;
        g.board = Some(board);
        Ok(())
    }

    pub fn ip(&self, replica: &str) -> Option<Ipv4Addr> {
        let ip = self.inner.lock().expect("pods lock").ipam.get(replica);
        ip.or_else(|| self.host_ip(replica))
    }

    /// The address a host-network pod is reached at, if `replica` is one.
    fn host_ip(&self, replica: &str) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.host_marker(replica)).ok()?.trim().parse().ok()
    }

    fn host_marker(&self, replica: &str) -> PathBuf {
        self.dir.join(replica).join("host")
    }

    /// Every pod's address on this board.
    pub fn addresses(&self) -> Vec<(String, Ipv4Addr)> {
        self.inner.lock().expect("pods lock").ipam.all().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn netns_path(&self, replica: &str) -> PathBuf {
        self.dir.join(replica).join("netns")
    }

    /// The pod's address (kept in `ipam.json`), given now if it has none: the first step of
    /// [`Pods::prepare`], without the kernel.
    pub fn allocate(&self, replica: &str) -> Result<Ipv4Addr, NetError> {
        self.inner.lock().expect("pods lock").ipam.allocate(replica)
    }

    /// The pod's network, made if it is not there yet. Safe to repeat.
    pub fn prepare(&self, replica: &str) -> Result<PodNet, NetError> {
        let g = self.inner.lock().expect("pods lock");
        let board = g.board.clone().ok_or_else(|| {
            NetError::Missing(
                "this board's network is not set up yet (it waits for its pod subnet from the leader)".into(),
            )
        })?;
        drop(g);
        let t0 = std::time::Instant::now();
        let ip = self.allocate(replica)?;
        let dir = self.dir.join(replica);
        let ns = self.netns_path(replica);
        let t1 = std::time::Instant::now();
        netns::create(&ns)?;
        let t2 = std::time::Instant::now();
        let host = host_veth(replica);
        let nl = Netlink::open()?;
        if nl.index(&host)?.is_none() {
            let bridge = nl
                .index(&board.bridge)?
                .ok_or_else(|| NetError::Missing(format!("bridge {} is gone", board.bridge)))?;
            let file = std::fs::File::open(&ns)
                .map_err(|e| NetError::Io { what: format!("open {}", ns.display()), error: e })?;
            // The pod's end is made in its namespace as eth0: one request, no move.
            nl.veth(&host, "eth0", bridge, board.mtu, Some(&file))?;
        }
        let t3 = std::time::Instant::now();
        let gateway = board.subnet.gateway();
        netns::inside(&ns, move || configure_inside(ip, gateway))?;
        let t4 = std::time::Instant::now();
        let resolv_conf = dir.join("resolv.conf");
        let hosts = dir.join("hosts");
        let resolv = format!("nameserver {gateway}\nsearch {}\noptions ndots:1\n", board.domain);
        let host_name: String = replica.chars().take(63).collect();
        let hosts_text =
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{host_name}\n");
        for (path, text) in [(&resolv_conf, resolv), (&hosts, hosts_text)] {
            bramble_proto::fsutil::write_file_atomic(path, text.as_bytes(), 0o644)
                .map_err(|e| NetError::Io { what: format!("write {}", path.display()), error: e })?;
        }
        let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
        tracing::debug!(
            replica,
            "pod network in {:.1} ms: address {:.1}, namespace {:.1}, veth {:.1}, inside {:.1}, files {:.1}",
            ms(t0, std::time::Instant::now()),
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3),
            ms(t3, t4),
            ms(t4, std::time::Instant::now())
        );
        Ok(PodNet { netns: Some(ns), ip, resolv_conf, hosts })
    }

    /// A pod on the board's own network: no namespace or address of its own; its resolv.conf
    /// points at the cluster DNS on the bridge (service names resolve as in any pod, other names
    /// are forwarded), its hosts file names the board's address. Safe to repeat.
    pub fn prepare_host(&self, replica: &str) -> Result<PodNet, NetError> {
        let board = self.inner.lock().expect("pods lock").board.clone().ok_or_else(|| {
            NetError::Missing(
                "this board's network is not set up yet (it waits for its pod subnet from the leader)".into(),
            )
        })?;
        let gateway = board.subnet.gateway();
        let dir = self.dir.join(replica);
        std::fs::create_dir_all(&dir)
            .map_err(|e| NetError::Io { what: format!("create {}", dir.display()), error: e })?;
        let (resolv_conf, hosts) = (dir.join("resolv.conf"), dir.join("hosts"));
        let resolv = format!("nameserver {gateway}\nsearch {}\noptions ndots:1\n", board.domain);
        let host_name: String = replica.chars().take(63).collect();
        let hosts_text =
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{gateway}\t{host_name}\n");
        let marker = self.host_marker(replica);
        for (path, text) in [(&resolv_conf, resolv), (&hosts, hosts_text), (&marker, format!("{gateway}\n"))] {
            bramble_proto::fsutil::write_file_atomic(path, text.as_bytes(), 0o644)
                .map_err(|e| NetError::Io { what: format!("write {}", path.display()), error: e })?;
        }
        Ok(PodNet { netns: None, ip: gateway, resolv_conf, hosts })
    }

    /// Removes the pod's network: its veth pair, namespace, address, conntrack entries and
    /// files. Safe to repeat.
    pub fn release(&self, replica: &str) -> Result<(), NetError> {
        if self.host_ip(replica).is_some() {
            // The board's own network: nothing of the kernel's to undo (its flows are the
            // board's, and its address is the bridge's).
            let dir = self.dir.join(replica);
            return std::fs::remove_dir_all(&dir).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(NetError::Io { what: format!("remove {}", dir.display()), error: e }),
            });
        }
        let nl = Netlink::open()?;
        nl.delete(&host_veth(replica))?;
        netns::delete(&self.netns_path(replica))?;
        if let Some(ip) = self.ip(replica) {
            super::conntrack::forget_address(ip);
            // The board's cached MAC of this address goes with the pod.
            let board = self.inner.lock().expect("pods lock").board.clone();
            if let Some(bridge) = board.and_then(|b| nl.index(&b.bridge).ok().flatten()) {
                if let Err(e) = nl.forget_neighbour(bridge, ip) {
                    tracing::warn!("{e}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join(replica));
        self.inner.lock().expect("pods lock").ipam.release(replica)
    }
}

/// Inside the pod's namespace: loopback and eth0 up, the address as a /32, a link route to the
/// gateway and the default route through it.
fn configure_inside(ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), NetError> {
    let nl = Netlink::open()?;
    for name in ["lo", "eth0"] {
        let index = nl.index(name)?.ok_or_else(|| NetError::Missing(format!("the pod has no {name}")))?;
        nl.up(index, name)?;
    }
    let eth0 = nl.index("eth0")?.expect("checked above");
    nl.add_address(eth0, ip, 32)?;
    nl.route(Cidr::new(gateway, 32).expect("a /32"), None, Some(eth0))?;
    nl.route(Cidr::new(Ipv4Addr::UNSPECIFIED, 0).expect("the default route"), Some(gateway), Some(eth0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn veth_names_fit_the_kernels_limit_and_differ() {
        let a = super::host_veth("web-1855f90dee-x2k4q");
        assert_eq!(a.len(), 12);
        assert_ne!(a, super::host_veth("web-1855f90dee-x2k4r"));
        assert_eq!(a, super::host_veth("web-1855f90dee-x2k4q"), "stable");
    }
}
