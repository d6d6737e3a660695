//! Services and host ports in nftables, as a pure model rendered to nft's language: a whole
//! table (applied atomically; `table` then `delete table` then the table, in one transaction),
//! or the changes between two models (a changed endpoint rewrites only its service's chain).
//!
//! ```text
//! table ip bramble
//!   set vips            every virtual IP                       → reject what no port matches
//!   map services        vip . proto . port : goto svc-…        → one chain per service port
//!   set no_endpoints    vip . proto . port                     → reject at once, never a black hole
//!   map host_tcp/udp    port : pod ip . port                   → host ports by DNAT
//!   set hairpin         pod ip . pod ip                        → a pod reaching itself is masqueraded
//!   set control_ports   proto . port                           → the cluster's own: no pod reaches them
//!   set control_plane   pod ip                                 → … but those of control-plane apps
//!   chain svc-…         dnat to numgen random mod N map { i : ip . port }   (an even spread)
//!   chains prerouting, output (nat), postrouting (masquerade), input, forward, filter-output (reject)
//! ```
//!
//! Only this table is ever touched: never another table, never iptables.

use bramble_proto::manifest::Protocol;
use bramble_proto::network::{Cidr, ServiceRoute};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

pub const TABLE: &str = "bramble";

/// A virtual port: VIP, protocol, port.
pub type VirtualPort = (Ipv4Addr, Protocol, u16);

/// A host port to a pod: board port → pod address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: Protocol,
    pub port: u16,
    pub ip: Ipv4Addr,
    pub target: u16,
}

/// What the table holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Model {
    pub cluster: Option<Cidr>,
    pub vips: BTreeSet<Ipv4Addr>,
    /// Every virtual port with its endpoints (empty: it rejects).
    pub ports: BTreeMap<VirtualPort, Vec<(Ipv4Addr, u16)>>,
    pub host_ports: BTreeMap<(Protocol, u16), (Ipv4Addr, u16)>,
    /// Pods on this board (a pod reaching itself through a service is masqueraded).
    pub local_pods: BTreeSet<Ipv4Addr>,
    /// The cluster's own ports (leaders' QUIC, etcd, metrics): pods may not reach them, on this
    /// board (input) or any other (forward, before the masquerade).
    pub control_ports: BTreeSet<(Protocol, u16)>,
    /// Pods on this board whose app may reach them (`security.control_plane`).
    pub control_plane: BTreeSet<Ipv4Addr>,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The chain of a virtual port (named by address, so every name is valid and unique).
fn chain((vip, p, port): &VirtualPort) -> String {
    format!("svc-{}-{}-{port}", vip.to_string().replace('.', "-"), proto(*p))
}

impl Model {
    pub fn new(
        cluster: Option<Cidr>,
        services: &BTreeMap<String, ServiceRoute>,
        host_ports: &[HostPort],
        local_pods: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Model {
        let mut ports = BTreeMap::new();
        for s in services.values() {
            for p in &s.ports {
                let eps = s.ready().map(|e| (e.ip, p.target)).collect();
                ports.insert((s.vip, p.protocol, p.port), eps);
            }
        }
        Model {
            cluster,
            vips: services.values().map(|s| s.vip).collect(),
            ports,
            host_ports: host_ports.iter().map(|h| ((h.protocol, h.port), (h.ip, h.target))).collect(),
            local_pods: local_pods.into_iter().collect(),
            control_ports: BTreeSet::new(),
            control_plane: BTreeSet::new(),
        }
    }
}

fn list<T>(items: impl IntoIterator<Item = T>, f: impl Fn(T) -> String) -> String {
    items.into_iter().map(f).collect::<Vec<_>>().join(", ")
}

fn elements(items: String) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {items} }}")
    }
}

fn dnat_rule(key: &VirtualPort, eps: &[(Ipv4Addr, u16)]) -> String {
    let targets = list(eps.iter().enumerate(), |(i, (ip, port))| format!("{i} : {ip} . {port}"));
    format!("meta l4proto {} dnat to numgen random mod {} map {{ {targets} }}", proto(key.1), eps.len())
}

fn service_elements(m: &Model) -> String {
    let live = m.ports.iter().filter(|(_, e)| !e.is_empty());
    list(live, |(k, _)| format!("{} . {} . {} : goto {}", k.0, proto(k.1), k.2, chain(k)))
}

/// Services, then host ports: to the board's own addresses but never the bridge's (nor any
/// other address of the cluster's range), so a pod cannot take the board's DNS or a port of the
/// bridge from the pods next to it.
fn hook_rules(out: &mut String, cluster: Option<Cidr>) {
    out.push_str("    ip daddr . meta l4proto . th dport vmap @services\n");
    let not_cluster = cluster.map(|c| format!("ip daddr != {c} ")).unwrap_or_default();
    for p in ["tcp", "udp"] {
        let _ = writeln!(out, "    fib daddr type local {not_cluster}meta l4proto {p} dnat to {p} dport map @host_{p}");
    }
}

/// The whole table.
pub fn full(m: &Model) -> String {
    let mut out = format!("table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    let _ = writeln!(out, "  set vips {{ type ipv4_addr;{} }}", elements(list(&m.vips, |v| v.to_string())));
    let _ = writeln!(
        out,
        "  map services {{ type ipv4_addr . inet_proto . inet_service : verdict;{} }}",
        elements(service_elements(m))
    );
    let empty = m.ports.iter().filter(|(_, e)| e.is_empty());
    let _ = writeln!(
        out,
        "  set no_endpoints {{ type ipv4_addr . inet_proto . inet_service;{} }}",
        elements(list(empty, |(k, _)| format!("{} . {} . {}", k.0, proto(k.1), k.2)))
    );
    let _ = writeln!(
        out,
        "  set hairpin {{ type ipv4_addr . ipv4_addr;{} }}",
        elements(list(&m.local_pods, |ip| format!("{ip} . {ip}")))
    );
    let _ = writeln!(
        out,
        "  set control_ports {{ type inet_proto . inet_service;{} }}",
        elements(list(&m.control_ports, control_port))
    );
    let _ = writeln!(
        out,
        "  set control_plane {{ type ipv4_addr;{} }}",
        elements(list(&m.control_plane, |ip| ip.to_string()))
    );
    for p in [Protocol::Tcp, Protocol::Udp] {
        let items = list(m.host_ports.iter().filter(|((q, _), _)| *q == p), |((_, port), (ip, t))| {
            format!("{port} : {ip} . {t}")
        });
        let _ = writeln!(
            out,
            "  map host_{} {{ type inet_service : ipv4_addr . inet_service;{} }}",
            proto(p),
            elements(items)
        );
    }
    for (k, eps) in m.ports.iter().filter(|(_, e)| !e.is_empty()) {
        let _ = writeln!(out, "  chain {} {{\n    {}\n  }}", chain(k), dnat_rule(k, eps));
    }
    out.push_str("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    hook_rules(&mut out, m.cluster);
    out.push_str("  }\n  chain output {\n    type nat hook output priority -100; policy accept;\n");
    hook_rules(&mut out, m.cluster);
    out.push_str("  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    out.push_str("    ct status dnat ip saddr . ip daddr @hairpin masquerade\n");
    out.push_str("    ip saddr 127.0.0.0/8 ct status dnat masquerade\n");
    if let Some(c) = m.cluster {
        let _ = writeln!(out, "    ip saddr {c} ip daddr != {c} masquerade");
    }
    out.push_str("  }\n  chain reject-service {\n    meta l4proto tcp reject with tcp reset\n    reject\n  }\n");
    // Pods never reach the cluster's own ports: not on this board, not elsewhere (before the
    // masquerade hides which pod it was).
    if let Some(c) = m.cluster {
        let _ = writeln!(out, "  chain input {{\n    type filter hook input priority filter; policy accept;");
        let _ = writeln!(out, "    {}\n  }}", control_rule(c, false));
    }
    for (name, hook) in [("forward", "forward"), ("filter-output", "output")] {
        let _ = writeln!(out, "  chain {name} {{\n    type filter hook {hook} priority filter; policy accept;");
        if let (Some(c), "forward") = (m.cluster, name) {
            let _ = writeln!(out, "    {}", control_rule(c, true));
        }
        out.push_str("    ip daddr . meta l4proto . th dport @no_endpoints goto reject-service\n");
        out.push_str("    ip daddr @vips goto reject-service\n  }\n");
    }
    out.push_str("}\n");
    out
}

fn control_port((p, port): &(Protocol, u16)) -> String {
    format!("{} . {port}", proto(*p))
}

/// Refuses pods' packets to the cluster's own ports (`outward`: only those leaving the cluster's
/// range, i.e. to boards, not to other pods or services).
fn control_rule(cluster: Cidr, outward: bool) -> String {
    let to = if outward { format!("ip daddr != {cluster} ") } else { String::new() };
    format!(
        "ip saddr {cluster} {to}ip saddr != @control_plane meta l4proto . th dport @control_ports reject with icmp type admin-prohibited"
    )
}

/// Elements removed from and added to `set` between `old` and `new`: deleted by their key,
/// added whole (for a set, key and element are the same).
fn set_diff<K: Ord + Clone>(
    out: &mut String,
    set: &str,
    (old, new): (&BTreeSet<K>, &BTreeSet<K>),
    key: impl Fn(&K) -> String,
    element: impl Fn(&K) -> String,
) {
    let gone = list(old.difference(new), &key);
    if !gone.is_empty() {
        let _ = writeln!(out, "delete element ip {TABLE} {set} {{ {gone} }}");
    }
    let added = list(new.difference(old), &element);
    if !added.is_empty() {
        let _ = writeln!(out, "add element ip {TABLE} {set} {{ {added} }}");
    }
}

/// The commands that turn `old` into `new` (empty when they are the same). A different cluster
/// CIDR rewrites everything.
pub fn diff(old: &Model, new: &Model) -> String {
    if old.cluster != new.cluster {
        return full(new);
    }
    let mut out = String::new();
    // Virtual ports that stop, or move between "has endpoints" and "rejects".
    let live = |m: &Model| -> BTreeSet<VirtualPort> {
        m.ports.iter().filter(|(_, e)| !e.is_empty()).map(|(k, _)| *k).collect()
    };
    let empty = |m: &Model| -> BTreeSet<VirtualPort> {
        m.ports.iter().filter(|(_, e)| e.is_empty()).map(|(k, _)| *k).collect()
    };
    let (old_live, new_live) = (live(old), live(new));
    for k in &new_live {
        if old.ports.get(k) != new.ports.get(k) {
            let name = chain(k);
            let _ = writeln!(out, "add chain ip {TABLE} {name}\nflush chain ip {TABLE} {name}");
            let _ = writeln!(out, "add rule ip {TABLE} {name} {}", dnat_rule(k, &new.ports[k]));
        }
    }
    let show_port = |k: &VirtualPort| format!("{} . {} . {}", k.0, proto(k.1), k.2);
    let goto = |k: &VirtualPort| format!("{} : goto {}", show_port(k), chain(k));
    set_diff(&mut out, "services", (&old_live, &new_live), show_port, goto);
    for k in old_live.difference(&new_live) {
        let _ = writeln!(out, "delete chain ip {TABLE} {}", chain(k));
    }
    set_diff(&mut out, "no_endpoints", (&empty(old), &empty(new)), show_port, show_port);
    let vip = |v: &Ipv4Addr| v.to_string();
    set_diff(&mut out, "vips", (&old.vips, &new.vips), vip, vip);
    let pair = |ip: &Ipv4Addr| format!("{ip} . {ip}");
    set_diff(&mut out, "hairpin", (&old.local_pods, &new.local_pods), pair, pair);
    set_diff(&mut out, "control_ports", (&old.control_ports, &new.control_ports), control_port, control_port);
    set_diff(&mut out, "control_plane", (&old.control_plane, &new.control_plane), vip, vip);
    for p in [Protocol::Tcp, Protocol::Udp] {
        let pick = |m: &Model| -> BTreeSet<(u16, Ipv4Addr, u16)> {
            m.host_ports.iter().filter(|((q, _), _)| *q == p).map(|((_, port), (ip, t))| (*port, *ip, *t)).collect()
        };
        // A port that moves to another pod is deleted by its key, then added anew.
        let set = format!("host_{}", proto(p));
        let key = |(port, _, _): &(u16, Ipv4Addr, u16)| port.to_string();
        set_diff(&mut out, &set, (&pick(old), &pick(new)), key, |(port, ip, t)| format!("{port} : {ip} . {t}"));
    }
    out
}

/// Endpoints that a UDP virtual port (or host port) no longer sends to: their conntrack entries
/// must go, or clients keep talking to the gone endpoint.
pub fn udp_gone(old: &Model, new: &Model) -> Vec<(Ipv4Addr, u16, Ipv4Addr)> {
    let mut out = Vec::new();
    for ((vip, p, port), eps) in &old.ports {
        if *p != Protocol::Udp {
            continue;
        }
        let still = new.ports.get(&(*vip, *p, *port)).cloned().unwrap_or_default();
        out.extend(eps.iter().filter(|e| !still.contains(e)).map(|(ip, _)| (*vip, *port, *ip)));
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
