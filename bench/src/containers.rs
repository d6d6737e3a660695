//! Container start on the agent's path (a shim per container: spawn, libcontainer create + start)
//! against `runc run -d` with the same runtime spec and root filesystem, alternating run by run;
//! then the memory of shims with 20 containers running.

use crate::stats::summarize;
use bramble_agent::runtime::config::{ContainerConfig, LogConfig, RestartPolicy, DEFAULT_PIDS_LIMIT};
use bramble_agent::runtime::lifecycle::Phase;
use bramble_agent::runtime::{spec, Runtime};
use bramble_images::import::{import, ImportOptions};
use bramble_images::rootfs::{RootfsKind, Rootfses};
use bramble_images::store::ContentStore;
use bramble_images::Progress;
use bramble_tests::process::bin_dir;
use bramble_tests::testimages::busybox_layout;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn config(id: &str, rootfs: &Path, logs: &Path) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        rootfs: rootfs.to_path_buf(),
        args: vec!["sleep".into(), "600".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        hostname: id.into(),
        readonly_rootfs: true,
        cpu_millis: None,
        memory_bytes: None,
        pids_limit: DEFAULT_PIDS_LIMIT,
        restart: RestartPolicy::Never,
        stop_grace_ms: 100,
        backoff_base_ms: None,
        log: LogConfig { path: logs.join(format!("{id}.log")), max_bytes: 1 << 20, max_files: 1 },
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

fn pss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn run(runs: usize) -> serde_json::Value {
    assert!(nix::unistd::geteuid().is_root(), "the container benchmark needs root");
    assert!(
        Command::new("runc").arg("--version").output().is_ok_and(|o| o.status.success()),
        "the peer needs runc: apt-get install runc"
    );
    let dir = tempfile::Builder::new().prefix("bramble-bench-").tempdir().expect("temp dir");
    busybox_layout(&dir.path().join("layout"), "1");
    let store = ContentStore::open(&dir.path().join("images")).expect("store");
    let image = import(
        &store,
        &dir.path().join("layout"),
        &bramble_agent::sysinfo::arch(),
        &ImportOptions { name: Some("bench/busybox".into()) },
        &Progress::default(),
    )
    .expect("import")
    .remove(0);
    let roots = Rootfses::new(store, &dir.path().join("rootfs")).with_kind(RootfsKind::Overlay);
    // One read-only root filesystem shared by every run on both sides.
    let rootfs = roots.prepare("shared", &image).expect("rootfs").path;
    let runtime = Runtime::new(&dir.path().join("run"), &bin_dir().join("bramble-shim"));
    let runc_root = dir.path().join("runc");
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    let logs = dir.path().join("logs");

    let (mut ours, mut loose, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Ours with the default seccomp profile (what every app gets), ours without (what
        // `seccomp = "unconfined"` gets, and what the runc peer runs: its spec names no profile),
        // and runc — in an order that turns each run: whichever goes first after the last run's
        // teardown pays ~5 ms more here, which a fixed order would charge to one side.
        for k in 0..3 {
            match (i + k) % 3 {
                kind @ (0 | 1) => {
                    let unconfined = kind == 1;
                    let id = format!("{}{i}", if unconfined { "u" } else { "b" });
                    let mut c = config(&id, &rootfs, &logs);
                    c.unconfined = unconfined;
                    let t = Instant::now();
                    runtime.create(&c).expect("create");
                    loop {
                        let s = runtime.state(&id).expect("state");
                        if matches!(s.lifecycle.phase, Phase::Running { .. }) {
                            break;
                        }
                        assert!(t.elapsed() < Duration::from_secs(10), "{id} did not start: {s:?}");
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    if unconfined {
                        loose.push(t.elapsed())
                    } else {
                        ours.push(t.elapsed())
                    }
                    runtime.remove(&id, Duration::from_secs(5)).expect("remove");
                }
                _ => {
                    let rid = format!("r{i}");
                    let mut s = spec::build(&config(&rid, &rootfs, &logs)).expect("spec");
                    s.set_hostname(Some(rid.clone()));
                    s.save(bundle.join("config.json")).expect("spec");
                    let t = Instant::now();
                    // A detached container keeps runc's stdio: give it /dev/null, or waiting for
                    // EOF would wait for the container.
                    let status = Command::new("runc")
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["run", "-d", "--bundle"])
                        .arg(&bundle)
                        .arg(&rid)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                        .expect("runc");
                    theirs.push(t.elapsed());
                    assert!(status.success(), "runc run -d failed");
                    let _ = Command::new("runc").arg("--root").arg(&runc_root).args(["delete", "-f", &rid]).output();
                }
            }
        }
    }
    let (o, t, u) = (summarize(&ours), summarize(&theirs), summarize(&loose));
    println!(
        "container start, request -> process running, {runs} runs each, order turned each run, same spec and rootfs:"
    );
    println!("  {:<38} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!("  {:<38} {:>9.1} {:>9.1} {:>9.1}", "bramble (shim + libcontainer + seccomp)", o.min, o.median, o.p95);
    println!("  {:<38} {:>9.1} {:>9.1} {:>9.1}", "bramble, seccomp unconfined", u.min, u.median, u.p95);
    println!("  {:<38} {:>9.1} {:>9.1} {:>9.1}", "runc run -d", t.min, t.median, t.p95);
    println!("  ratio of medians (bramble / runc): {:.2}  (p95: {:.2})", o.median / t.median, o.p95 / t.p95);

    // 20 running containers: what each costs in shim memory.
    let mut shims = Vec::new();
    for i in 0..20 {
        let id = format!("m{i}");
        runtime.create(&config(&id, &rootfs, &logs)).expect("create");
        shims.push(id);
    }
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<i32> = shims.iter().map(|id| runtime.state(id).expect("state").shim_pid).collect();
    let pss: Vec<u64> = pids.iter().map(|p| pss_kib(*p)).collect();
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let pss_avg = pss.iter().sum::<u64>() as f64 / pss.len() as f64;
    let rss_avg = rss.iter().sum::<u64>() as f64 / rss.len() as f64;
    println!("20 containers running: shim PSS {pss_avg:.0} KiB each (RSS {rss_avg:.0} KiB; shared pages counted once in PSS)");
    for id in &shims {
        let _ = runtime.remove(id, Duration::from_secs(5));
    }
    let _ = roots.remove("shared");
    serde_json::json!({
        "start": { "bramble": o.json(), "bramble_unconfined": u.json(), "runc_run_detached": t.json(), "ratio_median": o.median / t.median, "ratio_p95": o.p95 / t.p95 },
        "shim_memory_20": { "pss_kib_avg": pss_avg, "rss_kib_avg": rss_avg },
    })
}
