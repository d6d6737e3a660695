//! A reader between the layer stream and the tar parser that looks at each tar header as it
//! passes and refuses, before the parser allocates anything for it, a metadata entry (a GNU long
//! name or link, a PAX header) larger than a few KiB, GNU sparse files, and more entries than a
//! layer may hold. The tar crate reads a metadata entry's whole data into memory: a 0.5 MB gzip
//! layer holding a 512 MiB long name cost 2.6 GiB of RSS and quoted the name in its error.

use std::io::{self, Read};

/// The longest GNU long name or link accepted (Linux's PATH_MAX).
pub const MAX_LONG_NAME: u64 = 4096;
/// The largest PAX header accepted (paths, link targets, a few extended attributes).
pub const MAX_PAX: u64 = 64 << 10;
const BLOCK: usize = 512;

#[derive(Debug)]
enum State {
    /// Reading a header: the bytes so far.
    Header(Box<[u8; BLOCK]>, usize),
    /// Passing an entry's data and padding: bytes left; the PAX data kept, if it is PAX.
    Data { left: u64, pax: Option<Vec<u8>>, size: u64 },
}

/// See the module.
#[derive(Debug)]
pub struct MetaGuard<R> {
    inner: R,
    state: State,
    /// The `size` a PAX header gave the next entry.
    pax_size: Option<u64>,
    entries: u64,
    max_entries: u64,
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A tar numeric field: octal text, or GNU base-256 when the first byte has its high bit set.
pub fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text: Vec<u8> = field.iter().copied().filter(|b| *b != 0 && *b != b' ').collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// The `size` record of PAX data (`"<len> size=<n>\n"` records).
fn pax_size(data: &[u8]) -> Option<u64> {
    data.split(|b| *b == b'\n').find_map(|rec| {
        let rec = std::str::from_utf8(rec).ok()?;
        let (_, kv) = rec.split_once(' ')?;
        kv.strip_prefix("size=")?.parse().ok()
    })
}

impl<R: Read> MetaGuard<R> {
    pub fn new(inner: R, max_entries: u64) -> MetaGuard<R> {
        MetaGuard { inner, state: State::Header(Box::new([0; BLOCK]), 0), pax_size: None, entries: 0, max_entries }
    }

    /// A whole header has been read: what follows it.
    fn header(&mut self, h: &[u8; BLOCK]) -> io::Result<State> {
        if h.iter().all(|b| *b == 0) {
            return Ok(State::Header(Box::new([0; BLOCK]), 0));
        }
        let kind = h[156];
        let stated = number(&h[124..136]).ok_or_else(|| refuse("a tar header with an invalid size".into()))?;
        let meta = matches!(kind, b'L' | b'K' | b'x' | b'g');
        // A PAX `size` is for the next real entry only.
        let size = if meta { stated } else { self.pax_size.take().unwrap_or(stated) };
        let name = || String::from_utf8_lossy(h[..100].split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
        let cap = match kind {
            b'L' | b'K' => Some((MAX_LONG_NAME, "a GNU long name")),
            b'x' | b'g' => Some((MAX_PAX, "a PAX header")),
            _ => None,
        };
        if let Some((cap, what)) = cap {
            if size > cap {
                return Err(refuse(format!("{what} of {size} bytes (at most {cap}): refused before reading it")));
            }
        }
        if kind == b'S' {
            let name: String = name().chars().take(100).collect();
            return Err(refuse(format!("{name}: GNU sparse files are not supported in image layers")));
        }
        if !meta {
            self.entries += 1;
            if self.entries > self.max_entries {
                return Err(refuse(format!("the layer holds more than {} entries", self.max_entries)));
            }
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let pax = (kind == b'x').then(|| Vec::with_capacity(size as usize));
        Ok(State::Data { left: padded, pax, size })
    }

    /// Follows `buf`, just read, through the stream's structure.
    fn follow(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match &mut self.state {
                State::Header(h, filled) => {
                    let n = (BLOCK - *filled).min(buf.len());
                    h[*filled..*filled + n].copy_from_slice(&buf[..n]);
                    *filled += n;
                    buf = &buf[n..];
                    if *filled == BLOCK {
                        let h = std::mem::replace(h, Box::new([0; BLOCK]));
                        self.state = self.header(&h)?;
                    }
                }
                State::Data { left, pax, size } => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    if let Some(p) = pax {
                        let room = (*size as usize).saturating_sub(p.len());
                        p.extend_from_slice(&buf[..n.min(room)]);
                    }
                    *left -= n as u64;
                    buf = &buf[n..];
                    if *left == 0 {
                        if let Some(p) = pax {
                            self.pax_size = pax_size(p);
                        }
                        self.state = State::Header(Box::new([0; BLOCK]), 0);
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for MetaGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.follow(&out[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        *h.as_bytes()
    }

    fn drain(r: impl Read) -> io::Result<u64> {
        io::copy(&mut MetaGuard::new(r, 10), &mut io::sink())
    }

    #[test]
    fn a_huge_long_name_is_refused_at_its_header() {
        let mut tar = header("././@LongLink", b'L', 512 << 20).to_vec();
        // Only the header and a little data are there: the guard refuses before reading on.
        tar.extend(vec![b'a'; 4096]);
        let e = drain(&tar[..]).unwrap_err().to_string();
        assert_eq!(e, "a GNU long name of 536870912 bytes (at most 4096): refused before reading it");
    }

    #[test]
    fn pax_headers_are_capped_and_their_size_followed() {
        let mut big = header("pax", b'x', MAX_PAX + 1).to_vec();
        big.extend(vec![0; BLOCK]);
        assert!(drain(&big[..]).unwrap_err().to_string().contains("a PAX header of 65537 bytes"));
        // A PAX size for the next entry: its data is that long, whatever its own header says.
        let record = b"13 size=1000\n";
        let mut ok = header("pax", b'x', record.len() as u64).to_vec();
        ok.extend_from_slice(record);
        ok.resize(2 * BLOCK, 0);
        ok.extend_from_slice(&header("f", b'0', 0));
        ok.extend(vec![7u8; 1024]);
        ok.extend_from_slice(&header("g", b'0', 3));
        ok.extend(vec![1u8; BLOCK]);
        ok.extend(vec![0u8; 2 * BLOCK]);
        drain(&ok[..]).unwrap();
        let mut g = MetaGuard::new(&ok[..], 10);
        io::copy(&mut g, &mut io::sink()).unwrap();
        assert_eq!(g.entries, 2, "two entries, the PAX size followed");
    }

    #[test]
    fn sparse_files_and_too_many_entries_are_refused() {
        let sparse = header("s", b'S', 0);
        assert!(drain(&sparse[..]).unwrap_err().to_string().contains("sparse"));
        let mut many = Vec::new();
        for i in 0..11 {
            many.extend_from_slice(&header(&format!("f{i}"), b'0', 0));
        }
        assert!(drain(&many[..]).unwrap_err().to_string().contains("more than 10 entries"));
    }

    #[test]
    fn numbers_octal_and_base_256() {
        assert_eq!(number(b"00000001750\0"), Some(1000));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]), Some(0x1000));
        assert_eq!(number(b"        \0"), Some(0));
        assert_eq!(number(b"9999"), None);
    }
}
