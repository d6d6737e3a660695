//! An agent upgrade on a board, from the previous version of Bramble (built from git by
//! `scripts/test-boards`: the last version before `bramble-shim` and versioned shims) to this one,
//! as `systemctl restart bramble-agent` does it after `dpkg -i`: SIGTERM to the agent alone, the new
//! binary started on the same data dir. No container may restart.
//!
//! The same for a one-board cluster: the previous version's leader with its embedded agent
//! (`[agent] enabled = true`, bramble-single.service) replaced by this one's.
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
    running_in(&c.shims_dir(1))
}

fn running_in(dir: &std::path::Path) -> BTreeMap<String, (i32, i32, ShimState)> {
    std::fs::read_dir(dir)
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

/// What must not change in an upgrade: each container's pid, its shim's and its restart count.
fn pids(m: &BTreeMap<String, (i32, i32, ShimState)>) -> BTreeMap<String, (i32, i32, u32)> {
    m.iter().map(|(id, (pid, shim, s))| (id.clone(), (*pid, *shim, s.lifecycle.restarts))).collect()
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

#[test]
#[ignore = "needs the previous version's build (BRAMBLE_OLD_LEADER): scripts/test-boards builds it from git and runs this"]
fn a_one_board_cluster_upgrade_from_the_previous_version_restarts_no_container() {
    let old = PathBuf::from(
        std::env::var("BRAMBLE_OLD_LEADER").expect("BRAMBLE_OLD_LEADER: the previous version's bramble-leader"),
    );
    assert!(old.is_file(), "no old leader at {}", old.display());
    // The embedded agent's config: the lab's registry (plain HTTP).
    let lab_dir = tempfile::tempdir().unwrap();
    let agent_toml = lab_dir.path().join("embedded-agent.toml");
    let opts = ClusterOptions {
        agents: 0,
        leader_bin: Some(old.clone()),
        leader_toml_edits: vec![(
            "enabled = false".into(),
            format!("enabled = true\nname = \"single\"\nconfig = \"{}\"", agent_toml.display()),
        )],
        ..Default::default()
    };
    let mut c = bramble_tests::cluster::Cluster::start_with(opts, |lab| {
        std::fs::write(
            &agent_toml,
            format!("version = 1\n[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0)),
        )
        .unwrap();
        String::new()
    });
    let registry = bramble_tests::registry::Registry::start_in_netns(&c.lab.ns(0), &c.lab.addr(0));
    let layout = c.dir.path().join("layout");
    bramble_tests::testimages::busybox_layout(&layout, "1");
    let image = format!("{}/bramble/busybox:1", registry.addr);
    bramble_tests::testimages::push_from(Some(&c.lab.ns(0)), &layout, "1", &image);

    let agent_dir = c.leader_dir().join("agent");
    let shims = || bramble_agent::reconcile::Paths::new(&agent_dir).shims;
    let manifest = idle_app(c.dir.path(), "steady", &image, 2);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let before = wait_for("two containers under the old leader's agent", Duration::from_secs(90), || {
        let m = running_in(&shims());
        (m.len() == 2).then_some(m)
    });
    for (id, (_, shim, state)) in &before {
        assert_eq!(state.protocol, 0, "{id}: the old build's shim predates the shim protocol");
        let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap();
        assert_eq!(exe, old, "{id}: the old leader's binary is its shim");
    }

    // The upgrade: SIGTERM to the old leader alone (KillMode=process), this build's started.
    c.leader.take().expect("the old leader").stop(Signal::SIGTERM);
    c.leader_bin = c.bins.join("bramble-leader");
    c.start_leader();
    let node = wait_for("the embedded agent Ready again", Duration::from_secs(60), || {
        c.nodes().into_iter().find(|n| n.node.meta.name == "single" && n.ready.status == ConditionStatus::True)
    });
    assert_eq!(node.node.meta.name, "single");
    std::thread::sleep(Duration::from_secs(3));
    let after = running_in(&shims());
    assert_eq!(pids(&after), pids(&before), "the same containers, shims and restart counts after the upgrade");
    let replicas = c.replicas_of("steady");
    assert!(replicas.iter().all(|r| r.phase == ReplicaPhase::Running) && replicas.len() == 2, "{replicas:?}");
    let log = c.leader().log_text();
    assert!(log.contains("from an unversioned build (shim protocol 0)"), "the new leader says what it adopted:\n{log}");
    let (name, _) = before.iter().next().unwrap();
    let out = ok(c.cli(&["exec", name, "--", "echo", "still here"]), "exec in an old shim's container");
    assert!(out.contains("still here"), "{out}");
}
