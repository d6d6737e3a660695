//! Cluster DNS on each board, answering on the bridge's address: `<service>` and
//! `<service>.<domain>` → the service's virtual IP; any other name in the cluster domain does not
//! exist; every other name goes, as it was asked, to the board's own resolvers and their answer
//! comes back as it was given. Packets are read and written with the `simple-dns` crate.

use bramble_proto::limit::Limiter;
use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};

/// How long an answer may be cached: short, so that a new service is seen at once.
const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// What pods may hold of the board's DNS server (each is a descriptor of the agent's, or a task):
/// TCP connections per pod and in all, idle ones closed; UDP queries waiting for an upstream per
/// pod and in all (more are refused at once).
pub const MAX_TCP_PER_CLIENT: usize = 8;
pub const MAX_TCP: usize = 128;
pub const TCP_IDLE: Duration = Duration::from_secs(10);
pub const MAX_UDP_PER_CLIENT: usize = 32;
pub const MAX_UDP: usize = 256;

/// The 16-bit id of a DNS message.
fn id_of(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// Service names and their virtual IPs.
#[derive(Debug, Default)]
pub struct Names {
    inner: RwLock<(String, HashMap<String, Ipv4Addr>)>,
}

impl Names {
    /// Replaces the table: every service under its name, in `domain`.
    pub fn set(&self, domain: &str, services: impl IntoIterator<Item = (String, Ipv4Addr)>) {
        let map = services.into_iter().map(|(n, ip)| (n.to_ascii_lowercase(), ip)).collect();
        *self.inner.write().expect("names lock") = (domain.to_ascii_lowercase(), map);
    }

    /// What a name means here: `Some(Some(ip))` a service, `Some(None)` a name of the cluster
    /// that does not exist, `None` a name for the board's resolvers.
    pub fn lookup(&self, name: &str) -> Option<Option<Ipv4Addr>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let g = self.inner.read().expect("names lock");
        let (domain, map) = &*g;
        let short = match name.strip_suffix(domain.as_str()) {
            Some("") => return Some(None),
            // "xbramble.internal" is not in the domain: forwarded.
            Some(rest) => rest.strip_suffix('.')?,
            None => &name,
        };
        match map.get(short) {
            Some(ip) => Some(Some(*ip)),
            // Inside the domain, or a single label: ours to answer.
            None if short.len() < name.len() || !short.contains('.') => Some(None),
            None => None,
        }
    }
}

/// The answer to `query`, if it is ours to give (`None`: forward it as it is).
pub fn answer(query: &[u8], names: &Names) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let [question] = q.questions.as_slice() else { return None };
    let found = names.lookup(&question.qname.to_string())?;
    let mut reply = Packet::new_reply(q.id());
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    reply.questions.push(question.clone());
    match found {
        Some(ip) if question.qtype == QTYPE::TYPE(TYPE::A) => {
            let rr = ResourceRecord::new(question.qname.clone(), CLASS::IN, TTL, RData::A(A { address: ip.into() }));
            reply.answers.push(rr);
        }
        // A service, another type (AAAA): no data, no error.
        Some(_) => {}
        None => *reply.rcode_mut() = RCODE::NameError,
    }
    reply.build_bytes_vec_compressed().ok()
}

/// An answer for a query that could not be answered at all.
fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let mut reply = q.into_reply();
    *reply.rcode_mut() = RCODE::ServerFailure;
    reply.build_bytes_vec().ok()
}

/// The board's resolvers, from `resolv.conf` (IPv4 `nameserver` lines).
pub fn system_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddr::from((ip, 53)))
        .collect()
}

/// Asks the upstreams in turn. Only an answer from the upstream asked (a connected socket), to
/// this query (its id), is taken: anything else is dropped while the wait goes on.
async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = id_of(query)?;
    for up in upstreams {
        let Ok(sock) = UdpSocket::bind("0.0.0.0:0").await else { continue };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let wait = async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if id_of(&buf[..n]) == Some(id) {
                    return Some(n);
                }
            }
        };
        if let Ok(Some(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await {
            buf.truncate(n);
            return Some(buf);
        }
        debug!(upstream = %up, "no answer from the upstream resolver");
    }
    None
}

async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let exchange = async {
            let mut s = TcpStream::connect(up).await.ok()?;
            s.write_all(&(query.len() as u16).to_be_bytes()).await.ok()?;
            s.write_all(query).await.ok()?;
            let len = s.read_u16().await.ok()?;
            let mut buf = vec![0u8; len as usize];
            s.read_exact(&mut buf).await.ok()?;
            (id_of(&buf) == id_of(query)).then_some(buf)
        };
        if let Ok(Some(b)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(b);
        }
    }
    None
}

/// Serves DNS on `addr`:53 (UDP and TCP) until the task is dropped.
pub async fn serve(addr: Ipv4Addr, names: Arc<Names>, upstreams: Vec<SocketAddr>) {
    let sock = loop {
        match UdpSocket::bind((addr, 53)).await {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                warn!(%addr, "cannot serve DNS: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let tcp = TcpListener::bind((addr, 53)).await;
    info!(%addr, upstreams = ?upstreams, "serving cluster DNS");
    let upstreams = Arc::new(upstreams);
    match tcp {
        Ok(l) => {
            tokio::spawn(accept_tcp(l, names.clone(), upstreams.clone(), Limiter::new(MAX_TCP_PER_CLIENT, MAX_TCP)));
        }
        Err(e) => warn!(%addr, "cannot serve DNS over TCP: {e}"),
    }
    let inflight = Limiter::new(MAX_UDP_PER_CLIENT, MAX_UDP);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!("DNS over UDP: {e}");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        if let Some(r) = answer(&query, &names) {
            let _ = sock.send_to(&r, peer).await;
            continue;
        }
        // Waiting for an upstream holds a socket: a bounded number per pod and in all.
        let Some(slot) = inflight.take(peer.ip()) else {
            debug!(%peer, "too many DNS queries in flight; refused");
            if let Some(r) = refused(&query) {
                let _ = sock.send_to(&r, peer).await;
            }
            continue;
        };
        let (sock, upstreams) = (sock.clone(), upstreams.clone());
        tokio::spawn(async move {
            let reply = forward_udp(&query, &upstreams).await.or_else(|| server_failure(&query));
            if let Some(r) = reply {
                let _ = sock.send_to(&r, peer).await;
            }
            drop(slot);
        });
    }
}

/// The REFUSED answer to a query over the limits.
fn refused(query: &[u8]) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let mut reply = q.into_reply();
    *reply.rcode_mut() = RCODE::Refused;
    reply.build_bytes_vec().ok()
}

/// Accepts TCP clients within the limits, for as long as the listener lives: an error (out of
/// descriptors, a client gone before it was accepted) is waited out, not the end.
async fn accept_tcp(l: TcpListener, names: Arc<Names>, upstreams: Arc<Vec<SocketAddr>>, limits: Arc<Limiter>) {
    loop {
        let (s, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("DNS over TCP: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = limits.take(peer.ip()) else {
            debug!(%peer, "too many DNS connections; closed");
            continue;
        };
        let (names, upstreams) = (names.clone(), upstreams.clone());
        tokio::spawn(async move {
            serve_tcp(s, names, upstreams).await;
            drop(slot);
        });
    }
}

/// One TCP client: queries until it closes, or is idle for [`TCP_IDLE`].
async fn serve_tcp(mut s: TcpStream, names: Arc<Names>, upstreams: Arc<Vec<SocketAddr>>) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else { return };
        let mut query = vec![0u8; len as usize];
        if !matches!(tokio::time::timeout(TCP_IDLE, s.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        let reply = match answer(&query, &names) {
            Some(r) => Some(r),
            None => forward_tcp(&query, &upstreams).await.or_else(|| server_failure(&query)),
        };
        let Some(r) = reply else { return };
        if s.write_all(&(r.len() as u16).to_be_bytes()).await.is_err() || s.write_all(&r).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::Name;

    fn query(name: &str, t: TYPE) -> Vec<u8> {
        let mut q = Packet::new_query(7);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(simple_dns::Question::new(Name::new_unchecked(name), QTYPE::TYPE(t), CLASS::IN.into(), false));
        q.build_bytes_vec().unwrap()
    }

    fn names() -> Names {
        let n = Names::default();
        n.set("bramble.internal", [("web".to_string(), "10.43.0.1".parse().unwrap())]);
        n
    }

    #[test]
    fn services_by_short_and_full_name_others_forwarded() {
        let n = names();
        for name in ["web", "web.bramble.internal", "WEB.Bramble.Internal."] {
            let bytes = answer(&query(name, TYPE::A), &n).expect("ours");
            let r = Packet::parse(&bytes).unwrap();
            assert_eq!(r.id(), 7);
            assert_eq!(r.rcode(), RCODE::NoError);
            assert!(
                matches!(&r.answers[0].rdata, RData::A(a) if Ipv4Addr::from(a.address) == Ipv4Addr::new(10, 43, 0, 1))
            );
        }
        let nx_bytes = answer(&query("db.bramble.internal", TYPE::A), &n).unwrap();
        let nx = Packet::parse(&nx_bytes).unwrap();
        assert_eq!(nx.rcode(), RCODE::NameError, "a name of the cluster that does not exist");
        let single_bytes = answer(&query("nosuch", TYPE::A), &n).unwrap();
        let single = Packet::parse(&single_bytes).unwrap();
        assert_eq!(single.rcode(), RCODE::NameError);
        let aaaa_bytes = answer(&query("web", TYPE::AAAA), &n).unwrap();
        let aaaa = Packet::parse(&aaaa_bytes).unwrap();
        assert_eq!((aaaa.rcode(), aaaa.answers.len()), (RCODE::NoError, 0), "no IPv6 address: no data");
        assert_eq!(answer(&query("example.com", TYPE::A), &n), None, "forwarded");
        assert_eq!(answer(&query("xbramble.internal", TYPE::A), &n), None, "not in the domain");
        assert_eq!(answer(b"garbage", &n), None);
    }

    /// A pod holding many idle TCP connections to the DNS server gets only its share; the rest
    /// are closed at once, idle ones after TCP_IDLE, and a reply's id must match its query's.
    #[tokio::test]
    async fn tcp_connections_are_capped_and_idle_ones_closed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Limiter::new(MAX_TCP_PER_CLIENT, MAX_TCP);
        tokio::spawn(accept_tcp(l, Arc::new(names()), Arc::new(Vec::new()), limits.clone()));
        let mut held = Vec::new();
        for _ in 0..(MAX_TCP_PER_CLIENT + 5) {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(limits.held(), MAX_TCP_PER_CLIENT);
        let mut closed = 0;
        for s in &mut held {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, 5, "those over the cap are closed");
        // A query still works on a held one.
        let q = query("web", TYPE::A);
        let s = &mut held[0];
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&q).await.unwrap();
        let n = s.read_u16().await.unwrap();
        let mut r = vec![0u8; n as usize];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(id_of(&r), Some(7));
    }

    #[test]
    fn resolvers_from_resolv_conf() {
        let r = system_resolvers("# comment\nnameserver 192.168.1.1\nnameserver ::1\nsearch lan\nnameserver 1.1.1.1\n");
        assert_eq!(r, ["192.168.1.1:53".parse::<SocketAddr>().unwrap(), "1.1.1.1:53".parse().unwrap()]);
    }
}
