//! Replicas through the API: list, describe (with an app's), scale.

use crate::error::{Error, Result};
use crate::objects::Objects;
use crate::store::{Expect, StoreError};
use bramble_proto::manifest::MAX_REPLICAS;
use bramble_proto::model::{App, Event, EventReason, ObjectRef, Replica};
use bramble_proto::time::now_ms;
use bramble_proto::wire::Response;

/// What the replica requests use.
pub struct Replicas<'a> {
    pub objects: &'a Objects,
    pub events: &'a crate::events::Events,
    pub observed: &'a crate::boards::observed::Observed,
    pub published: &'a crate::controllers::Published,
    pub autoscaler: &'a crate::controllers::autoscaler::Autoscaler,
}

impl Replicas<'_> {
    pub(super) fn describe_app(&self, name: &str) -> Result<Response> {
        let app = self.objects.load::<App>(name)?.value;
        let replicas = self.objects.replicas(Some(name))?;
        let rollout = self.objects.history(name)?.pop().map(|v| Box::new(v.value));
        let autoscale = self.autoscaler.describe(name, now_ms());
        Ok(Response::App { app: Box::new(app), replicas, events: self.events.of_app(name), rollout, autoscale })
    }

    pub(super) fn describe_replica(&self, name: &str) -> Result<Response> {
        let replica = self.objects.load::<Replica>(name)?.value;
        let detail = self.observed.detail(name);
        let probes = self.observed.probes(name);
        let events = self.events.about(&ObjectRef::replica(name));
        Ok(Response::Replica { replica: Box::new(replica), detail, probes, events })
    }

    /// Sets an app's replica count (refused if `expect_generation` is given and the app moved on).
    pub(super) fn scale(&self, name: &str, replicas: u32, expect_generation: Option<u64>, who: &str) -> Result<String> {
        if replicas > MAX_REPLICAS {
            return Err(Error::Invalid(format!("expected a replica count from 0 to {MAX_REPLICAS}, found {replicas}")));
        }
        let current = self.objects.load::<App>(name)?;
        let mut app = current.value;
        if let Some(g) = expect_generation.filter(|g| *g != app.meta.generation) {
            return Err(Error::Conflict(format!(
                "app {name} changed since generation {g} (it is at generation {}); look again and retry",
                app.meta.generation
            )));
        }
        if app.spec.is_job() {
            return Err(Error::Invalid(format!(
                "{name} is a job: it runs to completion (its parallelism says how many runs at once)"
            )));
        }
        if app.spec.every_board() {
            return Err(Error::Invalid(format!(
                "app {name} runs one replica on every board it matches (mode = \"every-board\"): its count follows the boards; \
                 change its placement instead"
            )));
        }
        let from = app.spec.replicas.0;
        if from == replicas {
            return Ok(format!("app/{name} unchanged ({replicas} replicas)"));
        }
        app.spec.replicas = bramble_proto::manifest::Replicas(replicas);
        app.meta.generation += 1;
        app.meta.changed_by = Some(who.to_string());
        self.objects.put(&app, Expect::Revision(current.rev)).map_err(|e| match e {
            StoreError::Conflict { .. } => {
                Error::Conflict(format!("app {name} was changed by someone else meanwhile; try again"))
            }
            e => e.into(),
        })?;
        let message = format!("scaled from {from} to {replicas} replicas by {who}");
        self.events.record(Event::new(now_ms(), ObjectRef::app(name), EventReason::Scaled, message));
        self.published.kick.notify_one();
        let autoscaled = match &app.spec.autoscale {
            Some(a) => format!(
                "; it is autoscaled (min {}, max {}): the autoscaler sets the count again on its next pass",
                a.min.0, a.max.0
            ),
            None => String::new(),
        };
        Ok(format!("app/{name} scaled from {from} to {replicas}{autoscaled}"))
    }
}
