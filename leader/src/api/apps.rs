//! Apps and services: apply (create, configure or leave unchanged — all or nothing), list,
//! delete.

use crate::admission::{check, problem, refuse, Reserved};
use crate::controllers::replicas::revision_hash;
use crate::controllers::rollout::new_revision;
use crate::controllers::{dry_run, snapshot, Context};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::network::alloc::free_vip;
use crate::objects::{key, keys, Object, Objects};
use crate::store::{Expect, StoreError, TxnOp};
use bramble_proto::manifest::{AppSpec, ConfigSpec, CronJobSpec, IngressSpec, RegistrySpec, ServiceSpec};
use bramble_proto::model::{
    App, Config, CronJob, Event, EventReason, Ingress, Kind, ObjectMeta, ObjectRef, Registry, Replica, RevisionRecord,
    Service,
};
use bramble_proto::network::ClusterNetwork;
use bramble_proto::time::now_ms;
use bramble_proto::wire::{Applied, ApplyPlan, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The apps of an apply that only an admin may write: a new or changed spec that asks for more
/// than the defaults (`security`) and more than an admin's policy for that app allows
/// (`bramble policy allow`). Each with what it asks beyond that.
pub fn needing_admin(objects: &Objects, apps: &[AppSpec], cronjobs: &[CronJobSpec]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    // A cron job's template is its jobs' (named as the cron job, for its policy).
    let templates: Vec<(AppSpec, &str)> = cronjobs.iter().map(|c| (c.job_named(c.name.clone()), "cronjob")).collect();
    let all = apps.iter().map(|a| (a, a.kind_word())).chain(templates.iter().map(|(t, k)| (t, *k)));
    for (a, kind) in all {
        let asks = a.privileged();
        if asks.is_empty() {
            continue;
        }
        let unchanged = if kind == "cronjob" {
            let stored = objects.get::<CronJob>(a.name.as_str())?.map(|v| v.value.spec);
            stored.is_some_and(|s| s.job_named(s.name.clone()) == *a)
        } else {
            objects.get::<App>(a.name.as_str())?.map(|v| v.value.spec).as_ref() == Some(a)
        };
        if unchanged {
            continue;
        }
        let beyond: Vec<String> = match objects.get::<bramble_proto::model::Policy>(a.name.as_str())? {
            Some(p) => p.value.refuses(a),
            None => asks.iter().map(|s| s.to_string()).collect(),
        };
        if !beyond.is_empty() {
            out.push(format!("{kind}/{} asks for {}", a.name, beyond.join(" and ")));
        }
    }
    Ok(out)
}

/// A stored object whose desired part a user applies.
trait Applicable: Object {
    type Spec: PartialEq + Clone;
    const REF: Kind;
    fn spec(&self) -> &Self::Spec;
    /// The new version of `current` (none: a new object) with `spec`.
    fn build(meta: ObjectMeta, spec: Self::Spec, current: Option<&Self>) -> Self;
}

impl Applicable for App {
    type Spec = AppSpec;
    const REF: Kind = Kind::App;
    fn spec(&self) -> &AppSpec {
        &self.spec
    }
    /// A job keeps the cron job that made it.
    fn build(meta: ObjectMeta, spec: AppSpec, current: Option<&Self>) -> Self {
        App { meta, spec, cronjob: current.and_then(|c| c.cronjob.clone()) }
    }
}

impl Applicable for Ingress {
    type Spec = IngressSpec;
    const REF: Kind = Kind::Ingress;
    fn spec(&self) -> &IngressSpec {
        &self.spec
    }
    fn build(meta: ObjectMeta, spec: IngressSpec, _: Option<&Self>) -> Self {
        Ingress { meta, spec }
    }
}

impl Applicable for Registry {
    type Spec = RegistrySpec;
    const REF: Kind = Kind::Registry;
    fn spec(&self) -> &RegistrySpec {
        &self.spec
    }
    fn build(meta: ObjectMeta, spec: RegistrySpec, _: Option<&Self>) -> Self {
        Registry { meta, spec }
    }
}

impl Applicable for CronJob {
    type Spec = CronJobSpec;
    const REF: Kind = Kind::CronJob;
    fn spec(&self) -> &CronJobSpec {
        &self.spec
    }
    /// A cron job keeps its record of runs.
    fn build(meta: ObjectMeta, spec: CronJobSpec, current: Option<&Self>) -> Self {
        CronJob { meta, spec, status: current.map(|c| c.status.clone()).unwrap_or_default() }
    }
}

impl Applicable for Config {
    type Spec = ConfigSpec;
    const REF: Kind = Kind::Config;
    fn spec(&self) -> &ConfigSpec {
        &self.spec
    }
    fn build(meta: ObjectMeta, spec: ConfigSpec, _: Option<&Self>) -> Self {
        Config { meta, spec }
    }
}

impl Applicable for Service {
    type Spec = ServiceSpec;
    const REF: Kind = Kind::Service;
    fn spec(&self) -> &ServiceSpec {
        &self.spec
    }
    /// A service keeps its virtual IP for life.
    fn build(meta: ObjectMeta, spec: ServiceSpec, current: Option<&Self>) -> Self {
        Service { meta, spec, vip: current.and_then(|c| c.vip), endpoints: Vec::new() }
    }
}

/// The new object that brings `name` to `desired`, with the condition to write it under, if
/// anything changes; and what that means.
type Planned<T> = (Option<(T, Expect)>, Applied);

fn plan<T: Applicable>(objects: &Objects, name: &str, desired: &T::Spec, who: &str) -> Result<Planned<T>> {
    let applied = |outcome| Applied { kind: T::KIND.into(), name: name.to_string(), outcome };
    let (meta, expect, outcome, current) = match objects.get::<T>(name)? {
        None => (
            ObjectMeta { name: name.to_string(), generation: 1, revision: 0, created_ms: now_ms(), changed_by: None },
            Expect::Absent,
            Outcome::Created,
            None,
        ),
        Some(current) => {
            if current.value.spec() == desired {
                return Ok((None, applied(Outcome::Unchanged)));
            }
            let mut meta = current.value.meta().clone();
            meta.generation += 1;
            (meta, Expect::Revision(current.rev), Outcome::Configured, Some(current.value))
        }
    };
    let meta = ObjectMeta { changed_by: Some(who.to_string()), ..meta };
    Ok((Some((T::build(meta, desired.clone(), current.as_ref()), expect)), applied(outcome)))
}

/// Gives every new service a virtual IP no other service holds (its claim is in the same
/// transaction, so a concurrent apply cannot take it too).
fn allocate_vips(
    objects: &Objects,
    network: &ClusterNetwork,
    services: &mut [(Service, Expect)],
) -> Result<Vec<TxnOp>> {
    let claims = objects.claims(keys::VIPS)?;
    let mut taken: BTreeSet<Ipv4Addr> =
        claims.keys().filter_map(|k| k.strip_prefix(keys::VIPS)?.parse().ok()).collect();
    let mut ops = Vec::new();
    for (s, _) in services.iter_mut().filter(|(s, _)| s.vip.is_none()) {
        let ip = free_vip(&network.service_cidr, &taken).ok_or_else(|| {
            Error::Invalid(format!(
                "nothing applied: service/{}: the service CIDR {} has no virtual IP left ({} services hold one)",
                s.meta.name,
                network.service_cidr,
                taken.len()
            ))
        })?;
        taken.insert(ip);
        s.vip = Some(ip);
        ops.push(Objects::claim_op(keys::vip(&ip), &s.meta.name));
    }
    Ok(ops)
}

/// Services whose app is known (applied with them, or stored) must name ports the app has.
fn check_targets(objects: &Objects, apps: &[AppSpec], services: &[ServiceSpec]) -> Result<()> {
    let mut problems = Vec::new();
    // A job keeps the template its runs ran; an app does not become a job or back.
    for a in apps {
        let Some(stored) = objects.get::<App>(a.name.as_str())?.map(|v| v.value.spec) else { continue };
        let name = a.name.as_str();
        if stored.is_job() != a.is_job() {
            let msg = format!(
                "{} {name} exists: an app and a job share their names (delete it first, or choose another name)",
                stored.kind_word()
            );
            problems.push(problem(a.kind_word(), name, "", msg));
        } else if a.is_job() && revision_hash(&stored) != revision_hash(a) {
            let msg = format!(
                "a job's template cannot change once created (only completions, parallelism, backoff_limit, \
                 active_deadline, ttl_after_finished, labels and after can): bramble delete job {name}, then apply \
                 it again"
            );
            problems.push(problem("job", name, "", msg));
        }
    }
    // Start order, against the cluster's apps as they will be.
    if apps.iter().any(|a| !a.after.is_empty() || a.ttl_after_finished.is_some()) {
        let stored: Vec<AppSpec> = objects.list::<App>()?.into_iter().map(|v| v.value.spec).collect();
        let mut graph: BTreeMap<String, Vec<String>> =
            stored.iter().map(|s| (s.name.as_str().to_string(), names(&s.after))).collect();
        graph.extend(apps.iter().map(|a| (a.name.as_str().to_string(), names(&a.after))));
        // Jobs that delete themselves once finished, as they will be.
        let applied: BTreeSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        let fleeting: BTreeSet<String> = stored
            .iter()
            .filter(|s| !applied.contains(s.name.as_str()))
            .chain(apps)
            .filter(|s| s.is_job() && s.ttl_after_finished.is_some())
            .map(|s| s.name.as_str().to_string())
            .collect();
        problems.extend(crate::admission::check_after(apps, &graph, &fleeting));
    }
    for s in services {
        let stored;
        let app = match apps.iter().find(|a| a.name == s.app) {
            Some(a) => a,
            None => match objects.get::<App>(s.app.as_str())? {
                Some(v) => {
                    stored = v.value.spec;
                    &stored
                }
                // A service may come before its app: it has no endpoints until then.
                None => continue,
            },
        };
        let found = s.check_against(app).into_iter();
        problems.extend(found.map(|p| problem("service", s.name.as_str(), p.field(), p.message)));
    }
    refuse(problems)
}

/// Registries' own checks, then against the cluster: one object per host (stored under another
/// name counts), and a secret that exists with the keys of credentials (its values are read by
/// the board that uses them, and by the leader when it sends them).
fn check_registries(objects: &Objects, registries: &[RegistrySpec]) -> Result<()> {
    if registries.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    // The cluster's registries once this apply is in: one per host.
    let mut after: BTreeMap<String, String> =
        objects.list::<Registry>()?.into_iter().map(|v| (v.value.meta.name, v.value.spec.host)).collect();
    after.extend(registries.iter().map(|r| (r.name.as_str().to_string(), r.host.clone())));
    for r in registries {
        let name = r.name.as_str();
        if !seen.insert(name) {
            problems.push(problem("registry", name, "", "listed twice"));
        }
        problems.extend(r.check().into_iter().map(|p| problem("registry", name, p.field(), p.message)));
        if let Some((other, _)) = after.iter().find(|(n, h)| **h == r.host && n.as_str() != name) {
            problems.push(problem("registry", name, "host", format!("{} is registry {other}'s host already", r.host)));
        }
        let Some(secret) = &r.secret else { continue };
        match objects.get::<crate::trust::secrets::StoredSecret>(secret.as_str())? {
            None => problems.push(problem(
                "registry",
                name,
                "secret",
                format!("secret {secret} does not exist (bramble secret create {secret} --from-literal username=… --from-literal password=…)"),
            )),
            Some(v) => {
                let keys: BTreeSet<&str> = v.value.sizes.keys().map(String::as_str).collect();
                let basic = keys.contains("username") && keys.contains("password");
                let docker = bramble_proto::registry_auth::DOCKER_CONFIG_KEYS.iter().any(|k| keys.contains(k));
                if !(basic || keys.contains("token") || docker) {
                    problems.push(problem(
                        "registry",
                        name,
                        "secret",
                        format!(
                            "secret {secret} holds {}: expected username and password, token, or a Docker config.json (key .dockerconfigjson or config.json)",
                            keys.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
    }
    refuse(problems)
}

/// Ingresses' own checks, then against the cluster as it will be: hosts and paths claimed once,
/// backends on services that exist (stored or applied now) with that port, TLS secrets with a
/// certificate and a key.
fn check_ingresses(objects: &Objects, ingresses: &[IngressSpec], services: &[ServiceSpec]) -> Result<()> {
    if ingresses.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for i in ingresses {
        if !seen.insert(i.name.as_str()) {
            problems.push(problem("ingress", i.name.as_str(), "", "listed twice"));
        }
        problems.extend(i.check().into_iter().map(|p| problem("ingress", i.name.as_str(), p.field(), p.message)));
    }
    refuse(problems)?;
    let stored: Vec<IngressSpec> = objects.list::<Ingress>()?.into_iter().map(|v| v.value.spec).collect();
    let mut all: BTreeMap<String, ServiceSpec> =
        objects.list::<Service>()?.into_iter().map(|v| (v.value.meta.name.clone(), v.value.spec)).collect();
    all.extend(services.iter().map(|s| (s.name.as_str().to_string(), s.clone())));
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut denied = Vec::new();
    for i in ingresses {
        let Some(secret) = i.tls.as_ref().and_then(|t| t.secret.as_ref()) else { continue };
        if let Some(v) = objects.get::<crate::trust::secrets::StoredSecret>(secret.as_str())? {
            keys.insert(secret.as_str().to_string(), v.value.sizes.keys().cloned().collect());
            // A secret an admin kept for some apps serves only ingresses of those names: no one
            // else's ingress presents its certificate.
            if let Some(allowed) = v.value.allowed_apps.as_ref().filter(|a| !a.contains(i.name.as_str())) {
                let who = if allowed.is_empty() {
                    "no app".into()
                } else {
                    allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                };
                denied.push(problem(
                    "ingress",
                    i.name.as_str(),
                    "tls.secret",
                    format!("secret {secret} may be used only by {who} (an admin changes that: bramble secret allow {secret} --apps …)"),
                ));
            }
        }
    }
    refuse(denied)?;
    refuse(crate::ingress::check(ingresses, &stored, &all, &keys))
}

fn names(list: &[bramble_proto::names::Name]) -> Vec<String> {
    list.iter().map(|n| n.as_str().to_string()).collect()
}

/// What one apply brings.
#[derive(Debug, Clone, Default)]
pub struct Specs {
    pub apps: Vec<AppSpec>,
    pub services: Vec<ServiceSpec>,
    pub configs: Vec<ConfigSpec>,
    pub cronjobs: Vec<CronJobSpec>,
    pub ingresses: Vec<IngressSpec>,
    pub registries: Vec<RegistrySpec>,
}

/// What an apply would write, and what it means.
struct Prepared {
    ops: Vec<TxnOp>,
    results: Vec<(Kind, Applied)>,
    /// Apps with a new spec, each with the record of its new template if it has one.
    apps: Vec<dry_run::Applied>,
    /// Services with a new spec.
    services: Vec<Service>,
}

/// Checks every object and works out the writes of applying them at `now`, without writing.
fn prepare(
    objects: &Objects,
    (network, reserved): (&ClusterNetwork, &Reserved),
    Specs { apps, services, configs, cronjobs, ingresses, registries }: Specs,
    who: &str,
    now: u64,
) -> Result<Prepared> {
    check(reserved, &apps, &services, &configs)?;
    refuse(crate::admission::check_cronjobs(reserved, &cronjobs))?;
    check_ingresses(objects, &ingresses, &services)?;
    check_registries(objects, &registries)?;
    check_targets(objects, &apps, &services)?;
    let (mut denied, mut secret_checks) = super::secrets::access(objects, &apps)?;
    // A cron job's jobs use secrets as the cron job (a secret allowed to `backup` is its jobs').
    let templates: Vec<AppSpec> = cronjobs.iter().map(|c| c.job_named(c.name.clone())).collect();
    let (cron_denied, cron_checks) = super::secrets::access(objects, &templates)?;
    denied.extend(cron_denied.into_iter().map(|p| bramble_proto::wire::ObjectProblem {
        kind: "cronjob".into(),
        field: format!("job.{}", p.field),
        ..p
    }));
    for c in cron_checks {
        if !secret_checks.contains(&c) {
            secret_checks.push(c);
        }
    }
    refuse(denied)?;
    let mut ops = secret_checks;
    let mut results = Vec::new();
    let mut all_replicas: Option<Vec<Replica>> = None;
    let mut changed_apps = Vec::new();
    for a in &apps {
        let (new, mut applied) = plan::<App>(objects, a.name.as_str(), a, who)?;
        applied.kind = a.kind_word().into();
        if let Some((app, expect)) = new {
            let mut record = None;
            // A new template is a new revision, recorded; its rollout is followed from there.
            let before = objects.get::<App>(a.name.as_str())?.map(|v| revision_hash(&v.value.spec));
            if before.as_deref() != Some(revision_hash(a).as_str()) {
                let cause = match objects.get::<App>(a.name.as_str())? {
                    None => "created".to_string(),
                    Some(old) if old.value.spec.image != a.image => {
                        format!("apply: image {} -> {}", old.value.spec.image, a.image)
                    }
                    Some(_) => "apply".to_string(),
                };
                let replicas = match &all_replicas {
                    Some(r) => r,
                    None => all_replicas.insert(objects.list::<Replica>()?.into_iter().map(|v| v.value).collect()),
                };
                let mine: Vec<Replica> = replicas.iter().filter(|r| r.app == a.name.as_str()).cloned().collect();
                let history = objects.history(a.name.as_str())?;
                let (new, writes) = new_revision(a.name.as_str(), &history, a, &cause, &mine, now);
                ops.extend(writes);
                record = Some(new);
            }
            ops.push(Objects::put_op(&app, expect));
            changed_apps.push(dry_run::Applied { spec: a.clone(), record });
        }
        results.push((App::REF, applied));
    }
    let mut changed_services = Vec::new();
    for s in &services {
        let (new, applied) = plan::<Service>(objects, s.name.as_str(), s, who)?;
        changed_services.extend(new);
        results.push((Service::REF, applied));
    }
    ops.extend(allocate_vips(objects, network, &mut changed_services)?);
    ops.extend(changed_services.iter().map(|(s, expect)| Objects::put_op(s, *expect)));
    for c in &configs {
        let (new, applied) = plan::<Config>(objects, c.name.as_str(), c, who)?;
        ops.extend(new.map(|(c, expect)| Objects::put_op(&c, expect)));
        results.push((Config::REF, applied));
    }
    for i in &ingresses {
        let (new, applied) = plan::<Ingress>(objects, i.name.as_str(), i, who)?;
        ops.extend(new.map(|(i, expect)| Objects::put_op(&i, expect)));
        results.push((Ingress::REF, applied));
    }
    for r in &registries {
        let (new, applied) = plan::<Registry>(objects, r.name.as_str(), r, who)?;
        ops.extend(new.map(|(r, expect)| Objects::put_op(&r, expect)));
        results.push((Registry::REF, applied));
    }
    for c in &cronjobs {
        let (new, applied) = plan::<CronJob>(objects, c.name.as_str(), c, who)?;
        ops.extend(new.map(|(c, expect)| Objects::put_op(&c, expect)));
        results.push((CronJob::REF, applied));
    }
    let services = changed_services.into_iter().map(|(s, _)| s).collect();
    // Checks alone change nothing: no transaction (and no write to the disk) for them.
    if ops.iter().all(|o| matches!(o, TxnOp::Check { .. })) {
        ops.clear();
    }
    Ok(Prepared { ops, results, apps: changed_apps, services })
}

/// Applies every object or none at `now` (the revision records' time); `who` made the change
/// (for the events).
pub fn apply(
    objects: &Objects,
    events: &Events,
    cluster: (&ClusterNetwork, &Reserved),
    specs: Specs,
    who: &str,
    now: u64,
) -> Result<Vec<Applied>> {
    let Prepared { ops, results, .. } = prepare(objects, cluster, specs, who, now)?;
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

/// Checks and plans an apply as [`apply`] would, writes nothing, and says what would change and
/// where each app's replicas would go.
pub fn dry_run(ctx: &Context, reserved: &Reserved, specs: Specs, now: u64) -> Result<ApplyPlan> {
    let names: Vec<String> = specs.apps.iter().map(|a| a.name.as_str().to_string()).collect();
    let prepared = prepare(&ctx.objects, (&ctx.network, reserved), specs, "a dry run", now)?;
    let mut snapshot = snapshot::read(ctx, now)?;
    dry_run::overlay(&mut snapshot, &prepared.apps, &prepared.services, now);
    let records: Vec<(String, Option<&RevisionRecord>)> = names
        .iter()
        .map(|n| {
            let record = prepared.apps.iter().find(|a| a.spec.name.as_str() == n).and_then(|a| a.record.as_ref());
            (n.clone(), record)
        })
        .collect();
    let apps = dry_run::simulate(snapshot, &records, now);
    Ok(ApplyPlan { applied: prepared.results.into_iter().map(|(_, r)| r).collect(), apps })
}

/// Every object of kind `T`.
pub fn list<T: Object>(objects: &Objects) -> Result<Vec<T>> {
    Ok(objects.list::<T>()?.into_iter().map(|v| v.value).collect())
}

/// The objects one delete names, by kind.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub apps: Vec<String>,
    pub services: Vec<String>,
    pub secrets: Vec<String>,
    pub configs: Vec<String>,
    pub cronjobs: Vec<String>,
    pub ingresses: Vec<String>,
    pub registries: Vec<String>,
}

/// Deletes every named object, or none if one is missing.
pub fn delete(objects: &Objects, names: Names) -> Result<String> {
    let Names { apps, services, secrets, configs, cronjobs, ingresses, registries } = names;
    let mut ops = Vec::new();
    let mut missing = Vec::new();
    let mut done = Vec::new();
    // A cron job's jobs go with it (those running are stopped).
    let mut apps = apps;
    if !cronjobs.is_empty() {
        for v in objects.list::<App>()? {
            let owner = v.value.cronjob.as_deref();
            if owner.is_some_and(|o| cronjobs.iter().any(|c| c == o)) && !apps.contains(&v.value.meta.name) {
                apps.push(v.value.meta.name);
            }
        }
    }
    let names = apps
        .iter()
        .map(|n| (key::<App>(n), App::KIND, n))
        .chain(services.iter().map(|n| (key::<Service>(n), Service::KIND, n)))
        .chain(configs.iter().map(|n| (key::<Config>(n), Config::KIND, n)))
        .chain(cronjobs.iter().map(|n| (key::<CronJob>(n), CronJob::KIND, n)))
        .chain(ingresses.iter().map(|n| (key::<Ingress>(n), Ingress::KIND, n)))
        .chain(registries.iter().map(|n| (key::<Registry>(n), Registry::KIND, n)));
    for (key, kind, n) in names {
        match objects.store().get(&key)? {
            Some(kv) => {
                // A service's virtual IP goes with it.
                if kind == Service::KIND {
                    let vip = crate::objects::decode::<Service>(&kv.key, &kv.value)?.vip;
                    ops.extend(vip.map(|ip| Objects::release_op(keys::vip(&ip))));
                }
                ops.push(TxnOp::Delete { key, expect: Expect::Revision(kv.mod_revision) });
                done.push(format!("{kind}/{n} deleted"));
            }
            None => missing.push(format!("{kind}/{n}")),
        }
    }
    let (secret_ops, secrets_done, secrets_missing) = super::secrets::delete_ops(objects, &secrets)?;
    ops.extend(secret_ops);
    done.extend(secrets_done);
    missing.extend(secrets_missing);
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

/// An admin lets deployers apply app `app` with these privileges (replacing what was allowed).
#[allow(clippy::too_many_arguments)]
pub fn allow_privileges(
    objects: &Objects,
    events: &Events,
    app: &str,
    cap_add: Vec<bramble_proto::manifest::CapName>,
    seccomp_unconfined: bool,
    control_plane: bool,
    host_network: bool,
    who: &str,
) -> Result<bramble_proto::wire::Response> {
    bramble_proto::names::check_dns_label(app).map_err(|e| Error::Invalid(format!("policy for app {e}")))?;
    if cap_add.iter().any(|c| c.as_str() == "ALL") {
        return Err(Error::Invalid("name the capabilities to allow (\"ALL\" is for cap_drop)".into()));
    }
    if cap_add.is_empty() && !seccomp_unconfined && !control_plane && !host_network {
        return Err(Error::Invalid(
            "nothing to allow: give --cap-add, --seccomp-unconfined, --control-plane or --host-network (policy rm \
             takes one away)"
                .into(),
        ));
    }
    let current = objects.get::<bramble_proto::model::Policy>(app)?;
    let mut cap_add = cap_add;
    cap_add.sort();
    cap_add.dedup();
    let now = now_ms();
    let meta = match &current {
        Some(v) => ObjectMeta {
            generation: v.value.meta.generation + 1,
            changed_by: Some(who.to_string()),
            ..v.value.meta.clone()
        },
        None => ObjectMeta {
            name: app.to_string(),
            generation: 1,
            revision: 0,
            created_ms: now,
            changed_by: Some(who.to_string()),
        },
    };
    let policy = bramble_proto::model::Policy { meta, cap_add, seccomp_unconfined, control_plane, host_network };
    let expect = current.as_ref().map_or(Expect::Absent, |v| Expect::Revision(v.rev));
    objects.put(&policy, expect).map_err(|e| match e {
        StoreError::Conflict { .. } => Error::Conflict(format!("the policy of app {app} changed meanwhile; try again")),
        e => e.into(),
    })?;
    let what = policy_words(&policy);
    events.record(Event::new(
        now,
        ObjectRef::app(app),
        EventReason::Configured,
        format!("deployers may give app {app} {what} (by {who})"),
    ));
    Ok(bramble_proto::wire::Response::Done(format!("policy/{app}: deployers may apply it with {what}")))
}

/// What a policy allows, in words.
pub fn policy_words(p: &bramble_proto::model::Policy) -> String {
    let mut parts = Vec::new();
    if !p.cap_add.is_empty() {
        parts.push(format!("cap_add {}", p.cap_add.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")));
    }
    if p.seccomp_unconfined {
        parts.push("seccomp unconfined".to_string());
    }
    if p.control_plane {
        parts.push("the control plane".to_string());
    }
    if p.host_network {
        parts.push("the host network".to_string());
    }
    parts.join(" and ")
}

/// An admin takes a policy away: the app as it runs is left alone; its next apply by a deployer
/// that asks for privileges is refused.
pub fn delete_policy(
    objects: &Objects,
    events: &Events,
    app: &str,
    who: &str,
) -> Result<bramble_proto::wire::Response> {
    let Some(current) = objects.get::<bramble_proto::model::Policy>(app)? else {
        return Err(Error::NotFound(format!("no policy for app {app}")));
    };
    objects.delete::<bramble_proto::model::Policy>(app, Expect::Revision(current.rev)).map_err(|e| match e {
        StoreError::Conflict { .. } => Error::Conflict(format!("the policy of app {app} changed meanwhile; try again")),
        e => e.into(),
    })?;
    events.record(Event::new(
        now_ms(),
        ObjectRef::app(app),
        EventReason::Configured,
        format!("deployers may no longer give app {app} privileges (by {who})"),
    ));
    Ok(bramble_proto::wire::Response::Done(format!("policy/{app} deleted")))
}
