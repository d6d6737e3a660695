//! Highly available leaders on etcd: failover time (kill -9 the active leader → the standby
//! active, and → the boards' sessions back), apply → Running on etcd vs redb, and what a steady
//! cluster writes on etcd vs redb (flash care). Real processes in network namespaces, three etcd
//! members of Debian's etcd.

use crate::apps::{replicas, wait};
use crate::stats::summarize;
use bramble_proto::model::{ConditionStatus, NodeView, ReplicaPhase};
use bramble_proto::time::now_ms;
use bramble_tests::cluster::{idle_app, with_busybox_opts, Cluster, ClusterOptions};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

fn opts(etcd: usize) -> ClusterOptions {
    ClusterOptions { agents: 1, etcd, not_ready_after: "15s", heartbeat: "2s", ..Default::default() }
}

fn config_for(c: &Cluster, addr: &str, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(c.leader_dir().join("admin.toml")).expect("admin.toml");
    let start = text.find("leaders = [").expect("leaders");
    let end = start + text[start..].find(']').expect("]") + 1;
    let path = c.dir.path().join(format!("only-{name}.toml"));
    std::fs::write(&path, format!("{}leaders = [\"{addr}\"]{}", &text[..start], &text[end..])).expect("write");
    path
}

fn active_at(c: &Cluster, config: &Path) -> Option<String> {
    let out = c.cli_as(config, &["get", "leaders", "-o", "json"]);
    let list: Vec<bramble_proto::wire::LeaderInfo> = serde_json::from_slice(&out.stdout).ok()?;
    list.into_iter().find(|l| l.active).map(|l| l.name)
}

fn board_session_since(c: &Cluster, config: &Path) -> Option<u64> {
    let out = c.cli_as(config, &["get", "nodes", "-o", "json"]);
    let nodes: Vec<NodeView> = serde_json::from_slice(&out.stdout).ok()?;
    let n = nodes.first()?;
    (n.ready.status == ConditionStatus::True).then_some(n.ready.last_transition_ms)
}

fn failover(runs: usize) -> serde_json::Value {
    let (mut c, _registry, image) = with_busybox_opts(opts(3), "");
    c.add_leader();
    let addr = |name: &str| {
        let port = if name == "leader-a" { 7443 } else { bramble_tests::cluster::SECOND_LEADER_PORT };
        format!("{}:{port}", c.lab.addr(0))
    };
    let configs =
        [("leader-a", config_for(&c, &addr("leader-a"), "a")), ("leader-b", config_for(&c, &addr("leader-b"), "b"))];
    let path = idle_app(c.dir.path(), "web", &image, 2);
    assert!(c.cli(&["apply", "-f", path.to_str().expect("utf-8")]).status.success());
    let ids = |c: &Cluster| {
        let mut v: Vec<_> =
            replicas(c, "web").iter().map(|r| (r.meta.name.clone(), r.container_id.clone(), r.restarts)).collect();
        v.sort();
        v
    };
    wait("two replicas", Duration::from_secs(60), || {
        (replicas(&c, "web").iter().filter(|r| r.phase == ReplicaPhase::Running).count() == 2).then_some(())
    });
    let before = ids(&c);
    let (mut elected, mut reconnected) = (Vec::new(), Vec::new());
    println!("failover, kill -9 of the active leader, lease TTL 2 s, {runs} runs:");
    for run in 0..runs {
        wait("two leaders", Duration::from_secs(30), || (c.leaders().len() == 2).then_some(()));
        let active = wait("an active leader", Duration::from_secs(30), || {
            active_at(&c, &configs[0].1).or_else(|| active_at(&c, &configs[1].1))
        });
        let other = if active == "leader-a" { 1 } else { 0 };
        let other_cfg = configs[other].1.clone();
        let t0 = now_ms();
        let killed = Instant::now();
        if active == "leader-a" {
            c.leader.take().expect("leader-a runs").stop(Signal::SIGKILL);
        } else {
            c.more_leaders[0].1.take().expect("leader-b runs").stop(Signal::SIGKILL);
        }
        wait("the standby active", Duration::from_secs(30), || {
            (active_at(&c, &other_cfg).as_deref() == Some(configs[other].0)).then_some(())
        });
        let e = killed.elapsed();
        let since = wait("the board's session on the new leader", Duration::from_secs(60), || {
            board_session_since(&c, &other_cfg).filter(|s| *s >= t0)
        });
        let r = Duration::from_millis(since.saturating_sub(t0));
        println!(
            "  run {run}: {} active after {:.2} s, the board back after {:.2} s",
            configs[other].0,
            e.as_secs_f64(),
            r.as_secs_f64()
        );
        elected.push(e);
        reconnected.push(r);
        // The killed one comes back, as a standby.
        if active == "leader-a" {
            c.start_leader();
        } else {
            c.start_more_leader(0);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ids(&c), before, "no container restarted across the failovers");
    // What the board's session costs its link while nothing changes: heartbeats (every 2 s by
    // default), keep-alives (every 500 ms when nothing else went out) and their ACKs, usage reports.
    let secs = 30;
    let (rx0, tx0) = c.lab.link_bytes(1);
    std::thread::sleep(Duration::from_secs(secs));
    let (rx1, tx1) = c.lab.link_bytes(1);
    let (rx, tx) = ((rx1 - rx0) as f64 / secs as f64, (tx1 - tx0) as f64 / secs as f64);
    println!("  the board's link while steady ({secs} s, 2 replicas): {rx:.0} bytes/s in, {tx:.0} bytes/s out");
    let (e, r) = (summarize(&elected), summarize(&reconnected));
    println!("  {:<40} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!("  {:<40} {:>9.0} {:>9.0} {:>9.0}", "kill -9 -> standby active (CLI sees it)", e.min, e.median, e.p95);
    println!("  {:<40} {:>9.0} {:>9.0} {:>9.0}", "kill -9 -> the board's session back", r.min, r.median, r.p95);
    println!("  peers (published): Nomad ~1-2 s with raft defaults; kube-controller-manager leases up to ~15 s");
    println!("  no container restarted: {} replicas, same ids and restart counts", before.len());
    c.remove_containers();
    serde_json::json!({
        "elected": e.json(), "board_back": r.json(), "lease_ttl_s": 2,
        "board_link_steady_bytes_per_s": { "in": rx, "out": tx },
    })
}

/// Apply -> 10 replicas Running (image cached), on a cluster whose leader keeps the store in
/// `etcd` (3 members) or redb.
fn apply_to_running(etcd: usize, runs: usize) -> crate::stats::Summary {
    let (c, _registry, image) = with_busybox_opts(opts(etcd), "[resources]\nmax_replicas = 50\n");
    let mut samples = Vec::new();
    for run in 0..=runs {
        let name = format!("a{run}");
        let path = idle_app(c.dir.path(), &name, &image, 10);
        let t0 = now_ms();
        assert!(c.cli(&["apply", "-f", path.to_str().expect("utf-8")]).status.success());
        let rs = wait("10 Running", Duration::from_secs(120), || {
            let rs = replicas(&c, &name);
            (rs.len() == 10 && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(rs)
        });
        let last = rs.iter().filter_map(|r| r.started_ms).max().expect("started");
        // The first run warms the image cache.
        if run > 0 {
            samples.push(Duration::from_millis(last.saturating_sub(t0)));
        }
        assert!(c.cli(&["delete", "app", &name]).status.success());
        wait("containers gone", Duration::from_secs(60), || {
            (std::fs::read_dir(c.shims_dir(1)).map_or(0, |d| d.count()) == 0).then_some(())
        });
    }
    c.remove_containers();
    summarize(&samples)
}

/// What a steady cluster (one board, 10 replicas) writes in `secs`: the leader process, and on
/// etcd its members too.
fn steady_writes(etcd: usize, secs: u64) -> (u64, u64) {
    let (c, _registry, image) = with_busybox_opts(opts(etcd), "");
    let path = idle_app(c.dir.path(), "s", &image, 10);
    assert!(c.cli(&["apply", "-f", path.to_str().expect("utf-8")]).status.success());
    wait("10 Running", Duration::from_secs(120), || {
        (replicas(&c, "s").iter().filter(|r| r.phase == ReplicaPhase::Running).count() == 10).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let etcd_bytes = |c: &Cluster| -> u64 {
        c.etcd.as_ref().map_or(0, |e| {
            e.pids()
                .iter()
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/io"))
                        .ok()
                        .and_then(|io| io.lines().find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok()))
                        .unwrap_or(0u64)
                })
                .sum()
        })
    };
    let (l0, e0) = (c.leader().write_bytes(), etcd_bytes(&c));
    std::thread::sleep(Duration::from_secs(secs));
    let (l1, e1) = (c.leader().write_bytes(), etcd_bytes(&c));
    c.remove_containers();
    (l1 - l0, e1 - e0)
}

pub fn run(runs: usize, steady_secs: u64) -> serde_json::Value {
    let fo = failover(runs);
    println!("apply -> 10 replicas Running (image cached), {runs} runs:");
    let redb = apply_to_running(0, runs);
    let etcd = apply_to_running(3, runs);
    println!("  {:<24} {:>9} {:>9} {:>9}", "store", "min ms", "median", "p95");
    println!("  {:<24} {:>9.0} {:>9.0} {:>9.0}", "redb (one leader)", redb.min, redb.median, redb.p95);
    println!("  {:<24} {:>9.0} {:>9.0} {:>9.0}", "etcd (3 members)", etcd.min, etcd.median, etcd.p95);
    println!("steady cluster (one board, 10 replicas) for {steady_secs} s, writes extrapolated per day:");
    let day = |b: u64| b as f64 * 86_400.0 / steady_secs as f64 / 1e6;
    let (rl, _) = steady_writes(0, steady_secs);
    let (el, ee) = steady_writes(3, steady_secs);
    println!("  redb leader: {:.2} MB/day", day(rl));
    println!(
        "  etcd leader process: {:.2} MB/day; its 3 etcd members together: {:.2} MB/day ({:.2} each)",
        day(el),
        day(ee),
        day(ee) / 3.0
    );
    serde_json::json!({
        "failover": fo,
        "apply_10_running": { "redb": redb.json(), "etcd": etcd.json() },
        "steady_writes_mb_per_day": { "seconds": steady_secs, "redb_leader": day(rl), "etcd_leader": day(el), "etcd_members_total": day(ee) },
    })
}
