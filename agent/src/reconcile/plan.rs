//! The agent's decisions, pure: from the desired set, what the board shows and the retries
//! waiting, to the actions that make them agree — and each replica's status, and the events its
//! changes mean. No shims, no registry, no clock: time comes in as `now_ms`.

use super::effects::ReconcileError;
use crate::net::ports::{Binding, PodRules};
use crate::runtime::lifecycle::Phase;
use crate::runtime::protocol::ShimState;
use bramble_proto::manifest::{replica_of, Role};
use bramble_proto::model::{EventReason, ReplicaPhase};
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{Assignment, PlatformMiss, ReplicaStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The replicas this board must run, by name.
pub type Desired = BTreeMap<String, Assignment>;
/// Each desired replica's status.
pub type Statuses = BTreeMap<String, ReplicaStatus>;

/// What the board shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Every container with a directory here, with its shim's state (`None`: it did not answer).
    pub containers: BTreeMap<String, Option<ShimState>>,
    /// Containers being stopped and removed in the background.
    pub removing: BTreeSet<String>,
    /// Image references the store holds.
    pub images: BTreeSet<String>,
    /// Pulls in flight: image → (bytes done, bytes total).
    pub pulling: BTreeMap<String, (u64, u64)>,
    /// Pods' addresses.
    pub ips: BTreeMap<String, Ipv4Addr>,
}

/// A failed start or pull, waiting for its next try.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub at_ms: u64,
    pub delay_ms: u64,
    pub error: ReconcileError,
}

/// Retries by replica.
pub type Retries = BTreeMap<String, Retry>;

/// The first retry delay and its cap (it doubles in between).
pub const RETRY_BASE_MS: u64 = 1_000;
pub const RETRY_CAP_MS: u64 = 60_000;

impl Retry {
    /// The retry after `previous` (if any) for `error` at `now_ms`.
    pub fn after(previous: Option<&Retry>, error: ReconcileError, now_ms: u64) -> Retry {
        let delay_ms = previous.map_or(RETRY_BASE_MS, |r| (r.delay_ms * 2).min(RETRY_CAP_MS));
        Retry { at_ms: now_ms + delay_ms, delay_ms, error }
    }

    pub fn waiting(&self, now_ms: u64) -> bool {
        now_ms < self.at_ms
    }
}

/// What the reconciler does next.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Stop and remove a container no longer desired (in the background: it waits out its grace).
    Remove { id: String },
    /// Fetch an image (off the reconciler thread: one cold image never delays the others).
    Pull { image: String },
    /// Make the replica's pod network (once) and create its container `id` (its image is in
    /// the store): the replica's own container has the replica's name, its others
    /// `<replica>.<name>`.
    Start { replica: String, id: String },
    /// Stop a container and keep it with its exit: a job's other containers once its own ended.
    Stop { id: String },
}

/// Whether container `id` ended well and is not restarted: an init container that did its work.
fn succeeded(observed: &Observed, id: &str) -> bool {
    matches!(
        observed.containers.get(id),
        Some(Some(s)) if matches!(&s.lifecycle.phase, Phase::Exited { last, .. } if last.success())
    )
}

fn ended(observed: &Observed, id: &str) -> bool {
    matches!(observed.containers.get(id), Some(Some(s)) if matches!(s.lifecycle.phase, Phase::Exited { .. }))
}

fn running(observed: &Observed, id: &str) -> bool {
    matches!(observed.containers.get(id), Some(Some(s)) if matches!(s.lifecycle.phase, Phase::Running { .. }))
}

/// The actions that bring the board towards `desired`. With `desired` unknown (a set that could
/// not be read), nothing is removed.
pub fn plan(desired: Option<&Desired>, observed: &Observed, retries: &Retries, now_ms: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(d) = desired {
        let wanted: BTreeSet<String> = d.iter().flat_map(|(name, a)| unit_ids(name, a)).collect();
        for id in observed.containers.keys() {
            if wanted.contains(id) || observed.removing.contains(id) {
                continue;
            }
            // A replica's own container holds its pod's network: it goes after the others.
            let siblings = observed
                .containers
                .keys()
                .chain(&observed.removing)
                .any(|other| other != id && other.starts_with(id.as_str()) && replica_of(other) == id);
            if !id.contains('.') && siblings {
                continue;
            }
            actions.push(Action::Remove { id: id.clone() });
        }
    }
    let mut pulls = BTreeSet::new();
    for (name, a) in desired.into_iter().flatten() {
        let units = a.spec.slots(name);
        let inits_done = units.iter().filter(|u| matches!(u.role, Role::Init(_))).all(|u| succeeded(observed, &u.id));
        // A job's run is over when its own container has ended: its other containers stop.
        if a.spec.is_job() && ended(observed, name) {
            for u in units.iter().filter(|u| u.role == Role::Sidecar && running(observed, &u.id)) {
                actions.push(Action::Stop { id: u.id.clone() });
            }
            continue;
        }
        for u in &units {
            let ready_to_start = match u.role {
                // The first init container not done yet, once those before it are.
                Role::Init(i) => units[..i].iter().all(|b| succeeded(observed, &b.id)),
                Role::Main | Role::Sidecar => inits_done,
            };
            // A replica that comes back while its old container is still going waits for it.
            if observed.containers.contains_key(&u.id) || observed.removing.contains(&u.id) {
                continue;
            }
            if retries.get(&u.id).is_some_and(|r| r.waiting(now_ms)) {
                continue;
            }
            // Every image of a replica is pulled at once (while its init containers run).
            let image = u.image.as_str();
            if !observed.images.contains(image) {
                if !observed.pulling.contains_key(image) && pulls.insert(image.to_string()) {
                    actions.push(Action::Pull { image: image.to_string() });
                }
            } else if ready_to_start {
                actions.push(Action::Start { replica: name.clone(), id: u.id.clone() });
            }
        }
    }
    actions
}

/// The ids of replica `name`'s containers.
pub fn unit_ids(name: &str, a: &Assignment) -> Vec<String> {
    if !a.spec.is_pod() {
        return vec![name.to_string()];
    }
    a.spec.slots(name).into_iter().map(|u| u.id).collect()
}

/// The status of desired replica `a`: its own container's, told by its others (init containers
/// first: `Init:1/2`, `Init:Error`; then ready only when all are, restarts counted together).
pub fn status(a: &Assignment, observed: &Observed, retries: &Retries) -> ReplicaStatus {
    if !a.spec.is_pod() {
        return container_status(a, &a.replica, &a.spec.image, observed, retries.get(&a.replica));
    }
    let name = a.replica.as_str();
    let units = a.spec.slots(name);
    let inits: Vec<_> = units.iter().filter(|u| matches!(u.role, Role::Init(_))).collect();
    let done = inits.iter().take_while(|u| succeeded(observed, &u.id)).count();
    if let Some(u) = inits.get(done) {
        let mut st = container_status(a, &u.id, u.image, observed, retries.get(&u.id));
        let failing = matches!(st.phase, ReplicaPhase::BackOff | ReplicaPhase::Failed);
        let state = if failing { "Init:Error".to_string() } else { format!("Init:{done}/{}", inits.len()) };
        st.reason = if st.reason.is_empty() {
            format!("{state} (init container {})", u.name)
        } else {
            format!("{state} (init container {}): {}", u.name, st.reason)
        };
        if !failing {
            st.phase = if st.phase == ReplicaPhase::Pulling { ReplicaPhase::Pulling } else { ReplicaPhase::Starting };
        }
        st.ready = false;
        st.replica = name.to_string();
        st.container_id = None;
        st.probes.clear();
        return st;
    }
    let mut st = container_status(a, name, &a.spec.image, observed, retries.get(name));
    for u in units.iter().filter(|u| u.role == Role::Sidecar) {
        let other = container_status(a, &u.id, u.image, observed, retries.get(&u.id));
        st.restarts += other.restarts;
        st.ready &= other.ready;
        if matches!(
            other.phase,
            ReplicaPhase::BackOff | ReplicaPhase::Failed | ReplicaPhase::Pulling | ReplicaPhase::Pending
        ) && st.reason.is_empty()
        {
            st.reason = format!(
                "container {}: {}",
                u.name,
                if other.reason.is_empty() { format!("{:?}", other.phase) } else { other.reason }
            );
        }
        st.detail = st.detail.or(other.detail);
        st.probes.extend(other.probes.into_iter().map(|mut p| {
            p.probe = format!("{}/{}", u.name, p.probe);
            p
        }));
    }
    st
}

/// The status of one container `id` of replica `a` (image `image`), as its replica's.
fn container_status(
    a: &Assignment,
    id: &str,
    image: &bramble_proto::image_ref::ImageRef,
    observed: &Observed,
    retry: Option<&Retry>,
) -> ReplicaStatus {
    let name = &a.replica;
    if let Some(Some(state)) = observed.containers.get(id) {
        return ReplicaStatus { ip: observed.ips.get(name).copied(), ..status_of(name, state) };
    }
    let image = image.as_str();
    if let Some(r) = retry {
        let platform_miss = match &r.error {
            ReconcileError::NoPlatform { image, offered, .. } => {
                Some(PlatformMiss { image: image.clone(), offered: offered.clone() })
            }
            _ => None,
        };
        // Stable text (no countdown), so the report does not change every second.
        let reason = format!("{}; retrying in {}s", r.error, r.delay_ms / 1000);
        return ReplicaStatus { reason, platform_miss, ..ReplicaStatus::new(name, ReplicaPhase::BackOff) };
    }
    if let Some((done, total)) = observed.pulling.get(image) {
        let detail = format!("pulling {image}: {} of {}", human_bytes(*done), human_bytes(*total));
        return ReplicaStatus { detail: Some(detail), ..ReplicaStatus::new(name, ReplicaPhase::Pulling) };
    }
    let phase = if observed.images.contains(image) { ReplicaPhase::Starting } else { ReplicaPhase::Pending };
    ReplicaStatus::new(name, phase)
}

/// A replica's status from its shim's state.
pub fn status_of(replica: &str, s: &ShimState) -> ReplicaStatus {
    let l = &s.lifecycle;
    let mut st = ReplicaStatus {
        restarts: l.restarts,
        container_id: Some(s.id.clone()),
        ready: s.ready,
        probes: s.probes.clone(),
        ..ReplicaStatus::new(replica, ReplicaPhase::Starting)
    };
    if let Some(last) = &l.last_exit {
        st.exit_code = Some(last.code);
        st.finished_ms = Some(last.finished_ms);
        st.started_ms = last.started_ms;
    }
    match &l.phase {
        Phase::Starting => {}
        Phase::Running { started_ms, .. } => {
            st.phase = ReplicaPhase::Running;
            st.started_ms = Some(*started_ms);
        }
        Phase::BackingOff { until_ms, last } => {
            st.phase = ReplicaPhase::BackOff;
            st.exit_code = Some(last.code);
            st.finished_ms = Some(last.finished_ms);
            st.restart_at_ms = Some(*until_ms);
            // Stable text (no countdown: `restart_at_ms` says when), so that the report does not
            // change every second.
            let secs = until_ms.saturating_sub(last.finished_ms).div_ceil(1000);
            st.reason = format!("{}; restarting after {secs}s", how_it_ended(last));
        }
        Phase::Exited { last, stopped } => {
            st.phase = if last.success() { ReplicaPhase::Succeeded } else { ReplicaPhase::Failed };
            st.exit_code = Some(last.code);
            st.finished_ms = Some(last.finished_ms);
            st.reason = if *stopped {
                "stopped".into()
            } else {
                format!("{}; not restarted (restart policy)", how_it_ended(last))
            };
        }
        Phase::Failed { reason, until_ms } => {
            st.phase = ReplicaPhase::BackOff;
            st.restart_at_ms = Some(*until_ms);
            st.reason = format!("cannot start: {reason}");
        }
    }
    st
}

/// `exited with code 1`, `killed: liveness probe failed 3 times: …`, `OOM killed`.
fn how_it_ended(last: &crate::runtime::lifecycle::Exit) -> String {
    match &last.killed_by {
        Some(why) => format!("killed: {why}"),
        None if last.oom_killed => format!("exited with code {} (OOM killed)", last.code),
        None => format!("exited with code {}", last.code),
    }
}

/// The events a status change means (none the first time a replica is seen, but for its phase).
pub fn transitions(old: Option<&ReplicaStatus>, new: &ReplicaStatus) -> Vec<(EventReason, String)> {
    let mut out = Vec::new();
    if let Some(o) = old {
        // Probes: failures in a row are Unhealthy (Kubernetes' event), a kill is Killing.
        for p in &new.probes {
            let before = o.probes.iter().find(|q| q.probe == p.probe);
            // (Fewer failures than last time: it passed in between, a new run of failures.)
            let since = before.map_or(0, |b| b.failures);
            let since = if p.failures < since { 0 } else { since };
            if repeat_worth_an_event(since, p.failures) {
                let mut text = format!("{} probe failed ({}): {}", p.probe, p.action, p.message);
                if p.failures > 1 {
                    text.push_str(&format!(" ({} times in a row)", p.failures));
                }
                out.push((EventReason::Unhealthy, text));
            }
            if p.kills > before.map_or(0, |b| b.kills) {
                out.push((
                    EventReason::Killing,
                    format!("the container failed its {} probe and will be restarted", p.probe),
                ));
            }
        }
        if new.restarts > o.restarts {
            out.push((EventReason::Restarted, format!("container restarted (restart {})", new.restarts)));
        }
    }
    if old.map(|o| o.phase) != Some(new.phase) {
        match new.phase {
            ReplicaPhase::Pulling => {
                // The detail says "pulling IMAGE: …" already.
                out.push((EventReason::Pulling, new.detail.clone().unwrap_or_else(|| "pulling the image".into())))
            }
            ReplicaPhase::Running => out.push((EventReason::Started, "container started".into())),
            ReplicaPhase::BackOff => out.push((EventReason::BackOff, new.reason.clone())),
            ReplicaPhase::Failed => out.push((EventReason::Failed, new.reason.clone())),
            ReplicaPhase::Succeeded => out.push((EventReason::Completed, new.reason.clone())),
            _ => {}
        }
    }
    out
}

/// Whether a run of failures that went from `before` to `now` in a row is worth an event: the 1st,
/// 2nd, 4th, 8th… A probe that keeps failing (a readiness probe every 2 s that never passes) then
/// says so 16 times a day instead of 43,200 — each an event, and a log line on the board and on
/// the leader, that is flash written (BENCHMARKS.md, flash).
pub fn repeat_worth_an_event(before: u32, now: u32) -> bool {
    (before.saturating_add(1)..=now).any(u32::is_power_of_two)
}

/// What to report to a leader that was last sent `sent` (`None`: nothing yet this session):
/// every status the first time, then those that changed; `None` when nothing did.
pub fn status_delta(sent: Option<&Statuses>, now: &Statuses) -> Option<(bool, Vec<ReplicaStatus>)> {
    match sent {
        None => Some((true, now.values().cloned().collect())),
        Some(before) => {
            let changed: Vec<ReplicaStatus> =
                now.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(_, v)| v.clone()).collect();
            (!changed.is_empty()).then_some((false, changed))
        }
    }
}

/// [`PodRules`] of the desired set.
pub fn pod_rules(desired: Option<&Desired>) -> PodRules {
    let control_plane = desired
        .into_iter()
        .flat_map(|d| d.values())
        .filter(|a| a.spec.security.control_plane)
        .map(|a| a.replica.clone())
        .collect();
    PodRules { host_ports: bindings(desired), control_plane }
}

/// The host ports the desired replicas ask for, sorted.
pub fn bindings(desired: Option<&Desired>) -> Vec<Binding> {
    let mut out: Vec<Binding> = desired
        .into_iter()
        .flat_map(|d| d.values())
        .flat_map(|a| {
            // Any container's port: they share the replica's address.
            a.spec.all_ports().filter_map(|p| {
                let (protocol, host, container) = (p.protocol, p.host?.0, p.container.0);
                Some(Binding { protocol, host, container, replica: a.replica.clone() })
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests;
