//! The planner alone: snapshots built by hand, plans checked, and a pretend commit that applies
//! a plan the way the store would (and checks every compare-and-swap it asks for). No redb, no CA,
//! no runtime, no clock.

use super::*;
use bramble_proto::manifest::parse_manifest;
use bramble_proto::model::{Arch, NodeInfo, ObjectMeta};
use proptest::prelude::*;

fn spec(text: &str) -> AppSpec {
    parse_manifest("t.toml", &format!("[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\n{text}")).unwrap().apps.remove(0)
}

fn node(name: &str, arch: Arch, ready: ConditionStatus) -> NodeState {
    let res = Resources { cpu_millis: 4000, memory_bytes: 4 << 30, replicas: 64 };
    NodeState {
        node: Node::joined(name, "x".into(), NodeInfo::board(arch, res), 1),
        ready,
        images: BTreeSet::new(),
        volumes: BTreeSet::new(),
    }
}

/// What every board of `s` found the image offers.
fn told_by_all(s: &Snapshot, platform: &str, rev: u64) -> Versioned<Misses> {
    let value = s.nodes.iter().map(|n| (n.node.meta.name.clone(), vec![platform.parse().unwrap()])).collect();
    Versioned { value, rev }
}

fn ready_nodes(n: usize) -> Vec<NodeState> {
    (1..=n).map(|i| node(&format!("pi-{i}"), Arch::Arm64, ConditionStatus::True)).collect()
}

/// A snapshot of `nodes` and one app, `web`, with `spec`.
fn snapshot(nodes: Vec<NodeState>, spec: AppSpec) -> Snapshot {
    let app = App {
        meta: ObjectMeta { name: "web".into(), generation: 1, revision: 1, created_ms: 0, changed_by: None },
        spec,
        cronjob: None,
    };
    let mut s = Snapshot { nodes, ..Default::default() };
    s.apps
        .insert("web".into(), AppState { app, replicas: Vec::new(), revisions: BTreeMap::new(), history: Vec::new() });
    s
}

/// Applies `plan` as the store would; panics on a compare-and-swap the store would refuse.
fn commit(s: &mut Snapshot, plan: &Plan, rev: &mut u64) {
    crate::controllers::dry_run::commit(s, plan, rev).expect("the store takes the plan");
}

/// What agents do: bound replicas that wait start running (and are ready).
fn run_bound(s: &mut Snapshot, rev: &mut u64) {
    crate::controllers::dry_run::start_bound(s, 0, rev);
}

fn replicas(s: &Snapshot) -> Vec<&Replica> {
    s.apps["web"].replicas.iter().map(|v| &v.value).collect()
}

/// Plans, commits, lets agents run what is bound; returns the plan.
fn pass(s: &mut Snapshot, now: u64, rev: &mut u64) -> Plan {
    let p = plan(s, now);
    commit(s, &p, rev);
    run_bound(s, rev);
    p
}

#[test]
fn a_steady_app_plans_nothing() {
    let mut s = snapshot(ready_nodes(3), spec("replicas = 3"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    pass(&mut s, 2_000, &mut rev);
    let p = plan(&s, 3_000);
    assert!(p.apps[0].changes.is_empty() && p.apps[0].events.is_empty(), "{:?}", p.apps[0]);
    assert_eq!(p.apps[0].after, p.apps[0].before);
    let on: BTreeSet<_> = replicas(&s).iter().map(|r| r.node.clone().unwrap()).collect();
    assert_eq!(on.len(), 3, "spread over the three nodes");
}

/// Nothing planned at `now`, and nothing at any of these later times either.
fn plans_nothing_later(s: &Snapshot, now: u64) -> Result<(), String> {
    for later in [now + 1, now + 10_000, now + 10 * 60_000, now + 10 * 86_400_000] {
        let p = plan(s, later);
        let busy: Vec<&AppPlan> = p.apps.iter().filter(|a| !a.changes.is_empty() || !a.events.is_empty()).collect();
        if !busy.is_empty() || !p.garbage.is_empty() || !p.drains.is_empty() {
            return Err(format!("settled at {now}, yet at {later}: {busy:?} {:?} {:?}", p.garbage, p.drains));
        }
    }
    Ok(())
}

#[test]
fn a_steady_app_is_settled_and_what_waits_on_the_clock_is_not() {
    let mut s = snapshot(ready_nodes(3), spec("replicas = 3\nupdate = { min_ready = \"10s\" }"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let p = pass(&mut s, 2_000, &mut rev);
    assert!(!settled(&s, &p, 2_000), "a plan that writes is not settled");
    // Ready since 2 s, min_ready 10 s: not available yet, the rollout is still going.
    let p = plan(&s, 5_000);
    assert!(!settled(&s, &p, 5_000), "waiting for min_ready is waiting on the clock");
    let p = pass(&mut s, 13_000, &mut rev);
    assert!(!p.apps[0].changes.is_empty(), "the rollout completes: {:?}", p.apps[0]);
    let p = plan(&s, 14_000);
    assert!(settled(&s, &p, 14_000), "{:?}", p.apps[0]);
    plans_nothing_later(&s, 14_000).unwrap();
    // Each of these waits on the clock or is work in progress.
    let unsettled = |name: &str, change: &dyn Fn(&mut Snapshot)| {
        let mut t = s.clone();
        change(&mut t);
        assert!(!settled(&t, &plan(&t, 14_000), 14_000), "{name}");
    };
    fn first(t: &mut Snapshot) -> &mut Replica {
        &mut t.apps.get_mut("web").unwrap().replicas[0].value
    }
    unsettled("a replica stopping", &|t| first(t).terminating_ms = Some(13_500));
    unsettled("a replica not ready", &|t| first(t).ready = false);
    unsettled("a replica starting", &|t| first(t).phase = ReplicaPhase::Starting);
    unsettled("a failed replica", &|t| first(t).phase = ReplicaPhase::Failed);
    unsettled("a node not ready", &|t| t.nodes[0].ready = ConditionStatus::False);
    unsettled("a node not heard from yet", &|t| t.nodes[1].ready = ConditionStatus::Unknown);
    unsettled("a drain", &|t| drain(t, "pi-1", false));
    unsettled("a job", &|t| add_job(t, "backup", "completions = 1"));
    unsettled("a new template", &|t| t.apps.get_mut("web").unwrap().app.spec = spec("replicas = 3\nargs = [\"v2\"]"));
    unsettled("garbage", &|t| {
        let mut gone = t.apps["web"].replicas[0].clone();
        gone.value.app = "gone".into();
        t.orphans.push(gone);
    });
}

#[test]
fn a_lost_node_marks_its_replicas_lost_then_they_are_replaced_after_the_hold_off() {
    let mut s = snapshot(ready_nodes(3), spec("replicas = 3\nreplace_after = \"30s\""));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    s.nodes[2].ready = ConditionStatus::False;
    let p = pass(&mut s, 20_000, &mut rev);
    let lost: Vec<Replica> = replicas(&s).into_iter().filter(|r| r.phase == ReplicaPhase::Lost).cloned().collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].reason, "node pi-3 is not ready");
    assert!(p.apps[0].events.iter().any(|e| e.reason == EventReason::ReplicaLost));
    assert!(!p.apps[0].changes.iter().any(|c| matches!(c, Change::Create(_))), "not replaced at once");
    let p = pass(&mut s, 49_999, &mut rev);
    assert!(p.apps[0].changes.is_empty(), "held while the board may come back: {:?}", p.apps[0].changes);
    let p = pass(&mut s, 50_001, &mut rev);
    assert_eq!(p.apps[0].changes.iter().filter(|c| matches!(c, Change::Create(_))).count(), 1);
    assert_eq!(p.apps[0].changes.iter().filter(|c| matches!(c, Change::Delete { .. })).count(), 1);
    let names: BTreeSet<_> = replicas(&s).iter().map(|r| r.meta.name.clone()).collect();
    assert!(!names.contains(&lost[0].meta.name.clone()), "the replacement has a new name (fencing)");
    assert!(replicas(&s).iter().all(|r| r.node.as_deref() != Some("pi-3")));
}

#[test]
fn nodes_not_heard_from_since_the_leader_started_are_neither_lost_nor_used() {
    let mut s = snapshot(ready_nodes(2), spec("replicas = 2"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    for n in &mut s.nodes {
        n.ready = ConditionStatus::Unknown;
    }
    let p = plan(&s, 2_000);
    let touches_replicas = p.apps[0]
        .changes
        .iter()
        .any(|c| matches!(c, Change::Create(_) | Change::Update { .. } | Change::Delete { .. }));
    assert!(!touches_replicas, "Unknown is not Lost");
    s.apps.get_mut("web").unwrap().app.spec.replicas = bramble_proto::manifest::Replicas(3);
    let p = plan(&s, 3_000);
    let created: Vec<&Replica> =
        p.apps[0].changes.iter().filter_map(|c| if let Change::Create(r) = c { Some(r) } else { None }).collect();
    assert_eq!(created.len(), 1);
    assert_eq!((created[0].node.as_deref(), created[0].reason.as_str()), (None, "0/2 nodes: 2 not ready"));
}

/// The app as an apply of `text` would leave it, with its revision record, laid over `s`.
fn overlay_web(s: &mut Snapshot, text: &str, now: u64) -> Vec<bramble_proto::wire::AppPlanView> {
    use crate::controllers::dry_run::{overlay, simulate, Applied};
    let new = spec(text);
    let record = crate::controllers::rollout::new_record("web", 2, &new, "apply", 3, now);
    overlay(s, &[Applied { spec: new, record: Some(record.clone()) }], &[], now);
    simulate(s.clone(), &[("web".to_string(), Some(&record))], now)
}

#[test]
fn a_dry_run_of_a_new_image_replaces_each_replica_on_its_board_and_changes_nothing() {
    use bramble_proto::wire::PlannedAction;
    // Replicas of different ages (the newest is not the one that shares a board with a new one).
    let mut s = snapshot(ready_nodes(3), spec("replicas = 2"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    s.apps.get_mut("web").unwrap().app.spec.replicas = bramble_proto::manifest::Replicas(3);
    pass(&mut s, 2_000, &mut rev);
    pass(&mut s, 3_000, &mut rev);
    // Behind a service: old replicas drain (still on their board) while the next new one is placed.
    let text = "[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80, target = 8080 }]\n";
    let svc = parse_manifest("s.toml", text).unwrap().services.remove(0);
    let meta = ObjectMeta { name: "web".into(), generation: 1, revision: 1, created_ms: 0, changed_by: None };
    s.services.push(bramble_proto::model::Service { meta, spec: svc, vip: None, endpoints: Vec::new() });
    let before: Vec<Replica> = replicas(&s).into_iter().cloned().collect();
    let mut copy = s.clone();
    let views = overlay_web(&mut copy, "replicas = 3\nenv = { V = \"2\" }", 4_000);
    assert_eq!(replicas(&s).into_iter().cloned().collect::<Vec<_>>(), before, "the snapshot itself is untouched");
    let v = &views[0];
    assert_eq!(v.revision, Some(2));
    let replaced: BTreeSet<(Option<String>, Option<String>)> = v
        .changes
        .iter()
        .filter(|c| c.action == PlannedAction::Replace)
        .map(|c| (c.replica.clone(), c.node.clone()))
        .collect();
    let expected: BTreeSet<(Option<String>, Option<String>)> =
        before.iter().map(|r| (Some(r.meta.name.clone()), r.node.clone())).collect();
    assert_eq!(replaced, expected, "each old replica replaced on its own board: {v:?}");
    assert_eq!(v.changes.len(), 3, "{v:?}");
    assert!(v.outcome.starts_with("complete: 3 of 3"), "{}", v.outcome);
}

#[test]
fn a_dry_run_says_why_new_replicas_would_stay_pending() {
    use bramble_proto::wire::PlannedAction;
    let mut s = snapshot(ready_nodes(2), spec("replicas = 2"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let views = overlay_web(&mut s, "replicas = 3\nresources = { memory = \"64Gi\" }", 3_000);
    let v = &views[0];
    let pending: Vec<&str> = v.changes.iter().filter_map(|c| c.pending.as_deref()).collect();
    assert!(!pending.is_empty(), "{v:?}");
    assert!(pending.iter().all(|p| p.contains("memory")), "{pending:?}");
    assert!(
        v.changes.iter().all(|c| c.action != PlannedAction::Remove),
        "old replicas stay while new ones cannot start: {v:?}"
    );
    assert!(v.outcome.contains("would stay Pending"), "{}", v.outcome);
}

#[test]
fn replicas_leave_boards_whose_arch_the_image_lacks() {
    let mut nodes = ready_nodes(2);
    nodes.push(node("pc-1", Arch::Amd64, ConditionStatus::True));
    let mut s = snapshot(nodes, spec("replicas = 3"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let all = told_by_all(&s, "linux/amd64", 5);
    s.platforms.insert("reg/web:1".into(), all);
    let p = pass(&mut s, 2_000, &mut rev);
    let moved = p.apps[0].events.iter().filter(|e| e.reason == EventReason::ImagePlatform).count();
    assert_eq!(moved, 2);
    assert!(replicas(&s).iter().all(|r| r.node.as_deref() == Some("pc-1")), "{:?}", replicas(&s));
    assert_eq!(replicas(&s).len(), 3);
}

fn zigbee_stick() -> bramble_proto::device::Device {
    bramble_proto::device::Device {
        class: bramble_proto::device::DeviceClass::Serial,
        path: "/dev/ttyUSB0".into(),
        kind: bramble_proto::device::DeviceKind::Char,
        major: 188,
        minor: 0,
        mode: 0o660,
        gid: 20,
        usb: Some("10c4:ea60".parse().unwrap()),
        serial: None,
    }
}

/// A device unplugged: the replica leaves that board and goes where the device is, or waits
/// Pending saying which; plugged back in, it is placed again.
#[test]
fn a_replica_follows_its_device() {
    let mut nodes = ready_nodes(3);
    nodes[1].node.info.devices = vec![zigbee_stick()];
    let mut s = snapshot(nodes, spec("devices = [\"serial:10c4:ea60\"]"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    assert_eq!(replicas(&s)[0].node.as_deref(), Some("pi-2"), "only pi-2 has the stick");
    // Unplugged from pi-2, plugged into pi-3.
    s.nodes[1].node.info.devices.clear();
    s.nodes[2].node.info.devices = vec![zigbee_stick()];
    let p = pass(&mut s, 2_000, &mut rev);
    let gone: Vec<&str> = p.apps[0]
        .events
        .iter()
        .filter(|e| e.reason == EventReason::DeviceMissing)
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(gone, ["deleted: node pi-2 no longer has device serial:10c4:ea60"]);
    pass(&mut s, 3_000, &mut rev);
    assert_eq!(replicas(&s).len(), 1);
    assert_eq!(replicas(&s)[0].node.as_deref(), Some("pi-3"));
    // Gone from every board: the replica waits, saying why.
    s.nodes[2].node.info.devices.clear();
    pass(&mut s, 4_000, &mut rev);
    pass(&mut s, 5_000, &mut rev);
    let r = replicas(&s);
    assert_eq!((r.len(), r[0].phase, r[0].node.as_deref()), (1, ReplicaPhase::Pending, None));
    assert!(r[0].reason.contains("3 missing device serial:10c4:ea60"), "{}", r[0].reason);
    // Back on pi-1.
    s.nodes[0].node.info.devices = vec![zigbee_stick()];
    pass(&mut s, 6_000, &mut rev);
    assert_eq!(replicas(&s)[0].node.as_deref(), Some("pi-1"));
}

/// A board speaks only for itself: one board's miss (even a lie: "riscv64 only") moves the
/// replicas off that board, never off the others.
#[test]
fn a_boards_platform_miss_moves_replicas_off_that_board_only() {
    let mut s = snapshot(ready_nodes(3), spec("replicas = 6"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let on = |s: &Snapshot, n: &str| replicas(s).iter().filter(|r| r.node.as_deref() == Some(n)).count();
    assert_eq!((on(&s, "pi-1"), on(&s, "pi-2"), on(&s, "pi-3")), (2, 2, 2));
    let lie = BTreeMap::from([("pi-1".to_string(), vec!["linux/riscv64".parse().unwrap()])]);
    s.platforms.insert("reg/web:1".into(), Versioned { value: lie, rev: 5 });
    pass(&mut s, 2_000, &mut rev);
    pass(&mut s, 3_000, &mut rev);
    assert_eq!((on(&s, "pi-1"), on(&s, "pi-2"), on(&s, "pi-3")), (0, 3, 3), "{:?}", replicas(&s));
    assert!(replicas(&s).iter().all(|r| r.phase != ReplicaPhase::Pending || r.node.is_some()));
}

#[test]
fn whatever_is_left_of_a_deleted_app_is_garbage() {
    let mut s = snapshot(ready_nodes(1), spec("replicas = 2"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let gone = s.apps.remove("web").unwrap();
    s.orphans = gone.replicas.clone();
    s.orphan_revisions = gone.revisions.iter().map(|(h, v)| ("web".to_string(), h.clone(), v.rev)).collect();
    let p = plan(&s, 2_000);
    assert!(p.apps.is_empty());
    assert_eq!(p.garbage.iter().filter(|g| matches!(g, Garbage::Replica { .. })).count(), 2);
    assert!(!p.garbage.iter().any(|g| matches!(g, Garbage::Revision { .. })), "templates wait for the replicas");
    s.orphans.clear();
    assert_eq!(plan(&s, 3_000).garbage.len(), 1, "then the template goes");
    let (web, other) = (told_by_all(&s, "linux/amd64", 5), told_by_all(&s, "linux/amd64", 6));
    s.platforms.insert("reg/web:1".into(), web);
    s.platforms.insert("reg/other:1".into(), other);
    s.apps.insert("web".into(), gone);
    s.orphan_revisions.clear();
    let garbage = plan(&s, 4_000).garbage;
    assert_eq!(garbage, [Garbage::ImagePlatforms { image: "reg/other:1".into(), expect: 6 }], "what no app uses");
}

#[test]
fn a_rolling_update_keeps_old_templates_and_drops_them_with_their_last_replica() {
    let mut s = snapshot(ready_nodes(3), spec("replicas = 3"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let old = revision_hash(&s.apps["web"].app.spec);
    let a = s.apps.get_mut("web").unwrap();
    a.app.spec = spec("replicas = 3\nargs = [\"-v\"]");
    a.app.meta.revision = 99;
    let new = revision_hash(&a.app.spec);
    let mut both = false;
    for t in 2..20 {
        let p = pass(&mut s, t * 1000, &mut rev);
        for k in &p.apps[0].after {
            let expected = if k.replica.revision_hash == old { Vec::<String>::new() } else { vec!["-v".into()] };
            assert_eq!(k.spec.args, expected, "each replica keeps its own template");
        }
        both |= p.apps[0].after.iter().any(|k| k.replica.revision_hash == old)
            && p.apps[0].after.iter().any(|k| k.replica.revision_hash == new);
    }
    assert!(both, "a rolling update, not all at once");
    assert!(replicas(&s).iter().all(|r| r.revision_hash == new));
    assert_eq!(s.apps["web"].revisions.keys().cloned().collect::<Vec<_>>(), [new]);
}

#[test]
fn a_plan_that_cannot_be_committed_leaves_what_was_read() {
    let mut s = snapshot(ready_nodes(2), spec("replicas = 2"));
    let p = plan(&s, 1_000);
    assert!(p.apps[0].before.is_empty() && p.apps[0].after.len() == 2);
    let mut rev = 0;
    commit(&mut s, &p, &mut rev);
    assert_eq!(plan(&s, 1_001).apps[0].before.len(), 2);
}

// Property tests: random clusters, random states, many passes.

#[derive(Debug, Clone)]
struct World {
    nodes: Vec<(Arch, ConditionStatus, bool)>,
    apps: Vec<(u32, u32, u32, Option<u64>, bool)>,
    replicas: Vec<(usize, bool, Option<usize>, ReplicaPhase, u64)>,
    offered: Option<Arch>,
    now: u64,
}

fn arch() -> impl Strategy<Value = Arch> {
    prop_oneof![Just(Arch::Amd64), Just(Arch::Arm64)]
}

fn phase() -> impl Strategy<Value = ReplicaPhase> {
    prop_oneof![
        Just(ReplicaPhase::Pending),
        Just(ReplicaPhase::Running),
        Just(ReplicaPhase::Failed),
        Just(ReplicaPhase::Lost),
        Just(ReplicaPhase::Succeeded),
        Just(ReplicaPhase::Starting),
    ]
}

fn world() -> impl Strategy<Value = World> {
    let status = prop_oneof![Just(ConditionStatus::True), Just(ConditionStatus::False), Just(ConditionStatus::Unknown)];
    (
        prop::collection::vec((arch(), status, any::<bool>()), 1..6),
        prop::collection::vec((0u32..7, 0u32..3, 0u32..3, prop::option::of(0u64..120_000), any::<bool>()), 1..4),
        prop::collection::vec((0usize..3, any::<bool>(), prop::option::of(0usize..6), phase(), 0u64..200_000), 0..16),
        prop::option::of(arch()),
        0u64..300_000,
    )
        .prop_map(|(nodes, apps, replicas, offered, now)| World { nodes, apps, replicas, offered, now })
}

fn app_spec(name: &str, (count, surge, unavailable, hold, new): (u32, u32, u32, Option<u64>, bool)) -> AppSpec {
    let surge = if surge == 0 && unavailable == 0 { 1 } else { surge };
    let mut text = format!(
        "[[app]]\nname = \"{name}\"\nimage = \"reg/{name}:1\"\nreplicas = {count}\n\
         update = {{ max_surge = {surge}, max_unavailable = {unavailable} }}\n"
    );
    if let Some(h) = hold {
        text.push_str(&format!("replace_after = \"{h}ms\"\n"));
    }
    if new {
        text.push_str("args = [\"v2\"]\n");
    }
    parse_manifest("t.toml", &text).unwrap().apps.remove(0)
}

fn build(w: &World) -> Snapshot {
    let nodes = w
        .nodes
        .iter()
        .enumerate()
        .map(|(i, (arch, ready, cordoned))| {
            let mut n = node(&format!("n-{i}"), arch.clone(), *ready);
            n.node.unschedulable = *cordoned;
            n
        })
        .collect();
    let mut s = Snapshot { nodes, ..Default::default() };
    for (i, a) in w.apps.iter().enumerate() {
        let name = format!("app{i}");
        let spec = app_spec(&name, *a);
        // The other revision: the same app with or without `args`.
        let other = app_spec(&name, (a.0, a.1, a.2, a.3, !a.4));
        let app = App {
            meta: ObjectMeta { name: name.clone(), generation: 1, revision: 1, created_ms: 0, changed_by: None },
            spec,
            cronjob: None,
        };
        let mut revisions = BTreeMap::new();
        revisions.insert(revision_hash(&other), Versioned { value: other, rev: 2 });
        s.apps.insert(name.clone(), AppState { app, replicas: Vec::new(), revisions, history: Vec::new() });
        if let Some(arch) = &w.offered {
            let p = if *arch == Arch::Amd64 { "linux/amd64" } else { "linux/arm64" };
            let all = told_by_all(&s, p, 5);
            s.platforms.insert(format!("reg/{name}:1"), all);
        }
    }
    for (k, (app, current, node, phase, finished)) in w.replicas.iter().enumerate() {
        let name = format!("app{}", app % w.apps.len());
        let a = s.apps.get_mut(&name).unwrap();
        let hash = if *current { revision_hash(&a.app.spec) } else { a.revisions.keys().next().unwrap().clone() };
        let mut r = Replica::new(&name, &format!("{name}-{hash}-{k}"), &hash, 0);
        r.node = node.map(|n| format!("n-{}", n % w.nodes.len()));
        r.phase = if r.node.is_none() { ReplicaPhase::Pending } else { *phase };
        r.finished_ms = Some(*finished);
        a.replicas.push(Versioned { value: r, rev: 10 + k as u64 });
    }
    s
}

/// Whether a replica counts toward its app's replicas at `now` (as the planner counts).
fn counts(r: &Replica, spec: &AppSpec, now: u64) -> bool {
    match r.phase {
        ReplicaPhase::Lost => {
            now < r.finished_ms.unwrap_or(0) + spec.replace_after.map_or(0, |d| d.0.as_millis() as u64)
        }
        ReplicaPhase::Succeeded => false,
        _ => true,
    }
}

/// Every node answers and takes replicas, and every image offers every platform.
fn heal(s: &mut Snapshot) {
    for n in &mut s.nodes {
        n.ready = ConditionStatus::True;
        n.node.unschedulable = false;
    }
    s.platforms.clear();
}

fn check_plan(s: &Snapshot, p: &Plan, now: u64) {
    let before: BTreeSet<String> =
        s.apps.values().flat_map(|a| a.replicas.iter().map(|v| v.value.meta.name.clone())).collect();
    let mut live = BTreeSet::new();
    for ap in &p.apps {
        let a = &s.apps[&ap.app];
        let spec = &a.app.spec;
        let current = revision_hash(spec);
        for k in &ap.after {
            assert!(live.insert(k.replica.meta.name.clone()), "never two live replicas with one name");
        }
        let created: Vec<&Replica> =
            ap.changes.iter().filter_map(|c| if let Change::Create(r) = c { Some(r) } else { None }).collect();
        for r in &created {
            assert!(!before.contains(&r.meta.name), "a name is never reused: {}", r.meta.name);
            assert_eq!(r.revision_hash, current, "only the current revision is created");
        }
        if !created.is_empty() {
            let counting = ap.after.iter().filter(|k| counts(&k.replica, spec, now)).count();
            let limit = spec.replicas.0 + spec.update.max_surge.0;
            assert!(counting as u32 <= limit, "never more than max_surge above the count: {counting} > {limit}");
        }
        // A Lost replica within its hold-off still counts: nothing is created in its place, and
        // it goes only as an extra (a scale down) or with its old revision.
        let want = spec.replicas.0 as usize;
        // (Replicas on boards whose arch the image lacks go first, and do not count.)
        let runs_there = |r: &Replica| {
            let offered = s.platforms.get(spec.image.as_str());
            let node = r.node.as_deref().and_then(|n| s.nodes.iter().find(|x| x.node.meta.name == n));
            match (offered, node) {
                (Some(o), Some(n)) => !crate::scheduler::missed(&o.value, &n.node.meta.name, &n.node.info.arch),
                _ => true,
            }
        };
        // Replicas of NotReady nodes are judged as they are once marked Lost (at `now`).
        let marked: Vec<Replica> = a
            .replicas
            .iter()
            .map(|v| {
                let mut r = v.value.clone();
                let down = r.node.as_deref().is_some_and(|n| {
                    s.nodes.iter().any(|x| x.node.meta.name == n && x.ready == ConditionStatus::False)
                });
                if down && !matches!(r.phase, ReplicaPhase::Lost | ReplicaPhase::Succeeded) {
                    r.phase = ReplicaPhase::Lost;
                    r.finished_ms = Some(now);
                }
                r
            })
            .collect();
        let counting_now: Vec<&Replica> =
            marked.iter().filter(|r| r.revision_hash == current && counts(r, spec, now) && runs_there(r)).collect();
        let rolling = marked.iter().any(|r| r.revision_hash != current && counts(r, spec, now));
        let room = want + if rolling { spec.update.max_surge.0 as usize } else { 0 };
        assert!(created.len() <= room.saturating_sub(counting_now.len()), "held Lost replicas count: {created:?}");
        for r in &counting_now {
            let kept = ap.after.iter().any(|k| k.replica.meta.name == r.meta.name);
            if r.phase == ReplicaPhase::Lost && !kept {
                assert!(counting_now.len() > want, "a held Lost replica goes only as an extra");
            }
        }
        for k in &ap.after {
            let was_bound =
                a.replicas.iter().any(|v| v.value.meta.name == k.replica.meta.name && v.value.node.is_some());
            let Some(node) = k.replica.node.as_deref().filter(|_| !was_bound) else { continue };
            let n = s.nodes.iter().find(|n| n.node.meta.name == node).expect("bound to a known node");
            assert_eq!(n.ready, ConditionStatus::True, "placed only on Ready nodes");
            assert!(!n.node.unschedulable, "never on a cordoned node");
            if let Some(offered) = s.platforms.get(spec.image.as_str()) {
                assert!(
                    !crate::scheduler::missed(&offered.value, node, &n.node.info.arch),
                    "never where the image cannot run"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// One plan over any state keeps the invariants and asks only for writes the store accepts.
    #[test]
    fn any_plan_keeps_the_invariants(w in world()) {
        let mut s = build(&w);
        let p = plan(&s, w.now);
        check_plan(&s, &p, w.now);
        let mut rev = 1000;
        commit(&mut s, &p, &mut rev);
    }

    /// Pass after pass, with boards that run what they get: the invariants hold at every step,
    /// and once every node answers, every app converges to its count of its current revision.
    #[test]
    fn passes_converge_when_the_cluster_is_healthy(w in world()) {
        let mut s = build(&w);
        let mut rev = 1000;
        let mut now = w.now;
        for step in 0..30 {
            if step == 10 {
                heal(&mut s);
            }
            let p = plan(&s, now);
            check_plan(&s, &p, now);
            commit(&mut s, &p, &mut rev);
            run_bound(&mut s, &mut rev);
            for a in s.apps.values_mut() {
                for v in &mut a.replicas {
                    if v.value.phase == ReplicaPhase::Failed || v.value.phase == ReplicaPhase::Starting {
                        v.value.phase = ReplicaPhase::Running;
                    }
                }
            }
            now += 5 * 60_000;
        }
        for a in s.apps.values() {
            let current = revision_hash(&a.app.spec);
            let live: Vec<&Replica> = a.replicas.iter().map(|v| &v.value).filter(|r| r.phase != ReplicaPhase::Succeeded).collect();
            prop_assert_eq!(live.len() as u32, a.app.spec.replicas.0, "{:?}", live);
            prop_assert!(live.iter().all(|r| r.revision_hash == current && r.phase == ReplicaPhase::Running && r.node.is_some()));
        }
    }

    /// A pass that finds the cluster settled is right: passes at any later time over the same
    /// snapshot plan nothing (the loop skips them). And a cluster that converged, its replicas
    /// ready, is settled (the predicate is not merely always false).
    #[test]
    fn a_settled_cluster_plans_nothing_later_and_a_converged_one_is_settled(w in world()) {
        let mut s = build(&w);
        let mut rev = 1000;
        let mut now = w.now;
        for step in 0..30 {
            if step == 10 {
                heal(&mut s);
            }
            if step >= 20 {
                // The boards say their replicas are ready.
                for v in s.apps.values_mut().flat_map(|a| a.replicas.iter_mut()) {
                    if matches!(v.value.phase, ReplicaPhase::Failed | ReplicaPhase::Starting | ReplicaPhase::Running) {
                        v.value.phase = ReplicaPhase::Running;
                        v.value.ready = true;
                        v.value.ready_ms.get_or_insert(now);
                    }
                }
            }
            let p = plan(&s, now);
            if settled(&s, &p, now) {
                prop_assert!(plans_nothing_later(&s, now).is_ok(), "{:?}", plans_nothing_later(&s, now));
            }
            commit(&mut s, &p, &mut rev);
            run_bound(&mut s, &mut rev);
            now += 5 * 60_000;
        }
        let p = plan(&s, now);
        let succeeded = s.apps.values().flat_map(|a| &a.replicas).any(|v| v.value.phase == ReplicaPhase::Succeeded);
        prop_assert!(succeeded || settled(&s, &p, now), "converged yet not settled: {:?}", p.apps);
    }

    /// A rolling update from a full, running app never goes above the surge nor below the
    /// availability it allows.
    #[test]
    fn a_rolling_update_stays_within_surge_and_unavailability(count in 1u32..6, surge in 0u32..3, unavailable in 0u32..3) {
        let surge = if surge == 0 && unavailable == 0 { 1 } else { surge };
        let text = |args: &str| format!("replicas = {count}\nupdate = {{ max_surge = {surge}, max_unavailable = {unavailable} }}\n{args}");
        let mut s = snapshot(ready_nodes(3), spec(&text("")));
        let mut rev = 10;
        for t in 0..3 {
            pass(&mut s, t, &mut rev);
        }
        let a = s.apps.get_mut("web").unwrap();
        a.app.spec = spec(&text("args = [\"v2\"]"));
        a.app.meta.revision = 99;
        for t in 3..40u64 {
            let p = plan(&s, t * 1000);
            commit(&mut s, &p, &mut rev);
            let total = replicas(&s).len() as u32;
            prop_assert!(total <= count + surge, "{total} replicas > {count} + {surge}");
            let running = replicas(&s).iter().filter(|r| r.phase == ReplicaPhase::Running).count() as u32;
            prop_assert!(running + unavailable >= count, "{running} running < {count} - {unavailable}");
            run_bound(&mut s, &mut rev);
        }
        let new = revision_hash(&s.apps["web"].app.spec);
        prop_assert!(replicas(&s).iter().all(|r| r.revision_hash == new));
        prop_assert_eq!(replicas(&s).len() as u32, count);
    }
}

#[test]
fn a_dry_run_shows_a_host_port_rollout_stuck_on_one_board_and_the_in_place_one_that_is_not() {
    use bramble_proto::wire::PlannedAction;
    let port = "replicas = 1\nports = [{ container = 8080, host = 8080 }]\n";
    let mut s = snapshot(ready_nodes(1), spec(port));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    pass(&mut s, 2_000, &mut rev);
    let old = replicas(&s)[0].meta.name.clone();
    let v = &overlay_web(&mut s.clone(), &format!("{port}env = {{ V = \"2\" }}"), 3_000)[0];
    assert_eq!(v.changes.len(), 1, "{v:?}");
    assert_eq!(v.changes[0].action, PlannedAction::Create);
    assert!(v.changes[0].pending.as_deref().is_some_and(|p| p.contains("host port")), "{v:?}");
    assert!(v.outcome.contains("would stay Pending"), "{}", v.outcome);
    let in_place = format!("{port}env = {{ V = \"2\" }}\nupdate = {{ max_surge = 0, max_unavailable = 1 }}");
    let v = &overlay_web(&mut s.clone(), &in_place, 3_000)[0];
    assert_eq!(v.changes.len(), 1, "{v:?}");
    assert_eq!((v.changes[0].action, v.changes[0].replica.as_deref()), (PlannedAction::Replace, Some(old.as_str())));
    assert!(v.outcome.starts_with("complete"), "{}", v.outcome);
}

fn every_board(extra: &str) -> AppSpec {
    spec(&format!("mode = \"every-board\"\n{extra}"))
}

/// Replicas per board (bound ones), and the unbound count.
fn by_board(s: &Snapshot) -> (BTreeMap<String, usize>, usize) {
    let mut on = BTreeMap::new();
    let mut unbound = 0;
    for r in replicas(s) {
        match &r.node {
            Some(n) => *on.entry(n.clone()).or_default() += 1,
            None => unbound += 1,
        }
    }
    (on, unbound)
}

#[test]
fn an_every_board_app_follows_the_boards_that_join_leave_and_match() {
    let mut s = snapshot(ready_nodes(3), every_board(""));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let (on, unbound) = by_board(&s);
    assert_eq!((on.len(), unbound), (3, 0), "{on:?}");
    assert!(on.values().all(|n| *n == 1));
    // A cordoned board keeps its replica; a board that joins gets one.
    s.nodes[1].node.unschedulable = true;
    s.nodes.push(node("pi-4", Arch::Arm64, ConditionStatus::True));
    pass(&mut s, 2_000, &mut rev);
    let (on, _) = by_board(&s);
    assert_eq!(on.keys().map(String::as_str).collect::<Vec<_>>(), ["pi-1", "pi-2", "pi-3", "pi-4"]);
    // A board deleted: its replica goes and nothing replaces it.
    s.nodes.remove(0);
    for t in 3..6 {
        pass(&mut s, t * 1_000, &mut rev);
    }
    let (on, unbound) = by_board(&s);
    assert_eq!((on.keys().map(String::as_str).collect::<Vec<_>>(), unbound), (vec!["pi-2", "pi-3", "pi-4"], 0));
    assert_eq!(replicas(&s).len(), 3);
}

#[test]
fn an_every_board_app_with_a_selector_comes_and_goes_with_the_label() {
    let mut s = snapshot(ready_nodes(3), every_board("placement = { node_selector = { role = \"sensor\" } }"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    assert!(replicas(&s).is_empty(), "no board matches: no replica, none Pending");
    s.nodes[2].node.labels.insert("role".into(), "sensor".into());
    pass(&mut s, 2_000, &mut rev);
    assert_eq!(by_board(&s), (BTreeMap::from([("pi-3".to_string(), 1)]), 0));
    s.nodes[2].node.labels.remove("role");
    let p = pass(&mut s, 3_000, &mut rev);
    assert!(p.apps[0].events.iter().any(|e| e.message.contains("node pi-3 is no longer one of the app's boards")));
    assert!(replicas(&s).is_empty(), "{:?}", replicas(&s));
}

#[test]
fn an_every_board_replica_waits_for_its_board_while_it_is_down() {
    let mut s = snapshot(ready_nodes(3), every_board(""));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    s.nodes[1].ready = ConditionStatus::False;
    pass(&mut s, 2_000, &mut rev);
    pass(&mut s, 3_000, &mut rev);
    let (on, unbound) = by_board(&s);
    assert_eq!((on.len(), unbound), (2, 1), "replaced by one that waits: {:?}", replicas(&s));
    assert!(on.values().all(|n| *n == 1), "never a second one on a board that has one: {on:?}");
    let waiting = replicas(&s).into_iter().find(|r| r.node.is_none()).unwrap().clone();
    assert_eq!(waiting.reason, "0/3 nodes: 2 already running one, 1 not ready");
    s.nodes[1].ready = ConditionStatus::True;
    pass(&mut s, 4_000, &mut rev);
    let (on, unbound) = by_board(&s);
    assert_eq!((on.len(), unbound), (3, 0));
    assert_eq!(replicas(&s).iter().find(|r| r.meta.name == waiting.meta.name).unwrap().node.as_deref(), Some("pi-2"));
}

#[test]
fn an_every_board_app_rolls_one_board_at_a_time() {
    let mut s = snapshot(ready_nodes(4), every_board(""));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let old = revision_hash(&s.apps["web"].app.spec);
    s.apps.get_mut("web").unwrap().app.spec.image = "reg/web:2".parse().unwrap();
    let new = revision_hash(&s.apps["web"].app.spec);
    for t in 2..40 {
        pass(&mut s, t * 1_000, &mut rev);
        let rs = replicas(&s);
        let ready = rs.iter().filter(|r| r.serving()).count();
        assert!(ready >= 3, "at most one board without its replica at a time: {rs:?}");
        let (on, _) = by_board(&s);
        assert!(on.values().all(|n| *n == 1), "one per board: {on:?}");
        if rs.len() == 4 && rs.iter().all(|r| r.revision_hash == new && r.serving()) {
            let stored = &s.apps["web"].app.spec;
            assert_eq!((stored.update.max_surge.0, stored.replicas.0), (1, 1), "the app's own spec is untouched");
            return;
        }
    }
    panic!("not rolled out from {old} to {new}: {:?}", replicas(&s));
}

/// Starts a drain of `board` as `bramble drain` does.
fn drain(s: &mut Snapshot, board: &str, include_every_board: bool) {
    let n = s.nodes.iter_mut().find(|n| n.node.meta.name == board).unwrap();
    n.node.unschedulable = true;
    n.node.draining = Some(bramble_proto::model::Draining { since_ms: 0, by: "admin".into(), include_every_board });
}

fn add_app(s: &mut Snapshot, name: &str, text: &str) {
    let spec = parse_manifest("t.toml", &format!("[[app]]\nname = \"{name}\"\nimage = \"reg/{name}:1\"\n{text}"))
        .unwrap()
        .apps
        .remove(0);
    let app = App {
        meta: ObjectMeta { name: name.into(), generation: 1, revision: 1, created_ms: 0, changed_by: None },
        spec,
        cronjob: None,
    };
    s.apps.insert(name.into(), AppState { app, replicas: Vec::new(), revisions: BTreeMap::new(), history: Vec::new() });
}

/// Job `name` of `fields`, stored (as an app whose mode is `job`).
fn add_job(s: &mut Snapshot, name: &str, fields: &str) {
    add_app(s, name, "");
    let text = format!("[[job]]\nname = \"{name}\"\nimage = \"reg/{name}:1\"\n{fields}");
    s.apps.get_mut(name).unwrap().app.spec = parse_manifest("t.toml", &text).unwrap().jobs.remove(0);
}

fn on(s: &Snapshot, app: &str, board: &str) -> usize {
    s.apps[app].replicas.iter().filter(|r| r.value.node.as_deref() == Some(board)).count()
}

#[test]
fn a_drain_moves_one_app_at_a_time_each_new_copy_ready_before_the_old_stops() {
    let mut s = snapshot(ready_nodes(3), spec("replicas = 3"));
    add_app(&mut s, "api", "replicas = 2");
    add_app(&mut s, "exporter", "mode = \"every-board\"");
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    let victims = on(&s, "web", "pi-2") + on(&s, "api", "pi-2");
    assert!(victims >= 2, "something to move");
    drain(&mut s, "pi-2", false);
    let mut moved_apps = Vec::new();
    for t in 2..30 {
        let p = pass(&mut s, t * 1_000, &mut rev);
        for (app, want) in [("web", 3), ("api", 2)] {
            let ready = s.apps[app].replicas.iter().filter(|r| r.value.serving()).count();
            assert!(ready >= want, "{app} never below its count: {ready} at {t} s");
        }
        let deleting: BTreeSet<&str> = p
            .apps
            .iter()
            .filter(|a| a.events.iter().any(|e| e.message.contains("which is being drained")))
            .map(|a| a.app.as_str())
            .collect();
        assert!(deleting.len() <= 1, "one app at a time: {deleting:?}");
        moved_apps.extend(deleting.iter().map(|a| a.to_string()));
        if let Some(DrainStatus::Drained(text)) = p.drains.get("pi-2") {
            assert_eq!(on(&s, "web", "pi-2") + on(&s, "api", "pi-2"), 0);
            assert_eq!(on(&s, "exporter", "pi-2"), 1, "every-board apps stay");
            assert!(text.contains("every-board apps stay: exporter"), "{text}");
            moved_apps.dedup();
            assert_eq!(moved_apps, ["api", "web"], "by name, one after the other");
            return;
        }
    }
    panic!("not drained: {:?}", replicas(&s));
}

#[test]
fn a_drain_that_would_break_a_budget_says_which_app_and_why() {
    // Two boards, two replicas at most one per board: the moved copy has nowhere to go.
    let mut s = snapshot(ready_nodes(2), spec("replicas = 2\nmin_available = 2\nplacement = { max_per_node = 1 }"));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    drain(&mut s, "pi-2", false);
    let mut last = None;
    for t in 2..6 {
        last = plan(&s, t * 1_000).drains.get("pi-2").cloned();
        pass(&mut s, t * 1_000, &mut rev);
    }
    let Some(DrainStatus::Blocked(why)) = last else { panic!("{last:?}") };
    assert!(
        why.starts_with("app web: its new copy cannot be placed (0/2 nodes: 1 cordoned, 1 max per node reached)"),
        "{why}"
    );
    assert!(why.ends_with("would leave 1 ready, below min_available 2"), "{why}");
    assert_eq!(on(&s, "web", "pi-2"), 1, "nothing stopped");
    // The default budget (one ready) lets it go; its copy waits for room.
    s.apps.get_mut("web").unwrap().app.spec.min_available = None;
    for t in 6..9 {
        pass(&mut s, t * 1_000, &mut rev);
    }
    assert_eq!(on(&s, "web", "pi-2"), 0);
    assert_eq!(s.apps["web"].replicas.iter().filter(|r| r.value.serving()).count(), 1);
    assert!(matches!(plan(&s, 10_000).drains.get("pi-2"), Some(DrainStatus::Drained(_))));
}

#[test]
fn a_drain_with_every_board_apps_moves_them_too_when_asked() {
    let mut s = snapshot(ready_nodes(3), every_board(""));
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    drain(&mut s, "pi-1", true);
    for t in 2..6 {
        pass(&mut s, t * 1_000, &mut rev);
    }
    assert_eq!(on(&s, "web", "pi-1"), 0);
    assert_eq!(replicas(&s).len(), 2, "not replaced elsewhere: one per board");
    assert!(matches!(plan(&s, 7_000).drains.get("pi-1"), Some(DrainStatus::Drained(t)) if t == "drained"));
    // Uncordoned: the board has its replica again.
    let n = &mut s.nodes[0].node;
    n.unschedulable = false;
    n.draining = None;
    pass(&mut s, 8_000, &mut rev);
    pass(&mut s, 9_000, &mut rev);
    assert_eq!(on(&s, "web", "pi-1"), 1);
}

#[test]
fn an_app_starts_after_the_apps_it_names_have_a_ready_replica() {
    let mut s = snapshot(ready_nodes(2), spec("replicas = 2\nafter = [\"db\"]"));
    let mut rev = 10;
    let p = pass(&mut s, 1_000, &mut rev);
    let waiting: Vec<&Replica> = replicas(&s);
    assert_eq!(waiting.len(), 2, "made, not placed");
    assert!(
        waiting.iter().all(|r| r.node.is_none() && r.reason.contains("app db, which does not exist")),
        "{waiting:?}"
    );
    let said =
        |p: &Plan| p.apps.iter().flat_map(|a| &a.events).filter(|e| e.reason == EventReason::WaitingForApps).count();
    assert_eq!(said(&p), 2);
    assert_eq!(said(&pass(&mut s, 2_000, &mut rev)), 0, "said once");
    // db comes: bound, not ready yet — web still waits, now saying so.
    add_app(&mut s, "db", "");
    let p = plan(&s, 3_000);
    commit(&mut s, &p, &mut rev);
    let p = plan(&s, 4_000);
    commit(&mut s, &p, &mut rev);
    assert_eq!(on(&s, "db", "pi-1") + on(&s, "db", "pi-2"), 1);
    assert!(replicas(&s).iter().all(|r| r.node.is_none() && r.reason.contains("app db to have a ready replica")));
    // Ready: web is placed.
    run_bound(&mut s, &mut rev);
    pass(&mut s, 5_000, &mut rev);
    assert!(replicas(&s).iter().all(|r| r.node.is_some() && r.reason.is_empty()), "{:?}", replicas(&s));
    // Changing `after` rolls nothing: same template.
    assert_eq!(
        crate::controllers::replicas::revision_hash(&spec("replicas = 2\nafter = [\"db\"]")),
        crate::controllers::replicas::revision_hash(&spec("replicas = 2"))
    );
}

/// Runs of app `name` as the agents would finish them: each bound, running one exits with the
/// code `code_of` gives it.
fn finish_runs(s: &mut Snapshot, name: &str, now: u64, rev: &mut u64, code_of: &mut dyn FnMut(&str) -> i32) {
    for v in &mut s.apps.get_mut(name).unwrap().replicas {
        if v.value.phase == ReplicaPhase::Running {
            let code = code_of(&v.value.meta.name);
            v.value.phase = if code == 0 { ReplicaPhase::Succeeded } else { ReplicaPhase::Failed };
            v.value.exit_code = Some(code);
            v.value.finished_ms = Some(now);
            v.value.ready = false;
            *rev += 1;
            v.rev = *rev;
        }
    }
}

#[test]
fn a_job_runs_its_completions_parallelism_at_a_time_retrying_a_failure_after_its_backoff() {
    let mut s = Snapshot { nodes: ready_nodes(2), ..Default::default() };
    add_job(&mut s, "batch", "completions = 5\nparallelism = 2\n");
    let mut rev = 10;
    let mut failed_once = false;
    let (mut now, mut most) = (1_000, 0);
    for _ in 0..40 {
        pass(&mut s, now, &mut rev);
        let running = s.apps["batch"].replicas.iter().filter(|r| r.value.phase == ReplicaPhase::Running).count();
        most = most.max(running);
        now += 1_000;
        // The first run to finish fails; every other succeeds.
        finish_runs(&mut s, "batch", now, &mut rev, &mut |_| {
            if std::mem::replace(&mut failed_once, true) {
                0
            } else {
                3
            }
        });
        now += 1_000;
    }
    let runs: Vec<&Replica> = s.apps["batch"].replicas.iter().map(|v| &v.value).collect();
    let st = bramble_proto::job::status(&s.apps["batch"].app.spec, 0, &runs, now);
    assert_eq!((st.state, st.succeeded, st.failed, st.active), (bramble_proto::job::JobState::Complete, 5, 1, 0));
    assert_eq!(most, 2, "parallelism 2");
    assert_eq!(runs.len(), 6, "five successes and the failure, kept; no run more");
    // The retry waited out the 10 s backoff: no run was created within 10 s of the failure.
    let failure = runs.iter().find(|r| r.phase == ReplicaPhase::Failed).unwrap().finished_ms.unwrap();
    assert!(runs.iter().all(|r| r.meta.created_ms <= failure || r.meta.created_ms >= failure + 10_000), "{runs:?}");
    // Complete, it plans nothing more.
    let p = plan(&s, now + 60_000);
    assert!(p.apps[0].changes.is_empty(), "{:?}", p.apps[0].changes);
}

#[test]
fn a_job_past_its_backoff_limit_stops_its_runs_and_a_lost_run_is_replaced() {
    let mut s = Snapshot { nodes: ready_nodes(2), ..Default::default() };
    add_job(&mut s, "flaky", "completions = 3\nparallelism = 2\nbackoff_limit = 0\n");
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    // One run's board is lost: the run holds its place until its board has surely stopped it
    // (the wait, 4 s here, and its stop grace, 10 s), then a new one replaces it, not counted as
    // a failure.
    s.lost_run_wait_ms = 4_000;
    let lost_node = s.apps["flaky"].replicas[0].value.node.clone().unwrap();
    s.nodes.iter_mut().find(|n| n.node.meta.name == lost_node).unwrap().ready = ConditionStatus::False;
    pass(&mut s, 2_000, &mut rev);
    pass(&mut s, 15_999, &mut rev);
    let runs: Vec<&Replica> = s.apps["flaky"].replicas.iter().map(|v| &v.value).collect();
    assert_eq!(runs.len(), 2, "no new run while the lost one may still run: {runs:?}");
    assert_eq!(runs.iter().filter(|r| r.phase == ReplicaPhase::Lost).count(), 1);
    pass(&mut s, 16_000, &mut rev);
    let runs: Vec<&Replica> = s.apps["flaky"].replicas.iter().map(|v| &v.value).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.phase == ReplicaPhase::Running && r.node.as_deref() != Some(lost_node.as_str())));
    // One fails: over backoff_limit 0, the job fails and its other run stops.
    let mut first = true;
    let victim = s.apps["flaky"].replicas[0].value.meta.name.clone();
    for v in &mut s.apps.get_mut("flaky").unwrap().replicas {
        if std::mem::replace(&mut first, false) {
            v.value.phase = ReplicaPhase::Failed;
            v.value.exit_code = Some(1);
            v.value.finished_ms = Some(4_000);
        }
    }
    let p = pass(&mut s, 5_000, &mut rev);
    let runs: Vec<&Replica> = s.apps["flaky"].replicas.iter().map(|v| &v.value).collect();
    assert_eq!(
        runs.iter().map(|r| r.meta.name.as_str()).collect::<Vec<_>>(),
        [victim.as_str()],
        "only the failed run is kept"
    );
    assert!(
        p.apps[0].events.iter().any(|e| e.message.contains("the job failed (BackoffLimitExceeded")),
        "{:?}",
        p.apps[0].events
    );
}

#[test]
fn an_app_after_a_job_waits_for_it_to_complete_and_a_job_goes_after_its_ttl() {
    let mut s = snapshot(ready_nodes(2), spec("after = [\"migrate\"]"));
    add_job(&mut s, "migrate", "ttl_after_finished = \"30s\"\n");
    let mut rev = 10;
    // The job's run is placed and runs; web waits for the job, not for a ready replica.
    pass(&mut s, 1_000, &mut rev);
    assert_eq!(s.apps["migrate"].replicas.len(), 1);
    assert!(
        replicas(&s).iter().all(|r| r.node.is_none() && r.reason.contains("waiting for job migrate to complete")),
        "{:?}",
        replicas(&s)
    );
    pass(&mut s, 2_000, &mut rev);
    assert!(replicas(&s).iter().all(|r| r.node.is_none()), "a running job is not a ready one");
    // Its run succeeds at 3 s: complete, web is placed.
    finish_runs(&mut s, "migrate", 3_000, &mut rev, &mut |_| 0);
    pass(&mut s, 4_000, &mut rev);
    assert!(replicas(&s).iter().all(|r| r.node.is_some() && r.reason.is_empty()), "{:?}", replicas(&s));
    // Kept for its 30 s after it finished, then the job itself goes, in a transaction of its own.
    let p = pass(&mut s, 32_999, &mut rev);
    assert!(s.apps.contains_key("migrate") && p.apps.iter().all(|a| !a.changes.contains(&Change::DeleteApp)));
    let p = plan(&s, 33_000);
    let gone = p.apps.iter().find(|a| a.app == "migrate").unwrap();
    assert_eq!(gone.changes, [Change::DeleteApp]);
    assert!(gone.events.iter().any(|e| e.message == "job migrate deleted: finished 30s ago (ttl_after_finished)"));
    let ops = crate::controllers::commit::ops(gone);
    assert_eq!(ops.len(), 1, "the delete checks the app's revision itself: {ops:?}");
    commit(&mut s, &p, &mut rev);
    assert!(!s.apps.contains_key("migrate"));
    // A failed job never lets web start; it says why.
    let mut s = snapshot(ready_nodes(1), spec("after = [\"migrate\"]"));
    add_job(&mut s, "migrate", "backoff_limit = 0\n");
    pass(&mut s, 1_000, &mut rev);
    finish_runs(&mut s, "migrate", 2_000, &mut rev, &mut |_| 1);
    pass(&mut s, 3_000, &mut rev);
    assert!(
        replicas(&s).iter().all(|r| r.node.is_none() && r.reason.contains("it failed (BackoffLimitExceeded")),
        "{:?}",
        replicas(&s)
    );
    assert!(s.apps.contains_key("migrate"), "no ttl: kept");
}

#[test]
fn a_jobs_failed_run_on_a_lost_board_still_counts_as_a_failure() {
    let mut s = Snapshot { nodes: ready_nodes(2), ..Default::default() };
    add_job(&mut s, "flaky", "completions = 2\nbackoff_limit = 3\n");
    let mut rev = 10;
    pass(&mut s, 1_000, &mut rev);
    finish_runs(&mut s, "flaky", 2_000, &mut rev, &mut |_| 1);
    let failed = s.apps["flaky"].replicas[0].value.clone();
    // Its board goes: the failed run stays Failed (history), and still counts.
    let node = failed.node.clone().unwrap();
    s.nodes.iter_mut().find(|n| n.node.meta.name == node).unwrap().ready = ConditionStatus::False;
    pass(&mut s, 3_000, &mut rev);
    let kept = s.apps["flaky"].replicas.iter().find(|v| v.value.meta.name == failed.meta.name).unwrap();
    assert_eq!(kept.value.phase, ReplicaPhase::Failed);
    assert_eq!(job_status(&s.apps["flaky"], 3_000).failed, 1);
}
