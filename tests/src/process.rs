//! Child processes that are always killed (by PID) when dropped, with their output in a file.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The directory holding the workspace's binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps/, programs such as the benchmarks from target/<profile>/.
    let parent = exe.parent().expect("exe dir");
    let dir =
        if parent.file_name().is_some_and(|n| n == "deps") { parent.parent().expect("profile dir") } else { parent }
            .to_path_buf();
    for bin in ["bramble-leader", "bramble-agent", "bramble-shim", "bramble"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the binaries first (`cargo build --bins`; ./scripts/test does it)",
            dir.join(bin).display()
        );
    }
    dir
}

#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    /// Starts `bin args` inside network namespace `ns`; stdout and stderr go to `log`.
    pub fn spawn(name: &str, ns: &str, bin: &Path, args: &[String], log: &Path) -> Proc {
        Self::spawn_env(name, ns, bin, args, log, &[])
    }

    /// Like [`Proc::spawn`], with more environment variables (`PATH`).
    pub fn spawn_env(name: &str, ns: &str, bin: &Path, args: &[String], log: &Path, env: &[(&str, &str)]) -> Proc {
        // nsenter joins only the network namespace and execs the binary (the child's PID is the
        // binary's). Not `ip netns exec`: it also remounts /sys for the namespace, which hides
        // /sys/fs/cgroup from the agent's containers.
        // Found on this process's PATH (a PATH in `env` is the binary's, and would be searched).
        let nsenter = std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("nsenter")).find(|f| f.is_file()))
            .unwrap_or_else(|| PathBuf::from("nsenter"));
        let mut cmd = Command::new(nsenter);
        // Their logs at `info`, or as `BRAMBLE_TEST_LOG` says (a `RUST_LOG` filter, e.g.
        // `info,bramble_agent=debug` for the agent's timings of each start).
        let level = std::env::var("BRAMBLE_TEST_LOG").unwrap_or_else(|_| "info".into());
        cmd.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(bin).args(args).env("RUST_LOG", level);
        cmd.envs(env.iter().copied());
        Self::start(name, cmd, log)
    }

    /// Starts `bin args` in the host's namespaces.
    pub fn spawn_host(name: &str, bin: &Path, args: &[String], log: &Path) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Self::start(name, cmd, log)
    }

    fn start(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        crate::reaper::started(child.id());
        Proc { child: Some(child), log: log.to_path_buf(), name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILLs the process and waits until it is dead (a zombie until [`Proc::stop`] or drop
    /// reaps it), without taking it: what a `&self` cleanup can do.
    pub fn halt(&self) {
        let Some(pid) = self.child.as_ref().map(|c| c.id() as i32) else { return };
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()));
            if matches!(state, None | Some('Z')) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(&mut self, signal: Signal) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        crate::reaper::ended(child.id());
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `write_bytes` from `/proc/<pid>/io`.
    pub fn write_bytes(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).expect("read /proc/<pid>/io");
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("write_bytes")
    }

    /// Resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Signal::SIGKILL);
    }
}
