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

#[cfg(test)]
mod tests {
    use super::*;

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
