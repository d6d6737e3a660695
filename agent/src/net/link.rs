//! Links, addresses, routes and neighbours through rtnetlink, never by running `ip`. A
//! [`Netlink`] is a `NETLINK_ROUTE` socket of the network namespace of the thread that opened
//! it; each call sends one request and reads the kernel's answer, so it can be used from any
//! thread (the reconciler's, a thread inside a pod's namespace).
//!
//! The messages are built here, not with a netlink crate: the agent sends eleven kinds of
//! request and reads two kinds of answer, and a general rtnetlink library (its parser of every
//! link and route attribute, its async connection) was 0.45 MB of the agent's 3.8 MB of code —
//! memory every board pays for (BENCHMARKS.md, "The agent"). The layouts are those of
//! `<linux/netlink.h>`, `<linux/rtnetlink.h>`, `<linux/if_link.h>` and `<linux/neighbour.h>`.

use super::NetError;
use bramble_proto::network::Cidr;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Routes Bramble adds carry this protocol number, so they can be found again (and only they
/// removed).
pub const ROUTE_PROTOCOL: u8 = 0x42;

/// The kernel's numbers (uapi headers), by their C names.
#[allow(non_upper_case_globals, dead_code)]
mod sys {
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLM_F_REPLACE: u16 = 0x100;
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    /// In an error's header: the request was not copied back (NETLINK_CAP_ACK).
    pub const NLM_F_CAPPED: u16 = 0x100;
    /// In an error's header: extended-ack attributes follow.
    pub const NLM_F_ACK_TLVS: u16 = 0x200;
    pub const NLMSGERR_ATTR_MSG: u16 = 1;
    pub const NETLINK_CAP_ACK: i32 = 10;
    pub const NETLINK_EXT_ACK: i32 = 11;

    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_DELLINK: u16 = 17;
    pub const RTM_GETLINK: u16 = 18;
    pub const RTM_SETLINK: u16 = 19;
    pub const RTM_NEWADDR: u16 = 20;
    pub const RTM_DELADDR: u16 = 21;
    pub const RTM_GETADDR: u16 = 22;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const RTM_DELROUTE: u16 = 25;
    pub const RTM_GETROUTE: u16 = 26;
    pub const RTM_NEWNEIGH: u16 = 28;
    pub const RTM_DELNEIGH: u16 = 29;

    pub const AF_INET: u8 = 2;
    pub const AF_BRIDGE: u8 = 7;
    pub const IFF_UP: u32 = 0x1;

    pub const IFLA_ADDRESS: u16 = 1;
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_MTU: u16 = 4;
    pub const IFLA_MASTER: u16 = 10;
    pub const IFLA_LINKINFO: u16 = 18;
    pub const IFLA_NET_NS_FD: u16 = 28;
    pub const IFLA_INFO_KIND: u16 = 1;
    pub const IFLA_INFO_DATA: u16 = 2;
    pub const VETH_INFO_PEER: u16 = 1;
    pub const IFLA_VXLAN_ID: u16 = 1;
    pub const IFLA_VXLAN_LEARNING: u16 = 7;
    pub const IFLA_VXLAN_PORT: u16 = 15;

    pub const IFA_ADDRESS: u16 = 1;
    pub const IFA_LOCAL: u16 = 2;
    pub const IFA_BROADCAST: u16 = 4;

    pub const RTA_DST: u16 = 1;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_GATEWAY: u16 = 5;
    pub const RTA_PRIORITY: u16 = 6;
    pub const RT_TABLE_MAIN: u8 = 254;
    pub const RT_SCOPE_UNIVERSE: u8 = 0;
    pub const RT_SCOPE_LINK: u8 = 253;
    pub const RT_SCOPE_NOWHERE: u8 = 255;
    pub const RTN_UNICAST: u8 = 1;
    pub const RTN_UNREACHABLE: u8 = 7;
    pub const RTNH_F_ONLINK: u32 = 0x4;

    pub const NDA_DST: u16 = 1;
    pub const NDA_LLADDR: u16 = 2;
    pub const NUD_PERMANENT: u16 = 0x80;
    pub const NTF_SELF: u8 = 0x2;
}

const HEADER: usize = 16;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One request: the netlink header, the family's fixed header, then attributes (nested ones
/// through [`Message::nest`]). Lengths are filled in by [`Message::finish`].
#[derive(Debug)]
pub(super) struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    pub(super) fn new(kind: u16, flags: u16, fixed: &[u8]) -> Message {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, at the end
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, when sent
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        buf.extend_from_slice(fixed);
        buf.resize(align(buf.len()), 0);
        Message { buf, nests: Vec::new() }
    }

    pub(super) fn attr(mut self, kind: u16, value: &[u8]) -> Message {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    fn attr_str(self, kind: u16, value: &str) -> Message {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v)
    }

    fn attr_u32(self, kind: u16, value: u32) -> Message {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// Raw bytes inside the current attribute (a nested fixed header, as a veth peer's).
    fn raw(mut self, bytes: &[u8]) -> Message {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub(super) fn nest(mut self, kind: u16) -> Message {
        self.nests.push(self.buf.len());
        self.attr(kind, &[])
    }

    pub(super) fn end(mut self) -> Message {
        let start = self.nests.pop().expect("end() after nest()");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub(super) fn finish(mut self, seq: u32) -> Vec<u8> {
        assert!(self.nests.is_empty(), "a nest was not ended");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg`: family, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `struct rtmsg` for an IPv4 unicast route in the main table.
fn rtmsg(dst_len: u8, protocol: u8, scope: u8, flags: u32) -> [u8; 12] {
    typed_rtmsg(dst_len, protocol, scope, flags, sys::RTN_UNICAST)
}

/// `struct rtmsg` for an IPv4 route of `kind` (`RTN_*`) in the main table.
fn typed_rtmsg(dst_len: u8, protocol: u8, scope: u8, flags: u32, kind: u8) -> [u8; 12] {
    let mut b = [sys::AF_INET, dst_len, 0, 0, sys::RT_TABLE_MAIN, protocol, scope, kind, 0, 0, 0, 0];
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// `struct ifaddrmsg`: family, prefix length, flags, scope, index.
fn ifaddrmsg(prefix: u8, index: u32) -> [u8; 8] {
    let mut b = [sys::AF_INET, prefix, 0, sys::RT_SCOPE_UNIVERSE, 0, 0, 0, 0];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// `struct ndmsg`.
fn ndmsg(family: u8, index: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = family;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    b[10] = flags;
    b
}

/// The attributes in `bytes`, as (type, value); stops at the first malformed one.
pub(super) fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff; // without NLA_F_NESTED/BYTEORDER
        if len < 4 || len > bytes.len() {
            return None;
        }
        let value = &bytes[4..len];
        bytes = &bytes[align(len).min(bytes.len())..];
        Some((kind, value))
    })
}

/// What the kernel refused: its errno and, with extended acks, its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) errno: i32,
    message: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, "; the kernel says: {m}")?;
        }
        Ok(())
    }
}

/// Reads an `NLMSG_ERROR` body (after the netlink header): `Ok(())` for an ack.
/// One datagram of the kernel's answers to request `seq`: the messages for it are added to
/// `answers`; `Some` once the answer is complete (an error message, an ack, or a dump's end),
/// `None` when more datagrams follow. Answers to other requests are skipped; a malformed length
/// is an error, never a read past the end.
fn read_answers(datagram: &[u8], seq: u32, answers: &mut Vec<Answer>) -> Result<Option<Result<(), Refusal>>, String> {
    let mut rest = datagram;
    while rest.len() >= HEADER {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let flags = u16::from_ne_bytes([rest[6], rest[7]]);
        let their_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < HEADER || len > rest.len() {
            return Err(format!("a malformed answer (length {len} of {} bytes)", rest.len()));
        }
        let body = &rest[HEADER..len];
        rest = &rest[align(len).min(rest.len())..];
        if their_seq != seq {
            continue; // an answer to an earlier request that gave up (timeout)
        }
        match kind {
            sys::NLMSG_ERROR => return Ok(Some(parse_error(flags, body))),
            sys::NLMSG_DONE => {
                // A dump's end: its body is an error code (0, or why it stopped).
                if body.len() >= 4 {
                    let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    if code < 0 {
                        return Ok(Some(Err(Refusal { errno: code.saturating_neg(), message: None })));
                    }
                }
                return Ok(Some(Ok(())));
            }
            _ => answers.push((kind, body.to_vec())),
        }
    }
    Ok(None)
}

/// For fuzzing (agent/fuzz) and the property test below: `data` as the kernel's answer to
/// request 1, through everything that reads answers. Never panics, whatever the bytes.
pub fn read_untrusted(data: &[u8]) -> usize {
    let mut answers = Vec::new();
    let end = read_answers(data, 1, &mut answers);
    let mut seen = answers.len();
    if let Ok(Some(Err(r))) = end {
        seen += r.to_string().len();
    }
    for (kind, body) in &answers {
        seen += usize::from(Link::parse(*kind, body).is_some())
            + usize::from(ours(*kind, body).is_some())
            + usize::from(super::conntrack::parse_flow(body).is_some());
    }
    seen
}

fn parse_error(flags: u16, body: &[u8]) -> Result<(), Refusal> {
    let Some(code) = body.get(0..4) else {
        return Err(Refusal { errno: libc::EPROTO, message: Some("a truncated error from the kernel".into()) });
    };
    let errno = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]).saturating_neg();
    if errno == 0 {
        return Ok(());
    }
    let mut message = None;
    if flags & sys::NLM_F_ACK_TLVS != 0 {
        // After the error code: the request's header, and its body unless capped.
        let request_len =
            body.get(4..8).map(|l| u32::from_ne_bytes([l[0], l[1], l[2], l[3]]) as usize).unwrap_or(HEADER);
        let skip = 4 + if flags & sys::NLM_F_CAPPED != 0 { HEADER } else { align(request_len) };
        if let Some(tlvs) = body.get(skip..) {
            message = attributes(tlvs).find(|(k, _)| *k == sys::NLMSGERR_ATTR_MSG).map(|(_, v)| {
                String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).trim().to_string()
            });
        }
    }
    Err(Refusal { errno, message })
}

/// A link as `RTM_GETLINK` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: Option<u32>,
    /// The index of the bridge it is attached to.
    pub master: Option<u32>,
}

impl Link {
    fn parse(kind: u16, body: &[u8]) -> Option<Link> {
        if kind != sys::RTM_NEWLINK || body.len() < 16 {
            return None;
        }
        let word = |at: usize| u32::from_ne_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let u32_attr = |kind: u16| {
            attributes(&body[16..]).find_map(|(k, v)| match v {
                [a, b, c, d] if k == kind => Some(u32::from_ne_bytes([*a, *b, *c, *d])),
                _ => None,
            })
        };
        let name = attributes(&body[16..])
            .find(|(k, _)| *k == sys::IFLA_IFNAME)
            .map(|(_, v)| String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned())
            .unwrap_or_default();
        Some(Link {
            index: word(4),
            name,
            up: word(8) & sys::IFF_UP != 0,
            mtu: u32_attr(sys::IFLA_MTU),
            master: u32_attr(sys::IFLA_MASTER),
        })
    }
}

/// One message of an answer: its type and body.
pub(super) type Answer = (u16, Vec<u8>);

pub struct Netlink {
    fd: OwnedFd,
    seq: AtomicU32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("fd", &self.fd.as_raw_fd()).finish()
    }
}

/// An error that says what was being done.
fn refused(what: impl Into<String>, r: &Refusal) -> NetError {
    NetError::Netlink { what: what.into(), message: r.to_string() }
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |error| NetError::Io { what: what.into(), error }
}

impl Netlink {
    /// A connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetError> {
        Netlink::open_protocol(libc::NETLINK_ROUTE)
    }

    /// A `NETLINK_ROUTE` or `NETLINK_NETFILTER` (conntrack) connection in the calling thread's
    /// network namespace.
    pub(super) fn open_protocol(protocol: libc::c_int) -> Result<Netlink, NetError> {
        // SAFETY: plain syscalls; the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io("open a netlink socket")(std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket() and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for option in [sys::NETLINK_EXT_ACK, sys::NETLINK_CAP_ACK] {
            let on: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option value. Older kernels refuse these; the
            // errors are then plain errnos, which is fine.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    option,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        // The kernel answers at once; a receive that waits this long means something is wrong,
        // and the reconciler must not hang on it.
        let timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
        // SAFETY: a valid socket and a timeval.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io("set the netlink socket's timeout")(std::io::Error::last_os_error()));
        }
        // SAFETY: sockaddr_nl is plain data; zero is a valid value (port chosen by the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: a valid socket and address of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io("bind a netlink socket")(std::io::Error::last_os_error()));
        }
        Ok(Netlink { fd, seq: AtomicU32::new(1) })
    }

    /// Sends `msg` and reads the answer: the messages of a reply until the kernel's ack, or of a
    /// dump until its end. A refusal is the kernel's errno and message.
    pub(super) fn call(&self, msg: Message, what: &str) -> Result<Result<Vec<Answer>, Refusal>, NetError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let bytes = msg.finish(seq);
        // SAFETY: sockaddr_nl zeroed = the kernel (port 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: a valid socket, buffer and address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io(what)(std::io::Error::last_os_error()));
        }
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: a valid socket and buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io(what)(e));
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(NetError::Netlink {
                    what: what.into(),
                    message: format!("an answer of {n} bytes did not fit the {} byte buffer", buf.len()),
                });
            }
            match read_answers(&buf[..n], seq, &mut answers) {
                Ok(Some(end)) => return Ok(end.map(|()| answers)),
                Ok(None) => {}
                Err(message) => return Err(NetError::Netlink { what: what.into(), message }),
            }
        }
    }

    /// A request that must be acknowledged; `Err` carries the refusal for the caller to judge.
    fn ack(&self, msg: Message, what: &str) -> Result<Result<(), Refusal>, NetError> {
        Ok(self.call(msg, what)?.map(|_| ()))
    }

    /// Like [`Netlink::ack`], a refusal being an error that says `what`.
    fn must(&self, msg: Message, what: &str) -> Result<(), NetError> {
        self.ack(msg, what)?.map_err(|r| refused(what, &r))
    }

    /// The index of link `name`, if it exists.
    pub fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    /// Link `name` as the kernel reports it, if it exists.
    pub fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        let what = format!("look up link {name}");
        let msg = Message::new(sys::RTM_GETLINK, sys::NLM_F_REQUEST | sys::NLM_F_ACK, &ifinfomsg(0, 0, 0))
            .attr_str(sys::IFLA_IFNAME, name);
        match self.call(msg, &what)? {
            Ok(answers) => match answers.iter().find_map(|(k, b)| Link::parse(*k, b)) {
                Some(link) => Ok(Some(link)),
                None => Err(NetError::Netlink { what, message: "the kernel answered without the link".into() }),
            },
            Err(r) if r.errno == libc::ENODEV => Ok(None),
            Err(r) => Err(refused(what, &r)),
        }
    }

    fn require(&self, name: &str) -> Result<u32, NetError> {
        self.index(name)?.ok_or_else(|| NetError::Missing(format!("link {name} does not exist")))
    }

    /// Creates a link of `kind`; `EEXIST` is not an error (someone made it first).
    fn create(&self, msg: Message, what: &str) -> Result<(), NetError> {
        match self.ack(msg, what)? {
            Err(r) if r.errno != libc::EEXIST => Err(refused(what, &r)),
            _ => Ok(()),
        }
    }

    fn new_link(name: &str, mtu: u32, kind: &str) -> Message {
        let flags = sys::NLM_F_REQUEST | sys::NLM_F_ACK | sys::NLM_F_CREATE | sys::NLM_F_EXCL;
        Message::new(sys::RTM_NEWLINK, flags, &ifinfomsg(0, 0, 0))
            .attr_str(sys::IFLA_IFNAME, name)
            .attr_u32(sys::IFLA_MTU, mtu)
            .nest(sys::IFLA_LINKINFO)
            .attr_str(sys::IFLA_INFO_KIND, kind)
    }

    /// A bridge `name` with `address/prefix`, up; made if missing. Idempotent.
    pub fn ensure_bridge(&self, name: &str, address: Ipv4Addr, prefix: u8, mtu: u32) -> Result<u32, NetError> {
        if self.index(name)?.is_none() {
            self.create(Self::new_link(name, mtu, "bridge").end(), &format!("create bridge {name}"))?;
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
        if self.index(name)?.is_none() {
            let msg = Self::new_link(name, mtu, "vxlan")
                .nest(sys::IFLA_INFO_DATA)
                .attr_u32(sys::IFLA_VXLAN_ID, vni)
                .attr(sys::IFLA_VXLAN_PORT, &port.to_be_bytes())
                .attr(sys::IFLA_VXLAN_LEARNING, &[0])
                .end()
                .end()
                .attr(sys::IFLA_ADDRESS, &mac);
            self.create(msg, &format!("create vxlan device {name} (is the vxlan module available?)"))?;
        }
        let index = self.require(name)?;
        self.add_address(index, address, 32)?;
        self.up(index, name)?;
        Ok(index)
    }

    fn set_link(index: u32, flags: u32, change: u32) -> Message {
        Message::new(sys::RTM_SETLINK, sys::NLM_F_REQUEST | sys::NLM_F_ACK, &ifinfomsg(index, flags, change))
    }

    pub fn up(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.must(Self::set_link(index, sys::IFF_UP, sys::IFF_UP), &format!("bring {name} up"))
    }

    /// Adds `address/prefix` to link `index` (nothing if it is there).
    pub fn add_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let flags = sys::NLM_F_REQUEST | sys::NLM_F_ACK | sys::NLM_F_CREATE | sys::NLM_F_REPLACE;
        let mut msg = Message::new(sys::RTM_NEWADDR, flags, &ifaddrmsg(prefix, index))
            .attr(sys::IFA_LOCAL, &address.octets())
            .attr(sys::IFA_ADDRESS, &address.octets());
        if prefix < 31 {
            let broadcast = Ipv4Addr::from(u32::from(address) | (u32::MAX >> prefix));
            msg = msg.attr(sys::IFA_BROADCAST, &broadcast.octets());
        }
        self.must(msg, &format!("add address {address}/{prefix}"))
    }

    /// The IPv4 addresses on link `index`, with their prefix lengths.
    pub fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        let msg = Message::new(sys::RTM_GETADDR, sys::NLM_F_REQUEST | sys::NLM_F_DUMP, &ifaddrmsg(0, 0));
        let answers = self.call(msg, "list addresses")?.map_err(|r| refused("list addresses", &r))?;
        Ok(answers.iter().filter_map(|(kind, body)| address_of(*kind, body, index)).collect())
    }

    /// Removes `address/prefix` from link `index` (nothing if it is not there).
    pub fn delete_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let what = format!("remove address {address}/{prefix}");
        let msg = Message::new(sys::RTM_DELADDR, sys::NLM_F_REQUEST | sys::NLM_F_ACK, &ifaddrmsg(prefix, index))
            .attr(sys::IFA_LOCAL, &address.octets());
        match self.ack(msg, &what)? {
            Err(r) if r.errno != libc::EADDRNOTAVAIL => Err(refused(what, &r)),
            _ => Ok(()),
        }
    }

    /// Every link of the namespace.
    pub fn links(&self) -> Result<Vec<Link>, NetError> {
        let msg = Message::new(sys::RTM_GETLINK, sys::NLM_F_REQUEST | sys::NLM_F_DUMP, &ifinfomsg(0, 0, 0));
        let answers = self.call(msg, "list links")?.map_err(|r| refused("list links", &r))?;
        Ok(answers.iter().filter_map(|(kind, body)| Link::parse(*kind, body)).collect())
    }

    /// Takes link `index` off the bridge it is attached to.
    pub fn detach(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.must(Self::set_link(index, 0, 0).attr_u32(sys::IFLA_MASTER, 0), &format!("detach {name} from the bridge"))
    }

    /// A veth pair `host` ↔ `peer` with `mtu`, the host end attached to `bridge` and up. The
    /// peer is made straight in the network namespace open as `peer_ns` when given: moving a link
    /// between namespaces waits for an RCU grace period under the kernel's rtnl lock (about 20 ms
    /// a pod on the development VM, one pod at a time), making it there costs under a millisecond.
    pub fn veth(
        &self,
        host: &str,
        peer: &str,
        bridge: u32,
        mtu: u32,
        peer_ns: Option<&std::fs::File>,
    ) -> Result<(), NetError> {
        let what = format!("create veth {host}");
        self.must(Self::veth_request(host, peer, mtu, peer_ns.map(|f| f.as_raw_fd() as u32)), &what)?;
        let index = self.require(host)?;
        let msg = Self::set_link(index, sys::IFF_UP, sys::IFF_UP).attr_u32(sys::IFLA_MASTER, bridge);
        self.must(msg, &format!("attach {host} to the bridge"))
    }

    fn veth_request(host: &str, peer: &str, mtu: u32, peer_ns: Option<u32>) -> Message {
        let mut msg = Self::new_link(host, mtu, "veth")
            .nest(sys::IFLA_INFO_DATA)
            .nest(sys::VETH_INFO_PEER)
            .raw(&ifinfomsg(0, 0, 0))
            .attr_str(sys::IFLA_IFNAME, peer)
            .attr_u32(sys::IFLA_MTU, mtu);
        if let Some(fd) = peer_ns {
            msg = msg.attr_u32(sys::IFLA_NET_NS_FD, fd);
        }
        msg.end().end().end()
    }

    /// Deletes link `name` if it exists.
    pub fn delete(&self, name: &str) -> Result<(), NetError> {
        let Some(index) = self.index(name)? else { return Ok(()) };
        let what = format!("delete link {name}");
        let msg = Message::new(sys::RTM_DELLINK, sys::NLM_F_REQUEST | sys::NLM_F_ACK, &ifinfomsg(index, 0, 0));
        match self.ack(msg, &what)? {
            Err(r) if r.errno != libc::ENODEV => Err(refused(what, &r)),
            _ => Ok(()),
        }
    }

    /// Adds or replaces the route to `dst`: via `gateway` (on-link through `dev` if given), or
    /// straight out of `dev`.
    pub fn route(&self, dst: Cidr, gateway: Option<Ipv4Addr>, dev: Option<u32>) -> Result<(), NetError> {
        let scope = if gateway.is_some() { sys::RT_SCOPE_UNIVERSE } else { sys::RT_SCOPE_LINK };
        let onlink = if gateway.is_some() && dev.is_some() { sys::RTNH_F_ONLINK } else { 0 };
        let flags = sys::NLM_F_REQUEST | sys::NLM_F_ACK | sys::NLM_F_CREATE | sys::NLM_F_REPLACE;
        let mut msg = Message::new(sys::RTM_NEWROUTE, flags, &rtmsg(dst.prefix(), ROUTE_PROTOCOL, scope, onlink));
        if dst.prefix() > 0 {
            msg = msg.attr(sys::RTA_DST, &dst.addr().octets());
        }
        if let Some(g) = gateway {
            msg = msg.attr(sys::RTA_GATEWAY, &g.octets());
        }
        if let Some(d) = dev {
            msg = msg.attr_u32(sys::RTA_OIF, d);
        }
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        self.must(msg, &format!("route {dst}{via}"))
    }

    /// An `unreachable` route to `dst` at `metric` (a high one: a fallback that more specific or
    /// better routes win over), so traffic to `dst` that nothing else routes is refused here
    /// instead of leaving by the default route.
    pub fn unreachable(&self, dst: Cidr, metric: u32) -> Result<(), NetError> {
        let flags = sys::NLM_F_REQUEST | sys::NLM_F_ACK | sys::NLM_F_CREATE | sys::NLM_F_REPLACE;
        let fixed = typed_rtmsg(dst.prefix(), ROUTE_PROTOCOL, sys::RT_SCOPE_UNIVERSE, 0, sys::RTN_UNREACHABLE);
        let mut msg = Message::new(sys::RTM_NEWROUTE, flags, &fixed).attr_u32(sys::RTA_PRIORITY, metric);
        if dst.prefix() > 0 {
            msg = msg.attr(sys::RTA_DST, &dst.addr().octets());
        }
        self.must(msg, &format!("unreachable route {dst}"))
    }

    /// The destinations of the `unreachable` routes Bramble added.
    pub fn our_unreachable(&self) -> Result<Vec<Cidr>, NetError> {
        Ok(self.route_dump()?.into_iter().filter(|(_, kind)| *kind == sys::RTN_UNREACHABLE).map(|(c, _)| c).collect())
    }

    /// Removes Bramble's `unreachable` route to `dst`, if it is there.
    pub fn delete_unreachable(&self, dst: Cidr) -> Result<(), NetError> {
        let what = format!("delete unreachable route {dst}");
        let fixed = typed_rtmsg(dst.prefix(), ROUTE_PROTOCOL, sys::RT_SCOPE_NOWHERE, 0, sys::RTN_UNREACHABLE);
        let mut msg = Message::new(sys::RTM_DELROUTE, sys::NLM_F_REQUEST | sys::NLM_F_ACK, &fixed);
        if dst.prefix() > 0 {
            msg = msg.attr(sys::RTA_DST, &dst.addr().octets());
        }
        match self.ack(msg, &what)? {
            Err(r) if r.errno != libc::ESRCH => Err(refused(what, &r)),
            _ => Ok(()),
        }
    }

    /// Bramble's routes of the main table: destination and type.
    fn route_dump(&self) -> Result<Vec<(Cidr, u8)>, NetError> {
        let msg = Message::new(
            sys::RTM_GETROUTE,
            sys::NLM_F_REQUEST | sys::NLM_F_DUMP,
            &rtmsg(0, 0, sys::RT_SCOPE_UNIVERSE, 0),
        );
        let answers = self.call(msg, "list routes")?.map_err(|r| refused("list routes", &r))?;
        Ok(answers.iter().filter_map(|(kind, body)| ours(*kind, body).map(|c| (c, body[7]))).collect())
    }

    /// The destinations of the (unicast) routes Bramble added.
    pub fn our_routes(&self) -> Result<Vec<Cidr>, NetError> {
        Ok(self.route_dump()?.into_iter().filter(|(_, kind)| *kind == sys::RTN_UNICAST).map(|(c, _)| c).collect())
    }

    /// Removes the route to `dst` that Bramble added, if it is there.
    pub fn delete_route(&self, dst: Cidr) -> Result<(), NetError> {
        let what = format!("delete route {dst}");
        let mut msg = Message::new(
            sys::RTM_DELROUTE,
            sys::NLM_F_REQUEST | sys::NLM_F_ACK,
            // Any scope: a route straight out of a link has scope link, one via a gateway
            // universe (RT_SCOPE_UNIVERSE here would match only the latter).
            &rtmsg(dst.prefix(), ROUTE_PROTOCOL, sys::RT_SCOPE_NOWHERE, 0),
        );
        if dst.prefix() > 0 {
            msg = msg.attr(sys::RTA_DST, &dst.addr().octets());
        }
        match self.ack(msg, &what)? {
            Err(r) if r.errno != libc::ESRCH => Err(refused(what, &r)),
            _ => Ok(()),
        }
    }

    /// A permanent neighbour entry `ip` → `mac` on link `index`.
    pub fn neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError> {
        let flags = sys::NLM_F_REQUEST | sys::NLM_F_ACK | sys::NLM_F_CREATE | sys::NLM_F_REPLACE;
        let msg = Message::new(sys::RTM_NEWNEIGH, flags, &ndmsg(sys::AF_INET, index, sys::NUD_PERMANENT, 0))
            .attr(sys::NDA_DST, &ip.octets())
            .attr(sys::NDA_LLADDR, &mac);
        self.must(msg, &format!("neighbour {ip}"))
    }

    /// Forgets what link `index` learned of `ip`'s hardware address: a pod that gets an address
    /// another pod had must not be sent frames meant for the old one's MAC.
    pub fn forget_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError> {
        let what = format!("forget neighbour {ip}");
        let msg =
            Message::new(sys::RTM_DELNEIGH, sys::NLM_F_REQUEST | sys::NLM_F_ACK, &ndmsg(sys::AF_INET, index, 0, 0))
                .attr(sys::NDA_DST, &ip.octets());
        match self.ack(msg, &what)? {
            Err(r) if r.errno != libc::ENOENT => Err(refused(what, &r)),
            _ => Ok(()),
        }
    }

    /// A forwarding entry on vxlan device `index`: frames for `mac` go to `dst`.
    pub fn fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError> {
        let flags = sys::NLM_F_REQUEST | sys::NLM_F_ACK | sys::NLM_F_CREATE | sys::NLM_F_REPLACE;
        let msg =
            Message::new(sys::RTM_NEWNEIGH, flags, &ndmsg(sys::AF_BRIDGE, index, sys::NUD_PERMANENT, sys::NTF_SELF))
                .attr(sys::NDA_LLADDR, &mac)
                .attr(sys::NDA_DST, &dst.octets());
        self.must(msg, &format!("forwarding entry to {dst}"))
    }
}

/// An address of link `index` in a dump.
fn address_of(kind: u16, body: &[u8], index: u32) -> Option<(Ipv4Addr, u8)> {
    if kind != sys::RTM_NEWADDR || body.len() < 8 || body[0] != sys::AF_INET {
        return None;
    }
    if u32::from_ne_bytes([body[4], body[5], body[6], body[7]]) != index {
        return None;
    }
    let find = |want: u16| {
        attributes(&body[8..]).find_map(|(k, v)| match v {
            [a, b, c, d] if k == want => Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => None,
        })
    };
    Some((find(sys::IFA_LOCAL).or_else(|| find(sys::IFA_ADDRESS))?, body[1]))
}

/// A route of a dump, if it is one of Bramble's (IPv4, our protocol, with a destination).
fn ours(kind: u16, body: &[u8]) -> Option<Cidr> {
    if kind != sys::RTM_NEWROUTE || body.len() < 12 || body[0] != sys::AF_INET || body[5] != ROUTE_PROTOCOL {
        return None;
    }
    let dst = attributes(&body[12..]).find_map(|(k, v)| match (k, v) {
        (sys::RTA_DST, [a, b, c, d]) => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    })?;
    Cidr::new(dst, body[1]).ok()
}

/// Writes a sysctl of the calling thread's network namespace (`net/ipv4/ip_forward`).
pub fn sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let file = format!("/proc/sys/{path}");
    std::fs::write(&file, value).map_err(|e| NetError::Io { what: format!("set {path} = {value}"), error: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word16(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    /// The attributes of a veth request's peer (linkinfo → info data → peer, after its ifinfomsg).
    fn peer_attributes(request: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let nested = |bytes: &[u8], kind: u16| -> Vec<u8> {
            attributes(bytes).find(|(k, _)| *k == kind).map(|(_, v)| v.to_vec()).expect("the nest")
        };
        let info = nested(&request[HEADER + 16..], sys::IFLA_LINKINFO);
        let peer = nested(&nested(&info, sys::IFLA_INFO_DATA), sys::VETH_INFO_PEER);
        attributes(&peer[16..]).map(|(k, v)| (k, v.to_vec())).collect()
    }

    #[test]
    fn a_veth_request_nests_its_peer_with_every_length_right() {
        let bytes = Netlink::veth_request("bv-host", "eth0", 1400, Some(9)).finish(7);
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize, bytes.len());
        assert_eq!(word16(&bytes, 4), sys::RTM_NEWLINK);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7, "the sequence number");
        let top: Vec<_> = attributes(&bytes[HEADER + 16..]).collect();
        assert_eq!(
            top.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [sys::IFLA_IFNAME, sys::IFLA_MTU, sys::IFLA_LINKINFO]
        );
        assert_eq!(top[0].1, b"bv-host\0");
        assert_eq!(top[1].1, 1400u32.to_ne_bytes());
        let info: Vec<_> = attributes(top[2].1).collect();
        assert_eq!(info[0], (sys::IFLA_INFO_KIND, &b"veth\0"[..]));
        let data: Vec<_> = attributes(info[1].1).collect();
        assert_eq!(data.len(), 1);
        let (kind, peer) = data[0];
        assert_eq!(kind, sys::VETH_INFO_PEER);
        assert_eq!(&peer[..16], &[0u8; 16], "the peer's ifinfomsg");
        let peer_attrs: Vec<_> = attributes(&peer[16..]).collect();
        // Named, sized and made in the pod's namespace (the fd) in the same request.
        assert_eq!(
            peer_attrs,
            [
                (sys::IFLA_IFNAME, &b"eth0\0"[..]),
                (sys::IFLA_MTU, &1400u32.to_ne_bytes()[..]),
                (sys::IFLA_NET_NS_FD, &9u32.to_ne_bytes()[..])
            ]
        );
        let here = peer_attributes(&Netlink::veth_request("check-a", "check-b", 1500, None).finish(1));
        let kinds: Vec<u16> = here.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [sys::IFLA_IFNAME, sys::IFLA_MTU], "no namespace: the peer stays here");
        // The nests end exactly where the message ends.
        let linkinfo_at = HEADER + 16 + 12 + 8;
        assert_eq!(linkinfo_at + word16(&bytes, linkinfo_at) as usize, bytes.len());
    }

    #[test]
    fn a_refusal_carries_the_errno_and_the_kernels_own_words() {
        // nlmsgerr: error, the request's header (capped), then NLMSGERR_ATTR_MSG.
        let mut body = (-libc::EOPNOTSUPP).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0u8; HEADER]);
        let text = b"Unknown device type\0";
        body.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&sys::NLMSGERR_ATTR_MSG.to_ne_bytes());
        body.extend_from_slice(text);
        let r = parse_error(sys::NLM_F_CAPPED | sys::NLM_F_ACK_TLVS, &body).unwrap_err();
        assert_eq!(r.errno, libc::EOPNOTSUPP);
        assert_eq!(r.message.as_deref(), Some("Unknown device type"));
        let shown = refused("create bridge br0", &r).to_string();
        assert!(shown.starts_with("create bridge br0: "), "{shown}");
        assert!(shown.ends_with("; the kernel says: Unknown device type"), "{shown}");
        assert_eq!(parse_error(0, &0i32.to_ne_bytes()), Ok(()), "an ack");
        assert_eq!(parse_error(0, &[1, 2]).unwrap_err().errno, libc::EPROTO, "too short to be an error");
        // Without a cap, the whole request comes back before the attributes.
        let mut body = (-libc::EEXIST).to_ne_bytes().to_vec();
        let mut request = 24u32.to_ne_bytes().to_vec();
        request.resize(24, 0xee);
        body.extend_from_slice(&request);
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&sys::NLMSGERR_ATTR_MSG.to_ne_bytes());
        body.extend_from_slice(b"dup\0");
        assert_eq!(parse_error(sys::NLM_F_ACK_TLVS, &body).unwrap_err().message.as_deref(), Some("dup"));
    }

    #[test]
    fn hostile_answers_never_panic() {
        // A dump's end carrying i32::MIN: negating it overflowed.
        let mut done = vec![0u8; HEADER + 4];
        done[..4].copy_from_slice(&((HEADER + 4) as u32).to_ne_bytes());
        done[4..6].copy_from_slice(&sys::NLMSG_DONE.to_ne_bytes());
        done[8..12].copy_from_slice(&1u32.to_ne_bytes());
        done[HEADER..].copy_from_slice(&i32::MIN.to_ne_bytes());
        read_untrusted(&done);
        // So does an error message's code (found by agent/fuzz).
        let mut error = done.clone();
        error[4..6].copy_from_slice(&sys::NLMSG_ERROR.to_ne_bytes());
        read_untrusted(&error);
        // Random bytes, and random messages with plausible headers for request 1.
        let mut rng = fastrand::Rng::with_seed(27);
        for _ in 0..20_000 {
            let mut data: Vec<u8> = (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect();
            if rng.bool() && data.len() >= HEADER {
                let len = rng.usize(HEADER..=data.len()) as u32;
                data[..4].copy_from_slice(&len.to_ne_bytes());
                let kinds = [sys::NLMSG_ERROR, sys::NLMSG_DONE, sys::RTM_NEWLINK, sys::RTM_NEWROUTE];
                data[4..6].copy_from_slice(&kinds[rng.usize(..kinds.len())].to_ne_bytes());
                data[8..12].copy_from_slice(&1u32.to_ne_bytes());
            }
            read_untrusted(&data);
        }
    }

    #[test]
    fn malformed_attributes_end_the_walk_instead_of_reading_past_the_end() {
        assert_eq!(attributes(&[]).count(), 0);
        assert_eq!(attributes(&[8, 0, 1, 0, 1, 2]).count(), 0, "longer than what is there");
        assert_eq!(attributes(&[2, 0, 1, 0, 5, 0, 0, 0]).count(), 0, "shorter than its own header");
        let two = [5, 0, 1, 0, 9, 0, 0, 0, 4, 0, 2, 0];
        assert_eq!(attributes(&two).collect::<Vec<_>>(), [(1, &[9u8][..]), (2, &[][..])]);
        assert_eq!(Link::parse(sys::RTM_NEWLINK, &[0; 15]), None);
    }

    #[test]
    fn only_bramble_routes_are_its_own() {
        let route = |protocol: u8, dst: Option<[u8; 4]>| {
            let mut b = rtmsg(24, protocol, sys::RT_SCOPE_LINK, 0).to_vec();
            if let Some(d) = dst {
                b.extend_from_slice(&8u16.to_ne_bytes());
                b.extend_from_slice(&sys::RTA_DST.to_ne_bytes());
                b.extend_from_slice(&d);
            }
            b
        };
        let ours_one = ours(sys::RTM_NEWROUTE, &route(ROUTE_PROTOCOL, Some([10, 42, 1, 0])));
        assert_eq!(ours_one, Some(Cidr::new(Ipv4Addr::new(10, 42, 1, 0), 24).unwrap()));
        assert_eq!(ours(sys::RTM_NEWROUTE, &route(4, Some([10, 42, 1, 0]))), None, "someone else's");
        assert_eq!(ours(sys::RTM_NEWROUTE, &route(ROUTE_PROTOCOL, None)), None, "no destination");
        assert_eq!(ours(sys::RTM_NEWLINK, &route(ROUTE_PROTOCOL, Some([10, 42, 1, 0]))), None);
    }

    /// `/proc/thread-self/net/<file>`: the calling thread's namespace as the kernel lists it,
    /// read without netlink.
    fn proc_net(file: &str) -> String {
        std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap()
    }

    /// The routes of `/proc/net/route` as (destination, gateway, mask) in dotted form.
    fn proc_routes() -> Vec<(Ipv4Addr, Ipv4Addr, Ipv4Addr)> {
        let hex = |s: &str| Ipv4Addr::from(u32::from_be(u32::from_str_radix(s, 16).unwrap()));
        proc_net("route")
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                (hex(f[1]), hex(f[2]), hex(f[7]))
            })
            .collect()
    }

    #[test]
    fn links_addresses_routes_and_neighbours_are_made_for_real_in_a_namespace_of_their_own() {
        let pod_ns = std::env::temp_dir().join(format!("bramble-link-test-{}", std::process::id()));
        let pod = pod_ns.clone();
        let result = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("this test needs root and network namespaces (unshare CLONE_NEWNET)");
            let nl = Netlink::open().unwrap();
            assert_eq!(nl.index("lo").unwrap(), Some(1));
            assert_eq!(nl.index("nothing0").unwrap(), None);

            let gateway = Ipv4Addr::new(10, 98, 0, 1);
            let br = nl.ensure_bridge("tbr0", gateway, 24, 1400).unwrap();
            assert_eq!(nl.ensure_bridge("tbr0", gateway, 24, 1400).unwrap(), br, "idempotent");
            let bridge = nl.link("tbr0").unwrap().unwrap();
            assert_eq!((bridge.up, bridge.mtu), (true, Some(1400)));
            assert!(proc_routes().contains(&(
                Ipv4Addr::new(10, 98, 0, 0),
                Ipv4Addr::UNSPECIFIED,
                [255, 255, 255, 0].into()
            )));

            // Both ends here (what the doctor tries).
            nl.veth("tv-both", "tv-peer", br, 1400, None).unwrap();
            let host = nl.link("tv-both").unwrap().unwrap();
            assert_eq!((host.up, host.master, host.mtu), (true, Some(br), Some(1400)));
            assert_eq!(nl.link("tv-peer").unwrap().and_then(|l| l.mtu), Some(1400));
            let again = nl.veth("tv-both", "tv-peer", br, 1400, None).unwrap_err().to_string();
            assert!(again.starts_with("create veth tv-both: File exists"), "{again}");
            nl.delete("tv-both").unwrap();
            assert_eq!(nl.index("tv-peer").unwrap(), None, "a veth pair goes as one");

            // A pod's: its end made in its namespace as eth0, configured from inside.
            crate::net::netns::create(&pod).unwrap();
            let file = std::fs::File::open(&pod).unwrap();
            nl.veth("tv-host", "eth0", br, 1400, Some(&file)).unwrap();
            let host = nl.link("tv-host").unwrap().unwrap();
            assert_eq!((host.up, host.master, host.mtu), (true, Some(br), Some(1400)));
            assert_eq!(nl.index("eth0").unwrap(), None, "the pod's end is not here");
            let ip = Ipv4Addr::new(10, 98, 0, 7);
            let inside = crate::net::netns::inside(&pod, move || {
                let nl = Netlink::open()?;
                let eth0 = nl.link("eth0")?.expect("eth0 in the pod");
                assert_eq!(eth0.mtu, Some(1400));
                nl.up(eth0.index, "eth0")?;
                nl.add_address(eth0.index, ip, 32)?;
                nl.add_address(eth0.index, ip, 32)?; // again: replaced, not an error
                nl.route(Cidr::new(gateway, 32).unwrap(), None, Some(eth0.index))?;
                nl.route(Cidr::new(Ipv4Addr::UNSPECIFIED, 0).unwrap(), Some(gateway), Some(eth0.index))?;
                Ok((nl.link("eth0")?.map(|l| l.up), proc_routes()))
            })
            .unwrap();
            assert_eq!(inside.0, Some(true));
            assert!(inside.1.contains(&(Ipv4Addr::UNSPECIFIED, gateway, Ipv4Addr::UNSPECIFIED)), "{:?}", inside.1);
            assert!(inside.1.contains(&(gateway, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)), "{:?}", inside.1);

            // Routes: Bramble's are found again and removed; the kernel's own are not touched.
            let far = Cidr::new(Ipv4Addr::new(10, 97, 0, 0), 24).unwrap();
            let via = Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 24).unwrap();
            nl.route(far, None, Some(br)).unwrap();
            nl.route(via, Some(Ipv4Addr::new(10, 98, 0, 5)), Some(br)).unwrap();
            nl.route(via, Some(Ipv4Addr::new(10, 98, 0, 6)), Some(br)).unwrap(); // replaced
            let mut ours = nl.our_routes().unwrap();
            ours.sort_by_key(|c| c.to_string());
            assert_eq!(ours, [via, far]);
            assert!(proc_routes().contains(&(
                Ipv4Addr::new(10, 96, 0, 0),
                Ipv4Addr::new(10, 98, 0, 6),
                [255, 255, 255, 0].into()
            )));
            nl.delete_route(far).unwrap();
            nl.delete_route(far).unwrap(); // already gone: fine
            assert_eq!(nl.our_routes().unwrap(), [via]);

            // Addresses: listed per link, a stray one removed (with the kernel's route for it).
            nl.add_address(br, Ipv4Addr::new(10, 95, 1, 1), 24).unwrap();
            let mut addrs = nl.addresses(br).unwrap();
            addrs.sort();
            assert_eq!(addrs, [(Ipv4Addr::new(10, 95, 1, 1), 24), (gateway, 24)]);
            assert!(!nl.addresses(1).unwrap().contains(&(gateway, 24)), "only the link asked about");
            nl.delete_address(br, Ipv4Addr::new(10, 95, 1, 1), 24).unwrap();
            nl.delete_address(br, Ipv4Addr::new(10, 95, 1, 1), 24).unwrap(); // already gone: fine
            assert_eq!(nl.addresses(br).unwrap(), [(gateway, 24)]);
            assert!(!proc_routes().iter().any(|r| r.0 == Ipv4Addr::new(10, 95, 1, 0)), "{:?}", proc_routes());

            // Unreachable fallbacks: ours, listed apart from unicast routes, removed by type.
            let range = Cidr::new(Ipv4Addr::new(10, 90, 0, 0), 16).unwrap();
            nl.unreachable(range, 4242).unwrap();
            nl.unreachable(range, 4242).unwrap(); // replaced
            assert_eq!(nl.our_unreachable().unwrap(), [range]);
            assert_eq!(nl.our_routes().unwrap(), [via], "unicast only");
            let text = String::from_utf8(
                std::process::Command::new("ip")
                    .args(["route", "show", "type", "unreachable"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            assert!(text.contains("unreachable 10.90.0.0/16") && text.contains("metric 4242"), "{text}");
            nl.delete_unreachable(range).unwrap();
            nl.delete_unreachable(range).unwrap(); // already gone: fine
            assert_eq!(nl.our_unreachable().unwrap(), []);

            // Links: every one listed with its name; one taken off the bridge.
            nl.veth("tv-loose", "tv-loose-p", br, 1400, None).unwrap();
            let all = nl.links().unwrap();
            let loose = all.iter().find(|l| l.name == "tv-loose").expect("listed by name");
            assert_eq!(loose.master, Some(br));
            assert!(all.iter().any(|l| l.name == "lo" && l.index == 1));
            nl.detach(loose.index, "tv-loose").unwrap();
            assert_eq!(nl.link("tv-loose").unwrap().unwrap().master, None);
            nl.delete("tv-loose").unwrap();

            // Neighbours: a permanent entry, then forgotten.
            let mac = [0x0a, 0x58, 0x0a, 0x62, 0x00, 0x09];
            nl.neighbour(br, Ipv4Addr::new(10, 98, 0, 9), mac).unwrap();
            assert!(proc_net("arp").contains("10.98.0.9 "), "{}", proc_net("arp"));
            assert!(proc_net("arp").contains("0a:58:0a:62:00:09"), "{}", proc_net("arp"));
            nl.forget_neighbour(br, Ipv4Addr::new(10, 98, 0, 9)).unwrap();
            assert!(!proc_net("arp").contains("10.98.0.9 "), "{}", proc_net("arp"));
            nl.forget_neighbour(br, Ipv4Addr::new(10, 98, 0, 9)).unwrap(); // not there: fine

            // A vxlan device and a forwarding entry on it (replaced when repeated).
            let vx = nl.ensure_vxlan("tvx0", 7, 8472, mac, Ipv4Addr::new(10, 98, 1, 0), 1350).unwrap();
            assert_eq!(nl.ensure_vxlan("tvx0", 7, 8472, mac, Ipv4Addr::new(10, 98, 1, 0), 1350).unwrap(), vx);
            assert_eq!(nl.link("tvx0").unwrap().and_then(|l| l.mtu), Some(1350));
            nl.fdb(vx, [0x0a, 0, 0, 0, 0, 2], Ipv4Addr::new(192, 0, 2, 2)).unwrap();
            nl.fdb(vx, [0x0a, 0, 0, 0, 0, 2], Ipv4Addr::new(192, 0, 2, 2)).unwrap();

            // Refusals say what was being done and why.
            let e = nl.up(999_999, "ghost").unwrap_err().to_string();
            assert!(e.starts_with("bring ghost up: No such device"), "{e}");
            let e = nl.create(Netlink::new_link("tx0", 1500, "no-such-kind").end(), "create tx0").unwrap_err();
            let e = e.to_string();
            assert!(e.starts_with("create tx0: Operation not supported"), "{e}");
            assert!(e.ends_with("; the kernel says: Unknown device type"), "{e}");

            nl.delete("tv-host").unwrap();
            assert_eq!(nl.index("tv-host").unwrap(), None);
            nl.delete("tv-host").unwrap(); // already gone: fine
        })
        .join();
        let _ = crate::net::netns::delete(&pod_ns);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
