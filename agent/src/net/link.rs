//! Links, addresses, routes and neighbours through netlink (the `rtnetlink` crate), never by
//! running `ip`. A [`Netlink`] talks to the network namespace of the thread that opened it; each
//! call waits for the kernel's answer on a small runtime of its own, so it can be used from any
//! thread (the reconciler's, a thread inside a pod's namespace).

use super::NetError;
use bramble_proto::network::Cidr;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// Routes Bramble adds carry this protocol number, so they can be found again (and only they
/// removed).
pub const ROUTE_PROTOCOL: u8 = 0x42;

pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.is_some_and(|c| c.get() == -errno))
}

/// An error that says what was being done.
fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, message: describe(&source) }
}

fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(c) => std::io::Error::from_raw_os_error(-c.get()).to_string(),
            None => e.to_string(),
        },
        e => e.to_string(),
    }
}

impl Netlink {
    /// A connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetError::Io { what: "start a netlink runtime".into(), error: e })?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| NetError::Io { what: "open a netlink socket".into(), error: e })?;
            tokio::spawn(conn);
            Ok::<_, NetError>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    /// The index of link `name`, if it exists.
    pub fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let h = self.handle.clone();
        self.rt.block_on(async move {
            match h.link().get().match_name(name.to_string()).execute().try_next().await {
                Ok(link) => Ok(link.map(|l| l.header.index)),
                Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
                Err(e) => Err(ctx(format!("look up link {name}"))(e)),
            }
        })
    }

    fn require(&self, name: &str) -> Result<u32, NetError> {
        self.index(name)?.ok_or_else(|| NetError::Missing(format!("link {name} does not exist")))
    }

    /// A bridge `name` with `address/prefix`, up; made if missing. Idempotent.
    pub fn ensure_bridge(&self, name: &str, address: Ipv4Addr, prefix: u8, mtu: u32) -> Result<u32, NetError> {
        let h = self.handle.clone();
        if self.index(name)?.is_none() {
            let msg = LinkBridge::new(name).mtu(mtu).build();
            self.rt.block_on(h.link().add(msg).execute()).or_else(|e| {
                if is_errno(&e, libc::EEXIST) {
                    Ok(())
                } else {
                    Err(ctx(format!("create bridge {name}"))(e))
                }
            })?;
        }
        let index = self.require(name)?;
        self.add_address(index, address, prefix)?;
        self.up(index, name)?;
        Ok(index)
    }

    /// A vxlan device `name` (vni, UDP port) with `mac` and `address/32`, up; made if missing.
    pub fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        mac: [u8; 6],
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<u32, NetError> {
        let h = self.handle.clone();
        if self.index(name)?.is_none() {
            let msg = LinkVxlan::new(name, vni).port(port).learning(false).build();
            let mut msg = msg;
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            self.rt.block_on(h.link().add(msg).execute()).or_else(|e| {
                if is_errno(&e, libc::EEXIST) {
                    Ok(())
                } else {
                    Err(ctx(format!("create vxlan device {name} (is the vxlan module available?)"))(e))
                }
            })?;
        }
        let index = self.require(name)?;
        self.add_address(index, address, 32)?;
        self.up(index, name)?;
        Ok(index)
    }

    pub fn up(&self, index: u32, name: &str) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt.block_on(self.handle.link().set(msg).execute()).map_err(ctx(format!("bring {name} up")))
    }

    /// Adds `address/prefix` to link `index` (nothing if it is there).
    pub fn add_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let req = self.handle.address().add(index, IpAddr::V4(address), prefix).replace();
        self.rt.block_on(req.execute()).map_err(ctx(format!("add address {address}/{prefix}")))
    }

    /// A veth pair `host` ↔ `peer`, both here; the host end attached to `bridge` with `mtu`, up.
    pub fn veth(&self, host: &str, peer: &str, bridge: u32, mtu: u32) -> Result<(), NetError> {
        let msg = LinkVeth::new(host, peer).mtu(mtu).build();
        self.rt.block_on(self.handle.link().add(msg).execute()).map_err(ctx(format!("create veth {host}")))?;
        let index = self.require(host)?;
        let msg = LinkUnspec::new_with_index(index).controller(bridge).up().build();
        self.rt.block_on(self.handle.link().set(msg).execute()).map_err(ctx(format!("attach {host} to the bridge")))
    }

    /// Moves link `name` into the network namespace open as `ns`, renamed `new_name`.
    pub fn move_to(&self, name: &str, ns: &std::fs::File, new_name: &str, mtu: u32) -> Result<(), NetError> {
        let index = self.require(name)?;
        let msg =
            LinkUnspec::new_with_index(index).setns_by_fd(ns.as_raw_fd()).name(new_name.to_string()).mtu(mtu).build();
        self.rt.block_on(self.handle.link().set(msg).execute()).map_err(ctx(format!("move {name} into the pod")))
    }

    /// Deletes link `name` if it exists.
    pub fn delete(&self, name: &str) -> Result<(), NetError> {
        let Some(index) = self.index(name)? else { return Ok(()) };
        match self.rt.block_on(self.handle.link().del(index).execute()) {
            Err(e) if !is_errno(&e, libc::ENODEV) => Err(ctx(format!("delete link {name}"))(e)),
            _ => Ok(()),
        }
    }

    /// Adds or replaces the route to `dst`: via `gateway` (on-link through `dev` if given), or
    /// straight out of `dev`.
    pub fn route(&self, dst: Cidr, gateway: Option<Ipv4Addr>, dev: Option<u32>) -> Result<(), NetError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst.addr(), dst.prefix());
        b = b.protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(g) = gateway {
            b = b.gateway(g);
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(d) = dev {
            b = b.output_interface(d);
            if gateway.is_some() {
                b = b.onlink();
            }
        }
        let req = self.handle.route().add(b.build()).replace();
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        self.rt.block_on(req.execute()).map_err(ctx(format!("route {dst}{via}")))
    }

    /// The destinations of the routes Bramble added.
    pub fn our_routes(&self) -> Result<Vec<Cidr>, NetError> {
        let h = self.handle.clone();
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<_> =
            self.rt.block_on(h.route().get(msg).execute().try_collect()).map_err(ctx("list routes"))?;
        Ok(routes
            .into_iter()
            .filter(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
            .filter_map(|r| {
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })?;
                Cidr::new(dst, r.header.destination_prefix_length).ok()
            })
            .collect())
    }

    /// Removes the route to `dst` that Bramble added, if it is there.
    pub fn delete_route(&self, dst: Cidr) -> Result<(), NetError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix())
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        match self.rt.block_on(self.handle.route().del(msg).execute()) {
            Err(e) if !is_errno(&e, libc::ESRCH) => Err(ctx(format!("delete route {dst}"))(e)),
            _ => Ok(()),
        }
    }

    /// A permanent neighbour entry `ip` → `mac` on link `index`.
    pub fn neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError> {
        let req = self
            .handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace();
        self.rt.block_on(req.execute()).map_err(ctx(format!("neighbour {ip}")))
    }

    /// Forgets what link `index` learned of `ip`'s hardware address: a pod that gets an address
    /// another pod had must not be sent frames meant for the old one's MAC.
    pub fn forget_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError> {
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
        use rtnetlink::packet_route::AddressFamily;
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.rt.block_on(self.handle.neighbours().del(msg).execute()) {
            Err(e) if !is_errno(&e, libc::ENOENT) => Err(ctx(format!("forget neighbour {ip}"))(e)),
            _ => Ok(()),
        }
    }

    /// A forwarding entry on vxlan device `index`: frames for `mac` go to `dst`.
    pub fn fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError> {
        let req = self
            .handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(IpAddr::V4(dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        self.rt.block_on(req.execute()).map_err(ctx(format!("forwarding entry to {dst}")))
    }
}

/// Writes a sysctl of the calling thread's network namespace (`net/ipv4/ip_forward`).
pub fn sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let file = format!("/proc/sys/{path}");
    std::fs::write(&file, value).map_err(|e| NetError::Io { what: format!("set {path} = {value}"), error: e })
}
