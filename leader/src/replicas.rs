//! Replicas through the API: list, describe, scale; and what agents report about them.

use crate::api::{now_ms, Api};
use crate::apps::app_key;
use crate::controllers::run::{list_replicas, replica_key};
use crate::store::{Expect, StoreError};
use crate::tokens::store_error;
use bramble_proto::model::{App, Event, Replica};
use bramble_proto::wire::{ApiError, ErrorCode, ReplicaStatus, Response};
use tracing::debug;

fn not_found(what: String) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
}

fn load_app(api: &Api, name: &str) -> Result<(App, u64), ApiError> {
    let kv = api.store.get(&app_key(name)).map_err(store_error)?.ok_or_else(|| not_found(format!("app {name:?}")))?;
    let mut app: App = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("stored app {name} is corrupt: {e}")))?;
    app.meta.revision = kv.mod_revision;
    Ok((app, kv.mod_revision))
}

/// Replicas of `app` (all if `None`), by name.
pub fn list(api: &Api, app: Option<&str>) -> Result<Vec<Replica>, ApiError> {
    if let Some(a) = app {
        load_app(api, a)?;
    }
    Ok(list_replicas(api)?.into_iter().map(|s| s.replica).filter(|r| app.is_none_or(|a| r.app == a)).collect())
}

pub fn describe_app(api: &Api, name: &str) -> Result<Response, ApiError> {
    let (app, _) = load_app(api, name)?;
    let replicas = list(api, Some(name))?;
    let object = format!("app/{name}");
    let prefix = format!("replica/{name}-");
    let events = api.registry.events_where(|e| e.object == object || e.object.starts_with(&prefix));
    Ok(Response::App { app: Box::new(app), replicas, events })
}

pub fn describe_replica(api: &Api, name: &str) -> Result<Response, ApiError> {
    let kv = api
        .store
        .get(&replica_key(name))
        .map_err(store_error)?
        .ok_or_else(|| not_found(format!("replica {name:?}")))?;
    let mut replica: Replica = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("stored replica {name} is corrupt: {e}")))?;
    replica.meta.revision = kv.mod_revision;
    let detail = api.details.lock().expect("details lock").get(name).cloned();
    let events = api.registry.events_for(&format!("replica/{name}"));
    Ok(Response::Replica { replica: Box::new(replica), detail, events })
}

/// Sets an app's replica count (refused if `expect_generation` is given and the app moved on).
pub fn scale(api: &Api, name: &str, replicas: u32, expect_generation: Option<u64>) -> Result<String, ApiError> {
    if replicas > bramble_proto::manifest::MAX_REPLICAS {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("expected a replica count from 0 to {}, found {replicas}", bramble_proto::manifest::MAX_REPLICAS),
        ));
    }
    let (mut app, rev) = load_app(api, name)?;
    if let Some(g) = expect_generation {
        if app.meta.generation != g {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "app {name} changed since generation {g} (it is at generation {}); look again and retry",
                    app.meta.generation
                ),
            ));
        }
    }
    let from = app.spec.replicas.0;
    if from == replicas {
        return Ok(format!("app/{name} unchanged ({replicas} replicas)"));
    }
    app.spec.replicas = bramble_proto::manifest::Replicas(replicas);
    app.meta.generation += 1;
    let value = serde_json::to_vec(&app).expect("app serialises");
    api.store.put(&app_key(name), &value, Expect::Revision(rev)).map_err(|e| match e {
        StoreError::Conflict { .. } => {
            ApiError::new(ErrorCode::Conflict, format!("app {name} was changed by someone else meanwhile; try again"))
        }
        e => store_error(e),
    })?;
    api.registry.record(Event {
        time_ms: now_ms(),
        object: format!("app/{name}"),
        reason: "Scaled".into(),
        message: format!("scaled from {from} to {replicas} replicas by an admin"),
    });
    api.kick.notify_one();
    Ok(format!("app/{name} scaled from {from} to {replicas}"))
}

/// Records what node `node` reports about its replicas. Reports about replicas that are not
/// bound to that node (moved away, deleted) are ignored: the node's desired set stops them.
/// Only changes are written.
pub fn record_status(api: &Api, node: &str, statuses: Vec<ReplicaStatus>) {
    for s in statuses {
        if let Some(miss) = &s.platform_miss {
            let offered: Vec<bramble_images::Platform> = miss.offered.iter().filter_map(|p| p.parse().ok()).collect();
            if !offered.is_empty() {
                api.image_platforms.lock().expect("platforms lock").insert(miss.image.clone(), offered);
                api.kick.notify_one();
            }
        }
        {
            let mut details = api.details.lock().expect("details lock");
            match &s.detail {
                Some(d) => details.insert(s.replica.clone(), d.clone()),
                None => details.remove(&s.replica),
            };
        }
        for _ in 0..5 {
            let key = replica_key(&s.replica);
            let Ok(Some(kv)) = api.store.get(&key) else { break };
            let Ok(mut r) = serde_json::from_slice::<Replica>(&kv.value) else { break };
            if r.node.as_deref() != Some(node) {
                debug!(replica = %s.replica, node, "status from a node the replica is not bound to; ignored");
                break;
            }
            let before = r.clone();
            r.phase = s.phase;
            r.reason = s.reason.clone();
            r.restarts = s.restarts;
            r.exit_code = s.exit_code;
            r.started_ms = s.started_ms;
            r.finished_ms = s.finished_ms;
            r.container_id = s.container_id.clone();
            if r == before {
                break;
            }
            let value = serde_json::to_vec(&r).expect("replica serialises");
            match api.store.put(&key, &value, Expect::Revision(kv.mod_revision)) {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!("cannot record the status of {}: {e}", s.replica);
                    break;
                }
            }
        }
    }
}
