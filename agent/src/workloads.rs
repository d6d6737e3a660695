//! The agent's reconciler: makes the containers on this board match the desired set the leader
//! sends, level-triggered — every pass looks at what runs and what should, and every action is
//! safe to repeat. The desired set is persisted (it never holds secrets), so with the leader away
//! the board keeps its replicas, across agent restarts too; the shims restart crashed containers
//! on their own.
//!
//! Runs on its own thread: pulls, unpacking and shims are blocking work.

use crate::config::AgentConfig;
use crate::runtime::build::{container_config, AppOverrides};
use crate::runtime::config::RestartPolicy;
use crate::runtime::lifecycle::Phase;
use crate::runtime::protocol::ShimState;
use crate::runtime::Runtime;
use bramble_images::pull::{self, PullError, PullPolicy, Puller};
use bramble_images::registry::RegistryClient;
use bramble_images::rootfs::Rootfses;
use bramble_images::store::ContentStore;
use bramble_images::unpack::UnpackOptions;
use bramble_images::Progress;
use bramble_proto::manifest::{Protocol, RestartPolicy as AppRestart};
use bramble_proto::model::{Arch, Event, ReplicaPhase};
use bramble_proto::quantity::human_bytes;
use bramble_proto::wire::{Assignment, PlatformMiss, ReplicaStatus};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// What the session tells the reconciler.
#[derive(Debug)]
pub enum Command {
    /// `full`: exactly these replicas; otherwise add/replace `upsert` and drop `remove`.
    Desired { full: bool, upsert: Vec<Assignment>, remove: Vec<String> },
}

pub type Statuses = BTreeMap<String, ReplicaStatus>;

/// The session's side of the reconciler.
#[derive(Debug)]
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    pub status: tokio::sync::watch::Receiver<Statuses>,
    /// Events for the leader; bounded, the oldest dropped while nobody listens.
    pub events: tokio::sync::mpsc::Receiver<Event>,
    pub log_dir: PathBuf,
    /// Host ports to forward into containers.
    pub ports: tokio::sync::watch::Receiver<Vec<crate::ports::Binding>>,
    /// The image references in the store.
    pub images: tokio::sync::watch::Receiver<Vec<String>>,
    pub shims_dir: PathBuf,
    pub thread: std::thread::JoinHandle<()>,
}

const DESIRED_FILE: &str = "desired.json";
/// How long a removed container's shim may take to stop it (its grace period is inside this).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Containers started at once.
const PARALLEL_STARTS: usize = 4;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where the agent keeps containers' pieces.
pub struct Paths {
    pub shims: PathBuf,
    pub rootfs: PathBuf,
    pub logs: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        Paths { shims: data_dir.join("shims"), rootfs: data_dir.join("containers"), logs: data_dir.join("logs") }
    }
}

struct Retry {
    at: Instant,
    delay: Duration,
}

struct Reconciler {
    dir: PathBuf,
    runtime: Runtime,
    store: ContentStore,
    roots: Rootfses,
    client: std::sync::Arc<RegistryClient>,
    unpack: UnpackOptions,
    log_dir: PathBuf,
    /// `None` until known: a set that could not be read never removes anything.
    desired: Option<BTreeMap<String, Assignment>>,
    retry: HashMap<String, Retry>,
    /// Pulls refused because the image offers no platform for this node, per replica.
    platform_misses: HashMap<String, PlatformMiss>,
    /// The pid whose network namespace got its loopback up, per container.
    loopback: HashMap<String, i32>,
    status: Statuses,
    /// Containers being stopped and removed in the background.
    removing: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
    status_tx: tokio::sync::watch::Sender<Statuses>,
    ports_tx: tokio::sync::watch::Sender<Vec<crate::ports::Binding>>,
    images_tx: tokio::sync::watch::Sender<Vec<String>>,
    events: tokio::sync::mpsc::Sender<Event>,
}

/// Starts the reconciler thread. `shim_bin` is the binary that serves `shim --dir`.
pub fn spawn(config: &AgentConfig, shim_bin: &Path) -> std::io::Result<Handle> {
    let paths = Paths::new(&config.data_dir);
    for d in [&paths.shims, &paths.rootfs, &paths.logs] {
        std::fs::create_dir_all(d)?;
    }
    let store = ContentStore::open(&config.images_dir()).map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::channel();
    let (status_tx, status) = tokio::sync::watch::channel(Statuses::new());
    let (ev_tx, events) = tokio::sync::mpsc::channel(256);
    let (ports_tx, ports) = tokio::sync::watch::channel(Vec::new());
    let (images_tx, images) = tokio::sync::watch::channel(Vec::new());
    let dir = config.data_dir.clone();
    let desired = match std::fs::read(dir.join(DESIRED_FILE)) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!("ignoring {}: {e}; nothing is removed until the leader sends the desired set", DESIRED_FILE);
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(BTreeMap::new()),
        Err(e) => {
            warn!("cannot read {}: {e}; nothing is removed until the leader sends the desired set", DESIRED_FILE);
            None
        }
    };
    let mut r = Reconciler {
        dir,
        runtime: Runtime::new(&paths.shims, shim_bin),
        roots: Rootfses::new(store.clone(), &paths.rootfs),
        store,
        client: std::sync::Arc::new(RegistryClient::new(config.images.registries.clone())),
        unpack: UnpackOptions { devices: config.images.devices.into(), ..Default::default() },
        log_dir: paths.logs.clone(),
        desired,
        retry: HashMap::new(),
        loopback: HashMap::new(),
        platform_misses: HashMap::new(),
        status: Statuses::new(),
        removing: Default::default(),
        status_tx,
        ports_tx,
        images_tx,
        events: ev_tx,
    };
    let thread = std::thread::Builder::new().name("reconciler".into()).spawn(move || {
        let adopted = r.runtime.adopt();
        info!(containers = adopted.len(), "adopted the containers already running");
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(cmd) => r.apply(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(cmd) = rx.try_recv() {
                r.apply(cmd);
            }
            r.pass();
        }
    })?;
    Ok(Handle { commands: tx, status, events, log_dir: paths.logs, ports, images, shims_dir: paths.shims, thread })
}

fn overrides(a: &Assignment) -> AppOverrides {
    let s = &a.spec;
    AppOverrides {
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.iter().map(|(k, v)| (k.0.clone(), v.clone())).collect(),
        workdir: s.workdir.clone(),
        user: s.user.clone(),
        cpu_millis: s.resources.cpu.map(|c| c.0),
        memory_bytes: s.resources.memory.map(|m| m.0),
        readonly_rootfs: false,
        restart: match s.restart {
            AppRestart::Always => RestartPolicy::Always,
            AppRestart::OnFailure => RestartPolicy::OnFailure,
            AppRestart::Never => RestartPolicy::Never,
        },
    }
}

/// A replica's status from its shim's state.
fn status_of(replica: &str, s: &ShimState) -> ReplicaStatus {
    let l = &s.lifecycle;
    let mut st = ReplicaStatus {
        restarts: l.restarts,
        container_id: Some(s.id.clone()),
        ..ReplicaStatus::new(replica, ReplicaPhase::Starting)
    };
    if let Some(last) = &l.last_exit {
        st.exit_code = Some(last.code);
        st.finished_ms = Some(last.finished_ms);
    }
    match &l.phase {
        Phase::Starting => {}
        Phase::Running { started_ms, .. } => {
            st.phase = ReplicaPhase::Running;
            st.started_ms = Some(*started_ms);
        }
        Phase::BackingOff { until_ms, last } => {
            st.phase = ReplicaPhase::Failed;
            st.exit_code = Some(last.code);
            st.finished_ms = Some(last.finished_ms);
            // Stable text (no countdown), so that the report does not change every second.
            let secs = until_ms.saturating_sub(last.finished_ms).div_ceil(1000);
            let how = if last.oom_killed { " (OOM killed)".to_string() } else { String::new() };
            st.reason = format!("CrashLoopBackOff: exited with code {}{how}; back-off {secs}s", last.code);
        }
        Phase::Exited { last, stopped } => {
            st.phase = if last.success() { ReplicaPhase::Succeeded } else { ReplicaPhase::Failed };
            st.exit_code = Some(last.code);
            st.finished_ms = Some(last.finished_ms);
            st.reason = if *stopped { "stopped".into() } else { format!("exited with code {}", last.code) };
        }
        Phase::Failed { reason, .. } => {
            st.phase = ReplicaPhase::Failed;
            st.reason = format!("cannot start: {reason}");
        }
    }
    st
}

/// A container id (and directory and cgroup name) for a replica; replica names are DNS labels
/// with a suffix, so they are valid ids as they are.
fn container_id(replica: &str) -> &str {
    replica
}

impl Reconciler {
    fn apply(&mut self, cmd: Command) {
        let Command::Desired { full, upsert, remove } = cmd;
        let mut d = if full { BTreeMap::new() } else { self.desired.clone().unwrap_or_default() };
        for a in upsert {
            d.insert(a.replica.clone(), a);
        }
        for r in remove {
            d.remove(&r);
        }
        if self.desired.as_ref() != Some(&d) {
            let bytes = serde_json::to_vec(&d).expect("desired set serialises");
            if let Err(e) = bramble_transport::pki::write_file_atomic(&self.dir.join(DESIRED_FILE), &bytes, 0o600) {
                warn!("cannot persist the desired set: {e}");
            }
            self.desired = Some(d);
        }
    }

    fn event(&self, replica: &str, reason: &str, message: String) {
        info!(replica, reason, "{message}");
        let _ = self.events.try_send(Event {
            time_ms: now_ms(),
            object: format!("replica/{replica}"),
            reason: reason.into(),
            message,
        });
    }

    fn publish(&mut self, replica: &str, st: ReplicaStatus) {
        let old = self.status.get(replica);
        if old == Some(&st) {
            return;
        }
        let (old_phase, old_restarts) = old.map_or((None, 0), |o| (Some(o.phase), o.restarts));
        if st.restarts > old_restarts && old.is_some() {
            self.event(replica, "Restarted", format!("container restarted (restart {})", st.restarts));
        }
        if old_phase != Some(st.phase) {
            let (reason, message) = match st.phase {
                ReplicaPhase::Pulling => ("Pulling", format!("pulling {}", st.detail.clone().unwrap_or_default())),
                ReplicaPhase::Running => ("Started", "container started".to_string()),
                ReplicaPhase::Failed => ("BackOff", st.reason.clone()),
                ReplicaPhase::Succeeded => ("Completed", st.reason.clone()),
                _ => ("", String::new()),
            };
            if !reason.is_empty() {
                self.event(replica, reason, message);
            }
        }
        self.status.insert(replica.to_string(), st);
        let snapshot = self.status.clone();
        self.status_tx.send_replace(snapshot);
    }

    fn pass(&mut self) {
        let existing: BTreeSet<String> = self.runtime.ids().into_iter().collect();
        if let Some(desired) = &self.desired {
            let wanted: BTreeSet<&str> = desired.keys().map(|k| container_id(k)).collect();
            let extra: Vec<String> = existing.iter().filter(|id| !wanted.contains(id.as_str())).cloned().collect();
            // A replica that comes back while its old container is still going waits for it.
            if !extra.is_empty() {
                self.remove_all(&extra);
            }
        }
        let desired: Vec<Assignment> = self.desired.iter().flat_map(|d| d.values().cloned()).collect();
        let removing = self.removing.lock().expect("removing lock").clone();
        let missing: Vec<&Assignment> = desired
            .iter()
            .filter(|a| {
                let id = container_id(&a.replica);
                !existing.contains(id)
                    && !removing.contains(id)
                    && self.retry.get(&a.replica).is_none_or(|r| Instant::now() >= r.at)
            })
            .collect();
        // Images first (each pulled once, the others find it cached), then the starts, a few at
        // a time: most of a start is waiting on fork and exec.
        let mut ready = Vec::new();
        for a in missing {
            match self.ensure_image(a) {
                Ok(record) => ready.push((a, record)),
                Err(reason) => self.failed(a, reason),
            }
        }
        let queue = std::sync::Mutex::new(ready.iter());
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL_STARTS.min(ready.len()) {
                scope.spawn(|| loop {
                    let Some((a, record)) = queue.lock().expect("queue lock").next() else { break };
                    let r = self.launch(a, record);
                    results.lock().expect("results lock").push((*a, r));
                });
            }
        });
        for (a, r) in results.into_inner().expect("results lock") {
            match r {
                Ok(()) => {
                    self.retry.remove(&a.replica);
                }
                Err(reason) => self.failed(a, reason),
            }
        }
        for a in &desired {
            let id = container_id(&a.replica).to_string();
            if removing.contains(&id) || (self.retry.contains_key(&a.replica) && !self.runtime.dir(&id).0.exists()) {
                continue;
            }
            match self.runtime.state(&id) {
                Ok(s) => {
                    // A fresh network namespace has its loopback down; bring it up once per run.
                    if let Phase::Running { pid, .. } = s.lifecycle.phase {
                        if self.loopback.get(&id) != Some(&pid) {
                            match crate::ports::loopback_up(pid) {
                                Ok(()) => {
                                    self.loopback.insert(id.clone(), pid);
                                }
                                Err(e) => warn!(replica = %a.replica, "cannot bring up the loopback: {e}"),
                            }
                        }
                    }
                    let st = status_of(&a.replica, &s);
                    self.publish(&a.replica, st);
                }
                Err(e) => warn!(replica = %a.replica, "cannot read the container's state: {e}"),
            }
        }
        // Host ports of the desired replicas (the forwarder finds each container when a
        // connection comes).
        let mut ports: Vec<crate::ports::Binding> = self
            .desired
            .iter()
            .flat_map(|d| d.values())
            .flat_map(|a| {
                a.spec.ports.iter().filter(|p| p.protocol == Protocol::Tcp).filter_map(|p| {
                    Some(crate::ports::Binding {
                        host: p.host?.0,
                        container: p.container.0,
                        replica: a.replica.clone(),
                    })
                })
            })
            .collect();
        ports.sort();
        self.ports_tx.send_if_modified(|cur| {
            let changed = *cur != ports;
            if changed {
                *cur = ports;
            }
            changed
        });
        // What the store holds (imports and GC change it too, so it is looked at every pass).
        if let Ok(records) = self.store.images() {
            let mut refs: Vec<String> = records.into_iter().map(|r| r.reference).collect();
            refs.sort();
            self.images_tx.send_if_modified(|cur| {
                let changed = *cur != refs;
                if changed {
                    *cur = refs;
                }
                changed
            });
        }
        // Forget the status of what is no longer desired.
        if let Some(d) = &self.desired {
            let before = self.status.len();
            self.status.retain(|k, _| d.contains_key(k));
            self.loopback.retain(|k, _| d.contains_key(k));
            if self.status.len() != before {
                let snapshot = self.status.clone();
                self.status_tx.send_replace(snapshot);
            }
        }
    }

    /// Records a failed start and when to try again (backing off up to a minute).
    fn failed(&mut self, a: &Assignment, reason: String) {
        let delay =
            self.retry.get(&a.replica).map_or(Duration::from_secs(1), |r| (r.delay * 2).min(Duration::from_secs(60)));
        self.retry.insert(a.replica.clone(), Retry { at: Instant::now() + delay, delay });
        let st = ReplicaStatus {
            reason: format!("{reason}; retrying in {}s", delay.as_secs()),
            platform_miss: self.platform_misses.remove(&a.replica),
            ..ReplicaStatus::new(&a.replica, ReplicaPhase::Failed)
        };
        warn!(replica = %a.replica, "{}", st.reason);
        self.publish(&a.replica, st);
    }

    /// Stops and removes containers, each on its own thread (each may wait out its grace period)
    /// so that the passes go on meanwhile.
    fn remove_all(&mut self, ids: &[String]) {
        for id in ids {
            if !self.removing.lock().expect("removing lock").insert(id.clone()) {
                continue; // already on its way out
            }
            self.retry.remove(id);
            let (runtime, roots, logs) = (self.runtime.clone(), self.roots.clone(), self.log_dir.clone());
            let (removing, events, id) = (self.removing.clone(), self.events.clone(), id.clone());
            let spawned = std::thread::Builder::new().name("remove".into()).spawn(move || {
                if let Err(e) = runtime.remove(&id, REMOVE_TIMEOUT) {
                    warn!(id, "cannot remove the container: {e}");
                }
                if let Err(e) = roots.remove(&id) {
                    warn!(id, "cannot remove the root filesystem: {e}");
                }
                remove_logs(&logs, &id);
                removing.lock().expect("removing lock").remove(&id);
                info!(id, "container stopped and removed");
                let _ = events.try_send(Event {
                    time_ms: now_ms(),
                    object: format!("replica/{id}"),
                    reason: "Stopped".into(),
                    message: "container stopped and removed: no longer assigned to this node".into(),
                });
            });
            if let Err(e) = spawned {
                warn!("cannot start a thread to remove {}: {e}", ids.join(", "));
                self.removing.lock().expect("removing lock").clear();
            }
        }
    }

    /// Pulls the replica's image if the store lacks it, reporting progress.
    fn ensure_image(&mut self, a: &Assignment) -> Result<bramble_images::ImageRecord, String> {
        let image = &a.spec.image;
        let cached = self.store.image(image.as_str()).ok().flatten().is_some();
        let progress = Progress::default();
        if !cached {
            let st = self.pending(a, ReplicaPhase::Pulling, Some(image.as_str().to_string()));
            self.publish(&a.replica, st);
        }
        let started = Instant::now();
        let (store, client, unpack) = (self.store.clone(), self.client.clone(), self.unpack.clone());
        let pull = |progress: &Progress| {
            let puller = Puller { store: &store, client: &client, arch: Arch::host(), unpack };
            puller.pull(image, PullPolicy::IfNotPresent, progress)
        };
        let miss = |e: &PullError| match e {
            PullError::NoPlatform { offered, .. } => Some(offered.clone()),
            PullError::WrongPlatform { platform, .. } => Some(vec![platform.clone()]),
            _ => None,
        };
        let pulled = if cached {
            pull(&progress)
        } else {
            // The pull runs on a thread of its own; its progress is reported twice a second.
            std::thread::scope(|scope| {
                let job = scope.spawn(|| pull(&progress));
                let mut reported = Instant::now();
                while !job.is_finished() {
                    std::thread::sleep(Duration::from_millis(10));
                    if reported.elapsed() >= Duration::from_millis(500) {
                        reported = Instant::now();
                        let (done, total) = progress.totals();
                        let detail = format!("pulling {image}: {} of {}", human_bytes(done), human_bytes(total));
                        let st = self.pending(a, ReplicaPhase::Pulling, Some(detail));
                        self.publish(&a.replica, st);
                    }
                }
                job.join().unwrap_or_else(|_| {
                    Err(PullError::BadImage { image: image.to_string(), reason: "the pull panicked".into() })
                })
            })
        };
        let record = pulled.map_err(|e| {
            if let Some(offered) = miss(&e) {
                // The leader learns what the image offers and places the replica elsewhere.
                self.platform_misses.insert(a.replica.clone(), PlatformMiss { image: image.to_string(), offered });
            }
            format!("pulling {image}: {e}")
        })?;
        if !cached {
            let msg = format!("pulled {image} in {} ms", started.elapsed().as_millis());
            self.event(&a.replica, "Pulled", msg);
        }
        let st = self.pending(a, ReplicaPhase::Starting, None);
        self.publish(&a.replica, st);
        Ok(record)
    }

    /// Prepares the root filesystem and starts the shim (only shared access: runs in parallel).
    fn launch(&self, a: &Assignment, record: &bramble_images::ImageRecord) -> Result<(), String> {
        let id = container_id(&a.replica).to_string();
        let image_config = pull::config(&self.store, record).map_err(|e| e.to_string())?;
        // Whatever a failed earlier attempt left is replaced.
        let _ = self.roots.remove(&id);
        let rootfs = self.roots.prepare(&id, record).map_err(|e| format!("preparing the root filesystem: {e}"))?;
        let hostname: String = a.replica.chars().take(63).collect();
        let cc = container_config(&id, &hostname, rootfs.path, &image_config.config, &overrides(a), &self.log_dir)
            .inspect_err(|_| {
                let _ = self.roots.remove(&id);
            })?;
        if let Err(e) = self.runtime.create(&cc) {
            let _ = self.runtime.remove(&id, REMOVE_TIMEOUT);
            let _ = self.roots.remove(&id);
            return Err(e.to_string());
        }
        Ok(())
    }

    fn pending(&self, a: &Assignment, phase: ReplicaPhase, detail: Option<String>) -> ReplicaStatus {
        ReplicaStatus { detail, ..ReplicaStatus::new(&a.replica, phase) }
    }
}

/// Removes a container's log and its rotated files.
fn remove_logs(dir: &Path, id: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let base = format!("{id}.log");
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == base || name.strip_prefix(&base).is_some_and(|rest| rest.starts_with('.')) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
