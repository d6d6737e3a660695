//! The replica controller over a real store (redb in a temporary directory; the same tests again
//! on a real etcd in `the_same_passes_hold_on_etcd`): what one pass after another writes, and the
//! desired sets it leaves.

use super::*;
use crate::boards::nodes::{NodeRegistry, Session};
use crate::boards::observed::Observed;
use crate::events::Events;
use crate::objects::{Objects, Versioned};
use crate::store::{Expect, RedbStore, Store};
use bramble_proto::manifest::parse_manifest;
use bramble_proto::model::{Arch, EventReason, Node, NodeInfo, Replica, ReplicaPhase, Resources};
use bramble_proto::wire::Assignment;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

fn node(name: &str) -> Node {
    let res = Resources { cpu_millis: 4000, memory_bytes: 4 << 30, replicas: 64 };
    Node::joined(name, "x".into(), NodeInfo::board(Arch::Arm64, res), 1)
}

fn new_registry() -> Arc<NodeRegistry> {
    Arc::new(NodeRegistry::new(Duration::from_secs(15), Arc::new(Events::new())))
}

thread_local! {
    /// Set: the tests of this thread keep their cluster in this etcd, not in redb.
    static ETCD: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

fn cluster(dir: &std::path::Path, registry: Arc<NodeRegistry>) -> Context {
    let store: Arc<dyn Store> = match ETCD.with(|e| e.borrow().clone()) {
        // One prefix per directory: a "restarted leader" (the same dir) finds its cluster again.
        Some(endpoints) => Arc::new(
            crate::store::EtcdStore::open(&crate::store::EtcdOptions {
                endpoints,
                prefix: format!("/t{}", dir.display()),
                ca_file: None,
                cert_file: None,
                key_file: None,
            })
            .unwrap(),
        ),
        None => Arc::new(RedbStore::open(&dir.join("s.redb")).unwrap()),
    };
    let objects = Objects::new(store);
    for n in ["pi-1", "pi-2", "pi-3"] {
        let _ = objects.put(&node(n), Expect::Absent);
    }
    let network = Arc::new(bramble_proto::network::ClusterNetwork::default());
    let (observed, events) = (Arc::new(Observed::new()), Arc::new(Events::new()));
    Context { objects, registry, observed, events, network, drain: Arc::default(), control_ports: Arc::default() }
}

/// A pass; its desired sets.
fn sets(ctx: &Context, now: u64) -> Result<DesiredSets> {
    pass(ctx, now).map(|o| o.desired)
}

fn list_replicas(ctx: &Context) -> Vec<Versioned<Replica>> {
    ctx.objects.list::<Replica>().unwrap()
}

fn connect(r: &NodeRegistry, names: &[&str], at: Instant) {
    for n in names {
        let s = Session { epoch: 1, address: "10.0.0.1:1".into(), connection: None };
        r.connect(n, s, at, 0).unwrap();
    }
}

fn counts(d: &DesiredSets) -> Vec<usize> {
    let mut v: Vec<(String, usize)> = d.iter().map(|(n, s)| (n.clone(), s.len())).collect();
    v.sort();
    v.into_iter().map(|(_, c)| c).collect()
}

fn apply(ctx: &Context, text: &str) {
    let apps = parse_manifest("t.toml", text).unwrap().apps;
    crate::api::apps::apply(
        &ctx.objects,
        &ctx.events,
        (&ctx.network, &crate::admission::Reserved::default()),
        crate::api::apps::Specs { apps, ..Default::default() },
        "an admin",
        now_ms(),
    )
    .unwrap();
}

const WEB: &str = "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 6\n";

#[test]
fn places_spread_writes_nothing_when_steady_and_replaces_lost_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let registry = new_registry();
    let api = cluster(dir.path(), registry.clone());
    let t0 = Instant::now();
    connect(&registry, &["pi-1", "pi-2", "pi-3"], t0);
    apply(&api, WEB);
    let d = sets(&api, 1_000).unwrap();
    assert_eq!(counts(&d), [2, 2, 2]);
    let rev = api.objects.store().revision();
    assert_eq!(sets(&api, 2_000).unwrap(), d, "the same desired sets");
    assert_eq!(api.objects.store().revision(), rev, "a steady cluster writes nothing");

    // pi-3 falls silent past the grace period (its session still up: the grace and a heartbeat
    // period): its replicas are Lost, then replaced.
    let later = t0 + Duration::from_secs(18);
    registry.heartbeat("pi-1", 1, later, 18_000);
    registry.heartbeat("pi-2", 1, later, 18_000);
    registry.check(["pi-1".into(), "pi-2".into(), "pi-3".into()], later, 18_000);
    sets(&api, 18_000).unwrap();
    let lost: Vec<Replica> =
        list_replicas(&api).into_iter().map(|s| s.value).filter(|r| r.phase == ReplicaPhase::Lost).collect();
    assert_eq!(lost.len(), 2);
    assert!(lost.iter().all(|r| r.node.as_deref() == Some("pi-3") && r.reason == "node pi-3 is not ready"));
    let d = sets(&api, 18_100).unwrap();
    assert_eq!(counts(&d), [3, 3, 0], "replaced on the nodes that answer");
    let names: BTreeSet<String> = d.values().flat_map(|s| s.keys().cloned()).collect();
    assert!(lost.iter().all(|r| !names.contains(&r.meta.name)), "replacements get new names (fencing)");

    // Scale down, then delete: replicas go with the app.
    apply(&api, &WEB.replace("replicas = 6", "replicas = 2"));
    assert_eq!(counts(&sets(&api, 19_000).unwrap()).iter().sum::<usize>(), 2);
    crate::api::apps::delete(&api.objects, crate::api::apps::Names { apps: vec!["web".into()], ..Default::default() })
        .unwrap();
    assert!(sets(&api, 20_000).unwrap().values().all(|s| s.is_empty()));
    assert!(list_replicas(&api).is_empty());
}

#[test]
fn a_restarted_leader_loses_nothing_before_the_grace_period_and_holds_off_if_asked() {
    let dir = tempfile::tempdir().unwrap();
    let registry = new_registry();
    let api = cluster(dir.path(), registry.clone());
    let t0 = Instant::now();
    connect(&registry, &["pi-1", "pi-2", "pi-3"], t0);
    apply(&api, &format!("{WEB}replace_after = \"1m\"\n"));
    let before = sets(&api, 1_000).unwrap();
    drop(api);
    // A new leader process: nodes Unknown until they reconnect or the grace period passes.
    let registry = new_registry();
    let api = cluster(dir.path(), registry.clone());
    assert_eq!(sets(&api, 2_000).unwrap(), before, "Unknown is not Lost");
    // pi-1 never comes back: Lost after the grace period, held for replace_after.
    connect(&registry, &["pi-2", "pi-3"], t0);
    registry.check(["pi-1".into()], t0, 20_000);
    let d = sets(&api, 20_000).unwrap();
    assert_eq!(counts(&d), [2, 2, 2], "pi-1 keeps its two (Lost) in case it comes back");
    let lost = list_replicas(&api).iter().filter(|s| s.value.phase == ReplicaPhase::Lost).count();
    assert_eq!(lost, 2);
    assert_eq!(counts(&sets(&api, 70_000).unwrap()), [2, 2, 2], "held off for a minute");
    assert_eq!(counts(&sets(&api, 81_000).unwrap()), [0, 3, 3], "then replaced");
}

fn mark_all_running(api: &Context) {
    for s in list_replicas(api) {
        let mut r = s.value;
        if r.phase == ReplicaPhase::Pending && r.node.is_some() {
            r.phase = ReplicaPhase::Running;
            r.ready = true;
            api.objects.put(&r, Expect::Revision(s.rev)).unwrap();
        }
    }
}

#[test]
fn a_new_revision_rolls_out_and_old_replicas_keep_their_template() {
    let dir = tempfile::tempdir().unwrap();
    let registry = new_registry();
    let api = cluster(dir.path(), registry.clone());
    connect(&registry, &["pi-1", "pi-2", "pi-3"], Instant::now());
    let v1 = WEB.replace("replicas = 6", "replicas = 3");
    apply(&api, &v1);
    sets(&api, 1_000).unwrap();
    mark_all_running(&api);
    apply(&api, &format!("{v1}args = [\"-v\"]\n"));
    let mut saw_both = false;
    for t in 2..20 {
        let d = sets(&api, t * 1000).unwrap();
        let all: Vec<&Assignment> = d.values().flat_map(|s| s.values()).collect();
        assert!(all.len() <= 4, "max_surge 1");
        let (new, old): (Vec<&&Assignment>, Vec<&&Assignment>) = all.iter().partition(|a| a.spec.args == ["-v"]);
        assert!(old.iter().all(|a| a.spec.args.is_empty()), "old replicas keep the old template");
        saw_both |= !new.is_empty() && !old.is_empty();
        mark_all_running(&api);
    }
    let d = sets(&api, 30_000).unwrap();
    assert!(saw_both, "a rolling update, not all at once");
    assert_eq!(d.values().map(|s| s.len()).sum::<usize>(), 3);
    assert!(d.values().flat_map(|s| s.values()).all(|a| a.spec.args == ["-v"]));
    let templates = api.objects.revisions().unwrap().remove("web").unwrap_or_default();
    assert_eq!(templates.len(), 1, "the old template goes with its last replica");
}

#[test]
fn an_image_that_lacks_a_boards_arch_is_moved_to_boards_it_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let registry = new_registry();
    let api = cluster(dir.path(), registry.clone());
    let mut pc = node("pc-1");
    pc.info.arch = Arch::Amd64;
    api.objects.put(&pc, Expect::Absent).unwrap();
    connect(&registry, &["pi-1", "pi-2", "pi-3", "pc-1"], Instant::now());
    apply(&api, &WEB.replace("replicas = 6", "replicas = 4"));
    let d = sets(&api, 1_000).unwrap();
    assert_eq!(counts(&d), [1, 1, 1, 1], "spread while nothing is known of the image");
    // Each arm64 board reports that the image offers only amd64 (each speaks for itself).
    for pi in ["pi-1", "pi-2", "pi-3"] {
        api.objects.learn_platforms("reg/web:1", pi, &["linux/amd64".parse().unwrap()], 1).unwrap();
    }
    sets(&api, 2_000).unwrap();
    let d = sets(&api, 2_100).unwrap();
    let on: BTreeMap<String, usize> = d.iter().map(|(n, s)| (n.clone(), s.len())).collect();
    assert_eq!(on["pc-1"], 4, "every replica where the image runs: {on:?}");
    let events = api.events.filter(|e| e.reason == EventReason::ImagePlatform);
    assert_eq!(events.len(), 3);
    assert!(events[0].message.contains("the image offers linux/amd64 and node pi-"), "{}", events[0].message);
}

#[test]
fn boards_that_hold_the_image_are_preferred() {
    let dir = tempfile::tempdir().unwrap();
    let registry = new_registry();
    let api = cluster(dir.path(), registry.clone());
    connect(&registry, &["pi-1", "pi-2", "pi-3"], Instant::now());
    api.observed.set_node_images("pi-2", vec!["reg/web:1".to_string()]);
    apply(&api, &WEB.replace("replicas = 6", "replicas = 1"));
    let d = sets(&api, 1_000).unwrap();
    assert_eq!(d["pi-2"].len(), 1, "no pull needed there: {d:?}");
}

#[test]
fn a_replica_that_fits_nowhere_stays_pending_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let registry = new_registry();
    let api = cluster(dir.path(), registry.clone());
    connect(&registry, &["pi-1", "pi-2", "pi-3"], Instant::now());
    apply(&api, "[[app]]\nname = \"big\"\nimage = \"reg/big:1\"\nresources = { memory = \"8Gi\" }\n");
    sets(&api, 1_000).unwrap();
    let r = list_replicas(&api).remove(0).value;
    assert_eq!((r.phase, r.node, r.reason.as_str()), (ReplicaPhase::Pending, None, "0/3 nodes: 3 insufficient memory"));
    let rev = api.objects.store().revision();
    sets(&api, 2_000).unwrap();
    assert_eq!(api.objects.store().revision(), rev, "the same reason is not written again");
}

/// Every test above again, with the cluster in a real etcd (one member of Debian's etcd) instead
/// of redb: the controller does not depend on the backend (a transaction's writes share one
/// revision there, and a write is read back from a copy kept by a watch).
#[test]
fn the_same_passes_hold_on_etcd() {
    let etcd = crate::store::local_etcd::LocalEtcd::start(1, "127.0.0.1", None, None);
    ETCD.with(|e| *e.borrow_mut() = Some(etcd.endpoints()));
    places_spread_writes_nothing_when_steady_and_replaces_lost_replicas();
    a_restarted_leader_loses_nothing_before_the_grace_period_and_holds_off_if_asked();
    a_new_revision_rolls_out_and_old_replicas_keep_their_template();
    an_image_that_lacks_a_boards_arch_is_moved_to_boards_it_runs_on();
    boards_that_hold_the_image_are_preferred();
    a_replica_that_fits_nowhere_stays_pending_with_a_reason();
    ETCD.with(|e| *e.borrow_mut() = None);
}

/// Polls `f` every 20 ms until it returns `Some`, for up to `limit`.
async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_cluster_skips_its_passes_until_a_board_changes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = new_registry();
    let ctx = Arc::new(cluster(dir.path(), registry.clone()));
    let t0 = Instant::now();
    connect(&registry, &["pi-1", "pi-2", "pi-3"], t0);
    apply(&ctx, WEB);
    let published = Arc::new(Published::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(ctx.clone(), published.clone(), cancel.clone()));
    // The boards run what they are given.
    eventually("six replicas placed", Duration::from_secs(10), || {
        (list_replicas(&ctx).iter().filter(|r| r.value.node.is_some()).count() == 6).then_some(())
    })
    .await;
    mark_all_running(&ctx);
    // Settled: ticks go by without a pass, and write nothing.
    let skipped = published.timings.skipped.get();
    eventually("ticks skipped", Duration::from_secs(10), || {
        (published.timings.skipped.get() >= skipped + 2).then_some(())
    })
    .await;
    let revision = ctx.objects.store().revision();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ctx.objects.store().revision(), revision, "a settled cluster writes nothing");
    // A board reports other images (the scheduler's scores read them): the next tick passes.
    // (A pass shows itself by forgetting the live detail of a replica that does not exist.)
    let mark = || ctx.observed.set_detail("no-such-replica", Some("forgotten by the next pass".into()));
    let passed = || ctx.observed.detail("no-such-replica").is_none().then_some(());
    mark();
    ctx.observed.set_node_images("pi-1", vec!["registry.lan/web:2".into()]);
    eventually("a pass after pi-1's images changed", Duration::from_millis(2500), passed).await;
    // The same report again changes nothing: ticks are skipped again, until the pass every
    // SETTLED_PASS that a settled cluster gets anyway.
    let since = Instant::now();
    mark();
    ctx.observed.set_node_images("pi-1", vec!["registry.lan/web:2".into()]);
    let skipped = published.timings.skipped.get();
    eventually("ticks skipped after the same report", Duration::from_secs(5), || {
        (published.timings.skipped.get() >= skipped + 2).then_some(())
    })
    .await;
    assert!(passed().is_none(), "no pass for an unchanged report");
    eventually("the settled cluster's periodic pass", SETTLED_PASS + Duration::from_secs(3), passed).await;
    assert!(
        since.elapsed() >= SETTLED_PASS - Duration::from_secs(2),
        "the periodic pass came early: {:?}",
        since.elapsed()
    );
    // pi-3 falls silent past its grace period: the next tick sees the readiness change and passes.
    registry.check(["pi-3".into()], t0 + Duration::from_secs(20), now_ms());
    // (Lost, then replaced at once: no `replace_after`.)
    eventually("pi-3's replicas replaced on the others", Duration::from_secs(5), || {
        let r = list_replicas(&ctx);
        (r.len() == 6 && r.iter().all(|v| v.value.node.as_deref() != Some("pi-3"))).then_some(())
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
}
