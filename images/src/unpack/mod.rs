//! Layer tar streams → directories, safely.
//!
//! Nothing a layer contains may create or change anything outside the target directory. Every
//! entry's path is split into components (absolute paths and `..` are refused, `.` ignored) and
//! walked from the target's file descriptor with `O_NOFOLLOW`, so a symlink is never followed while
//! unpacking: a write through a symlink is refused, whatever its target, and so are hard links whose
//! target lies outside the layer. Symlinks themselves are created as they are; they only mean
//! something inside the container's root.
//!
//! Two targets:
//! - [`Target::Layer`]: a fresh directory per layer, whiteouts kept in overlayfs form (a 0/0
//!   character device; `trusted.overlay.opaque=y` on opaque directories), ready to be a `lowerdir`.
//! - [`Target::Flat`]: applied onto a root filesystem built from the layers below (the fallback
//!   where overlayfs is missing): whiteouts delete, opaque directories are emptied of what lower
//!   layers put there, and a directory replaces a lower layer's symlink or file as overlayfs would.

pub mod guard;
pub(crate) mod walk;

use crate::digest::{Digest, HashingReader};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use walk::{component_path, components, Dir};

/// What to do with character and block devices in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// Leave them out (containers get their /dev from the runtime). The default.
    #[default]
    Skip,
    /// Fail the layer.
    Refuse,
    /// Create them (root only).
    Create,
}

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub devices: DevicePolicy,
    /// Refuse layers that unpack to more than this many bytes of file data.
    pub max_bytes: u64,
    /// Apply the entries' owners (needs root; off otherwise).
    pub chown: bool,
    /// Refuse layers with more entries than this.
    pub max_entries: u64,
    /// Refuse images whose layers unpack to more than this in all.
    pub max_image_bytes: u64,
}

/// Defaults: a layer unpacks to at most 16 GiB and 1,000,000 entries (the pull caps the whole
/// image lower still, and by the disk's free space).
pub const MAX_LAYER_BYTES: u64 = 16 << 30;
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;
pub const MAX_IMAGE_BYTES: u64 = 8 << 30;

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            devices: DevicePolicy::Skip,
            max_bytes: MAX_LAYER_BYTES,
            chown: nix::unistd::geteuid().is_root(),
            max_entries: MAX_LAYER_ENTRIES,
            max_image_bytes: MAX_IMAGE_BYTES,
        }
    }
}

/// Where a layer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Layer,
    Flat,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    pub devices_skipped: u64,
    pub xattrs_skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?}: {reason}")]
    Entry { entry: String, reason: String },
    #[error("layer is not a valid tar stream: {0}")]
    Tar(io::Error),
    #[error("layer unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: Errno },
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// An entry's name as an error shows it: at most 256 bytes of it (the layer chose it).
fn entry_err(entry: &[u8], reason: impl Into<String>) -> UnpackError {
    let shown = &entry[..entry.len().min(256)];
    let mut name = String::from_utf8_lossy(shown).into_owned();
    if entry.len() > shown.len() {
        name.push('…');
    }
    UnpackError::Entry { entry: name, reason: reason.into() }
}

/// Unpacks the tar stream `reader` into `dest` (which must exist); returns the digest of the
/// uncompressed stream (the layer's `diff_id`) and what was done.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    target: Target,
    opts: &UnpackOptions,
) -> Result<(Digest, UnpackStats), UnpackError> {
    let root = Dir::open_root(dest).map_err(|source| UnpackError::Open { path: dest.display().to_string(), source })?;
    let mut hashing = HashingReader::new(reader);
    let stats = {
        let mut archive = tar::Archive::new(guard::MetaGuard::new(&mut hashing, opts.max_entries));
        let mut u = Unpacker { root, target, opts, stats: UnpackStats::default(), created: HashSet::new() };
        for entry in archive.entries().map_err(UnpackError::Tar)? {
            let mut entry = entry.map_err(UnpackError::Tar)?;
            u.entry(&mut entry)?;
        }
        u.stats
    };
    let (digest, _) = hashing.finish().map_err(UnpackError::Tar)?;
    Ok((digest, stats))
}

struct Unpacker<'a> {
    root: Dir,
    target: Target,
    opts: &'a UnpackOptions,
    stats: UnpackStats,
    /// Paths this layer created (Flat target): lower layers' content may be replaced, this
    /// layer's may not be used as a way through.
    created: HashSet<Vec<OsString>>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let comps = components(&raw_path).map_err(|r| entry_err(&raw_path, r))?;
        self.stats.entries += 1;
        let Some((name, parents)) = comps.split_last() else {
            return Ok(()); // the layer's root itself ("./"): nothing to create
        };
        let kind = entry.header().entry_type();
        // Whiteouts.
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT.as_bytes()) && !matches!(kind, tar::EntryType::Directory) {
            let parent = self.parent(&raw_path, parents)?;
            return self.whiteout(&raw_path, &parent, parents, name_bytes);
        }
        let parent = self.parent(&raw_path, parents)?;
        let fail = |e: Errno, what: &str| entry_err(&raw_path, format!("{what}: {e}"));
        match kind {
            tar::EntryType::Directory => {
                let existing = walk::lstat_at(&parent, name);
                let is_dir = matches!(existing, Some(SFlag::S_IFDIR));
                if existing.is_some() && !is_dir {
                    self.remove(&raw_path, &parent, &comps)?;
                }
                if !is_dir {
                    mkdirat(Some(parent.raw()), name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| fail(e, "cannot create directory"))?;
                }
                let dir = Dir::open_at(&parent, name).map_err(|e| fail(e, "cannot open directory"))?;
                self.created.insert(comps.clone());
                self.finish(&raw_path, entry, dir.raw(), None)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.replace(&raw_path, &parent, &comps)?;
                let raw_fd = nix::fcntl::openat(
                    Some(parent.raw()),
                    name.as_os_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| fail(e, "cannot create file"))?;
                // SAFETY: a descriptor just returned by openat, owned by nobody else.
                let mut file = unsafe { File::from_raw_fd(raw_fd) };
                let budget = self.opts.max_bytes.saturating_sub(self.stats.bytes);
                let copied = io::copy(&mut entry.by_ref().take(budget + 1), &mut file)
                    .map_err(|e| entry_err(&raw_path, format!("cannot write: {e}")))?;
                if copied > budget {
                    return Err(UnpackError::TooLarge { limit: self.opts.max_bytes });
                }
                self.stats.bytes += copied;
                self.finish(&raw_path, entry, file.as_raw_fd(), None)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&raw_path, "symlink without a target"))?
                    .into_owned();
                self.replace(&raw_path, &parent, &comps)?;
                symlinkat(OsStr::from_bytes(&target), Some(parent.raw()), name.as_os_str())
                    .map_err(|e| fail(e, "cannot create symlink"))?;
                self.finish(&raw_path, entry, parent.raw(), Some(name))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&raw_path, "hard link without a target"))?
                    .into_owned();
                let target_comps =
                    components(&link).map_err(|r| entry_err(&raw_path, format!("hard link target {}", r)))?;
                let Some((tname, tparents)) = target_comps.split_last() else {
                    return Err(entry_err(&raw_path, "hard link to the layer's root"));
                };
                let tparent = self.root.walk(tparents).map_err(|e| {
                    entry_err(
                        &raw_path,
                        format!("hard link target {:?} is not inside the layer: {e}", String::from_utf8_lossy(&link)),
                    )
                })?;
                if self.target == Target::Flat
                    && !self.created.contains(&target_comps)
                    && walk::lstat_at(&tparent, tname).is_none()
                {
                    return Err(entry_err(&raw_path, "hard link target does not exist"));
                }
                self.replace(&raw_path, &parent, &comps)?;
                linkat(Some(tparent.raw()), tname.as_os_str(), Some(parent.raw()), name.as_os_str(), AtFlags::empty())
                    .map_err(|e| {
                        entry_err(
                            &raw_path,
                            format!(
                                "cannot link to {:?} (it must be a file earlier in this layer): {e}",
                                String::from_utf8_lossy(&link)
                            ),
                        )
                    })?;
                self.created.insert(comps.clone());
            }
            tar::EntryType::Char | tar::EntryType::Block => match self.opts.devices {
                DevicePolicy::Skip => self.stats.devices_skipped += 1,
                DevicePolicy::Refuse => {
                    return Err(entry_err(&raw_path, "device nodes are not allowed by the image policy"))
                }
                DevicePolicy::Create => {
                    let kind_flag = if kind == tar::EntryType::Char { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
                    let major = entry.header().device_major().ok().flatten().unwrap_or(0) as u64;
                    let minor = entry.header().device_minor().ok().flatten().unwrap_or(0) as u64;
                    self.replace(&raw_path, &parent, &comps)?;
                    mknodat(
                        Some(parent.raw()),
                        name.as_os_str(),
                        kind_flag,
                        Mode::from_bits_truncate(0o600),
                        nix::sys::stat::makedev(major, minor),
                    )
                    .map_err(|e| fail(e, "cannot create device"))?;
                    self.finish(&raw_path, entry, parent.raw(), Some(name))?;
                }
            },
            tar::EntryType::Fifo => {
                self.replace(&raw_path, &parent, &comps)?;
                mknodat(Some(parent.raw()), name.as_os_str(), SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                    .map_err(|e| fail(e, "cannot create fifo"))?;
                self.finish(&raw_path, entry, parent.raw(), Some(name))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(entry_err(&raw_path, format!("unsupported entry type {other:?}"))),
        }
        Ok(())
    }

    /// Opens the parent directory of an entry, creating missing directories.
    fn parent(&mut self, raw: &[u8], parents: &[OsString]) -> Result<Dir, UnpackError> {
        let mut dir = self.root.try_clone().map_err(|e| entry_err(raw, format!("cannot open the layer root: {e}")))?;
        for (i, c) in parents.iter().enumerate() {
            match Dir::open_at(&dir, c) {
                Ok(d) => dir = d,
                Err(Errno::ENOENT) => {
                    mkdirat(Some(dir.raw()), c.as_os_str(), Mode::from_bits_truncate(0o755)).map_err(|e| {
                        entry_err(raw, format!("cannot create directory {}: {e}", component_path(&parents[..=i])))
                    })?;
                    self.created.insert(parents[..=i].to_vec());
                    dir = Dir::open_at(&dir, c)
                        .map_err(|e| entry_err(raw, format!("cannot open {}: {e}", component_path(&parents[..=i]))))?;
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let here = &parents[..=i];
                    // A lower layer's symlink or file is replaced by a directory, as overlayfs
                    // shows it; this layer's own symlink is never a way through.
                    if self.target == Target::Flat && !self.created.contains(here) {
                        unlinkat(Some(dir.raw()), c.as_os_str(), UnlinkatFlags::NoRemoveDir)
                            .map_err(|e| entry_err(raw, format!("cannot replace {}: {e}", component_path(here))))?;
                        mkdirat(Some(dir.raw()), c.as_os_str(), Mode::from_bits_truncate(0o755)).map_err(|e| {
                            entry_err(raw, format!("cannot create directory {}: {e}", component_path(here)))
                        })?;
                        self.created.insert(here.to_vec());
                        dir = Dir::open_at(&dir, c)
                            .map_err(|e| entry_err(raw, format!("cannot open {}: {e}", component_path(here))))?;
                    } else {
                        return Err(entry_err(
                            raw,
                            format!(
                                "{} is a symlink or a file, not a directory: refusing to write through it",
                                component_path(here)
                            ),
                        ));
                    }
                }
                Err(e) => return Err(entry_err(raw, format!("cannot open {}: {e}", component_path(&parents[..=i])))),
            }
        }
        Ok(dir)
    }

    /// Makes room for a new non-directory entry at `comps`.
    fn replace(&mut self, raw: &[u8], parent: &Dir, comps: &[OsString]) -> Result<(), UnpackError> {
        let name = comps.last().expect("a name");
        if walk::lstat_at(parent, name).is_some() {
            self.remove(raw, parent, comps)?;
        }
        self.created.insert(comps.to_vec());
        Ok(())
    }

    /// Removes whatever is at `comps` (a whole tree for a directory).
    fn remove(&mut self, raw: &[u8], parent: &Dir, comps: &[OsString]) -> Result<(), UnpackError> {
        let name = comps.last().expect("a name");
        walk::remove_at(parent, name).map_err(|e| entry_err(raw, format!("cannot replace what is there: {e}")))
    }

    fn whiteout(&mut self, raw: &[u8], parent: &Dir, parents: &[OsString], name: &[u8]) -> Result<(), UnpackError> {
        if name == OPAQUE.as_bytes() {
            return match self.target {
                Target::Layer => {
                    let dir = File::from(parent.try_clone().map_err(|e| entry_err(raw, e.to_string()))?.into_owned());
                    xattr::FileExt::set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(|e| {
                        entry_err(
                            raw,
                            format!("cannot mark the directory opaque (needs root for trusted.* attributes): {e}"),
                        )
                    })
                }
                Target::Flat => {
                    // Empty the directory of what lower layers put there.
                    for child in walk::list(parent).map_err(|e| entry_err(raw, e.to_string()))? {
                        let mut path = parents.to_vec();
                        path.push(child.clone());
                        if !self.created.contains(&path) {
                            walk::remove_at(parent, &child).map_err(|e| entry_err(raw, e.to_string()))?;
                        }
                    }
                    Ok(())
                }
            };
        }
        let hidden = &name[WHITEOUT.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.starts_with(WHITEOUT.as_bytes()) {
            return Err(entry_err(raw, "invalid whiteout name"));
        }
        let hidden = OsString::from(OsStr::from_bytes(hidden));
        let mut path = parents.to_vec();
        path.push(hidden.clone());
        if walk::lstat_at(parent, &hidden).is_some() {
            walk::remove_at(parent, &hidden).map_err(|e| entry_err(raw, e.to_string()))?;
        }
        match self.target {
            Target::Layer => {
                mknodat(Some(parent.raw()), hidden.as_os_str(), SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| entry_err(raw, format!("cannot create the whiteout (needs root): {e}")))?;
                self.created.insert(path);
            }
            Target::Flat => {}
        }
        Ok(())
    }

    /// Applies owner, mode, xattrs and modification time, through the entry's own descriptor
    /// `fd`, or (`at_name` set: symlinks, devices, fifos) by name in the directory `fd`.
    fn finish<R: Read>(
        &mut self,
        raw: &[u8],
        entry: &mut tar::Entry<'_, R>,
        fd: RawFd,
        at_name: Option<&OsString>,
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let mode = Mode::from_bits_truncate(header.mode().unwrap_or(0o644) & 0o7777);
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = TimeSpec::from_duration(std::time::Duration::from_secs(header.mtime().unwrap_or(0)));
        let is_symlink = header.entry_type() == tar::EntryType::Symlink;
        if self.opts.chown {
            let (u, g) = (Some(Uid::from_raw(uid as u32)), Some(Gid::from_raw(gid as u32)));
            let r = match at_name {
                Some(n) => fchownat(Some(fd), n.as_os_str(), u, g, AtFlags::AT_SYMLINK_NOFOLLOW),
                None => fchown(fd, u, g),
            };
            r.map_err(|e| entry_err(raw, format!("cannot set owner {uid}:{gid}: {e}")))?;
        }
        // After chown, which clears set-user-ID bits.
        if !is_symlink {
            let r = match at_name {
                Some(n) => nix::sys::stat::fchmodat(
                    Some(fd),
                    n.as_os_str(),
                    mode,
                    nix::sys::stat::FchmodatFlags::NoFollowSymlink,
                )
                .or_else(|e| if e == Errno::EOPNOTSUPP { Ok(()) } else { Err(e) }),
                None => fchmod(fd, mode),
            };
            r.map_err(|e| entry_err(raw, format!("cannot set mode {:o}: {e}", mode.bits())))?;
        }
        if at_name.is_none() {
            self.xattrs(raw, entry, fd)?;
        }
        // Times are best effort (some filesystems refuse them on symlinks).
        let _ = match at_name {
            Some(n) => utimensat(Some(fd), n.as_os_str(), &mtime, &mtime, UtimensatFlags::NoFollowSymlink),
            None => nix::sys::stat::futimens(fd, &mtime, &mtime),
        };
        Ok(())
    }

    fn xattrs<R: Read>(&mut self, raw: &[u8], entry: &mut tar::Entry<'_, R>, fd: RawFd) -> Result<(), UnpackError> {
        let Ok(Some(exts)) = entry.pax_extensions() else { return Ok(()) };
        let mut xattrs = Vec::new();
        for ext in exts.flatten() {
            if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
        if xattrs.is_empty() {
            return Ok(());
        }
        let dup = nix::unistd::dup(fd).map_err(|e| entry_err(raw, e.to_string()))?;
        // SAFETY: a descriptor just returned by dup, owned by nobody else.
        let file = unsafe { File::from(OwnedFd::from_raw_fd(dup)) };
        for (name, value) in xattrs {
            // Never let a layer forge overlayfs metadata (whiteouts, opaque directories) or
            // security labels: only user attributes and file capabilities pass.
            let allowed = name.starts_with("user.") || name == "security.capability";
            if !allowed || xattr::FileExt::set_xattr(&file, &name, &value).is_err() {
                self.stats.xattrs_skipped += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
