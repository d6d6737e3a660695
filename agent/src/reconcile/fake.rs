//! Recording fakes of the reconciler's effects, for unit tests and the simulated cluster. The
//! fake containers keep the real [`Lifecycle`] (restart policy and backoff) on a clock the test
//! moves, as shims do on the board.

use super::effects::{Containers, Images, Network, PodNet, ReconcileError};
use crate::runtime::config::RestartPolicy;
use crate::runtime::lifecycle::{BackoffPolicy, Exit, Lifecycle, Phase};
use crate::runtime::protocol::ShimState;
use bramble_images::Progress;
use bramble_proto::image_ref::ImageRef;
use bramble_proto::manifest::RestartPolicy as AppRestart;
use bramble_proto::model::{Arch, Platform};
use bramble_proto::time::Clock;
use bramble_proto::wire::Assignment;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// What a fake was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(String),
    Remove(String),
    Stop(String),
    Exec(String, Vec<String>),
}

#[derive(Debug)]
struct Container {
    lifecycle: Lifecycle,
    app: String,
    image: String,
}

#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, Container>,
    next_pid: i32,
    calls: Vec<Call>,
    /// Replicas whose start fails, with why.
    failing: HashMap<String, String>,
    /// Images whose containers run but never pass readiness.
    unready: BTreeSet<String>,
}

/// Containers in memory, run by the real lifecycle on the given clock.
#[derive(Debug)]
pub struct FakeContainers {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl FakeContainers {
    pub fn new(clock: Arc<dyn Clock>) -> FakeContainers {
        FakeContainers { clock, state: Mutex::new(State { next_pid: 100, ..Default::default() }) }
    }

    /// What a shim does on its own: restarts what its backoff allows.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        let mut g = self.state.lock().expect("fake lock");
        let State { containers, next_pid, .. } = &mut *g;
        for c in containers.values_mut() {
            if c.lifecycle.can_start(now) {
                *next_pid += 1;
                let _ = c.lifecycle.started(*next_pid, now);
            }
        }
    }

    /// The container's process exits with `code`; returns whether it was running.
    pub fn crash(&self, id: &str, code: i32) -> bool {
        let now = self.clock.now_ms();
        let mut g = self.state.lock().expect("fake lock");
        let Some(c) = g.containers.get_mut(id) else { return false };
        let exit = Exit { code, signal: None, oom_killed: false, finished_ms: now, killed_by: None, started_ms: None };
        c.lifecycle.exited(exit).is_ok()
    }

    /// Every container with its pid, if it runs.
    pub fn running(&self) -> BTreeMap<String, Option<i32>> {
        let g = self.state.lock().expect("fake lock");
        g.containers
            .iter()
            .map(|(id, c)| {
                let pid = match c.lifecycle.phase {
                    Phase::Running { pid, .. } => Some(pid),
                    _ => None,
                };
                (id.clone(), pid)
            })
            .collect()
    }

    /// The app of every container.
    pub fn apps(&self) -> BTreeMap<String, String> {
        self.state.lock().expect("fake lock").containers.iter().map(|(k, c)| (k.clone(), c.app.clone())).collect()
    }

    pub fn lifecycle(&self, id: &str) -> Option<Lifecycle> {
        self.state.lock().expect("fake lock").containers.get(id).map(|c| c.lifecycle.clone())
    }

    /// Makes the start of `replica` fail with `why` (until [`FakeContainers::heal_start`]).
    pub fn fail_start(&self, replica: &str, why: &str) {
        self.state.lock().expect("fake lock").failing.insert(replica.into(), why.into());
    }

    /// Containers of `image` run but are never ready (a readiness probe that never passes).
    pub fn never_ready(&self, image: &str) {
        self.state.lock().expect("fake lock").unready.insert(image.into());
    }

    pub fn heal_start(&self, replica: &str) {
        self.state.lock().expect("fake lock").failing.remove(replica);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("fake lock").calls.clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        self.state.lock().expect("fake lock").calls.clear();
    }
}

impl Containers for FakeContainers {
    fn ids(&self) -> Vec<String> {
        self.state.lock().expect("fake lock").containers.keys().cloned().collect()
    }

    fn state(&self, id: &str) -> Option<ShimState> {
        self.tick();
        let g = self.state.lock().expect("fake lock");
        let c = g.containers.get(id)?;
        Some(ShimState {
            id: id.into(),
            shim_pid: 1,
            protocol: crate::runtime::protocol::SHIM_PROTOCOL,
            version: String::new(),
            boot_id: "sim".into(),
            lifecycle: c.lifecycle.clone(),
            stats: None,
            ready: matches!(c.lifecycle.phase, Phase::Running { .. }) && !g.unready.contains(&c.image),
            probes: Vec::new(),
        })
    }

    fn start(&self, a: &Assignment, _net: &PodNet, _pod: Option<&str>) -> Result<(), ReconcileError> {
        let now = self.clock.now_ms();
        let mut g = self.state.lock().expect("fake lock");
        g.calls.push(Call::Start(a.replica.clone()));
        if let Some(why) = g.failing.get(&a.replica) {
            return Err(ReconcileError::Runtime(why.clone()));
        }
        if g.containers.contains_key(&a.replica) {
            return Err(ReconcileError::Runtime(format!("container {} already exists", a.replica)));
        }
        let policy = match a.spec.restart {
            // A job's runs are never restarted in place (as `real.rs`).
            _ if a.spec.is_job() => RestartPolicy::Never,
            AppRestart::Always => RestartPolicy::Always,
            AppRestart::OnFailure => RestartPolicy::OnFailure,
            AppRestart::Never => RestartPolicy::Never,
        };
        let mut lifecycle = Lifecycle::new(policy, BackoffPolicy::default());
        g.next_pid += 1;
        let pid = g.next_pid;
        let _ = lifecycle.started(pid, now);
        let image = a.spec.image.to_string();
        g.containers.insert(a.replica.clone(), Container { lifecycle, app: a.app.clone(), image });
        Ok(())
    }

    /// The process ends on SIGTERM at once (143), and is not restarted.
    fn stop(&self, id: &str, _grace: std::time::Duration) -> Result<(), ReconcileError> {
        let now = self.clock.now_ms();
        let mut g = self.state.lock().expect("fake lock");
        g.calls.push(Call::Stop(id.into()));
        let Some(c) = g.containers.get_mut(id) else {
            return Err(ReconcileError::Runtime(format!("no container {id}")));
        };
        c.lifecycle.stop();
        if matches!(c.lifecycle.phase, Phase::Running { .. }) {
            let exit = Exit {
                code: 143,
                signal: Some(15),
                oom_killed: false,
                finished_ms: now,
                killed_by: None,
                started_ms: None,
            };
            let _ = c.lifecycle.exited(exit);
        }
        Ok(())
    }

    /// Exits 0 in a running container (`["false"]`: 1, with output); none: an error.
    fn exec(
        &self,
        id: &str,
        args: Vec<String>,
        _timeout: std::time::Duration,
    ) -> Result<(i32, String), ReconcileError> {
        let mut g = self.state.lock().expect("fake lock");
        g.calls.push(Call::Exec(id.into(), args.clone()));
        match g.containers.get(id) {
            Some(c) if matches!(c.lifecycle.phase, Phase::Running { .. }) => {
                Ok(if args.first().map(String::as_str) == Some("false") {
                    (1, "it failed".into())
                } else {
                    (0, String::new())
                })
            }
            _ => Err(ReconcileError::Runtime(format!("container {id} is not running"))),
        }
    }

    fn remove(&self, id: &str) -> Result<(), ReconcileError> {
        let mut g = self.state.lock().expect("fake lock");
        g.calls.push(Call::Remove(id.into()));
        g.containers.remove(id);
        Ok(())
    }
}

/// An image store in memory: pulls succeed at once, unless the image offers no platform for the
/// board's arch.
#[derive(Debug)]
pub struct FakeImages {
    arch: Arch,
    present: Mutex<BTreeSet<String>>,
    /// Images that offer only these platforms (others offer every one).
    platforms: Mutex<HashMap<String, Vec<Platform>>>,
    pulls: Mutex<Vec<String>>,
}

impl FakeImages {
    pub fn new(arch: Arch) -> FakeImages {
        FakeImages { arch, present: Mutex::default(), platforms: Mutex::default(), pulls: Mutex::default() }
    }

    /// `image` offers only `platforms`.
    pub fn offer(&self, image: &str, platforms: Vec<Platform>) {
        self.platforms.lock().expect("fake lock").insert(image.into(), platforms);
    }

    pub fn pulls(&self) -> Vec<String> {
        self.pulls.lock().expect("fake lock").clone()
    }
}

impl Images for FakeImages {
    fn present(&self) -> BTreeSet<String> {
        self.present.lock().expect("fake lock").clone()
    }

    fn pull(&self, image: &ImageRef, _progress: &Progress) -> Result<String, ReconcileError> {
        let name = image.as_str().to_string();
        self.pulls.lock().expect("fake lock").push(name.clone());
        if let Some(offered) = self.platforms.lock().expect("fake lock").get(&name) {
            if Platform::choose(offered, &self.arch).is_none() {
                let message = format!("image {name} has no variant for this node ({})", self.arch);
                return Err(ReconcileError::NoPlatform { image: name, offered: offered.clone(), message });
            }
        }
        self.present.lock().expect("fake lock").insert(name);
        Ok(String::new())
    }
}

/// Pod networks in memory: each pod gets the next address of a subnet, kept until released.
#[derive(Debug)]
pub struct FakeNetwork {
    subnet: bramble_proto::network::Cidr,
    pods: Mutex<BTreeMap<String, std::net::Ipv4Addr>>,
    /// Pods on the host network, at the gateway.
    host: Mutex<BTreeMap<String, std::net::Ipv4Addr>>,
}

impl FakeNetwork {
    pub fn new(subnet: bramble_proto::network::Cidr) -> FakeNetwork {
        FakeNetwork { subnet, pods: Mutex::default(), host: Mutex::default() }
    }

    /// Every pod's address.
    pub fn pods(&self) -> BTreeMap<String, std::net::Ipv4Addr> {
        self.pods.lock().expect("fake lock").clone()
    }
}

impl Default for FakeNetwork {
    fn default() -> Self {
        FakeNetwork::new("10.42.0.0/24".parse().expect("a subnet"))
    }
}

impl Network for FakeNetwork {
    fn prepare(&self, replica: &str, host: bool) -> Result<PodNet, ReconcileError> {
        let dir = std::path::PathBuf::from("/fake/pods").join(replica);
        if host {
            // The board's own network: its bridge address, the subnet's first.
            let ip = self.subnet.gateway();
            self.host.lock().expect("fake lock").insert(replica.to_string(), ip);
            return Ok(PodNet { netns: None, ip, resolv_conf: dir.join("resolv.conf"), hosts: dir.join("hosts") });
        }
        let mut g = self.pods.lock().expect("fake lock");
        let ip = match g.get(replica) {
            Some(ip) => *ip,
            None => {
                let used: BTreeSet<_> = g.values().copied().collect();
                let ip = (2..self.subnet.size() - 1)
                    .filter_map(|i| self.subnet.nth(i))
                    .find(|ip| !used.contains(ip))
                    .ok_or_else(|| ReconcileError::Network(format!("pod subnet {} is full", self.subnet)))?;
                g.insert(replica.to_string(), ip);
                ip
            }
        };
        Ok(PodNet {
            netns: Some(dir.join("netns")),
            ip,
            resolv_conf: dir.join("resolv.conf"),
            hosts: dir.join("hosts"),
        })
    }

    fn release(&self, replica: &str) -> Result<(), ReconcileError> {
        self.pods.lock().expect("fake lock").remove(replica);
        self.host.lock().expect("fake lock").remove(replica);
        Ok(())
    }

    fn ip(&self, replica: &str) -> Option<std::net::Ipv4Addr> {
        let pod = self.pods.lock().expect("fake lock").get(replica).copied();
        pod.or_else(|| self.host.lock().expect("fake lock").get(replica).copied())
    }
}
