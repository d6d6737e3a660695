//! The ingress proxy in a lab cluster (issue 32): the Caddy test image pushed to the lab's
//! registry, and the leader restarted with `[ingress]` so that it runs the proxy. Used by the
//! ingress tests and `bramble-bench ingress`.

use crate::cluster::Cluster;
use crate::registry::Registry;
use bramble_proto::model::{Replica, ReplicaPhase};
use std::time::{Duration, Instant};

/// What an ingress board's agent.toml needs: apps may take ports 80 and 443 (the default range
/// starts at 1024).
pub const AGENT_TOML: &str = "[network]\nhost_ports = \"80-65535\"\n";

/// Builds the Caddy image (amd64: Debian's caddy on busybox) and pushes it to `registry`; its name.
pub fn push_caddy(c: &Cluster, registry: &Registry) -> String {
    let caddy = format!("{}/bramble/caddy:2.6", registry.addr);
    let layout = c.dir.path().join("caddy-layout");
    crate::testimages::caddy_layout(&layout, "2.6", &["amd64"]);
    crate::testimages::push_from(Some(&c.lab.ns(0)), &layout, "2.6", &caddy);
    caddy
}

/// The proxy's running replicas.
pub fn proxies(c: &Cluster) -> Vec<Replica> {
    c.replicas_of("bramble-ingress").into_iter().filter(|r| r.phase == ReplicaPhase::Running).collect()
}

/// Restarts the leader with `toml` in its `[ingress]` table and waits for the proxy to run on
/// exactly `boards` (its logs in the panic if it does not).
pub fn run_proxy(c: &mut Cluster, toml: &str, boards: &[&str]) -> Vec<Replica> {
    c.leader = None;
    let cfg = c.leader_dir().join("leader.toml");
    let before = std::fs::read_to_string(&cfg).expect("leader.toml");
    assert!(before.contains("\n[ingress]\n"), "bramble-leader init writes an [ingress] table");
    std::fs::write(&cfg, before.replacen("\n[ingress]\n", &format!("\n[ingress]\n{toml}"), 1)).expect("leader.toml");
    c.start_leader();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = proxies(c);
        let mut on: Vec<&str> = p.iter().filter_map(|r| r.node.as_deref()).collect();
        on.sort();
        if on == boards {
            return p;
        }
        if Instant::now() > deadline {
            let logs = c.cli(&["logs", "app/bramble-ingress", "--tail", "20"]);
            panic!(
                "the proxy is not running on {boards:?}: {p:?}\n{}{}",
                crate::text(&logs.stdout),
                crate::text(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
