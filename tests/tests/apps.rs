//! Apps end to end, all real: a leader and three agents as processes in network namespaces, the
//! image from Debian's docker-registry (in the leader's namespace), containers through
//! libcontainer. Apply, spread, scale, crash, lose a board, heal, lose the leader, delete.

use bramble_agent::runtime::lifecycle::Phase;
use bramble_agent::runtime::protocol::ShimState;
use bramble_proto::model::Arch;
use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layer, busybox_layout, push_from, Layout};
use bramble_tests::{wait_for, Cluster, ClusterOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

fn replicas(c: &Cluster, app: &str) -> Vec<Replica> {
    let out = c.cli(&["get", "replicas", "--app", app, "-o", "json"]);
    assert!(out.status.success(), "get replicas: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("get replicas -o json parses")
}

/// Waits until the app has exactly `n` replicas, all Running; returns them.
fn wait_running(c: &Cluster, app: &str, n: usize, timeout: Duration) -> Vec<Replica> {
    wait_for(&format!("{n} running replicas of {app}"), timeout, || {
        let r = replicas(c, app);
        (r.len() == n && r.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(r)
    })
}

fn per_node(r: &[Replica]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in r {
        *m.entry(r.node.clone().unwrap_or_default()).or_default() += 1;
    }
    m
}

fn cli_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The containers on board `i`: id → persisted shim state.
fn containers(c: &Cluster, i: usize) -> BTreeMap<String, ShimState> {
    let shims = c.shims_dir(i);
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&shims).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        if let Ok(bytes) = std::fs::read(e.path().join("state.json")) {
            if let Ok(s) = serde_json::from_slice::<ShimState>(&bytes) {
                out.insert(id, s);
            }
        }
    }
    out
}

fn all_containers(c: &Cluster) -> BTreeMap<String, (usize, ShimState)> {
    (1..=3).flat_map(|i| containers(c, i).into_iter().map(move |(id, s)| (id, (i, s)))).collect()
}

fn running_pid(s: &ShimState) -> Option<i32> {
    match s.lifecycle.phase {
        Phase::Running { pid, .. } => Some(pid),
        _ => None,
    }
}

fn board_of(node: &str) -> usize {
    node.strip_prefix("board-").and_then(|n| n.parse().ok()).expect("a board name")
}

fn cgroup_exists(id: &str) -> bool {
    ["/sys/fs/cgroup/memory/bramble", "/sys/fs/cgroup/pids/bramble", "/sys/fs/cgroup/bramble"]
        .iter()
        .any(|base| Path::new(base).join(id).exists())
}

#[test]
fn apps_are_scheduled_run_heal_and_go() {
    // The agents reach the registry in the leader's namespace over plain HTTP.
    let mut c = Cluster::start_with(ClusterOptions::default(), |lab| {
        format!("[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0))
    });
    let registry = Registry::start_in_netns(&c.lab.ns(0), &c.lab.addr(0));
    let layout_dir = tempfile::tempdir().unwrap();
    busybox_layout(layout_dir.path(), "1");
    let image = format!("{}/bramble/busybox:1", registry.addr);
    push_from(Some(&c.lab.ns(0)), layout_dir.path(), "1", &image);

    // 1. Six replicas on three boards: all Running, two per board.
    let manifest = c.dir.path().join("web.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"[[app]]
name = "web"
image = "{image}"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo started $HOSTNAME; while true; do sleep 1; done"]
replicas = 6
[app.resources]
cpu = "10m"
memory = "8Mi"
"#
        ),
    )
    .unwrap();
    let t = Instant::now();
    assert_eq!(cli_ok(&c, &["apply", "-f", manifest.to_str().unwrap()]).trim(), "app/web created");
    let r = wait_running(&c, "web", 6, Duration::from_secs(60));
    eprintln!("apply -> 6 replicas Running on 3 boards (image pulled by each) in {:.2}s", t.elapsed().as_secs_f64());
    assert_eq!(per_node(&r).values().copied().collect::<Vec<_>>(), [2, 2, 2], "spread 2/2/2: {:?}", per_node(&r));
    let on_boards = all_containers(&c);
    let names: BTreeSet<String> = r.iter().map(|r| r.meta.name.clone()).collect();
    assert_eq!(on_boards.keys().cloned().collect::<BTreeSet<_>>(), names, "one container per replica");
    for rep in &r {
        assert_eq!(on_boards[&rep.meta.name].0, board_of(rep.node.as_deref().unwrap()), "on the node it is bound to");
    }
    // The agent keeps transparent huge pages out of itself; its shims and containers do not
    // inherit that (the kernel's "THP_enabled" in /proc/<pid>/status).
    let thp = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string()).unwrap()
    };
    assert_eq!(thp(c.agent(1).pid() as i32), "0", "the agent has no huge pages");
    for (_, s) in on_boards.values() {
        assert_eq!(thp(s.shim_pid), "1", "a shim has the system's setting");
        assert_eq!(thp(running_pid(s).unwrap()), "1", "so does its container");
    }
    let describe = cli_ok(&c, &["describe", "replica", &r[0].meta.name]);
    assert!(describe.contains("Phase:       Running") && describe.contains("Pulled"), "{describe}");
    // The board tells what its store holds after the pass that pulled (eventually, not at once).
    wait_for("board-1 to tell the leader what its store holds", Duration::from_secs(10), || {
        cli_ok(&c, &["describe", "node", "board-1"]).contains(&format!("Images:        {image}")).then_some(())
    });
    // Running means the process started; its shell prints its line a moment later (on a busy
    // machine, possibly after the CLI asked), so the output is awaited, not assumed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut logs, mut all) = (String::new(), String::new());
    while Instant::now() < deadline {
        logs = cli_ok(&c, &["logs", &r[0].meta.name]);
        all = cli_ok(&c, &["logs", "app/web", "--tail", "1"]);
        if all.lines().count() == 6 && !logs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(logs.trim(), format!("started {}", r[0].meta.name), "output read through the leader");
    assert_eq!(all.lines().count(), 6, "one line from each replica within 10 s:\n{all}");
    for rep in &r {
        assert!(all.contains(&format!("[{0}] started {0}", rep.meta.name)), "{all}");
    }
    assert_eq!(c.cli(&["logs", "web-nosuch-0"]).status.code(), Some(4), "an unknown replica");

    // A node's image store through the leader: in use (refused), import, list, unknown node.
    let busy = c.cli(&["image", "rm", &image, "--node", "board-1"]);
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use by a container"), "{busy:?}");
    let imported = cli_ok(
        &c,
        &["image", "import", layout_dir.path().to_str().unwrap(), "--node", "board-1", "--name", "local/busybox:2"],
    );
    assert!(imported.contains("local/busybox:2") && imported.contains("imported on board-1"), "{imported}");
    let listed: Vec<bramble_proto::wire::ImageInfo> =
        serde_json::from_str(&cli_ok(&c, &["image", "ls", "--node", "board-1", "-o", "json"])).unwrap();
    let refs: BTreeSet<&str> = listed.iter().map(|i| i.reference.as_str()).collect();
    assert!(refs.contains(image.as_str()) && refs.contains("local/busybox:2"), "{refs:?}");
    assert_eq!(c.cli(&["image", "ls", "--node", "board-9"]).status.code(), Some(4), "an unknown node");
    let removed = cli_ok(&c, &["image", "rm", "local/busybox:2", "--node", "board-1"]);
    assert!(removed.starts_with("removed local/busybox:2"), "{removed}");

    // 2. Scale to 9 (3 per board), then to 2: the others' containers are stopped and removed.
    cli_ok(&c, &["scale", "app", "web", "--replicas", "9"]);
    let r = wait_running(&c, "web", 9, Duration::from_secs(60));
    assert_eq!(per_node(&r).values().copied().collect::<Vec<_>>(), [3, 3, 3]);
    cli_ok(&c, &["scale", "app", "web", "--replicas", "2"]);
    let r = wait_running(&c, "web", 2, Duration::from_secs(60));
    wait_for("the scaled-down containers to go", Duration::from_secs(30), || {
        (all_containers(&c).len() == 2).then_some(())
    });
    assert_eq!(per_node(&r).len(), 2, "two replicas on two different boards: {:?}", per_node(&r));
    let stale = c.cli(&["scale", "app", "web", "--replicas", "3", "--generation", "1"]);
    assert_eq!(stale.status.code(), Some(6), "a conflict has its own exit code");
    assert!(String::from_utf8_lossy(&stale.stderr).contains("changed since generation 1"), "a stale scale is refused");

    // 3. Kill a container's process: its shim restarts it at once, the leader shows it; killed
    // again right away, it waits (BackOff, with the time left), then runs again.
    let victim = r[0].meta.name.clone();
    let board = board_of(r[0].node.as_deref().unwrap());
    let pid = running_pid(&containers(&c, board)[&victim]).expect("running");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let restarted = wait_for("the killed container to restart at once", Duration::from_secs(5), || {
        replicas(&c, "web")
            .into_iter()
            .find(|x| x.meta.name == victim && x.restarts >= 1 && x.phase == ReplicaPhase::Running)
    });
    assert_eq!(restarted.exit_code, Some(137), "the last exit is shown (128 + SIGKILL)");
    let describe = cli_ok(&c, &["describe", "replica", &victim]);
    assert!(describe.contains("Restarted") && !describe.contains("BackOff"), "{describe}");
    let pid2 = running_pid(&containers(&c, board)[&victim]).expect("running again");
    assert_ne!(pid2, pid);
    kill(Pid::from_raw(pid2), Signal::SIGKILL).unwrap();
    let waiting = wait_for("a second crash in a row to back off", Duration::from_secs(5), || {
        let t = cli_ok(&c, &["get", "replicas", "--app", "web"]);
        t.lines().find(|l| l.starts_with(&victim) && l.contains("BackOff (")).map(str::to_string)
    });
    assert!(waiting.contains(" 0/1 "), "not ready while it waits: {waiting}");
    let describe = cli_ok(&c, &["describe", "replica", &victim]);
    assert!(describe.contains("Phase:       BackOff (") && describe.contains("restarting after 10s"), "{describe}");
    let exec = c.cli(&["exec", &victim, "--", "true"]);
    let said = String::from_utf8_lossy(&exec.stderr);
    assert_eq!(exec.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("replica {victim} is BackOff, not running")), "exec is refused: {said}");
    wait_for("the second restart after its back-off", Duration::from_secs(20), || {
        replicas(&c, "web").into_iter().find(|x| x.meta.name == victim && x.restarts >= 2 && x.serving())
    });

    // 4. A board vanishes (agent killed, link cut): its replica is Lost, then replaced elsewhere.
    let r = replicas(&c, "web");
    let lost = r.iter().find(|x| x.node.as_deref() == Some(&Cluster::node_name(board))).unwrap().meta.name.clone();
    let survivor_board = board_of(r.iter().find(|x| x.meta.name != lost).unwrap().node.as_deref().unwrap());
    let t = Instant::now();
    c.kill_agent(board);
    c.lab.set_link(board, false);
    let r = wait_for("a replacement Running on another board", Duration::from_secs(60), || {
        let r = replicas(&c, "web");
        let ok = r.len() == 2
            && !r.iter().any(|x| x.meta.name == lost)
            && r.iter()
                .all(|x| x.phase == ReplicaPhase::Running && x.node.as_deref() != Some(&Cluster::node_name(board)));
        ok.then_some(r)
    });
    eprintln!("board lost -> replacement Running in {:.2}s (grace 3s)", t.elapsed().as_secs_f64());
    assert!(containers(&c, board).contains_key(&lost), "the vanished board still runs its old copy (it cannot know)");
    let events = cli_ok(&c, &["events"]);
    assert!(events.contains("ReplicaLost") && events.contains("NodeNotReady"), "{events}");

    // 5. The board returns: it stops the copy that moved away; no replica runs twice anywhere.
    c.lab.set_link(board, true);
    c.start_agent(board);
    c.wait_status(board, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    wait_for("the returning board to stop its moved-away copy", Duration::from_secs(30), || {
        (!containers(&c, board).contains_key(&lost)).then_some(())
    });
    let on_boards = all_containers(&c);
    let names: BTreeSet<String> = r.iter().map(|x| x.meta.name.clone()).collect();
    assert_eq!(on_boards.keys().cloned().collect::<BTreeSet<_>>(), names, "exactly the live replicas, once each");

    // 6. The leader stops: containers keep running, and a crashed one is restarted on its board;
    //    an agent restarted meanwhile adopts its containers (same pids, nothing restarted).
    let survivor = r.iter().find(|x| board_of(x.node.as_deref().unwrap()) == survivor_board).unwrap().meta.name.clone();
    c.leader.take().unwrap().stop(Signal::SIGKILL);
    let before = containers(&c, survivor_board);
    let pid = running_pid(&before[&survivor]).expect("running");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_for("the crashed container to restart with the leader down", Duration::from_secs(40), || {
        let s = containers(&c, survivor_board).remove(&survivor)?;
        running_pid(&s).filter(|p| *p != pid).map(|_| ())
    });
    let pids: BTreeMap<String, Option<i32>> =
        containers(&c, survivor_board).iter().map(|(k, v)| (k.clone(), running_pid(v))).collect();
    c.kill_agent(survivor_board);
    c.start_agent(survivor_board);
    std::thread::sleep(Duration::from_secs(3));
    let after: BTreeMap<String, Option<i32>> =
        containers(&c, survivor_board).iter().map(|(k, v)| (k.clone(), running_pid(v))).collect();
    assert_eq!(after, pids, "an agent restart without a leader changes no container");
    c.start_leader();
    let r2 = wait_running(&c, "web", 2, Duration::from_secs(30));
    assert_eq!(
        r2.iter().map(|x| x.meta.name.clone()).collect::<BTreeSet<_>>(),
        names,
        "the leader's return changes nothing"
    );

    // 7. Delete the app: every container, cgroup, mount and root filesystem goes.
    cli_ok(&c, &["delete", "app", "web"]);
    wait_for("every container to go", Duration::from_secs(30), || all_containers(&c).is_empty().then_some(()));
    wait_for("the replicas to go", Duration::from_secs(10), || replicas_or_none(&c).then_some(()));
    let base = c.dir.path().to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.lines().any(|l| l.contains(&base)), "no mounts left under {base}");
    for id in &names {
        assert!(!cgroup_exists(id), "the cgroup of {id} is gone");
    }
    for i in 1..=3 {
        let roots = std::fs::read_dir(c.agent_dir(i).join("containers")).unwrap().count();
        assert_eq!(roots, 0, "no root filesystem left on board {i}");
    }

    // 8. A host port: the board forwards TCP connections into the container's own network
    //    namespace (reached here from the leader's namespace, as another machine would).
    let m = c.dir.path().join("httpd.toml");
    std::fs::write(
        &m,
        format!(
            "[[app]]\nname = \"httpd\"\nimage = \"{image}\"\ncommand = [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/\"]\n\
             [[app.ports]]\ncontainer = 8080\nhost = 18080\n"
        ),
    )
    .unwrap();
    cli_ok(&c, &["apply", "-f", m.to_str().unwrap()]);
    let h = wait_running(&c, "httpd", 1, Duration::from_secs(60)).remove(0);
    let ip = c.lab.addr(board_of(h.node.as_deref().unwrap()));
    let answer = wait_for("an HTTP answer through the host port", Duration::from_secs(20), || {
        let script = format!("exec 3<>/dev/tcp/{ip}/18080 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &c.lab.ns(0), "bash", "-c", &script])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.starts_with("HTTP/1.").then_some(text)
    });
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    cli_ok(&c, &["delete", "app", "httpd"]);
    wait_for("the httpd container to go", Duration::from_secs(30), || all_containers(&c).is_empty().then_some(()));

    // 9. An image that offers no platform for these boards: the board that tried reports what
    //    it offers, the leader takes the replica off, and it waits with a reason to act on.
    let other_arch = if bramble_agent::sysinfo::arch() == Arch::Arm64 {
        ("amd64", None, "amd64")
    } else {
        ("arm64", Some("v8"), "arm64")
    };
    let arm_dir = tempfile::tempdir().unwrap();
    let l = Layout::new(arm_dir.path());
    let m = l.image(other_arch.0, other_arch.1, &[busybox_layer(other_arch.2)], &["sh"]);
    l.finish("1", vec![m], false);
    let foreign = format!("{}/bramble/foreign:1", registry.addr);
    push_from(Some(&c.lab.ns(0)), arm_dir.path(), "1", &foreign);
    let m = c.dir.path().join("foreign.toml");
    std::fs::write(&m, format!("[[app]]\nname = \"foreign\"\nimage = \"{foreign}\"\n")).unwrap();
    cli_ok(&c, &["apply", "-f", m.to_str().unwrap()]);
    let pending = wait_for("the replica to wait for a board of its arch", Duration::from_secs(60), || {
        replicas(&c, "foreign")
            .into_iter()
            .find(|r| r.phase == ReplicaPhase::Pending && r.reason.contains("arch mismatch"))
    });
    assert_eq!(pending.reason, "0/3 nodes: 3 arch mismatch");
    let events = cli_ok(&c, &["events"]);
    assert!(events.contains("ImagePlatform"), "{events}");
    cli_ok(&c, &["delete", "app", "foreign"]);
    drop(registry);
}

fn replicas_or_none(c: &Cluster) -> bool {
    let out = c.cli(&["get", "replicas", "-o", "json"]);
    out.status.success() && serde_json::from_slice::<Vec<Replica>>(&out.stdout).is_ok_and(|v| v.is_empty())
}
