//! The binaries as an operator meets them: config precedence and errors, init, systemd units and
//! readiness notification. No namespaces needed.

use bramble_tests::process::bin_dir;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `bramble-leader init` of a throwaway cluster in `data`, listening on `listen`.
fn init_leader(data: &Path, listen: &str) {
    let out = Command::new(bin_dir().join("bramble-leader"))
        .args(["init", "--listen", listen, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
}

/// A free UDP port on loopback, for a leader whose CLI config must name it.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `bramble-leader run` of an initialised data dir, killed when dropped.
struct Leader(std::process::Child);

impl Leader {
    fn run(data: &Path) -> Self {
        Leader(
            Command::new(bin_dir().join("bramble-leader"))
                .args(["run", "--data-dir"])
                .arg(data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_check(file: &str, env: &[(&str, &str)], flags: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, file).unwrap();
    let mut cmd = Command::new(bin_dir().join("bramble-agent"));
    cmd.arg("check").arg("--config").arg(&path).args(flags);
    for var in [
        "BRAMBLE_AGENT_NAME",
        "BRAMBLE_AGENT_LEADER",
        "BRAMBLE_AGENT_TOKEN",
        "BRAMBLE_AGENT_DATA_DIR",
        "BRAMBLE_AGENT_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn agent_config_precedence_is_file_then_environment_then_flags() {
    let file = "version = 1\nname = \"from-file\"\nleaders = [\"10.0.0.1:7443\"]\ndata_dir = \"/file\"\n";
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let out = text(agent_check(file, &[], &[]));
    assert!(out.contains("name = \"from-file\"") && out.contains("data_dir = \"/file\""), "{out}");
    let out = text(agent_check(file, &[("BRAMBLE_AGENT_NAME", "from-env"), ("BRAMBLE_AGENT_DATA_DIR", "/env")], &[]));
    assert!(out.contains("name = \"from-env\"") && out.contains("data_dir = \"/env\""), "{out}");
    assert!(out.contains("leaders = [\"10.0.0.1:7443\"]"), "unset variables keep the file's value: {out}");
    let out = text(agent_check(
        file,
        &[("BRAMBLE_AGENT_NAME", "from-env")],
        &["--name", "from-flag", "--token", "BR1secret"],
    ));
    assert!(out.contains("name = \"from-flag\""), "{out}");
    assert!(out.contains("token = \"<redacted>\"") && !out.contains("BR1secret"), "{out}");
}

#[test]
fn bad_configs_fail_with_file_line_and_field() {
    let out = agent_check("version = 1\n[resources]\nreserved_memory = \"1GB\"\n", &[], &[]);
    assert_eq!(out.status.code(), Some(2), "config errors exit with 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.toml:3:19: resources.reserved_memory: invalid memory quantity \"1GB\""), "{err}");
    let out = agent_check("version = 1\nleader = \"x\"\n", &[], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.toml:2:1: leader: unknown field `leader`"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("leader.toml");
    std::fs::write(&cfg, "version = 1\nlisten = \"0.0.0.0:99999\"\n").unwrap();
    let out = Command::new(bin_dir().join("bramble-leader")).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("leader.toml:2:10: listen: invalid socket address"), "{err}");
}

/// Each part of an error chain is printed once (the message of an error often includes its cause,
/// which the chain also holds).
#[test]
fn errors_say_each_thing_once() {
    let enoent = "No such file or directory (os error 2)";
    let agent =
        Command::new(bin_dir().join("bramble-agent")).args(["check", "--config", "/nonexistent"]).output().unwrap();
    let leader =
        Command::new(bin_dir().join("bramble-leader")).args(["run", "--config", "/nonexistent"]).output().unwrap();
    for (out, who) in [(agent, "bramble-agent"), (leader, "bramble-leader")] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim(), format!("{who}: cannot read /nonexistent: {enoent}"), "{who} says it once");
        assert_eq!(out.status.code(), Some(2), "{who}: a config error");
    }
    // A config that does not parse: file, line and field, once.
    let out = agent_check(
        "version = 1
[log]
level = 7
",
        &[],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("agent.toml:3:9: log.level").count(), 1, "file, line, column and field, once: {err}");
    assert_eq!(err.matches("invalid type").count(), 1, "the problem once: {err}");
}

/// Under systemd with `WatchdogSec=`, the agent feeds the watchdog while its reconciler goes round,
/// even with no leader to talk to (a board keeps its containers then, so it is not hung).
#[test]
fn the_agent_feeds_systemds_watchdog() {
    bramble_tests::require_root_and_ip();
    let lab = bramble_tests::NetLab::new(1);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data = dir.path().join("agent");
    let token = format!("BR1{}::abc123.0123456789abcdef0123", "ab".repeat(32));
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.ns(1)))
        .arg("--")
        .arg(bin_dir().join("bramble-agent"))
        .args(["run", "--leader", "127.0.0.1:9", "--name", "watched", "--token", &token, "--data-dir"])
        .arg(&data)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut pings, mut ready) = (0, false);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    while pings < 3 && started.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = sock.recv(&mut buf) {
            ready |= buf[..n].starts_with(b"READY=1");
            if &buf[..n] == b"WATCHDOG=1" {
                pings += 1;
            }
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(bramble_agent::reconcile::run_dir(&data));
    // Ready with no leader answering: under systemd a board booting while its leader is away
    // must not have its start time out (the unit was killed and restarted every 90 s).
    assert!(ready, "READY=1 although no leader answers");
    assert_eq!(pings, 3, "three WATCHDOG=1 within 20 s at a 1 s watchdog");
}

#[test]
fn the_leader_feeds_systemds_watchdog_while_its_store_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("leader");
    init_leader(&data, "127.0.0.1:0");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(bin_dir().join("bramble-leader"))
        .args(["run", "--data-dir", data.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut pings, mut ready) = (0, false);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    while pings < 3 && started.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = sock.recv(&mut buf) {
            ready |= buf[..n].starts_with(b"READY=1");
            if &buf[..n] == b"WATCHDOG=1" {
                pings += 1;
            }
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    assert!(ready, "READY=1 first");
    assert_eq!(pings, 3, "three WATCHDOG=1 within 20 s at a 1 s watchdog");
}

#[test]
fn init_refuses_to_overwrite_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("leader");
    let init = || {
        Command::new(bin_dir().join("bramble-leader"))
            .args(["init", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&d)
            .output()
            .unwrap()
    };
    let out = init();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CA fingerprint"));
    let ca = std::fs::read(d.join("pki/ca.key")).unwrap();
    let out = init();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a cluster already exists"));
    assert_eq!(std::fs::read(d.join("pki/ca.key")).unwrap(), ca);
}

#[test]
fn the_leader_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("leader");
    init_leader(&d, "127.0.0.1:0");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(bin_dir().join("bramble-leader"))
        .args(["run", "--data-dir"])
        .arg(&d)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 20s");
    assert_eq!(&buf[..n], b"READY=1");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success(), "clean exit after SIGTERM");
}

#[test]
fn systemd_units_pass_systemd_analyze() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(analyze.is_ok_and(|o| o.status.success()), "this test needs systemd-analyze (apt-get install systemd)");
    let dir = tempfile::tempdir().unwrap();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/systemd");
    let mut paths = Vec::new();
    for unit in ["bramble-leader.service", "bramble-agent.service", "bramble-single.service"] {
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap();
        // Point ExecStart at the binaries just built, which systemd-analyze checks exist.
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        assert!(text.contains("Type=notify"), "{unit} waits for READY=1");
        assert!(text.contains("WatchdogSec="), "{unit} is restarted when it hangs");
        let p = dir.path().join(unit);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    for p in &paths[1..] {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text.contains("KillMode=process"), "containers outlive restarts of {}", p.display());
    }
    // The drop-in for HA leaders beside etcd, checked as part of the leader's unit (a unit may
    // repeat a section, which is what a drop-in amounts to).
    let leader = std::fs::read_to_string(&paths[0]).unwrap();
    let dropin = std::fs::read_to_string(format!("{units}/bramble-leader.service.d/etcd.conf")).unwrap();
    assert!(dropin.contains("After=etcd.service"));
    let p = dir.path().join("bramble-leader-ha.service");
    std::fs::write(&p, format!("{leader}\n{dropin}")).unwrap();
    paths.push(p);
    let out = Command::new("systemd-analyze").arg("verify").args(&paths).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err.lines().filter(|l| l.contains("bramble")).collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify: {err}");
}

/// A leader on loopback and the real CLI: apply is all or nothing, reports each object's fate,
/// and delete takes names or files.
#[test]
fn apply_get_and_delete_apps_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("leader");
    init_leader(&d, &format!("127.0.0.1:{}", free_port()));
    let _leader = Leader::run(&d);
    let admin = d.join("admin.toml");
    let cli = |args: &[&str]| {
        Command::new(bin_dir().join("bramble")).arg("--config").arg(&admin).args(args).output().unwrap()
    };
    let start = std::time::Instant::now();
    while !cli(&["get", "nodes"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(10), "leader did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let m1 = dir.path().join("web.toml");
    std::fs::write(&m1, "[[app]]\nname = \"web\"\nimage = \"reg.lan/web:1\"\nreplicas = 2\n\n[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n").unwrap();
    assert_eq!(text(cli(&["apply", "-f", m1.to_str().unwrap()])), "app/web created\nservice/web created\n");
    assert_eq!(text(cli(&["apply", "-f", m1.to_str().unwrap()])), "app/web unchanged\nservice/web unchanged\n");
    std::fs::write(&m1, "[[app]]\nname = \"web\"\nimage = \"reg.lan/web:2\"\nreplicas = 2\n\n[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n").unwrap();
    assert_eq!(text(cli(&["apply", "-f", m1.to_str().unwrap()])), "app/web configured\nservice/web unchanged\n");
    let apps: serde_json::Value = serde_json::from_str(&text(cli(&["get", "apps", "-o", "json"]))).unwrap();
    assert_eq!(apps[0]["meta"]["generation"], 2);
    assert_eq!(apps[0]["spec"]["image"], "reg.lan/web:2");
    // One object by name: a table row, the object as JSON, `kind/name` lines; none: exit 4.
    let one = text(cli(&["get", "app", "web"]));
    assert!(one.starts_with("NAME") && one.lines().count() == 2 && one.contains("reg.lan/web:2"), "{one}");
    let obj: serde_json::Value = serde_json::from_str(&text(cli(&["get", "app", "web", "-o", "json"]))).unwrap();
    assert_eq!(obj["meta"]["name"], "web", "an object, not a list: {obj}");
    assert_eq!(text(cli(&["get", "services", "-o", "name"])), "service/web\n");
    assert_eq!(text(cli(&["get", "service", "web", "-o", "name"])), "service/web\n");
    // A running app back as a manifest that apply takes unchanged (diff exits 0).
    let back = dir.path().join("back.toml");
    std::fs::write(&back, text(cli(&["get", "app", "web", "-o", "toml"]))).unwrap();
    let d = cli(&["diff", "-f", back.to_str().unwrap()]);
    assert_eq!(
        d.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&d.stdout),
        std::fs::read_to_string(&back).unwrap()
    );
    assert_eq!(text(cli(&["apply", "-f", back.to_str().unwrap()])), "app/web unchanged\n");
    let all = dir.path().join("all.toml");
    std::fs::write(&all, text(cli(&["get", "services", "-o", "toml"]))).unwrap();
    assert_eq!(text(cli(&["apply", "-f", all.to_str().unwrap()])), "service/web unchanged\n");
    // The same for the example, with probes, resources, ports, env and update settings.
    let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello.toml");
    text(cli(&["apply", "-f", hello]));
    std::fs::write(&back, text(cli(&["get", "app", "hello", "-o", "toml"]))).unwrap();
    let d = cli(&["diff", "-f", back.to_str().unwrap()]);
    assert_eq!(
        d.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&d.stdout),
        std::fs::read_to_string(&back).unwrap()
    );
    text(cli(&["delete", "app", "hello"]));
    // YAML is the same object as JSON (read back by PyYAML).
    let as_json: serde_json::Value = serde_json::from_str(&text(cli(&["get", "app", "web", "-o", "json"]))).unwrap();
    let y = dir.path().join("web.yaml");
    std::fs::write(&y, text(cli(&["get", "app", "web", "-o", "yaml"]))).unwrap();
    let read = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(&y)
        .output()
        .expect("python3 (scripts/test installs it, with python3-yaml)");
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let from_yaml: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(from_yaml, as_json, "{}", std::fs::read_to_string(&y).unwrap());
    let nodes = cli(&["get", "nodes", "-o", "toml"]);
    assert!(String::from_utf8_lossy(&nodes.stderr).contains("a node has no manifest form: use -o json"));
    let missing = cli(&["get", "app", "nope"]);
    assert_eq!(missing.status.code(), Some(4), "not found");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("app \"nope\" not found"));
    // One bad object in a directory of manifests: nothing is applied, every problem is listed.
    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    std::fs::write(many.join("a.toml"), "[[app]]\nname = \"api\"\nimage = \"reg.lan/api:1\"\n").unwrap();
    std::fs::write(
        many.join("b.toml"),
        "[[app]]\nname = \"db\"\nimage = \"reg.lan/db:1\"\nresources = { memory = \"1GB\" }\n",
    )
    .unwrap();
    let out = cli(&["apply", "-f", many.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing applied") && err.contains("b.toml:4:24: app[0].resources.memory"), "{err}");
    let table = text(cli(&["get", "apps"]));
    assert!(!table.contains("api"), "the valid file was not applied either: {table}");
    assert!(table.starts_with("NAME   READY   IMAGE"), "{table}");
    // Watch: the table, then a row when an app changes and when it goes.
    let mut watch = Command::new(bin_dir().join("bramble"))
        .arg("--config")
        .arg(&admin)
        .args(["get", "apps", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (out, lines) = (watch.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let wait_line = |what: &str, f: &dyn Fn(&str) -> bool| {
        let start = std::time::Instant::now();
        while !lines.lock().unwrap().iter().any(|l| f(l)) {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}: {:?}", lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_line("the table", &|l: &str| l.starts_with("NAME"));
    text(cli(&["scale", "app", "web", "--replicas", "3"]));
    wait_line("web's new row", &|l: &str| l.starts_with("web ") && l.contains("0/3"));
    std::fs::write(dir.path().join("tmp.toml"), "[[app]]\nname = \"tmp\"\nimage = \"reg.lan/tmp:1\"\n").unwrap();
    text(cli(&["apply", "-f", dir.path().join("tmp.toml").to_str().unwrap()]));
    wait_line("tmp's row", &|l: &str| l.starts_with("tmp "));
    text(cli(&["delete", "app", "tmp"]));
    wait_line("tmp gone", &|l: &str| l.starts_with("tmp ") && l.contains("<deleted>"));
    let headers = lines.lock().unwrap().iter().filter(|l| l.starts_with("NAME")).count();
    assert_eq!(headers, 1, "one header, then rows");
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    assert!(!cli(&["get", "apps", "-w", "-o", "json"]).status.success(), "-w prints rows");
    // Delete: all or nothing too.
    let out = cli(&["delete", "app", "web", "ghost"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing deleted: app/ghost not found"));
    assert_eq!(text(cli(&["delete", "-f", m1.to_str().unwrap()])), "app/web deleted\nservice/web deleted\n");
    assert_eq!(text(cli(&["get", "apps"])).lines().count(), 1);
}

#[test]
fn agent_check_tries_what_pod_networking_needs() {
    bramble_tests::require_root_and_ip();
    let out = agent_check("version = 1\nname = \"pi-1\"\n", &[], &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "this machine has what pods need:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    for what in ["bridge (the pods' bridge)", "veth", "vxlan", "nf_tables with NAT", "IPv4 forwarding"] {
        let line = text.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("{what} is checked:\n{text}"));
        assert!(line.starts_with("#   ok"), "{line}");
    }
    let config: toml::Table = text.parse().expect("the output is still a valid agent.toml");
    assert_eq!(config["network"]["bridge"].as_str(), Some("bramble0"));
}

/// The doctor on this machine (cgroup v1 hybrid; scripts/test-boards runs it on cgroup v2 and on
/// an arm64 board): every piece found, tried where a look could mislead, and said in JSON too.
#[test]
fn agent_check_is_a_doctor_for_the_board() {
    bramble_tests::require_root_and_ip();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = agent_check("version = 1\nname = \"pi-1\"\n", &[], &["--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "this machine can run containers:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    for what in
        ["root", "kernel", "cgroups", "namespaces", "overlayfs", "seccomp", "disk space of the data dir", "memory"]
    {
        let line = text
            .lines()
            .find(|l| l.contains(&format!(" {what} ")))
            .unwrap_or_else(|| panic!("{what} is checked:\n{text}"));
        assert!(line.starts_with("#   ok"), "{line}");
    }
    let cgroups = text.lines().find(|l| l.contains(" cgroups ")).unwrap();
    assert!(cgroups.contains("memory") && cgroups.contains("pids"), "{cgroups}");
    // The overlay was tried in the data dir's filesystem (its nearest existing parent before the
    // first run) and nothing of the try is left.
    assert!(text.contains(&format!("mounts in {}", dir.path().display())), "{text}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the overlay try left nothing");
    assert!(text.trim_end().ends_with("# this board can run containers"), "{text}");

    let out = agent_check("version = 1\nname = \"pi-1\"\n", &[], &["-o", "json", "--data-dir", data.to_str().unwrap()]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check -o json");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["config"]["name"], "pi-1");
    let findings = doc["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["section"] == "this board" && f["what"] == "overlayfs" && f["ok"] == true));
    assert!(findings
        .iter()
        .any(|f| f["section"] == "pod networking" && f["what"].as_str().unwrap().starts_with("veth")));

    // A data dir where nothing can be written: the overlay try fails, the exit code says the board
    // cannot run containers, and the line says what to do.
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    nix::mount::mount(Some("tmpfs"), &ro, Some("tmpfs"), nix::mount::MsFlags::MS_RDONLY, None::<&str>).unwrap();
    let out = agent_check("version = 1\n", &[], &["--data-dir", ro.join("agent").to_str().unwrap()]);
    let _ = nix::mount::umount(&ro);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    let line = text.lines().find(|l| l.contains(" overlayfs ")).unwrap();
    assert!(
        line.starts_with("#   MISSING") && line.contains("Read-only file system") && line.contains("data_dir"),
        "{line}"
    );
    assert!(text.contains("this board cannot run containers: fix what is MISSING above"), "{text}");
}

#[test]
fn under_systemd_each_log_line_carries_its_priority_for_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("leader");
    init_leader(&data, "127.0.0.1:0");
    // The leader's first line is an info one: "leader serving".
    let run = |journal: bool| {
        let mut cmd = Command::new(bin_dir().join("bramble-leader"));
        cmd.args(["run", "--data-dir", data.to_str().unwrap()]).env_remove("RUST_LOG").stderr(Stdio::piped());
        if journal {
            cmd.env("JOURNAL_STREAM", "8:12345");
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let journal = run(true);
    let serving = journal.lines().find(|l| l.contains("leader serving")).unwrap_or_else(|| panic!("{journal}"));
    assert!(serving.starts_with("<6>"), "info is priority 6: {serving}");
    assert!(journal.lines().filter(|l| !l.is_empty()).all(|l| l.starts_with('<')), "every line: {journal}");
    let terminal = run(false);
    let serving = terminal.lines().find(|l| l.contains("leader serving")).unwrap_or_else(|| panic!("{terminal}"));
    assert!(!serving.starts_with('<'), "no prefix outside systemd: {serving}");
}

#[test]
fn the_cli_makes_its_completions_and_man_pages_and_suggests_commands() {
    let bramble = bin_dir().join("bramble");
    let run = |args: &[&str]| Command::new(&bramble).args(args).env_remove("BRAMBLE_CONFIG").output().unwrap();
    let bash = run(&["completion", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("complete -F _bramble") && script.contains("rollout") && script.contains("--output"));
    // The script is valid bash, and completes `bramble ro` to `rollout`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bramble.bash"), &script).unwrap();
    let complete = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(bramble ro); COMP_CWORD=1; _bramble bramble ro bramble; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            dir.path().join("bramble.bash").display()
        ))
        .output()
        .unwrap();
    assert!(complete.status.success(), "{}", String::from_utf8_lossy(&complete.stderr));
    assert_eq!(String::from_utf8_lossy(&complete.stdout).trim(), "rollout");
    for shell in ["zsh", "fish"] {
        let out = run(&["completion", shell]);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("rollout"), "{shell}");
    }
    assert!(!run(&["completion", "ksh"]).status.success(), "an unknown shell is refused");

    let man = dir.path().join("man");
    let out = run(&["man", "--out", man.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["bramble.1", "bramble-get.1", "bramble-rollout-status.1", "bramble-completion.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page} is a man page");
    }
    let get = std::fs::read_to_string(man.join("bramble-get.1")).unwrap();
    assert!(get.contains("List objects"), "the same text as --help");

    // A mistyped command gets a suggestion, and the usage exit code.
    let typo = run(&["aply", "-f", "x.toml"]);
    assert_eq!(typo.status.code(), Some(2));
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(said.contains("similar subcommand") && said.contains("'apply'"), "{said}");
}

#[test]
fn one_cli_config_holds_several_clusters_as_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let mut leaders = Vec::new();
    let mut admins = Vec::new();
    for name in ["home", "lab"] {
        let d = dir.path().join(name);
        let port = free_port();
        init_leader(&d, &format!("127.0.0.1:{port}"));
        leaders.push(Leader::run(&d));
        admins.push((port, d.join("admin.toml")));
    }
    // The user's config starts as one cluster's credentials (what `bramble-leader up` writes).
    let config = dir.path().join("cli/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::copy(&admins[0].1, &config).unwrap();
    let cli = |args: &[&str]| {
        Command::new(bin_dir().join("bramble"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("BRAMBLE_CONTEXT")
            .output()
            .unwrap()
    };
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let port_of = |o: std::process::Output| -> u16 {
        let v: serde_json::Value = serde_json::from_str(&text(o)).unwrap();
        v[0]["addr"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()
    };
    let start = std::time::Instant::now();
    while !cli(&["get", "leaders"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(10), "leader did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = cli(&["--context", "lab", "get", "leaders"]);
    assert!(!refused.status.success(), "--context with a one-cluster config is refused, not ignored");

    // Adding a second cluster keeps the first as `default`, still current.
    assert_eq!(
        text(cli(&["config", "add-context", "lab", "--from", admins[1].1.to_str().unwrap()])),
        "context/lab added\n"
    );
    let listed = text(cli(&["config", "get-contexts"]));
    assert!(listed.contains("*         default") && listed.contains("lab"), "{listed}");
    assert_eq!(port_of(cli(&["get", "leaders", "-o", "json"])), admins[0].0);
    // One command elsewhere, then the current one changed.
    assert_eq!(port_of(cli(&["--context", "lab", "get", "leaders", "-o", "json"])), admins[1].0);
    assert_eq!(text(cli(&["config", "use-context", "lab"])), "now talking to context lab\n");
    assert_eq!(port_of(cli(&["get", "leaders", "-o", "json"])), admins[1].0);
    assert_eq!(port_of(cli(&["--context", "default", "get", "leaders", "-o", "json"])), admins[0].0);
    let unknown = cli(&["--context", "work", "get", "leaders"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no context \"work\""));
    assert!(!cli(&["config", "use-context", "work"]).status.success());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("cli/contexts/lab.toml")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "credentials stay private");
    drop(leaders);
}
