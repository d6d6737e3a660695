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

/// A stored object: metadata plus the spec a user applies.
trait Object: Serialize + DeserializeOwned {
    type Spec: PartialEq + Clone;
    const KIND: &'static str;
    fn key(name: &str) -> String;
    fn meta(&self) -> &ObjectMeta;
    fn spec(&self) -> &Self::Spec;
    fn build(meta: ObjectMeta, spec: Self::Spec) -> Self;
}

impl Object for App {
    type Spec = AppSpec;
    const KIND: &'static str = "app";
    fn key(name: &str) -> String {
        app_key(name)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn spec(&self) -> &AppSpec {
        &self.spec
    }
    fn build(meta: ObjectMeta, spec: AppSpec) -> Self {
        App { meta, spec }
    }
}

impl Object for Service {
    type Spec = ServiceSpec;
    const KIND: &'static str = "service";
    fn key(name: &str) -> String {
        service_key(name)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn spec(&self) -> &ServiceSpec {
        &self.spec
    }
    fn build(meta: ObjectMeta, spec: ServiceSpec) -> Self {
        Service { meta, spec, vip: None, endpoints: Vec::new() }
    }
}

/// The op that brings object `name` to `desired`, if anything changes, and what that means.
fn plan<T: Object>(api: &Api, name: &str, desired: &T::Spec) -> Result<(Option<TxnOp>, Applied), ApiError> {
    let key = T::key(name);
    let applied = |outcome| Applied { kind: T::KIND.into(), name: name.to_string(), outcome };
    let (meta, expect, outcome) = match api.store.get(&key).map_err(store_error)? {
        None => (
            ObjectMeta { name: name.to_string(), generation: 1, revision: 0, created_ms: now_ms() },
            Expect::Absent,
            Outcome::Created,
        ),
        Some(kv) => {
            let current: T = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&key, e))?;
            if current.spec() == desired {
                return Ok((None, applied(Outcome::Unchanged)));
            }
            let mut meta = current.meta().clone();
            meta.generation += 1;
            (meta, Expect::Revision(kv.mod_revision), Outcome::Configured)
        }
    };
    let value = serde_json::to_vec(&T::build(meta, desired.clone())).expect("object serialises");
    Ok((Some(TxnOp::Put { key, value, expect }), applied(outcome)))
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
    let planned = apps
        .iter()
        .map(|a| plan::<App>(api, a.name.as_str(), a))
        .chain(services.iter().map(|s| plan::<Service>(api, s.name.as_str(), s)));
    for p in planned {
        let (op, applied) = p?;
        ops.extend(op);
        results.push(applied);
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
