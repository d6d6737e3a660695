//! `bramble top`: what boards and replicas use, beside what they ask for and offer.

use crate::controllers::plan::holds_node;
use crate::error::Result;
use bramble_proto::model::{App, Node, Replica};
use bramble_proto::wire::Response;
use std::collections::{BTreeMap, BTreeSet};

/// What `bramble top` reads.
pub struct Top<'a> {
    pub objects: &'a crate::objects::Objects,
    pub usage: &'a crate::boards::usage::Usage,
}

impl Top<'_> {
    pub(super) fn top(&self, app: Option<&str>) -> Result<Response> {
        let nodes: Vec<Node> = self.objects.list::<Node>()?.into_iter().map(|v| v.value).collect();
        let replicas: Vec<Replica> = self.objects.list::<Replica>()?.into_iter().map(|v| v.value).collect();
        let apps: BTreeMap<String, App> =
            self.objects.list::<App>()?.into_iter().map(|v| (v.value.meta.name.clone(), v.value)).collect();
        if let Some(a) = app {
            self.objects.load::<App>(a)?;
        }
        // Deleted replicas and nodes are forgotten here.
        let live: BTreeSet<&str> = replicas.iter().map(|r| r.meta.name.as_str()).collect();
        let known: BTreeSet<&str> = nodes.iter().map(|n| n.meta.name.as_str()).collect();
        self.usage.retain(|r| live.contains(r), |n| known.contains(n));
        let mut requested: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in replicas.iter().filter(|r| holds_node(r)) {
            let (Some(node), Some(a)) = (r.node.as_deref(), apps.get(&r.app)) else { continue };
            let e = requested.entry(node).or_default();
            let (cpu, mem) = a.spec.requests();
            e.0 += cpu;
            e.1 += mem;
        }
        let mut node_usage = self.usage.nodes();
        for u in &mut node_usage {
            if let Some(n) = nodes.iter().find(|n| n.meta.name == u.node) {
                u.allocatable_cpu_millis = n.info.allocatable.cpu_millis;
                u.allocatable_memory = n.info.allocatable.memory_bytes;
            }
            (u.requested_cpu_millis, u.requested_memory) = requested.get(u.node.as_str()).copied().unwrap_or_default();
        }
        let mut replica_usage = self.usage.replicas();
        replica_usage.retain(|r| app.is_none_or(|a| r.app == a));
        for u in &mut replica_usage {
            if let Some(a) = apps.get(&u.app) {
                // Usage is every container's of the replica: so is what it asks for.
                let (cpu, memory) = a.spec.requests();
                u.cpu_request_millis = (cpu > 0).then_some(cpu);
                u.memory_request = (memory > 0).then_some(memory);
            }
        }
        Ok(Response::Top { nodes: node_usage, replicas: replica_usage })
    }
}
