//! Forgets conntrack flows of endpoints and pods that went away, so clients move to the remaining
//! endpoints at once (a UDP "connection" otherwise stays mapped to the gone endpoint until it
//! times out) and a pod address given to a new pod starts with no flows of the old one.
//!
//! Through ctnetlink (a `NETLINK_NETFILTER` socket, the messages of
//! `<linux/netfilter/nfnetlink_conntrack.h>`), not Debian's `conntrack` tool: the tool dumped the
//! whole table once per filter — four dumps and four processes for every pod removed, ~10 ms of
//! kernel time each even with an empty table (the walk is over the hash buckets) — which, with
//! 100 pods removed at once, took more CPU than starting the next 100. Here one dump serves every
//! pod removed meanwhile ([`forget_address`] batches its callers), and each matching flow is
//! deleted by its original tuple.

use super::link::{attributes, Message, Netlink};
use super::NetError;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Condvar, Mutex};
use tracing::{debug, warn};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// The protocol number of UDP.
pub const UDP: u8 = 17;

/// One direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Ports, for the protocols that have them.
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// A flow the kernel tracks: both directions, and what deleting it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub orig: Tuple,
    pub reply: Tuple,
    /// The original tuple's attribute as the kernel sent it: a delete names the flow by it.
    orig_raw: Vec<u8>,
    zone: Option<Vec<u8>>,
}

impl Flow {
    /// Whether `ip` is any of the flow's four addresses.
    pub fn involves(&self, ip: Ipv4Addr) -> bool {
        [self.orig.src, self.orig.dst, self.reply.src, self.reply.dst].contains(&ip)
    }
}

/// `struct nfgenmsg`: IPv4, version 0, resource id 0.
fn nfgenmsg() -> [u8; 4] {
    [libc::AF_INET as u8, 0, 0, 0]
}

fn kind(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

fn tuple(bytes: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (k, v) in attributes(bytes) {
        match k {
            CTA_TUPLE_IP => {
                for (k, v) in attributes(v) {
                    let addr = <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
                    match k {
                        CTA_IP_V4_SRC => src = addr,
                        CTA_IP_V4_DST => dst = addr,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attributes(v) {
                    let port = <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes);
                    match k {
                        CTA_PROTO_NUM => proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port,
                        CTA_PROTO_DST_PORT => dport = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple { src: src?, dst: dst?, proto: proto?, sport, dport })
}

/// A flow from one message of a dump (its body after the netlink header); `None` for anything
/// that is not a whole IPv4 flow. Never panics, whatever the bytes (the fuzz target reads
/// through it).
pub fn parse_flow(body: &[u8]) -> Option<Flow> {
    let attrs = body.get(4..)?;
    let (mut orig, mut reply, mut zone) = (None, None, None);
    for (k, v) in attributes(attrs) {
        match k {
            CTA_TUPLE_ORIG => orig = Some((tuple(v)?, v.to_vec())),
            CTA_TUPLE_REPLY => reply = tuple(v),
            CTA_ZONE => zone = Some(v.to_vec()),
            _ => {}
        }
    }
    let (orig, orig_raw) = orig?;
    Some(Flow { orig, reply: reply?, orig_raw, zone })
}

/// The IPv4 flows of this network namespace.
pub fn flows(nl: &Netlink) -> Result<Vec<Flow>, NetError> {
    let dump = Message::new(kind(IPCTNL_MSG_CT_GET), NLM_F_REQUEST | NLM_F_DUMP, &nfgenmsg());
    let answers = nl.call(dump, "list the conntrack flows")?.map_err(|r| NetError::Netlink {
        what: "list the conntrack flows".into(),
        message: format!("{r} (is the nf_conntrack_netlink module there?)"),
    })?;
    Ok(answers.iter().filter(|(k, _)| *k == kind(IPCTNL_MSG_CT_NEW)).filter_map(|(_, b)| parse_flow(b)).collect())
}

/// Deletes the flows that `matches`; how many. A flow gone meanwhile is not an error.
pub fn forget(what: &str, matches: impl Fn(&Flow) -> bool) -> Result<usize, NetError> {
    let nl = Netlink::open_protocol(libc::NETLINK_NETFILTER)?;
    let mut deleted = 0;
    for flow in flows(&nl)?.iter().filter(|f| matches(f)) {
        let mut msg = Message::new(kind(IPCTNL_MSG_CT_DELETE), NLM_F_REQUEST | NLM_F_ACK, &nfgenmsg())
            .attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &flow.orig_raw);
        if let Some(zone) = &flow.zone {
            msg = msg.attr(CTA_ZONE, zone);
        }
        match nl.call(msg, what)? {
            Ok(_) => deleted += 1,
            Err(r) if r.errno == libc::ENOENT => {}
            Err(r) => return Err(NetError::Netlink { what: what.into(), message: r.to_string() }),
        }
    }
    Ok(deleted)
}

/// What a rule sync took away: UDP flows to move off an endpoint, and pod addresses gone from
/// every service. One dump serves all of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gone {
    /// `(vip, port, endpoint)`: the UDP flows to `vip:port` that were sent to `endpoint`.
    pub udp: Vec<(Ipv4Addr, u16, Ipv4Addr)>,
    /// The flows this board sent to these addresses (its DNAT to pods gone from every service).
    pub replies: BTreeSet<Ipv4Addr>,
}

impl Gone {
    pub fn is_empty(&self) -> bool {
        self.udp.is_empty() && self.replies.is_empty()
    }

    /// Whether `f` is one of the flows to forget.
    pub fn matches(&self, f: &Flow) -> bool {
        self.replies.contains(&f.reply.src)
            || (f.orig.proto == UDP
                && self.udp.iter().any(|(vip, port, endpoint)| {
                    f.orig.dst == *vip && f.orig.dport == Some(*port) && f.reply.src == *endpoint
                }))
    }
}

/// Deletes the flows of `gone`, with one dump of the table.
pub fn forget_gone(gone: &Gone) {
    if gone.is_empty() {
        return;
    }
    let what = format!(
        "forget the flows of {} gone UDP endpoint(s) and {} address(es) gone from every service",
        gone.udp.len(),
        gone.replies.len()
    );
    match forget(&what, |f| gone.matches(f)) {
        Ok(n) => debug!(udp = gone.udp.len(), replies = gone.replies.len(), flows = n, "flows forgotten"),
        Err(e) => warn!("{e}"),
    }
}

/// Addresses waiting for a dump, and which dumps are done: callers that come while a dump runs
/// share the next one (a group commit).
struct Batches {
    state: Mutex<BatchState>,
    finished: Condvar,
}

struct BatchState {
    pending: BTreeSet<Ipv4Addr>,
    running: bool,
    /// The number of the next dump to start, and of the last one finished.
    next: u64,
    done: u64,
}

impl Batches {
    const fn new() -> Batches {
        Batches {
            state: Mutex::new(BatchState { pending: BTreeSet::new(), running: false, next: 1, done: 0 }),
            finished: Condvar::new(),
        }
    }

    /// Returns once a run of `dump` that started after this call has had `ip` among its
    /// addresses. One caller at a time runs it, for every address waiting.
    fn join(&self, ip: Ipv4Addr, dump: impl Fn(&BTreeSet<Ipv4Addr>)) {
        let mut b = self.state.lock().expect("conntrack batches");
        b.pending.insert(ip);
        let mine = b.next;
        while b.done < mine {
            if b.running {
                b = self.finished.wait(b).expect("conntrack batches");
                continue;
            }
            let ips = std::mem::take(&mut b.pending);
            let number = b.next;
            b.next += 1;
            b.running = true;
            drop(b);
            dump(&ips);
            b = self.state.lock().expect("conntrack batches");
            b.running = false;
            b.done = number;
            self.finished.notify_all();
        }
    }
}

static BATCHES: Batches = Batches::new();

/// Deletes every flow from or to `ip` (a pod that is gone), in both directions; returns once a
/// dump that started after the call has deleted them. Many pods removed at once (each on its own
/// thread) share a dump: one caller runs it for every address waiting, the others wait for it.
pub fn forget_address(ip: Ipv4Addr) {
    BATCHES.join(ip, |ips| {
        let what = format!("forget the flows of {} removed pod address(es)", ips.len());
        match forget(&what, |f| ips.iter().any(|ip| f.involves(*ip))) {
            Ok(n) => debug!(addresses = ips.len(), flows = n, "flows of removed pods forgotten"),
            Err(e) => warn!("{e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple_attr(m: Message, kind: u16, t: &Tuple) -> Message {
        let mut m = m
            .nest(kind)
            .nest(CTA_TUPLE_IP)
            .attr(CTA_IP_V4_SRC, &t.src.octets())
            .attr(CTA_IP_V4_DST, &t.dst.octets())
            .end()
            .nest(CTA_TUPLE_PROTO)
            .attr(CTA_PROTO_NUM, &[t.proto]);
        if let (Some(s), Some(d)) = (t.sport, t.dport) {
            m = m.attr(CTA_PROTO_SRC_PORT, &s.to_be_bytes()).attr(CTA_PROTO_DST_PORT, &d.to_be_bytes());
        }
        m.end().end()
    }

    /// A flow message as the kernel sends one (the body after the netlink header).
    fn message(orig: &Tuple, reply: &Tuple) -> Vec<u8> {
        let m = Message::new(kind(IPCTNL_MSG_CT_NEW), 0, &nfgenmsg());
        let m = tuple_attr(tuple_attr(m, CTA_TUPLE_ORIG, orig), CTA_TUPLE_REPLY, reply).attr(CTA_ZONE, &[0, 3]);
        m.finish(1)[16..].to_vec()
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Tuple {
        Tuple { src: src.into(), dst: dst.into(), proto: UDP, sport: Some(sport), dport: Some(dport) }
    }

    #[test]
    fn a_flow_is_read_with_both_directions_and_what_deleting_it_takes() {
        // A client's UDP flow to a VIP, DNAT'ed to a pod.
        let orig = udp([10, 0, 0, 5], [10, 96, 0, 10], 40000, 53);
        let reply = udp([10, 64, 1, 7], [10, 0, 0, 5], 53, 40000);
        let flow = parse_flow(&message(&orig, &reply)).expect("a flow");
        assert_eq!((flow.orig, flow.reply), (orig, reply));
        assert_eq!(flow.zone.as_deref(), Some(&[0u8, 3][..]));
        assert!(tuple(&flow.orig_raw).is_some_and(|t| t == orig), "the delete names the original tuple");
        assert!(flow.involves(Ipv4Addr::new(10, 64, 1, 7)) && flow.involves(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(!flow.involves(Ipv4Addr::new(10, 64, 1, 8)));
        // ICMP has no ports.
        let ping = Tuple { src: [10, 0, 0, 5].into(), dst: [10, 0, 0, 6].into(), proto: 1, sport: None, dport: None };
        assert_eq!(parse_flow(&message(&ping, &ping)).expect("a flow").orig.dport, None);
    }

    #[test]
    fn what_a_sync_took_away_matches_only_its_own_flows() {
        let flow = |orig, reply| parse_flow(&message(&orig, &reply)).expect("a flow");
        // Client → VIP 10.96.0.10:53, DNAT'ed to the pod 10.64.1.7.
        let to_gone =
            flow(udp([10, 0, 0, 5], [10, 96, 0, 10], 40000, 53), udp([10, 64, 1, 7], [10, 0, 0, 5], 53, 40000));
        // The same VIP and port, another endpoint that stays.
        let to_kept =
            flow(udp([10, 0, 0, 6], [10, 96, 0, 10], 40001, 53), udp([10, 64, 1, 8], [10, 0, 0, 6], 53, 40001));
        // The gone endpoint, through another port of the VIP.
        let other_port =
            flow(udp([10, 0, 0, 5], [10, 96, 0, 10], 40002, 5353), udp([10, 64, 1, 7], [10, 0, 0, 5], 5353, 40002));
        let udp_only = Gone {
            udp: vec![(Ipv4Addr::new(10, 96, 0, 10), 53, Ipv4Addr::new(10, 64, 1, 7))],
            replies: BTreeSet::new(),
        };
        assert!(udp_only.matches(&to_gone));
        assert!(!udp_only.matches(&to_kept), "the endpoint that stays keeps its flows");
        assert!(!udp_only.matches(&other_port), "only the port whose endpoint went");
        let tcp = Tuple { proto: 6, ..to_gone.orig };
        assert!(!udp_only.matches(&Flow { orig: tcp, ..to_gone.clone() }), "only UDP moves endpoint");
        let both = Gone { replies: [Ipv4Addr::new(10, 64, 1, 7)].into(), ..udp_only.clone() };
        assert!(both.matches(&to_gone) && both.matches(&other_port), "every flow sent to the gone address");
        assert!(!both.matches(&to_kept));
        assert!(Gone::default().is_empty() && !both.is_empty());
    }

    #[test]
    fn bad_messages_are_not_flows_and_never_panic() {
        let good = message(&udp([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &udp([5, 6, 7, 8], [1, 2, 3, 4], 2, 1));
        assert!(parse_flow(&[]).is_none());
        assert!(parse_flow(&good[..4]).is_none(), "no tuples");
        for cut in 0..good.len() {
            let _ = parse_flow(&good[..cut]);
        }
        let mut noise = good.clone();
        for i in 0..noise.len() {
            noise[i] ^= 0xa5;
            let _ = parse_flow(&noise);
            noise[i] ^= 0x5a;
            let _ = parse_flow(&noise);
        }
    }

    #[test]
    fn callers_share_dumps_and_each_returns_after_one_that_had_its_address() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let batches = std::sync::Arc::new(Batches::new());
        let dumps = std::sync::Arc::new(Mutex::new(Vec::<BTreeSet<Ipv4Addr>>::new()));
        let running = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..40u8)
            .map(|i| {
                let (batches, dumps, running) = (batches.clone(), dumps.clone(), running.clone());
                std::thread::spawn(move || {
                    let ip = Ipv4Addr::new(10, 64, 0, i);
                    batches.join(ip, |ips| {
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "one dump at a time");
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        dumps.lock().unwrap().push(ips.clone());
                        running.fetch_sub(1, Ordering::SeqCst);
                    });
                    assert!(
                        dumps.lock().unwrap().iter().any(|d| d.contains(&ip)),
                        "{ip} was in a dump before its caller returned"
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let dumps = dumps.lock().unwrap();
        assert_eq!(dumps.iter().map(|d| d.len()).sum::<usize>(), 40, "each address in exactly one dump");
        assert!(dumps.len() < 40, "callers shared dumps ({} dumps for 40 addresses)", dumps.len());
    }

    /// A real dump of this test's network namespace through ctnetlink (root; nf_conntrack_netlink).
    #[test]
    fn the_kernel_answers_a_dump() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (a NETLINK_NETFILTER socket)");
        let nl = Netlink::open_protocol(libc::NETLINK_NETFILTER).expect("a netfilter socket");
        flows(&nl).expect("the kernel lists its flows (modprobe nf_conntrack_netlink?)");
        assert_eq!(forget("forget nothing", |_| false).expect("a dump"), 0);
    }
}
