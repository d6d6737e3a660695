//! The read-only dashboard: one HTML page (no build step, no framework: `index.html`, embedded in
//! the binary) that reads `api/cluster` every 5 s — boards with their usage, temperature and
//! charts of the last minutes, apps with their replicas by phase, recent events. Served by the
//! metrics listener.

use crate::boards::nodes::NodeRegistry;
use crate::boards::usage::Usage;
use crate::events::Events;
use crate::objects::Objects;
use bramble_proto::model::{App, ConditionStatus, Node, Replica};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const INDEX_HTML: &str = include_str!("index.html");

/// How many recent events the page shows.
const EVENTS: usize = 30;

/// What the page reads: the store, readiness, usage and events.
#[derive(Debug, Clone)]
pub struct Handles {
    pub objects: Objects,
    pub registry: Arc<NodeRegistry>,
    pub usage: Arc<Usage>,
    pub events: Arc<Events>,
}

/// Everything the page shows, as JSON. Without `details` (no token, or a wrong one) events show
/// no message — messages name users, secrets and keys and quote probe output — and events
/// about secrets, configs and users are left out.
pub fn cluster(api: &Handles, cluster_name: &str, details: bool) -> Result<serde_json::Value, String> {
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
    let events: Vec<serde_json::Value> = if details {
        events.into_iter().take(EVENTS).map(|e| json!(e)).collect()
    } else {
        use bramble_proto::object::Kind;
        events
            .into_iter()
            .filter(|e| !matches!(e.object.kind, Kind::Secret | Kind::Config | Kind::User))
            .take(EVENTS)
            .map(|e| json!({ "time_ms": e.time_ms, "object": e.object, "reason": e.reason, "app": e.app }))
            .collect()
    };
    Ok(json!({ "cluster": cluster_name, "nodes": nodes, "apps": apps, "events": events, "details": details }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, Store};
    use bramble_proto::model::{Event, EventReason, ObjectRef};
    use bramble_proto::object::Kind;
    use std::sync::Arc;

    #[test]
    fn without_the_token_no_secret_names_users_or_probe_output() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let events = Arc::new(Events::new());
        let registry = Arc::new(NodeRegistry::new(std::time::Duration::from_secs(15), events.clone()));
        let api = Handles { objects: Objects::new(store), registry, usage: Arc::default(), events };
        let secret = ObjectRef::new(Kind::Secret, "db-password".to_string());
        api.events.record(Event::new(1, secret, EventReason::Configured, "secret/db-password keys pw by deployer:ci"));
        let probe = "liveness probe failed: HTTP 500: token=abc123";
        api.events.record(Event::replica(2, "web", "web-1", EventReason::Unhealthy, probe));
        let plain = cluster(&api, "c", false).unwrap().to_string();
        for hidden in ["db-password", "deployer:ci", "abc123", "liveness probe failed"] {
            assert!(!plain.contains(hidden), "{hidden} shown without the token: {plain}");
        }
        assert!(plain.contains("web-1") && plain.contains("\"details\":false"), "{plain}");
        let full = cluster(&api, "c", true).unwrap().to_string();
        assert!(full.contains("abc123") && full.contains("db-password"), "{full}");
    }

    #[test]
    fn the_token_is_a_bearer_header_compared_whole() {
        use crate::observability::metrics::bears;
        let head = "GET /api/cluster HTTP/1.1\r\nHost: x\r\nauthorization: Bearer s3cret\r\n\r\n";
        assert!(bears(head, Some("s3cret")));
        assert!(!bears(head, Some("s3cre")), "a prefix is not the token");
        assert!(!bears(head, Some("other")));
        assert!(!bears(head, None), "no token configured: never");
        assert!(!bears("GET / HTTP/1.1\r\n\r\n", Some("s3cret")));
    }
}
