//! The read-only dashboard: one HTML page (no build step, no framework: `index.html`, embedded in
//! the binary) that reads `api/cluster` every 5 s — boards with their usage, temperature and
//! charts of the last minutes, apps with their replicas by phase, recent events. Served by the
//! metrics listener.

use crate::api::Api;
use bramble_proto::model::{App, ConditionStatus, Node, Replica};
use serde_json::json;
use std::collections::BTreeMap;

pub const INDEX_HTML: &str = include_str!("index.html");

/// How many recent events the page shows.
const EVENTS: usize = 30;

/// Everything the page shows, as JSON.
pub fn cluster(api: &Api, cluster_name: &str) -> Result<serde_json::Value, String> {
    let err = |e: crate::error::Error| e.to_string();
    let nodes: Vec<Node> = api.objects.list::<Node>().map_err(err)?.into_iter().map(|v| v.value).collect();
    let apps: Vec<App> = api.objects.list::<App>().map_err(err)?.into_iter().map(|v| v.value).collect();
    let replicas: Vec<Replica> = api.objects.list::<Replica>().map_err(err)?.into_iter().map(|v| v.value).collect();
    let now = bramble_proto::time::now_ms();
    let usage: BTreeMap<String, bramble_proto::usage::NodeUsage> =
        api.usage.nodes().into_iter().map(|u| (u.node.clone(), u)).collect();
    let rusage = api.usage.replicas();
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            let ready = api.registry.view(&n.meta.name, now).ready.status == ConditionStatus::True;
            json!({ "name": n.meta.name, "ready": ready, "arch": n.info.arch, "usage": usage.get(&n.meta.name) })
        })
        .collect();
    let apps: Vec<serde_json::Value> = apps
        .iter()
        .map(|a| {
            let name = a.meta.name.as_str();
            let mut phases: BTreeMap<String, u32> = BTreeMap::new();
            for r in replicas.iter().filter(|r| r.app == name) {
                *phases.entry(format!("{:?}", r.phase)).or_default() += 1;
            }
            let mine: Vec<&bramble_proto::usage::ReplicaUsage> = rusage.iter().filter(|u| u.app == name).collect();
            // The app's CPU over time: its replicas' histories added, aligned at the newest point.
            let len = mine.iter().map(|u| u.cpu_history.len()).max().unwrap_or(0);
            let mut history = vec![0u64; len];
            for u in &mine {
                let offset = len - u.cpu_history.len();
                for (i, v) in u.cpu_history.iter().enumerate() {
                    history[offset + i] += v;
                }
            }
            json!({
                "name": name,
                "image": a.spec.image.as_str(),
                "desired": a.spec.replicas.0,
                "phases": phases,
                "cpu_millis": mine.iter().map(|u| u.cpu_millis).sum::<u64>(),
                "memory": mine.iter().map(|u| u.memory_working_set).sum::<u64>(),
                "cpu_history": history,
            })
        })
        .collect();
    let mut events = api.events.since(0);
    events.reverse();
    events.truncate(EVENTS);
    Ok(json!({ "cluster": cluster_name, "nodes": nodes, "apps": apps, "events": events }))
}
