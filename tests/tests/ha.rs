//! Highly available leaders on etcd, for real: three etcd members (Debian's etcd) and two
//! leaders in the leader's namespace, two boards in theirs. The active leader is killed -9 — with
//! the cluster steady, and during a scale — and the other takes over: no container restarted, no
//! replica duplicated; an etcd member dies and the cluster goes on; a leader that lost its lease
//! (frozen past its TTL) stops by itself.

use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::cluster::{with_busybox_opts, Cluster, ClusterOptions};
use bramble_tests::{ok, text, wait_for};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

fn running(c: &Cluster, app: &str, n: usize) -> Vec<Replica> {
    wait_for(&format!("{n} replicas of {app} running"), Duration::from_secs(90), || {
        let rs = c.replicas_of(app);
        (rs.len() == n && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(rs)
    })
}

/// Each replica's name, container and restart count, sorted: equal sets mean nothing restarted.
fn ids(rs: &[Replica]) -> Vec<(String, Option<String>, u32)> {
    let mut v: Vec<_> = rs.iter().map(|r| (r.meta.name.clone(), r.container_id.clone(), r.restarts)).collect();
    v.sort();
    v
}

fn active(c: &Cluster) -> Option<String> {
    let out = c.cli(&["get", "leaders", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let list: Vec<bramble_proto::wire::LeaderInfo> = serde_json::from_slice(&out.stdout).ok()?;
    list.into_iter().find(|l| l.active).map(|l| l.name)
}

/// Containers each board runs: the shims' directories, one per container.
fn containers_on_boards(c: &Cluster) -> usize {
    (1..=c.agents.len()).map(|i| std::fs::read_dir(c.shims_dir(i)).map(|d| d.count()).unwrap_or(0)).sum()
}

#[test]
fn leaders_on_etcd_fail_over_without_restarting_or_duplicating_a_container() {
    let opts = ClusterOptions { agents: 2, etcd: 3, not_ready_after: "15s", ..Default::default() };
    let (mut c, _registry, image) = with_busybox_opts(opts, "");
    let b = c.add_leader();
    wait_for("two leaders, a active", Duration::from_secs(20), || {
        let l = c.leaders();
        (l.len() == 2 && l.iter().any(|l| l.name == "leader-a" && l.active && l.store == "etcd")).then_some(())
    });
    let shown = ok(c.cli(&["get", "leaders"]), "get leaders");
    assert!(shown.contains("leader-a") && shown.contains("active") && shown.contains("standby"), "{shown}");

    let dir = c.dir.path().to_path_buf();
    let write = |replicas: usize| bramble_tests::cluster::idle_app(&dir, "web", &image, replicas);
    let manifest = write(2);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let before = running(&c, "web", 2);

    // 1. The active leader dies under a steady cluster.
    let killed = Instant::now();
    c.leader.take().unwrap().stop(Signal::SIGKILL);
    wait_for("leader-b active", Duration::from_secs(20), || (active(&c).as_deref() == Some("leader-b")).then_some(()));
    let failover = killed.elapsed();
    for i in 1..=2 {
        c.wait_status(i, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = running(&c, "web", 2);
    assert_eq!(ids(&after), ids(&before), "the same replicas, the same containers, no restart");
    assert_eq!(containers_on_boards(&c), 2, "no container duplicated on the boards");
    eprintln!("failover (kill -9 -> the standby active, as the CLI sees it): {:.2}s", failover.as_secs_f64());
    let b_log = c.more_leaders[b].1.as_ref().unwrap().log_text();
    assert!(b_log.contains("elected: this leader is now the active one"), "{b_log}");

    // Writes go to the new active leader (fenced with its lease), by the CLI's own choice: the
    // first leader in admin.toml is dead.
    write(3);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply through leader-b");
    let three = running(&c, "web", 3);
    assert!(ids(&before).iter().all(|r| ids(&three).contains(r)), "the two first replicas untouched");

    // 2. The old leader comes back: as a standby; it sends a CLI to the active one.
    c.start_leader();
    wait_for("leader-a standing by", Duration::from_secs(20), || {
        let l = c.leaders();
        (l.len() == 2 && l.iter().any(|l| l.name == "leader-b" && l.active)).then_some(())
    });

    // 3. An etcd member dies: the cluster goes on.
    c.etcd.as_mut().unwrap().kill(2);
    ok(c.cli(&["scale", "app", "web", "--replicas", "2"]), "scale with an etcd member down");
    let two = running(&c, "web", 2);

    // 4. The active leader dies during an apply and a scale: each either landed or is done again
    // on the new leader; either way the apps converge, nothing duplicated, nothing restarted.
    let api = bramble_tests::cluster::idle_app(c.dir.path(), "api", &image, 1);
    let apply = std::process::Command::new("ip")
        .args(["netns", "exec", &c.lab.ns(0)])
        .arg(c.bins.join("bramble"))
        .arg("--config")
        .arg(c.leader_dir().join("admin.toml"))
        .args(["apply", "-f", api.to_str().unwrap()])
        .spawn()
        .unwrap();
    let scale = std::process::Command::new("ip")
        .args(["netns", "exec", &c.lab.ns(0)])
        .arg(c.bins.join("bramble"))
        .arg("--config")
        .arg(c.leader_dir().join("admin.toml"))
        .args(["scale", "app", "web", "--replicas", "4"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let killed = Instant::now();
    c.more_leaders[b].1.take().unwrap().stop(Signal::SIGKILL);
    wait_for("leader-a active again", Duration::from_secs(20), || {
        (active(&c).as_deref() == Some("leader-a")).then_some(())
    });
    eprintln!("failover during an apply and a scale: {:.2}s", killed.elapsed().as_secs_f64());
    let _ = scale.wait_with_output();
    let _ = apply.wait_with_output();
    ok(c.cli(&["scale", "app", "web", "--replicas", "4"]), "scale again on the new leader");
    ok(c.cli(&["apply", "-f", api.to_str().unwrap()]), "apply again on the new leader");
    running(&c, "api", 1);
    let four = running(&c, "web", 4);
    assert!(ids(&two).iter().all(|r| ids(&four).contains(r)), "the replicas before the scale untouched");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.replicas_of("web").len(), 4, "no replica duplicated");
    assert_eq!(c.replicas_of("api").len(), 1, "no replica duplicated");
    assert_eq!(containers_on_boards(&c), 5, "five containers on the boards, no more");
    ok(c.cli(&["delete", "app", "web"]), "delete");
    ok(c.cli(&["delete", "app", "api"]), "delete");
    wait_for("web gone", Duration::from_secs(60), || (containers_on_boards(&c) == 0).then_some(()));
    c.remove_containers();
}

#[test]
fn a_leader_that_lost_its_lease_stops_and_a_standby_takes_over() {
    let opts = ClusterOptions { agents: 1, etcd: 1, not_ready_after: "15s", ..Default::default() };
    let mut c = Cluster::start(opts);
    let b = c.add_leader();
    wait_for("two leaders", Duration::from_secs(20), || (c.leaders().len() == 2).then_some(()));
    // A board that knows only the standby is sent to the active leader.
    c.kill_agent(1);
    let standby = format!("{}:{}", c.lab.addr(0), bramble_tests::cluster::SECOND_LEADER_PORT);
    let args: Vec<String> = ["run", "--leader", &standby, "--name", "board-1", "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([c.agent_dir(1).display().to_string()])
        .collect();
    let log = c.dir.path().join("agent-1-standby-only.log");
    let only = bramble_tests::process::Proc::spawn("board-1", &c.lab.ns(1), &c.bins.join("bramble-agent"), &args, &log);
    c.agents[0] = Some(only);
    wait_for("the board sent to the active leader", Duration::from_secs(30), || {
        c.agent(1).log_text().contains("is a standby; the active leader is leader-a").then_some(())
    });
    c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    // Back to the config that names both leaders.
    c.kill_agent(1);
    c.start_agent(1);
    c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    // Frozen past its lease's TTL (2 s): the standby is elected meanwhile.
    let pid = nix::unistd::Pid::from_raw(c.leader().pid() as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    wait_for("leader-b active", Duration::from_secs(20), || (active(&c).as_deref() == Some("leader-b")).then_some(()));
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();
    // Thawed, it finds its lease gone and stops (systemd would start it again, as a standby).
    let mut a = c.leader.take().unwrap();
    wait_for("leader-a to stop by itself", Duration::from_secs(20), || (!a.running()).then_some(()));
    let log = a.log_text();
    assert!(log.contains("lost the leader lease"), "{log}");
    assert!(c.more_leaders[b].1.as_mut().unwrap().running());
    c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    // A leader of another cluster (another CA) pointed at this etcd is refused before it stands.
    let other = c.dir.path().join("other");
    let endpoints = c.etcd.as_ref().unwrap().endpoints().join(",");
    let out = std::process::Command::new(c.bins.join("bramble-leader"))
        .args(["init", "--data-dir", other.to_str().unwrap(), "--listen", "127.0.0.1:7999"])
        .args(["--store", "etcd", "--etcd-endpoints", &endpoints, "--leader-name", "intruder"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = std::process::Command::new("ip")
        .args(["netns", "exec", &c.lab.ns(0)])
        .arg(c.bins.join("bramble-leader"))
        .args(["run", "--config", other.join("leader.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(text(&run.stderr).contains("holds the cluster of another CA"), "{}", text(&run.stderr));
    assert!(!c.leaders().iter().any(|l| l.name == "intruder"));

    // etcd goes away: the active leader cannot renew its lease and stops; a leader started
    // meanwhile says etcd is unreachable and retries; the board keeps running. etcd back: a
    // leader is elected and the board reconnects.
    c.etcd.as_mut().unwrap().kill(0);
    let mut b_proc = c.more_leaders[b].1.take().unwrap();
    wait_for("leader-b to stop by itself", Duration::from_secs(20), || (!b_proc.running()).then_some(()));
    assert!(b_proc.log_text().contains("lost the leader lease"), "{}", b_proc.log_text());
    let log = c.dir.path().join("leader-again.log");
    let args = vec!["run".to_string(), "--config".into(), c.leader_dir().join("leader.toml").display().to_string()];
    let again =
        bramble_tests::process::Proc::spawn("leader", &c.lab.ns(0), &c.bins.join("bramble-leader"), &args, &log);
    wait_for("the leader to say etcd is unreachable", Duration::from_secs(20), || {
        let t = again.log_text();
        (t.contains("etcd") && t.contains("retrying")).then_some(())
    });
    assert!(c.agents[0].as_mut().unwrap().running(), "the board keeps running without any leader");
    c.etcd.as_mut().unwrap().restart(0);
    c.leader = Some(again);
    wait_for("leader-a active", Duration::from_secs(30), || (active(&c).as_deref() == Some("leader-a")).then_some(()));
    c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
}

#[test]
fn a_cluster_moves_from_etcd_to_redb_and_back_through_backup_and_restore() {
    let opts = ClusterOptions { agents: 1, etcd: 1, not_ready_after: "15s", ..Default::default() };
    let (mut c, _registry, image) = with_busybox_opts(opts, "");
    let manifest = bramble_tests::cluster::idle_app(c.dir.path(), "web", &image, 2);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let before = running(&c, "web", 2);
    let pass = c.dir.path().join("pass");
    std::fs::write(&pass, "moving day\n").unwrap();
    let endpoints = c.etcd.as_ref().unwrap().endpoints().join(",");
    // Backs up, stops the leader, empties its data dir and restores with `store_args`.
    let migrate = |c: &mut Cluster, store_args: &[&str], expect_ok: bool| -> String {
        let file = c.dir.path().join("move.bak");
        let _ = std::fs::remove_file(&file);
        ok(c.cli(&["backup", "--out", file.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]), "backup");
        c.leader.take().unwrap().stop(Signal::SIGTERM);
        let dir = c.leader_dir();
        let keep = c.dir.path().join("leader-before");
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::rename(&dir, &keep).unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &c.lab.ns(0)])
            .arg(c.bins.join("bramble-leader"))
            .args(["restore", "--data-dir", dir.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()])
            .args(store_args)
            .arg(&file)
            .output()
            .unwrap();
        if !expect_ok {
            assert!(!out.status.success());
            assert!(!dir.exists(), "nothing written for a refused restore");
            std::fs::rename(&keep, &dir).unwrap();
            c.start_leader();
            return text(&out.stderr);
        }
        assert!(out.status.success(), "restore {store_args:?}: {}", text(&out.stderr));
        c.start_leader();
        c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
        text(&out.stdout)
    };
    migrate(&mut c, &["--store", "redb"], true);
    assert_eq!(c.leaders()[0].store, "redb");
    assert!(c.leader_dir().join("store.redb").exists());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ids(&running(&c, "web", 2)), ids(&before), "etcd -> redb: no container restarted");
    // Back into etcd: not over the cluster still there under the old prefix...
    let refused =
        migrate(&mut c, &["--store", "etcd", "--etcd-endpoints", &endpoints, "--leader-name", "leader-a"], false);
    assert!(refused.contains("already holds a cluster"), "{refused}");
    // ...but under a new one.
    let args =
        ["--store", "etcd", "--etcd-endpoints", &endpoints, "--etcd-prefix", "/moved", "--leader-name", "leader-a"];
    migrate(&mut c, &args, true);
    assert_eq!(c.leaders()[0].store, "etcd");
    assert!(!c.leader_dir().join("store.redb").exists());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ids(&running(&c, "web", 2)), ids(&before), "redb -> etcd: no container restarted");
    ok(c.cli(&["delete", "app", "web"]), "delete");
    wait_for("web gone", Duration::from_secs(60), || (containers_on_boards(&c) == 0).then_some(()));
    c.remove_containers();
}
