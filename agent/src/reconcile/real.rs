//! The real effects: containers are shims over libcontainer with overlay root filesystems; images
//! come from the content store and registries; the network is each container's namespace.

use super::effects::{Containers, Images, Network, PodNet, ReconcileError};
use crate::net::node::NetInput;
use crate::net::pods::Pods;
use crate::runtime::build::{container_config, with_network, AppOverrides};
use crate::runtime::config::{BindMount, ContainerConfig, FileMount, RestartPolicy};
use crate::runtime::probe::{ProbeAction, ProbeConfig, ProbeKind};
use crate::runtime::protocol::ShimState;
use crate::runtime::Runtime;
use crate::volumes::VolumeError;
use bramble_images::pull::{self, PullError, PullPolicy, Puller};
use bramble_images::registry::RegistryClient;
use bramble_images::rootfs::Rootfses;
use bramble_images::store::ContentStore;
use bramble_images::unpack::UnpackOptions;
use bramble_images::Progress;
use bramble_proto::device::Device;
use bramble_proto::image_ref::ImageRef;
use bramble_proto::manifest::{RestartPolicy as AppRestart, VolumeKind};
use bramble_proto::model::Arch;
use bramble_proto::wire::Assignment;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a removed container's shim may take to stop it (its grace period is inside this).
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Containers as shims (one per container), each with a root filesystem from the store.
#[derive(Debug, Clone)]
pub struct ShimContainers {
    pub runtime: Runtime,
    pub roots: Rootfses,
    pub store: ContentStore,
    pub log_dir: PathBuf,
    /// Secrets the leader sent, and their tmpfs per replica.
    pub secrets: std::sync::Arc<crate::secrets::Secrets>,
    /// Configs the leader sent, and their tmpfs per replica.
    pub configs: std::sync::Arc<crate::secrets::Secrets>,
    /// Local volumes and host paths.
    pub volumes: crate::volumes::Volumes,
    /// The host ports this board allows.
    pub host_ports: crate::net::ports::HostPortPolicy,
    /// The devices this board offers apps.
    pub devices: crate::config::DevicesConfig,
}

/// The board's devices `a` asks for, found now; refused when one is not there.
pub fn devices_for(config: &crate::config::DevicesConfig, a: &Assignment) -> Result<Vec<Device>, String> {
    if a.spec.devices.is_empty() {
        return Ok(Vec::new());
    }
    let have = config.scan();
    let missing = bramble_proto::device::missing(&a.spec.devices, &have);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|r| r.to_string()).collect();
        return Err(format!(
            "the board has no device {} (unplugged, or not offered in its [devices] classes)",
            list.join(", ")
        ));
    }
    Ok(have.into_iter().filter(|d| a.spec.devices.iter().any(|r| r.matches(d))).collect())
}

/// The container's user gets each device's group, so a user other than root opens it as the
/// board's own users in that group do.
fn device_groups(cc: &mut ContainerConfig, devices: &[Device]) {
    for d in devices {
        if d.gid != 0 && d.gid != cc.gid && !cc.additional_gids.contains(&d.gid) {
            cc.additional_gids.push(d.gid);
        }
    }
}

/// Refuses a replica whose host ports the board keeps: outside its range, Bramble's own, or
/// one a process on the board listens on.
pub fn check_host_ports(policy: &crate::net::ports::HostPortPolicy, a: &Assignment) -> Result<(), String> {
    let mut listening = None;
    for (port, protocol) in a.spec.board_ports() {
        policy.check(protocol, port)?;
        if listening.get_or_insert_with(crate::net::ports::listening).contains(&(protocol, port)) {
            let proto = if protocol == bramble_proto::manifest::Protocol::Udp { "udp" } else { "tcp" };
            return Err(format!("host port {port}/{proto} is taken: a process on this board listens on it"));
        }
    }
    Ok(())
}

/// The app's volumes in `cc`: tmpfs sizes, local volumes made (owned by the container's user)
/// and host paths checked. A replica of several containers (`pod`: its name) shares its tmpfs
/// volumes: one tmpfs each on the board, bound into every container.
fn volumes(
    v: &crate::volumes::Volumes,
    a: &Assignment,
    pod: Option<&str>,
    cc: &mut ContainerConfig,
) -> Result<(), VolumeError> {
    for (i, vol) in a.spec.volumes.iter().enumerate() {
        let source = match (vol.kind, pod) {
            (VolumeKind::Tmpfs, Some(replica)) => {
                v.prepare_shared_tmpfs(replica, i, vol.size_bytes(), cc.uid, cc.gid)?
            }
            (VolumeKind::Tmpfs, None) => {
                cc.tmpfs.push((vol.path.clone(), vol.size_bytes()));
                continue;
            }
            (VolumeKind::Local, _) => {
                let name = vol.name.as_ref().map(|n| n.as_str()).unwrap_or_default();
                v.prepare_local(name, cc.uid, cc.gid)?
            }
            (VolumeKind::Host, _) => v.check_host(vol.host_path.as_deref().unwrap_or_default())?,
        };
        cc.binds.push(BindMount { source, destination: vol.path.clone(), read_only: vol.read_only });
    }
    Ok(())
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
            // A job's run is never restarted in place: the leader starts another.
            _ if s.is_job() => RestartPolicy::Never,
            AppRestart::Always => RestartPolicy::Always,
            AppRestart::OnFailure => RestartPolicy::OnFailure,
            AppRestart::Never => RestartPolicy::Never,
        },
        stop_grace_ms: s.stop_grace().as_millis() as u64,
        stop_signal: s.stop_signal.unwrap_or_default().0,
        probes: probes(s),
    }
}

/// The app's probes, resolved for the shim (ports as numbers; the manifest checked they exist).
fn probes(s: &bramble_proto::manifest::AppSpec) -> Vec<ProbeConfig> {
    let kinds = [
        (ProbeKind::Startup, &s.probes.startup),
        (ProbeKind::Liveness, &s.probes.liveness),
        (ProbeKind::Readiness, &s.probes.readiness),
    ];
    kinds
        .into_iter()
        .filter_map(|(kind, p)| {
            let p = p.as_ref()?;
            let action = if let Some(args) = &p.exec {
                ProbeAction::Exec { args: args.clone() }
            } else if let Some(h) = &p.http {
                ProbeAction::Http { port: s.tcp_port(&h.port).ok()?, path: h.path.clone() }
            } else {
                ProbeAction::Tcp { port: s.tcp_port(&p.tcp.as_ref()?.port).ok()? }
            };
            Some(ProbeConfig {
                kind,
                action,
                initial_delay_ms: p.initial_delay().as_millis() as u64,
                period_ms: p.period().as_millis() as u64,
                timeout_ms: p.timeout().as_millis() as u64,
                failure_threshold: p.failure_threshold(),
                success_threshold: p.success_threshold(),
            })
        })
        .collect()
}

impl Containers for ShimContainers {
    fn ids(&self) -> Vec<String> {
        self.runtime.ids()
    }

    fn state(&self, id: &str) -> Option<ShimState> {
        self.runtime.state(id).ok()
    }

    fn start(&self, a: &Assignment, net: &PodNet, pod: Option<&str>) -> Result<(), ReconcileError> {
        // A container's id (and directory and cgroup name) is its replica's name, or
        // `<replica>.<container>` for a replica's other containers: DNS labels and a dot.
        let id = a.replica.as_str();
        check_host_ports(&self.host_ports, a).map_err(ReconcileError::Config)?;
        let devices = devices_for(&self.devices, a).map_err(ReconcileError::Config)?;
        let image = a.spec.image.as_str();
        let record = self
            .store
            .image(image)
            .map_err(|e| ReconcileError::Runtime(e.to_string()))?
            .ok_or_else(|| ReconcileError::NotPulled(image.to_string()))?;
        let image_config = pull::config(&self.store, &record).map_err(|e| ReconcileError::Config(e.to_string()))?;
        // Whatever a failed earlier attempt left is replaced.
        let _ = self.roots.remove(id);
        let rootfs = self.roots.prepare(id, &record).map_err(|e| ReconcileError::Rootfs(e.to_string()))?;
        let hostname: String = bramble_proto::manifest::replica_of(id).chars().take(63).collect();
        let cc = container_config(id, &hostname, rootfs.path, &image_config.config, &overrides(a), &self.log_dir)
            .map_err(|e| {
                let _ = self.roots.remove(id);
                ReconcileError::Config(e)
            })?;
        let mut cc = with_network(cc, net.ip, net.netns.as_deref(), &net.resolv_conf, &net.hosts);
        cc.unconfined = a.spec.security.seccomp == bramble_proto::manifest::SeccompProfile::Unconfined;
        device_groups(&mut cc, &devices);
        cc.devices = devices;
        cc.cap_add = a.spec.security.cap_add.iter().map(|c| c.as_str().to_string()).collect();
        cc.cap_drop = a.spec.security.cap_drop.iter().map(|c| c.as_str().to_string()).collect();
        if let Err(e) = volumes(&self.volumes, a, pod, &mut cc) {
            let _ = self.roots.remove(id);
            return Err(ReconcileError::Config(e.to_string()));
        }
        let names: Vec<String> = a.spec.secret_names().into_iter().collect();
        match self.secrets.prepare(id, &names, cc.uid, cc.gid) {
            Ok(Some(dir)) => {
                cc.secret_env =
                    a.spec.secret_env_refs().map(|(v, s, k)| (v.to_string(), dir.join(s).join(k))).collect();
                if let Some((v, _)) = cc.secret_env.iter().find(|(_, p)| !p.exists()) {
                    let r =
                        a.spec.secret_env.iter().find(|(k, _)| k.0 == *v).map(|(_, r)| r.clone()).unwrap_or_default();
                    let _ = self.roots.remove(id);
                    self.secrets.release(id);
                    return Err(ReconcileError::Config(format!("secret variable {v}: secret {r:?} has no such key")));
                }
                cc.files.push(FileMount { source: dir, destination: "/run/secrets".into() });
            }
            Ok(None) => {}
            Err(e) => {
                let _ = self.roots.remove(id);
                return Err(ReconcileError::Config(e.to_string()));
            }
        }
        let names: Vec<String> = a.spec.configs.iter().map(|c| c.name.as_str().to_string()).collect();
        match self.configs.prepare(id, &names, cc.uid, cc.gid) {
            Ok(Some(dir)) => {
                for c in &a.spec.configs {
                    cc.files.push(FileMount { source: dir.join(c.name.as_str()), destination: c.path.clone() });
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = self.roots.remove(id);
                self.secrets.release(id);
                return Err(ReconcileError::Config(e.to_string()));
            }
        }
        if let Err(e) = self.runtime.create(&cc) {
            let _ = self.runtime.remove(id, REMOVE_TIMEOUT);
            let _ = self.roots.remove(id);
            self.secrets.release(id);
            self.configs.release(id);
            return Err(ReconcileError::Runtime(e.to_string()));
        }
        Ok(())
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), ReconcileError> {
        self.runtime.stop(id, Some(grace)).map_err(|e| ReconcileError::Runtime(e.to_string()))
    }

    fn exec(&self, id: &str, args: Vec<String>, timeout: Duration) -> Result<(i32, String), ReconcileError> {
        match self.runtime.exec(id, args, Vec::new(), timeout) {
            Ok((_, output, true)) => Err(ReconcileError::Runtime(format!("timed out after {timeout:?}: {output}"))),
            Ok((code, output, false)) => Ok((code, output)),
            Err(e) => Err(ReconcileError::Runtime(e.to_string())),
        }
    }

    fn remove(&self, id: &str) -> Result<(), ReconcileError> {
        self.runtime.remove(id, REMOVE_TIMEOUT).map_err(|e| ReconcileError::Runtime(e.to_string()))?;
        self.secrets.release(id);
        self.configs.release(id);
        self.roots.remove(id).map_err(|e| ReconcileError::Rootfs(e.to_string()))?;
        remove_logs(&self.log_dir, id);
        // The replica's own container goes last: its shared volumes with it.
        if !id.contains('.') {
            self.volumes.release_shared_tmpfs(id);
        }
        Ok(())
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

/// Images from the content store, pulled from registries.
#[derive(Debug, Clone)]
pub struct StoreImages {
    pub store: ContentStore,
    pub client: Arc<RegistryClient>,
    pub unpack: UnpackOptions,
    pub arch: Arch,
    /// The cluster's other boards, asked first (none: outside a runtime, in tests).
    pub peers: Option<Arc<crate::peers::LeaderPeers>>,
}

impl Images for StoreImages {
    fn present(&self) -> BTreeSet<String> {
        self.store.images().map(|v| v.into_iter().map(|r| r.reference).collect()).unwrap_or_default()
    }

    fn pull(&self, image: &ImageRef, progress: &Progress) -> Result<String, ReconcileError> {
        let puller = Puller {
            store: &self.store,
            client: &self.client,
            arch: self.arch.clone(),
            unpack: self.unpack.clone(),
            peers: self.peers.as_deref().map(|p| p as &dyn bramble_images::Peers),
        };
        let name = image.to_string();
        let mut sources = bramble_images::Sources::new();
        let pulled = puller.pull_from(image, PullPolicy::IfNotPresent, progress, &mut sources);
        pulled.map(|r| bramble_images::pull::summarize_sources(&r.layers, &sources)).map_err(|e| match e {
            PullError::NoPlatform { ref offered, .. } => {
                ReconcileError::NoPlatform { image: name, offered: offered.clone(), message: e.to_string() }
            }
            PullError::WrongPlatform { ref platform, .. } => {
                ReconcileError::NoPlatform { image: name, offered: vec![platform.clone()], message: e.to_string() }
            }
            e => ReconcileError::Pull { image: name, message: e.to_string() },
        })
    }
}

/// Pods on the board's network (`crate::net`); the board's controller hears of every change (its
/// rules follow pods' addresses).
#[derive(Debug)]
pub struct PodNetwork {
    pub pods: Arc<Pods>,
    pub changed: std::sync::mpsc::SyncSender<NetInput>,
}

impl PodNetwork {
    fn tell(&self) {
        // Full: the controller has news pending anyway.
        let _ = self.changed.try_send(NetInput::PodsChanged);
    }
}

impl Network for PodNetwork {
    fn prepare(&self, replica: &str, host: bool) -> Result<PodNet, ReconcileError> {
        let net = if host { self.pods.prepare_host(replica) } else { self.pods.prepare(replica) };
        let net = net.map_err(|e| ReconcileError::Network(e.to_string()))?;
        self.tell();
        Ok(net)
    }

    fn release(&self, replica: &str) -> Result<(), ReconcileError> {
        self.pods.release(replica).map_err(|e| ReconcileError::Network(e.to_string()))?;
        self.tell();
        Ok(())
    }

    fn ip(&self, replica: &str) -> Option<std::net::Ipv4Addr> {
        self.pods.ip(replica)
    }
}
