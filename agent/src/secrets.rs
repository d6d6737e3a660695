//! Secrets on a board: kept in memory as the leader sent them (only those of replicas this board
//! runs), and written only to a tmpfs per replica that is bind-mounted read-only into its container
//! at `/run/secrets/<NAME>/<KEY>` (0400, owned by the container's user). Never in `desired.json`,
//! never on the data dir's disk: the tmpfs lives in memory and goes with the replica. After an
//! agent restart the memory is empty until the leader sends them again; mounted files stay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A secret's values and version, as the leader sent them.
#[derive(Clone, PartialEq, Eq)]
struct Held {
    version: u64,
    values: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("waiting for {what} {name} from the leader")]
    Missing { what: &'static str, name: String },
    #[error("secrets of {id}: {what}: {source}")]
    Io { id: String, what: String, source: std::io::Error },
}

/// The secrets this board holds. The tmpfs mounts it made are found on disk (`root/<id>/<name>`),
/// so an agent restarted under running containers still updates their files.
pub struct Secrets {
    /// Under the data dir: mount points only (each a tmpfs).
    root: PathBuf,
    held: Mutex<HashMap<String, Held>>,
    /// `secret`, or `config` for configs, which travel and land the same way but are readable by
    /// anyone in the container (0444).
    what: &'static str,
    file_mode: u32,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<String> = self.held.lock().map(|h| h.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("Secrets").field("root", &self.root).field("held", &held).finish_non_exhaustive()
    }
}

impl Secrets {
    pub fn new(root: &Path) -> Secrets {
        Secrets { root: root.to_path_buf(), held: Mutex::default(), what: "secret", file_mode: 0o400 }
    }

    /// The same for configs: files 0444, directories 0555.
    pub fn configs(root: &Path) -> Secrets {
        Secrets { root: root.to_path_buf(), held: Mutex::default(), what: "config", file_mode: 0o444 }
    }

    /// The tmpfs of replica `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// What the leader sent: new or changed secrets, and those no longer needed here (`full`:
    /// `put` is every one needed here; any other held is dropped). Files of running replicas are
    /// rewritten in place: the (container id, name) of each rewritten.
    pub fn update(
        &self,
        put: Vec<(String, u64, BTreeMap<String, Vec<u8>>)>,
        drop: &[String],
        full: bool,
    ) -> Vec<(String, String)> {
        let mut changed = BTreeSet::new();
        {
            let mut held = self.held.lock().expect("not poisoned");
            let unchanged = |held: &HashMap<String, Held>, name: &str, version: u64| {
                held.get(name).is_some_and(|h| h.version == version)
            };
            if full {
                let needed: BTreeSet<&str> = put.iter().map(|(n, _, _)| n.as_str()).collect();
                let stale: Vec<String> = held.keys().filter(|n| !needed.contains(n.as_str())).cloned().collect();
                if !stale.is_empty() {
                    tracing::info!(dropped = ?stale, "{}s no replica here uses (left from an earlier session)", self.what);
                }
                held.retain(|name, _| needed.contains(name.as_str()));
            }
            for (name, version, values) in put {
                if !unchanged(&held, &name, version) {
                    changed.insert(name.clone());
                }
                held.insert(name, Held { version, values });
            }
            for name in drop {
                held.remove(name);
            }
        }
        // Every replica's tmpfs that holds a changed secret, with the owner its files have.
        let mut rewritten = Vec::new();
        for replica in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let id = replica.file_name().to_string_lossy().to_string();
            for name in &changed {
                let Ok(meta) = std::fs::metadata(replica.path().join(name)) else { continue };
                let (uid, gid) =
                    (std::os::unix::fs::MetadataExt::uid(&meta), std::os::unix::fs::MetadataExt::gid(&meta));
                match self.write_one(&id, name, uid, gid) {
                    Ok(()) => rewritten.push((id.clone(), name.clone())),
                    Err(e) => tracing::warn!(replica = %id, secret = %name, "cannot update the secret's files: {e}"),
                }
            }
        }
        rewritten
    }

    /// Mounts a tmpfs for replica `id` with `names`' files owned by `uid:gid`; the directory to
    /// bind into the container (None: it uses no secret). Missing secrets are an error to wait on.
    pub fn prepare(&self, id: &str, names: &[String], uid: u32, gid: u32) -> Result<Option<PathBuf>, SecretsError> {
        if names.is_empty() {
            return Ok(None);
        }
        let size: usize = {
            let held = self.held.lock().expect("not poisoned");
            let mut size = 0;
            for n in names {
                let h = held.get(n).ok_or_else(|| SecretsError::Missing { what: self.what, name: n.clone() })?;
                size += h.values.values().map(Vec::len).sum::<usize>();
            }
            size
        };
        let dir = self.dir(id);
        let io = |what: &str| {
            let what = what.to_string();
            move |source| SecretsError::Io { id: id.to_string(), what, source }
        };
        self.release(id);
        std::fs::create_dir_all(&dir).map_err(io("create the mount point"))?;
        // Room for updates that grow (two copies while a file is replaced) and the directories.
        let bytes = (size * 2 + (64 << 10)).next_multiple_of(4096);
        let options = format!("size={bytes},mode=0711,uid=0,gid=0");
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        )
        .map_err(|e| SecretsError::Io {
            id: id.to_string(),
            what: "mount a tmpfs".into(),
            source: e.into(),
        })?;
        for n in names {
            if let Err(e) = self.write_one(id, n, uid, gid) {
                self.release(id);
                return Err(e);
            }
        }
        Ok(Some(dir))
    }

    /// Writes secret `name`'s files into replica `id`'s tmpfs, each replaced whole (rename).
    fn write_one(&self, id: &str, name: &str, uid: u32, gid: u32) -> Result<(), SecretsError> {
        use std::os::unix::fs::{chown, PermissionsExt};
        let io = |what: String| move |source| SecretsError::Io { id: id.to_string(), what, source };
        let held = self.held.lock().expect("not poisoned").get(name).cloned();
        let Some(held) = held else { return Err(SecretsError::Missing { what: self.what, name: name.to_string() }) };
        let dir = self.dir(id).join(name);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        chown(&dir, Some(uid), Some(gid)).map_err(io(format!("chown {}", dir.display())))?;
        // Directories: read and search for whoever may read the files.
        let dir_mode = self.file_mode | ((self.file_mode & 0o444) >> 2);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode))
            .map_err(io(format!("chmod {}", dir.display())))?;
        for (key, value) in &held.values {
            let tmp = dir.join(format!(".{key}.new"));
            std::fs::write(&tmp, value).map_err(io(format!("write {}", tmp.display())))?;
            chown(&tmp, Some(uid), Some(gid)).map_err(io(format!("chown {}", tmp.display())))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(self.file_mode))
                .map_err(io(format!("chmod {}", tmp.display())))?;
            std::fs::rename(&tmp, dir.join(key)).map_err(io(format!("rename into {}", dir.display())))?;
        }
        // Keys the secret no longer has go.
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            if !held.values.contains_key(&file) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Unmounts replica `id`'s tmpfs (its files vanish with it) and removes the mount point.
    pub fn release(&self, id: &str) {
        let dir = self.dir(id);
        if dir.exists() {
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(s: &Secrets) -> Vec<String> {
        let mut v: Vec<String> = s.held.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    #[test]
    fn a_full_update_drops_what_an_earlier_session_left_and_a_delta_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path());
        let one = |n: &str, v: u64| (n.to_string(), v, BTreeMap::from([("k".to_string(), b"v".to_vec())]));
        s.update(vec![one("a", 1), one("b", 1)], &[], false);
        assert_eq!(held(&s), ["a", "b"]);
        s.update(vec![one("c", 1)], &[], false);
        assert_eq!(held(&s), ["a", "b", "c"], "a change keeps the others");
        // A new session's first message: exactly these are needed here.
        s.update(vec![one("a", 2)], &[], true);
        assert_eq!(held(&s), ["a"]);
        assert_eq!(s.held.lock().unwrap()["a"].version, 2);
        s.update(vec![], &[], true);
        assert!(held(&s).is_empty(), "none needed: none held");
    }
}
