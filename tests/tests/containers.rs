//! Real containers through libcontainer and a shim per container, from the busybox test image,
//! with real cgroups. Needs root.

use bramble_agent::runtime::cgroups::CgroupFs;
use bramble_agent::runtime::config::{ContainerConfig, LogConfig, RestartPolicy, DEFAULT_PIDS_LIMIT};
use bramble_agent::runtime::lifecycle::Phase;
use bramble_agent::runtime::protocol::ShimState;
use bramble_agent::runtime::Runtime;
use bramble_images::import::{import, ImportOptions};
use bramble_images::rootfs::{RootfsKind, Rootfses};
use bramble_images::store::ContentStore;
use bramble_images::{ImageRecord, Progress};
use bramble_proto::model::Arch;
use bramble_tests::process::bin_dir;
use bramble_tests::testimages::busybox_layout;
use bramble_tests::wait_for;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Env {
    dir: tempfile::TempDir,
    runtime: Runtime,
    roots: Rootfses,
    image: ImageRecord,
    ids: Vec<String>,
}

impl Env {
    fn new() -> Env {
        assert!(
            nix::unistd::geteuid().is_root(),
            "container tests need root (namespaces, cgroups, mounts); run them as root, as CI does"
        );
        let dir = tempfile::Builder::new().prefix("bramble-ctr-").tempdir().unwrap();
        busybox_layout(&dir.path().join("layout"), "1");
        let store = ContentStore::open(&dir.path().join("images")).unwrap();
        let image = import(
            &store,
            &dir.path().join("layout"),
            &Arch::Amd64,
            &ImportOptions { name: Some("t/busybox".into()) },
            &Progress::default(),
        )
        .unwrap()
        .remove(0);
        let roots = Rootfses::new(store, &dir.path().join("rootfs")).with_kind(RootfsKind::Overlay);
        let runtime = Runtime::new(&dir.path().join("run"), &bin_dir().join("bramble-shim"));
        Env { dir, runtime, roots, image, ids: Vec::new() }
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{id}.log"))
    }

    fn config(&mut self, id: &str, args: &[&str]) -> ContainerConfig {
        let rootfs = self.roots.prepare(id, &self.image).unwrap().path;
        self.ids.push(id.to_string());
        ContainerConfig {
            id: id.to_string(),
            rootfs,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: id.to_string(),
            readonly_rootfs: false,
            cpu_millis: None,
            memory_bytes: None,
            pids_limit: DEFAULT_PIDS_LIMIT,
            restart: RestartPolicy::Never,
            stop_grace_ms: 500,
            backoff_base_ms: Some(200),
            log: LogConfig { path: self.log(id), max_bytes: 1 << 20, max_files: 2 },
            netns: None,
            host_network: false,
            files: Vec::new(),
            ip: None,
            stop_signal: 15,
            probes: Vec::new(),
            tmpfs: Vec::new(),
            binds: Vec::new(),
            secret_env: Vec::new(),
            unconfined: false,
            devices: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            cgroup_parent: bramble_agent::runtime::config::DEFAULT_CGROUP_PARENT.into(),
        }
    }

    fn wait(&self, id: &str, what: &str, f: impl Fn(&ShimState) -> bool) -> ShimState {
        let start = Instant::now();
        loop {
            let s = self.runtime.state(id).unwrap();
            if f(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{id}: timed out waiting for {what}; state {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&self, id: &str) -> bramble_agent::runtime::lifecycle::Exit {
        match self.wait(id, "exit", |s| matches!(s.lifecycle.phase, Phase::Exited { .. })).lifecycle.phase {
            Phase::Exited { last, .. } => last,
            _ => unreachable!(),
        }
    }

    fn log_lines(&self, id: &str) -> Vec<String> {
        std::fs::read_to_string(self.log(id))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').map_or("", |x| x.1).to_string())
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in self.ids.clone() {
            let _ = self.runtime.remove(&id, Duration::from_secs(5));
            let _ = self.roots.remove(&id);
        }
        if !std::thread::panicking() {
            let cg = CgroupFs::host();
            for id in &self.ids {
                assert!(!cg.exists(&format!("/bramble/{id}")), "cgroup of {id} removed");
            }
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(!mounts.contains(&self.dir.path().display().to_string()), "no mounts left");
        }
    }
}

fn pids_of_exe(path_part: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(path_part))
        })
        .count()
}

/// The shim is its own small binary, and says which build and protocol it is (an agent after an
/// upgrade reads them to know what it talks to).
#[test]
fn the_shim_is_bramble_shim_and_says_its_protocol() {
    let mut env = Env::new();
    let c = env.config("versioned", &["sleep", "30"]);
    let s = env.runtime.create(&c).unwrap();
    assert_eq!(s.protocol, bramble_agent::runtime::protocol::SHIM_PROTOCOL);
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    let exe = std::fs::read_link(format!("/proc/{}/exe", s.shim_pid)).unwrap();
    assert_eq!(exe, bin_dir().join("bramble-shim"));
    env.runtime.remove("versioned", Duration::from_secs(5)).unwrap();
}

#[test]
fn exit_codes_output_and_environment() {
    let mut env = Env::new();
    let c = env.config("exit3", &["sh", "-c", "echo out $GREETING; echo err >&2; hostname; exit 3"]);
    env.runtime.create(&c).unwrap();
    let exit = env.exited("exit3");
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (3, None, false));
    let lines = env.log_lines("exit3");
    assert!(lines.contains(&"stdout F out hi".to_string()), "{lines:?}");
    assert!(lines.contains(&"stderr F err".to_string()), "{lines:?}");
    assert!(lines.contains(&"stdout F exit3".to_string()), "hostname: {lines:?}");
    let c = env.config("ok", &["true"]);
    env.runtime.create(&c).unwrap();
    assert!(env.exited("ok").success());
    assert!(env.runtime.create(&c).is_err(), "ids are unique");
}

#[test]
fn limits_are_in_the_cgroup_files_and_stats_are_read() {
    let mut env = Env::new();
    let mut c = env.config("limited", &["sleep", "30"]);
    c.cpu_millis = Some(250);
    c.memory_bytes = Some(32 << 20);
    c.pids_limit = 64;
    env.runtime.create(&c).unwrap();
    let s = env.wait("limited", "running with stats", |s| {
        matches!(s.lifecycle.phase, Phase::Running { .. }) && s.stats.is_some()
    });
    let cg = CgroupFs::host();
    let l = cg.limits("/bramble/limited").unwrap();
    assert_eq!(
        (l.cpu_quota_us, l.cpu_period_us, l.memory, l.pids),
        (Some(25_000), Some(100_000), Some(32 << 20), Some(64))
    );
    let stats = s.stats.unwrap();
    assert!(stats.pids >= 1 && stats.memory_working_set > 0, "{stats:?}");
    assert_eq!(stats.memory_limit, Some(32 << 20));
}

#[test]
fn an_oom_kill_is_detected() {
    let mut env = Env::new();
    let mut c = env.config("oom", &["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]);
    c.memory_bytes = Some(16 << 20);
    env.runtime.create(&c).unwrap();
    let exit = env.exited("oom");
    assert!(exit.oom_killed, "{exit:?}: log {:?}", env.log_lines("oom"));
    assert!(!env.log_lines("oom").iter().any(|l| l.contains("survived")));
}

/// CPU ticks (user + system) a process used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<i64> = rest.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    f.get(10..12).map_or(0, |t| t.iter().sum::<i64>().max(0) as u64)
}

#[test]
fn a_shim_with_probes_waits_quietly_while_a_stop_runs_out_its_grace() {
    use bramble_agent::runtime::probe::{ProbeAction, ProbeConfig, ProbeKind};
    let mut env = Env::new();
    let mut c = env.config("graceful", &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]);
    // A probe due every 100 ms (an exec: the container has no address), which must not run — nor
    // wake the shim — once the stop began.
    c.probes = vec![ProbeConfig {
        kind: ProbeKind::Liveness,
        action: ProbeAction::Exec { args: vec!["true".into()] },
        initial_delay_ms: 0,
        period_ms: 100,
        timeout_ms: 50,
        failure_threshold: 3,
        success_threshold: 1,
    }];
    let s = env.runtime.create(&c).unwrap();
    env.wait("graceful", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    std::thread::sleep(Duration::from_millis(500));
    env.runtime.stop("graceful", Some(Duration::from_secs(3))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(s.shim_pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(s.shim_pid) - before;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    // A spinning loop uses the whole 2 s (2 × hz ticks); waiting uses next to nothing.
    assert!(used < hz / 2, "the shim used {used} ticks ({hz}/s) in 2 s of grace: it spins");
    assert_eq!(env.exited("graceful").code, 137, "killed at the end of the grace period");
}

#[test]
fn a_pipeline_ends_when_its_reader_does() {
    // `yes` ends by SIGPIPE when `head` has read enough: only if the container does not inherit
    // an ignored SIGPIPE from the (Rust) shim.
    let mut env = Env::new();
    let c = env.config("pipe", &["sh", "-c", "yes | busybox head -c 5 >/dev/null; echo done"]);
    env.runtime.create(&c).unwrap();
    let exit = env.exited("pipe");
    assert_eq!(exit.code, 0);
    assert_eq!(env.log_lines("pipe"), ["stdout F done"]);
}

#[test]
fn stop_escalates_to_sigkill_for_a_shell_that_ignores_sigterm() {
    let mut env = Env::new();
    let c = env.config("stubborn", &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]);
    env.runtime.create(&c).unwrap();
    env.wait("stubborn", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    let t = Instant::now();
    env.runtime.stop("stubborn", Some(Duration::from_millis(300))).unwrap();
    let exit = env.exited("stubborn");
    assert_eq!((exit.code, exit.signal), (137, Some(9)), "killed after the grace period");
    assert!(t.elapsed() >= Duration::from_millis(300));
    // A well-behaved one ends on SIGTERM.
    let c = env.config("polite", &["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]);
    env.runtime.create(&c).unwrap();
    env.wait("polite", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    std::thread::sleep(Duration::from_millis(200));
    env.runtime.stop("polite", Some(Duration::from_secs(5))).unwrap();
    assert_eq!(env.exited("polite").code, 0);
}

#[test]
fn restarts_back_off_and_stop_ends_them() {
    let mut env = Env::new();
    let mut c = env.config("crashy", &["sh", "-c", "echo run; exit 1"]);
    c.restart = RestartPolicy::Always;
    env.runtime.create(&c).unwrap();
    let s = env.wait("crashy", "three restarts", |s| s.lifecycle.restarts >= 3);
    // At once, then 200 and 400 ms: the next waits 800 ms.
    assert!(s.lifecycle.next_backoff_ms >= 800, "{:?}", s.lifecycle);
    assert!(env.log_lines("crashy").iter().filter(|l| l.ends_with("F run")).count() >= 3);
    env.runtime.stop("crashy", None).unwrap();
    let s = env.wait("crashy", "stopped", |s| matches!(s.lifecycle.phase, Phase::Exited { stopped: true, .. }));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(env.runtime.state("crashy").unwrap().lifecycle.restarts, s.lifecycle.restarts, "no restart after stop");
}

#[test]
fn exec_runs_inside_the_container() {
    let mut env = Env::new();
    let c = env.config("target", &["sh", "-c", "echo inside > /tmp/marker; sleep 30"]);
    env.runtime.create(&c).unwrap();
    env.wait("target", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, timed_out) = env
        .runtime
        .exec(
            "target",
            vec!["sh".into(), "-c".into(), "cat /tmp/marker; hostname; exit 4".into()],
            vec!["PATH=/bin".into()],
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!((code, out.as_str(), timed_out), (4, "inside\ntarget\n", false));
    let (_, _, timed_out) =
        env.runtime.exec("target", vec!["sleep".into(), "10".into()], vec![], Duration::from_millis(300)).unwrap();
    assert!(timed_out);
}

#[test]
fn containers_outlive_the_agent_and_are_adopted_unchanged() {
    let mut env = Env::new();
    for i in 0..5 {
        let c = env.config(
            &format!("keep{i}"),
            &["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"],
        );
        env.runtime.create(&c).unwrap();
    }
    let c = env.config("short", &["sh", "-c", "sleep 1; exit 7"]);
    env.runtime.create(&c).unwrap();
    let before: Vec<ShimState> = (0..5)
        .map(|i| env.wait(&format!("keep{i}"), "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. })))
        .collect();
    // "Kill -9 the agent": this Runtime is gone; a new one (a restarted agent) adopts the shims.
    let runtime = Runtime::new(&env.dir.path().join("run"), &bin_dir().join("bramble-shim"));
    std::thread::sleep(Duration::from_millis(1500));
    let adopted = runtime.adopt();
    assert_eq!(adopted.len(), 6);
    for (i, b) in before.iter().enumerate() {
        let a = adopted.iter().find(|s| s.id == format!("keep{i}")).unwrap();
        assert_eq!(a.lifecycle.phase, b.lifecycle.phase, "same pid, same start: not restarted");
        assert_eq!(a.lifecycle.restarts, 0);
    }
    let short = adopted.iter().find(|s| s.id == "short").unwrap();
    assert!(
        matches!(&short.lifecycle.phase, Phase::Exited { last, .. } if last.code == 7),
        "its real exit code: {short:?}"
    );
    let lines = env.log_lines("keep0").len();
    std::thread::sleep(Duration::from_millis(600));
    assert!(env.log_lines("keep0").len() > lines, "logs continue");
    // A dead shim's leftovers (as after a reboot) are cleaned without touching live containers.
    let stale = env.dir.path().join("run/ghost");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("state.json"), br#"{"id":"ghost","shim_pid":999999,"boot_id":"another-boot","lifecycle":{"phase":{"phase":"running","pid":999999,"started_ms":1},"restarts":0,"next_backoff_ms":1,"policy":"always","backoff":{"base_ms":1,"cap_ms":1,"reset_after_ms":1},"stopping":false}}"#).unwrap();
    let again = runtime.adopt();
    assert_eq!(again.len(), 6);
    assert!(!stale.exists(), "stale state removed");
    assert!(pids_of_exe(&format!("shim --dir {}", env.dir.path().display())) >= 6, "the shims run on");
}

const STAND_IN: &str = "BRAMBLE_AGENT_STAND_IN_DIR";

/// Not a test on its own: the process `kill_9_of_the_process_that_started_the_containers` starts
/// and kills — it plays the agent: creates five containers through the runtime, says so, waits.
#[test]
fn agent_stand_in_process() {
    let Some(dir) = std::env::var_os(STAND_IN) else { return };
    let dir = PathBuf::from(dir);
    let runtime = Runtime::new(&dir.join("run"), &bin_dir().join("bramble-shim"));
    let config: Vec<ContainerConfig> =
        serde_json::from_slice(&std::fs::read(dir.join("configs.json")).unwrap()).unwrap();
    for c in &config {
        runtime.create(c).unwrap();
    }
    println!("created");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn kill_9_of_the_process_that_started_the_containers_touches_none() {
    let mut env = Env::new();
    let configs: Vec<ContainerConfig> = (0..5)
        .map(|i| env.config(&format!("k9-{i}"), &["sh", "-c", "while true; do echo beat; sleep 0.2; done"]))
        .collect();
    std::fs::write(env.dir.path().join("configs.json"), serde_json::to_vec(&configs).unwrap()).unwrap();
    let mut agent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "agent_stand_in_process", "--nocapture", "--test-threads=1"])
        .env(STAND_IN, env.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(agent.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("created") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the stand-in agent died");
    }
    let before: Vec<ShimState> = (0..5)
        .map(|i| env.wait(&format!("k9-{i}"), "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. })))
        .collect();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    agent.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let adopted = Runtime::new(&env.dir.path().join("run"), &bin_dir().join("bramble-shim")).adopt();
    for b in &before {
        let a = adopted.iter().find(|s| s.id == b.id).expect("adopted");
        assert_eq!(a.lifecycle.phase, b.lifecycle.phase, "{}: same pid, never restarted", b.id);
        assert_eq!(a.lifecycle.restarts, 0);
        let Phase::Running { pid, .. } = a.lifecycle.phase else { unreachable!() };
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(), "{}: its process lives", b.id);
    }
}

#[test]
fn nothing_is_left_after_remove() {
    let mut env = Env::new();
    let c = env.config("tidy", &["sleep", "30"]);
    env.runtime.create(&c).unwrap();
    let s = env.wait("tidy", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    let Phase::Running { pid, .. } = s.lifecycle.phase else { unreachable!() };
    env.runtime.remove("tidy", Duration::from_secs(5)).unwrap();
    env.roots.remove("tidy").unwrap();
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(), "the container's process is gone");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.shim_pid), None).is_err()
            || !Path::new(&format!("/proc/{}", s.shim_pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", s.shim_pid)).unwrap_or_default().contains(" Z "),
        "the shim is gone, but /proc/{pid}/stat reads {:?}",
        std::fs::read_to_string(format!("/proc/{}/stat", s.shim_pid)),
        pid = s.shim_pid
    );
    assert!(!env.dir.path().join("run/tidy").exists(), "state removed");
    assert!(!CgroupFs::host().exists("/bramble/tidy"), "cgroup removed");
}

#[test]
fn a_container_whose_shim_died_is_removed_whole_by_bramble_shim_delete() {
    let mut env = Env::new();
    let c = env.config("orphan", &["sleep", "30"]);
    env.runtime.create(&c).unwrap();
    let s = env.wait("orphan", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    let Phase::Running { pid, .. } = s.lifecycle.phase else { unreachable!() };
    // The shim dies; its container runs on, in its cgroup, with libcontainer's state on disk.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.shim_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for("the shim to die", Duration::from_secs(5), || {
        (!Path::new(&format!("/proc/{}", s.shim_pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", s.shim_pid)).unwrap_or_default().contains(" Z "))
        .then_some(())
    });
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(), "the container outlives its shim");
    assert!(CgroupFs::host().exists("/bramble/orphan"));
    // The agent's side has no libcontainer: it kills the process and runs `bramble-shim --delete`.
    env.runtime.remove("orphan", Duration::from_secs(5)).unwrap();
    env.roots.remove("orphan").unwrap();
    wait_for("the container's process to go", Duration::from_secs(5), || {
        (!Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(" Z "))
        .then_some(())
    });
    assert!(!env.dir.path().join("run/orphan").exists(), "state removed");
    assert!(!CgroupFs::host().exists("/bramble/orphan"), "cgroup removed");
}

/// What a process in a container may do, asked with the board's own Python (its /usr and /lib
/// bound read-only): the seccomp mode, and the errno of keyctl, unshare of a user namespace,
/// opening a device node the test put in the root filesystem (kmsg, 1:11) and mknod.
fn confinement_script() -> String {
    format!(
        "import ctypes, os\n\
         l = ctypes.CDLL(None, use_errno=True)\n\
         def err(r): return 0 if r >= 0 else ctypes.get_errno()\n\
         print('seccomp', [x.split()[1] for x in open('/proc/self/status') if x.startswith('Seccomp:')][0])\n\
         print('keyctl', err(l.syscall({keyctl}, 0, 0, 0, 0, 0)))\n\
         print('unshare', err(l.unshare(0x10000000)))\n\
         def attempt(f):\n\
         \x20   try:\n\
         \x20       f(); return 0\n\
         \x20   except OSError as e: return e.errno\n\
         print('kmsg', attempt(lambda: os.close(os.open('/kmsg', os.O_RDONLY))))\n\
         print('mknod', attempt(lambda: os.mknod('/sda', 0o600 | 0o060000, os.makedev(8, 0))))\n\
         print('uid', os.getuid(), os.getgid())\n",
        keyctl = libc::SYS_keyctl
    )
}

/// A container's stdout, its lines as written.
fn output(env: &Env, id: &str) -> String {
    let lines = env.log_lines(id);
    lines.iter().map(|l| l.strip_prefix("stdout F ").unwrap_or(l)).collect::<Vec<_>>().join("\n")
}

fn python_binds() -> Vec<bramble_agent::runtime::config::BindMount> {
    ["/usr", "/lib", "/lib64"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| bramble_agent::runtime::config::BindMount { source: p.into(), destination: p.into(), read_only: true })
        .collect()
}

fn kmsg_in(rootfs: &Path) {
    let dev = nix::sys::stat::makedev(1, 11);
    nix::sys::stat::mknod(
        &rootfs.join("kmsg"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev,
    )
    .expect("mknod in the test's root filesystem");
}

#[test]
fn containers_are_confined_like_dockers_unless_unconfined() {
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "this test asks the board's /usr/bin/python3 (apt-get install python3)"
    );
    let mut env = Env::new();
    let script = confinement_script();
    let mut c = env.config("confined", &["/usr/bin/python3", "-c", &script]);
    c.binds = python_binds();
    kmsg_in(&c.rootfs);
    env.runtime.create(&c).unwrap();
    let exit = env.exited("confined");
    let out = output(&env, "confined");
    assert_eq!(exit.code, 0, "{out}");
    let eperm = libc::EPERM.to_string();
    for (what, want) in [("seccomp", "2"), ("keyctl", eperm.as_str()), ("unshare", eperm.as_str())] {
        assert!(out.lines().any(|l| l == format!("{what} {want}")), "{what} should be {want}:\n{out}");
    }
    assert!(out.lines().any(|l| l == format!("kmsg {eperm}")), "the devices cgroup refuses kmsg:\n{out}");
    assert!(out.lines().any(|l| l == format!("mknod {eperm}")), "no CAP_MKNOD:\n{out}");

    // An admin's app with `seccomp = "unconfined"`: no filter, keyctl reaches the kernel.
    let mut c = env.config("unconfined", &["/usr/bin/python3", "-c", &script]);
    c.binds = python_binds();
    c.unconfined = true;
    kmsg_in(&c.rootfs);
    env.runtime.create(&c).unwrap();
    env.exited("unconfined");
    let out = output(&env, "unconfined");
    assert!(out.lines().any(|l| l == "seccomp 0"), "{out}");
    assert!(!out.lines().any(|l| l == format!("keyctl {eperm}")), "{out}");
    assert!(out.lines().any(|l| l == format!("kmsg {eperm}")), "devices stay confined:\n{out}");
}

#[test]
fn the_devices_cgroup_denies_all_but_the_defaults() {
    let mut env = Env::new();
    let c = env.config("devices", &["sleep", "30"]);
    env.runtime.create(&c).unwrap();
    env.wait("devices", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    let cg = CgroupFs::host();
    match cg.version {
        bramble_agent::runtime::cgroups::Version::V1 => {
            let list = std::fs::read_to_string("/sys/fs/cgroup/devices/bramble/devices/devices.list").unwrap();
            assert!(!list.contains("a *:* rwm"), "not everything: {list}");
            for want in ["c 1:3 rwm", "c 1:9 rwm", "c 136:* rwm"] {
                assert!(list.lines().any(|l| l == want), "{want} in {list}");
            }
            assert!(!list.lines().any(|l| l.starts_with("b ") && l.ends_with('r')), "no block device readable: {list}");
        }
        bramble_agent::runtime::cgroups::Version::V2 => {
            // No devices files on v2: the kernel lists the program attached to the container's
            // cgroup (what it refuses, the confinement test shows).
            let dir = cg.v2_dir("/bramble/devices").unwrap();
            assert_eq!(bramble_agent::runtime::devices::attached(&dir).unwrap(), 1, "{}", dir.display());
        }
    }
}

#[test]
fn exec_and_exec_probes_run_as_the_containers_user() {
    let mut env = Env::new();
    let mut c = env.config("user", &["sleep", "30"]);
    (c.uid, c.gid, c.additional_gids) = (1000, 1001, vec![1002]);
    env.runtime.create(&c).unwrap();
    env.wait("user", "running", |s| matches!(s.lifecycle.phase, Phase::Running { .. }));
    let (code, out, _) =
        env.runtime.exec("user", vec!["id".into()], vec!["PATH=/bin".into()], Duration::from_secs(10)).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("uid=1000 gid=1001") && out.contains("1002"), "not root: {out}");
}
