//! The cron controller's loop: every second, each cron job's schedule is read against the
//! store's record of its last run ([`crate::cron::decide`]); a due run's job is created in the
//! same transaction that records it, with the cron job's revision checked. A leader that takes
//! over (restart, HA failover) reads the same record: a run is neither skipped nor made twice.
//! Missed runs (a leader down for an hour) run once, within `starting_deadline`, and say so.

use crate::controllers::rollout::new_revision;
use crate::cron::{decide, zone, Made};
use crate::error::Result;
use crate::events::Events;
use crate::objects::{key, keys, Objects, Versioned};
use crate::store::{Expect, StoreError, TxnOp};
use bramble_proto::model::{App, CronJob, Event, EventReason, Kind, ObjectMeta, ObjectRef, Replica, ReplicaPhase};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// How often a pass looks at every cron job's finished jobs (history), due or not.
const HISTORY_EVERY_MS: u64 = 10_000;

/// What the controller remembers between passes (memory only, rebuilt by a new leader): which
/// waits it has said, so that `forbid` says once per run that it waits; when each cron job is
/// next due as of its stored revision, so that an idle second reads no jobs.
#[derive(Debug, Default)]
pub struct Cron {
    said: Mutex<BTreeSet<(String, String)>>,
    /// Cron job → (its store revision, the next run's time; `u64::MAX`: none).
    next: Mutex<BTreeMap<String, (u64, u64)>>,
    last_history_ms: Mutex<u64>,
}

/// The jobs each cron job made, with their state at `now_ms`.
fn made_by(apps: &[App], replicas: &[Replica], now_ms: u64) -> BTreeMap<String, Vec<Made>> {
    let mut runs: BTreeMap<&str, Vec<&Replica>> = BTreeMap::new();
    for r in replicas.iter().filter(|r| r.phase != ReplicaPhase::Lost) {
        runs.entry(r.app.as_str()).or_default().push(r);
    }
    let mut out: BTreeMap<String, Vec<Made>> = BTreeMap::new();
    for a in apps.iter().filter(|a| a.spec.is_job()) {
        let Some(owner) = &a.cronjob else { continue };
        let mine = runs.get(a.meta.name.as_str()).map_or(&[][..], |v| v.as_slice());
        let state = bramble_proto::job::status(&a.spec, a.meta.created_ms, mine, now_ms).state;
        out.entry(owner.clone()).or_default().push(Made {
            name: a.meta.name.clone(),
            created_ms: a.meta.created_ms,
            state,
        });
    }
    out
}

/// The new job `name` of cron job `c`, made at `now_ms`, and the writes that create it (its
/// revision record included).
pub fn job_writes(c: &CronJob, name: bramble_proto::names::Name, cause: &str, now_ms: u64) -> (App, Vec<TxnOp>) {
    let spec = c.spec.job_named(name.clone());
    let meta = ObjectMeta {
        name: name.as_str().to_string(),
        generation: 1,
        revision: 0,
        created_ms: now_ms,
        changed_by: Some(format!("cronjob/{}", c.meta.name)),
    };
    let app = App { meta, spec, cronjob: Some(c.meta.name.clone()) };
    let (_, mut ops) = new_revision(name.as_str(), &[], &app.spec, cause, &[], now_ms);
    ops.push(Objects::put_op(&app, Expect::Absent));
    (app, ops)
}

impl Cron {
    /// One pass over every cron job at `now_ms`; whether it created or deleted a job.
    pub fn pass(&self, objects: &Objects, events: &Events, now_ms: u64) -> Result<bool> {
        let mut stored = objects.store().list(keys::CRONJOBS)?;
        let names: BTreeSet<&str> = stored.iter().filter_map(|kv| kv.key.strip_prefix(keys::CRONJOBS)).collect();
        let mut next = self.next.lock().expect("cron lock");
        next.retain(|name, _| names.contains(name.as_str()));
        let mut said = self.said.lock().expect("cron lock");
        said.retain(|(c, _)| names.contains(c.as_str()));
        drop(names);
        {
            let mut last = self.last_history_ms.lock().expect("cron lock");
            if now_ms >= *last + HISTORY_EVERY_MS || now_ms < *last {
                *last = now_ms;
            } else {
                // Between history passes: only cron jobs due (or changed) are decoded.
                stored.retain(|kv| {
                    let name = kv.key.strip_prefix(keys::CRONJOBS).unwrap_or_default();
                    next.get(name).is_none_or(|(rev, at)| *rev != kv.mod_revision || now_ms >= *at)
                });
            }
        }
        let cronjobs: Vec<Versioned<CronJob>> = stored.iter().map(Objects::decode_versioned).collect::<Result<_>>()?;
        if cronjobs.is_empty() {
            return Ok(false);
        }
        let apps: Vec<Versioned<App>> = objects.list::<App>()?;
        let plain: Vec<App> = apps.iter().map(|v| v.value.clone()).collect();
        let replicas: Vec<Replica> = objects.list::<Replica>()?.into_iter().map(|v| v.value).collect();
        let made = made_by(&plain, &replicas, now_ms);
        let revision_of: BTreeMap<&str, u64> = apps.iter().map(|v| (v.value.meta.name.as_str(), v.rev)).collect();
        let mut any = false;
        for v in &cronjobs {
            let c = &v.value;
            let name = c.meta.name.as_str();
            let about = ObjectRef::new(Kind::CronJob, name);
            let tz = match zone(c.spec.timezone.as_deref()) {
                Ok(tz) => tz,
                Err(e) => {
                    // Checked at apply; a board's tzdata can still lose a zone on an upgrade.
                    if said.insert((name.to_string(), e.to_string())) {
                        events.record(Event::new(now_ms, about, EventReason::MissedSchedule, e.to_string()));
                    }
                    continue;
                }
            };
            let mine = made.get(name).map_or(&[][..], |m| m.as_slice());
            let mut d = decide(&c.spec, &tz, c.meta.created_ms, c.status.last_schedule_ms, mine, now_ms);
            // Its job's name taken by an object it did not make: that run is skipped, said.
            if let Some(at) = d.run.filter(|at| revision_of.contains_key(c.spec.job_name(*at).as_str())) {
                let job = c.spec.job_name(at);
                d.run = None;
                d.replace.clear();
                d.say = vec![(
                    EventReason::MissedSchedule,
                    format!(
                        "the run of {} was skipped: an app or job named {job} exists that this cron job did not make",
                        crate::cron::show(&tz, at)
                    ),
                )];
            }
            if let Some(why) = &d.waiting {
                if said.insert((name.to_string(), why.clone())) {
                    events.record(Event::new(now_ms, about.clone(), EventReason::RunWaiting, why.clone()));
                }
            }
            if d.record.is_none() && d.waiting.is_none() {
                next.insert(name.to_string(), (v.rev, d.next_ms.unwrap_or(u64::MAX)));
            } else {
                next.remove(name);
            }
            if d.record.is_none() && d.prune.is_empty() {
                continue;
            }
            let mut ops = Vec::new();
            for gone in d.replace.iter().chain(&d.prune) {
                let Some(rev) = revision_of.get(gone.as_str()) else { continue };
                ops.push(TxnOp::Delete { key: key::<App>(gone), expect: Expect::Revision(*rev) });
            }
            let mut next = c.clone();
            if let Some(at) = d.record {
                next.status.last_schedule_ms = Some(at);
            }
            if let Some(at) = d.run {
                said.retain(|(c, _)| c != name);
                let job = c.spec.job_name(at);
                let (_, writes) = job_writes(c, job.clone(), &format!("cronjob/{name}"), now_ms);
                ops.extend(writes);
                next.status.last_job = Some(job.as_str().to_string());
            }
            if d.record.is_some() {
                ops.push(Objects::put_op(&next, Expect::Revision(v.rev)));
            }
            match objects.txn(&ops) {
                Ok(_) => {
                    any = true;
                    for (reason, text) in d.say {
                        events.record(Event::new(now_ms, about.clone(), reason, text));
                    }
                    for gone in &d.replace {
                        let text = format!("job {gone} replaced by the next run (concurrency replace)");
                        events.record(Event::new(now_ms, ObjectRef::app(gone), EventReason::JobReplaced, text));
                    }
                    if !d.prune.is_empty() {
                        let text = format!("deleted finished job {} (history kept)", d.prune.join(", "));
                        events.record(Event::new(now_ms, about.clone(), EventReason::HistoryPruned, text));
                    }
                }
                // Another leader, an apply or a delete came first: the next pass reads again.
                Err(StoreError::Conflict { key, .. }) => {
                    tracing::debug!(cronjob = name, %key, "cron: changed meanwhile")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(any)
    }
}

/// What the cron controller's loop uses.
#[derive(Debug, Clone)]
pub struct Handles {
    pub objects: Objects,
    pub events: std::sync::Arc<Events>,
    pub cron: std::sync::Arc<Cron>,
    pub published: std::sync::Arc<super::Published>,
}

/// Runs a pass every second until `cancel`.
pub async fn run(h: Handles, cancel: tokio_util::sync::CancellationToken) {
    let published = h.published.clone();
    super::every_second("cron", published, cancel, move |now| h.cron.pass(&h.objects, &h.events, now)).await
}

#[cfg(test)]
mod tests;
