//! Volumes on a board that outlive a container: named local volumes, directories the agent
//! keeps under `<data>/volumes/<NAME>` across container restarts, agent restarts and app updates
//! (removed only by `bramble volume rm`), and host paths an app names. Nothing is followed
//! through a symlink: a volume directory or a host path with a symlink anywhere in it is
//! refused, so no mount can lead a container out into the rest of the board.

use bramble_proto::names::Name;
use bramble_proto::wire::VolumeInfo;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name}: {what}")]
    Refused { name: String, what: String },
    #[error("volume {name}: {what}: {source}")]
    Io { name: String, what: String, source: std::io::Error },
    #[error("volume {0} is not on this node")]
    NotFound(String),
}

/// The local volumes under one directory, and the host paths the board allows.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
    /// Directories no host path may be, be inside or hold: (what, normalized path); the agent's
    /// data dir first.
    protected: Vec<(String, String)>,
    /// The board's consent: host paths must be inside one of these (normalized).
    allowed: Vec<String>,
}

fn io(name: &str, what: &str) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (name, what) = (name.to_string(), what.to_string());
    move |source| VolumeError::Io { name, what, source }
}

/// Refuses `path` unless it is a directory reached without a symlink in any component.
fn real_dir(name: &str, path: &Path) -> Result<(), VolumeError> {
    let mut at = PathBuf::new();
    for c in path.components() {
        at.push(c);
        if matches!(c, Component::RootDir) {
            continue;
        }
        let md = std::fs::symlink_metadata(&at).map_err(io(name, &format!("{}", at.display())))?;
        if md.file_type().is_symlink() {
            return Err(VolumeError::Refused {
                name: name.into(),
                what: format!("{} is a symlink; volume paths may not contain one", at.display()),
            });
        }
    }
    if !std::fs::symlink_metadata(path).map_err(io(name, "stat"))?.is_dir() {
        return Err(VolumeError::Refused { name: name.into(), what: format!("{} is not a directory", path.display()) });
    }
    Ok(())
}

impl Volumes {
    /// Local volumes under `data_dir`; no host path allowed.
    pub fn new(data_dir: &Path) -> Volumes {
        let protected = bramble_proto::hostpath::normalize(&data_dir.display().to_string())
            .map(|d| vec![("the agent's data dir".to_string(), d)])
            .unwrap_or_default();
        Volumes { root: data_dir.join("volumes"), protected, allowed: Vec::new() }
    }

    /// As the board's config says: the host paths it allows (`[volumes] host_paths`) and the
    /// directories of Bramble's own.
    pub fn from_config(config: &crate::config::AgentConfig) -> Volumes {
        Volumes {
            root: config.data_dir.join("volumes"),
            protected: config.protected_dirs(),
            allowed: config.volumes.host_paths.clone(),
        }
    }

    /// Where the tmpfs volumes shared by a replica's containers are mounted.
    fn shared_root(&self, replica: &str) -> Result<PathBuf, VolumeError> {
        let ok = !replica.is_empty()
            && replica.len() <= 128
            && replica.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(VolumeError::Refused { name: replica.into(), what: "not a replica name".into() });
        }
        let data = self.root.parent().unwrap_or(&self.root);
        Ok(data.join("pod-tmpfs").join(replica))
    }

    /// Tmpfs volume `index` of `replica`, shared by its containers: one tmpfs of `size` bytes
    /// (owned by `uid:gid`), mounted the first time a container of the replica asks for it.
    pub fn prepare_shared_tmpfs(
        &self,
        replica: &str,
        index: usize,
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<PathBuf, VolumeError> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.shared_root(replica)?.join(index.to_string());
        let name = format!("tmpfs {index} of {replica}");
        std::fs::create_dir_all(&dir).map_err(io(&name, "create the mount point"))?;
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).map_err(io(&name, "stat"));
        if dev(&dir)? == dev(dir.parent().unwrap_or(&dir))? {
            let options = format!("size={size},mode=0755,uid={uid},gid={gid}");
            nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(|e| io(&name, "mount a tmpfs")(std::io::Error::from(e)))?;
        }
        Ok(dir)
    }

    /// Unmounts `replica`'s shared tmpfs volumes (their files go with them).
    pub fn release_shared_tmpfs(&self, replica: &str) {
        let Ok(root) = self.shared_root(replica) else { return };
        let Ok(rd) = std::fs::read_dir(&root) else { return };
        for e in rd.flatten() {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(e.path());
        }
        let _ = std::fs::remove_dir(&root);
    }

    /// Local volume `name`'s directory, made (owned by `uid:gid`, 0755) if it is not there.
    pub fn prepare_local(&self, name: &str, uid: u32, gid: u32) -> Result<PathBuf, VolumeError> {
        Name::new(name).map_err(|e| VolumeError::Refused { name: name.into(), what: e.to_string() })?;
        std::fs::create_dir_all(&self.root).map_err(io(name, "create the volumes directory"))?;
        let dir = self.root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io(name, "chown"))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io(name, "chmod"))?;
                tracing::info!(volume = name, "local volume created");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(name, "create")(e)),
        }
        real_dir(name, &dir)?;
        Ok(dir)
    }

    /// A host volume's path, checked where it lands: normalized, not the board's system, not
    /// Bramble's data, inside a directory the board allows, a directory, no symlink on the way.
    pub fn check_host(&self, path: &str) -> Result<PathBuf, VolumeError> {
        let shown: String = path.chars().take(256).collect();
        let refused = |what: String| VolumeError::Refused { name: shown.clone(), what };
        let protected: Vec<(&str, &str)> = self.protected.iter().map(|(w, d)| (w.as_str(), d.as_str())).collect();
        let p = bramble_proto::hostpath::check(path, &protected).map_err(|e| refused(e.to_string()))?;
        if !bramble_proto::hostpath::allowed(&p, self.allowed.iter().map(String::as_str)) {
            let allowed = if self.allowed.is_empty() { "none".to_string() } else { self.allowed.join(", ") };
            return Err(refused(format!(
                "this board does not allow mounting {p} (allowed: {allowed}); add it to [volumes] host_paths in its agent.toml"
            )));
        }
        let p = PathBuf::from(p);
        if !p.exists() && std::fs::symlink_metadata(&p).is_err() {
            let what = "the directory does not exist on this node (make it, or label only the nodes that have it)";
            return Err(refused(what.into()));
        }
        real_dir(&shown, &p)?;
        Ok(p)
    }

    /// The names of the local volumes here.
    pub fn names(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut out: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        out
    }

    /// Each local volume with its size (`node` and `used_by` are the leader's to fill).
    pub fn list(&self) -> Vec<VolumeInfo> {
        self.names()
            .into_iter()
            .map(|name| {
                let dir = self.root.join(&name);
                let created_ms = std::fs::symlink_metadata(&dir)
                    .ok()
                    .and_then(|m| m.created().or_else(|_| m.modified()).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                let (size, files) = usage(&dir);
                VolumeInfo { node: String::new(), name, size, files, created_ms, used_by: Vec::new() }
            })
            .collect()
    }

    /// Removes local volume `name` and everything in it. Symlinks inside are removed, never
    /// followed. It goes under a hidden name first, so a half-done removal is not a volume.
    pub fn remove(&self, name: &str) -> Result<u64, VolumeError> {
        Name::new(name).map_err(|e| VolumeError::Refused { name: name.into(), what: e.to_string() })?;
        let dir = self.root.join(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(VolumeError::NotFound(name.into())),
        }
        let (size, _) = usage(&dir);
        let doomed = self.root.join(format!(".removing-{name}"));
        let _ = std::fs::remove_dir_all(&doomed);
        std::fs::rename(&dir, &doomed).map_err(io(name, "rename"))?;
        std::fs::remove_dir_all(&doomed).map_err(io(name, "remove"))?;
        tracing::info!(volume = name, "local volume removed");
        Ok(size)
    }
}

/// Bytes and files under `dir`, without following symlinks or crossing into other filesystems.
fn usage(dir: &Path) -> (u64, u64) {
    let Ok(top) = std::fs::symlink_metadata(dir) else { return (0, 0) };
    let dev = top.dev();
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                if m.dev() == dev {
                    stack.push(e.path());
                }
            } else {
                bytes += m.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_volumes_are_made_once_kept_listed_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let v = Volumes::new(t.path());
        let dir = v.prepare_local("db", 1000, 1000).unwrap();
        std::fs::write(dir.join("x"), b"12345").unwrap();
        // A second prepare keeps what is there.
        assert_eq!(v.prepare_local("db", 1000, 1000).unwrap(), dir);
        assert_eq!(std::fs::read(dir.join("x")).unwrap(), b"12345");
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), 1000);
        let l = v.list();
        assert_eq!((l[0].name.as_str(), l[0].size, l[0].files), ("db", 5, 1));
        assert!(matches!(v.prepare_local("../etc", 0, 0), Err(VolumeError::Refused { .. })));
        assert_eq!(v.remove("db").unwrap(), 5);
        assert!(v.names().is_empty());
        assert!(matches!(v.remove("db"), Err(VolumeError::NotFound(_))));
    }

    /// Volumes under `data` that allow host paths under `allowed`.
    fn allowing(data: &Path, allowed: &Path) -> Volumes {
        let mut v = Volumes::new(data);
        v.allowed = vec![allowed.display().to_string()];
        v
    }

    #[test]
    fn host_paths_need_the_boards_consent_and_never_reach_the_system() {
        let t = tempfile::tempdir().unwrap();
        let srv = t.path().join("srv");
        std::fs::create_dir_all(srv.join("media")).unwrap();
        let none = Volumes::new(&t.path().join("data"));
        let e = none.check_host(srv.join("media").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("does not allow mounting") && e.contains("(allowed: none)"), "{e}");
        let v = allowing(&t.path().join("data"), &srv);
        let doubled = format!("/{}//media/", srv.display());
        assert_eq!(v.check_host(&doubled).unwrap(), srv.join("media"), "normalized, then allowed");
        // Whatever the board allows, never the system, a parent of it, or the data dir.
        let mut all = Volumes::new(&t.path().join("data"));
        all.allowed = vec!["/".into()];
        for bad in ["/etc", "//etc", "/var/lib", "/var", "/usr/", "/root", "/"] {
            assert!(all.check_host(bad).is_err(), "{bad}");
        }
        let e = all.check_host(t.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("holds the agent's data dir"), "{e}");
        // A name from the network is cut in the error.
        let long = format!("/srv/{}", "x".repeat(5000));
        assert!(all.check_host(&long).unwrap_err().to_string().len() < 600);
    }

    #[test]
    fn symlinks_are_refused_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let v = allowing(&t.path().join("data"), t.path());
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(t.path().join("data/volumes")).unwrap();
        // A volume directory replaced by a symlink to elsewhere.
        std::os::unix::fs::symlink(&outside, t.path().join("data/volumes/evil")).unwrap();
        let e = v.prepare_local("evil", 0, 0).unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
        // A host path through a symlink.
        std::os::unix::fs::symlink(&outside, t.path().join("link")).unwrap();
        let e = v.check_host(t.path().join("link/sub").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("does not exist") || e.contains("symlink"), "{e}");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        let e = v.check_host(t.path().join("link/sub").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
        assert_eq!(v.check_host(outside.to_str().unwrap()).unwrap(), outside);
        let e = v.check_host(t.path().join("data/volumes").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("is inside the agent's data dir"), "{e}");
        // Removing a volume that holds a symlink removes the link, not its target.
        let d = v.prepare_local("ok", 0, 0).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("l")).unwrap();
        v.remove("ok").unwrap();
        assert!(outside.join("keep").exists());
    }
}
