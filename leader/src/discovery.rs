//! The leader's side of mDNS discovery (`bramble_proto::mdns`): answers boards' one-shot
//! `_bramble._udp.local` queries on UDP 5353 of every interface with its QUIC port and the CA
//! fingerprint. Only queries from an address on one of this host's own subnets are answered (a
//! unicast answer to anyone else could be used to reflect traffic), one answer per query.

use bramble_proto::mdns;
use std::net::{Ipv4Addr, SocketAddr};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// This host's IPv4 addresses with their netmasks (loopback aside).
fn subnets() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    list.filter_map(|i| {
        let addr = i.address.as_ref()?.as_sockaddr_in()?.ip();
        let mask = i.netmask.as_ref()?.as_sockaddr_in()?.ip();
        (!addr.is_loopback()).then_some((addr, mask))
    })
    .collect()
}

/// Whether `ip` is on one of `subnets`.
pub fn on_link(ip: Ipv4Addr, subnets: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    subnets.iter().any(|(a, m)| u32::from(*a) & u32::from(*m) == u32::from(ip) & u32::from(*m))
}

/// Starts answering until `cancel` fires. A port that cannot be bound (no multicast here) is said
/// and the leader runs on without it: boards then need its address.
pub fn spawn(instance: String, port: u16, ca_fingerprint: String, cancel: CancellationToken) {
    let socket = match bind() {
        Ok(s) => s,
        Err(e) => {
            warn!("mDNS discovery is off: cannot listen on UDP {}: {e}", mdns::PORT);
            return;
        }
    };
    info!(port, "answering boards' mDNS queries for {}", mdns::SERVICE);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, from) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!("mDNS: {e}");
                        continue;
                    }
                },
            };
            let SocketAddr::V4(from4) = from else { continue };
            if !on_link(*from4.ip(), &subnets()) {
                continue;
            }
            if let Some(answer) = mdns::answer(&buf[..n], &instance, port, &ca_fingerprint) {
                // A one-shot query (not from 5353) is answered to its sender, by unicast.
                let to = if from.port() == mdns::PORT { SocketAddr::from((mdns::GROUP, mdns::PORT)) } else { from };
                if let Err(e) = socket.send_to(&answer, to).await {
                    debug!("mDNS answer to {to}: {e}");
                }
            }
        }
    });
}

fn bind() -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Beside any other responder (avahi) on the host.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, mdns::PORT)).into())?;
    let mut joined = 0;
    for (addr, _) in subnets() {
        if s.join_multicast_v4(&mdns::GROUP, &addr).is_ok() {
            joined += 1;
        }
    }
    if joined == 0 {
        s.join_multicast_v4(&mdns::GROUP, &Ipv4Addr::UNSPECIFIED)?;
    }
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_queries_from_this_hosts_subnets_are_answered() {
        let subnets = [("192.168.1.10".parse().unwrap(), "255.255.255.0".parse().unwrap())];
        assert!(super::on_link("192.168.1.77".parse().unwrap(), &subnets));
        assert!(!super::on_link("192.168.2.77".parse().unwrap(), &subnets));
        assert!(!super::on_link("8.8.8.8".parse().unwrap(), &[]));
    }
}
