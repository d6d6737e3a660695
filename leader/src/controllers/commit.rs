//! Writes a plan: each app's changes in one transaction that also checks the app's revision, so
//! a concurrent apply makes the pass retry instead of acting on a stale spec; the garbage of
//! deleted apps one key at a time.

use super::plan::{AppPlan, Change, Garbage};
use super::Context;
use crate::error::Result;
use crate::objects::Objects;
use crate::store::{Expect, StoreError, TxnOp};
use bramble_proto::model::{App, Event, EventReason, Replica};
use tracing::{debug, warn};

/// The transaction of one app's plan (empty when nothing changes).
pub fn ops(plan: &AppPlan) -> Vec<TxnOp> {
    let mut ops: Vec<TxnOp> = plan
        .changes
        .iter()
        .map(|c| match c {
            Change::Create(r) => Objects::put_op(r, Expect::Absent),
            Change::Update { replica, expect } => Objects::put_op(replica, Expect::Revision(*expect)),
            Change::Delete { name, expect } => Objects::delete_op::<Replica>(name, Expect::Revision(*expect)),
            Change::PutRevision { hash, spec } => Objects::put_revision_op(&plan.app, hash, spec),
            Change::DeleteRevision { hash, expect } => Objects::delete_revision_op(&plan.app, hash, *expect),
            Change::PutHistory { record, expect } => {
                Objects::put_history_op(record, expect.map_or(Expect::Absent, Expect::Revision))
            }
            Change::DeleteHistory { number, expect } => Objects::delete_history_op(&plan.app, *number, *expect),
            Change::PutApp(app) => Objects::put_op(app.as_ref(), Expect::Revision(plan.app_revision)),
            Change::DeleteApp => Objects::delete_op::<App>(&plan.app, Expect::Revision(plan.app_revision)),
        })
        .collect();
    let writes_app = plan.changes.iter().any(|c| matches!(c, Change::PutApp(_) | Change::DeleteApp));
    if !ops.is_empty() && !writes_app {
        // The app must not have changed since the plan was made.
        ops.push(Objects::check_op::<App>(&plan.app, Expect::Revision(plan.app_revision)));
    }
    ops
}

/// Commits one app's plan and records its events. `Ok(false)`: someone changed something
/// meanwhile and nothing was written; the next pass plans again.
pub fn app(ctx: &Context, plan: &AppPlan) -> Result<bool> {
    let ops = ops(plan);
    if ops.is_empty() {
        return Ok(true);
    }
    match ctx.objects.txn(&ops) {
        Ok(_) => {
            for e in &plan.events {
                ctx.events.record(e.clone());
            }
            Ok(true)
        }
        Err(StoreError::Conflict { key, .. }) => {
            debug!(app = %plan.app, "changed meanwhile ({key}); next pass");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes what is left of deleted apps, each key on its own (a conflict leaves it for later).
pub fn garbage(ctx: &Context, garbage: &[Garbage], now_ms: u64) {
    for g in garbage {
        let result = match g {
            Garbage::Replica { replica, expect } => {
                ctx.objects.delete::<Replica>(&replica.meta.name, Expect::Revision(*expect)).map(|_| {
                    let name = &replica.meta.name;
                    let e = Event::replica(now_ms, &replica.app, name, EventReason::Deleted, "its app was deleted");
                    ctx.events.record(e);
                })
            }
            Garbage::Revision { app, hash, expect } => {
                ctx.objects.txn(&[Objects::delete_revision_op(app, hash, *expect)]).map(|_| ())
            }
            Garbage::History { app, number, expect } => {
                ctx.objects.txn(&[Objects::delete_history_op(app, *number, *expect)]).map(|_| ())
            }
            Garbage::ImagePlatforms { image, expect } => {
                ctx.objects.txn(&[Objects::delete_image_platforms_op(image, *expect)]).map(|_| ())
            }
        };
        match result {
            Ok(()) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => warn!("cannot remove {g:?}: {e}"),
        }
    }
}
