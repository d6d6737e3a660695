//! The leader with many boards: a real leader process and N simulated agents that speak the real
//! protocol (join with a token, a session with heartbeats, desired sets down, status up) but run
//! no containers — they report every replica Running at once. Measures the leader's memory, the
//! time to get every replica Running, and the leader's writes while the cluster is steady.

use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::model::{Arch, NodeInfo, ReplicaPhase, Resources};
use bramble_proto::wire::{self, AgentMsg, Hello, LeaderMsg, Open, OpenKind, ReplicaStatus, PROTOCOL_VERSION};
use bramble_tests::process::{bin_dir, Proc};
use bramble_transport::quic::{client_endpoint_at, connect_session, read_frame, write_frame};
use bramble_transport::tls::client_config;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bramble_proto::time::now_ms;

fn kib(pid: u32, file: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn info() -> NodeInfo {
    let r = Resources { cpu_millis: 4000, memory_bytes: 4 << 30, replicas: 110 };
    NodeInfo { os: "Debian GNU/Linux 12".into(), kernel: "6.1.0-rpi".into(), ..NodeInfo::board(Arch::Arm64, r) }
}

/// What every simulated board shares.
struct Fleet {
    /// Joins a few at a time.
    joins: tokio::sync::Semaphore,
    usage_every: Duration,
    /// What each says in its hello.
    features: Vec<String>,
    /// Every board's connection, to count what the leader sent them.
    conns: std::sync::Mutex<Vec<quinn::Connection>>,
}

/// One simulated board: joins (a few at a time: joins come from the machine's own address, and
/// the leader caps connections per address), then keeps a session from loopback address `source`,
/// as a real board does from its own, answering every desired set with Running.
async fn sim_agent(
    dir: std::path::PathBuf,
    addr: SocketAddr,
    token: String,
    name: String,
    source: std::net::Ipv4Addr,
    fleet: Arc<Fleet>,
) {
    let creds = {
        let _turn = fleet.joins.acquire().await.expect("the join semaphore");
        bramble_agent::join::join(&dir, addr, &token, &name, info()).await.expect("join")
    };
    let tls = client_config(&creds.ca_pem, Some((&creds.cert_pem, &creds.key_pem))).expect("tls");
    let endpoint = client_endpoint_at(SocketAddr::from((source, 0))).expect("endpoint");
    let conn = connect_session(&endpoint, addr, tls, Duration::from_secs(10)).await.expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    // (It keeps alive as a real agent does, so the leader watches it as one.)
    let hello = Hello { node_name: name.clone(), epoch: 1, info: info(), features: fleet.features.clone() };
    fleet.conns.lock().expect("connections").push(conn.clone());
    write_frame(&mut send, &Open { version: PROTOCOL_VERSION, kind: OpenKind::Session(Box::new(hello)) })
        .await
        .expect("hello");
    let heartbeat = match read_frame::<LeaderMsg>(&mut recv, MAX_FRAME_LEN).await {
        Ok(Some(LeaderMsg::Welcome { heartbeat_ms, .. })) => Duration::from_millis(heartbeat_ms),
        other => panic!("{name}: no welcome: {other:?}"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Some(m)) = read_frame::<LeaderMsg>(&mut recv, MAX_FRAME_LEN).await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let mut tick = tokio::time::interval(heartbeat);
    // Usage as a real agent sends it (every 15 s by default; every second by default here: 60 s
    // of it fill as many points as the 15 minutes of history at 15 s).
    let mut usage_tick = tokio::time::interval(fleet.usage_every);
    let mut running: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                if write_frame(&mut send, &AgentMsg::Heartbeat { seq }).await.is_err() { return }
            }
            _ = usage_tick.tick() => {
                let sample = crate::monitoring::sample(seq, &running);
                if write_frame(&mut send, &AgentMsg::Usage(sample)).await.is_err() { return }
            }
            m = rx.recv() => match m {
                Some(LeaderMsg::Desired { upsert, remove, full }) => {
                    if full {
                        running.clear();
                    }
                    for r in &remove {
                        running.remove(r);
                    }
                    running.extend(upsert.iter().map(|a| a.replica.clone()));
                    let now = now_ms();
                    let replicas = upsert.into_iter().map(|a| ReplicaStatus {
                        started_ms: Some(now),
                        container_id: Some(a.replica.clone()),
                        ready: true,
                        ..ReplicaStatus::new(&a.replica, ReplicaPhase::Running)
                    }).collect();
                    if write_frame(&mut send, &AgentMsg::Status { full: false, replicas }).await.is_err() { return }
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

fn cli(bins: &Path, admin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bins.join("bramble")).arg("--config").arg(admin).args(args).output().expect("run bramble")
}

/// Replicas Running, counted by the leader (`get replicas --count`: a few KB, not every replica).
fn running(bins: &Path, admin: &Path) -> usize {
    let out = cli(bins, admin, &["get", "replicas", "--count", "-o", "json"]);
    let v: Vec<bramble_proto::wire::ReplicaCount> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.iter().map(|c| c.phases.get("Running").copied().unwrap_or(0) as usize).sum()
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // After the command: utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// A pod range with a /24 for each of `agents` boards: the default (10.42.0.0/16, 256 boards)
/// or a larger one.
fn pod_range(agents: usize) -> Option<String> {
    let bits = (agents + 1).next_power_of_two().trailing_zeros().max(8) as u8;
    (bits > 8).then(|| format!("10.{}.0.0/{}", 64, 24 - bits))
}

pub fn run(agents: usize, replicas: usize, steady_secs: u64, usage_secs: u64, whole_peers: bool) -> serde_json::Value {
    let bins = bin_dir();
    let dir = tempfile::Builder::new().prefix("bramble-bench-scale-").tempdir().expect("temp dir");
    let range = pod_range(agents);
    let extra: Vec<&str> = range.iter().flat_map(|r| ["--cluster-cidr", r.as_str()]).collect();
    if let Some(r) = &range {
        println!("  (the default pod range holds 256 boards: initialised with --cluster-cidr {r})");
    }
    let (leader_dir, listen) = crate::stats::init_leader_with(&bins, dir.path(), &extra);
    let args = vec!["run".to_string(), "--config".into(), leader_dir.join("leader.toml").display().to_string()];
    let leader = Proc::spawn_host("leader", &bins.join("bramble-leader"), &args, &dir.path().join("leader.log"));
    let admin = leader_dir.join("admin.toml");
    let t = Instant::now();
    let token = loop {
        let out = cli(&bins, &admin, &["token", "create"]);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap().trim().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the leader did not answer");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let addr: SocketAddr = listen.parse().unwrap();
    // What a real agent says (`--whole-peers`: as one from before peer changes).
    let mut features = vec![wire::FEATURE_LIVENESS, wire::FEATURE_REGISTRIES];
    if !whole_peers {
        features.push(wire::FEATURE_PEER_DELTAS);
    }
    let fleet = Arc::new(Fleet {
        joins: tokio::sync::Semaphore::new(8),
        usage_every: Duration::from_secs(usage_secs.max(1)),
        features: features.into_iter().map(String::from).collect(),
        conns: std::sync::Mutex::new(Vec::new()),
    });
    // What the leader sent every board (QUIC's own count of bytes).
    let received = |fleet: &Fleet| -> u64 {
        fleet.conns.lock().expect("connections").iter().map(|c| c.stats().udp_rx.bytes).sum()
    };
    let pid = leader.pid();
    let c_join = cpu_ticks(pid);
    let mut boards = Vec::new();
    for i in 0..agents {
        let d = dir.path().join(format!("sim-{i}"));
        // 127.0.1.1, 127.0.1.2, …: all of 127/8 is this machine's loopback.
        let source = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 1, 1)) + i as u32);
        boards.push(rt.spawn(sim_agent(d, addr, token.clone(), format!("sim-{i}"), source, fleet.clone())));
    }
    let t = Instant::now();
    loop {
        let out = cli(&bins, &admin, &["get", "nodes"]);
        let ready = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" Ready ")).count();
        if ready == agents {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "only {ready}/{agents} simulated boards Ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let joined = t.elapsed();
    let join_cpu = cpu_ticks(pid) - c_join;
    std::thread::sleep(Duration::from_secs(2));
    let join_bytes = received(&fleet);
    let (rss0, pss0) = (kib(pid, "status", "VmRSS:"), kib(pid, "smaps_rollup", "Pss:"));
    // What the boards alone cost the leader's CPU: their sessions' keep-alives (a PING every
    // 500 ms and its ACK) and their usage samples.
    const BOARDS_ONLY: Duration = Duration::from_secs(10);
    let c_idle = cpu_ticks(pid);
    std::thread::sleep(BOARDS_ONLY);
    let idle_ticks = cpu_ticks(pid) - c_idle;

    // Apps of 100 replicas each (the most one app may have is 1,000).
    let apps = replicas.div_ceil(100);
    let mut text = String::new();
    for a in 0..apps {
        let n = (replicas - a * 100).min(100);
        text.push_str(&format!(
            "[[app]]\nname = \"app-{a}\"\nimage = \"registry.lan/app-{a}:1\"\nreplicas = {n}\n\
             [app.resources]\ncpu = \"10m\"\nmemory = \"16Mi\"\n"
        ));
    }
    let manifest = dir.path().join("apps.toml");
    std::fs::write(&manifest, text).unwrap();
    let t = Instant::now();
    let out = cli(&bins, &admin, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    // The bench's own looking costs the leader too (every replica as JSON, each time): said.
    let (mut polls, mut polling) = (0u32, Duration::ZERO);
    loop {
        let p = Instant::now();
        let n = running(&bins, &admin);
        (polls, polling) = (polls + 1, polling + p.elapsed());
        if n == replicas {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "not all replicas Running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let to_running = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (rss1, pss1) = (kib(pid, "status", "VmRSS:"), kib(pid, "smaps_rollup", "Pss:"));
    let store = leader_dir.join("store.redb");
    let size_before = std::fs::metadata(&store).map_or(0, |m| m.len());
    let w0 = leader.write_bytes();
    let c0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(steady_secs));
    let written = leader.write_bytes().saturating_sub(w0);
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let cpu_pct = (cpu_ticks(pid) - c0) as f64 / ticks / steady_secs as f64 * 100.0;
    let size_after = std::fs::metadata(&store).map_or(0, |m| m.len());
    let rss2 = kib(pid, "status", "VmRSS:");
    let per_day_mb = written as f64 * (86_400.0 / steady_secs as f64) / 1e6;
    let ticks_s = |t: u64| t as f64 / ticks;
    let peers_said = if whole_peers { "whole lists of peers, as older agents" } else { "peer changes" };
    println!("a leader with {agents} simulated boards (real protocol, no containers; {peers_said}):");
    println!(
        "  {agents} boards join (8 at a time) -> all Ready: {:.1} s, leader CPU {:.1} s; sent to the boards {:.1} MiB ({:.1} KiB per board)",
        joined.as_secs_f64(),
        ticks_s(join_cpu),
        join_bytes as f64 / 1048576.0,
        join_bytes as f64 / 1024.0 / agents as f64
    );
    let idle_cpu_pct = ticks_s(idle_ticks) / BOARDS_ONLY.as_secs_f64() * 100.0;
    println!(
        "  {agents} boards Ready, no apps:              RSS {:.1} MiB, PSS {:.1} MiB; CPU {idle_cpu_pct:.1} % of one core over {} s",
        rss0 as f64 / 1024.0,
        pss0 as f64 / 1024.0,
        BOARDS_ONLY.as_secs()
    );
    println!(
        "  apply {replicas} replicas ({apps} apps) -> all Running: {:.2} s (looked {polls} times, `get replicas --count` {:.0} ms each)",
        to_running.as_secs_f64(),
        polling.as_secs_f64() * 1000.0 / polls.max(1) as f64
    );
    println!(
        "  {replicas} replicas Running:                RSS {:.1} MiB, PSS {:.1} MiB",
        rss1 as f64 / 1024.0,
        pss1 as f64 / 1024.0
    );
    println!(
        "  steady {steady_secs} s: leader wrote {written} bytes (store {size_before} -> {size_after} bytes) = {per_day_mb:.2} MB/day; RSS after {:.1} MiB; CPU {cpu_pct:.1} % of one core (usage every {usage_secs} s)",
        rss2 as f64 / 1024.0
    );
    // One board lost (its session closed; the default grace then applies): its replicas placed
    // on the others and Running again.
    // (Replicas on the lost board and Running in all, from one list.)
    let lost_and_running = |bins: &Path| -> (usize, usize) {
        let out = cli(bins, &admin, &["get", "replicas", "-o", "json"]);
        let v: Vec<bramble_proto::model::Replica> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let lost = v.iter().filter(|r| r.node.as_deref() == Some("sim-0")).count();
        (lost, v.iter().filter(|r| r.phase == ReplicaPhase::Running).count())
    };
    let on_lost = lost_and_running(&bins).0;
    let t = Instant::now();
    boards[0].abort();
    loop {
        if lost_and_running(&bins) == (0, replicas) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the lost board's replicas were not re-placed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let replaced = t.elapsed();
    let grace = Duration::from_secs(5);
    println!(
        "  one board lost ({on_lost} replicas): all Running elsewhere {:.2} s after its session ended ({:.2} s after the 5 s grace)",
        replaced.as_secs_f64(),
        replaced.saturating_sub(grace).as_secs_f64()
    );
    // A backup of this cluster (CLI: snapshot over mTLS, sealed here), and a restore of it.
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "benchmark passphrase\n").expect("passphrase");
    let file = dir.path().join("cluster.bak");
    let t = Instant::now();
    let out = cli(
        &bins,
        &admin,
        &["backup", "-o", file.to_str().expect("utf-8"), "--passphrase-file", pass.to_str().expect("utf-8")],
    );
    let backup_time = t.elapsed();
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    let backup_size = std::fs::metadata(&file).map_or(0, |m| m.len());
    let t = Instant::now();
    let out = std::process::Command::new(bins.join("bramble-leader"))
        .args(["restore", "--data-dir"])
        .arg(dir.path().join("restored"))
        .arg("--passphrase-file")
        .arg(&pass)
        .arg(&file)
        .output()
        .expect("restore");
    let restore_time = t.elapsed();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    println!(
        "  backup of the cluster ({replicas} replicas): {:.2} s, {} KiB sealed; restore into a new data dir: {:.2} s",
        backup_time.as_secs_f64(),
        backup_size / 1024,
        restore_time.as_secs_f64()
    );
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(leader);
    serde_json::json!({
        "backup": { "ms": backup_time.as_millis() as u64, "bytes": backup_size, "restore_ms": restore_time.as_millis() as u64 },
        "agents": agents,
        "replicas": replicas,
        "peer_changes": !whole_peers,
        "join": { "ms": joined.as_millis() as u64, "leader_cpu_s": ticks_s(join_cpu), "bytes_to_boards": join_bytes },
        "leader_idle": { "rss_kib": rss0, "pss_kib": pss0, "cpu_percent": idle_cpu_pct },
        "leader_with_replicas": { "rss_kib": rss1, "pss_kib": pss1 },
        "apply_to_all_running_ms": to_running.as_millis() as u64,
        "apply_polls": { "count": polls, "ms_each": polling.as_millis() as u64 / u64::from(polls.max(1)) },
        "steady": { "seconds": steady_secs, "write_bytes": written, "mb_per_day": per_day_mb, "rss_kib_after": rss2, "cpu_percent": cpu_pct, "usage_secs": usage_secs },
        "board_lost": { "replicas": on_lost, "replaced_ms": replaced.as_millis() as u64 },
    })
}
