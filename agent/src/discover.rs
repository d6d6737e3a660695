//! Finding the cluster's leaders on the LAN when none is configured (`bramble_proto::mdns`): a
//! one-shot `_bramble._udp.local` query out of every interface, the answers of the next moment
//! read, and only those naming the expected CA kept (the token's pin, or the CA the board
//! already has). TLS checks that CA again on connect, so an answer is a hint, never trust.

use bramble_proto::mdns;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tracing::{debug, info};

/// How long answers are waited for.
pub const WAIT: Duration = Duration::from_millis(1500);

/// This board's IPv4 addresses, loopback aside.
fn interfaces() -> Vec<Ipv4Addr> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out: Vec<Ipv4Addr> = list
        .filter_map(|i| i.address.as_ref()?.as_sockaddr_in().map(|a| a.ip()))
        .filter(|a| !a.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The leaders of the cluster whose CA has `ca_fingerprint` that answer within `wait`: each
/// answer's source address with the QUIC port it names.
pub async fn leaders(ca_fingerprint: &str, wait: Duration) -> Vec<SocketAddr> {
    match ask(ca_fingerprint, wait).await {
        Ok(found) => {
            if !found.is_empty() {
                info!(?found, "found the cluster's leaders on the LAN (mDNS)");
            }
            found
        }
        Err(e) => {
            debug!("mDNS query: {e}");
            Vec::new()
        }
    }
}

async fn ask(ca_fingerprint: &str, wait: Duration) -> std::io::Result<Vec<SocketAddr>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    let id = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
        & 0xffff) as u16;
    let query = mdns::query(id);
    let to: socket2::SockAddr = SocketAddr::from((mdns::GROUP, mdns::PORT)).into();
    let mut sent = 0;
    for addr in interfaces() {
        if s.set_multicast_if_v4(&addr).is_ok() && s.send_to(&query, &to).is_ok() {
            sent += 1;
        }
    }
    if sent == 0 {
        s.send_to(&query, &to)?;
    }
    s.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(s.into())?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 1500];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(r) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let Ok((n, from)) = r else { continue };
        match mdns::read_answer(&buf[..n], id) {
            Some(a) if a.ca_fingerprint == ca_fingerprint => {
                let addr = SocketAddr::new(from.ip(), a.port);
                if !found.contains(&addr) {
                    found.push(addr);
                }
            }
            Some(a) => debug!(%from, instance = %a.instance, "a leader of another cluster answered"),
            None => {}
        }
    }
    Ok(found)
}
