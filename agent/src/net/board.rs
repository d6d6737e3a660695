//! The board's own network — the pods' bridge, forwarding, routes to this board's pods, to services
//! and to other boards' pods (or the vxlan device), `unreachable` fallbacks — brought in line with
//! what the leader said, and drift repaired: a stray address on the bridge, a route of a board or
//! cluster that is gone, a veth no live pod owns, a foreign link on the bridge.
//!
//! The kernel is reached through [`Links`]: [`Netlink`] on a board, a recording fake in the unit
//! tests below, which break each of these by hand and check what is left.

use super::link::{Link, Netlink};
use super::NetError;
use bramble_proto::model::NetworkProblem;
use bramble_proto::network::{Backend, Cidr, NodeNetwork};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use tracing::{info, warn};

/// The vxlan device (at most 15 characters).
pub const VXLAN_DEVICE: &str = "bramble-vx";
/// vxlan's encapsulation: 50 bytes per packet.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The metric of the `unreachable` routes for the cluster's pod and service ranges: a fallback
/// any real route wins over.
pub const UNREACHABLE_METRIC: u32 = 4242;

/// What the board network needs of the kernel: links, addresses, routes, neighbours, sysctls.
/// Every call is idempotent ("ensure", "delete if there").
pub trait Links {
    /// The bridge `name` up with `address/prefix` (others it has are left for the caller); its index.
    fn ensure_bridge(&self, name: &str, address: Ipv4Addr, prefix: u8, mtu: u32) -> Result<u32, NetError>;
    /// A vxlan device up with `mac` and `address/32`; its index.
    fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        mac: [u8; 6],
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<u32, NetError>;
    fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError>;
    fn delete_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError>;
    fn links(&self) -> Result<Vec<Link>, NetError>;
    fn delete(&self, name: &str) -> Result<(), NetError>;
    /// Takes a link off its bridge.
    fn detach(&self, index: u32, name: &str) -> Result<(), NetError>;
    /// A route of ours to `dst` (through `gateway` and/or out of `dev`), replacing one there.
    fn route(&self, dst: Cidr, gateway: Option<Ipv4Addr>, dev: Option<u32>) -> Result<(), NetError>;
    /// The destinations of the routes Bramble made.
    fn our_routes(&self) -> Result<Vec<Cidr>, NetError>;
    fn delete_route(&self, dst: Cidr) -> Result<(), NetError>;
    fn unreachable(&self, dst: Cidr, metric: u32) -> Result<(), NetError>;
    fn our_unreachable(&self) -> Result<Vec<Cidr>, NetError>;
    fn delete_unreachable(&self, dst: Cidr) -> Result<(), NetError>;
    fn neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError>;
    fn fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError>;
    /// Writes `/proc/sys/<path>`.
    fn sysctl(&self, path: &str, value: &str) -> Result<(), NetError>;
}

impl Links for Netlink {
    fn ensure_bridge(&self, name: &str, address: Ipv4Addr, prefix: u8, mtu: u32) -> Result<u32, NetError> {
        Netlink::ensure_bridge(self, name, address, prefix, mtu)
    }
    fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        mac: [u8; 6],
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<u32, NetError> {
        Netlink::ensure_vxlan(self, name, vni, port, mac, address, mtu)
    }
    fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        Netlink::addresses(self, index)
    }
    fn delete_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        Netlink::delete_address(self, index, address, prefix)
    }
    fn links(&self) -> Result<Vec<Link>, NetError> {
        Netlink::links(self)
    }
    fn delete(&self, name: &str) -> Result<(), NetError> {
        Netlink::delete(self, name)
    }
    fn detach(&self, index: u32, name: &str) -> Result<(), NetError> {
        Netlink::detach(self, index, name)
    }
    fn route(&self, dst: Cidr, gateway: Option<Ipv4Addr>, dev: Option<u32>) -> Result<(), NetError> {
        Netlink::route(self, dst, gateway, dev)
    }
    fn our_routes(&self) -> Result<Vec<Cidr>, NetError> {
        Netlink::our_routes(self)
    }
    fn delete_route(&self, dst: Cidr) -> Result<(), NetError> {
        Netlink::delete_route(self, dst)
    }
    fn unreachable(&self, dst: Cidr, metric: u32) -> Result<(), NetError> {
        Netlink::unreachable(self, dst, metric)
    }
    fn our_unreachable(&self) -> Result<Vec<Cidr>, NetError> {
        Netlink::our_unreachable(self)
    }
    fn delete_unreachable(&self, dst: Cidr) -> Result<(), NetError> {
        Netlink::delete_unreachable(self, dst)
    }
    fn neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError> {
        Netlink::neighbour(self, index, ip, mac)
    }
    fn fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError> {
        Netlink::fdb(self, index, mac, dst)
    }
    fn sysctl(&self, path: &str, value: &str) -> Result<(), NetError> {
        super::link::sysctl(path, value)
    }
}

/// What this board's network must be, from what the leader said and the agent's settings.
#[derive(Debug, Clone)]
pub struct Want<'a> {
    pub bridge: &'a str,
    /// The LAN's MTU (the pods' is less the vxlan overhead with that backend).
    pub mtu: u32,
    pub node: &'a NodeNetwork,
    pub subnet: Cidr,
}

impl Want<'_> {
    fn vxlan(&self) -> bool {
        self.node.cluster.backend == Backend::Vxlan
    }

    /// The pods' MTU.
    pub fn pod_mtu(&self) -> u32 {
        if self.vxlan() {
            self.mtu - VXLAN_OVERHEAD
        } else {
            self.mtu
        }
    }
}

/// A problem with a reason for the node's `NetworkUnavailable` condition.
pub fn problem(reason: &str, message: String) -> NetworkProblem {
    NetworkProblem { reason: reason.into(), message, since_ms: 0 }
}

/// The bridge (or what the pods need of it) cannot be made: the `BridgeRefused` problem.
pub fn bridge_refused(want: &Want, e: NetError) -> NetworkProblem {
    problem(
        "BridgeRefused",
        format!(
            "the pods' bridge {} with {}/{}: {e} (`bramble-agent check` tries every piece the kernel must offer)",
            want.bridge,
            want.subnet.gateway(),
            want.subnet.prefix()
        ),
    )
}

/// The MAC address of a board's vxlan device, derived from its pod subnet (every board can
/// compute every other board's; locally administered, unicast).
pub fn vxlan_mac(subnet: &Cidr) -> [u8; 6] {
    let a = subnet.addr().octets();
    [0x0a, subnet.prefix(), a[0], a[1], a[2], a[3]]
}

/// The bridge with exactly its address, no link on it that is no live pod's (`live_veths`: the
/// host-side veth names of the live pods, asked after the links are listed), forwarding and
/// `route_localnet` on. Returns the bridge's index.
pub fn bridge(
    nl: &impl Links,
    want: &Want,
    live_veths: impl FnOnce() -> BTreeSet<String>,
) -> Result<u32, NetworkProblem> {
    let subnet = want.subnet;
    let failed = |e: NetError| bridge_refused(want, e);
    let bridge = nl.ensure_bridge(want.bridge, subnet.gateway(), subnet.prefix(), want.pod_mtu()).map_err(failed)?;
    // Exactly its address: another (an older cluster's subnet) would route pods' traffic astray.
    for (a, p) in nl.addresses(bridge).map_err(failed)? {
        if (a, p) != (subnet.gateway(), subnet.prefix()) {
            warn!(bridge = %want.bridge, "removing a stray address {a}/{p} from the pods' bridge");
            nl.delete_address(bridge, a, p).map_err(failed)?;
        }
    }
    stray_links(nl, bridge, live_veths).map_err(failed)?;
    nl.sysctl("net/ipv4/ip_forward", "1").map_err(failed)?;
    // The board's own 127.0.0.1 may reach host ports (DNAT to a pod, then masqueraded).
    nl.sysctl(&format!("net/ipv4/conf/{}/route_localnet", want.bridge), "1").map_err(failed)?;
    Ok(bridge)
}

/// Links on the pods' bridge that are no live pod's: a veth of ours (`bv…`) is deleted, anything
/// else is taken off the bridge (it could see and send pods' traffic).
fn stray_links(nl: &impl Links, bridge: u32, live: impl FnOnce() -> BTreeSet<String>) -> Result<(), NetError> {
    // The links first, then the pods: a pod is given its address before its veth is made, so a
    // veth listed here belongs to a pod listed after it, unless it is stray.
    let links = nl.links()?;
    let live = live();
    for l in links.iter().filter(|l| l.master == Some(bridge) && !live.contains(&l.name)) {
        if l.name.starts_with(super::pods::VETH_PREFIX) {
            warn!(link = %l.name, "deleting a veth on the pods' bridge that is no live pod's");
            nl.delete(&l.name)?;
        } else {
            warn!(link = %l.name, "taking a link that is no pod's off the pods' bridge");
            nl.detach(l.index, &l.name)?;
        }
    }
    Ok(())
}

/// The route to this board's pods and to services through the bridge, to other boards' pods
/// (through them on the LAN, or over vxlan), `unreachable` fallbacks for the cluster's ranges;
/// and no other route of ours.
pub fn routes(nl: &impl Links, want: &Want, bridge: u32) -> Result<(), NetworkProblem> {
    let subnet = want.subnet;
    let node = want.node;
    let failed = |e: NetError| {
        problem("RoutesRefused", format!("the routes of pod subnet {subnet}: {e} (`ip route` shows what is there)"))
    };
    // This board's pods through the bridge (the kernel's own route for the address, made ours:
    // it comes back if someone deletes it).
    nl.route(subnet, None, Some(bridge)).map_err(failed)?;
    let mut wanted = BTreeSet::from([node.cluster.service_cidr, subnet]);
    // Locally made traffic to a VIP needs a route before the output hook rewrites it.
    nl.route(node.cluster.service_cidr, None, Some(bridge)).map_err(failed)?;
    if want.vxlan() {
        let c = &node.cluster;
        let vx = nl
            .ensure_vxlan(VXLAN_DEVICE, c.vxlan_vni, c.vxlan_port, vxlan_mac(&subnet), subnet.addr(), want.pod_mtu())
            .map_err(failed)?;
        for p in &node.peers {
            let mac = vxlan_mac(&p.pod_cidr);
            nl.fdb(vx, mac, p.address).map_err(failed)?;
            nl.neighbour(vx, p.pod_cidr.addr(), mac).map_err(failed)?;
            nl.route(p.pod_cidr, Some(p.pod_cidr.addr()), Some(vx)).map_err(failed)?;
            wanted.insert(p.pod_cidr);
        }
    } else {
        for p in &node.peers {
            if let Err(e) = nl.route(p.pod_cidr, Some(p.address), None) {
                warn!(peer = %p.node, "{e} (is {} on this board's LAN? boards on other subnets need network.backend = \"vxlan\")", p.address);
                continue;
            }
            wanted.insert(p.pod_cidr);
        }
    }
    for stale in nl.our_routes().map_err(failed)?.into_iter().filter(|r| !wanted.contains(r)) {
        info!(route = %stale, "removing a route to a board that is gone");
        nl.delete_route(stale).map_err(failed)?;
    }
    // Pod traffic no route above takes is refused here, never sent out of the default gateway
    // to the LAN.
    let ranges = BTreeSet::from([node.cluster.cluster_cidr, node.cluster.service_cidr]);
    for r in &ranges {
        nl.unreachable(*r, UNREACHABLE_METRIC).map_err(failed)?;
    }
    for stale in nl.our_unreachable().map_err(failed)?.into_iter().filter(|r| !ranges.contains(r)) {
        info!(route = %stale, "removing an unreachable route of another cluster");
        nl.delete_unreachable(stale).map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
