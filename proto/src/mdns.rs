//! Finding a cluster's leaders on the LAN with multicast DNS (RFC 6762) and DNS-SD (RFC 6763):
//! a board with no leader configured asks `224.0.0.251:5353` for `_bramble._udp.local` PTR from
//! an ephemeral port (a "one-shot" query: responders answer it by unicast), and each leader
//! answers with a PTR to its instance, an SRV with its QUIC port and a TXT with the cluster CA's
//! fingerprint (`ca=<sha256 hex>`). The board takes the answer's source address and the SRV port;
//! the join token's CA pin (or the CA it already has) is checked by TLS as ever, so a rogue
//! answer costs a failed handshake, nothing more. Pure: building and reading messages only.

/// The service type leaders announce.
pub const SERVICE: &str = "_bramble._udp.local";
/// The mDNS group and port.
pub const GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(224, 0, 0, 251);
pub const PORT: u16 = 5353;

const TYPE_PTR: u16 = 12;
const TYPE_TXT: u16 = 16;
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
const TTL: u32 = 120;

/// What a leader's answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The QUIC port (SRV).
    pub port: u16,
    /// The cluster CA's fingerprint (TXT `ca=`).
    pub ca_fingerprint: String,
    /// The instance (`<name>._bramble._udp.local`).
    pub instance: String,
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

/// A one-shot query for [`SERVICE`] (id `id`).
pub fn query(id: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    put_name(&mut out, SERVICE);
    out.extend_from_slice(&TYPE_PTR.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

fn rr(out: &mut Vec<u8>, name: &str, kind: u16, rdata: &[u8]) {
    put_name(out, name);
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&TTL.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The leader's answer to `question` (a message it received), if it asks for [`SERVICE`]: the
/// PTR, SRV (`port`, target `<instance>.local`) and TXT (`ca=`, `v=1`), the question echoed and
/// its id kept (what a one-shot querier expects).
pub fn answer(question: &[u8], instance: &str, port: u16, ca_fingerprint: &str) -> Option<Vec<u8>> {
    let (id, flags, qd) = header(question)?;
    if flags & 0x8000 != 0 || qd == 0 {
        return None; // a response, or no question
    }
    let mut at = 12;
    let mut asked = false;
    for _ in 0..qd.min(16) {
        let (name, next) = read_name(question, at)?;
        let kind = u16::from_be_bytes(question.get(next..next + 2)?.try_into().ok()?);
        at = next + 4;
        if name.eq_ignore_ascii_case(SERVICE) && (kind == TYPE_PTR || kind == 255) {
            asked = true;
        }
    }
    if !asked {
        return None;
    }
    let label: String = instance.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(63).collect();
    let full = format!("{label}.{SERVICE}");
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x84, 0, 0, 1, 0, 3, 0, 0, 0, 0]); // response, authoritative; 1 question, 3 answers
    put_name(&mut out, SERVICE);
    out.extend_from_slice(&TYPE_PTR.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    let mut ptr = Vec::new();
    put_name(&mut ptr, &full);
    rr(&mut out, SERVICE, TYPE_PTR, &ptr);
    let mut srv = vec![0, 0, 0, 0];
    srv.extend_from_slice(&port.to_be_bytes());
    put_name(&mut srv, &format!("{label}.local"));
    rr(&mut out, &full, TYPE_SRV, &srv);
    let mut txt = Vec::new();
    for s in [format!("ca={ca_fingerprint}"), "v=1".to_string()] {
        let s = &s.as_bytes()[..s.len().min(255)];
        txt.push(s.len() as u8);
        txt.extend_from_slice(s);
    }
    rr(&mut out, &full, TYPE_TXT, &txt);
    Some(out)
}

fn header(msg: &[u8]) -> Option<(u16, u16, u16)> {
    let h = msg.get(..12)?;
    Some((u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]), u16::from_be_bytes([h[4], h[5]])))
}

/// A name at `at` (compression pointers followed, at most 16 of them); the offset after it where
/// it was written.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some((name, end.unwrap_or(at + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let target = ((len & 0x3f) << 8) | *msg.get(at + 1)? as usize;
            end.get_or_insert(at + 2);
            if target >= at {
                return None; // only backwards: no loops
            }
            at = target;
            continue;
        }
        if len > 63 {
            return None;
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label));
        if name.len() > 255 {
            return None;
        }
        at += 1 + len;
    }
    None
}

/// What an answer (from anyone on the LAN: untrusted) says of a leader, if it is one: an SRV and a
/// TXT `ca=` for the same instance of [`SERVICE`]. Anything malformed is nothing.
pub fn read_answer(msg: &[u8], id: u16) -> Option<Found> {
    let (got, flags, qd) = header(msg)?;
    if got != id || flags & 0x8000 == 0 {
        return None;
    }
    let counts = msg.get(6..12)?;
    let records: usize = (0..3).map(|i| u16::from_be_bytes([counts[2 * i], counts[2 * i + 1]]) as usize).sum();
    let mut at = 12;
    for _ in 0..qd.min(16) {
        at = read_name(msg, at)?.1 + 4;
    }
    let (mut port, mut ca, mut instance) = (None, None, None);
    for _ in 0..records.min(64) {
        let (name, next) = read_name(msg, at)?;
        let fixed = msg.get(next..next + 10)?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let rdata = msg.get(next + 10..next + 10 + len)?;
        at = next + 10 + len;
        let ours = name.to_ascii_lowercase().ends_with(&format!(".{SERVICE}"));
        match kind {
            TYPE_SRV if ours && rdata.len() >= 6 => {
                port = Some(u16::from_be_bytes([rdata[4], rdata[5]]));
                instance = Some(name);
            }
            TYPE_TXT if ours => {
                let mut i = 0;
                while i < rdata.len() {
                    let l = rdata[i] as usize;
                    let s = rdata.get(i + 1..i + 1 + l)?;
                    if let Some(v) = std::str::from_utf8(s).ok().and_then(|s| s.strip_prefix("ca=")) {
                        if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                            ca = Some(v.to_ascii_lowercase());
                        }
                    }
                    i += 1 + l;
                }
            }
            _ => {}
        }
    }
    Some(Found { port: port.filter(|p| *p != 0)?, ca_fingerprint: ca?, instance: instance? })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    #[test]
    fn a_query_is_answered_and_the_answer_read_back() {
        let q = query(0x4242);
        let a = answer(&q, "leader-a", 7443, CA).expect("asked for the service");
        let found = read_answer(&a, 0x4242).expect("a leader");
        assert_eq!(found, Found { port: 7443, ca_fingerprint: CA.into(), instance: format!("leader-a.{SERVICE}") });
        assert_eq!(read_answer(&a, 0x4243), None, "another query's id");
        assert_eq!(answer(&a, "x", 1, CA), None, "a response is not answered");
        let mut other = query(1);
        let at = other.len() - 4 - SERVICE.len() - 2 + 1;
        other[at] = b'X'; // _Xramble
        assert_eq!(answer(&other, "x", 1, CA), None, "another service is not ours to answer");
    }

    #[test]
    fn compressed_names_are_followed_and_loops_refused() {
        // A hand-made answer with a pointer back to the question's name.
        let mut m = vec![0, 7, 0x84, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        put_name(&mut m, SERVICE);
        m.extend_from_slice(&[0, 12, 0, 1]);
        // SRV for "x" + pointer to offset 12.
        m.extend_from_slice(&[1, b'x', 0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 120, 0, 8, 0, 0, 0, 0, 0x1d, 0x13, 0xc0, 12]);
        let mut txt = vec![];
        let s = format!("ca={CA}");
        txt.push(s.len() as u8);
        txt.extend_from_slice(s.as_bytes());
        m.extend_from_slice(&[1, b'x', 0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 120, 0, txt.len() as u8]);
        m.extend_from_slice(&txt);
        let found = read_answer(&m, 7).expect("read through pointers");
        assert_eq!((found.port, found.instance.as_str()), (7443, "x._bramble._udp.local"));
        // A pointer to itself.
        let mut looped = vec![0, 7, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12]);
        assert_eq!(read_answer(&looped, 7), None);
    }

    #[test]
    fn hostile_messages_never_panic() {
        let good = answer(&query(9), "l", 7443, CA).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut m = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % m.len();
                m[i] = (seed >> 32) as u8;
            }
            m.truncate((seed as usize >> 8) % (good.len() + 1));
            let _ = read_answer(&m, 9);
            let _ = answer(&m, "l", 1, CA);
        }
    }
}
