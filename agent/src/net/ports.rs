//! Which host ports a board lets apps take: a range from agent.toml (1024-65535 by default),
//! never Bramble's own ports (the leaders' QUIC port, etcd's, the vxlan port, DNS, and whatever
//! agent.toml reserves), and never a port a process on the board already listens on. Pure but
//! for [`listening`], which reads `/proc/net`.

use bramble_proto::manifest::Protocol;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};

/// One host port to send into a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub protocol: Protocol,
    pub host: u16,
    pub container: u16,
    /// The pod (replica) that receives the traffic.
    pub replica: String,
}

/// What the board's rules need of the desired replicas: their host ports, and which may reach
/// the cluster's own ports (`security.control_plane`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodRules {
    pub host_ports: Vec<Binding>,
    pub control_plane: BTreeSet<String>,
}

/// A range of ports, `"1024-65535"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange { first: 1024, last: 65535 }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a port range such as \"1024-65535\", found {s:?}");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!("expected a port range from 1 to 65535 with its first port first, found {s:?}"));
        }
        Ok(PortRange { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Ports Bramble and etcd use on boards: never forwarded, whatever the leader says.
pub const ETCD_PORTS: [u16; 2] = [2379, 2380];
/// The cluster DNS on the bridge, and the board's own resolver.
pub const DNS_PORT: u16 = 53;

/// What a board allows: a range and the ports it keeps for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortPolicy {
    pub range: PortRange,
    /// (protocol, port) → what it is.
    pub reserved: BTreeMap<(Protocol, u16), String>,
}

impl Default for HostPortPolicy {
    fn default() -> Self {
        HostPortPolicy::new(PortRange::default(), &[], &[])
    }
}

impl HostPortPolicy {
    /// The range, the operator's `reserved` ports (both protocols) and Bramble's own (`own`:
    /// protocol, port, what it is), with etcd's and DNS always among them.
    pub fn new(range: PortRange, reserved: &[u16], own: &[(Protocol, u16, String)]) -> HostPortPolicy {
        let mut r = BTreeMap::new();
        for p in ETCD_PORTS {
            r.insert((Protocol::Tcp, p), "etcd's".to_string());
        }
        for proto in [Protocol::Udp, Protocol::Tcp] {
            r.insert((proto, DNS_PORT), "DNS".to_string());
            for p in reserved {
                r.insert((proto, *p), "reserved in agent.toml (network.reserved_ports)".to_string());
            }
        }
        for (proto, port, what) in own {
            r.insert((*proto, *port), what.clone());
        }
        HostPortPolicy { range, reserved: r }
    }

    /// Whether an app may take `port` on this board; the reason if not.
    pub fn check(&self, protocol: Protocol, port: u16) -> Result<(), String> {
        let name = match protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        if let Some(what) = self.reserved.get(&(protocol, port)) {
            return Err(format!("host port {port}/{name} is Bramble's own on this board ({what})"));
        }
        if port < self.range.first || port > self.range.last {
            return Err(format!(
                "host port {port}/{name} is outside this board's host port range {} (network.host_ports in agent.toml)",
                self.range
            ));
        }
        Ok(())
    }
}

/// The ports that sockets on this board (in the agent's network namespace) listen on, per
/// protocol: TCP in LISTEN, UDP bound. Unreadable files count as no sockets.
pub fn listening() -> BTreeSet<(Protocol, u16)> {
    let mut out = BTreeSet::new();
    for (file, proto) in [
        ("/proc/net/tcp", Protocol::Tcp),
        ("/proc/net/tcp6", Protocol::Tcp),
        ("/proc/net/udp", Protocol::Udp),
        ("/proc/net/udp6", Protocol::Udp),
    ] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        out.extend(parse_proc_net(&text, proto).into_iter().map(|p| (proto, p)));
    }
    out
}

/// The local ports in a `/proc/net/{tcp,udp}[6]` table that listen (TCP state 0A) or are bound
/// and unconnected (UDP state 07).
pub fn parse_proc_net(text: &str, proto: Protocol) -> BTreeSet<u16> {
    let want = match proto {
        Protocol::Tcp => "0A",
        Protocol::Udp => "07",
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != want {
                return None;
            }
            let port = local.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!("80-65535".parse::<PortRange>().unwrap(), PortRange { first: 80, last: 65535 });
        assert_eq!(PortRange::default().to_string(), "1024-65535");
        for bad in ["80", "0-10", "100-80", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bramble_and_etcd_ports_and_the_range_are_kept() {
        let own = [(Protocol::Udp, 7443, "the leader's QUIC port".to_string())];
        let p = HostPortPolicy::new(PortRange::default(), &[9000], &own);
        assert_eq!(
            p.check(Protocol::Udp, 7443).unwrap_err(),
            "host port 7443/udp is Bramble's own on this board (the leader's QUIC port)"
        );
        assert!(p.check(Protocol::Tcp, 7443).is_ok(), "QUIC is UDP only");
        assert!(p.check(Protocol::Tcp, 2379).unwrap_err().contains("etcd's"));
        assert!(p.check(Protocol::Udp, 9000).unwrap_err().contains("reserved in agent.toml"));
        assert!(p.check(Protocol::Tcp, 22).unwrap_err().contains("outside this board's host port range 1024-65535"));
        assert!(p.check(Protocol::Udp, 53).unwrap_err().contains("DNS"));
        assert!(p.check(Protocol::Tcp, 8080).is_ok());
        let wide = HostPortPolicy::new("80-65535".parse().unwrap(), &[], &[]);
        assert!(wide.check(Protocol::Tcp, 80).is_ok());
        assert!(wide.check(Protocol::Tcp, 53).is_err(), "DNS stays the board's whatever the range");
    }

    #[test]
    fn listeners_from_proc_net() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
           1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";
        assert_eq!(parse_proc_net(tcp, Protocol::Tcp), BTreeSet::from([22]), "established is not listening");
        let udp6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000000000000:1D13 00000000000000000000000000000000:0000 07 0 0\n";
        assert_eq!(parse_proc_net(udp6, Protocol::Udp), BTreeSet::from([7443]));
        assert!(listening().len() < 65536);
    }
}
