//! Operating boards on a real cluster (three boards in network namespaces, real containers):
//! - `bramble drain` of a board running 10 replicas of 3 apps (readiness probes): start ->
//!   drained (the CLI returns once each moved replica's new copy was ready and the old one
//!   stopped), beside what losing that board costs the same replicas (its agent killed: node
//!   NotReady after the leader's 3 s, then replaced) — the path a drain spares them; each loss on
//!   a restarted leader, so that it is the board's first (no damping);
//! - a rollout of an every-board app across the 3 boards (one board at a time) beside a
//!   3-replica replicated app's rollout (max_surge 1), both to the leader's Complete record.

use crate::apps::{replicas, setup, wait};
use crate::stats::summarize;
use bramble_proto::model::{RevisionRecord, RolloutState};
use bramble_proto::time::now_ms;
use bramble_tests::load::web_app;
use bramble_tests::Cluster;
use std::time::{Duration, Instant};

const READINESS: &str = "[app.probes.readiness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n";

fn ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(c: &Cluster, name: &str, text: &str) {
    let path = c.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write the manifest");
    ok(c, &["apply", "-f", path.to_str().expect("utf-8")]);
}

fn ready(c: &Cluster, app: &str, n: usize) -> bool {
    let rs = replicas(c, app);
    rs.len() == n && rs.iter().all(|r| r.serving())
}

fn on(c: &Cluster, apps: &[(&str, usize)], board: &str) -> usize {
    apps.iter().map(|(a, _)| replicas(c, a).iter().filter(|r| r.node.as_deref() == Some(board)).count()).sum()
}

/// Three apps (4, 3 and 3 replicas) all on board-2: the others cordoned while they start.
fn ten_on_board_2(c: &Cluster, image: &str, run: usize) -> Vec<(String, usize)> {
    ok(c, &["cordon", "board-1"]);
    ok(c, &["cordon", "board-3"]);
    let apps: Vec<(String, usize)> = [4, 3, 3].iter().enumerate().map(|(i, n)| (format!("d{run}x{i}"), *n)).collect();
    for (name, n) in &apps {
        apply(c, name, &web_app(name, image, *n, "1", "", READINESS));
    }
    wait("10 replicas ready on board-2", Duration::from_secs(120), || {
        apps.iter().all(|(a, n)| ready(c, a, *n)).then_some(())
    });
    ok(c, &["uncordon", "board-1"]);
    ok(c, &["uncordon", "board-3"]);
    apps
}

fn remove(c: &Cluster, apps: &[(String, usize)]) {
    for (a, _) in apps {
        ok(c, &["delete", "app", a]);
    }
    wait("the apps to go", Duration::from_secs(60), || {
        apps.iter().all(|(a, _)| replicas(c, a).is_empty()).then_some(())
    });
}

fn latest(c: &Cluster, app: &str) -> Option<RevisionRecord> {
    let out = c.cli(&["rollout", "history", &format!("app/{app}"), "-o", "json"]);
    serde_json::from_slice::<Vec<RevisionRecord>>(&out.stdout).ok()?.pop()
}

/// Apply of a new VERSION -> the leader's Complete record, for `runs` rollouts of `name`.
fn rollouts(c: &Cluster, name: &str, image: &str, keys: &str, runs: usize) -> Vec<Duration> {
    apply(c, name, &web_app(name, image, 3, "0", keys, READINESS));
    wait("revision 1 complete", Duration::from_secs(120), || {
        latest(c, name).filter(|r| r.state == RolloutState::Complete).map(|_| ())
    });
    let mut samples = Vec::new();
    for run in 1..=runs {
        let t0 = now_ms();
        apply(c, name, &web_app(name, image, 3, &run.to_string(), keys, READINESS));
        let done = wait("the rollout to complete", Duration::from_secs(120), || {
            latest(c, name).filter(|r| r.number == run as u64 + 1 && r.state == RolloutState::Complete)
        });
        samples.push(Duration::from_millis(done.finished_ms.expect("finished").saturating_sub(t0)));
    }
    ok(c, &["delete", "app", name]);
    wait("the app to go", Duration::from_secs(60), || replicas(c, name).is_empty().then_some(()));
    samples
}

pub fn run(runs: usize) -> serde_json::Value {
    let (mut c, _registry, image) = setup(3, "");
    let (mut drained, mut lost) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let apps = ten_on_board_2(&c, &image, run);
        let t = Instant::now();
        ok(&c, &["drain", "board-2", "--timeout", "5m"]);
        drained.push(t.elapsed());
        let names: Vec<(&str, usize)> = apps.iter().map(|(a, n)| (a.as_str(), *n)).collect();
        assert_eq!(on(&c, &names, "board-2"), 0);
        ok(&c, &["uncordon", "board-2"]);
        remove(&c, &apps);
    }
    for run in 0..runs {
        // Each loss is board-2's first in the leader's memory: a board that keeps losing its link
        // gets a longer grace (damping, per leader process), which would otherwise be what the
        // later runs measure (6.3 / 11.8 / 16.7 s min / median / p95 on 2026-12-07).
        if let Some(mut leader) = c.leader.take() {
            leader.stop(nix::sys::signal::Signal::SIGTERM);
        }
        c.start_leader();
        for board in 1..=3 {
            c.wait_status(board, bramble_proto::model::ConditionStatus::True, Duration::from_secs(60));
        }
        let apps = ten_on_board_2(&c, &image, runs + run);
        let names: Vec<(&str, usize)> = apps.iter().map(|(a, n)| (a.as_str(), *n)).collect();
        let t = Instant::now();
        c.kill_agent(2);
        wait("all ready elsewhere", Duration::from_secs(120), || {
            names
                .iter()
                .all(|(a, n)| {
                    let rs = replicas(&c, a);
                    rs.iter().filter(|r| r.serving() && r.node.as_deref() != Some("board-2")).count() == *n
                })
                .then_some(())
        });
        lost.push(t.elapsed());
        c.start_agent(2);
        c.wait_status(2, bramble_proto::model::ConditionStatus::True, Duration::from_secs(60));
        remove(&c, &apps);
    }
    let every = rollouts(&c, "everyroll", &image, "mode = \"every-board\"", runs);
    let replicated = rollouts(&c, "replroll", &image, "", runs);
    let (d, l, e, r) = (summarize(&drained), summarize(&lost), summarize(&every), summarize(&replicated));
    println!("a board with 10 replicas of 3 apps (readiness http every 1s), {runs} runs:");
    println!("  {:<52} {:>9} {:>9} {:>9}", "", "min ms", "median", "p95");
    println!(
        "  {:<52} {:>9.0} {:>9.0} {:>9.0}",
        "bramble drain -> drained (all ready elsewhere)", d.min, d.median, d.p95
    );
    println!(
        "  {:<52} {:>9.0} {:>9.0} {:>9.0}",
        "board lost (agent killed) -> all ready elsewhere", l.min, l.median, l.p95
    );
    println!("rollout across 3 boards (readiness http every 1s), apply -> complete, {runs} runs:");
    println!("  {:<52} {:>9.0} {:>9.0} {:>9.0}", "every-board app, one board at a time", e.min, e.median, e.p95);
    println!("  {:<52} {:>9.0} {:>9.0} {:>9.0}", "3 replicas, max_surge 1", r.min, r.median, r.p95);
    serde_json::json!({
        "drain_10_replicas_3_apps": d.json(),
        "board_lost_10_replicas": l.json(),
        "every_board_rollout_3_boards": e.json(),
        "replicated_rollout_3_replicas": r.json(),
    })
}
