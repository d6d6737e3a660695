//! Rollouts through the API: an app's revision history, going back to an earlier revision
//! (`undo`), and rolling every replica again with the same spec (`restart`). Each is a new
//! revision of the app, recorded and rolled out like an apply.

use crate::controllers::replicas::revision_hash;
use crate::controllers::rollout::{new_revision, with_template};
use crate::error::{Error, Result};
use crate::objects::Objects;
use crate::store::{Expect, StoreError};
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{App, Event, EventReason, ObjectRef, Replica, RevisionRecord};
use bramble_proto::time::now_ms;
use bramble_proto::wire::{Applied, Outcome, Response};

/// What rollouts (history, undo, restart, a new revision for changed configs or secrets) use.
pub struct Rollouts<'a> {
    pub objects: &'a Objects,
    pub events: &'a crate::events::Events,
    pub published: &'a crate::controllers::Published,
}

impl Rollouts<'_> {
    pub(super) fn history(&self, app: &str) -> Result<Response> {
        self.objects.load::<App>(app)?;
        Ok(Response::History(self.objects.history(app)?.into_iter().map(|v| v.value).collect()))
    }

    /// Back to revision `to`, or to the newest one with another template than the current.
    pub(super) fn undo(&self, app: &str, to: Option<u64>, who: &str) -> Result<String> {
        let (number, target) = self.new_template(app, who, |spec, history| {
            let current = revision_hash(spec);
            let found = match to {
                Some(n) => history.iter().find(|r| r.number == n).ok_or_else(|| {
                    let kept = match (history.first(), history.last()) {
                        (Some(a), Some(b)) => format!("kept: {} to {}", a.number, b.number),
                        _ => "none kept".into(),
                    };
                    Error::NotFound(format!("app {app} has no revision {n} ({kept})"))
                })?,
                None => history.iter().rev().find(|r| r.hash != current).ok_or_else(|| {
                    Error::Invalid(format!("app {app} has no earlier revision with another template to go back to"))
                })?,
            };
            if found.hash == current {
                return Err(Error::Invalid(format!(
                    "app {app} already runs the template of revision {} (nothing to undo)",
                    found.number
                )));
            }
            Ok((with_template(spec, &found.spec), format!("undo to revision {}", found.number), found.number))
        })?;
        Ok(format!("app/{app} rolled back to revision {target} (as revision {number})"))
    }

    /// Every replica replaced by a new one of the same spec, rolled like any update.
    pub(super) fn restart(&self, app: &str, who: &str) -> Result<String> {
        let number = self.roll(app, who, "restart")?;
        Ok(format!("app/{app} restarting (revision {number})"))
    }

    /// A rolling restart of `app` because of `cause`; the new revision's number.
    pub(super) fn roll(&self, app: &str, who: &str, cause: &str) -> Result<u64> {
        let (number, _) = self.new_template(app, who, |spec, _| {
            let mut s = spec.clone();
            s.restarted_at = Some(now_ms().to_string());
            Ok((s, cause.to_string(), 0))
        })?;
        Ok(number)
    }

    /// After an apply: boards are sent changed configs (their files are updated in place), and
    /// apps that mount a changed config with `roll = true` roll — unless the same apply changed
    /// the app, which rolls it anyway.
    pub(crate) fn after_configs_changed(&self, applied: &[Applied], who: &str) {
        let changed = |kind: &str| -> Vec<&str> {
            applied
                .iter()
                .filter(|a| a.kind == kind && a.outcome == Outcome::Configured)
                .map(|a| a.name.as_str())
                .collect()
        };
        if applied.iter().any(|a| matches!(a.kind.as_str(), "config" | "registry") && a.outcome != Outcome::Unchanged) {
            // Sessions look again at what their boards need (new and changed configs and
            // registries).
            self.published.secrets.send_modify(|v| *v += 1);
        }
        let configs = changed("config");
        if configs.is_empty() {
            return;
        }
        let rolled_anyway = changed("app");
        let apps = match self.objects.list::<App>() {
            Ok(a) => a,
            Err(e) => return tracing::warn!("cannot look for apps to roll: {e}"),
        };
        for a in apps.iter().map(|v| &v.value) {
            let name = a.meta.name.as_str();
            let Some(c) = a.spec.configs.iter().find(|c| c.roll && configs.contains(&c.name.as_str())) else {
                continue;
            };
            if rolled_anyway.contains(&name) {
                continue;
            }
            if let Err(e) = self.roll(name, who, &format!("config {} changed", c.name)) {
                tracing::warn!(app = name, "cannot roll after config {} changed: {e}", c.name);
            }
        }
    }

    /// Writes the template `change` makes of app `name`'s spec as a new revision, with its record,
    /// in one transaction (retried when something changed meanwhile). Returns the new revision's
    /// number and what `change` returned.
    fn new_template(
        &self,
        name: &str,
        who: &str,
        change: impl Fn(&AppSpec, &[RevisionRecord]) -> Result<(AppSpec, String, u64)>,
    ) -> Result<(u64, u64)> {
        for _ in 0..5 {
            let current = self.objects.load::<App>(name)?;
            if current.value.spec.is_job() {
                return Err(Error::Invalid(format!(
                    "{name} is a job: its runs keep their template (delete the job and apply it again)"
                )));
            }
            let history = self.objects.history(name)?;
            let records: Vec<RevisionRecord> = history.iter().map(|v| v.value.clone()).collect();
            let (spec, cause, extra) = change(&current.value.spec, &records)?;
            let replicas: Vec<Replica> =
                self.objects.list::<Replica>()?.into_iter().map(|v| v.value).filter(|r| r.app == name).collect();
            let now = now_ms();
            let (record, mut ops) = new_revision(name, &history, &spec, &cause, &replicas, now);
            let mut app = current.value;
            app.spec = spec;
            app.meta.generation += 1;
            app.meta.changed_by = Some(who.to_string());
            ops.push(Objects::put_op(&app, Expect::Revision(current.rev)));
            match self.objects.txn(&ops) {
                Ok(_) => {
                    let message = format!("revision {} ({cause}) by {who}", record.number);
                    self.events.record(Event::new(now, ObjectRef::app(name), EventReason::Configured, message));
                    self.published.kick.notify_one();
                    return Ok((record.number, extra));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!("app {name} kept changing; try again")))
    }
}
