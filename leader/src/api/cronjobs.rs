//! Cron jobs: what `get cronjobs` shows, and a run made at once (`bramble job run NAME --from
//! cronjob/NAME`). Apply and delete are with the other objects (`apps.rs`); the schedule is the
//! cron controller's (`controllers/cron.rs`).

use crate::controllers::cron::job_writes;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::objects::Objects;
use crate::store::StoreError;
use bramble_proto::model::{CronJob, Event, EventReason, Kind, ObjectRef};
use bramble_proto::wire::CronJobView;

/// Every cron job with its next run and its events.
pub fn views(objects: &Objects, events: &Events, now_ms: u64) -> Result<Vec<CronJobView>> {
    let list = objects.list::<CronJob>()?;
    Ok(list
        .into_iter()
        .map(|v| {
            let c = v.value;
            let next_ms = match crate::cron::zone(c.spec.timezone.as_deref()) {
                Ok(tz) if !c.spec.suspend => crate::cron::next_run(&c.spec.schedule, &tz, now_ms),
                _ => None,
            };
            let events = events.about(&ObjectRef::new(Kind::CronJob, c.meta.name.clone()));
            CronJobView { cronjob: c, next_ms, events }
        })
        .collect())
}

/// Makes job `name` from cron job `cronjob`'s template now (its schedule and record stay as
/// they are; its history counts the job).
pub fn run_now(
    objects: &Objects,
    events: &Events,
    cronjob: &str,
    name: &str,
    who: &str,
    now_ms: u64,
) -> Result<String> {
    let c = objects.load::<CronJob>(cronjob)?.value;
    // The name is the caller's: checked as a name, and only its start quoted back.
    let job = bramble_proto::names::Name::new(name).map_err(|_| {
        let shown: String = name.chars().take(64).collect();
        Error::Invalid(format!(
            "job name {shown:?}: expected a DNS label: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        ))
    })?;
    let (_, ops) = job_writes(&c, job, &format!("run from cronjob/{cronjob} by {who}"), now_ms);
    objects.txn(&ops).map_err(|e| match e {
        StoreError::Conflict { .. } => {
            Error::Conflict(format!("an app or job named {name} exists (or just did): choose another name"))
        }
        e => e.into(),
    })?;
    let text = format!("made job {name} at once, by {who}");
    events.record(Event::new(now_ms, ObjectRef::new(Kind::CronJob, cronjob), EventReason::JobCreated, text));
    Ok(format!("job/{name} created from cronjob/{cronjob}"))
}
