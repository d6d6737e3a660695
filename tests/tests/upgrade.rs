//! An agent upgrade on a board, from the previous version of Bramble (built from git by
//! `scripts/test-boards`: the last version before `bramble-shim` and versioned shims) to this one,
//! as `systemctl restart bramble-agent` does it after `dpkg -i`: SIGTERM to the agent alone, the new
//! binary started on the same data dir. No container may restart.
//!
//! Ignored by `cargo test` (it needs the old build); `scripts/test-boards` runs it.

use bramble_agent::runtime::lifecycle::Phase;
use bramble_agent::runtime::protocol::{ShimState, SHIM_PROTOCOL};
use bramble_proto::model::{ConditionStatus, ReplicaPhase};
use bramble_tests::cluster::{idle_app, with_busybox_opts, ClusterOptions};
use bramble_tests::{ok, wait_for};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Each running container of board 1: replica name → (container pid, shim pid, state).
fn containers(c: &bramble_tests::Cluster) -> BTreeMap<String, (i32, i32, ShimState)> {
    let dir = c.shims_dir(1);
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<ShimState>(&b).ok())
        .filter_map(|s| match s.lifecycle.phase {
            Phase::Running { pid, .. } => Some((s.id.clone(), (pid, s.shim_pid, s))),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "needs the previous version's build (BRAMBLE_OLD_AGENT): scripts/test-boards builds it from git and runs this"]
fn an_agent_upgrade_from_the_previous_version_restarts_no_container() {
    let old = PathBuf::from(
        std::env::var("BRAMBLE_OLD_AGENT").expect("BRAMBLE_OLD_AGENT: the previous version's bramble-agent"),
    );
    assert!(old.is_file(), "no old agent at {}", old.display());
    let opts = ClusterOptions { agents: 1, agent_bin: Some(old.clone()), ..Default::default() };
    let (mut c, _registry, image) = with_busybox_opts(opts, "");
    let manifest = idle_app(c.dir.path(), "steady", &image, 3);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let before = wait_for("three containers under the old agent", Duration::from_secs(60), || {
        let m = containers(&c);
        (m.len() == 3).then_some(m)
    });
    for (id, (_, shim, state)) in &before {
        assert_eq!(state.protocol, 0, "{id}: the old build's shim predates the shim protocol");
        let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap();
        assert_eq!(exe, old, "{id}: the old agent's binary is its shim");
    }
    assert_eq!(c.shims_dir(1), c.agent_dir(1).join("shims"), "the old build keeps shims in the data dir");

    // The upgrade: the old agent stops as systemd stops it (SIGTERM to it alone), the new one starts.
    c.agents[0].take().expect("the old agent").stop(Signal::SIGTERM);
    c.agent_bin = c.bins.join("bramble-agent");
    c.start_agent(1);
    c.wait_status(1, ConditionStatus::True, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let after = containers(&c);
    let pids = |m: &BTreeMap<String, (i32, i32, ShimState)>| {
        m.iter()
            .map(|(id, (pid, shim, s))| (id.clone(), (*pid, *shim, s.lifecycle.restarts)))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(pids(&after), pids(&before), "the same containers, shims and restart counts after the upgrade");
    let replicas = c.replicas_of("steady");
    assert!(replicas.iter().all(|r| r.phase == ReplicaPhase::Running) && replicas.len() == 3, "{replicas:?}");
    let log = c.agent(1).log_text();
    assert!(log.contains("from an unversioned build (shim protocol 0)"), "the new agent says what it adopted:\n{log}");

    // The new agent drives the old shims (logs, exec) and starts new containers with its own shim.
    let (name, _) = before.iter().next().unwrap();
    let out = ok(c.cli(&["exec", name, "--", "echo", "still here"]), "exec in an old shim's container");
    assert!(out.contains("still here"), "{out}");
    ok(c.cli(&["scale", "app", "steady", "--replicas", "4"]), "scale");
    let grown = wait_for("a fourth container", Duration::from_secs(60), || {
        let m = containers(&c);
        (m.len() == 4).then_some(m)
    });
    let new: Vec<&ShimState> =
        grown.iter().filter(|(id, _)| !before.contains_key(*id)).map(|(_, (_, _, s))| s).collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].protocol, SHIM_PROTOCOL, "the new container has this build's shim");
    let exe = std::fs::read_link(format!("/proc/{}/exe", new[0].shim_pid)).unwrap();
    assert_eq!(exe, c.bins.join("bramble-shim"));
    for (id, (pid, shim, _)) in &before {
        assert_eq!(grown.get(id).map(|(p, s, _)| (*p, *s)), Some((*pid, *shim)), "{id} untouched by the scale");
    }
}
