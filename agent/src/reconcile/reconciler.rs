//! The reconciler's state machine: inputs in (desired sets, finished pulls and removals, whether
//! a leader is there), background jobs out (pulls, removals, stops), and in between one pass —
//! observe, [`plan`], act, report. Cut off from every leader for the fence the last one set, it
//! stops its jobs' runs (the leader replaces them only once that has surely happened: a job's
//! run never runs twice at once). It does no waiting of its own, so a test drives it step by
//! step with fakes and a manual clock; `mod.rs` drives it on a thread with the real effects.

use super::effects::{Containers, Images, Network, ReconcileError};
use super::plan::{self, plan, transitions, Action, Desired, Observed, Retries, Retry, Statuses};
use bramble_images::Progress;
use bramble_proto::image_ref::ImageRef;
use bramble_proto::manifest::replica_of;
use bramble_proto::model::{Event, EventReason};
use bramble_proto::wire::Assignment;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The file that keeps the desired set across agent restarts (it never holds secrets).
pub const DESIRED_FILE: &str = "desired.json";
/// The fence the last leader set (milliseconds), kept so that an agent restarted while cut off
/// still fences.
pub const FENCE_FILE: &str = "fence";
/// Containers started at once: most of a start is waiting on fork and exec.
pub const PARALLEL_STARTS: usize = 4;

/// What the reconciler is told.
#[derive(Debug)]
pub enum Input {
    /// `full`: exactly these replicas; otherwise add/replace `upsert` and drop `remove`.
    Desired { full: bool, upsert: Vec<Assignment>, remove: Vec<String> },
    /// A pull ended.
    /// A pull ended: where its layers came from, or why it failed.
    Pulled { image: String, result: Result<String, ReconcileError>, took_ms: u64 },
    /// A removal ended.
    Removed { id: String, result: Result<(), ReconcileError> },
    /// A session with a leader is up (`fence`: what its welcome set), or ended (`fence` none:
    /// the last one's stays).
    Leader { connected: bool, fence: Option<Duration> },
    /// A stop (a fenced run) ended.
    Stopped { id: String, result: Result<(), ReconcileError> },
    /// Configs' files were rewritten in place: (container id, config) each.
    ConfigsChanged { changed: Vec<(String, String)> },
    /// A config's reload command ended: its exit code and output.
    Reloaded { id: String, config: String, result: Result<(i32, String), ReconcileError> },
}

/// Work that waits (on the network, on a grace period): done off the reconciler's thread, its
/// end comes back as an [`Input`].
#[derive(Debug, Clone)]
pub enum Job {
    Pull {
        image: ImageRef,
        progress: Progress,
    },
    Remove {
        id: String,
    },
    /// SIGTERM, then SIGKILL after `grace`; the container stays, with its exit.
    Stop {
        id: String,
        grace: Duration,
    },
    /// A config's `reload` command, run in the container after its files changed.
    Reload {
        id: String,
        config: String,
        args: Vec<String>,
    },
}

/// How long after a container starts the reconciler looks for it to become ready ten times a
/// second (then once a second, as for everything else).
pub const WATCH_READINESS_MS: u64 = 30_000;
/// For this long after a start a container not yet ready is looked at more often still: most
/// servers answer their first probe within it.
pub const WATCH_READINESS_CLOSELY_MS: u64 = 2_000;

pub struct Reconciler<C, I, N> {
    containers: Arc<C>,
    images: Arc<I>,
    network: Arc<N>,
    /// Where [`DESIRED_FILE`] lives (none: not persisted).
    dir: Option<PathBuf>,
    /// `None` until known: a set that could not be read never removes anything.
    desired: Option<Desired>,
    observed: Observed,
    retries: Retries,
    statuses: Statuses,
    progress: HashMap<String, Progress>,
    /// The app of every container this reconciler has known, for its events.
    apps: HashMap<String, String>,
    events: Vec<Event>,
    parallel_starts: usize,
    /// Whether a leader session is up, since when it is not, and the fence.
    contact: Contact,
    /// Jobs' runs stopped by the fence (never stopped twice).
    fenced: BTreeSet<String>,
    /// Configs' reload commands to hand out with the next pass's jobs.
    reloads: Vec<Job>,
}

/// What the reconciler knows of the leader, for the fence.
#[derive(Debug, Clone, Default)]
struct Contact {
    connected: bool,
    /// Cut off since (none: not yet known, counted from the first pass: an agent starts cut off).
    since_ms: Option<u64>,
    fence: Option<Duration>,
}

impl<C: Containers, I: Images, N: Network> Reconciler<C, I, N> {
    /// A reconciler that keeps its desired set in `dir` (and reads it back from there).
    pub fn new(containers: Arc<C>, images: Arc<I>, network: Arc<N>, dir: Option<PathBuf>) -> Self {
        let desired = match &dir {
            Some(d) => load_desired(&d.join(DESIRED_FILE)),
            None => Some(Desired::new()),
        };
        let apps = desired.iter().flatten().map(|(k, a)| (k.clone(), a.app.clone())).collect();
        let fence = dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join(FENCE_FILE)).ok())
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        Reconciler {
            containers,
            images,
            network,
            dir,
            desired,
            observed: Observed::default(),
            retries: Retries::new(),
            statuses: Statuses::new(),
            progress: HashMap::new(),
            apps,
            events: Vec::new(),
            parallel_starts: PARALLEL_STARTS,
            contact: Contact { fence, ..Contact::default() },
            reloads: Vec::new(),
            fenced: BTreeSet::new(),
        }
    }

    /// Starts one container at a time (for deterministic tests).
    pub fn with_parallel_starts(mut self, n: usize) -> Self {
        self.parallel_starts = n.max(1);
        self
    }

    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_ref()
    }

    pub fn statuses(&self) -> &Statuses {
        &self.statuses
    }

    /// The host ports of the desired replicas, and which may reach the cluster's own ports.
    pub fn pod_rules(&self) -> crate::net::ports::PodRules {
        plan::pod_rules(self.desired.as_ref())
    }

    /// The image references in the store, as last seen.
    pub fn images(&self) -> Vec<String> {
        self.observed.images.iter().cloned().collect()
    }

    /// Whether pulls are in flight (their progress is worth reporting often).
    pub fn pulling(&self) -> bool {
        !self.observed.pulling.is_empty()
    }

    /// Whether a container started in the last [`WATCH_READINESS_MS`] runs but is not ready yet:
    /// the moment it becomes ready is worth seeing soon (a rollout waits for it).
    pub fn awaiting_readiness(&self, now_ms: u64) -> bool {
        self.awaiting_within(now_ms, WATCH_READINESS_MS)
    }

    /// The same within [`WATCH_READINESS_CLOSELY_MS`] of its start.
    pub fn awaiting_readiness_closely(&self, now_ms: u64) -> bool {
        self.awaiting_within(now_ms, WATCH_READINESS_CLOSELY_MS)
    }

    fn awaiting_within(&self, now_ms: u64, within_ms: u64) -> bool {
        self.statuses.values().any(|s| {
            s.phase == bramble_proto::model::ReplicaPhase::Running
                && !s.ready
                && s.started_ms.is_some_and(|t| now_ms.saturating_sub(t) < within_ms)
        })
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// An event about container `id`: its replica's, saying which container when it is not the
    /// replica's own.
    fn event(&mut self, id: &str, reason: EventReason, message: String, now_ms: u64) {
        info!(container = id, %reason, "{message}");
        let replica = replica_of(id);
        let message = match id.split_once('.') {
            Some((_, c)) => format!("container {c}: {message}"),
            None => message,
        };
        let app = self.apps.get(replica).cloned().unwrap_or_default();
        self.events.push(Event::replica(now_ms, &app, replica, reason, message));
    }

    pub fn input(&mut self, input: Input, now_ms: u64) {
        match input {
            Input::Desired { full, upsert, remove } => self.set_desired(full, upsert, remove),
            Input::Pulled { image, result, took_ms } => self.pulled(&image, result, took_ms, now_ms),
            Input::Removed { id, result } => {
                self.observed.removing.remove(&id);
                self.observed.ips.remove(&id);
                match result {
                    Ok(()) => {
                        let msg = "container stopped and removed: no longer assigned to this node".to_string();
                        self.event(&id, EventReason::Stopped, msg, now_ms);
                    }
                    Err(e) => warn!(id, "cannot remove the container: {e}"),
                }
                if !id.contains('.') && !self.desired.as_ref().is_some_and(|d| d.contains_key(&id)) {
                    self.apps.remove(&id);
                }
            }
            Input::Leader { connected: true, fence } => {
                self.contact.connected = true;
                self.contact.since_ms = None;
                if fence != self.contact.fence {
                    self.contact.fence = fence;
                    self.persist_fence();
                }
            }
            Input::Leader { connected: false, fence: _ } => {
                if self.contact.connected || self.contact.since_ms.is_none() {
                    self.contact.since_ms = Some(now_ms);
                }
                self.contact.connected = false;
            }
            Input::Stopped { id, result } => {
                if let Err(e) = result {
                    warn!(id, "cannot stop the fenced run: {e}");
                    // Tried again next pass.
                    self.fenced.remove(&id);
                }
            }
            Input::ConfigsChanged { changed } => {
                // The app's own container (the replica's name) runs the reload; not its others.
                for (id, config) in changed {
                    let Some(a) = self.desired.as_ref().and_then(|d| d.get(&id)) else { continue };
                    let Some(m) = a.spec.configs.iter().find(|m| m.name.as_str() == config) else { continue };
                    if !m.reload.is_empty() {
                        self.reloads.push(Job::Reload { id, config, args: m.reload.clone() });
                    }
                }
            }
            Input::Reloaded { id, config, result } => {
                let (reason, message) = match result {
                    Ok((0, _)) => (EventReason::Reloaded, format!("config {config} changed: reloaded")),
                    Ok((code, output)) => {
                        let output: String = output.trim().chars().take(200).collect();
                        (EventReason::ReloadFailed, format!("config {config} changed: reload exited {code}: {output}"))
                    }
                    Err(e) => (EventReason::ReloadFailed, format!("config {config} changed: cannot run reload: {e}")),
                };
                self.event(&id, reason, message, now_ms);
            }
        }
    }

    fn persist_fence(&self) {
        let Some(dir) = &self.dir else { return };
        let ms = self.contact.fence.map_or(0, |f| f.as_millis() as u64);
        if let Err(e) =
            bramble_proto::fsutil::write_file_atomic(&dir.join(FENCE_FILE), ms.to_string().as_bytes(), 0o600)
        {
            warn!("cannot keep the leader's fence: {e}");
        }
    }

    /// Cut off from every leader for the fence: the jobs' runs that still run stop (the leader
    /// gives each a new run elsewhere once it is sure of it).
    fn fence(&mut self, now_ms: u64) -> Vec<Job> {
        let (Some(fence), false) = (self.contact.fence, self.contact.connected) else { return Vec::new() };
        let since = *self.contact.since_ms.get_or_insert(now_ms);
        if now_ms < since + fence.as_millis() as u64 {
            return Vec::new();
        }
        let Some(desired) = &self.desired else { return Vec::new() };
        let running: Vec<(String, Duration)> = desired
            .iter()
            .filter(|(_, a)| a.spec.is_job())
            .flat_map(|(name, a)| plan::unit_ids(name, a).into_iter().map(|id| (id, a.spec.stop_grace())))
            .filter(|(id, _)| !self.fenced.contains(id))
            .filter(|(id, _)| {
                let state = self.observed.containers.get(id).and_then(|s| s.as_ref());
                state.is_some_and(|s| matches!(s.lifecycle.phase, crate::runtime::lifecycle::Phase::Running { .. }))
            })
            .collect();
        let mut jobs = Vec::new();
        for (id, grace) in running {
            let why = format!(
                "stopped: no leader for {}s, the fence its last leader set; the job runs it again elsewhere",
                (now_ms - since) / 1000
            );
            self.event(&id, EventReason::Stopped, why, now_ms);
            self.fenced.insert(id.clone());
            jobs.push(Job::Stop { id, grace });
        }
        jobs
    }

    fn set_desired(&mut self, full: bool, upsert: Vec<Assignment>, remove: Vec<String>) {
        let mut d = if full { Desired::new() } else { self.desired.clone().unwrap_or_default() };
        for a in upsert {
            self.apps.insert(a.replica.clone(), a.app.clone());
            d.insert(a.replica.clone(), a);
        }
        for r in remove {
            d.remove(&r);
        }
        if self.desired.as_ref() == Some(&d) {
            return;
        }
        if let Some(dir) = &self.dir {
            let bytes = serde_json::to_vec(&d).expect("desired set serialises");
            if let Err(e) = bramble_proto::fsutil::write_file_atomic(&dir.join(DESIRED_FILE), &bytes, 0o600) {
                warn!("cannot persist the desired set: {e}");
            }
        }
        self.desired = Some(d);
    }

    /// Containers that wait for `image` (desired, not made yet).
    fn waiting_for(&self, image: &str) -> Vec<String> {
        let d = self.desired.iter().flatten();
        d.flat_map(|(k, a)| a.spec.slots(k))
            .filter(|u| u.image.as_str() == image && !self.observed.containers.contains_key(&u.id))
            .map(|u| u.id)
            .collect()
    }

    fn pulled(&mut self, image: &str, result: Result<String, ReconcileError>, took_ms: u64, now_ms: u64) {
        self.observed.pulling.remove(image);
        self.progress.remove(image);
        let waiting = self.waiting_for(image);
        match result {
            Ok(from) => {
                self.observed.images.insert(image.to_string());
                let from = if from.is_empty() { String::new() } else { format!(" ({from})") };
                for r in waiting {
                    self.retries.remove(&r);
                    self.event(&r, EventReason::Pulled, format!("pulled {image} in {took_ms} ms{from}"), now_ms);
                }
            }
            Err(e) => {
                warn!(image, "{e}");
                for r in waiting {
                    let retry = Retry::after(self.retries.get(&r), e.clone(), now_ms);
                    self.retries.insert(r, retry);
                }
            }
        }
    }

    /// One pass: observe, plan, act, report. Returns the work to do in the background.
    pub fn pass(&mut self, now_ms: u64) -> Vec<Job> {
        self.observe();
        let actions = plan(self.desired.as_ref(), &self.observed, &self.retries, now_ms);
        let mut jobs = self.fence(now_ms);
        jobs.append(&mut self.reloads);
        let mut starts = Vec::new();
        for action in actions {
            match action {
                Action::Remove { id } => {
                    self.observed.removing.insert(id.clone());
                    self.retries.remove(&id);
                    jobs.push(Job::Remove { id });
                }
                Action::Pull { image } => jobs.extend(self.pull(&image)),
                Action::Start { replica, id } => starts.push((replica, id)),
                Action::Stop { id } => {
                    if self.fenced.insert(id.clone()) {
                        let grace = self.grace_of(&id);
                        let why = "stopped: the job's own container has ended".to_string();
                        self.event(&id, EventReason::Stopped, why, now_ms);
                        jobs.push(Job::Stop { id, grace });
                    }
                }
            }
        }
        self.start_all(&starts, now_ms);
        self.report(now_ms);
        jobs
    }

    /// Marks a pull as in flight and makes its job.
    fn pull(&mut self, image: &str) -> Option<Job> {
        let reference = self
            .desired
            .iter()
            .flatten()
            .flat_map(|(k, a)| a.spec.slots(k))
            .map(|u| u.image)
            .find(|i| i.as_str() == image)?
            .clone();
        let progress = Progress::default();
        self.progress.insert(image.to_string(), progress.clone());
        self.observed.pulling.insert(image.to_string(), (0, 0));
        Some(Job::Pull { image: reference, progress })
    }

    /// The job could not be handed over (its queue is full): it is planned again next pass.
    pub fn job_refused(&mut self, job: &Job) {
        match job {
            Job::Pull { image, .. } => {
                self.observed.pulling.remove(image.as_str());
                self.progress.remove(image.as_str());
            }
            Job::Remove { id } => {
                self.observed.removing.remove(id);
            }
            Job::Stop { id, .. } => {
                self.fenced.remove(id);
            }
            Job::Reload { id, config, .. } => {
                let message = format!("config {config} changed: cannot run reload now (no thread)");
                self.event(id, EventReason::ReloadFailed, message, bramble_proto::time::now_ms());
            }
        }
    }

    fn observe(&mut self) {
        let ids = self.containers.ids();
        self.observed.containers = ids.into_iter().map(|id| (id.clone(), self.containers.state(&id))).collect();
        self.observed.images = self.images.present();
        for (image, p) in &self.progress {
            self.observed.pulling.insert(image.clone(), p.totals());
        }
        let ids: Vec<String> = self.observed.containers.keys().cloned().collect();
        self.observed.ips = ids.into_iter().filter_map(|id| Some((id.clone(), self.network.ip(&id)?))).collect();
    }

    /// The stop grace of container `id`'s replica.
    fn grace_of(&self, id: &str) -> Duration {
        let d = self.desired.as_ref().and_then(|d| d.get(replica_of(id)));
        d.map_or(bramble_proto::manifest::STOP_GRACE, |a| a.spec.stop_grace())
    }

    /// Starts containers, a few at a time; failures wait for a retry. Each is started as its
    /// own assignment (its id, its spec) in its replica's pod network.
    fn start_all(&mut self, starts: &[(String, String)], now_ms: u64) {
        let Some(desired) = &self.desired else { return };
        let todo: Vec<(String, Assignment, bool)> = starts
            .iter()
            .filter_map(|(replica, id)| {
                let a = desired.get(replica)?;
                if id == replica && !a.spec.is_pod() {
                    return Some((replica.clone(), a.clone(), false));
                }
                let u = a.spec.units(replica).into_iter().find(|u| &u.id == id)?;
                let (app, revision) = (a.app.clone(), a.revision.clone());
                Some((replica.clone(), Assignment { replica: u.id, app, revision, spec: Arc::new(u.spec) }, true))
            })
            .collect();
        let queue = std::sync::Mutex::new(todo.iter());
        let results = std::sync::Mutex::new(Vec::new());
        let (containers, network) = (&self.containers, &self.network);
        std::thread::scope(|scope| {
            for _ in 0..self.parallel_starts.min(todo.len()) {
                scope.spawn(|| loop {
                    let Some((replica, a, pod)) = queue.lock().expect("queue lock").next() else { break };
                    // The pod's network first: the process starts with its address and DNS.
                    let pod = pod.then_some(replica.as_str());
                    let started = std::time::Instant::now();
                    let r = network.prepare(replica, a.spec.host_network).and_then(|net| {
                        let prepared = started.elapsed();
                        let r = containers.start(a, &net, pod);
                        tracing::debug!(
                            container = a.replica,
                            "started in {:.1} ms: network {:.1} ms, container {:.1} ms",
                            started.elapsed().as_secs_f64() * 1e3,
                            prepared.as_secs_f64() * 1e3,
                            (started.elapsed() - prepared).as_secs_f64() * 1e3
                        );
                        r
                    });
                    results.lock().expect("results lock").push((replica.clone(), a.replica.clone(), r));
                });
            }
        });
        let mut results = results.into_inner().expect("results lock");
        results.sort_by(|a, b| a.1.cmp(&b.1));
        for (replica, id, r) in results {
            match r {
                Ok(()) => {
                    self.retries.remove(&id);
                    let state = self.containers.state(&id);
                    if let Some(ip) = self.network.ip(&replica) {
                        self.observed.ips.insert(replica.clone(), ip);
                    }
                    self.observed.containers.insert(id, state);
                }
                Err(e) => {
                    warn!(container = id, "{e}");
                    let retry = Retry::after(self.retries.get(&id), e, now_ms);
                    self.retries.insert(id, retry);
                }
            }
        }
    }

    /// Every desired replica's status; changes become events.
    fn report(&mut self, now_ms: u64) {
        let Some(desired) = self.desired.clone() else { return };
        for (name, a) in &desired {
            let st = plan::status(a, &self.observed, &self.retries);
            let old = self.statuses.get(name);
            if old == Some(&st) {
                continue;
            }
            for (reason, message) in transitions(old, &st) {
                self.event(name, reason, message, now_ms);
            }
            self.statuses.insert(name.clone(), st);
        }
        self.statuses.retain(|k, _| desired.contains_key(k));
        self.fenced.retain(|k| desired.contains_key(replica_of(k)));
        self.retries.retain(|k, _| desired.contains_key(replica_of(k)));
    }
}

fn load_desired(path: &std::path::Path) -> Option<Desired> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!("ignoring {}: {e}; nothing is removed until the leader sends the desired set", path.display());
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Desired::new()),
        Err(e) => {
            warn!("cannot read {}: {e}; nothing is removed until the leader sends the desired set", path.display());
            None
        }
    }
}
