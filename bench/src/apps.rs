//! Apply → all replicas Running (1, 10, 100 replicas, one board, image cached) and node loss →
//! replacement Running, on a real cluster: the leader and agents as processes in network
//! namespaces, the image from a real registry, real containers.
//!
//! Times come from the cluster's own clocks where it can: a replica's `started_ms` (written by its
//! shim when the process runs) minus the wall-clock time just before `bramble apply` (or the
//! kill), so the CLI's polling does not blur them.

use crate::stats::summarize;
use bramble_proto::model::{ConditionStatus, Replica, ReplicaPhase};
use bramble_tests::Cluster;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

use bramble_proto::time::now_ms;

pub(crate) fn replicas(c: &Cluster, app: &str) -> Vec<Replica> {
    let out = c.cli(&["get", "replicas", "--app", app, "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

pub(crate) fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn manifest(c: &Cluster, name: &str, image: &str, replicas: usize) -> String {
    bramble_tests::cluster::idle_app(c.dir.path(), name, image, replicas).display().to_string()
}

fn containers_on(c: &Cluster, board: usize) -> usize {
    std::fs::read_dir(c.shims_dir(board)).map_or(0, |d| d.count())
}

pub(crate) fn setup(agents: usize, agent_toml: &str) -> (Cluster, bramble_tests::registry::Registry, String) {
    bramble_tests::cluster::with_busybox(agents, agent_toml)
}

fn apply_to_running(runs: usize) -> serde_json::Value {
    let (c, _registry, image) = setup(1, "[resources]\nmax_replicas = 250\n");
    // Warm the image cache once.
    let warm = manifest(&c, "warm", &image, 1);
    assert!(c.cli(&["apply", "-f", &warm]).status.success());
    wait("the warm-up replica", Duration::from_secs(60), || {
        replicas(&c, "warm").iter().any(|r| r.phase == ReplicaPhase::Running).then_some(())
    });
    assert!(c.cli(&["delete", "app", "warm"]).status.success());
    wait("the warm-up container to go", Duration::from_secs(30), || (containers_on(&c, 1) == 0).then_some(()));

    let mut out = serde_json::Map::new();
    println!("apply -> all replicas Running, one board, image cached, {runs} runs each:");
    println!("  {:<12} {:>9} {:>9} {:>9} {:>14}", "replicas", "min ms", "median", "p95", "per replica");
    for n in [1usize, 10, 100] {
        let mut samples = Vec::new();
        for run in 0..runs {
            let name = format!("a{n}x{run}");
            let path = manifest(&c, &name, &image, n);
            let t0 = now_ms();
            let applied = c.cli(&["apply", "-f", &path]);
            assert!(applied.status.success(), "apply: {}", String::from_utf8_lossy(&applied.stderr));
            let rs = wait(&format!("{n} replicas Running"), Duration::from_secs(120), || {
                let rs = replicas(&c, &name);
                (rs.len() == n && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(rs)
            });
            let last = rs.iter().filter_map(|r| r.started_ms).max().expect("started");
            samples.push(Duration::from_millis(last.saturating_sub(t0)));
            assert!(c.cli(&["delete", "app", &name]).status.success());
            wait("the containers to go", Duration::from_secs(60), || (containers_on(&c, 1) == 0).then_some(()));
        }
        let s = summarize(&samples);
        println!("  {:<12} {:>9.0} {:>9.0} {:>9.0} {:>11.1} ms", n, s.min, s.median, s.p95, s.median / n as f64);
        out.insert(format!("replicas_{n}"), s.json());
    }
    serde_json::Value::Object(out)
}

/// The leader's defaults for node loss (`nodes.not_ready_after`, `nodes.heartbeat`).
fn defaults() -> bramble_tests::ClusterOptions {
    bramble_tests::ClusterOptions { agents: 2, not_ready_after: "5s", heartbeat: "2s", ..Default::default() }
}

fn node_loss(runs: usize, flap_secs: u64) -> serde_json::Value {
    let (mut c, _registry, image) = bramble_tests::cluster::with_busybox_opts(defaults(), "");
    let mut samples = Vec::new();
    println!(
        "node loss -> replacement Running (agent killed and link cut; the defaults: not_ready_after 5s, heartbeat 2s, \
         session idle timeout 2s), {runs} runs:"
    );
    for run in 0..runs {
        // Each run a board with no losses behind it: the leader keeps a board's recent losses
        // (damping) in memory only, and a board lost every half minute is flapping by its rules.
        if run > 0 {
            c.leader.take().expect("the leader runs").stop(Signal::SIGTERM);
            c.start_leader();
            for b in 1..=2 {
                c.wait_status(b, ConditionStatus::True, Duration::from_secs(30));
            }
        }
        let name = format!("n{run}");
        let path = manifest(&c, &name, &image, 1);
        assert!(c.cli(&["apply", "-f", &path]).status.success());
        let r = wait("the replica Running", Duration::from_secs(60), || {
            replicas(&c, &name).into_iter().find(|r| r.phase == ReplicaPhase::Running)
        });
        let node = r.node.clone().expect("bound");
        let board: usize = node.trim_start_matches("board-").parse().expect("board");
        let t0 = now_ms();
        c.kill_agent(board);
        c.lab.set_link(board, false);
        let replacement = wait("a replacement Running", Duration::from_secs(60), || {
            replicas(&c, &name)
                .into_iter()
                .find(|x| x.meta.name != r.meta.name && x.phase == ReplicaPhase::Running && x.node != r.node)
        });
        samples.push(Duration::from_millis(replacement.started_ms.expect("started").saturating_sub(t0)));
        // Heal, and leave nothing behind for the next run.
        c.lab.set_link(board, true);
        c.start_agent(board);
        c.wait_status(board, ConditionStatus::True, Duration::from_secs(30));
        assert!(c.cli(&["delete", "app", &name]).status.success());
        wait("the containers to go", Duration::from_secs(60), || {
            (containers_on(&c, 1) + containers_on(&c, 2) == 0).then_some(())
        });
    }
    let s = summarize(&samples);
    println!("  {:<38} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!("  {:<38} {:>9.0} {:>9.0} {:>9.0}", "kill -> replacement Running", s.min, s.median, s.p95);
    println!("  (of which the session's idle timeout, 2000 ms, and the grace period, 5000 ms)");
    let flaps = (flap_secs > 0).then(|| link_flaps(&c, &image, flap_secs));
    if let Some(mut leader) = c.leader.take() {
        leader.stop(Signal::SIGTERM);
    }
    serde_json::json!({ "loss": s.json(), "flaps": flaps })
}

/// Board 2's link down 2 s every 10 s for `secs`: replicas lost, moved or restarted (none
/// expected), the sessions it lost and the grace period the leader gives it at the end.
fn link_flaps(c: &Cluster, image: &str, secs: u64) -> serde_json::Value {
    let path = manifest(c, "flap", image, 2);
    assert!(c.cli(&["apply", "-f", &path]).status.success());
    let ids = |c: &Cluster| {
        let mut v: Vec<_> = replicas(c, "flap")
            .into_iter()
            .map(|r| (r.meta.name, r.node, r.container_id, r.restarts, r.phase == ReplicaPhase::Running))
            .collect();
        v.sort();
        v
    };
    let before = wait("two replicas Running, one per board", Duration::from_secs(60), || {
        let v = ids(c);
        (v.len() == 2 && v.iter().all(|r| r.4) && v[0].1 != v[1].1).then_some(v)
    });
    let lost_events = |c: &Cluster| String::from_utf8_lossy(&c.cli(&["events"]).stdout).matches("ReplicaLost").count();
    let lost_before = lost_events(c);
    println!("a flapping link: board 2 down 2 s every 10 s for {secs} s, the defaults:");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        c.lab.set_link(2, false);
        std::thread::sleep(Duration::from_secs(2));
        c.lab.set_link(2, true);
        std::thread::sleep(Duration::from_secs(8));
    }
    c.wait_status(2, ConditionStatus::True, Duration::from_secs(30));
    let after = ids(c);
    let churn = before.iter().filter(|b| !after.contains(b)).count();
    let node = c.node(2);
    let lost = lost_events(c) - lost_before;
    println!(
        "  replicas lost, moved or restarted: {churn} (ReplicaLost events: {lost}); sessions lost: {}; grace now {} ms (configured {} ms)",
        node.link.losses, node.link.grace_ms, node.link.base_grace_ms
    );
    assert!(c.cli(&["delete", "app", "flap"]).status.success());
    wait("the containers to go", Duration::from_secs(60), || {
        (containers_on(c, 1) + containers_on(c, 2) == 0).then_some(())
    });
    serde_json::json!({
        "secs": secs, "churn": churn, "replica_lost_events": lost, "losses": node.link.losses,
        "grace_ms": node.link.grace_ms, "base_grace_ms": node.link.base_grace_ms,
    })
}

pub fn run(runs: usize, loss_runs: usize, flap_secs: u64) -> serde_json::Value {
    assert!(nix::unistd::geteuid().is_root(), "the apps benchmark needs root (namespaces, containers)");
    let apply = apply_to_running(runs);
    // (`--loss-runs 0`: the apply figures alone.)
    let loss = if loss_runs > 0 { node_loss(loss_runs, flap_secs) } else { serde_json::Value::Null };
    serde_json::json!({ "apply_to_running": apply, "node_loss_to_replacement_running": loss })
}
