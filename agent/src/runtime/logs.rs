//! Container output → a size-capped, rotated log file, one line per record in the CRI format the
//! kubelet writes: `<RFC 3339 time> <stdout|stderr> <F|P> <text>` (P: a partial line).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

/// The longest line kept whole; longer ones are split into partial records.
pub const MAX_LINE: usize = 16 * 1024;

pub struct LogWriter {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: File,
    size: u64,
    /// Bytes of an unfinished line per stream (0 stdout, 1 stderr).
    pending: [Vec<u8>; 2],
}

/// `2026-11-25T23:36:12.123456789Z` from Unix nanoseconds.
pub fn rfc3339(nanos: u128) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let frac = (nanos % 1_000_000_000) as u32;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

impl LogWriter {
    pub fn open(path: PathBuf, max_bytes: u64, max_files: u32) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { path, max_bytes: max_bytes.max(1024), max_files, file, size, pending: [Vec::new(), Vec::new()] })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.max_files).rev() {
                let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    fn record(&mut self, stream: usize, text: &[u8], partial: bool) -> io::Result<()> {
        let mut line = format!(
            "{} {} {} ",
            rfc3339(now_nanos()),
            if stream == 0 { "stdout" } else { "stderr" },
            if partial { 'P' } else { 'F' }
        )
        .into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Takes bytes read from the container's stdout (0) or stderr (1).
    pub fn write(&mut self, stream: usize, mut bytes: &[u8]) -> io::Result<()> {
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[stream]);
            line.extend_from_slice(&bytes[..i]);
            self.record(stream, &line, false)?;
            bytes = &bytes[i + 1..];
        }
        self.pending[stream].extend_from_slice(bytes);
        while self.pending[stream].len() >= MAX_LINE {
            let rest = self.pending[stream].split_off(MAX_LINE);
            let chunk = std::mem::replace(&mut self.pending[stream], rest);
            self.record(stream, &chunk, true)?;
        }
        Ok(())
    }

    /// Writes what is left of unfinished lines (when the container exits).
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for s in 0..2 {
            if !self.pending[s].is_empty() {
                let line = std::mem::take(&mut self.pending[s]);
                self.record(s, &line, false)?;
            }
        }
        Ok(())
    }
}

/// Reads CRI log records back as the lines a user wrote: partial records joined, the time and
/// stream tags dropped.
#[derive(Debug, Default)]
pub struct LogReader {
    /// Records before this RFC 3339 time are skipped.
    since: Option<String>,
    /// Text of a line whose records are partial so far.
    partial: String,
    /// Bytes of a record not yet ended by a newline.
    carry: Vec<u8>,
}

impl LogReader {
    pub fn new(since_ms: Option<u64>) -> LogReader {
        LogReader { since: since_ms.map(|ms| rfc3339(u128::from(ms) * 1_000_000)), ..Default::default() }
    }

    /// Feeds bytes of a log file; returns the complete lines they finish.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.carry.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(i) = self.carry[start..].iter().position(|b| *b == b'\n') {
            let rec = String::from_utf8_lossy(&self.carry[start..start + i]).into_owned();
            start += i + 1;
            let mut parts = rec.splitn(4, ' ');
            let (Some(time), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let text = parts.next().unwrap_or("");
            if self.since.as_deref().is_some_and(|s| time < s) {
                continue;
            }
            self.partial.push_str(text);
            if tag != "P" {
                out.push(std::mem::take(&mut self.partial));
            }
        }
        self.carry.drain(..start);
        out
    }
}

/// The files of a log, oldest first: `path.N` … `path.1`, `path`.
pub fn log_files(path: &std::path::Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    for n in 1.. {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        let p = PathBuf::from(p);
        if !p.exists() {
            break;
        }
        rotated.push(p);
    }
    rotated.reverse();
    rotated.push(path.to_path_buf());
    rotated
}

/// The lines of a log (all files), since `since_ms`, the last `tail` of them; and the length of
/// the current file read, to follow from.
pub fn read_log(path: &std::path::Path, tail: Option<u64>, since_ms: Option<u64>) -> io::Result<(Vec<String>, u64)> {
    let mut reader = LogReader::new(since_ms);
    let mut lines = std::collections::VecDeque::new();
    let mut offset = 0;
    for f in log_files(path) {
        let bytes = match fs::read(&f) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if f == path {
            offset = bytes.len() as u64;
        }
        for l in reader.feed(&bytes) {
            lines.push_back(l);
            if tail.is_some_and(|t| lines.len() as u64 > t) {
                lines.pop_front();
            }
        }
    }
    Ok((lines.into(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_back_joins_partials_and_honours_tail_and_since() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(p.clone(), 1 << 20, 2).unwrap();
        w.write(0, b"one\ntwo\n").unwrap();
        w.write(1, &vec![b'y'; MAX_LINE + 5]).unwrap();
        w.write(1, b"\nthree\n").unwrap();
        let (lines, offset) = read_log(&p, None, None).unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!((lines[0].as_str(), lines[1].as_str(), lines[3].as_str()), ("one", "two", "three"));
        assert_eq!(lines[2].len(), MAX_LINE + 5, "a long line comes back whole");
        assert_eq!(offset, fs::metadata(&p).unwrap().len());
        assert_eq!(read_log(&p, Some(2), None).unwrap().0[1], "three");
        let future = now_nanos() / 1_000_000 + 60_000;
        assert!(read_log(&p, None, Some(future as u64)).unwrap().0.is_empty());
        let mut r = LogReader::new(None);
        assert!(r.feed(b"2026-01-01T00:00:00.000000000Z stdout F hal").is_empty(), "an unfinished record waits");
        assert_eq!(r.feed(b"f\n"), ["half"]);
    }

    #[test]
    fn times_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_764_114_972_123_000_000), "2025-11-25T23:56:12.123000000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn lines_partials_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(p.clone(), 2048, 2).unwrap();
        w.write(0, b"hel").unwrap();
        w.write(1, b"oops\n").unwrap();
        w.write(0, b"lo\nworld").unwrap();
        w.flush_partial().unwrap();
        let text = fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(lines, ["stderr F oops", "stdout F hello", "stdout F world"]);
        w.write(0, &vec![b'x'; MAX_LINE + 10]).unwrap();
        w.flush_partial().unwrap();
        for i in 0..200 {
            w.write(0, format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(fs::metadata(&p).unwrap().len() <= 2048);
        assert!(fs::metadata(d.path().join("c.log.1")).unwrap().len() <= MAX_LINE as u64 + 100);
        assert!(d.path().join("c.log.2").exists());
        assert!(!d.path().join("c.log.3").exists(), "at most max_files rotated files");
        assert!(fs::read_to_string(&p).unwrap().lines().last().unwrap().ends_with("stdout F line 199"));
    }
}
