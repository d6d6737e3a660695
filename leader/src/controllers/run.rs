//! The replica controller's loop: a pass on every store change, every kick and every second. A
//! pass reads a snapshot, asks the pure [`plan`](super::plan::plan) what to do, commits each
//! app's part in one transaction, and publishes each node's desired set for the sessions. It
//! writes only what changes, so an idle cluster writes nothing.
//!
//! A settled cluster ([`plan::settled`]: nothing in it waits on the clock) skips the every-second
//! pass while what a pass reads stays the same — the store's revision, the boards' readiness,
//! the images and volumes boards told — and gets one every [`SETTLED_PASS`] anyway. Reading
//! every object and planning each second was the largest part of an idle leader's CPU.

use super::desired::{self, DesiredSets};
use super::{commit, plan, snapshot, Context, Published};
use crate::error::Result;
use crate::network::{self, view::NetworkView};
use bramble_proto::model::{EventReason, Replica};
use bramble_proto::time::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A settled cluster gets a pass at least this often even when nothing it reads changed.
pub const SETTLED_PASS: Duration = Duration::from_secs(10);

/// What a pass reads besides the clock, by generation: when none moved, a settled cluster's
/// next pass would plan nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inputs {
    store: u64,
    readiness: u64,
    boards: u64,
}

impl Inputs {
    fn read(ctx: &Context) -> Inputs {
        Inputs {
            readiness: ctx.registry.transitions(),
            boards: ctx.observed.board_changes(),
            store: ctx.objects.store().revision(),
        }
    }
}

/// What one pass leaves for the sessions.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub desired: DesiredSets,
    pub network: NetworkView,
    /// Replicas leaving their services before they stop.
    pub terminating: Vec<String>,
    /// How long the pure plan (scheduling included) took.
    pub plan_seconds: f64,
    /// Nothing in the cluster waits on the clock ([`plan::settled`]).
    pub settled: bool,
}

/// One pass over the whole cluster at `now_ms`.
pub fn pass(ctx: &Context, now_ms: u64) -> Result<Outcome> {
    network::assign_subnets(&ctx.objects, &ctx.events, &ctx.network, now_ms)?;
    let snapshot = snapshot::read(ctx, now_ms)?;
    let started = std::time::Instant::now();
    let plan = plan::plan(&snapshot, now_ms);
    let plan_seconds = started.elapsed().as_secs_f64();
    let settled = plan::settled(&snapshot, &plan, now_ms);
    commit::garbage(ctx, &plan.garbage, now_ms);
    // Drains: said when they block, and when they are done.
    for (board, status) in ctx.drain.boards(plan.drains.clone()) {
        let (reason, text) = match status {
            plan::DrainStatus::Moving(_) => continue,
            plan::DrainStatus::Blocked(t) => (EventReason::DrainBlocked, format!("drain blocked: {t}")),
            plan::DrainStatus::Drained(t) => (EventReason::NodeDrained, t),
        };
        ctx.events.node(&board, reason, text, now_ms);
    }
    let mut kept = Vec::new();
    for app in &plan.apps {
        let committed = commit::app(ctx, app).unwrap_or_else(|e| {
            warn!(app = %app.app, "replica controller: {e}");
            false
        });
        // What was not committed stays as it was read.
        kept.extend(if committed { &app.after } else { &app.before });
    }
    let desired = desired::sets(snapshot.nodes.iter().map(|n| n.node.meta.name.as_str()), kept.iter().copied());
    let apps = snapshot.apps.iter().map(|(name, a)| (name.clone(), &a.app.spec)).collect();
    let replicas: Vec<&Replica> = kept.iter().map(|k| &k.replica).collect();
    let terminating = replicas.iter().filter(|r| r.terminating_ms.is_some()).map(|r| r.meta.name.clone()).collect();
    let network = NetworkView {
        version: 0,
        cluster: (*ctx.network).clone(),
        nodes: snapshot.nodes.iter().map(|n| (n.node.meta.name.clone(), (n.node.pod_cidr, n.node.address))).collect(),
        services: network::endpoints::routes(&snapshot.services, &apps, &replicas),
        control_ports: (*ctx.control_ports).clone(),
        nodes_changed: None,
    };
    Ok(Outcome { desired, network, terminating, plan_seconds, settled })
}

/// Publishes a pass's outcome for the sessions, and notes which view first left out each
/// replica being drained.
pub fn publish(ctx: &Context, published: &Published, out: Outcome) -> u64 {
    let version = published.publish(out.desired, out.network);
    ctx.drain.published(version, out.terminating.iter().map(String::as_str));
    version
}

/// Runs passes on every change to the store, every kick and every second (a settled cluster:
/// every [`SETTLED_PASS`] while nothing it reads changes), until cancelled.
pub async fn run(ctx: Arc<Context>, published: Arc<Published>, cancel: CancellationToken) {
    let store = ctx.objects.store().clone();
    let mut watch = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the last pass read, and when, if it found the cluster settled.
    let mut settled: Option<(Inputs, std::time::Instant)> = None;
    loop {
        if watch.is_none() {
            watch = store.watch("/", store.revision()).ok();
        }
        let mut ticked = false;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => ticked = true,
            _ = published.kick.notified() => {}
            r = async { watch.as_mut().expect("set above").next().await }, if watch.is_some() => {
                if r.is_err() {
                    watch = None;
                }
                // One pass for a burst of changes (e.g. statuses from many boards at once).
                while let Some(w) = watch.as_mut() {
                    match tokio::time::timeout(Duration::ZERO, w.next()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) => watch = None,
                        Err(_) => break,
                    }
                }
            }
        }
        let inputs = Inputs::read(&ctx);
        let unchanged = settled.is_some_and(|(read, at)| read == inputs && at.elapsed() < SETTLED_PASS);
        if ticked && unchanged {
            published.timings.skipped.inc();
            continue;
        }
        let c = ctx.clone();
        let started = std::time::Instant::now();
        settled = None;
        match tokio::task::spawn_blocking(move || pass(&c, now_ms())).await {
            Ok(Ok(out)) => {
                if out.settled {
                    settled = Some((inputs, started));
                }
                published.timings.pass.observe(started.elapsed().as_secs_f64());
                published.timings.plan.observe(out.plan_seconds);
                // Live detail of replicas that are gone is forgotten.
                ctx.observed.retain_details(|k| out.desired.values().any(|s| s.contains_key(k)));
                publish(&ctx, &published, out);
            }
            Ok(Err(e)) => warn!("replica controller: {e}"),
            Err(e) => warn!("replica controller: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
