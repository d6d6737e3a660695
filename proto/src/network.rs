//! The cluster's network: address blocks, the settings chosen at `init`, and what boards are told
//! (their pod subnet, their peers, every service with its endpoints).

use crate::manifest::Protocol;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 block, `10.42.0.0/16`: the network address (no host bits) and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl Cidr {
    /// The block of `prefix` bits holding `addr` (host bits cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, CidrError> {
        if prefix > 32 {
            return Err(CidrError(format!("invalid prefix length /{prefix}: expected 0 to 32")));
        }
        Ok(Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses the block holds.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The `i`-th address of the block (0 is the network address).
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + i as u32))
    }

    /// The index of `ip` in the block.
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u64> {
        self.contains(ip).then(|| u64::from(u32::from(ip) - u32::from(self.addr)))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// How many blocks of `prefix` bits this one holds.
    pub fn subnets(&self, prefix: u8) -> u64 {
        if prefix < self.prefix || prefix > 32 {
            0
        } else {
            1u64 << (prefix - self.prefix)
        }
    }

    /// The `i`-th block of `prefix` bits inside this one.
    pub fn subnet(&self, prefix: u8, i: u64) -> Option<Cidr> {
        (i < self.subnets(prefix)).then(|| Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) + ((i as u32) << (32 - prefix as u32).min(31))),
            prefix,
        })
    }

    /// The first usable address (a board's bridge, a gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}/{}", self.addr, self.prefix))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(format!("invalid address block {s:?}: expected an IPv4 network like 10.42.0.0/16"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let cidr = Cidr::new(addr, prefix).map_err(|_| bad())?;
        if cidr.addr != addr {
            return Err(CidrError(format!("invalid address block {s:?}: host bits are set; did you mean {cidr}?")));
        }
        Ok(cidr)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Cidr, CidrError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// How pod traffic crosses between boards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Routes to every other board's pod subnet via that board's address (boards on one LAN).
    #[default]
    Direct,
    /// A kernel vxlan device: boards on different subnets.
    Vxlan,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Backend::Direct => "direct",
            Backend::Vxlan => "vxlan",
        })
    }
}

pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
pub const DEFAULT_NODE_PREFIX: u8 = 24;
/// The cluster's DNS domain: `.internal` is reserved for private use (ICANN, 2024), so it never
/// shadows a public name.
pub const DEFAULT_DOMAIN: &str = "bramble.internal";
/// Linux's and flannel's vxlan port.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
pub const DEFAULT_VXLAN_VNI: u32 = 42;

/// The cluster's network, chosen at `init` and kept for its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNetwork {
    /// Pod addresses; each board gets a block of `node_prefix` bits.
    #[serde(default = "default_cluster_cidr")]
    pub cluster_cidr: Cidr,
    /// Service virtual IPs.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Cidr,
    #[serde(default = "default_node_prefix")]
    pub node_prefix: u8,
    /// Services answer as `<service>` and `<service>.<domain>`.
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default)]
    pub backend: Backend,
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    #[serde(default = "default_vxlan_vni")]
    pub vxlan_vni: u32,
}

fn default_cluster_cidr() -> Cidr {
    DEFAULT_CLUSTER_CIDR.parse().expect("default")
}
fn default_service_cidr() -> Cidr {
    DEFAULT_SERVICE_CIDR.parse().expect("default")
}
fn default_node_prefix() -> u8 {
    DEFAULT_NODE_PREFIX
}
fn default_domain() -> String {
    DEFAULT_DOMAIN.into()
}
fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}
fn default_vxlan_vni() -> u32 {
    DEFAULT_VXLAN_VNI
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        ClusterNetwork {
            cluster_cidr: default_cluster_cidr(),
            service_cidr: default_service_cidr(),
            node_prefix: DEFAULT_NODE_PREFIX,
            domain: default_domain(),
            backend: Backend::Direct,
            vxlan_port: DEFAULT_VXLAN_PORT,
            vxlan_vni: DEFAULT_VXLAN_VNI,
        }
    }
}

/// The smallest pod subnet per board (14 pods) and the smallest service range (14 services).
pub const SMALLEST_BLOCK: u8 = 28;

impl ClusterNetwork {
    /// Problems, each as `(field, what is wrong and why)`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let (c, s) = (&self.cluster_cidr, &self.service_cidr);
        if c.overlaps(s) {
            out.push((
                "service_cidr",
                format!("{s} overlaps the cluster CIDR {c}: pod and service addresses must differ"),
            ));
        }
        if self.node_prefix > SMALLEST_BLOCK || self.node_prefix < 16 {
            out.push((
                "node_prefix",
                format!("/{} per board is out of range: expected /16 to /{SMALLEST_BLOCK}", self.node_prefix),
            ));
        } else if c.prefix() >= self.node_prefix {
            out.push((
                "cluster_cidr",
                format!("{c} is too small: it must hold more than one /{} per board", self.node_prefix),
            ));
        }
        if s.prefix() > SMALLEST_BLOCK {
            out.push(("service_cidr", format!("{s} is too small: expected /{SMALLEST_BLOCK} or larger")));
        }
        if crate::names::check_dns_subdomain(&self.domain).is_err() || !self.domain.contains('.') {
            out.push(("domain", format!("{:?} is not a DNS domain like \"bramble.internal\"", self.domain)));
        }
        if self.vxlan_vni == 0 || self.vxlan_vni >= 1 << 24 {
            out.push(("vxlan_vni", format!("{} is out of range: expected 1 to 16777215", self.vxlan_vni)));
        }
        if self.vxlan_port == 0 {
            out.push(("vxlan_port", "expected a port from 1 to 65535".to_string()));
        }
        out
    }

    /// How many boards can get a pod subnet.
    pub fn node_subnets(&self) -> u64 {
        self.cluster_cidr.subnets(self.node_prefix)
    }
}

/// Another board, as pod routes need it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    pub node: String,
    pub address: Ipv4Addr,
    pub pod_cidr: Cidr,
}

/// Other boards that came or changed (`upsert`, by node name) and those gone (`remove`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerChanges {
    pub upsert: Vec<Peer>,
    pub remove: Vec<String>,
}

impl PeerChanges {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// What one board must know of the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    pub cluster: ClusterNetwork,
    /// This board's pod subnet (none yet: no pods can start here).
    pub pod_cidr: Option<Cidr>,
    /// Every other board with a pod subnet and a known address.
    pub peers: Vec<Peer>,
    /// The cluster's own ports (the leaders' QUIC port, etcd's, the metrics listener): pods may
    /// not reach them on any board, unless their app has `security.control_plane`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_ports: Vec<(Protocol, u16)>,
}

impl NodeNetwork {
    /// Applies other boards' changes. Peers are kept in node-name order, one per node (as the
    /// leader sends them whole); what `remove` names and is not here is gone already.
    pub fn apply_peers(&mut self, changes: PeerChanges) {
        self.peers.sort_by(|a, b| a.node.cmp(&b.node));
        self.peers.dedup_by(|a, b| a.node == b.node);
        for gone in changes.remove {
            if let Ok(i) = self.peers.binary_search_by(|p| p.node.as_str().cmp(&gone)) {
                self.peers.remove(i);
            }
        }
        for peer in changes.upsert {
            match self.peers.binary_search_by(|p| p.node.cmp(&peer.node)) {
                Ok(i) => self.peers[i] = peer,
                Err(i) => self.peers.insert(i, peer),
            }
        }
    }
}

/// One port of a service as boards program it: the virtual port and the endpoints' port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoutePort {
    pub port: u16,
    pub protocol: Protocol,
    pub target: u16,
}

/// One replica behind a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub replica: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// Receives traffic (Running now; Ready once probes exist).
    pub ready: bool,
}

/// A service with its virtual IP and endpoints, cluster-wide: any board may send to any service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<RoutePort>,
    pub endpoints: Vec<Endpoint>,
}

impl ServiceRoute {
    /// The endpoints that take traffic.
    pub fn ready(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_split_and_refuse_host_bits() {
        let c: Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!((c.size(), c.subnets(24)), (65536, 256));
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.42.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(24, 3).unwrap().gateway(), Ipv4Addr::new(10, 42, 3, 1));
        assert!(c.contains("10.42.255.9".parse().unwrap()) && !c.contains("10.43.0.1".parse().unwrap()));
        assert_eq!(c.index_of("10.42.1.2".parse().unwrap()), Some(258));
        let e = "10.42.1.0/16".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("host bits are set; did you mean 10.42.0.0/16?"), "{e}");
        assert!("10.42.0.0".parse::<Cidr>().is_err() && "10.42.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0/8".parse::<Cidr>().unwrap().overlaps(&c));
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"10.42.0.0/16\"");
    }

    #[test]
    fn the_defaults_are_sound_and_bad_choices_say_why() {
        assert!(ClusterNetwork::default().check().is_empty());
        assert_eq!(ClusterNetwork::default().node_subnets(), 256);
        let overlap = ClusterNetwork { service_cidr: "10.42.128.0/17".parse().unwrap(), ..Default::default() };
        assert_eq!(overlap.check()[0].0, "service_cidr");
        assert!(overlap.check()[0].1.contains("overlaps the cluster CIDR 10.42.0.0/16"));
        let small = ClusterNetwork { cluster_cidr: "10.42.0.0/24".parse().unwrap(), ..Default::default() };
        assert_eq!(small.check()[0].1, "10.42.0.0/24 is too small: it must hold more than one /24 per board");
        let tiny = ClusterNetwork { service_cidr: "10.43.0.0/30".parse().unwrap(), ..Default::default() };
        assert!(tiny.check()[0].1.contains("too small"));
        let domain = ClusterNetwork { domain: "Not A Domain".into(), ..Default::default() };
        assert_eq!(domain.check()[0].0, "domain");
    }

    #[test]
    fn peer_changes_keep_one_entry_per_board_in_order() {
        let peer = |n: &str, a: &str, c: &str| Peer {
            node: n.into(),
            address: a.parse().unwrap(),
            pod_cidr: c.parse().unwrap(),
        };
        let mut n = NodeNetwork {
            cluster: ClusterNetwork::default(),
            pod_cidr: None,
            // Out of order and twice: sorted and made one first.
            peers: vec![
                peer("pi-3", "192.168.1.13", "10.42.3.0/24"),
                peer("pi-1", "192.168.1.11", "10.42.1.0/24"),
                peer("pi-3", "192.168.1.13", "10.42.3.0/24"),
            ],
            control_ports: Vec::new(),
        };
        n.apply_peers(PeerChanges {
            upsert: vec![peer("pi-2", "192.168.1.12", "10.42.2.0/24"), peer("pi-3", "192.168.1.33", "10.42.3.0/24")],
            remove: vec!["pi-1".into(), "pi-9".into()],
        });
        let names: Vec<_> = n.peers.iter().map(|p| (p.node.as_str(), p.address.to_string())).collect();
        assert_eq!(names, [("pi-2", "192.168.1.12".to_string()), ("pi-3", "192.168.1.33".to_string())]);
        assert!(PeerChanges::default().is_empty());
    }
}
