//! Reads what one pass of the replica controller looks at: nodes with their readiness (from the
//! registry) and images (from what boards told), apps with their replicas and templates, and
//! what is left of apps that are gone.

use super::plan::{AppState, NodeState, Snapshot};
use super::Context;
use crate::error::Result;
use bramble_proto::model::{App, ConditionStatus, Node, Replica, Service};
use std::collections::BTreeMap;

pub fn read(ctx: &Context, now_ms: u64) -> Result<Snapshot> {
    let revision = ctx.objects.store().revision();
    let homes = ctx.objects.volume_homes()?;
    let nodes: Vec<NodeState> = ctx
        .objects
        .list::<Node>()?
        .into_iter()
        .map(|v| {
            // A board's word that it holds a volume counts only where a replica mounting it
            // ran (a board could otherwise claim any volume and draw its app and secrets).
            let believed = homes.get(&v.value.meta.name);
            let name = v.value.meta.name.clone();
            // A board without a pod subnet cannot start pods: nothing is placed there (but what it
            // runs is not lost for that).
            let mut ready = ctx.registry.view(&name, now_ms).ready.status;
            if v.value.pod_cidr.is_none() && ready == ConditionStatus::True {
                ready = ConditionStatus::Unknown;
            }
            NodeState {
                ready,
                images: ctx.observed.node_images(&name),
                volumes: ctx
                    .observed
                    .node_volumes(&name)
                    .into_iter()
                    .filter(|vol| believed.is_some_and(|b| b.contains(vol)))
                    .collect(),
                node: v.value,
            }
        })
        .collect();
    let mut revisions = ctx.objects.revisions()?;
    let mut history = ctx.objects.all_history()?;
    let mut apps: BTreeMap<String, AppState> = ctx
        .objects
        .list::<App>()?
        .into_iter()
        .map(|v| {
            let name = v.value.spec.name.as_str().to_string();
            let state = AppState {
                app: v.value,
                replicas: Vec::new(),
                revisions: revisions.remove(&name).unwrap_or_default(),
                history: history.remove(&name).unwrap_or_default(),
            };
            (name, state)
        })
        .collect();
    let mut orphans = Vec::new();
    for v in ctx.objects.list::<Replica>()? {
        match apps.get_mut(&v.value.app) {
            Some(a) => a.replicas.push(v),
            None => orphans.push(v),
        }
    }
    let orphan_revisions = revisions
        .into_iter()
        .flat_map(|(app, hashes)| hashes.into_iter().map(move |(hash, v)| (app.clone(), hash, v.rev)))
        .collect();
    let orphan_history = history
        .into_iter()
        .flat_map(|(app, records)| records.into_iter().map(move |v| (app.clone(), v.value.number, v.rev)))
        .collect();
    let services: Vec<Service> = ctx.objects.list::<Service>()?.into_iter().map(|v| v.value).collect();
    let connected = nodes.iter().filter(|n| n.ready == ConditionStatus::True).map(|n| n.node.meta.name.as_str());
    let drained = ctx.drain.drained(connected);
    Ok(Snapshot {
        nodes,
        apps,
        orphans,
        orphan_revisions,
        orphan_history,
        platforms: ctx.objects.image_platforms()?,
        revision,
        services,
        drained,
        lost_run_wait_ms: bramble_proto::job::lost_run_wait_ms(
            ctx.registry.heartbeat_period().as_millis() as u64,
            bramble_transport::quic::IDLE_TIMEOUT.as_millis() as u64,
            0,
        ),
    })
}
