//! The container itself: created and started with libcontainer (seccomp unless unconfined),
//! stopped with its stop signal then SIGKILL, and how it ended recorded for the restart policy.

use super::*;

impl Shim {
    /// Creates and starts the container; records it running, or failed with a backoff.
    pub(super) fn start(&mut self) {
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
    pub(super) fn builder(
        &self,
        root: &std::path::Path,
    ) -> Result<ContainerBuilder, libcontainer::error::LibcontainerError> {
        let b = ContainerBuilder::new(self.config.id.clone(), SyscallType::default()).with_root_path(root)?;
        Ok(if self.config.unconfined { b } else { b.with_executor(crate::runtime::seccomp::Confined) })
    }

    pub(super) fn create_and_start(&mut self) -> Result<Pid, String> {
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
            if let Err(e) =
                crate::runtime::devices::restrict(&dir, &crate::runtime::devices::rules_for(&self.config.devices))
            {
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

    pub(super) fn stop(&mut self, grace_ms: u64) {
        self.lifecycle.stop();
        self.signal_stop(grace_ms);
        self.persist();
    }

    /// The app's stop signal now, SIGKILL after `grace_ms` if it still runs.
    pub(super) fn signal_stop(&mut self, grace_ms: u64) {
        if let Some(pid) = self.running_pid() {
            let sig = Signal::try_from(self.config.stop_signal).unwrap_or(Signal::SIGTERM);
            let _ = kill(pid, sig);
            let at = now_ms() + grace_ms;
            self.kill_at_ms = Some(self.kill_at_ms.map_or(at, |k| k.min(at)));
        }
    }

    pub(super) fn container_exited(&mut self, code: i32, signal: Option<i32>) {
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
        let exit = Exit {
            code,
            signal,
            oom_killed,
            finished_ms: now_ms(),
            killed_by: self.killing_for.take(),
            started_ms: None,
        };
        tracing::info!(id = %self.config.id, code, ?signal, oom_killed, "container exited");
        let _ = self.lifecycle.exited(exit);
        self.probes.container_stopped();
        self.net_probes.clear();
        self.kill_at_ms = None;
        self.persist();
    }
}
