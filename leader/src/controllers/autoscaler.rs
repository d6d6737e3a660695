//! The autoscaler's loop: for each app with `[app.autoscale]`, once per `scale_up_period`, the
//! usage the boards sent (fresh samples only) goes into the pure decision
//! ([`crate::controllers::autoscale::decide`]); a new count is written like `bramble scale` (by
//! "autoscaler"), with an event that gives the figures. Recommendations and the last decision are
//! kept in memory (`describe app` shows them); after a leader restart the window starts empty, so
//! nothing shrinks until it has filled.

use crate::boards::usage::Usage;
use crate::controllers::autoscale::{decide, Decision, Observed, Policy};
use crate::error::Result;
use crate::events::Events;
use crate::objects::Objects;
use bramble_proto::manifest::Replicas;
use bramble_proto::model::{App, Event, EventReason, ObjectRef, Replica, ReplicaPhase};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// A sample older than this is no data.
const FRESH_MS: u64 = 60_000;

#[derive(Debug, Default)]
struct AppState {
    history: VecDeque<(u64, u32)>,
    last_pass_ms: u64,
    last: Option<(u64, Decision)>,
}

/// What the autoscaler remembers (memory only).
#[derive(Debug, Default)]
pub struct Autoscaler {
    apps: Mutex<HashMap<String, AppState>>,
}

fn policy(app: &App) -> Option<Policy> {
    let a = app.spec.autoscale.as_ref()?;
    // Usage samples are the whole replica's (every container's): so is the request they are a
    // share of.
    let (cpu, memory) = app.spec.requests();
    // Never below what a drain keeps ready (`min_available`, of the most it may run).
    let floor = app.spec.min_available.map_or(0, |m| m.of(a.max.0)).min(a.max.0);
    let mut p = Policy::new(a.min.0.max(floor), a.max.0);
    p.cpu = a.cpu.filter(|_| cpu > 0).map(|t| (t.0, cpu));
    p.memory = a.memory.filter(|_| memory > 0).map(|t| (t.0, memory));
    if let Some(w) = a.scale_down_window {
        p.scale_down_window = w.0;
    }
    if let Some(u) = a.scale_up_period {
        p.scale_up_period = u.0;
    }
    Some(p)
}

impl Autoscaler {
    /// One pass over every autoscaled app at `now_ms`; whether a count changed (the replica
    /// controller should look again).
    pub fn pass(&self, objects: &Objects, usage: &Usage, events: &Events, now_ms: u64) -> Result<bool> {
        let mut any = false;
        let apps: Vec<App> = objects.list::<App>()?.into_iter().map(|v| v.value).collect();
        let mut state = self.apps.lock().expect("autoscaler lock");
        state.retain(|name, _| apps.iter().any(|a| &a.meta.name == name && a.spec.autoscale.is_some()));
        let autoscaled: Vec<(&App, Policy)> = apps.iter().filter_map(|a| policy(a).map(|p| (a, p))).collect();
        if autoscaled.is_empty() {
            return Ok(false);
        }
        let replicas: Vec<Replica> = objects.list::<Replica>()?.into_iter().map(|v| v.value).collect();
        let usage: HashMap<String, bramble_proto::usage::ReplicaUsage> = usage
            .replicas()
            .into_iter()
            .filter(|u| u.at_ms + FRESH_MS >= now_ms && !u.cpu_history.is_empty())
            .map(|u| (u.replica.clone(), u))
            .collect();
        for (app, policy) in autoscaled {
            let name = app.meta.name.as_str();
            let st = state.entry(name.to_string()).or_default();
            if now_ms < st.last_pass_ms + policy.scale_up_period.as_millis() as u64 {
                continue;
            }
            st.last_pass_ms = now_ms;
            let observed: Vec<Observed> = replicas
                .iter()
                .filter(|r| r.app == name && r.terminating_ms.is_none())
                .filter(|r| !matches!(r.phase, ReplicaPhase::Succeeded | ReplicaPhase::Lost | ReplicaPhase::Failed))
                .map(|r| {
                    let u = usage.get(&r.meta.name);
                    Observed {
                        ready: r.serving(),
                        started_ms: r.ready_ms.or(r.started_ms),
                        cpu_millis: u.map(|u| u.cpu_millis),
                        memory: u.map(|u| u.memory_working_set),
                    }
                })
                .collect();
            let current = app.spec.replicas.0;
            let window = policy.scale_down_window.as_millis() as u64;
            st.history.retain(|(t, _)| t + window > now_ms);
            let history: Vec<(u64, u32)> = st.history.iter().copied().collect();
            let d = decide(current, &observed, &policy, &history, now_ms);
            st.history.push_back((now_ms, d.recommended));
            st.last = Some((now_ms, d.clone()));
            if d.desired == current {
                continue;
            }
            let changed = objects.update::<App>(name, |a| {
                // Someone changed it meanwhile: the next pass looks again.
                if a.spec.replicas.0 != current {
                    return Ok(false);
                }
                a.spec.replicas = Replicas(d.desired);
                a.meta.generation += 1;
                a.meta.changed_by = Some("autoscaler".into());
                Ok(true)
            })?;
            if changed {
                let message = format!("autoscaled from {current} to {}: {}", d.desired, d.why);
                events.record(Event::new(now_ms, ObjectRef::app(name), EventReason::Scaled, message));
                any = true;
            }
        }
        Ok(any)
    }

    /// What `describe app` says of the autoscaler's view of `app`.
    pub fn describe(&self, app: &str, now_ms: u64) -> Option<String> {
        let state = self.apps.lock().expect("autoscaler lock");
        let (at, d) = state.get(app)?.last.as_ref()?;
        let ago = bramble_proto::quantity::format_duration(Duration::from_secs(now_ms.saturating_sub(*at) / 1000));
        Some(format!("{} ago: {} → {} replicas (recommended {})", ago, d.why, d.desired, d.recommended))
    }
}

/// What the autoscaler's loop uses: the store, the boards' usage, events, its own memory and the
/// replica controller's wake-up.
#[derive(Debug, Clone)]
pub struct Handles {
    pub objects: Objects,
    pub usage: std::sync::Arc<Usage>,
    pub events: std::sync::Arc<Events>,
    pub autoscaler: std::sync::Arc<Autoscaler>,
    pub published: std::sync::Arc<super::Published>,
}

/// Runs passes every second until `cancel` (each app is looked at once per its period).
pub async fn run(h: Handles, cancel: tokio_util::sync::CancellationToken) {
    let published = h.published.clone();
    super::every_second("autoscaler", published, cancel, move |now| {
        h.autoscaler.pass(&h.objects, &h.usage, &h.events, now)
    })
    .await
}
