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
//!
//! ```text
//! mod.rs        the state, the poll loop, reaping, clients and their requests, removal
//! container.rs  create and start with libcontainer, stop, how the container ended
//! exec.rs       processes in the running container: exec probes, `bramble exec`, their output
//! probes.rs     which probes are due, network attempts, results into the tracker
//! socket.rs     the unix socket's lines and passed descriptors, the agent's request
//! ```

mod container;
mod exec;
mod probes;
mod socket;

use socket::{receive_fd, respond, send_fds};
pub use socket::{receive_fds, request, set_window_size};

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
use std::io::Read;
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
    // Bound before the fork: when the agent sees its child exit, the socket is there, and its
    // first request waits in the backlog for the answer instead of finding no socket and sleeping.
    let _ = std::fs::remove_file(dir.socket());
    let listener = UnixListener::bind(dir.socket()).map_err(io("bind the shim socket"))?;
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
        let _ = bramble_proto::fsutil::write_file_replace(&self.dir.state(), &bytes, 0o600);
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
