//! A root filesystem per container: an overlay mount of the image's layers with a private upper
//! directory, or, where overlayfs is missing, a copy built by applying the layers in order.
//!
//! ```text
//! containers/<id>/lease.json   the layers in use (garbage collection keeps them)
//! containers/<id>/upper, work  overlay's writable part
//! containers/<id>/rootfs       the mount point (or the copy)
//! ```

use crate::digest::Digest;
use crate::store::{remove_tree, ContentStore, ImageRecord, StoreError};
use crate::unpack::{unpack, Target, UnpackOptions};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The longest option string the kernel takes for one mount (one page, with room to spare).
const MAX_MOUNT_DATA: usize = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsKind {
    Overlay,
    Copy,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("container id {0:?} is not a valid name (letters, digits, '-', '_', '.')")]
    BadId(String),
    #[error("layer {0} of the image is not unpacked in the store")]
    MissingLayer(Digest),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot mount the overlay at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("too many layers ({0}) for one overlay mount")]
    TooManyLayers(usize),
    #[error("cannot unmount {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
}

/// What a container's rootfs is made of; kept beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub image: String,
    pub diff_ids: Vec<Digest>,
    pub kind: RootfsKind,
}

#[derive(Debug, Clone)]
pub struct Rootfs {
    pub path: PathBuf,
    pub kind: RootfsKind,
}

/// Reads the file `rel` inside the root filesystem `root` (at most `limit` bytes) without
/// following a symlink anywhere on the way; `None` if it is missing or a path part is a symlink.
pub fn read_file_inside(root: &Path, rel: &str, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use crate::unpack::walk::{components, Dir};
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let comps = components(rel.as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let Some((name, parents)) = comps.split_last() else { return Ok(None) };
    let dir = Dir::open_root(root).map_err(std::io::Error::from)?;
    let Ok(parent) = dir.walk(parents) else { return Ok(None) };
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(Some(parent.raw()), name.as_os_str(), flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => fd,
        Err(_) => return Ok(None),
    };
    // SAFETY: a descriptor just returned by openat, owned by nobody else.
    let file = unsafe { fs::File::from_raw_fd(fd) };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Whether this kernel offers overlayfs.
pub fn overlay_available() -> bool {
    fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
}

#[derive(Debug, Clone)]
pub struct Rootfses {
    store: ContentStore,
    dir: PathBuf,
    prefer: RootfsKind,
}

fn check_id(id: &str) -> Result<(), RootfsError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RootfsError::BadId(id.to_string()))
    }
}

impl Rootfses {
    /// Root filesystems under `dir`, from layers in `store`; overlay when the kernel has it.
    pub fn new(store: ContentStore, dir: &Path) -> Self {
        let prefer = if overlay_available() { RootfsKind::Overlay } else { RootfsKind::Copy };
        Rootfses { store, dir: dir.to_path_buf(), prefer }
    }

    pub fn with_kind(mut self, kind: RootfsKind) -> Self {
        self.prefer = kind;
        self
    }

    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
        move |source| RootfsError::Io { what, path: path.to_path_buf(), source }
    }

    /// Builds the root filesystem of container `id` from `image` (whose layers must be unpacked).
    pub fn prepare(&self, id: &str, image: &ImageRecord) -> Result<Rootfs, RootfsError> {
        check_id(id)?;
        let base = self.dir.join(id);
        let rootfs = base.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(Self::io("cannot create", &rootfs))?;
        for l in &image.layers {
            if !self.store.has_layer(&l.diff_id) {
                return Err(RootfsError::MissingLayer(l.diff_id.clone()));
            }
        }
        let lease = Lease {
            image: image.reference.clone(),
            diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
            kind: self.prefer,
        };
        let lease_path = base.join("lease.json");
        // Whole or absent after a power cut (garbage collection reads it to keep layers).
        bramble_proto::fsutil::write_file_atomic(
            &lease_path,
            &serde_json::to_vec(&lease).expect("lease serialises"),
            0o644,
        )
        .map_err(Self::io("cannot write", &lease_path))?;
        let result = match self.prefer {
            RootfsKind::Overlay => self.mount_overlay(&base, image),
            RootfsKind::Copy => self.copy(&rootfs, image),
        };
        if let Err(e) = result {
            let _ = self.remove(id);
            return Err(e);
        }
        Ok(Rootfs { path: rootfs, kind: self.prefer })
    }

    fn mount_overlay(&self, base: &Path, image: &ImageRecord) -> Result<(), RootfsError> {
        let upper = base.join("upper");
        let work = base.join("work");
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(Self::io("cannot create", d))?;
        }
        // overlayfs lists the top layer first.
        let lower: Vec<String> =
            image.layers.iter().rev().map(|l| self.store.layer_dir(&l.diff_id).display().to_string()).collect();
        let data = if lower.is_empty() {
            // An image without layers: an empty lower directory.
            let empty = base.join("empty");
            fs::create_dir_all(&empty).map_err(Self::io("cannot create", &empty))?;
            format!("lowerdir={},upperdir={},workdir={}", empty.display(), upper.display(), work.display())
        } else {
            format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display())
        };
        if data.len() > MAX_MOUNT_DATA {
            return Err(RootfsError::TooManyLayers(lower.len()));
        }
        let rootfs = base.join("rootfs");
        mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
            .map_err(|source| RootfsError::Mount { path: rootfs, source })
    }

    fn copy(&self, rootfs: &Path, image: &ImageRecord) -> Result<(), RootfsError> {
        let opts = UnpackOptions::default();
        for l in &image.layers {
            let reader = self.store.layer_reader(l)?;
            unpack(reader, rootfs, Target::Flat, &opts)
                .map_err(|source| StoreError::Unpack { blob: l.digest.clone(), source })?;
        }
        Ok(())
    }

    /// Unmounts and removes container `id`'s root filesystem; done if it is already gone.
    pub fn remove(&self, id: &str) -> Result<(), RootfsError> {
        check_id(id)?;
        let base = self.dir.join(id);
        let rootfs = base.join("rootfs");
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => return Err(RootfsError::Unmount { path: rootfs, source }),
        }
        remove_tree(&base)?;
        Ok(())
    }

    /// The layers held by containers' root filesystems.
    pub fn leases(&self) -> Vec<Lease> {
        let Ok(rd) = fs::read_dir(&self.dir) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| fs::read(e.path().join("lease.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }
}
