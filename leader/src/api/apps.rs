//! Apps and services: apply (create, configure or leave unchanged — all or nothing), list,
//! delete.

use crate::error::{Error, Result};
use crate::events::Events;
use crate::objects::{key, Object, Objects};
use crate::store::{Expect, StoreError, TxnOp};
use bramble_proto::manifest::{AppSpec, ServiceSpec};
use bramble_proto::model::{App, Event, EventReason, Kind, ObjectMeta, ObjectRef, Service};
use bramble_proto::time::now_ms;
use bramble_proto::wire::{Applied, Outcome};
use std::collections::BTreeSet;

/// A stored object whose desired part a user applies.
trait Applicable: Object {
    type Spec: PartialEq + Clone;
    const REF: Kind;
    fn spec(&self) -> &Self::Spec;
    fn build(meta: ObjectMeta, spec: Self::Spec) -> Self;
}

impl Applicable for App {
    type Spec = AppSpec;
    const REF: Kind = Kind::App;
    fn spec(&self) -> &AppSpec {
        &self.spec
    }
    fn build(meta: ObjectMeta, spec: AppSpec) -> Self {
        App { meta, spec }
    }
}

impl Applicable for Service {
    type Spec = ServiceSpec;
    const REF: Kind = Kind::Service;
    fn spec(&self) -> &ServiceSpec {
        &self.spec
    }
    fn build(meta: ObjectMeta, spec: ServiceSpec) -> Self {
        Service { meta, spec, vip: None, endpoints: Vec::new() }
    }
}

/// The op that brings object `name` to `desired`, if anything changes, and what that means.
fn plan<T: Applicable>(objects: &Objects, name: &str, desired: &T::Spec) -> Result<(Option<TxnOp>, Applied)> {
    let applied = |outcome| Applied { kind: T::KIND.into(), name: name.to_string(), outcome };
    let (meta, expect, outcome) = match objects.get::<T>(name)? {
        None => (
            ObjectMeta { name: name.to_string(), generation: 1, revision: 0, created_ms: now_ms() },
            Expect::Absent,
            Outcome::Created,
        ),
        Some(current) => {
            if current.value.spec() == desired {
                return Ok((None, applied(Outcome::Unchanged)));
            }
            let mut meta = current.value.meta().clone();
            meta.generation += 1;
            (meta, Expect::Revision(current.rev), Outcome::Configured)
        }
    };
    Ok((Some(Objects::put_op(&T::build(meta, desired.clone()), expect)), applied(outcome)))
}

/// Problems that span objects, found before anything is written.
fn check(apps: &[AppSpec], services: &[ServiceSpec]) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for a in apps {
        if !seen.insert(("app", a.name.as_str())) {
            problems.push(format!("app/{}: listed twice", a.name));
        }
        problems.extend(a.check().into_iter().map(|p| format!("app/{}: {}: {}", a.name, p.field(), p.message)));
    }
    for s in services {
        if !seen.insert(("service", s.name.as_str())) {
            problems.push(format!("service/{}: listed twice", s.name));
        }
        problems.extend(s.check().into_iter().map(|p| format!("service/{}: {}: {}", s.name, p.field(), p.message)));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!("nothing applied: {}", problems.join("; "))))
    }
}

/// Applies every object or none; `who` made the change (for the events).
pub fn apply(
    objects: &Objects,
    events: &Events,
    apps: Vec<AppSpec>,
    services: Vec<ServiceSpec>,
    who: &str,
) -> Result<Vec<Applied>> {
    check(&apps, &services)?;
    let mut ops = Vec::new();
    let mut results = Vec::new();
    let planned = apps
        .iter()
        .map(|a| (App::REF, plan::<App>(objects, a.name.as_str(), a)))
        .chain(services.iter().map(|s| (Service::REF, plan::<Service>(objects, s.name.as_str(), s))));
    for (kind, p) in planned {
        let (op, applied) = p?;
        ops.extend(op);
        results.push((kind, applied));
    }
    if !ops.is_empty() {
        objects.txn(&ops).map_err(|e| match e {
            StoreError::Conflict { key, .. } => Error::Conflict(format!(
                "nothing applied: {} was changed by someone else meanwhile; apply again",
                key.trim_start_matches('/')
            )),
            e => e.into(),
        })?;
    }
    for (kind, r) in &results {
        let reason = match r.outcome {
            Outcome::Unchanged => continue,
            Outcome::Created => EventReason::Created,
            Outcome::Configured => EventReason::Configured,
        };
        events.record(Event::new(now_ms(), ObjectRef::new(*kind, r.name.clone()), reason, format!("{r} by {who}")));
    }
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// Every object of kind `T`.
pub fn list<T: Object>(objects: &Objects) -> Result<Vec<T>> {
    Ok(objects.list::<T>()?.into_iter().map(|v| v.value).collect())
}

/// Deletes every named object, or none if one is missing.
pub fn delete(objects: &Objects, apps: Vec<String>, services: Vec<String>) -> Result<String> {
    let mut ops = Vec::new();
    let mut missing = Vec::new();
    let mut done = Vec::new();
    let names = apps
        .iter()
        .map(|n| (key::<App>(n), App::KIND, n))
        .chain(services.iter().map(|n| (key::<Service>(n), Service::KIND, n)));
    for (key, kind, n) in names {
        match objects.store().get(&key)? {
            Some(kv) => {
                ops.push(TxnOp::Delete { key, expect: Expect::Revision(kv.mod_revision) });
                done.push(format!("{kind}/{n} deleted"));
            }
            None => missing.push(format!("{kind}/{n}")),
        }
    }
    if !missing.is_empty() {
        return Err(Error::NotFound(format!("nothing deleted: {} not found", missing.join(", "))));
    }
    if !ops.is_empty() {
        objects.txn(&ops).map_err(|e| match e {
            StoreError::Conflict { key, .. } => Error::Conflict(format!(
                "nothing deleted: {} changed meanwhile; try again",
                key.trim_start_matches('/')
            )),
            e => e.into(),
        })?;
    }
    Ok(done.join("\n"))
}
