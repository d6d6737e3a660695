//! Apps and services: apply (create, configure or leave unchanged — all or nothing), list, delete.

use crate::api::{now_ms, Api};
use crate::store::{Expect, StoreError, TxnOp};
use crate::tokens::store_error;
use bramble_proto::manifest::{AppSpec, ServiceSpec};
use bramble_proto::model::{App, ObjectMeta, Service};
use bramble_proto::wire::{ApiError, Applied, ErrorCode, Outcome};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;

pub fn app_key(name: &str) -> String {
    format!("/apps/{name}")
}

pub fn service_key(name: &str) -> String {
    format!("/services/{name}")
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}

fn corrupt(key: &str, e: serde_json::Error) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("stored object {key} is corrupt: {e}"))
}

/// The op that brings `key` to `desired`, if anything changes, and what it means.
fn plan<T: Serialize + DeserializeOwned + Clone>(
    api: &Api,
    key: &str,
    name: &str,
    spec_of: impl Fn(&T) -> serde_json::Value,
    build: impl Fn(ObjectMeta) -> T,
    desired: serde_json::Value,
) -> Result<(Option<TxnOp>, Outcome), ApiError> {
    match api.store.get(key).map_err(store_error)? {
        None => {
            let obj = build(ObjectMeta { name: name.to_string(), generation: 1, revision: 0, created_ms: now_ms() });
            let value = serde_json::to_vec(&obj).expect("object serialises");
            Ok((Some(TxnOp::Put { key: key.to_string(), value, expect: Expect::Absent }), Outcome::Created))
        }
        Some(kv) => {
            let current: T = serde_json::from_slice(&kv.value).map_err(|e| corrupt(key, e))?;
            if spec_of(&current) == desired {
                return Ok((None, Outcome::Unchanged));
            }
            let mut meta: ObjectMeta =
                serde_json::from_value(serde_json::to_value(&current).expect("json")["meta"].clone())
                    .map_err(|e| corrupt(key, e))?;
            meta.generation += 1;
            let obj = build(meta);
            let value = serde_json::to_vec(&obj).expect("object serialises");
            Ok((
                Some(TxnOp::Put { key: key.to_string(), value, expect: Expect::Revision(kv.mod_revision) }),
                Outcome::Configured,
            ))
        }
    }
}

/// Applies every object or none.
pub fn apply(api: &Api, apps: Vec<AppSpec>, services: Vec<ServiceSpec>) -> Result<Vec<Applied>, ApiError> {
    // Everything is checked before anything is written.
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for a in &apps {
        if !seen.insert(("app", a.name.as_str())) {
            problems.push(format!("app/{}: listed twice", a.name));
        }
        problems.extend(a.check().into_iter().map(|p| format!("app/{}: {}: {}", a.name, p.field(), p.message)));
    }
    for s in &services {
        if !seen.insert(("service", s.name.as_str())) {
            problems.push(format!("service/{}: listed twice", s.name));
        }
        problems.extend(s.check().into_iter().map(|p| format!("service/{}: {}: {}", s.name, p.field(), p.message)));
    }
    if !problems.is_empty() {
        return Err(invalid(format!("nothing applied: {}", problems.join("; "))));
    }
    let mut ops = Vec::new();
    let mut results = Vec::new();
    for spec in apps {
        let name = spec.name.to_string();
        let desired = serde_json::to_value(&spec).expect("json");
        let (op, outcome) = plan::<App>(
            api,
            &app_key(&name),
            &name,
            |a| serde_json::to_value(&a.spec).expect("json"),
            |meta| App { meta, spec: spec.clone() },
            desired,
        )?;
        ops.extend(op);
        results.push(Applied { kind: "app".into(), name, outcome });
    }
    for spec in services {
        let name = spec.name.to_string();
        let desired = serde_json::to_value(&spec).expect("json");
        let (op, outcome) = plan::<Service>(
            api,
            &service_key(&name),
            &name,
            |s| serde_json::to_value(&s.spec).expect("json"),
            |meta| Service { meta, spec: spec.clone(), vip: None, endpoints: Vec::new() },
            desired,
        )?;
        ops.extend(op);
        results.push(Applied { kind: "service".into(), name, outcome });
    }
    if !ops.is_empty() {
        api.store.txn(&ops).map_err(|e| match e {
            StoreError::Conflict { key, .. } => ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "nothing applied: {} was changed by someone else meanwhile; apply again",
                    key.trim_start_matches('/')
                ),
            ),
            e => store_error(e),
        })?;
    }
    for r in &results {
        if r.outcome != Outcome::Unchanged {
            api.registry.record(bramble_proto::model::Event {
                time_ms: now_ms(),
                object: format!("{}/{}", r.kind, r.name),
                reason: if r.outcome == Outcome::Created { "Created".into() } else { "Configured".into() },
                message: format!("{r} by an admin"),
            });
        }
    }
    Ok(results)
}

fn list<T: DeserializeOwned>(api: &Api, prefix: &str, set_revision: impl Fn(&mut T, u64)) -> Result<Vec<T>, ApiError> {
    let kvs = api.store.list(prefix).map_err(store_error)?;
    kvs.iter()
        .map(|kv| {
            let mut v: T = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
            set_revision(&mut v, kv.mod_revision);
            Ok(v)
        })
        .collect()
}

pub fn apps(api: &Api) -> Result<Vec<App>, ApiError> {
    list(api, "/apps/", |a: &mut App, r| a.meta.revision = r)
}

pub fn services(api: &Api) -> Result<Vec<Service>, ApiError> {
    list(api, "/services/", |s: &mut Service, r| s.meta.revision = r)
}

/// Deletes every named object, or none if one is missing.
pub fn delete(api: &Api, apps: Vec<String>, services: Vec<String>) -> Result<String, ApiError> {
    let mut ops = Vec::new();
    let mut missing = Vec::new();
    let mut done = Vec::new();
    for (kind, names, key) in [("app", &apps, app_key as fn(&str) -> String), ("service", &services, service_key)] {
        for n in names {
            match api.store.get(&key(n)).map_err(store_error)? {
                Some(kv) => {
                    ops.push(TxnOp::Delete { key: key(n), expect: Expect::Revision(kv.mod_revision) });
                    done.push(format!("{kind}/{n} deleted"));
                }
                None => missing.push(format!("{kind}/{n}")),
            }
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::new(ErrorCode::NotFound, format!("nothing deleted: {} not found", missing.join(", "))));
    }
    if !ops.is_empty() {
        api.store.txn(&ops).map_err(|e| match e {
            StoreError::Conflict { key, .. } => ApiError::new(
                ErrorCode::Conflict,
                format!("nothing deleted: {} changed meanwhile; try again", key.trim_start_matches('/')),
            ),
            e => store_error(e),
        })?;
    }
    Ok(done.join("\n"))
}
