//! Processes started in the running container: exec probes and `bramble exec` (with or without a
//! terminal), their output, timeouts and exits.

use super::*;

impl Shim {
    pub(super) fn exec(
        &mut self,
        args: Vec<String>,
        env: Vec<String>,
        timeout_ms: u64,
        owner: ExecOwner,
    ) -> Result<(), String> {
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
    pub(super) fn attach(
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

    pub(super) fn attach_with(
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

    pub(super) fn drain_exec(&mut self, i: usize) {
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

    pub(super) fn expire_execs(&mut self, now: u64) {
        for e in &mut self.execs {
            if e.status.is_none() && now >= e.deadline_ms && !e.timed_out {
                let _ = kill(e.pid, Signal::SIGKILL);
                e.timed_out = true;
            }
        }
    }

    pub(super) fn finish_execs(&mut self) {
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
}
