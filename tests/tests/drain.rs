//! Operating boards, end to end (issue 30), all real: three boards; a web app of three replicas
//! behind a service and an every-board exporter; labels on apps and `-l` selectors; a drain of a
//! board under load through the service's VIP (our load generator and Apache's `ab` at once) —
//! not one request fails, each moved replica's new copy is ready before the old one stops, the
//! exporter stays — then `uncordon`; a board that starts to match the exporter's selector gets its
//! replica; a drain a budget blocks says which app and why.

use bramble_proto::model::{NodeView, Replica, ReplicaPhase, Service};
use bramble_tests::load::{load, web_app, Ab, Stats};
use bramble_tests::{text, wait_for, Cluster};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn apply(c: &Cluster, name: &str, manifest: &str) {
    let path = c.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, manifest).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
}

fn on(c: &Cluster, app: &str, board: &str) -> Vec<Replica> {
    c.replicas_of(app).into_iter().filter(|r| r.node.as_deref() == Some(board)).collect()
}

fn node(c: &Cluster, name: &str) -> NodeView {
    serde_json::from_str::<serde_json::Value>(&c.ok(&["describe", "node", name, "-o", "json"]))
        .map(|v| serde_json::from_value(v["node"].clone()).unwrap())
        .unwrap()
}

#[test]
fn a_drain_under_load_drops_nothing_and_every_board_apps_follow_the_boards() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(3, "");
    let probe = "[app.probes.readiness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n";
    apply(&c, "web", &web_app("web", &image, 3, "1", "labels = { tier = \"front\" }", probe));
    let exporter = format!(
        "[[app]]\nname = \"exporter\"\nimage = \"{image}\"\nmode = \"every-board\"\nlabels = {{ tier = \"ops\" }}\n\
         placement = {{ node_selector = {{ role = \"sensor\" }} }}\n\
         command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
    );
    for b in ["board-1", "board-2"] {
        c.ok(&["label", "node", b, "role=sensor"]);
    }
    apply(&c, "exporter", &exporter);
    let out = c.cli(&["rollout", "status", "app/web", "--timeout", "90s"]);
    assert!(out.status.success(), "web rolls out: {}", text(&out.stderr));
    wait_for("the exporter on the two sensor boards", Duration::from_secs(60), || {
        let rs = c.replicas_of("exporter");
        (rs.len() == 2 && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(())
    });
    let apps = c.ok(&["get", "apps"]);
    assert!(apps.lines().any(|l| l.starts_with("exporter") && l.contains(" 2/2 ")), "DESIRED is the boards: {apps}");
    // Counted by the leader: what the whole list says.
    let counts: Vec<bramble_proto::wire::ReplicaCount> =
        serde_json::from_str(&c.ok(&["get", "replicas", "--count", "-o", "json"])).unwrap();
    let all: Vec<Replica> = serde_json::from_str(&c.ok(&["get", "replicas", "-o", "json"])).unwrap();
    for app in ["web", "exporter"] {
        let count = counts.iter().find(|c| c.app == app).unwrap_or_else(|| panic!("{app} counted: {counts:?}"));
        let mine: Vec<&Replica> = all.iter().filter(|r| r.app == app).collect();
        let running = mine.iter().filter(|r| r.phase == ReplicaPhase::Running).count();
        assert_eq!(count.total as usize, mine.len(), "{count:?}");
        assert_eq!(count.phases.get("Running").copied().unwrap_or(0) as usize, running, "{count:?}");
        assert_eq!(count.serving as usize, mine.iter().filter(|r| r.serving()).count(), "{count:?}");
    }
    assert_eq!(c.ok(&["get", "replicas", "--count", "-l", "tier=ops", "-o", "name"]), "app/exporter\n");
    let bad = c.cli(&["get", "apps", "--count"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--count counts replicas"), "{}", text(&bad.stderr));

    // Labels and selectors.
    assert_eq!(c.ok(&["get", "apps", "-l", "tier=front", "-o", "name"]), "app/web\n");
    assert_eq!(c.ok(&["get", "apps", "-l", "tier!=front", "-o", "name"]), "app/exporter\n");
    let only: Vec<Replica> = serde_json::from_str(&c.ok(&["get", "replicas", "-l", "tier=ops", "-o", "json"])).unwrap();
    assert!(only.len() == 2 && only.iter().all(|r| r.app == "exporter"), "{only:?}");
    let bad = c.cli(&["get", "apps", "-l", "tier=front,"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("between commas"), "{}", text(&bad.stderr));
    // A board that starts to match gets the exporter.
    c.ok(&["label", "node", "board-3", "role=sensor"]);
    wait_for("the exporter on board-3", Duration::from_secs(60), || {
        on(&c, "exporter", "board-3").iter().any(|r| r.phase == ReplicaPhase::Running).then_some(())
    });

    // A drain under load through the VIP.
    let services: Vec<Service> = serde_json::from_str(&c.ok(&["get", "services", "-o", "json"])).unwrap();
    let vip = services.iter().find(|s| s.meta.name == "web").and_then(|s| s.vip).expect("a VIP");
    wait_for("three ready endpoints", Duration::from_secs(30), || {
        let s: Vec<Service> = serde_json::from_str(&c.ok(&["get", "services", "-o", "json"])).unwrap();
        (s[0].endpoints.iter().filter(|e| e.ready).count() == 3).then_some(())
    });
    let victims = on(&c, "web", "board-2");
    assert!(!victims.is_empty(), "web runs on board-2");
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(c.lab.ns_path(1), SocketAddr::from((vip, 80)), stop.clone(), stats.clone());
    // And an outside load generator beside ours.
    let ab = Ab::start(&c.lab.ns(1), &format!("http://{vip}/"), 2);
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    // Ready replicas of web, sampled while the drain runs: never below the count.
    let watching = Arc::new(AtomicBool::new(true));
    let least = {
        let (watching, bins, dir) = (watching.clone(), c.bins.clone(), c.leader_dir());
        let ns = c.lab.ns(0);
        std::thread::spawn(move || {
            let mut least = usize::MAX;
            while watching.load(Ordering::SeqCst) {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .arg(bins.join("bramble"))
                    .args(["--config", dir.join("admin.toml").to_str().unwrap()])
                    .args(["get", "replicas", "--app", "web", "-o", "json"])
                    .output()
                    .unwrap();
                if let Ok(rs) = serde_json::from_slice::<Vec<Replica>>(&out.stdout) {
                    least = least.min(rs.iter().filter(|r| r.serving()).count());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            least
        })
    };
    let out = c.cli(&["drain", "board-2", "--timeout", "120s"]);
    let took = started.elapsed();
    watching.store(false, Ordering::SeqCst);
    let least = least.join().unwrap();
    assert!(out.status.success(), "drain: {}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), "node/board-2 drained\n");
    assert!(text(&out.stderr).contains("Drained: drained; every-board apps stay: exporter"), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let ab = ab.finish();
    for t in threads {
        t.join().unwrap();
    }
    let (answered, failed) = (stats.ok.load(Ordering::SeqCst), stats.failed.load(Ordering::SeqCst));
    eprintln!("drain of board-2 ({} web replicas) under load: {took:?}; {answered} answered, {failed} failed; at least {least} ready", victims.len());
    assert_eq!(failed, 0, "no request fails during the drain: {:?}", stats.failures.lock().unwrap());
    assert!(answered > 100, "the load really ran: {answered}");
    eprintln!("ab: {} complete, {} failed, {} non-2xx", ab.complete, ab.failed, ab.non_2xx);
    assert_eq!((ab.failed, ab.non_2xx), (0, 0), "ab saw failures: {}", ab.output);
    assert!(ab.complete > 50, "ab really ran: {}", ab.output);
    assert!(least >= 3, "each new copy was ready before its old one stopped: {least} ready at the least");
    assert!(on(&c, "web", "board-2").is_empty());
    assert_eq!(on(&c, "exporter", "board-2").len(), 1, "every-board apps stay");
    assert_eq!(c.replicas_of("web").iter().filter(|r| r.serving()).count(), 3);
    let view = node(&c, "board-2");
    assert!(view.status_text().contains("SchedulingDisabled") && view.node.draining.is_some(), "{view:?}");
    let events = c.ok(&["events"]);
    assert!(events.contains("moved off node board-2, which is being drained (its new copy is ready)"), "{events}");
    assert!(events.contains("NodeDrained"), "{events}");

    // Uncordoned: the drain is over and the board takes work again.
    c.ok(&["uncordon", "board-2"]);
    let view = node(&c, "board-2");
    assert!(view.node.draining.is_none() && !view.node.unschedulable);

    // A drain a budget blocks: two replicas at most one per board, both needed.
    let db = format!(
        "[[app]]\nname = \"db\"\nimage = \"{image}\"\nreplicas = 2\nmin_available = 2\n\
         placement = {{ max_per_node = 1, node_selector = {{ role = \"sensor\" }} }}\n\
         command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
    );
    c.ok(&["label", "node", "board-3", "role-"]);
    apply(&c, "db", &db);
    wait_for("db on board-1 and board-2", Duration::from_secs(60), || {
        let rs = c.replicas_of("db");
        (rs.iter().filter(|r| r.serving()).count() == 2).then_some(())
    });
    let out = c.cli(&["drain", "board-1", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("not drained after 5s: app db: its new copy cannot be placed"), "{said}");
    assert!(said.contains("below min_available 2"), "{said}");
    assert_eq!(on(&c, "db", "board-1").len(), 1, "nothing stopped");
    c.ok(&["uncordon", "board-1"]);
    // `delete -l`: every app of a label at once.
    c.ok(&["delete", "app", "-l", "tier=ops"]);
    assert!(c.ok(&["get", "apps", "-o", "name"]).lines().all(|l| l != "app/exporter"));
    c.remove_containers();
}
