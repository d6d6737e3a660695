//! Containers on the agent: one shim process per container, driven over a unix socket.
//!
//! ```text
//! <run_dir>/<id>/config.json     what to run (ContainerConfig), written by the agent
//! <run_dir>/<id>/shim.sock       the shim's socket
//! <run_dir>/<id>/state.json      the shim's persisted lifecycle (with this boot's id)
//! <run_dir>/<id>/bundle/         the OCI bundle (config.json) libcontainer reads
//! <run_dir>/<id>/libcontainer/   libcontainer's state
//! ```
//!
//! libcontainer forks with a raw `clone3` and must not be called from the multi-threaded agent;
//! the shim (the agent binary re-executed, single-threaded) does it, and outlives the agent.

pub mod build;
pub mod cgroups;
pub mod config;
pub mod devices;
pub mod lifecycle;
pub mod logs;
pub mod probe;
pub mod protocol;
pub mod resolve;
pub mod seccomp;
pub mod shim;
pub mod spec;

use config::{check_id, ContainerConfig};
use protocol::{ShimRequest, ShimResponse, ShimState};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The files of one container's shim.
#[derive(Debug, Clone)]
pub struct ContainerDir(pub PathBuf);

impl ContainerDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn socket(&self) -> PathBuf {
        self.0.join("shim.sock")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn bundle(&self) -> PathBuf {
        self.0.join("bundle")
    }
    pub fn libcontainer(&self) -> PathBuf {
        self.0.join("libcontainer")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    BadId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the shim of {id} did not come up within {secs}s (see {log})")]
    ShimStart { id: String, secs: u64, log: String },
    #[error("the shim of {id} answered: {message}")]
    Shim { id: String, message: String },
}

/// The agent's side: creates shims, talks to them, adopts them after a restart.
#[derive(Debug, Clone)]
pub struct Runtime {
    run_dir: PathBuf,
    /// The shim binary, `bramble-shim`: run as `bramble-shim --dir <dir>` for each container, and
    /// as `bramble-shim --delete --dir <dir>` to remove what a dead shim left.
    bin: PathBuf,
    /// The cgroup containers' cgroups are made under (`[resources] cgroup_parent`).
    cgroup_parent: String,
    /// A shared lock on the parent (`/run/bramble/cgroup-<parent>.lock`) held while the agent runs:
    /// [`Runtime::sweep_orphans`] sweeps only where no other agent of the board uses the parent.
    parent_lock: Arc<Mutex<Option<std::fs::File>>>,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Runtime {
    pub fn new(run_dir: &Path, bin: &Path) -> Runtime {
        Runtime {
            run_dir: run_dir.to_path_buf(),
            bin: bin.to_path_buf(),
            cgroup_parent: config::DEFAULT_CGROUP_PARENT.into(),
            parent_lock: Arc::default(),
        }
    }

    /// Containers' cgroups under `/<parent>/` rather than `/bramble/`.
    pub fn with_cgroup_parent(mut self, parent: &str) -> Runtime {
        self.cgroup_parent = parent.to_string();
        self
    }

    /// Container `id`'s cgroup: as its config says (an older container may have another parent).
    fn cgroup_of(&self, id: &str) -> String {
        std::fs::read(self.dir(id).config())
            .ok()
            .and_then(|b| serde_json::from_slice::<ContainerConfig>(&b).ok())
            .map_or_else(|| format!("/{}/{id}", self.cgroup_parent), |c| c.cgroups_path())
    }

    /// Kills the containers found in this agent's cgroup parent that no shim directory here
    /// knows (`known`: also those of an older agent's directory): a shim gone with its run
    /// directory (removed by hand, a crash mid-cleanup) leaves a container nothing could find
    /// again. Only when no other agent of this board shares the parent (a lock on it says). Returns
    /// the containers killed.
    pub fn sweep_orphans(&self, known: &[String]) -> Vec<String> {
        if !self.lock_parent_alone() {
            tracing::debug!(parent = %self.cgroup_parent, "another agent shares the cgroup parent: no sweep");
            return Vec::new();
        }
        let cgroups = cgroups::CgroupFs::host();
        let parent = format!("/{}", self.cgroup_parent);
        let mut swept = Vec::new();
        let mut shims: Option<std::collections::BTreeSet<String>> = None;
        for id in cgroups.children(&parent) {
            if known.contains(&id) || self.dir(&id).0.exists() || check_id(&id).is_err() {
                continue;
            }
            // A shim of any agent still keeping it (an agent of this machine that is down now
            // and shares the parent): not an orphan.
            if shims.get_or_insert_with(live_shim_ids).contains(&id) {
                continue;
            }
            let path = format!("{parent}/{id}");
            match cgroups.kill_and_remove(&path) {
                Ok(n) => tracing::warn!(
                    id,
                    "killed {n} process(es) of container {id}, found in cgroup {path} without its shim or run directory"
                ),
                Err(e) => tracing::warn!(id, "container {id} in cgroup {path} has no shim; cannot remove it: {e}"),
            }
            swept.push(id);
        }
        self.share_parent();
        swept
    }

    fn lock_file(&self) -> Option<std::fs::File> {
        let dir = Path::new("/run/bramble");
        std::fs::create_dir_all(dir).ok()?;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("cgroup-{}.lock", self.cgroup_parent)))
            .ok()
    }

    /// Takes the parent's lock exclusively if nobody else holds it (keeps it).
    fn lock_parent_alone(&self) -> bool {
        let mut held = self.parent_lock.lock().expect("lock");
        if held.is_none() {
            *held = self.lock_file();
        }
        let Some(f) = held.as_ref() else { return false };
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this struct owns.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    /// Holds the parent's lock shared, as every running agent does.
    fn share_parent(&self) {
        let mut held = self.parent_lock.lock().expect("lock");
        if held.is_none() {
            *held = self.lock_file();
        }
        if let Some(f) = held.as_ref() {
            use std::os::fd::AsRawFd;
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) };
        }
    }

    pub fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir(self.run_dir.join(id))
    }

    /// Starts a shim that creates, starts and keeps `config`'s container.
    pub fn create(&self, config: &ContainerConfig) -> Result<ShimState, RuntimeError> {
        check_id(&config.id).map_err(RuntimeError::BadId)?;
        let config = &ContainerConfig { cgroup_parent: self.cgroup_parent.clone(), ..config.clone() };
        let dir = self.dir(&config.id);
        if dir.0.exists() {
            return Err(RuntimeError::Exists(config.id.clone()));
        }
        let ioe = |what: &str| {
            let what = what.to_string();
            move |source| RuntimeError::Io { what, source }
        };
        let t0 = Instant::now();
        let _ = cgroups::CgroupFs::host().warm_migration_lock();
        std::fs::create_dir_all(&dir.0).map_err(ioe("create the container dir"))?;
        let bytes = serde_json::to_vec_pretty(config).expect("config serialises");
        bramble_proto::fsutil::write_file_replace(&dir.config(), &bytes, 0o600)
            .map_err(ioe("write the container config"))?;
        let log = dir.0.join("shim.log");
        let out = std::fs::File::create(&log).map_err(ioe("create the shim log"))?;
        let err = out.try_clone().map_err(ioe("shim log"))?;
        let status = std::process::Command::new(&self.bin)
            .arg("--dir")
            .arg(&dir.0)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(ioe("start the shim"))?;
        if !status.success() {
            return Err(RuntimeError::ShimStart { id: config.id.clone(), secs: 0, log: log.display().to_string() });
        }
        let started = Instant::now();
        loop {
            if let Ok(s) = self.state(&config.id) {
                tracing::debug!(
                    id = config.id,
                    "shim up in {:.1} ms: its process returned after {:.1} ms",
                    t0.elapsed().as_secs_f64() * 1e3,
                    (started - t0).as_secs_f64() * 1e3
                );
                return Ok(s);
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(RuntimeError::ShimStart {
                    id: config.id.clone(),
                    secs: 10,
                    log: log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn call(&self, id: &str, req: &ShimRequest, timeout: Duration) -> Result<ShimResponse, RuntimeError> {
        let dir = self.dir(id);
        if !dir.0.exists() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        shim::request(&dir.socket(), req, timeout)
            .map_err(|source| RuntimeError::Io { what: format!("talk to the shim of {id}"), source })
    }

    pub fn state(&self, id: &str) -> Result<ShimState, RuntimeError> {
        match self.call(id, &ShimRequest::State, REQUEST_TIMEOUT)? {
            ShimResponse::State(s) => Ok(*s),
            other => Err(RuntimeError::Shim { id: id.into(), message: format!("{other:?}") }),
        }
    }

    fn ok(&self, id: &str, req: ShimRequest) -> Result<(), RuntimeError> {
        match self.call(id, &req, REQUEST_TIMEOUT)? {
            ShimResponse::Ok => Ok(()),
            ShimResponse::Error { message } => Err(RuntimeError::Shim { id: id.into(), message }),
            other => Err(RuntimeError::Shim { id: id.into(), message: format!("{other:?}") }),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; the container is not restarted.
    pub fn stop(&self, id: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        self.ok(id, ShimRequest::Stop { grace_ms: grace.map(|g| g.as_millis() as u64) })
    }

    pub fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.ok(id, ShimRequest::Signal { signal })
    }

    /// Runs `args` in the container; returns (exit code, output, timed out).
    pub fn exec(
        &self,
        id: &str,
        args: Vec<String>,
        env: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, String, bool), RuntimeError> {
        let req = ShimRequest::Exec { args, env, timeout_ms: timeout.as_millis() as u64 };
        match self.call(id, &req, timeout + REQUEST_TIMEOUT)? {
            ShimResponse::Exec { exit_code, output, timed_out } => Ok((exit_code, output, timed_out)),
            ShimResponse::Error { message } => Err(RuntimeError::Shim { id: id.into(), message }),
            other => Err(RuntimeError::Shim { id: id.into(), message: format!("{other:?}") }),
        }
    }

    /// Stops and deletes the container, ends its shim, removes its directory. Done if it is gone.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        if !dir.0.exists() {
            return Ok(());
        }
        let shim = std::fs::read(dir.state())
            .ok()
            .and_then(|b| serde_json::from_slice::<ShimState>(&b).ok())
            .filter(|s| s.boot_id == protocol::boot_id() && shim_of(s.shim_pid, &dir))
            .and_then(|s| proc_stat(s.shim_pid).map(|(_, started)| (s.shim_pid, started)));
        if self.ok(id, ShimRequest::Remove).is_ok() {
            // Done when the shim has exited, not only when its socket is gone: nothing of the
            // container is left once this returns.
            let started = Instant::now();
            let alive = || {
                dir.socket().exists()
                    || shim.is_some_and(|(pid, started)| {
                        proc_stat(pid).is_some_and(|(state, at)| at == started && state != 'Z')
                    })
            };
            while alive() && started.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.cleanup(id);
        Ok(())
    }

    /// Forcefully removes what a dead shim left: the container (killed), its cgroup and state.
    fn cleanup(&self, id: &str) {
        let dir = self.dir(id);
        if let Ok(bytes) = std::fs::read(dir.state()) {
            if let Ok(state) = serde_json::from_slice::<ShimState>(&bytes) {
                let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(state.shim_pid), None).is_ok();
                if alive && state.boot_id == protocol::boot_id() && shim_of(state.shim_pid, &dir) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(state.shim_pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if let lifecycle::Phase::Running { pid, .. } = state.lifecycle.phase {
                    // Only if that pid is still this container's (pids are reused).
                    if state.boot_id == protocol::boot_id() && in_cgroup(pid, &self.cgroup_of(id)) {
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
        }
        // libcontainer's delete (its processes killed, its cgroup removed) runs in the shim's
        // binary, so that the agent's own holds none of libcontainer's code.
        if dir.libcontainer().join(id).exists() {
            let deleted = std::process::Command::new(&self.bin)
                .arg("--delete")
                .arg("--dir")
                .arg(&dir.0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .output();
            match deleted {
                Ok(out) if out.status.success() => {}
                Ok(out) => tracing::warn!(
                    id,
                    "{} --delete failed ({}): {}",
                    self.bin.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => tracing::warn!(id, "cannot run {}: {e}", self.bin.display()),
            }
        }
        // A bundle on a tmpfs (its spec held secrets) goes with its memory.
        let _ = nix::mount::umount2(&dir.bundle(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&dir.0);
    }

    /// The containers with a directory here (live or not).
    pub fn ids(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.run_dir) else { return Vec::new() };
        let mut ids: Vec<String> =
            rd.flatten().filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()).collect();
        ids.sort();
        ids
    }

    /// After an agent (re)start: the state of every live container; what a previous boot or a
    /// dead shim left is cleaned up, without touching live containers.
    pub fn adopt(&self) -> Vec<ShimState> {
        let boot = protocol::boot_id();
        let mut live = Vec::new();
        for id in self.ids() {
            match self.state(&id) {
                Ok(s) if s.boot_id == boot => {
                    if s.protocol != protocol::SHIM_PROTOCOL {
                        let build =
                            if s.version.is_empty() { "an unversioned build".to_string() } else { s.version.clone() };
                        if !protocol::manages(s.protocol) {
                            tracing::warn!(
                                id,
                                "the shim of {id} ({build}) speaks shim protocol {}, older than this agent manages \
                                 ({}): its container keeps running; replace it (bramble rollout restart) to manage it again",
                                s.protocol,
                                protocol::MIN_SHIM_PROTOCOL
                            );
                        } else {
                            tracing::info!(id, "adopted the shim of {id} from {build} (shim protocol {})", s.protocol);
                        }
                    }
                    live.push(s)
                }
                _ => {
                    // A shim that answered nothing: read what it last persisted.
                    let persisted = std::fs::read(self.dir(&id).state())
                        .ok()
                        .and_then(|b| serde_json::from_slice::<ShimState>(&b).ok());
                    match persisted {
                        Some(s)
                            if s.boot_id == boot && !matches!(s.lifecycle.phase, lifecycle::Phase::Running { .. }) =>
                        {
                            // It ended while nobody listened; keep its record (the exit code) for the agent.
                            live.push(s);
                        }
                        _ => {
                            tracing::info!(id, "removing a container left by a dead shim or an earlier boot");
                            self.cleanup(&id);
                        }
                    }
                }
            }
        }
        live
    }
}

/// Whether process `pid` is in the cgroup `path` (in any hierarchy).
fn in_cgroup(pid: i32, path: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|s| s.lines().any(|l| l.rsplit(':').next() == Some(path)))
}

/// A process's state letter and start time (in clock ticks since boot), from `/proc/PID/stat`:
/// the pair tells the same process from a later one with a reused pid, even while it exits (its
/// `exe` link is gone before it becomes a zombie).
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), starttime field 22.
    Some((fields.first()?.chars().next()?, fields.get(19)?.parse().ok()?))
}

/// The shim binary an agent (or a leader with its embedded agent) running from `exe` starts:
/// `bramble-shim` beside it, as the packages install it and `cargo build` leaves it. Neither the
/// agent nor the leader can be a shim themselves: that would put libcontainer's code in the
/// agent's binary, and the whole agent in every container's memory.
pub fn shim_binary_for(exe: &Path) -> Result<PathBuf, String> {
    let beside = exe.with_file_name("bramble-shim");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(format!(
            "{} is missing: every container's shim runs it; install it beside {} (the packages do; \
             copy it from the same build)",
            beside.display(),
            exe.display()
        ))
    }
}

/// The containers some live shim keeps (any agent's), by id.
fn live_shim_ids() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter_map(|cmdline| shim_container(&cmdline))
        .collect()
}

/// The container a process keeps, if its command line (`/proc/<pid>/cmdline`) is a shim's: this
/// build's `bramble-shim --dir <…>/<id>`, or an older build's, where the agent's (or the leader's,
/// for its embedded agent) own binary ran as `bramble-agent shim --dir <…>/<id>` (shim protocol 0).
/// Such a shim holds no lock on the cgroup parent, so the sweep must know it by its command line.
fn shim_container(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let first = args.first()?;
    let shim = first.ends_with(b"bramble-shim")
        || (args.get(1) == Some(&&b"shim"[..])
            && (first.ends_with(b"bramble-agent") || first.ends_with(b"bramble-leader")));
    if !shim {
        return None;
    }
    let w = args.windows(2).find(|w| w[0] == b"--dir")?;
    let name = Path::new(std::ffi::OsStr::from_bytes(w[1])).file_name()?;
    Some(name.to_string_lossy().to_string())
}

/// Whether `pid` is the shim of container dir `dir` (so a recycled pid is never killed). Told by
/// its command line (`… --dir <dir>`), not its binary: a shim started by an older build, whose
/// binary an upgrade has since replaced, is still recognised.
fn shim_of(pid: i32, dir: &ContainerDir) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let want = dir.0.as_os_str().as_encoded_bytes();
    args.windows(2).any(|w| w[0] == b"--dir" && w[1] == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_knows_the_shims_of_this_build_and_of_older_ones_by_their_command_line() {
        let line = |args: &[&str]| args.join("\0").into_bytes();
        let of = |args: &[&str]| shim_container(&line(args));
        assert_eq!(of(&["/usr/bin/bramble-shim", "--dir", "/run/bramble/x/shims/web-1"]).as_deref(), Some("web-1"));
        // Protocol 0: the agent's (or the leader's) own binary was the shim. It takes no lock on
        // the cgroup parent, so missing it here would kill its container.
        assert_eq!(
            of(&["/usr/bin/bramble-agent", "shim", "--dir", "/var/lib/bramble/shims/a-2"]).as_deref(),
            Some("a-2")
        );
        assert_eq!(of(&["/opt/old/bramble-leader", "shim", "--dir", "/d/agent/shims/b-3"]).as_deref(), Some("b-3"));
        // Not shims: an agent running, another program with a --dir, a shim without its dir.
        assert_eq!(of(&["/usr/bin/bramble-agent", "run", "--dir", "/var/lib/bramble/shims/a-2"]), None);
        assert_eq!(of(&["/bin/sh", "shim", "--dir", "/tmp/x"]), None);
        assert_eq!(of(&["/usr/bin/bramble-shim"]), None);
        assert_eq!(of(&[]), None);
    }

    #[test]
    fn the_shim_binary_is_beside_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("bramble-agent");
        std::fs::write(&agent, b"").unwrap();
        let e = shim_binary_for(&agent).unwrap_err();
        assert!(e.contains("bramble-shim is missing") && e.contains("install it beside"), "{e}");
        std::fs::write(dir.path().join("bramble-shim"), b"").unwrap();
        assert_eq!(shim_binary_for(&agent).unwrap(), dir.path().join("bramble-shim"));
    }

    #[test]
    fn a_shim_is_told_by_its_container_dir_not_its_binary() {
        let dir = ContainerDir(PathBuf::from("/var/lib/bramble/agent/shims/web-1"));
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5", "bramble-agent-old", "shim", "--dir", "/var/lib/bramble/agent/shims/web-1"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            shim_of(pid, &dir)
        });
        assert!(!shim_of(pid, &ContainerDir(PathBuf::from("/var/lib/bramble/agent/shims/web-2"))));
        assert!(!shim_of(pid, &ContainerDir(PathBuf::from("/var/lib/bramble/agent/shims/web"))));
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen, "the process with --dir <dir> is that container's shim");
        assert!(!shim_of(pid, &dir), "a gone process is no shim");
    }
}
