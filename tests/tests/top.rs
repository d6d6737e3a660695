//! Usage end to end: a board sampling itself and its replicas every second (test config) sends
//! it up its session; `bramble top` shows a busy replica's CPU at its quota and an idle one near
//! zero, the board's CPU, memory and disk, with the history growing.

use bramble_proto::usage::{NodeUsage, ReplicaUsage};
use bramble_tests::ok;
use std::time::Duration;

#[test]
fn top_shows_what_boards_and_replicas_use() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(1, "[monitoring]\ninterval = \"1s\"\n");
    let manifest = c.dir.path().join("apps.toml");
    let app = |name: &str, script: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/sh\", \"-c\", \"{script}\"]\n\
             resources = {{ cpu = \"300m\", memory = \"32Mi\" }}\n"
        )
    };
    let text = app("burner", "while :; do :; done")
        + &app("idle", "trap 'exit 0' TERM; while true; do sleep 1; done")
        // 64 MB in a shell variable, in 32 MiB: the kernel kills it, again after each restart.
        + &app("hog", "sleep 2; x=$(yes abcdefgh | head -c 64000000); sleep 100");
    std::fs::write(&manifest, text).unwrap();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let top = |what: &str| ok(c.cli(&["top", what, "-o", "json"]), "top");
    let (burner, idle) = bramble_tests::wait_for("the burner at its quota", Duration::from_secs(90), || {
        let rs: Vec<ReplicaUsage> = serde_json::from_str(&top("replicas")).unwrap();
        let b = rs.iter().find(|r| r.app == "burner" && r.cpu_history.len() >= 3)?.clone();
        let i = rs.iter().find(|r| r.app == "idle" && r.cpu_history.len() >= 3)?.clone();
        (b.cpu_millis >= 200).then_some((b, i))
    });
    // The quota holds it near 300m (and it is throttled); the idle one barely moves.
    assert!(burner.cpu_millis <= 400, "{burner:?}");
    assert!(burner.throttled_permille > 0, "{burner:?}");
    assert!(idle.cpu_millis < 50, "{idle:?}");
    assert_eq!((burner.cpu_request_millis, burner.memory_limit), (Some(300), Some(32 << 20)));
    assert!(burner.memory_working_set > 0 && burner.pids >= 1, "{burner:?}");
    let nodes: Vec<NodeUsage> = serde_json::from_str(&top("nodes")).unwrap();
    let n = nodes.iter().find(|n| n.node == "board-1").expect("board-1 sampled");
    assert!(n.cpu_millis >= 200 && n.cpus >= 1, "{n:?}");
    assert!(n.memory_used > 0 && n.memory_used <= n.memory_total && n.disk_free > 0, "{n:?}");
    assert_eq!(n.requested_cpu_millis, 900, "three apps of 300m: {n:?}");
    // The tables a person reads.
    let table = ok(c.cli(&["top", "replicas", "--app", "burner"]), "top replicas");
    assert!(table.starts_with("NAME") && table.contains(&burner.replica) && !table.contains("idle-"), "{table}");
    assert!(table.contains("m/300m"), "{table}");
    // describe shows usage too.
    let d = ok(c.cli(&["describe", "replica", &burner.replica]), "describe replica");
    assert!(d.contains("Usage:       cpu ") && d.contains("of 32Mi"), "{d}");
    let d = ok(c.cli(&["describe", "node", "board-1"]), "describe node");
    assert!(d.contains("Usage:         cpu ") && d.contains("disk free"), "{d}");
    let d = ok(c.cli(&["describe", "app", "burner"]), "describe app");
    assert!(d.contains("Usage:       cpu ") && d.contains("over 1 replicas"), "{d}");
    let table = ok(c.cli(&["top", "nodes"]), "top nodes");
    assert!(table.contains("board-1") && table.contains("CPU (15m)"), "{table}");
    // The OOM kills of earlier runs show (each run has a new cgroup).
    let hog = bramble_tests::wait_for("the hog's OOM kill in top", Duration::from_secs(90), || {
        let rs: Vec<ReplicaUsage> = serde_json::from_str(&top("replicas")).unwrap();
        rs.into_iter().find(|r| r.app == "hog" && r.oom_kills >= 1)
    });
    let table = ok(c.cli(&["top", "replicas", "--app", "hog"]), "top replicas hog");
    let line = table.lines().find(|l| l.starts_with(&hog.replica)).expect("the hog's line");
    assert!(line.split_whitespace().any(|w| w.parse::<u64>().is_ok_and(|n| n >= 1)), "{table}");
    let missing = c.cli(&["top", "replicas", "--app", "nope"]);
    assert_eq!(missing.status.code(), Some(4));
    ok(c.cli(&["delete", "app", "burner", "idle", "hog"]), "delete");
    c.remove_containers();
}
