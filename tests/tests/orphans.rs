//! A container whose shim and run directory are gone (removed by hand, a crash in the middle of a
//! cleanup, a benchmark that deleted its data dir): the agent, starting, finds it in its cgroup
//! parent and kills it rather than leaving it running where nothing could find it again. Real
//! agent, real containers, real cgroups.

use bramble_agent::runtime::cgroups::CgroupFs;
use bramble_agent::runtime::lifecycle::Phase;
use bramble_agent::runtime::protocol::ShimState;
use bramble_proto::model::ReplicaPhase;
use bramble_tests::cluster::{idle_app, with_busybox};
use bramble_tests::wait_for;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

fn alive(pid: i32) -> bool {
    // A zombie is dead too (its parent, the shim, is gone; init reaps it).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn a_container_without_its_shim_or_run_dir_is_killed_when_the_agent_starts() {
    let (mut c, _registry, image) = with_busybox(1, "");
    let path = idle_app(c.dir.path(), "web", &image, 1);
    assert!(c.cli(&["apply", "-f", path.to_str().unwrap()]).status.success());
    wait_for("the replica Running", Duration::from_secs(90), || {
        c.replicas_of("web").into_iter().find(|r| r.phase == ReplicaPhase::Running).map(|_| ())
    });
    let shims = c.shims_dir(1);
    let (dir, state) = wait_for("its shim's state", Duration::from_secs(10), || {
        std::fs::read_dir(&shims).ok()?.flatten().find_map(|e| {
            let s: ShimState = serde_json::from_slice(&std::fs::read(e.path().join("state.json")).ok()?).ok()?;
            matches!(s.lifecycle.phase, Phase::Running { .. }).then(|| (e.path(), s))
        })
    });
    let Phase::Running { pid, .. } = state.lifecycle.phase else { unreachable!() };
    let cgroup = format!("/{}/{}", c.cgroup_parent(1), state.id);
    let cgroups = CgroupFs::host();
    assert!(cgroups.procs(&cgroup).contains(&pid), "the container's process is in {cgroup}");

    // The agent dies, then the shim (by its PID), and its run directory goes: the container
    // runs on with nothing that knows it.
    c.kill_agent(1);
    kill(Pid::from_raw(state.shim_pid), Signal::SIGKILL).expect("kill the shim");
    wait_for("the shim gone", Duration::from_secs(10), || (!alive(state.shim_pid)).then_some(()));
    let _ = nix::mount::umount2(&dir.join("bundle"), nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_dir_all(&dir).expect("remove the run dir");
    assert!(alive(pid), "the container outlived its shim");

    // The agent starts again: it kills what its cgroup parent holds without a shim, then starts
    // the replica afresh.
    c.start_agent(1);
    wait_for("the orphan killed", Duration::from_secs(30), || (!alive(pid)).then_some(()));
    let log = std::fs::read_to_string(c.dir.path().join("agent-1.log")).unwrap_or_default();
    assert!(log.contains("without its shim or run directory"), "the agent says what it killed: {log}");
    let again = wait_for("the replica Running again, in a new container", Duration::from_secs(90), || {
        let procs = cgroups.procs(&cgroup);
        let r = c.replicas_of("web").into_iter().find(|r| r.phase == ReplicaPhase::Running)?;
        (!procs.is_empty() && !procs.contains(&pid)).then_some(r)
    });
    eprintln!("replica {} runs again; the orphan (pid {pid}) was killed", again.meta.name);
}
