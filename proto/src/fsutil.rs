//! The one atomic file writer every crate uses: the only I/O in this crate, kept here because
//! the leader, the agent, the image store and the PKI all need the same guarantee.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// `path` as a directory only its owner may enter (0700), made if missing (with its parents),
/// and made so if it was there with another mode — whatever the umask. For data dirs: they hold
/// keys, the store and secrets.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Writes `contents` to `path` with `mode` atomically: a temporary file next to it (unique per
/// process and call, so concurrent writers never share one), fsync, rename, fsync of the
/// directory. Readers see the old file or the new one, never a part, even after a power cut.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_renamed(path, contents, mode, true)
}

/// Like [`write_file_atomic`] without the fsyncs: readers see the old file or the new one, never
/// a part, but a power cut may leave either (or none). For files that mean nothing after a reboot
/// — a container's config and its shim's state under `/run` — where two fsyncs per write were
/// most of what writing cost on a disk, and nothing on the tmpfs boards mount at `/run`.
pub fn write_file_replace(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_renamed(path, contents, mode, false)
}

fn write_renamed(path: &Path, contents: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| durable && !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_data_dir_is_private_whatever_it_was() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "an existing one too");
    }

    #[test]
    fn writes_whole_files_with_their_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("bramble-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state.json");
        for write in [write_file_atomic, write_file_replace] {
            write(&p, b"one", 0o640).unwrap();
            write(&p, b"two", 0o600).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"two");
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
            assert!(write(&dir.join("missing/x"), b"x", 0o600).is_err());
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a failed write leaves nothing");
            std::fs::remove_file(&p).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `path` with `.next` appended: where [`replace_pair`] stages a new version.
fn staged(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".next");
    s.into()
}

/// Replaces two files that must match (a key and its certificate) so that a crash at any point
/// leaves a matching pair: both are written as `<path>.next` first, then renamed, `first` before
/// `second`. [`finish_pair`] completes or forgets a replacement a crash interrupted.
pub fn replace_pair(first: (&Path, &[u8], u32), second: (&Path, &[u8], u32)) -> std::io::Result<()> {
    let (a, b) = (staged(first.0), staged(second.0));
    write_file_atomic(&a, first.1, first.2)?;
    write_file_atomic(&b, second.1, second.2)?;
    std::fs::rename(&a, first.0)?;
    std::fs::rename(&b, second.0)
}

/// After a crash in [`replace_pair`]: both staged → both renamed; only `second` staged (`first`
/// already moved) → it follows; only `first` staged → forgotten (the old pair stands).
pub fn finish_pair(first: &Path, second: &Path) -> std::io::Result<()> {
    let (a, b) = (staged(first), staged(second));
    match (a.exists(), b.exists()) {
        (true, true) => {
            std::fs::rename(&a, first)?;
            std::fs::rename(&b, second)
        }
        (false, true) => std::fs::rename(&b, second),
        (true, false) => std::fs::remove_file(&a),
        (false, false) => Ok(()),
    }
}

#[cfg(test)]
mod pair_tests {
    use super::*;

    #[test]
    fn a_pair_is_replaced_whole_or_not_at_all() {
        let t = tempfile::tempdir().unwrap();
        let (k, c) = (t.path().join("node.key"), t.path().join("node.crt"));
        replace_pair((&k, b"k1", 0o600), (&c, b"c1", 0o644)).unwrap();
        assert_eq!((std::fs::read(&k).unwrap(), std::fs::read(&c).unwrap()), (b"k1".to_vec(), b"c1".to_vec()));
        // A crash after the key moved: the certificate follows.
        std::fs::write(staged(&c), b"c2").unwrap();
        std::fs::write(&k, b"k2").unwrap();
        finish_pair(&k, &c).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), b"c2");
        // A crash before the certificate was staged: the new key is forgotten.
        std::fs::write(staged(&k), b"k3").unwrap();
        finish_pair(&k, &c).unwrap();
        assert_eq!((std::fs::read(&k).unwrap(), staged(&k).exists()), (b"k2".to_vec(), false));
    }
}
