//! The shim: one single-threaded process per container (`bramble-shim`, no tokio).
//!
//! It is the container's parent and sub-reaper. It creates and starts the container with
//! libcontainer, copies its output into a capped log file, waits for it, records how it ended
//! (exit code, signal, OOM kill), restarts it by its policy with backoff, runs its probes and
//! execs, and answers the agent on a unix socket. It outlives the agent: `kill -9` of the agent
//! touches no container, and probes keep running.
//!
//! One `poll(2)` loop over: the socket, clients, the container's stdout/stderr pipes, exec output
//! pipes, probe sockets, and a signalfd for SIGCHLD/SIGTERM. SIGCHLD and SIGTERM are blocked except while
//! libcontainer forks, so containers never inherit a blocked mask.

use super::cgroups::CgroupFs;
use super::config::ContainerConfig;
use super::lifecycle::{BackoffPolicy, Exit, Lifecycle, Phase};
use super::logs::LogWriter;
use super::probe::{NetAttempt, ProbeAction, Step, Tracker, Verdict};
use super::protocol::{boot_id, ShimRequest, ShimResponse, ShimState, MAX_EXEC_OUTPUT};
use super::{spec, ContainerDir};
use bramble_proto::time::now_ms;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("{0}")]
    Config(String),
    #[error("deleting the container: {0}")]
    Delete(String),
}

/// `bramble-shim --delete --dir DIR`, run by the agent when a container's shim is gone: libcontainer's
/// forced delete of what it left (the container's processes killed, its cgroup and state removed).
/// Nothing to delete is not an error.
pub fn delete(dir: &ContainerDir) -> Result<(), ShimError> {
    let Some(id) = dir.0.file_name() else {
        return Err(ShimError::Config(format!("{} names no container", dir.0.display())));
    };
    let state = dir.libcontainer().join(id);
    if !state.exists() {
        return Ok(());
    }
    let mut container = Container::load(state).map_err(|e| ShimError::Delete(e.to_string()))?;
    let deleted = container.delete(true).map_err(|e| ShimError::Delete(e.to_string()));
    let cgroup = std::fs::read(dir.config())
        .ok()
        .and_then(|b| serde_json::from_slice::<ContainerConfig>(&b).ok())
        .map_or_else(|| format!("/bramble/{}", id.to_string_lossy()), |c| c.cgroups_path());
    let _ = CgroupFs::host().remove_empty(&cgroup);
    deleted
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

/// Whether a filesystem is mounted at `path` (a shim started again finds its bundle's tmpfs).
fn is_mount_point(path: &std::path::Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&p)))
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Sys { what, source }
}

/// A running exec: for a client, an exec probe, or an attached client (`bramble exec`).
struct Exec {
    pid: Pid,
    /// What it writes (an attached client reads its output itself).
    output: Option<OwnedFd>,
    buf: Vec<u8>,
    owner: ExecOwner,
    deadline_ms: u64,
    status: Option<i32>,
    timed_out: bool,
}

enum ExecOwner {
    Client(UnixStream),
    Probe(usize),
    /// Has the command's standard streams; gets its exit code.
    Attached(UnixStream),
}

struct Shim {
    dir: ContainerDir,
    config: ContainerConfig,
    lifecycle: Lifecycle,
    log: LogWriter,
    cgroups: CgroupFs,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// When a stop escalates to SIGKILL.
    kill_at_ms: Option<u64>,
    removing: bool,
    execs: Vec<Exec>,
    clients: HashMap<i32, (UnixStream, Vec<u8>)>,
    boot_id: String,
    probes: Tracker,
    net_probes: Vec<NetAttempt>,
    /// Why the running container is being killed by a probe.
    killing_for: Option<String>,
    /// Numbers the files of attached execs.
    attach_seq: u64,
}

extern "C" fn on_sigpipe(_: nix::libc::c_int) {}

/// A Rust program ignores SIGPIPE, and an ignored signal stays ignored across exec: every
/// container and exec would start with SIGPIPE ignored, and `yes | head` would never end. A
/// handler that does nothing keeps the shim's own writes safe (they fail with EPIPE) and is reset
/// to the default by exec, so what runs in a container gets the SIGPIPE any program expects.
fn catch_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let action = SigAction::new(SigHandler::Handler(on_sigpipe), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGPIPE, &action) }.map(|_| ())
}

fn blocked() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGCHLD);
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s
}

/// Runs the shim for the container in `dir` until it is removed. Forks once first, so the agent
/// gets its child back at once and the shim is adopted by init (or the sub-reaper).
pub fn main(dir: ContainerDir) -> Result<(), ShimError> {
    // SAFETY: the process is single-threaded here (the agent's main has not started a runtime).
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        nix::unistd::ForkResult::Parent { .. } => std::process::exit(0),
        nix::unistd::ForkResult::Child => {}
    }
    nix::unistd::setsid().map_err(sys("setsid"))?;
    // The agent keeps huge pages out of itself; its containers get the system's setting.
    bramble_daemon::alloc::allow_huge_pages();
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("become a sub-reaper"))?;
    catch_sigpipe().map_err(sys("handle SIGPIPE"))?;
    let config: ContainerConfig =
        serde_json::from_slice(&std::fs::read(dir.config()).map_err(io("read the container config"))?)
            .map_err(|e| ShimError::Config(format!("container config: {e}")))?;
    let spec = spec::build(&config).map_err(ShimError::Config)?;
    std::fs::create_dir_all(dir.bundle()).map_err(io("create the bundle"))?;
    if config.holds_secrets() && !is_mount_point(&dir.bundle()) {
        // The spec holds secret values: its bundle (and the exec processes' files) live in memory.
        nix::mount::mount(
            Some("tmpfs"),
            &dir.bundle(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some("size=4m,mode=0700"),
        )
        .map_err(sys("mount a tmpfs for the bundle"))?;
    }
    spec.save(dir.bundle().join("config.json"))
        .map_err(|e| ShimError::Config(format!("write the runtime spec: {e}")))?;
    let log = LogWriter::open(config.log.path.clone(), config.log.max_bytes, config.log.max_files)
        .map_err(io("open the log"))?;
    let backoff = BackoffPolicy { base_ms: config.backoff_base_ms.unwrap_or(10_000), ..Default::default() };
    let config_probes = config.probes.clone();
    let mut shim = Shim {
        lifecycle: Lifecycle::new(config.restart, backoff),
        dir,
        config,
        log,
        cgroups: CgroupFs::host(),
        stdout: None,
        stderr: None,
        kill_at_ms: None,
        removing: false,
        execs: Vec::new(),
        clients: HashMap::new(),
        boot_id: boot_id(),
        probes: Tracker::new(&config_probes),
        net_probes: Vec::new(),
        killing_for: None,
        attach_seq: 0,
    };
    let _ = std::fs::remove_file(shim.dir.socket());
    let listener = UnixListener::bind(shim.dir.socket()).map_err(io("bind the shim socket"))?;
    listener.set_nonblocking(true).map_err(io("socket"))?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked()), None).map_err(sys("block signals"))?;
    let sigfd =
        SignalFd::with_flags(&blocked(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(sys("signalfd"))?;
    shim.persist();
    shim.run(&listener, &sigfd)
}

impl Shim {
    fn persist(&self) {
        let state = self.state(false);
        let bytes = serde_json::to_vec(&state).expect("state serialises");
        let _ = bramble_proto::fsutil::write_file_atomic(&self.dir.state(), &bytes, 0o600);
    }

    fn state(&self, with_stats: bool) -> ShimState {
        let stats = if with_stats && matches!(self.lifecycle.phase, Phase::Running { .. }) {
            self.cgroups.stats(&self.config.cgroups_path()).ok()
        } else {
            None
        };
        ShimState {
            id: self.config.id.clone(),
            shim_pid: std::process::id() as i32,
            protocol: super::protocol::SHIM_PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: self.boot_id.clone(),
            lifecycle: self.lifecycle.clone(),
            stats,
            ready: self.probes.ready(self.running_pid().is_some() && self.killing_for.is_none()),
            probes: self.probes.statuses(),
        }
    }

    fn running_pid(&self) -> Option<Pid> {
        match self.lifecycle.phase {
            Phase::Running { pid, .. } => Some(Pid::from_raw(pid)),
            _ => None,
        }
    }

    fn run(&mut self, listener: &UnixListener, sigfd: &SignalFd) -> Result<(), ShimError> {
        loop {
            let now = now_ms();
            if self.lifecycle.can_start(now) {
                self.start();
                self.persist();
            }
            if let Some(at) = self.kill_at_ms {
                if now >= at {
                    if let Some(pid) = self.running_pid() {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                    self.kill_at_ms = None;
                }
            }
            self.expire_execs(now);
            self.run_probes(now);
            if self.removing && self.running_pid().is_none() && self.execs.is_empty() {
                return self.finish_removal();
            }
            // Probes that may not run now must not wake the loop (it would spin until the stop).
            let probe_due = self.probes.next_due().filter(|_| self.probing());
            let mut wake = [self.lifecycle.wake_at(), self.kill_at_ms, probe_due]
                .into_iter()
                .flatten()
                .chain(self.execs.iter().map(|e| e.deadline_ms))
                .chain(self.net_probes.iter().map(|a| a.deadline_ms))
                .min();
            if self.stdout.is_some() || self.stderr.is_some() {
                wake = Some(wake.unwrap_or(u64::MAX).min(now + 1000));
            }
            let timeout = match wake {
                Some(at) => {
                    PollTimeout::try_from(at.saturating_sub(now).min(60_000) as i32).unwrap_or(PollTimeout::NONE)
                }
                None => PollTimeout::from(60_000u16),
            };
            let readable = self.wait(listener, sigfd, timeout)?;
            for r in readable {
                match r {
                    Ready::Signal => self.on_signals(sigfd),
                    Ready::Listener => self.accept(listener),
                    Ready::Output(stream) => self.drain(stream),
                    Ready::ExecOutput(i) => self.drain_exec(i),
                    Ready::Client(fd) => self.read_client(fd),
                    Ready::Probe(i) => self.advance_probe(i),
                }
            }
            self.finish_net_probes();
            self.reap();
        }
    }

    fn wait(&self, listener: &UnixListener, sigfd: &SignalFd, timeout: PollTimeout) -> Result<Vec<Ready>, ShimError> {
        let mut kinds = vec![Ready::Signal, Ready::Listener];
        let mut fds =
            vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN), PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        for (i, fd) in [&self.stdout, &self.stderr].into_iter().enumerate() {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                kinds.push(Ready::Output(i));
            }
        }
        for (i, e) in self.execs.iter().enumerate() {
            if let Some(output) = &e.output {
                fds.push(PollFd::new(output.as_fd(), PollFlags::POLLIN));
                kinds.push(Ready::ExecOutput(i));
            }
        }
        for (fd, (stream, _)) in &self.clients {
            fds.push(PollFd::new(stream.as_fd(), PollFlags::POLLIN));
            kinds.push(Ready::Client(*fd));
        }
        for (i, a) in self.net_probes.iter().enumerate() {
            let flags = if a.interest() == Step::WantWrite { PollFlags::POLLOUT } else { PollFlags::POLLIN };
            fds.push(PollFd::new(a.stream.as_fd(), flags));
            kinds.push(Ready::Probe(i));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(ShimError::Sys { what: "poll".into(), source: e }),
        }
        let ready = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty()));
        let mut out: Vec<Ready> = kinds.into_iter().zip(ready).filter(|(_, r)| *r).map(|(k, _)| k).collect();
        // Exec outputs by index must be drained from the highest index down (removal shifts).
        out.sort_by_key(|r| std::cmp::Reverse(matches!(r, Ready::ExecOutput(_))));
        Ok(out)
    }

    /// Creates and starts the container; records it running, or failed with a backoff.
    fn start(&mut self) {
        match self.create_and_start() {
            Ok(pid) => {
                let now = now_ms();
                let _ = self.lifecycle.started(pid.as_raw(), now);
                self.probes.container_started(now);
                tracing::info!(id = %self.config.id, pid = pid.as_raw(), "container started");
            }
            Err(reason) => {
                tracing::warn!(id = %self.config.id, "cannot start the container: {reason}");
                let _ = self.log.write(1, format!("bramble: cannot start the container: {reason}\n").as_bytes());
                self.lifecycle.start_failed(reason, now_ms());
            }
        }
    }

    /// A libcontainer builder for this container's processes (its init, execs, probes), with
    /// the default seccomp profile unless the app is unconfined.
    fn builder(&self, root: &std::path::Path) -> Result<ContainerBuilder, libcontainer::error::LibcontainerError> {
        let b = ContainerBuilder::new(self.config.id.clone(), SyscallType::default()).with_root_path(root)?;
        Ok(if self.config.unconfined { b } else { b.with_executor(super::seccomp::Confined) })
    }

    fn create_and_start(&mut self) -> Result<Pid, String> {
        let root = self.dir.libcontainer();
        // A leftover from an earlier run of this container (a crash between create and delete).
        if root.join(&self.config.id).exists() {
            if let Ok(mut c) = Container::load(root.join(&self.config.id)) {
                let _ = c.delete(true);
            }
            let _ = std::fs::remove_dir_all(root.join(&self.config.id));
        }
        std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let cgroup = self.config.cgroups_path();
        self.cgroups
            .prepare_parents(&cgroup)
            .map_err(|e| format!("cannot create the parents of cgroup {cgroup}: {e}"))?;
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| e.to_string())?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| e.to_string())?;
        // The container's ends block like any program expects.
        for fd in [&out_w, &err_w] {
            let _ =
                nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(fd), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&blocked()), None);
        let built = self
            .builder(&root)
            .and_then(|b| b.validate_id())
            .map(|b| b.with_stdout(out_w).with_stderr(err_w))
            .and_then(|b| b.as_init(self.dir.bundle()).with_systemd(false).with_detach(true).build());
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked()), None);
        let mut container = match built {
            Ok(c) => c,
            Err(e) => {
                // libcontainer may have made the cgroup (and some state) before it failed.
                if let Ok(mut c) = Container::load(root.join(&self.config.id)) {
                    let _ = c.delete(true);
                }
                let _ = std::fs::remove_dir_all(root.join(&self.config.id));
                self.reap_leftovers(&cgroup, std::time::Duration::from_secs(1));
                let _ = self.cgroups.remove_empty(&cgroup);
                return Err(format!("create: {e}"));
            }
        };
        // cgroup v2 has no devices files: the same rules as a program, before anything runs.
        if let Some(dir) = self.cgroups.v2_dir(&cgroup) {
            if let Err(e) = super::devices::restrict(&dir) {
                let _ = container.delete(true);
                return Err(format!("cannot confine the container's devices: {e}"));
            }
        }
        if let Err(e) = container.start() {
            let _ = container.delete(true);
            return Err(format!("start: {e}"));
        }
        self.stdout = Some(out_r);
        self.stderr = Some(err_r);
        container.pid().ok_or_else(|| "the container has no pid".to_string())
    }

    fn on_signals(&mut self, sigfd: &SignalFd) {
        while let Ok(Some(info)) = sigfd.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == Signal::SIGTERM as i32 || sig == Signal::SIGINT as i32 {
                tracing::info!("shim asked to stop: stopping the container and exiting");
                self.removing = true;
                self.stop(self.config.stop_grace_ms);
            }
        }
    }

    fn stop(&mut self, grace_ms: u64) {
        self.lifecycle.stop();
        self.signal_stop(grace_ms);
        self.persist();
    }

    /// The app's stop signal now, SIGKILL after `grace_ms` if it still runs.
    fn signal_stop(&mut self, grace_ms: u64) {
        if let Some(pid) = self.running_pid() {
            let sig = Signal::try_from(self.config.stop_signal).unwrap_or(Signal::SIGTERM);
            let _ = kill(pid, sig);
            let at = now_ms() + grace_ms;
            self.kill_at_ms = Some(self.kill_at_ms.map_or(at, |k| k.min(at)));
        }
    }

    /// Whether probes run now: not while the container is down, being killed or stopped.
    fn probing(&self) -> bool {
        self.running_pid().is_some() && self.killing_for.is_none() && !self.lifecycle.stopping
    }

    /// Starts every probe that is due; results come back through `record_probe`.
    fn run_probes(&mut self, now: u64) {
        if !self.probing() {
            return;
        }
        for (i, probe) in self.probes.take_due(now) {
            let deadline = now + probe.timeout_ms.max(1);
            let started = match &probe.action {
                ProbeAction::Exec { args } => {
                    self.exec(args.clone(), Vec::new(), probe.timeout_ms, ExecOwner::Probe(i))
                }
                action => match self.config.ip {
                    None => Err("the replica has no address".to_string()),
                    Some(ip) => NetAttempt::start(i, ip, action, deadline).map(|a| self.net_probes.push(a)),
                },
            };
            if let Err(message) = started {
                self.record_probe(i, false, &message);
            }
        }
    }

    fn advance_probe(&mut self, i: usize) {
        let Some(a) = self.net_probes.get_mut(i) else { return };
        if let Step::Done(ok, message) = a.advance() {
            // Recorded (and removed) in `finish_net_probes`, after every ready one has moved.
            a.deadline_ms = 0;
            a.result = Some((ok, message));
        }
    }

    /// Records finished and timed-out network probes.
    fn finish_net_probes(&mut self) {
        let now = now_ms();
        let mut done = Vec::new();
        self.net_probes.retain_mut(|a| {
            let result = match a.result.take() {
                Some(r) => Some(r),
                None if now >= a.deadline_ms => Some((false, "timed out".to_string())),
                None => None,
            };
            match result {
                Some((ok, message)) => {
                    done.push((a.probe, ok, message));
                    false
                }
                None => true,
            }
        });
        for (i, ok, message) in done {
            self.record_probe(i, ok, &message);
        }
    }

    fn record_probe(&mut self, i: usize, ok: bool, message: &str) {
        if let Verdict::Kill(why) = self.probes.record(i, ok, message, now_ms()) {
            tracing::info!(id = %self.config.id, "{why}: killing the container");
            let _ = self.log.write(1, format!("bramble: {why}; stopping the container\n").as_bytes());
            self.killing_for = Some(why);
            self.signal_stop(self.config.stop_grace_ms);
        }
    }

    /// Collects every child that ended: the container, execs, strays.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let (pid, code, signal) = match status {
                        WaitStatus::Exited(pid, code) => (pid, code, None),
                        WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, Some(sig as i32)),
                        _ => continue,
                    };
                    if Some(pid) == self.running_pid() {
                        self.container_exited(code, signal);
                    } else if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
                        e.status = Some(code);
                    }
                }
            }
        }
        self.finish_execs();
    }

    /// Once the container's first process has exited, the kernel kills what else ran in its pid
    /// namespace — execs (probes among them) and its orphans, which come to this sub-reaper — but
    /// each stays in the cgroup as a zombie until reaped, and libcontainer could not remove a
    /// cgroup with zombies in it (it stayed behind, empty, once they were reaped later). So they
    /// are reaped first, execs' results kept, for at most `within`.
    fn reap_leftovers(&mut self, path: &str, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            loop {
                let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                };
                if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
                    e.status = Some(code);
                }
            }
            if self.cgroups.is_empty(path) || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn container_exited(&mut self, code: i32, signal: Option<i32>) {
        self.drain(0);
        self.drain(1);
        let _ = self.log.flush_partial();
        self.stdout = None;
        self.stderr = None;
        let path = self.config.cgroups_path();
        let oom_killed = signal == Some(Signal::SIGKILL as i32) && self.cgroups.oom_kills(&path).unwrap_or(0) > 0;
        self.reap_leftovers(&path, std::time::Duration::from_secs(2));
        if let Ok(mut c) = Container::load(self.dir.libcontainer().join(&self.config.id)) {
            if let Err(e) = c.delete(true) {
                tracing::warn!("cannot delete the container: {e}");
            }
        }
        // libcontainer's v1 delete gives up at the first hierarchy it cannot read (a cgroup being
        // removed answers ENODEV), leaving the others: what is empty goes here.
        if let Err(e) = self.cgroups.remove_empty(&path) {
            tracing::warn!("cannot remove cgroup {path}: {e}");
        }
        let exit = Exit { code, signal, oom_killed, finished_ms: now_ms(), killed_by: self.killing_for.take() };
        tracing::info!(id = %self.config.id, code, ?signal, oom_killed, "container exited");
        let _ = self.lifecycle.exited(exit);
        self.probes.container_stopped();
        self.net_probes.clear();
        self.kill_at_ms = None;
        self.persist();
    }

    fn drain(&mut self, stream: usize) {
        let fd = if stream == 0 { &self.stdout } else { &self.stderr };
        let Some(fd) = fd else { return };
        let mut buf = [0u8; 16 << 10];
        loop {
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(fd), &mut buf) {
                Ok(0) => {
                    if stream == 0 {
                        self.stdout = None;
                    } else {
                        self.stderr = None;
                    }
                    break;
                }
                Ok(n) => {
                    let _ = self.log.write(stream, &buf[..n]);
                }
                Err(_) => break,
            }
        }
    }

    fn accept(&mut self, listener: &UnixListener) {
        while let Ok((stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(true);
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            self.clients.insert(fd, (stream, Vec::new()));
        }
    }

    fn read_client(&mut self, fd: i32) {
        let Some((stream, buf)) = self.clients.get_mut(&fd) else { return };
        let mut chunk = [0u8; 4096];
        let closed = match stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                buf.len() > 1 << 20
            }
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        let line = buf.iter().position(|b| *b == b'\n').map(|i| buf.drain(..=i).collect::<Vec<u8>>());
        if closed && line.is_none() {
            self.clients.remove(&fd);
            return;
        }
        let Some(line) = line else { return };
        let (mut stream, _) = self.clients.remove(&fd).expect("client");
        let _ = stream.set_nonblocking(false);
        let response = match serde_json::from_slice::<ShimRequest>(&line) {
            Ok(ShimRequest::Attach { args, env, tty, rows, cols }) => match self.attach(args, env, tty, (rows, cols)) {
                Ok((pid, fds)) => match send_fds(&stream, &ShimResponse::Attached { pid: pid.as_raw() }, &fds) {
                    Ok(()) => {
                        let exec = Exec {
                            pid,
                            output: None,
                            buf: Vec::new(),
                            owner: ExecOwner::Attached(stream),
                            deadline_ms: u64::MAX,
                            status: None,
                            timed_out: false,
                        };
                        self.execs.push(exec);
                        return;
                    }
                    Err(e) => {
                        let _ = kill(pid, Signal::SIGKILL);
                        ShimResponse::Error { message: format!("cannot hand over the command's streams: {e}") }
                    }
                },
                Err(message) => ShimResponse::Error { message },
            },
            Ok(ShimRequest::Exec { args, env, timeout_ms }) => {
                let started = match stream.try_clone() {
                    Ok(client) => self.exec(args, env, timeout_ms, ExecOwner::Client(client)),
                    Err(e) => Err(e.to_string()),
                };
                match started {
                    Ok(()) => return, // answered when it ends
                    Err(message) => ShimResponse::Error { message },
                }
            }
            Ok(req) => self.handle(req),
            Err(e) => ShimResponse::Error { message: format!("bad request: {e}") },
        };
        respond(&mut stream, &response);
    }

    fn handle(&mut self, req: ShimRequest) -> ShimResponse {
        match req {
            ShimRequest::State => ShimResponse::State(Box::new(self.state(true))),
            ShimRequest::Stop { grace_ms } => {
                self.stop(grace_ms.unwrap_or(self.config.stop_grace_ms));
                ShimResponse::Ok
            }
            ShimRequest::Signal { signal } => match (self.running_pid(), Signal::try_from(signal)) {
                (Some(pid), Ok(sig)) => match kill(pid, sig) {
                    Ok(()) => ShimResponse::Ok,
                    Err(e) => ShimResponse::Error { message: format!("cannot signal the container: {e}") },
                },
                (None, _) => ShimResponse::Error { message: "the container is not running".into() },
                (_, Err(_)) => ShimResponse::Error { message: format!("unknown signal {signal}") },
            },
            ShimRequest::Remove => {
                self.removing = true;
                self.stop(self.config.stop_grace_ms);
                ShimResponse::Ok
            }
            ShimRequest::Exec { .. } | ShimRequest::Attach { .. } => unreachable!("handled by the caller"),
        }
    }

    fn exec(&mut self, args: Vec<String>, env: Vec<String>, timeout_ms: u64, owner: ExecOwner) -> Result<(), String> {
        if self.running_pid().is_none() {
            return Err("the container is not running".into());
        }
        if args.is_empty() {
            return Err("no command to run".into());
        }
        let (r, w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| e.to_string())?;
        let _ = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        let w2 = w.try_clone().map_err(|e| e.to_string())?;
        let env: HashMap<String, String> =
            env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&blocked()), None);
        // As the container's own process runs: its user, group and supplementary groups.
        let c = &self.config;
        let (uid, gid, groups) = (c.uid, c.gid, c.additional_gids.clone());
        let built = self.builder(&self.dir.libcontainer()).map(|b| b.with_stdout(w).with_stderr(w2)).and_then(|b| {
            b.as_tenant()
                .with_container_args(args)
                .with_env(env)
                .with_user(Some(uid))
                .with_group(Some(gid))
                .with_additional_gids(groups)
                .with_detach(true)
                .build()
        });
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked()), None);
        let pid = built.map_err(|e| format!("exec: {e}"))?;
        self.execs.push(Exec {
            pid,
            output: Some(r),
            buf: Vec::new(),
            owner,
            deadline_ms: now_ms() + timeout_ms.max(1),
            status: None,
            timed_out: false,
        });
        Ok(())
    }

    /// Starts `args` in the container as its own process runs (user, working directory,
    /// environment plus `env`), on a new terminal of `size` when `tty`. Returns its pid and the
    /// descriptors for the caller: the terminal, or stdin, stdout and stderr.
    fn attach(
        &mut self,
        args: Vec<String>,
        env: Vec<String>,
        tty: bool,
        size: (u16, u16),
    ) -> Result<(Pid, Vec<OwnedFd>), String> {
        if self.running_pid().is_none() {
            return Err("the container is not running".into());
        }
        if args.is_empty() {
            return Err("no command to run".into());
        }
        let spec = spec::build(&self.config)?;
        let mut process = spec.process().clone().ok_or("the container has no process")?;
        let mut all_env = process.env().clone().unwrap_or_default();
        all_env.extend(env);
        process.set_args(Some(args)).set_env(Some(all_env)).set_terminal(Some(tty));
        self.attach_seq += 1;
        // Beside the spec: a tmpfs when the environment holds secrets.
        let process_path = self.dir.bundle().join(format!("exec-{}.json", self.attach_seq));
        let json = serde_json::to_vec(&process).map_err(|e| e.to_string())?;
        std::fs::write(&process_path, json).map_err(|e| format!("cannot write {}: {e}", process_path.display()))?;
        let console = self.dir.0.join(format!("console-{}.sock", self.attach_seq));
        let result = self.attach_with(&process_path, tty.then_some(console.as_path()), size);
        let _ = std::fs::remove_file(&process_path);
        let _ = std::fs::remove_file(&console);
        result
    }

    fn attach_with(
        &mut self,
        process: &std::path::Path,
        console: Option<&std::path::Path>,
        (rows, cols): (u16, u16),
    ) -> Result<(Pid, Vec<OwnedFd>), String> {
        let listener = match console {
            Some(path) => Some(UnixListener::bind(path).map_err(|e| format!("console socket: {e}"))?),
            None => None,
        };
        let mut ours = Vec::new();
        let mut builder = self.builder(&self.dir.libcontainer()).map_err(|e| format!("exec: {e}"))?;
        match console {
            Some(path) => builder = builder.with_console_socket(Some(path)),
            None => {
                let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
                let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
                let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
                builder = builder.with_stdin(in_r).with_stdout(out_w).with_stderr(err_w);
                ours = vec![in_w, out_r, err_r];
            }
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&blocked()), None);
        let built = builder.as_tenant().with_process(Some(process)).with_detach(true).build();
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked()), None);
        let pid = built.map_err(|e| format!("exec: {e}"))?;
        if let Some(listener) = listener {
            // The command's side sent its terminal's master end before it ran the command.
            let master = match receive_fd(&listener) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    return Err(format!("no terminal from the command: {e}"));
                }
            };
            set_window_size(&master, rows, cols);
            ours = vec![master];
        }
        Ok((pid, ours))
    }

    fn drain_exec(&mut self, i: usize) {
        let Some(e) = self.execs.get_mut(i) else { return };
        let Some(output) = &e.output else { return };
        let mut buf = [0u8; 8192];
        while let Ok(n) = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(output), &mut buf) {
            if n == 0 {
                break;
            }
            let room = MAX_EXEC_OUTPUT.saturating_sub(e.buf.len());
            e.buf.extend_from_slice(&buf[..n.min(room)]);
        }
    }

    fn expire_execs(&mut self, now: u64) {
        for e in &mut self.execs {
            if e.status.is_none() && now >= e.deadline_ms && !e.timed_out {
                let _ = kill(e.pid, Signal::SIGKILL);
                e.timed_out = true;
            }
        }
    }

    fn finish_execs(&mut self) {
        let mut i = 0;
        while i < self.execs.len() {
            if let Some(code) = self.execs[i].status {
                self.drain_exec(i);
                let e = self.execs.remove(i);
                let output = String::from_utf8_lossy(&e.buf).into_owned();
                match e.owner {
                    ExecOwner::Client(mut client) => {
                        respond(&mut client, &ShimResponse::Exec { exit_code: code, output, timed_out: e.timed_out })
                    }
                    ExecOwner::Attached(mut client) => respond(&mut client, &ShimResponse::Exited { exit_code: code }),
                    ExecOwner::Probe(p) => {
                        let message = if e.timed_out {
                            "timed out".to_string()
                        } else {
                            let first = output.lines().next().unwrap_or("").chars().take(200).collect::<String>();
                            format!(
                                "exit code {code}{}",
                                if first.is_empty() { String::new() } else { format!(": {first}") }
                            )
                        };
                        self.record_probe(p, code == 0 && !e.timed_out, &message);
                    }
                }
            } else {
                i += 1;
            }
        }
    }

    fn finish_removal(&mut self) -> Result<(), ShimError> {
        for (_, (mut s, _)) in self.clients.drain() {
            respond(&mut s, &ShimResponse::Error { message: "the container was removed".into() });
        }
        let _ = std::fs::remove_dir_all(self.dir.libcontainer());
        let _ = self.cgroups.remove_empty(&self.config.cgroups_path());
        let _ = std::fs::remove_file(self.dir.socket());
        self.persist();
        tracing::info!(id = %self.config.id, "container removed; shim exiting");
        Ok(())
    }
}

enum Ready {
    Signal,
    Listener,
    Output(usize),
    ExecOutput(usize),
    Client(i32),
    Probe(usize),
}

/// Sends `r` as a line with `fds` attached (SCM_RIGHTS).
fn send_fds(stream: &UnixStream, r: &ShimResponse, fds: &[OwnedFd]) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let mut line = serde_json::to_vec(r).expect("response serialises");
    line.push(b'\n');
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<UnixAddr>(stream.as_raw_fd(), &[std::io::IoSlice::new(&line)], &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives up to four descriptors sent with one message on `stream`, with the message.
pub fn receive_fds(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    Ok((buf, fds))
}

/// Waits (5 s at most) for libcontainer's side of a console socket and takes the terminal it sends.
fn receive_fd(listener: &UnixListener) -> std::io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let (_, mut fds) = receive_fds(&stream)?;
    fds.pop().ok_or_else(|| std::io::Error::other("the console socket sent no descriptor"))
}

/// Sets a terminal's size (rows and columns; 0 leaves it as it is).
pub fn set_window_size(fd: &OwnedFd, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    if rows == 0 || cols == 0 {
        return;
    }
    let size = nix::libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    unsafe {
        nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &size);
    }
}

fn respond(stream: &mut UnixStream, r: &ShimResponse) {
    let mut line = serde_json::to_vec(r).expect("response serialises");
    line.push(b'\n');
    let _ = stream.write_all(&line);
}

/// Sends one request to the shim at `socket` and reads its answer.
pub fn request(
    socket: &std::path::Path,
    req: &ShimRequest,
    timeout: std::time::Duration,
) -> std::io::Result<ShimResponse> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).expect("request serialises");
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad answer from the shim: {e}")))
}
