//! Named network namespaces for pods: made on a thread of their own (`unshare`), kept alive by a
//! bind mount of that thread's namespace onto a file, entered by a short-lived thread. A pod's
//! namespace outlives its container's restarts, and the agent's.

use super::NetError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::path::Path;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, error: source }
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Io { what, error: e.into() }
}

/// Whether `path` holds a live namespace (a bind mount, not the empty file under it).
pub fn exists(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else { return false };
    // An nsfs file: the namespace is held there.
    nix::sys::statfs::fstatfs(&f).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Makes a new network namespace held at `path` (an empty file is created for the mount).
pub fn create(path: &Path) -> Result<(), NetError> {
    if exists(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    std::fs::File::create(path).map_err(io(format!("create {}", path.display())))?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> Result<(), NetError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys("make a network namespace"))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(Some(own.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(sys(format!("hold the namespace at {}", target.display())))
    })
    .join()
    .map_err(|_| NetError::Missing("the namespace thread panicked".into()))?
}

/// Releases the namespace held at `path` and removes the file.
pub fn delete(path: &Path) -> Result<(), NetError> {
    if exists(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(sys(format!("release {}", path.display())))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(format!("remove {}", path.display()))(e)),
        _ => Ok(()),
    }
}

/// Runs `f` on a thread inside the namespace held at `path`.
pub fn inside<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let ns = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    std::thread::spawn(move || {
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(sys("enter the pod's network namespace"))?;
        f()
    })
    .join()
    .map_err(|_| NetError::Missing("the namespace thread panicked".into()))?
}
