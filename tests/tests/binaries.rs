//! The binaries as an operator meets them: config precedence and errors, init, systemd units and
//! readiness notification. No namespaces needed.

use bramble_tests::process::bin_dir;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let out = Command::new(bin_dir().join("bramble-leader"))
        .args(["init", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(out.status.success());
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
    for unit in ["bramble-leader.service", "bramble-agent.service"] {
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap();
        // Point ExecStart at the binaries just built, which systemd-analyze checks exist.
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        assert!(text.contains("Type=notify"), "{unit} waits for READY=1");
        let p = dir.path().join(unit);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let agent = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(agent.contains("KillMode=process"), "containers outlive agent restarts");
    let out = Command::new("systemd-analyze").arg("verify").args(&paths).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err.lines().filter(|l| l.contains("bramble")).collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify: {err}");
}
