//! Scenarios in the simulated cluster (`bramble_tests::sim`): the leader's real planner and
//! store, the agents' real reconcilers against fake containers, a clock moved by hand. Each runs
//! in milliseconds; the real-process versions of some of them are in `apps.rs`.

use bramble_agent::reconcile::fake::Call;
use bramble_proto::model::{Arch, EventReason, ReplicaPhase};
use bramble_tests::sim::{Sim, GRACE};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WEB: &str = "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 6\n";

fn three_boards() -> Sim {
    Sim::new(&[Arch::Arm64, Arch::Arm64, Arch::Arm64])
}

/// A cluster with `WEB` settled.
fn settled() -> Sim {
    let mut sim = three_boards();
    sim.apply(WEB);
    assert!(sim.run_until(10, Sim::converged).is_some(), "six replicas run");
    sim
}

fn per_board(sim: &Sim, app: &str) -> Vec<usize> {
    let mut out: Vec<usize> = sim
        .boards
        .iter()
        .map(|b| sim.replicas(app).iter().filter(|r| r.node.as_deref() == Some(&b.name)).count())
        .collect();
    out.sort();
    out
}

#[test]
fn node_loss_replaces_its_replicas_after_the_grace_period_and_not_before() {
    let t = Instant::now();
    let mut sim = settled();
    assert_eq!(per_board(&sim, "web"), [2, 2, 2]);
    let lost: BTreeSet<String> =
        sim.replicas("web").into_iter().filter(|r| r.node.as_deref() == Some("board-3")).map(|r| r.meta.name).collect();
    sim.partition("board-3");
    let grace = GRACE.as_secs() as usize;
    sim.run_for(grace - 1);
    assert!(sim.replicas("web").iter().all(|r| r.phase != ReplicaPhase::Lost), "nothing lost within the grace period");
    let steps = sim
        .run_until(10, |s| {
            let r = s.replicas("web");
            r.len() == 6 && r.iter().all(|r| r.phase == ReplicaPhase::Running && r.node.as_deref() != Some("board-3"))
        })
        .expect("replaced");
    eprintln!("replaced {} s after the partition (grace {} s)", grace - 1 + steps, grace);
    assert!(grace - 1 + steps <= 10, "replaced within 10 s of the link going down by default");
    let names: BTreeSet<String> = sim.replicas("web").into_iter().map(|r| r.meta.name).collect();
    assert!(names.is_disjoint(&lost), "replacements have new names");
    assert_eq!(per_board(&sim, "web"), [0, 3, 3]);
    let lost_events = sim.ctx().events.filter(|e| e.reason == EventReason::ReplicaLost);
    assert_eq!(lost_events.len(), 2);
    assert!(sim.board("board-3").containers.running().len() == 2, "the cut-off board still runs its copies");
    sim.check_no_duplicates();
    // Simulated, not waited: the run covers the grace period and more of cluster time in a small
    // part of it (a quarter leaves room for a machine busy with builds).
    let simulated = Duration::from_secs((grace + steps) as u64);
    assert!(t.elapsed() < simulated / 4, "simulated, not waited: {:?} for {simulated:?}", t.elapsed());
}

#[test]
fn a_board_whose_link_flaps_keeps_its_replicas_and_its_grace_lengthens() {
    let mut sim = settled();
    let before: BTreeSet<String> = sim.replicas("web").into_iter().map(|r| r.meta.name).collect();
    // board-3's link: down 2 s every 10 s, for 5 minutes.
    for s in 0..300u64 {
        match s % 10 {
            0 => sim.partition("board-3"),
            2 => sim.heal("board-3"),
            _ => {}
        }
        sim.step(Duration::from_secs(1));
        sim.check_no_duplicates();
    }
    sim.heal("board-3");
    sim.run_for(3);
    let after: BTreeSet<String> = sim.replicas("web").into_iter().map(|r| r.meta.name).collect();
    assert_eq!(before, after, "no replica moved, was lost or replaced");
    assert!(sim.ctx().events.filter(|e| e.reason == EventReason::ReplicaLost).is_empty());
    assert!(sim.ctx().events.filter(|e| e.reason == EventReason::NodeNotReady).is_empty());
    let link = sim.ctx().registry.view("board-3", sim.now_ms()).link;
    eprintln!("after 5 minutes of flapping: {link:?}");
    assert!(link.losses >= 25 && link.grace_ms > link.base_grace_ms, "damped: {link:?}");
    // Now a cut of 20 s: within the lengthened grace, still nothing moves.
    sim.partition("board-3");
    sim.run_for(20);
    sim.heal("board-3");
    sim.run_for(3);
    let kept: BTreeSet<String> = sim.replicas("web").into_iter().map(|r| r.meta.name).collect();
    assert_eq!(before, kept, "a long cut of a flapping board within its damped grace moves nothing");
}

#[test]
fn a_board_that_returns_stops_its_moved_copies() {
    let mut sim = settled();
    sim.partition("board-3");
    sim.run_until(30, |s| s.replicas("web").iter().all(|r| r.node.as_deref() != Some("board-3"))).expect("moved");
    sim.run_for(2);
    sim.heal("board-3");
    let steps = sim.run_until(10, Sim::converged).expect("settles");
    assert!(sim.board("board-3").containers.running().is_empty(), "its old copies are stopped");
    let removed: Vec<Call> = sim.calls()["board-3"].iter().filter(|c| matches!(c, Call::Remove(_))).cloned().collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
    sim.check_no_duplicates();
    eprintln!("the returning board settled in {steps} s");
}

#[test]
fn a_rolling_update_stays_within_surge_and_unavailability() {
    let mut sim = three_boards();
    sim.apply(&format!("{WEB}update = {{ max_surge = 2, max_unavailable = 1 }}\n"));
    sim.run_until(10, Sim::converged).expect("settled");
    sim.roll("web", "-v");
    let mut seen_both = false;
    for _ in 0..40 {
        sim.step(Duration::from_secs(1));
        let r = sim.replicas("web");
        assert!(r.len() <= 8, "never more than max_surge above the count: {}", r.len());
        let running = r.iter().filter(|r| r.phase == ReplicaPhase::Running).count();
        assert!(running >= 5, "never more than max_unavailable below it: {running} running");
        let revisions: BTreeSet<&str> = r.iter().map(|r| r.revision_hash.as_str()).collect();
        seen_both |= revisions.len() == 2;
        sim.check_no_duplicates();
        if seen_both && sim.converged() {
            break;
        }
    }
    assert!(seen_both, "old and new side by side: a rolling update");
    assert!(sim.converged());
    let containers: usize = sim.containers().values().map(|c| c.len()).sum();
    assert_eq!(containers, 6, "and the old containers are gone");
}

#[test]
fn a_crash_restarts_at_once_and_a_crash_loop_backs_off_from_ten_seconds_to_five_minutes() {
    let mut sim = three_boards();
    sim.apply("[[app]]\nname = \"crash\"\nimage = \"reg/crash:1\"\n");
    sim.run_until(10, Sim::converged).expect("running");
    let r = sim.replicas("crash").remove(0);
    let board = r.node.clone().unwrap();
    let mut delays = Vec::new();
    for i in 0..7 {
        assert!(sim.crash(&board, &r.meta.name));
        let crashed = sim.now_ms();
        sim.step(Duration::from_millis(100));
        if i > 0 {
            let shown = sim.replicas("crash").remove(0);
            assert_eq!(shown.phase, ReplicaPhase::BackOff, "shown while it waits");
            assert!(shown.restart_at_ms.is_some_and(|at| at > sim.now_ms()), "with when it restarts");
        }
        sim.run_until(400, |s| s.replicas("crash")[0].phase == ReplicaPhase::Running).expect("restarted");
        delays.push((sim.now_ms() - crashed).div_ceil(1000));
    }
    // Restarts happen at the shim's time; the leader sees them at its next one-second tick.
    assert_eq!(delays, [1, 11, 21, 41, 81, 161, 301], "at once, then 10 s doubling to 5 min");
    let shown = sim.replicas("crash").remove(0);
    assert_eq!((shown.restarts, shown.exit_code), (7, Some(1)));
    assert_eq!(sim.calls()[&board], [Call::Start(r.meta.name.clone())], "the shim restarts; the agent does not");
    let backoffs = sim.ctx().events.filter(|e| e.reason == EventReason::BackOff).len();
    assert_eq!(backoffs, 6, "no BackOff for the first, immediate restart");
}

#[test]
fn a_leader_restart_changes_nothing_on_the_boards() {
    let mut sim = settled();
    sim.clear_calls();
    let before = sim.containers();
    sim.restart_leader();
    sim.run_for(30);
    assert!(sim.converged());
    assert_eq!(sim.containers(), before, "same containers, same processes");
    assert!(sim.calls().values().all(|c| c.is_empty()), "no start, no removal: {:?}", sim.calls());
    // And with the leader away for longer than the grace period.
    sim.stop_leader();
    sim.run_for(60);
    sim.start_leader();
    sim.run_for(30);
    assert_eq!(sim.containers(), before);
    assert!(sim.calls().values().all(|c| c.is_empty()));
}

#[test]
fn scaling_under_a_partition_settles_when_it_heals() {
    let mut sim = settled();
    sim.partition("board-2");
    sim.scale("web", 9);
    sim.run_for(5);
    sim.scale("web", 2);
    sim.run_for(40);
    sim.check_no_duplicates();
    sim.heal("board-2");
    sim.run_until(20, Sim::converged).expect("settles");
    assert_eq!(sim.replicas("web").len(), 2);
    let containers: usize = sim.containers().values().map(|c| c.len()).sum();
    assert_eq!(containers, 2, "{:?}", sim.containers());
    sim.check_no_duplicates();
}

#[test]
fn an_image_for_another_arch_moves_to_the_boards_that_run_it() {
    let mut sim = Sim::new(&[Arch::Arm64, Arch::Arm64, Arch::Amd64]);
    sim.restrict("reg/x86:1", &["linux/amd64"]);
    sim.apply("[[app]]\nname = \"x86\"\nimage = \"reg/x86:1\"\nreplicas = 3\n");
    sim.run_until(20, Sim::converged).expect("settles on the amd64 board");
    assert!(sim.replicas("x86").iter().all(|r| r.node.as_deref() == Some("board-3")));
    sim.check_bindings();
    assert!(!sim.ctx().events.filter(|e| e.reason == EventReason::ImagePlatform).is_empty(), "moved, with an event");
}

/// A rogue (or buggy) board's status about a replica that does not exist, saying the app's image
/// offers only riscv64, and one about another board's replica: nothing moves anywhere (issue 27).
/// Its honest miss about a replica it does run moves only its own replicas.
#[test]
fn a_rogue_boards_platform_miss_changes_nothing_elsewhere() {
    use bramble_proto::wire::{PlatformMiss, ReplicaStatus};
    let mut sim = settled();
    let before: Vec<(String, Option<String>)> =
        sim.replicas("web").into_iter().map(|r| (r.meta.name, r.node)).collect();
    let lie = |replica: &str| {
        let mut s = ReplicaStatus::new(replica, ReplicaPhase::Pending);
        s.platform_miss =
            Some(PlatformMiss { image: "reg/web:1".into(), offered: vec!["linux/riscv64".parse().unwrap()] });
        s
    };
    let elsewhere = before.iter().find(|(_, n)| n.as_deref() != Some("board-1")).unwrap().0.clone();
    let now = sim.now_ms();
    bramble_leader::sessions::reports::statuses(
        sim.ctx(),
        "board-1",
        vec![lie("web-nosuch-abcde"), lie(&elsewhere)],
        now,
    );
    for _ in 0..5 {
        sim.step(Duration::from_secs(1));
    }
    let after: Vec<(String, Option<String>)> = sim.replicas("web").into_iter().map(|r| (r.meta.name, r.node)).collect();
    assert_eq!(before, after, "nothing moved, nothing stopped");
    assert!(sim.replicas("web").iter().all(|r| r.phase == ReplicaPhase::Running));
    // Nor does it speak in another board's replica's name.
    let mine = before.iter().find(|(_, n)| n.as_deref() == Some("board-1")).unwrap().0.clone();
    for r in [&elsewhere, &mine] {
        let e = bramble_proto::model::Event::replica(now, "web", r, EventReason::Unhealthy, "made up");
        bramble_leader::sessions::reports::event(sim.ctx(), "board-1", e);
    }
    let made_up: Vec<String> =
        sim.ctx().events.filter(|e| e.message.starts_with("made up")).into_iter().map(|e| e.object.name).collect();
    assert_eq!(made_up, [mine], "only about its own replica");
    // About its own replica: only board-1's replicas move.
    let own = before.iter().find(|(_, n)| n.as_deref() == Some("board-1")).unwrap().0.clone();
    let now = sim.now_ms();
    bramble_leader::sessions::reports::statuses(sim.ctx(), "board-1", vec![lie(&own)], now);
    sim.run_until(30, Sim::converged).expect("settles");
    let rs = sim.replicas("web");
    assert_eq!(rs.len(), 6);
    assert!(rs.iter().all(|r| r.node.as_deref() != Some("board-1") && r.phase == ReplicaPhase::Running), "{rs:?}");
    sim.check_no_duplicates();
}

/// A board that says it holds a local volume it never had is not believed: only a board where a
/// replica mounting the volume ran becomes its home (a claim would draw the app and its
/// secrets). Both boards report the volume; the planner sees it only on the real home.
#[test]
fn a_boards_claim_to_hold_a_volume_counts_only_where_a_replica_used_it() {
    let mut sim = three_boards();
    sim.apply(
        "[[app]]\nname = \"db\"\nimage = \"reg/db:1\"\n[[app.volumes]]\ntype = \"local\"\nname = \"dbdata\"\npath = \"/data\"\n",
    );
    sim.run_until(20, Sim::converged).expect("settles");
    let home = sim.replicas("db")[0].node.clone().expect("placed");
    let rogue = ["board-1", "board-2", "board-3"].into_iter().find(|b| *b != home).unwrap();
    for b in [home.as_str(), rogue] {
        sim.ctx().observed.set_node_volumes(b, vec!["dbdata".into()]);
    }
    let snap = bramble_leader::controllers::snapshot::read(sim.ctx(), sim.now_ms()).expect("snapshot");
    let holds = |n: &str| snap.nodes.iter().find(|x| x.node.meta.name == n).unwrap().volumes.contains("dbdata");
    assert!(holds(&home), "the board where it ran");
    assert!(!holds(rogue), "not the board that only says so");
}

/// Random partitions, crashes, agent and leader restarts, scales and new revisions; the
/// invariants after every step; convergence once everything heals. Seeds from 1 (or
/// `BRAMBLE_SIM_SEEDS=a..b`); each seed runs 300 steps.
#[test]
fn random_faults_keep_the_invariants_and_the_cluster_converges_when_healed() {
    // Faults: partitions, crashes, agent and leader restarts, restores from a backup, certificate
    // renewals, scaling, rollouts, secret updates;
    // endpoints change as replicas come and go while boards flap.
    let seeds = std::env::var("BRAMBLE_SIM_SEEDS").ok().and_then(|s| {
        let (a, b) = s.split_once("..")?;
        Some(a.parse::<u64>().ok()?..b.parse::<u64>().ok()?)
    });
    let t = Instant::now();
    for seed in seeds.unwrap_or(1..9) {
        random_run(seed, 300);
    }
    eprintln!("random runs took {:?}", t.elapsed());
}

fn random_run(seed: u64, steps: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sim = Sim::new(&[Arch::Arm64, Arch::Arm64, Arch::Amd64, Arch::Arm64]);
    sim.restrict("reg/x86:1", &["linux/amd64"]);
    sim.leader_knows("reg/x86:1");
    sim.apply(
        "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 4\n\
         [[app]]\nname = \"db\"\nimage = \"reg/db:1\"\nreplicas = 1\nreplace_after = \"20s\"\n\
         secret_env = { PASSWORD = \"db-password/value\" }\n\
         [[app]]\nname = \"x86\"\nimage = \"reg/x86:1\"\nreplicas = 2\n\
         [[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n\
         [[service]]\nname = \"db\"\napp = \"db\"\nports = [{ port = 5432 }]\n",
    );
    sim.apply(EXPORTER);
    let boards: Vec<String> = sim.boards.iter().map(|b| b.name.clone()).collect();
    let apps = ["web", "db", "x86"];
    let everything = ["web", "db", "x86", "exporter"];
    for step in 0..steps {
        let board = &boards[rng.usize(..boards.len())];
        match rng.u32(..100) {
            0..4 => sim.partition(board),
            4..12 => sim.heal(board),
            12..16 => {
                let list: Vec<String> = sim.board(board).containers.running().into_keys().collect();
                if !list.is_empty() {
                    sim.crash(board, &list[rng.usize(..list.len())]);
                }
            }
            16..18 => sim.restart_agent(board),
            18..19 => sim.restart_leader(),
            19..22 => sim.scale(apps[rng.usize(..apps.len())], rng.u32(0..6)),
            22..24 => sim.roll(apps[rng.usize(..2)], &format!("v{step}")),
            24..27 => sim.put_secret(["db-password", "web-token"][rng.usize(..2)]),
            // A restore from a backup as new as the store: sets held back until every board is seen.
            27..28 => sim.restore_without(&[]),
            28..30 => sim.certificate_due(board),
            // Boards start and stop matching the every-board app.
            30..33 => sim.label(board, "role", Some("sensor")),
            33..35 => sim.label(board, "role", None),
            _ => {}
        }
        sim.step(Duration::from_millis(rng.u64(200..3000)));
        sim.check_every_board("exporter");
        sim.check_no_duplicates();
        sim.check_secrets();
        sim.check_endpoints();
        if sim.published.is_some() {
            sim.check_bindings();
        }
    }
    sim.start_leader();
    for b in &boards {
        sim.heal(b);
    }
    // (Every board matches the exporter once healed: it is on each.)
    for b in &boards {
        sim.label(b, "role", Some("sensor"));
    }
    let settled = sim.run_until(400, Sim::converged);
    assert!(settled.is_some(), "seed {seed}: the cluster converges once healed: {:?}\n{:?}", sim.containers(), {
        let mut r = Vec::new();
        for a in everything {
            r.extend(sim.replicas(a).into_iter().map(|r| (r.meta.name, r.node, r.phase, r.reason)));
        }
        r
    });
    sim.check_no_duplicates();
    sim.check_bindings();
    sim.check_secrets();
    sim.check_endpoints();
}

/// Applies `image` as the new image of `app`.
fn new_image(sim: &Sim, app: &str, image: &str) {
    let mut spec = sim.spec(app);
    spec.image = image.parse().unwrap();
    sim.apply(&toml_of(&spec));
}

fn toml_of(spec: &bramble_proto::manifest::AppSpec) -> String {
    let m = bramble_proto::manifest::Manifest { apps: vec![spec.clone()], ..Default::default() };
    toml::to_string(&m).expect("a manifest")
}

#[test]
fn a_rollout_that_never_gets_ready_stays_within_its_limits_then_rolls_back() {
    use bramble_proto::model::RolloutState;
    let mut sim = three_boards();
    sim.apply(
        "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 3\nupdate = { progress_deadline = \"1m\" }\n",
    );
    sim.run_until(10, Sim::converged).expect("running");
    sim.run_for(1);
    assert_eq!(sim.history("web")[0].state, RolloutState::Complete, "the first revision rolled out");
    sim.never_ready("reg/web:2");
    new_image(&sim, "web", "reg/web:2");
    // Within max_surge 1 / max_unavailable 0: one new replica beside three old ones that serve.
    for _ in 0..50 {
        sim.step(Duration::from_secs(1));
        let rs = sim.replicas("web");
        assert!(rs.len() <= 4, "at most one above the count: {}", rs.len());
        let old_serving = rs.iter().filter(|r| r.serving() && sim.spec("web").image.as_str() == "reg/web:2").count();
        let serving = rs.iter().filter(|r| r.serving()).count();
        assert!(serving >= 3, "the old replicas keep serving: {serving} ({old_serving})");
    }
    assert_eq!(sim.history("web")[1].state, RolloutState::Progressing, "still within its deadline");
    let r = sim.run_until(30, |s| s.history("web")[1].state != RolloutState::Progressing);
    assert!(r.is_some(), "the deadline passes: {:#?} {:#?}", sim.history("web"), sim.replicas("web"));
    let h = sim.history("web");
    assert_eq!(h[1].state, RolloutState::RolledBack);
    assert!(h[1].message.contains("no progress for 1m") && h[1].message.ends_with("rolled back to revision 1"));
    assert_eq!((h[2].number, h[2].cause.as_str()), (3, "rollback of revision 2 to revision 1"));
    assert_eq!(sim.spec("web").image.as_str(), "reg/web:1", "the app is back on the old image");
    sim.run_until(20, Sim::converged).expect("settled on the old image");
    assert!(sim.replicas("web").iter().all(|r| r.serving()));
    sim.run_for(1);
    assert_eq!(sim.history("web")[2].state, RolloutState::Complete, "the rollback rolled out");
    let rolled_back = sim.ctx().events.filter(|e| e.reason == EventReason::RolledBack).len();
    assert_eq!(rolled_back, 1);
}

#[test]
fn without_auto_rollback_a_failed_rollout_holds_where_it_is() {
    use bramble_proto::model::RolloutState;
    let mut sim = three_boards();
    let spec = "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 3\n\
                update = { progress_deadline = \"30s\", auto_rollback = false }\n";
    sim.apply(spec);
    sim.run_until(10, Sim::converged).expect("running");
    sim.never_ready("reg/web:2");
    new_image(&sim, "web", "reg/web:2");
    sim.run_until(60, |s| s.history("web")[1].state != RolloutState::Progressing).expect("the deadline passes");
    assert_eq!(sim.history("web")[1].state, RolloutState::Failed);
    let before: BTreeSet<String> = sim.replicas("web").iter().map(|r| r.meta.name.clone()).collect();
    sim.run_for(30);
    let after: BTreeSet<String> = sim.replicas("web").iter().map(|r| r.meta.name.clone()).collect();
    assert_eq!(before, after, "held: nothing added or removed");
    assert_eq!(sim.spec("web").image.as_str(), "reg/web:2", "no rollback");
    assert_eq!(sim.replicas("web").iter().filter(|r| r.serving()).count(), 3, "the old ones serve");
}

#[test]
fn min_ready_paces_a_rollout() {
    use bramble_proto::model::RolloutState;
    let mut sim = three_boards();
    sim.apply("[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 3\nupdate = { min_ready = \"10s\" }\n");
    sim.run_until(10, Sim::converged).expect("running");
    sim.run_for(10);
    let t0 = sim.now_ms();
    new_image(&sim, "web", "reg/web:2");
    sim.run_until(120, |s| s.history("web").last().unwrap().state == RolloutState::Complete).expect("complete");
    let took = sim.now_ms() - t0;
    assert!(took >= 30_000, "three replicas, each available only after 10 s ready: {took} ms");
}

#[test]
fn replicas_behind_a_service_leave_it_before_they_stop() {
    let mut sim = three_boards();
    sim.apply(
        "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 3\n[[app.ports]]\nname = \"http\"\ncontainer = 80\n\
         [[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80, target = \"http\" }]\n\
         [[app]]\nname = \"batch\"\nimage = \"reg/batch:1\"\nreplicas = 3\n",
    );
    sim.run_until(10, Sim::converged).expect("running");
    sim.scale("web", 1);
    sim.scale("batch", 1);
    sim.step(Duration::from_millis(100));
    let web = sim.replicas("web");
    let leaving: Vec<_> = web.iter().filter(|r| r.terminating_ms.is_some()).collect();
    assert_eq!((web.len(), leaving.len()), (3, 2), "two leave their service first: {web:?}");
    assert!(leaving.iter().all(|r| !r.serving()), "out of the endpoints at once");
    let running: usize = sim.containers().values().map(|c| c.keys().filter(|k| k.starts_with("web")).count()).sum();
    assert_eq!(running, 3, "and still running while the boards catch up");
    assert_eq!(sim.replicas("batch").len(), 1, "without a service there is nothing to leave: gone at once");
    sim.step(Duration::from_millis(100));
    assert_eq!(sim.replicas("web").len(), 1, "every board applied it: stopped");
    let draining = sim.ctx().events.filter(|e| e.reason == EventReason::Draining).len();
    assert_eq!(draining, 2);
    sim.run_until(10, Sim::converged).expect("settled");
}

#[test]
fn a_board_that_does_not_confirm_holds_a_drain_for_two_seconds_at_most() {
    let mut sim = three_boards();
    sim.apply(
        "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 2\n[[app.ports]]\ncontainer = 80\n\
         [[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n",
    );
    sim.run_until(10, Sim::converged).expect("running");
    sim.mute_confirmations("board-1");
    sim.scale("web", 1);
    sim.step(Duration::from_millis(100));
    assert_eq!(sim.replicas("web").len(), 2, "one is leaving");
    sim.step(Duration::from_millis(1_000));
    assert_eq!(sim.replicas("web").len(), 2, "waiting for board-1");
    sim.step(Duration::from_millis(1_000));
    assert_eq!(sim.replicas("web").len(), 1, "stopped after the bound");
    let deleted = sim.ctx().events.filter(|e| e.message.contains("not every board confirmed in time")).len();
    assert_eq!(deleted, 1);
}

/// Usage as the boards would measure it: `load` millicores of work spread over the app's running
/// replicas, each held at its request (its CPU quota). Counters grow by what each did in `dt`.
fn measure(
    sim: &Sim,
    usage: &bramble_leader::boards::usage::Usage,
    counters: &mut std::collections::BTreeMap<String, u64>,
    load: u64,
    request: u64,
) {
    use bramble_proto::usage::{NodeSample, ReplicaSample, UsageSample};
    let running: Vec<_> = sim.replicas("api").into_iter().filter(|r| r.phase == ReplicaPhase::Running).collect();
    let each = if running.is_empty() { 0 } else { (load / running.len() as u64).min(request) };
    for b in &sim.boards {
        let mine: Vec<_> = running.iter().filter(|r| r.node.as_deref() == Some(b.name.as_str())).collect();
        let replicas = mine
            .iter()
            .map(|r| {
                let c = counters.entry(r.meta.name.clone()).or_default();
                *c += each * 1_000_000; // one second of `each` millicores, in ns
                ReplicaSample {
                    replica: r.meta.name.clone(),
                    cpu_ns: *c,
                    memory_working_set: 1 << 20,
                    ..Default::default()
                }
            })
            .collect();
        let node = NodeSample { cpus: 4, memory_total: 4 << 30, disk_total: 1 << 30, ..Default::default() };
        let bound = |r: &str| mine.iter().any(|m| m.meta.name == r).then(|| "api".to_string());
        usage.record(&b.name, UsageSample { at_ms: sim.now_ms(), node, replicas }, sim.now_ms(), bound);
    }
}

#[test]
fn the_autoscaler_follows_the_load_without_overshoot_and_shrinks_only_after_its_window() {
    let mut sim = three_boards();
    sim.apply(
        "[[app]]\nname = \"api\"\nimage = \"reg/api:1\"\nresources = { cpu = \"500m\" }\n\
         [app.autoscale]\nmin = 1\nmax = 6\ncpu = \"50%\"\nscale_down_window = \"60s\"\nscale_up_period = \"15s\"\n",
    );
    let usage = bramble_leader::boards::usage::Usage::new();
    let autoscaler = bramble_leader::controllers::autoscaler::Autoscaler::default();
    let mut counters = std::collections::BTreeMap::new();
    let count = |sim: &Sim| sim.spec("api").replicas.0;
    let mut seen = Vec::new();
    // 1 core of work with a 250m target: four replicas, reached by doubling, never more.
    let mut load = 1000;
    for _ in 0..150 {
        sim.step(Duration::from_secs(1));
        measure(&sim, &usage, &mut counters, load, 500);
        let ctx = sim.ctx();
        autoscaler.pass(&ctx.objects, &usage, &ctx.events, sim.now_ms()).expect("a pass");
        seen.push(count(&sim));
    }
    assert_eq!(count(&sim), 4, "ceil(1000m / 250m): {seen:?}");
    assert!(seen.windows(2).all(|w| w[1] >= w[0]), "it only grew: {seen:?}");
    assert!(seen.iter().all(|c| *c <= 4), "no overshoot: {seen:?}");
    // The load falls to 200m: it waits out its 60 s window, then goes to 1 in one step.
    load = 200;
    let mut shrunk_after = None;
    for s in 1..=120 {
        sim.step(Duration::from_secs(1));
        measure(&sim, &usage, &mut counters, load, 500);
        let ctx = sim.ctx();
        autoscaler.pass(&ctx.objects, &usage, &ctx.events, sim.now_ms()).expect("a pass");
        if count(&sim) < 4 && shrunk_after.is_none() {
            shrunk_after = Some((s, count(&sim)));
        }
    }
    let (after, to) = shrunk_after.expect("it shrank");
    // (The last high recommendation came up to one period, 15 s, before the load fell.)
    assert!(after >= 45, "not before the window: after {after} s");
    assert_eq!((to, count(&sim)), (1, 1), "straight to what 200m needs");
    let events: Vec<String> = sim.ctx().events.since(0).into_iter().map(|e| e.message).collect();
    assert!(
        events.iter().any(|m| m.starts_with("autoscaled from 1 to 2: cpu 100% of request (target 50%)")),
        "{events:?}"
    );
}

#[test]
fn a_secret_updated_during_a_partition_reaches_the_board_when_it_heals_and_leaves_with_its_replicas() {
    let mut sim = three_boards();
    sim.put_secret("db");
    sim.apply("[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 3\nsecret_env = { DB = \"db/password\" }\n");
    assert!(sim.run_until(10, Sim::converged).is_some());
    sim.check_secrets();
    let held = |sim: &Sim, b: &str| sim.board(b).secrets.get("db").copied();
    for b in ["board-1", "board-2", "board-3"] {
        assert_eq!(held(&sim, b), Some(1), "{b} runs a web replica, so it holds db v1");
    }
    sim.partition("board-2");
    sim.put_secret("db");
    sim.run_for(2);
    sim.check_secrets();
    assert_eq!((held(&sim, "board-1"), held(&sim, "board-3")), (Some(2), Some(2)), "connected boards get v2 at once");
    assert_eq!(held(&sim, "board-2"), Some(1), "the cut-off board keeps what it had");
    sim.heal("board-2");
    sim.run_for(2);
    sim.check_secrets();
    assert_eq!(held(&sim, "board-2"), Some(2), "and gets v2 when it is back");
    // A board that runs no replica needing it holds it no more.
    sim.scale("web", 1);
    assert!(sim.run_until(20, Sim::converged).is_some());
    sim.check_secrets();
    let holders = ["board-1", "board-2", "board-3"].iter().filter(|b| held(&sim, b).is_some()).count();
    assert_eq!(holders, 1, "only the board with the last web replica holds db");
}

/// Containers of `app` on each board, by board name.
fn containers_of(sim: &Sim, app: &str) -> std::collections::BTreeMap<String, usize> {
    let prefix = format!("{app}-");
    sim.containers().into_iter().map(|(b, c)| (b, c.keys().filter(|r| r.starts_with(&prefix)).count())).collect()
}

#[test]
fn a_restore_with_a_board_offline_holds_sets_back_until_it_is_seen_then_stops_what_the_backup_lacked() {
    let mut sim = settled();
    sim.apply("[[app]]\nname = \"extra\"\nimage = \"reg/extra:1\"\nreplicas = 3\n");
    assert!(sim.run_until(10, Sim::converged).is_some());
    let before = containers_of(&sim, "extra");
    assert_eq!(before.values().sum::<usize>(), 3);
    sim.partition("board-3");
    // The backup was taken before `extra` was applied.
    sim.restore_without(&["extra"]);
    sim.clear_calls();
    sim.run_for(60);
    assert!(sim.restoring(), "board-3 has not been seen since the restore: sets are still held back");
    let held = containers_of(&sim, "extra");
    for b in ["board-1", "board-2"] {
        assert_eq!(held[b], before[b], "{b} keeps what the backup does not know while board-3 is unseen");
    }
    assert!(sim.replicas("extra").is_empty(), "the leader holds only what the backup had");
    sim.check_no_duplicates();
    // Held back means additions only: board-3's web replicas were replaced on the others meanwhile.
    assert_eq!(sim.replicas("web").iter().filter(|r| r.node.as_deref() == Some("board-3")).count(), 0);
    sim.heal("board-3");
    let settled = sim.run_until(30, |s| !s.restoring() && s.converged());
    assert!(settled.is_some(), "every board seen: the hold-back ends and the cluster converges");
    assert_eq!(containers_of(&sim, "extra").values().sum::<usize>(), 0, "what the backup lacked stops everywhere");
    assert_eq!(containers_of(&sim, "web").values().sum::<usize>(), 6);
    sim.check_no_duplicates();
}

#[test]
fn endpoints_converge_on_every_board_while_one_flaps() {
    let mut sim = three_boards();
    sim.apply(
        "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 4\n\
         [[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n",
    );
    assert!(sim.run_until(10, Sim::converged).is_some());
    sim.check_endpoints();
    let endpoints = |sim: &Sim, b: &str| sim.board(b).services().get("web").map(|s| s.ready().count());
    for round in 0..12u32 {
        // board-2 drops off for a few seconds, comes back for a few, while endpoints change.
        if round % 2 == 0 {
            sim.partition("board-2");
        } else {
            sim.heal("board-2");
        }
        match round % 4 {
            0 => sim.scale("web", 2 + round % 5),
            1 => sim.roll("web", &format!("v{round}")),
            2 => {
                let running: Vec<String> = sim.board("board-1").containers.running().into_keys().collect();
                if let Some(r) = running.first() {
                    sim.crash("board-1", r);
                }
            }
            _ => {}
        }
        for _ in 0..3 {
            sim.step(Duration::from_secs(1));
            sim.check_endpoints();
            sim.check_no_duplicates();
        }
    }
    sim.heal("board-2");
    assert!(sim.run_until(60, Sim::converged).is_some(), "settles once the flapping stops");
    sim.check_endpoints();
    let ready = sim.replicas("web").len();
    for b in ["board-1", "board-2", "board-3"] {
        assert_eq!(endpoints(&sim, b), Some(ready), "{b} knows every ready replica of web as an endpoint");
    }
}

#[test]
fn a_renewal_lost_to_a_leader_restart_is_asked_again_and_completes_without_touching_a_container() {
    let mut sim = settled();
    let before = sim.containers();
    sim.clear_calls();
    let node = |sim: &Sim| sim.objects().get::<bramble_proto::model::Node>("board-2").unwrap().unwrap().value;
    let key = node(&sim).key_fingerprint;
    assert_eq!(node(&sim).cert_expires_ms, None);
    sim.certificate_due("board-2");
    sim.step(Duration::from_secs(1));
    assert!(sim.renewal_in_flight("board-2"), "board-2 asked for a new certificate");
    sim.restart_leader();
    assert!(!sim.renewal_in_flight("board-2"), "the request went with the session");
    assert_eq!(node(&sim).cert_expires_ms, None, "nothing was signed");
    sim.run_for(3);
    assert_eq!(sim.board("board-2").renewed.len(), 1, "asked again on the new session, and signed once");
    let renewed = node(&sim);
    assert!(renewed.cert_expires_ms.is_some(), "the leader records the new certificate's expiry");
    assert_ne!(renewed.key_fingerprint, key, "bound to the new key");
    assert_eq!(renewed.old_key_fingerprint, Some(key), "the old key still good until its certificate expires");
    assert!(sim.board("board-2").renew_at > Some(sim.now_ms()), "the next renewal is two thirds into the new one");
    assert!(sim.board("board-1").renewed.is_empty() && sim.board("board-3").renewed.is_empty());
    sim.run_for(10);
    assert_eq!(sim.board("board-2").renewed.len(), 1, "once renewed, nothing more is asked");
    assert_eq!(sim.containers(), before, "no container touched");
    assert!(sim.calls().values().all(|c| c.is_empty()), "{:?}", sim.calls());
}

/// An every-board app on the boards labelled `role=sensor`.
const EXPORTER: &str = "[[app]]\nname = \"exporter\"\nimage = \"reg/exporter:1\"\nmode = \"every-board\"\n\
                        placement = { node_selector = { role = \"sensor\" } }\n\
                        [[service]]\nname = \"exporter\"\napp = \"exporter\"\nports = [{ port = 9100 }]\n";

#[test]
fn an_every_board_app_follows_boards_that_join_match_flap_and_roll() {
    let mut sim = three_boards();
    for b in ["board-1", "board-2"] {
        sim.label(b, "role", Some("sensor"));
    }
    sim.apply(EXPORTER);
    sim.run_until(10, Sim::converged).expect("one on each sensor board");
    assert_eq!(per_board(&sim, "exporter"), [0, 1, 1]);
    // A board that joins and is labelled gets its replica.
    let new = sim.add_board(Arch::Arm64);
    sim.label(&new, "role", Some("sensor"));
    sim.run_until(10, Sim::converged).expect("the new board runs one");
    assert_eq!(sim.replicas("exporter").iter().filter(|r| r.node.as_deref() == Some(new.as_str())).count(), 1);
    // One that stops matching loses it.
    sim.label("board-1", "role", None);
    sim.run_until(10, Sim::converged).expect("gone from board-1");
    assert!(sim.board("board-1").containers.running().keys().all(|k| !k.starts_with("exporter")));
    // A board that flaps: never two on one board; back to one each when it settles.
    for i in 0..6 {
        if i % 2 == 0 {
            sim.partition("board-2");
        } else {
            sim.heal("board-2");
        }
        for _ in 0..8 {
            sim.step(Duration::from_secs(1));
            sim.check_every_board("exporter");
            sim.check_no_duplicates();
        }
    }
    sim.run_until(30, Sim::converged).expect("settles after the flapping");
    assert_eq!(per_board(&sim, "exporter"), [0, 0, 1, 1]);
    // A new image rolls one board at a time: never both sensor boards without a ready replica.
    new_image(&sim, "exporter", "reg/exporter:2");
    let steps = sim
        .run_until(60, |s| {
            let ready = s.replicas("exporter").iter().filter(|r| r.serving()).count();
            assert!(ready >= 1, "one board at a time: {:?}", s.replicas("exporter"));
            s.check_every_board("exporter");
            Sim::converged(s)
        })
        .expect("rolled out");
    eprintln!("every-board rollout over 2 boards: {steps} s simulated");
    sim.check_endpoints();
}

/// Drains with budgets, in the simulated cluster: one app at a time, never below the count while
/// a new copy can be placed, never below `min_available` when it cannot; blocked says why; a board
/// that flaps during the drain changes none of that.
#[test]
fn drains_move_apps_one_at_a_time_within_their_budgets() {
    use bramble_leader::controllers::plan::DrainStatus;
    let mut sim = three_boards();
    sim.apply(
        "[[app]]\nname = \"api\"\nimage = \"reg/api:1\"\nreplicas = 3\n\
         [[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 4\n\
         [[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n",
    );
    sim.apply(EXPORTER);
    for b in ["board-1", "board-2", "board-3"] {
        sim.label(b, "role", Some("sensor"));
    }
    sim.run_until(20, Sim::converged).expect("settled");
    sim.drain("board-2", Some(false));
    let mut order = Vec::new();
    let steps = sim
        .run_until(60, |s| {
            for (app, want) in [("api", 3), ("web", 4)] {
                let ready = s.replicas(app).iter().filter(|r| r.serving() && r.terminating_ms.is_none()).count();
                assert!(ready >= want, "{app}: {ready} ready, below {want}");
            }
            if let Some(DrainStatus::Moving(m)) = s.drain_status("board-2") {
                let app = m.split(':').next().unwrap_or_default().to_string();
                if app.starts_with("app ") && order.last() != Some(&app) {
                    order.push(app);
                }
            }
            s.check_every_board("exporter");
            s.check_no_duplicates();
            matches!(s.drain_status("board-2"), Some(DrainStatus::Drained(_)))
        })
        .expect("drained");
    eprintln!("drain of a board with api and web: {steps} s simulated; order {order:?}");
    assert_eq!(order, ["app api", "app web"], "one app after the other, by name");
    assert!(sim.replicas("api").iter().chain(&sim.replicas("web")).all(|r| r.node.as_deref() != Some("board-2")));
    assert_eq!(sim.replicas("exporter").iter().filter(|r| r.node.as_deref() == Some("board-2")).count(), 1);
    sim.check_endpoints();

    // A budget: two replicas that need both, at most one per board; board-3 flaps meanwhile.
    sim.drain("board-2", None);
    sim.apply(
        "[[app]]\nname = \"db\"\nimage = \"reg/db:1\"\nreplicas = 2\nmin_available = 2\n\
         placement = { max_per_node = 1, node_selector = { role = \"sensor\" } }\n",
    );
    sim.label("board-3", "role", None);
    sim.run_until(20, Sim::converged).expect("db on board-1 and board-2");
    sim.drain("board-1", Some(false));
    for i in 0..10 {
        if i % 3 == 0 {
            sim.partition("board-3");
        } else {
            sim.heal("board-3");
        }
        sim.step(Duration::from_secs(1));
        let serving = sim.replicas("db").iter().filter(|r| r.serving()).count();
        assert!(serving >= 2, "min_available 2 holds: {:?}", sim.replicas("db"));
    }
    sim.heal("board-3");
    sim.run_for(3);
    match sim.drain_status("board-1") {
        Some(DrainStatus::Blocked(why)) => assert!(why.contains("app db") && why.contains("min_available 2"), "{why}"),
        other => panic!("blocked, saying why: {other:?}"),
    }
    // Uncordoned: over, nothing moved.
    sim.drain("board-1", None);
    sim.run_until(20, Sim::converged).expect("settled again");
    assert_eq!(sim.replicas("db").iter().filter(|r| r.node.as_deref() == Some("board-1")).count(), 1);
}
