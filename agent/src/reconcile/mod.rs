//! The agent's reconciler: makes the containers on this board match the desired set the leader
//! sends, level-triggered — every pass looks at what runs and what should, and every action is
//! safe to repeat. The desired set is persisted (it never holds secrets), so with the leader away
//! the board keeps its replicas, across agent restarts too; the shims restart crashed containers
//! on their own.
//!
//! ```text
//! plan.rs        the decisions, pure: plan(desired, observed, retries, now) -> actions; statuses
//! effects.rs     the side effects behind narrow traits (containers, images, network)
//! real.rs        their real implementations; fake.rs their recording fakes
//! reconciler.rs  the state machine: inputs in, one pass (observe, plan, act, report), jobs out
//! mod.rs         this file: the reconciler on its own thread, pulls on a small pool, removals on
//!                threads of their own, everything over bounded channels
//! ```

pub mod effects;
pub mod fake;
pub mod plan;
pub mod real;
pub mod reconciler;

pub use crate::net::ports::{Binding, PodRules};
pub use effects::{Containers, Images, Network, ReconcileError};
pub use plan::Statuses;
pub use reconciler::{Input, Job, Reconciler};

use crate::config::AgentConfig;
use crate::runtime::Runtime;
use bramble_images::registry::RegistryClient;
use bramble_images::rootfs::Rootfses;
use bramble_images::store::ContentStore;
use bramble_proto::model::Event;
use bramble_proto::time::now_ms;
use real::{PodNetwork, ShimContainers, StoreImages};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Inputs waiting for the reconciler (desired sets, finished jobs).
const INPUTS: usize = 64;
/// Pulls waiting for a puller.
const PULL_QUEUE: usize = 16;
/// Pulls at once.
const PULLERS: usize = 2;
/// Events waiting for the session; the oldest are dropped while nobody listens.
const EVENTS: usize = 256;
/// How long a config's reload command may run.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// The session's side of the reconciler.
#[derive(Debug)]
pub struct Handle {
    /// Desired sets from the leader (bounded: send from a blocking context).
    pub inputs: SyncSender<Input>,
    pub status: tokio::sync::watch::Receiver<Statuses>,
    /// Events for the leader.
    pub events: tokio::sync::mpsc::Receiver<Event>,
    pub log_dir: PathBuf,
    /// Host ports to forward into containers.
    pub ports: tokio::sync::watch::Receiver<PodRules>,
    /// The image references in the store.
    pub images: tokio::sync::watch::Receiver<Vec<String>>,
    pub shims_dir: PathBuf,
    pub thread: std::thread::JoinHandle<()>,
    /// When the reconciler's loop last went round (ms since the epoch), for the watchdog.
    pub heartbeat: Arc<std::sync::atomic::AtomicU64>,
    /// The board's network controller, for what the leader says of the network.
    pub network: Option<SyncSender<crate::net::node::NetInput>>,
    /// The latest network view version the controller has applied (to confirm to the leader).
    pub network_applied: Option<tokio::sync::watch::Receiver<u64>>,
    /// Why the board cannot network pods now, as the controller found (`NetworkUnavailable`).
    pub network_problem: Option<tokio::sync::watch::Receiver<Option<bramble_proto::model::NetworkProblem>>>,
    /// Secrets the leader sent for this board's replicas (memory and tmpfs only).
    pub secrets: Arc<crate::secrets::Secrets>,
    /// Configs the leader sent for this board's replicas (the same way, readable by all).
    pub configs: Arc<crate::secrets::Secrets>,
    /// The cluster's registry settings for this board's pulls (memory only).
    pub registries: Arc<crate::registries::Registries>,
    /// The session's connection while there is one: pulls ask peers through it.
    pub peer_slot: crate::peers::Slot,
}

/// Where the agent keeps containers' pieces.
#[derive(Debug, Clone)]
pub struct Paths {
    pub shims: PathBuf,
    pub rootfs: PathBuf,
    pub logs: PathBuf,
    /// Mount points of the secrets' tmpfs (nothing on disk beneath them).
    pub secrets: PathBuf,
    /// Mount points of the configs' tmpfs.
    pub configs: PathBuf,
}

/// Where the shims of the agent with data dir `data_dir` keep what lasts one boot (sockets,
/// `state.json`, OCI bundles, libcontainer's state): `/run/bramble/<data dir, '/' → '-'>/shims`, on
/// the tmpfs every Debian board mounts at `/run`. None of it means anything after a reboot (the
/// agent starts the board's replicas again from `desired.json`), so none of it is written to flash
/// or left half-written by a power cut.
pub fn run_dir(data_dir: &Path) -> PathBuf {
    let name: String = data_dir.to_string_lossy().trim_matches('/').replace('/', "-");
    PathBuf::from("/run/bramble").join(if name.is_empty() { "root".into() } else { name })
}

/// Where shims lived before they moved to [`run_dir`]: kept for shims an older agent started in
/// this boot (an upgrade does not restart containers) until the next reboot empties it.
fn legacy_shims(data_dir: &Path) -> PathBuf {
    data_dir.join("shims")
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        let legacy = legacy_shims(data_dir);
        let in_use = std::fs::read_dir(&legacy).is_ok_and(|mut d| d.next().is_some());
        Paths {
            shims: if in_use { legacy } else { run_dir(data_dir).join("shims") },
            rootfs: data_dir.join("containers"),
            logs: data_dir.join("logs"),
            secrets: data_dir.join("secrets"),
            configs: data_dir.join("configs"),
        }
    }
}

/// What the thread publishes after each pass.
struct Outputs {
    status: tokio::sync::watch::Sender<Statuses>,
    ports: tokio::sync::watch::Sender<PodRules>,
    images: tokio::sync::watch::Sender<Vec<String>>,
    events: tokio::sync::mpsc::Sender<Event>,
}

fn publish<T: PartialEq>(tx: &tokio::sync::watch::Sender<T>, value: T) {
    tx.send_if_modified(|cur| {
        let changed = *cur != value;
        if changed {
            *cur = value;
        }
        changed
    });
}

/// Starts the reconciler thread with the real effects. `shim_bin` is `bramble-shim`.
pub fn spawn(config: &AgentConfig, shim_bin: &Path, network: PodNetwork) -> std::io::Result<Handle> {
    let legacy = legacy_shims(&config.data_dir);
    // Shims of an older agent in the data dir: adopted where they are while they run (this boot);
    // what an earlier boot left there is cleaned up, and then the directory goes.
    let mut adopted_legacy = None;
    if legacy.is_dir() {
        let live = Runtime::new(&legacy, shim_bin).with_cgroup_parent(&config.resources.cgroup_parent).adopt();
        if live.is_empty() {
            let _ = std::fs::remove_dir_all(&legacy);
        } else {
            info!(
                containers = live.len(),
                "shims started by an older agent keep {} until the next reboot moves them to {}",
                legacy.display(),
                run_dir(&config.data_dir).display()
            );
            adopted_legacy = Some(live);
        }
    }
    let paths = Paths::new(&config.data_dir);
    for d in [&paths.shims, &paths.rootfs, &paths.logs] {
        std::fs::create_dir_all(d)?;
    }
    let store = ContentStore::open(&config.images_dir()).map_err(std::io::Error::other)?;
    let runtime = Runtime::new(&paths.shims, shim_bin).with_cgroup_parent(&config.resources.cgroup_parent);
    let legacy_ids = Runtime::new(&legacy, shim_bin).ids();
    let secrets = Arc::new(crate::secrets::Secrets::new(&paths.secrets));
    let configs = Arc::new(crate::secrets::Secrets::configs(&paths.configs));
    let containers = Arc::new(ShimContainers {
        runtime: runtime.clone(),
        roots: Rootfses::new(store.clone(), &paths.rootfs),
        store: store.clone(),
        log_dir: paths.logs.clone(),
        secrets: secrets.clone(),
        configs: configs.clone(),
        volumes: crate::volumes::Volumes::from_config(config),
        host_ports: config.host_port_policy(),
        devices: config.devices.clone(),
    });
    crate::registries::warn_plain_text(&config.images.registries);
    let client = Arc::new(RegistryClient::new(config.images.registries.clone()));
    let registries = Arc::new(crate::registries::Registries::new(client.clone()));
    let peer_slot: crate::peers::Slot = Arc::default();
    let peers = tokio::runtime::Handle::try_current()
        .ok()
        .filter(|_| config.images.peers)
        .map(|rt| Arc::new(crate::peers::LeaderPeers::new(peer_slot.clone(), rt)));
    let images = Arc::new(StoreImages {
        store,
        client,
        unpack: config.images.unpack_options(),
        arch: crate::sysinfo::arch(),
        peers,
    });
    let (inputs, rx) = sync_channel(INPUTS);
    let (status_tx, status) = tokio::sync::watch::channel(Statuses::new());
    let (ev_tx, events) = tokio::sync::mpsc::channel(EVENTS);
    let (ports_tx, ports) = tokio::sync::watch::channel(PodRules::default());
    let (images_tx, images_rx) = tokio::sync::watch::channel(Vec::new());
    let out = Outputs { status: status_tx, ports: ports_tx, images: images_tx, events: ev_tx };
    let pulls = pullers(images.clone(), inputs.clone())?;
    let dir = config.data_dir.clone();
    let done = inputs.clone();
    let heartbeat = Arc::new(std::sync::atomic::AtomicU64::new(now_ms()));
    let beat = heartbeat.clone();
    let thread = std::thread::Builder::new().name("reconciler".into()).spawn(move || {
        // (Shims kept in the legacy directory were adopted above: not twice.)
        let adopted = adopted_legacy.unwrap_or_else(|| runtime.adopt());
        info!(containers = adopted.len(), "adopted the containers already running");
        // Before anything starts: containers whose shim and run directory are gone.
        let known: Vec<String> = runtime.ids().into_iter().chain(legacy_ids).collect();
        let swept = runtime.sweep_orphans(&known);
        if !swept.is_empty() {
            info!(containers = swept.len(), "killed containers found without their shims");
        }
        let network = Arc::new(network);
        let r = Reconciler::new(containers.clone(), images, network.clone(), Some(dir));
        drive(r, &rx, &pulls, &done, (containers, network), &out, &beat);
    })?;
    Ok(Handle {
        inputs,
        status,
        events,
        log_dir: paths.logs,
        ports,
        images: images_rx,
        shims_dir: paths.shims,
        thread,
        heartbeat,
        network: None,
        network_applied: None,
        network_problem: None,
        secrets,
        configs,
        registries,
        peer_slot,
    })
}

/// A small pool of pullers: each takes a pull, does it, and tells the reconciler.
fn pullers(images: Arc<StoreImages>, done: SyncSender<Input>) -> std::io::Result<SyncSender<Job>> {
    let (tx, rx) = sync_channel::<Job>(PULL_QUEUE);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..PULLERS {
        let (rx, images, done) = (rx.clone(), images.clone(), done.clone());
        std::thread::Builder::new().name(format!("pull-{i}")).spawn(move || loop {
            let job = rx.lock().expect("pull queue lock").recv();
            let Ok(Job::Pull { image, progress }) = job else { break };
            let started = Instant::now();
            let result = images.pull(&image, &progress);
            let took_ms = started.elapsed().as_millis() as u64;
            if done.send(Input::Pulled { image: image.to_string(), result, took_ms }).is_err() {
                break;
            }
        })?;
    }
    Ok(tx)
}

/// The reconciler's loop: inputs (or a tick), a pass, its jobs handed out, its outputs published.
fn drive<C: Containers + 'static, I: Images, N: Network + 'static>(
    mut r: Reconciler<C, I, N>,
    rx: &Receiver<Input>,
    pulls: &SyncSender<Job>,
    done: &SyncSender<Input>,
    effects: (Arc<C>, Arc<N>),
    out: &Outputs,
    heartbeat: &std::sync::atomic::AtomicU64,
) {
    loop {
        heartbeat.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        // A replica becoming ready is worth seeing at once (a rollout waits for it); pull progress
        // is worth reporting twice a second.
        let tick = if r.awaiting_readiness_closely(now_ms()) {
            Duration::from_millis(20)
        } else if r.awaiting_readiness(now_ms()) {
            Duration::from_millis(100)
        } else if r.pulling() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        };
        match rx.recv_timeout(tick) {
            Ok(input) => r.input(input, now_ms()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(input) = rx.try_recv() {
            r.input(input, now_ms());
        }
        for job in r.pass(now_ms()) {
            match job {
                Job::Pull { .. } => match pulls.try_send(job) {
                    Ok(()) => {}
                    Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => r.job_refused(&job),
                },
                Job::Remove { id } => remove_in_background(effects.clone(), id, done.clone(), &mut r),
                Job::Reload { id, config, args } => {
                    let (containers, done) = (effects.0.clone(), done.clone());
                    let job = Job::Reload { id: id.clone(), config: config.clone(), args: args.clone() };
                    let spawned = std::thread::Builder::new().name("reload".into()).spawn(move || {
                        let result = containers.exec(&id, args, RELOAD_TIMEOUT);
                        let _ = done.send(Input::Reloaded { id, config, result });
                    });
                    if let Err(e) = spawned {
                        warn!("cannot start a thread to run a config's reload: {e}");
                        r.job_refused(&job);
                    }
                }
                Job::Stop { id, grace } => {
                    let (containers, done) = (effects.0.clone(), done.clone());
                    let job = Job::Stop { id: id.clone(), grace };
                    let spawned = std::thread::Builder::new().name("stop".into()).spawn(move || {
                        let result = containers.stop(&id, grace);
                        let _ = done.send(Input::Stopped { id, result });
                    });
                    if let Err(e) = spawned {
                        warn!("cannot start a thread to stop a container: {e}");
                        r.job_refused(&job);
                    }
                }
            }
        }
        for e in r.take_events() {
            let _ = out.events.try_send(e);
        }
        out.status.send_if_modified(|cur| {
            let changed = cur != r.statuses();
            if changed {
                *cur = r.statuses().clone();
            }
            changed
        });
        publish(&out.ports, r.pod_rules());
        publish(&out.images, r.images());
    }
}

/// Stops and removes a container, then its pod's network, on a thread of its own (it may wait
/// out its grace period), so that the passes go on meanwhile.
fn remove_in_background<C: Containers + 'static, I: Images, N: Network + 'static>(
    (containers, network): (Arc<C>, Arc<N>),
    id: String,
    done: SyncSender<Input>,
    r: &mut Reconciler<C, I, N>,
) {
    let job = Job::Remove { id: id.clone() };
    let spawned = std::thread::Builder::new().name("remove".into()).spawn(move || {
        // The pod's network goes with the replica's own container (its others went first).
        let result = containers.remove(&id).and_then(|()| if id.contains('.') { Ok(()) } else { network.release(&id) });
        let _ = done.send(Input::Removed { id, result });
    });
    if let Err(e) = spawned {
        warn!("cannot start a thread to remove a container: {e}");
        r.job_refused(&job);
    }
}
