//! Directory handles and path components: the pieces that keep unpacking inside its directory.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Splits a tar path into components: `.` and empty parts are dropped; an absolute path or a `..`
/// component is refused (the message says which).
pub fn components(path: &[u8]) -> Result<Vec<OsString>, String> {
    if path.first() == Some(&b'/') {
        return Err("absolute paths are not allowed in a layer".into());
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` would leave the layer".into()),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// `a/b/c` for messages.
pub fn component_path(comps: &[OsString]) -> String {
    comps.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// An open directory. Every operation is relative to it, never to the process's cwd.
#[derive(Debug)]
pub struct Dir(OwnedFd);

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open/dup and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Dir {
    pub fn open_root(path: &Path) -> nix::Result<Dir> {
        let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(Dir(own(fd)))
    }

    /// Opens the directory `name` in `parent`, refusing symlinks (`ELOOP`/`ENOTDIR`).
    pub fn open_at(parent: &Dir, name: &OsStr) -> nix::Result<Dir> {
        let fd = nix::fcntl::openat(
            Some(parent.raw()),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir(own(fd)))
    }

    /// Walks existing directories `comps` from here, following no symlink.
    pub fn walk(&self, comps: &[OsString]) -> nix::Result<Dir> {
        let mut dir = self.try_clone()?;
        for c in comps {
            dir = Dir::open_at(&dir, c)?;
        }
        Ok(dir)
    }

    pub fn try_clone(&self) -> nix::Result<Dir> {
        Ok(Dir(own(nix::unistd::dup(self.raw())?)))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn into_owned(self) -> OwnedFd {
        self.0
    }
}

/// The file type of `name` in `dir`, without following a symlink; `None` if absent.
pub fn lstat_at(dir: &Dir, name: &OsStr) -> Option<SFlag> {
    let st = fstatat(Some(dir.raw()), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
    Some(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

/// Names in `dir` (without `.` and `..`).
pub fn list(dir: &Dir) -> nix::Result<Vec<OsString>> {
    let fd = nix::unistd::dup(dir.raw())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// Removes `name` from `dir`: a file, symlink or device directly, a directory with all it holds.
/// Never follows a symlink.
pub fn remove_at(dir: &Dir, name: &OsStr) -> nix::Result<()> {
    match unlinkat(Some(dir.raw()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) if lstat_at(dir, name) == Some(SFlag::S_IFDIR) => {
            let child = Dir::open_at(dir, name)?;
            for n in list(&child)? {
                remove_at(&child, &n)?;
            }
            unlinkat(Some(dir.raw()), name, UnlinkatFlags::RemoveDir)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert_eq!(components(b"./a//b/./c").unwrap(), ["a", "b", "c"]);
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").unwrap_err().contains("absolute"));
        assert!(components(b"a/../../b").unwrap_err().contains("`..`"));
        assert!(components(b"..").is_err());
        assert_eq!(components(b"a..b/..c").unwrap(), ["a..b", "..c"], "dots inside names are fine");
    }
}
