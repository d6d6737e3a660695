//! Prints the start-up times and memory of a leader with three agents on loopback.
//!
//!   cargo build --release --bins && cargo run --release -p bramble-tests --bin footprint [-- SECONDS]
//!
//! Uses the binaries next to this one (so build them with the same profile first). Figures:
//! leader start → READY=1 (serving), agent start → READY=1 (session up) and → Ready on the leader,
//! then RSS/PSS of each process after SECONDS (default 60) idle.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bins() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_path_buf()
}

fn spawn(bin: &str, args: &[&str], notify: &Path) -> Child {
    Command::new(bins().join(bin))
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (build the binaries first)"))
}

fn wait_ready(sock: &UnixDatagram) {
    let mut buf = [0u8; 64];
    loop {
        let n = sock.recv(&mut buf).expect("a notification within 30s");
        if &buf[..n] == b"READY=1" {
            return;
        }
    }
}

fn status_kib(pid: u32, file: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    let idle: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let leader_dir = d.join("leader");
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new(bins().join("bramble-leader"))
        .args(["init", "--listen", &listen, "--data-dir", leader_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sock_path = d.join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();

    let t = Instant::now();
    let mut leader = spawn("bramble-leader", &["run", "--data-dir", leader_dir.to_str().unwrap()], &sock_path);
    wait_ready(&sock);
    let leader_ready = t.elapsed();

    let admin = leader_dir.join("admin.toml");
    let cli =
        |args: &[&str]| Command::new(bins().join("bramble")).arg("--config").arg(&admin).args(args).output().unwrap();
    let token = String::from_utf8(cli(&["token", "create"]).stdout).unwrap().trim().to_string();
    let mut agents = Vec::new();
    let mut agent_times = Vec::new();
    for i in 1..=3 {
        let name = format!("fp-{i}");
        let data = d.join(&name);
        let t = Instant::now();
        let child = spawn(
            "bramble-agent",
            &["run", "--leader", &listen, "--token", &token, "--name", &name, "--data-dir", data.to_str().unwrap()],
            &sock_path,
        );
        wait_ready(&sock);
        let session = t.elapsed();
        loop {
            let json = String::from_utf8(cli(&["get", "nodes", "-o", "json"]).stdout).unwrap();
            let ready = json.contains(&format!("\"name\": \"{name}\"")) && {
                let nodes: serde_json::Value = serde_json::from_str(&json).unwrap();
                nodes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["node"]["meta"]["name"] == name.as_str() && n["ready"]["status"] == "True")
            };
            if ready {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        agent_times.push((session, t.elapsed()));
        agents.push(child);
    }
    // A restart with a certificate (no join): the common case on a board.
    agents[0].kill().unwrap();
    agents[0].wait().unwrap();
    let data = d.join("fp-1");
    let t = Instant::now();
    agents[0] = spawn(
        "bramble-agent",
        &["run", "--leader", &listen, "--name", "fp-1", "--data-dir", data.to_str().unwrap()],
        &sock_path,
    );
    wait_ready(&sock);
    let restart = t.elapsed();

    eprintln!("idling {idle}s with 3 agents…");
    std::thread::sleep(Duration::from_secs(idle));
    println!("leader start -> serving (READY=1): {:.1} ms", leader_ready.as_secs_f64() * 1e3);
    for (i, (session, ready)) in agent_times.iter().enumerate() {
        println!(
            "agent {} first start (join) -> session: {:.1} ms, -> Ready on the leader: {:.1} ms",
            i + 1,
            session.as_secs_f64() * 1e3,
            ready.as_secs_f64() * 1e3
        );
    }
    println!("agent restart (certificate, no join) -> session: {:.1} ms", restart.as_secs_f64() * 1e3);
    println!("after {idle}s idle:");
    let mut procs = vec![("leader".to_string(), leader.id())];
    procs.extend(agents.iter().enumerate().map(|(i, a)| (format!("agent {}", i + 1), a.id())));
    for (name, pid) in &procs {
        println!(
            "  {name:<8} RSS {:>6} KiB  PSS {:>6} KiB",
            status_kib(*pid, "status", "VmRSS:"),
            status_kib(*pid, "smaps_rollup", "Pss:")
        );
    }
    for a in agents.iter_mut() {
        let _ = a.kill();
        let _ = a.wait();
    }
    let _ = leader.kill();
    let _ = leader.wait();
}
