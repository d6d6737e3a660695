//! Scheduler throughput: replicas of 100 apps (with node selectors, tolerations and spread) placed
//! on simulated nodes (labels, taints), pure, and with every binding committed to the redb store
//! by compare-and-swap as the leader does. Published peers: kube-scheduler ~909 pods/s
//! (SchedulingBasic, 500 nodes), Nomad C1M ~3,750 placements/s (5 servers).

use bramble_leader::scheduler::{NodeSnapshot, Request, Scheduler};
use bramble_leader::store::{Expect, RedbStore, Store};
use bramble_proto::manifest::{parse_manifest, AppSpec};
use bramble_proto::model::{Arch, Resources, Taint, TaintEffect};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

fn nodes(n: usize) -> Vec<NodeSnapshot> {
    (0..n)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), format!("z{}", i % 5));
            labels.insert("disk".to_string(), if i % 3 == 0 { "ssd".into() } else { "sd".into() });
            let taints = if i % 10 == 0 {
                vec![Taint { key: "dedicated".into(), value: "db".into(), effect: TaintEffect::NoSchedule }]
            } else {
                Vec::new()
            };
            NodeSnapshot {
                name: format!("node-{i:04}"),
                arch: if i % 4 == 0 { Arch::ArmV7 } else { Arch::Arm64 },
                ready: true,
                unschedulable: false,
                network_unavailable: false,
                labels,
                taints,
                allocatable: Resources { cpu_millis: 4000, memory_bytes: 8 << 30, replicas: 110 },
                requested: Resources::default(),
                host_ports: BTreeSet::new(),
                images: BTreeSet::new(),
                volumes: BTreeSet::new(),
                apps: BTreeMap::new(),
                revisions: BTreeMap::new(),
                devices: Vec::new(),
            }
        })
        .collect()
}

fn apps() -> Vec<AppSpec> {
    (0..100)
        .map(|i| {
            let placement = match i % 4 {
                0 => "[app.placement]\nnode_selector = { disk = \"ssd\" }\n".to_string(),
                1 => "[app.placement]\ntolerations = [{ key = \"dedicated\", value = \"db\", effect = \"NoSchedule\" }]\n".to_string(),
                2 => format!("[app.placement]\nnode_selector = {{ zone = \"z{}\" }}\n", i % 5),
                _ => String::new(),
            };
            let text = format!("[[app]]\nname = \"app-{i}\"\nimage = \"reg.lan/app-{i}:1\"\nresources = {{ cpu = \"10m\", memory = \"16Mi\" }}\n{placement}");
            parse_manifest("bench.toml", &text).expect("manifest").apps.remove(0)
        })
        .collect()
}

pub fn run(node_count: usize, replicas: usize) -> serde_json::Value {
    let specs = apps();
    let names: Vec<String> = (0..specs.len()).map(|i| format!("app-{i}")).collect();
    // Pure.
    let mut s = Scheduler::new(nodes(node_count));
    let t = Instant::now();
    let mut placed = 0;
    for r in 0..replicas {
        let a = r % specs.len();
        let req = Request { app: &names[a], spec: &specs[a], misses: None, revision: &names[a], homes: None };
        if let Ok(i) = s.place(&req) {
            s.bind(i, &req);
            placed += 1;
        }
    }
    let pure = t.elapsed();
    let pure_rate = placed as f64 / pure.as_secs_f64();
    // Committed: each binding written to the store with compare-and-swap.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("store.redb")).expect("store");
    let committed_count = replicas.min(2_000);
    let mut s = Scheduler::new(nodes(node_count));
    let t = Instant::now();
    for r in 0..committed_count {
        let a = r % specs.len();
        let req = Request { app: &names[a], spec: &specs[a], misses: None, revision: &names[a], homes: None };
        if let Ok(i) = s.place(&req) {
            let key = format!("/replicas/{}-{r}", names[a]);
            let value =
                serde_json::to_vec(&serde_json::json!({ "app": names[a], "node": s.nodes[i].name })).expect("json");
            store.put(&key, &value, Expect::Absent).expect("bind");
            s.bind(i, &req);
        }
    }
    let committed = t.elapsed();
    let committed_rate = committed_count as f64 / committed.as_secs_f64();
    println!("scheduler, {node_count} nodes (labels, taints, two archs), 100 apps (selectors, tolerations, spread):");
    println!("  pure:      {placed} placements in {:.0} ms = {pure_rate:.0} placements/s", pure.as_secs_f64() * 1e3);
    println!("  committed: {committed_count} placements, one durable redb commit each, in {:.0} ms = {committed_rate:.0} placements/s", committed.as_secs_f64() * 1e3);
    println!("  published: kube-scheduler ~909 pods/s (500 nodes); Nomad C1M ~3,750/s (5 servers)");
    serde_json::json!({
        "nodes": node_count,
        "pure": { "placements": placed, "ms": pure.as_secs_f64() * 1e3, "per_second": pure_rate },
        "committed": { "placements": committed_count, "ms": committed.as_secs_f64() * 1e3, "per_second": committed_rate },
    })
}
