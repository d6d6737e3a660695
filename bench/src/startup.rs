//! Process start → ready, for the leader (serving: `READY=1`) and the agent (session up:
//! `READY=1`), each restarted many times; and the stripped sizes of the binaries, for this machine
//! and the ARM targets that `cross/build.sh` built.

use crate::stats::summarize;
use bramble_tests::process::bin_dir;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(bin: &Path, args: &[&str], notify: &Path) -> Child {
    Command::new(bin)
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

fn wait_ready(sock: &UnixDatagram) {
    let mut buf = [0u8; 64];
    loop {
        let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
        if &buf[..n] == b"READY=1" {
            return;
        }
    }
}

fn stop(mut c: Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = c.wait();
}

pub fn run(runs: usize) -> serde_json::Value {
    let bins = bin_dir();
    let dir = tempfile::Builder::new().prefix("bramble-bench-start-").tempdir().expect("temp dir");
    let d = dir.path();
    let (leader_dir, listen) = crate::stats::init_leader(&bins, d);
    let sock_path = d.join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let leader_args = ["run", "--data-dir", leader_dir.to_str().unwrap()];

    let mut leader_times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let c = spawn(&bins.join("bramble-leader"), &leader_args, &sock_path);
        wait_ready(&sock);
        leader_times.push(t.elapsed());
        stop(c);
    }
    let leader = spawn(&bins.join("bramble-leader"), &leader_args, &sock_path);
    wait_ready(&sock);
    let admin = leader_dir.join("admin.toml");
    let out =
        Command::new(bins.join("bramble")).arg("--config").arg(&admin).args(["token", "create"]).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let data = d.join("agent");
    let agent = bins.join("bramble-agent");
    let t = Instant::now();
    let first = spawn(
        &agent,
        &["run", "--leader", &listen, "--token", &token, "--name", "b1", "--data-dir", data.to_str().unwrap()],
        &sock_path,
    );
    wait_ready(&sock);
    let join = t.elapsed();
    stop(first);
    let mut agent_times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let c = spawn(
            &agent,
            &["run", "--leader", &listen, "--name", "b1", "--data-dir", data.to_str().unwrap()],
            &sock_path,
        );
        wait_ready(&sock);
        agent_times.push(t.elapsed());
        stop(c);
    }
    stop(leader);
    let (l, a) = (summarize(&leader_times), summarize(&agent_times));
    println!("process start -> ready (READY=1), {runs} starts each:");
    println!("  {:<44} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!("  {:<44} {:>9.1} {:>9.1} {:>9.1}", "leader (store, PKI, QUIC endpoint up)", l.min, l.median, l.p95);
    println!("  {:<44} {:>9.1} {:>9.1} {:>9.1}", "agent restart (certificate; session up)", a.min, a.median, a.p95);
    println!("  agent first start with a join token -> session: {:.1} ms (once)", join.as_secs_f64() * 1e3);

    // Sizes, stripped (the release profile strips), where the binaries exist.
    let target = bins.parent().expect("target dir");
    let mut sizes = serde_json::Map::new();
    println!("binary sizes (stripped, release):");
    for (label, dir) in [
        ("this machine", bins.clone()),
        ("aarch64-unknown-linux-musl", target.join("aarch64-unknown-linux-musl/release")),
        ("armv7-unknown-linux-musleabihf", target.join("armv7-unknown-linux-musleabihf/release")),
    ] {
        let row: Vec<(String, Option<u64>)> = ["bramble-leader", "bramble-agent", "bramble-shim", "bramble"]
            .iter()
            .map(|b| (b.to_string(), std::fs::metadata(dir.join(b)).ok().map(|m| m.len())))
            .collect();
        let text: Vec<String> = row
            .iter()
            .map(|(b, s)| format!("{b} {}", s.map_or("-".into(), |s| format!("{:.1} MB", s as f64 / 1e6))))
            .collect();
        // Binaries older than this machine's were built from older sources.
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stale = label != "this machine"
            && modified(&dir.join("bramble-agent")) < modified(&bins.join("bramble-agent"))
            && modified(&dir.join("bramble-agent")).is_some();
        let note = if stale { "  (older than this machine's build: run cross/build.sh)" } else { "" };
        println!("  {label:<32} {}{note}", text.join(", "));
        sizes.insert(label.into(), serde_json::json!(row.into_iter().collect::<std::collections::BTreeMap<_, _>>()));
    }
    if !target.join("aarch64-unknown-linux-musl/release/bramble-agent").exists() {
        println!("  (run cross/build.sh for the ARM binaries)");
    }
    serde_json::json!({
        "leader_start_to_ready": l.json(),
        "agent_restart_to_session": a.json(),
        "agent_join_to_session_ms": join.as_secs_f64() * 1e3,
        "sizes_bytes": sizes,
    })
}
