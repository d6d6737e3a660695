//! Rollouts through the API: an app's revision history, going back to an earlier revision
//! (`undo`), and rolling every replica again with the same spec (`restart`). Each is a new
//! revision of the app, recorded and rolled out like an apply.

use super::Api;
use crate::controllers::replicas::revision_hash;
use crate::controllers::rollout::{new_revision, with_template};
use crate::error::{Error, Result};
use crate::objects::Objects;
use crate::store::{Expect, StoreError};
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{App, Event, EventReason, ObjectRef, Replica, RevisionRecord};
use bramble_proto::time::now_ms;
use bramble_proto::wire::Response;

impl Api {
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
        let (number, _) = self.new_template(app, who, |spec, _| {
            let mut s = spec.clone();
            s.restarted_at = Some(now_ms().to_string());
            Ok((s, "restart".to_string(), 0))
        })?;
        Ok(format!("app/{app} restarting (revision {number})"))
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
