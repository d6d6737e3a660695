//! `[[app]]`: ports, security, volumes, resources, placement, probes, stop signal, restart
//! policy, rolling updates, and the checks that span its fields.

use super::PathPart::{Index, Key};
use super::*;
use crate::image_ref::ImageRef;
use crate::names::{check_dns_label, check_label_key, check_label_value, Name};
use crate::quantity::{Cpu, HumanDuration, Memory};
use serde::de;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default)]
    pub name: Option<Name>,
    /// The port the container listens on.
    pub container: Port,
    /// A port on the board forwarded to the container.
    #[serde(default)]
    pub host: Option<Port>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// `security = { seccomp = "unconfined", control_plane = true }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySpec {
    /// `default`: Docker's default seccomp profile; `unconfined`: none (debuggers, 32-bit
    /// binaries of another ABI, programs that need refused syscalls).
    #[serde(default)]
    pub seccomp: SeccompProfile,
    /// Its pods may reach the cluster's own ports on every board (the leaders' QUIC port, etcd,
    /// the metrics listener), as a Prometheus running as an app must.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control_plane: bool,
    /// Capabilities beyond Docker's default set (`["NET_ADMIN"]`): admins only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<CapName>,
    /// Capabilities taken from the default set (`["NET_RAW"]`, or `["ALL"]`): anyone may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<CapName>,
}

/// The Linux capabilities, by the name after `CAP_`.
pub const CAPABILITIES: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETGID",
    "SETFCAP",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// A capability's name as the kernel has it after `CAP_` (`NET_ADMIN`), or `ALL` (in `cap_drop`);
/// written with or without `CAP_`, in any case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CapName(String);

impl CapName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for CapName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("CAP_").unwrap_or(&up);
        if name == "ALL" || CAPABILITIES.contains(&name) {
            Ok(CapName(name.to_string()))
        } else {
            Err(format!(
                "expected a Linux capability such as \"NET_ADMIN\" or \"SYS_RAWIO\" (or \"ALL\" to drop), found {s:?}"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for CapName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl SecuritySpec {
    pub fn is_default(&self) -> bool {
        *self == SecuritySpec::default()
    }

    /// What in it needs the admin role, in words (none: a deployer may apply it).
    pub fn privileged(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.cap_add.is_empty() {
            out.push("security.cap_add");
        }
        if self.seccomp == SeccompProfile::Unconfined {
            out.push("security.seccomp = \"unconfined\"");
        }
        if self.control_plane {
            out.push("security.control_plane = true");
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompProfile {
    #[default]
    Default,
    Unconfined,
}

/// A volume mounted into every replica of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// `tmpfs`: memory, per replica, gone when its container stops (charged to its memory).
    /// `local`: a named directory the agent keeps under its data dir, across container and agent
    /// restarts and app updates; the replica stays on its board. `host`: a path on the board.
    #[serde(rename = "type")]
    pub kind: VolumeKind,
    /// Where it is mounted in the container (absolute).
    pub path: String,
    /// The most it may hold (tmpfs; default 64Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Memory>,
    /// The local volume's name on the board (apps that name the same volume share it there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// The directory on the board (host volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// Host volumes: the node label (`key` or `key=value`) of the boards that have `host_path`;
    /// replicas are placed only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Tmpfs,
    Local,
    Host,
}

/// The size of a tmpfs volume that names none.
pub const DEFAULT_TMPFS_SIZE: u64 = 64 << 20;

impl VolumeSpec {
    pub fn size_bytes(&self) -> u64 {
        self.size.map_or(DEFAULT_TMPFS_SIZE, |m| m.0)
    }

    /// The fields its type needs and those it must not have: `(field, message)`.
    fn check_kind(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let kind = match self.kind {
            VolumeKind::Tmpfs => "tmpfs",
            VolumeKind::Local => "local",
            VolumeKind::Host => "host",
        };
        let mut not_for = |field: &'static str, set: bool| {
            if set {
                out.push((field, format!("`{field}` is not used by a {kind} volume")));
            }
        };
        not_for("size", self.kind != VolumeKind::Tmpfs && self.size.is_some());
        not_for("name", self.kind != VolumeKind::Local && self.name.is_some());
        not_for("host_path", self.kind != VolumeKind::Host && self.host_path.is_some());
        not_for("node_label", self.kind != VolumeKind::Host && self.node_label.is_some());
        match self.kind {
            VolumeKind::Tmpfs => {}
            VolumeKind::Local if self.name.is_none() => {
                out.push(("type", "a local volume needs a `name` (its directory on the board)".into()))
            }
            VolumeKind::Local => {}
            VolumeKind::Host => {
                match self.host_path.as_deref() {
                    None => out.push(("type", "a host volume needs a `host_path` (a directory on the board)".into())),
                    Some(p) => {
                        if let Err(e) = crate::hostpath::check(p, &[]) {
                            out.push(("host_path", e.to_string()));
                        }
                    }
                }
                match self.node_label.as_deref() {
                    None => out.push((
                        "type",
                        "a host volume needs a `node_label` (`key` or `key=value`) naming the boards that have the path"
                            .into(),
                    )),
                    Some(l) => {
                        let (k, v) = l.split_once('=').unwrap_or((l, ""));
                        if let Err(e) = check_label_key(k).and_then(|_| check_label_value(v)) {
                            out.push(("node_label", e.to_string()));
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(default)]
    pub cpu: Option<Cpu>,
    #[serde(default)]
    pub memory: Option<Memory>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[serde(default)]
    pub value: Option<String>,
    /// None tolerates every effect.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub node_selector: Labels,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// At most this many replicas of the app on one node.
    #[serde(default)]
    pub max_per_node: Option<Replicas>,
    /// A replica with a local volume may be replaced on another board when its board is lost
    /// (it starts there with an empty volume). Otherwise it waits for its board.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_move: bool,
}

/// `GET path` on the replica's address; a 2xx or 3xx answer is a success (redirects are not
/// followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    #[serde(default = "root_path")]
    pub path: String,
    /// One of the app's TCP ports: its number or its name.
    pub port: PortTarget,
}

fn root_path() -> String {
    "/".to_string()
}

/// A TCP connection to the replica's address is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// One of the app's TCP ports: its number or its name.
    pub port: PortTarget,
}

/// Kubernetes' probe defaults.
pub const PROBE_PERIOD: Duration = Duration::from_secs(10);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub const PROBE_FAILURE_THRESHOLD: u32 = 3;
pub const PROBE_SUCCESS_THRESHOLD: u32 = 1;

/// A health check. Exactly one of `exec`, `http` and `tcp` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
    #[serde(default)]
    pub initial_delay: Option<HumanDuration>,
    #[serde(default)]
    pub period: Option<HumanDuration>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub failure_threshold: Option<Threshold>,
    #[serde(default)]
    pub success_threshold: Option<Threshold>,
}

impl Probe {
    pub fn period(&self) -> Duration {
        self.period.map_or(PROBE_PERIOD, |d| d.0)
    }
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(PROBE_TIMEOUT, |d| d.0)
    }
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay.map_or(Duration::ZERO, |d| d.0)
    }
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.map_or(PROBE_FAILURE_THRESHOLD, |t| t.0)
    }
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.map_or(PROBE_SUCCESS_THRESHOLD, |t| t.0)
    }
    /// The port an http or tcp probe connects to, resolved against the app's ports.
    pub fn port(&self, app: &AppSpec) -> Option<Result<u16, String>> {
        let target = self.http.as_ref().map(|h| &h.port).or(self.tcp.as_ref().map(|t| &t.port))?;
        Some(app.tcp_port(target))
    }
}

/// Liveness restarts a container that fails it; readiness decides whether a replica receives
/// traffic; a startup probe holds both back until it has passed once (for slow starters).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    #[serde(default)]
    pub liveness: Option<Probe>,
    #[serde(default)]
    pub readiness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
}

impl Probes {
    /// Each probe that is set, with its name.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &Probe)> {
        [("startup", &self.startup), ("liveness", &self.liveness), ("readiness", &self.readiness)]
            .into_iter()
            .filter_map(|(k, p)| Some((k, p.as_ref()?)))
    }
}

/// A signal a container is stopped with: `SIGTERM`, `TERM`, `SIGQUIT`, `SIGINT`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct StopSignal(pub i32);

/// The signals a container may ask to be stopped with, by name and number.
const STOP_SIGNALS: &[(&str, i32)] =
    &[("HUP", 1), ("INT", 2), ("QUIT", 3), ("KILL", 9), ("USR1", 10), ("USR2", 12), ("TERM", 15), ("WINCH", 28)];

impl StopSignal {
    pub fn name(&self) -> &'static str {
        STOP_SIGNALS.iter().find(|(_, n)| *n == self.0).map_or("TERM", |(s, _)| s)
    }
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal(15)
    }
}

impl From<StopSignal> for String {
    fn from(s: StopSignal) -> String {
        format!("SIG{}", s.name())
    }
}

impl<'de> Deserialize<'de> for StopSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bare = s.strip_prefix("SIG").unwrap_or(&s);
        match STOP_SIGNALS.iter().find(|(n, _)| *n == bare) {
            Some((_, n)) => Ok(StopSignal(*n)),
            None => {
                let names: Vec<String> = STOP_SIGNALS.iter().map(|(n, _)| format!("SIG{n}")).collect();
                Err(de::Error::custom(format!("expected one of {}, found {s:?}", names.join(", "))))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// How many replicas an app has: `replicas` of them, placed where they fit best, or one on every
/// board that matches its placement (and has its devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppMode {
    #[default]
    Replicated,
    /// One replica per matching board: made when a board joins or starts to match, removed when
    /// it leaves or stops matching; rolled one board at a time (`max_unavailable`, no surge).
    /// Cordoned boards keep theirs.
    EveryBoard,
    /// A job (`[[job]]`): runs to completion `completions` times, `parallelism` at a time; a
    /// failed run is retried as a new run (up to `backoff_limit`), never restarted in place.
    Job,
}

impl AppMode {
    pub fn is_default(&self) -> bool {
        *self == AppMode::Replicated
    }
}

/// How a new revision replaces the old one: new replicas first (at most `max_surge` above the
/// count), old ones removed as new ones are ready (at most `max_unavailable` below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStrategy {
    #[serde(default = "one_step")]
    pub max_surge: Step,
    #[serde(default)]
    pub max_unavailable: Step,
    /// A new replica counts as available once it has been ready this long (default 0 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready: Option<HumanDuration>,
    /// A rollout that makes no progress for this long has failed (default 10 m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<HumanDuration>,
    /// A failed rollout goes back to the previous revision (default true); otherwise it stops
    /// where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
}

/// The default progress deadline of a rollout.
pub const PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

impl UpdateStrategy {
    pub fn min_ready(&self) -> Duration {
        self.min_ready.map_or(Duration::ZERO, |d| d.0)
    }
    pub fn progress_deadline(&self) -> Duration {
        self.progress_deadline.map_or(PROGRESS_DEADLINE, |d| d.0)
    }
    pub fn auto_rollback(&self) -> bool {
        self.auto_rollback.unwrap_or(true)
    }
}

fn one_step() -> Step {
    Step(1)
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            max_surge: Step(1),
            max_unavailable: Step(0),
            min_ready: None,
            progress_deadline: None,
            auto_rollback: None,
        }
    }
}

/// A long-running workload as the user declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Unset only in a cron job's `[cronjob.job]` (its jobs are named after it).
    #[serde(default = "Name::unnamed", skip_serializing_if = "Name::is_unnamed")]
    pub name: Name,
    pub image: ImageRef,
    /// How many replicas a drain leaves ready at least, while it moves them off a board (a
    /// count or `"50%"`; default: 1 for an app of more than one replica, else 0). The autoscaler
    /// never goes below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<MinAvailable>,
    /// `"every-board"`: one replica on each matching board instead of `replicas`.
    #[serde(default, skip_serializing_if = "AppMode::is_default")]
    pub mode: AppMode,
    /// Labels of the app (`-l tier=web` selects it); changing them rolls nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's cmd.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// Names of secrets whose keys become files in `/run/secrets/<NAME>/<KEY>`.
    #[serde(default)]
    pub secrets: Vec<Name>,
    /// Environment variables from secrets: `DB_PASSWORD = "db/password"` (secret/key). Updating
    /// such a secret rolls the app (an environment cannot change under a running process).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<EnvName, String>,
    #[serde(default)]
    pub replicas: Replicas,
    #[serde(default)]
    pub resources: ResourceSpec,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub probes: Probes,
    /// Volumes mounted into each replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// Configs whose files are mounted into each replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigMount>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub update: UpdateStrategy,
    #[serde(default)]
    pub workdir: Option<String>,
    /// `uid[:gid]` or a user name from the image.
    #[serde(default)]
    pub user: Option<String>,
    /// How long a lost node's replicas wait before they are replaced elsewhere (default: at once).
    #[serde(default)]
    pub replace_after: Option<HumanDuration>,
    /// The replica count follows usage (and `replicas` is where it starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// Between the stop signal and SIGKILL (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<HumanDuration>,
    /// The signal that asks the container to stop (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<StopSignal>,
    /// Set by `bramble rollout restart` (a time): a new revision of the same spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<String>,
    /// What the app's containers may do beyond the defaults; anything but the defaults needs
    /// the admin role.
    #[serde(default, skip_serializing_if = "SecuritySpec::is_default")]
    pub security: SecuritySpec,
    /// Devices of the board bound into each replica: a class (`"i2c"`), a class with a USB id
    /// (`"serial:10c4:ea60"`) or a path (`"/dev/video0"`). Replicas go only to boards that have
    /// every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<crate::device::DeviceRequest>,
    /// Its containers share the board's network namespace (no pod address, no veth): its ports are
    /// the board's own, so two replicas never share a board's port. Admins only, or deployers
    /// within an admin's policy for the app.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Start order: its replicas start only once each app named here has a ready replica (they
    /// wait Pending, saying which). Not part of the pod template: changing it rolls nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Name>,
    /// Containers beside its own in each replica (`[[app.containers]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerSpec>,
    /// Containers that run in order to completion before the others start (`[[app.init]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<ContainerSpec>,
    /// Jobs: successful runs needed (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<u32>,
    /// Jobs: runs at once at most (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Jobs: failed runs retried before the job fails (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<u32>,
    /// Jobs: the longest it may run from its creation; then its runs stop and it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline: Option<HumanDuration>,
    /// Jobs: how long a finished job (complete or failed) stays, with its runs and their logs;
    /// then the leader deletes it. Unset: it stays until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_after_finished: Option<HumanDuration>,
}

/// A job's settings with their defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSettings {
    pub completions: u32,
    pub parallelism: u32,
    pub backoff_limit: u32,
    pub active_deadline_ms: Option<u64>,
    pub ttl_after_finished_ms: Option<u64>,
}

/// The default grace period between the stop signal and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

impl AppSpec {
    /// How many replicas a drain leaves ready at least (of `replicas`).
    pub fn min_available(&self, replicas: u32) -> u32 {
        match self.min_available {
            Some(m) => m.of(replicas),
            None => u32::from(replicas > 1),
        }
    }

    /// What in it needs the admin role, in words (none: a deployer may apply it).
    pub fn privileged(&self) -> Vec<&'static str> {
        let mut out = self.security.privileged();
        if self.host_network {
            out.push("host_network = true");
        }
        out
    }

    /// The board's ports its replicas take: host ports, and on the host network its container
    /// ports themselves.
    pub fn board_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.all_ports().filter_map(|p| {
            let port = if self.host_network { Some(p.container) } else { p.host };
            Some((port?.0, p.protocol))
        })
    }

    /// A job: its replicas are runs to completion.
    pub fn is_job(&self) -> bool {
        self.mode == AppMode::Job
    }

    /// `app` or `job`: what the user wrote and the CLI calls it.
    pub fn kind_word(&self) -> &'static str {
        if self.is_job() {
            "job"
        } else {
            "app"
        }
    }

    /// A job's settings, with their defaults.
    pub fn job(&self) -> JobSettings {
        JobSettings {
            completions: self.completions.unwrap_or(1),
            parallelism: self.parallelism.unwrap_or(1),
            backoff_limit: self.backoff_limit.unwrap_or(6),
            active_deadline_ms: self.active_deadline.map(|d| d.0.as_millis() as u64),
            ttl_after_finished_ms: self.ttl_after_finished.map(|d| d.0.as_millis() as u64),
        }
    }

    /// One replica on every matching board.
    pub fn every_board(&self) -> bool {
        self.mode == AppMode::EveryBoard
    }

    pub fn stop_grace(&self) -> Duration {
        self.stop_grace.map_or(STOP_GRACE, |d| d.0)
    }

    /// Every secret it uses: as files and through the environment.
    pub fn secret_names(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.secrets.iter().map(|n| n.as_str().to_string()).collect();
        out.extend(self.secret_env_refs().map(|(_, s, _)| s.to_string()));
        out
    }

    /// Its secret environment variables: `(variable, secret, key)`.
    pub fn secret_env_refs(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.secret_env.iter().filter_map(|(k, v)| {
            let (s, key) = v.split_once('/')?;
            Some((k.0.as_str(), s, key))
        })
    }

    /// The names of its local volumes.
    pub fn local_volumes(&self) -> impl Iterator<Item = &str> {
        self.volumes.iter().filter(|v| v.kind == VolumeKind::Local).filter_map(|v| v.name.as_ref().map(|n| n.as_str()))
    }

    /// Its replicas stay on the board that holds their local volumes, even when it is lost.
    pub fn pinned(&self) -> bool {
        self.local_volumes().next().is_some() && !self.placement.may_move
    }

    /// The node labels its host volumes need: `(key, Some(value))` or `(key, None)` for any value.
    pub fn host_volume_labels(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.volumes.iter().filter(|v| v.kind == VolumeKind::Host).filter_map(|v| {
            let l = v.node_label.as_deref()?;
            Some(match l.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (l, None),
            })
        })
    }

    /// One of the app's TCP ports by number or name, for probes.
    pub fn tcp_port(&self, target: &PortTarget) -> Result<u16, String> {
        let tcp = self.ports.iter().filter(|p| p.protocol == Protocol::Tcp);
        let found = match target {
            PortTarget::Number(n) => tcp.clone().find(|p| p.container == *n),
            PortTarget::Name(n) => tcp.clone().find(|p| p.name.as_ref() == Some(n)),
        };
        match found {
            Some(p) => Ok(p.container.0),
            None => {
                let have: Vec<String> = tcp
                    .map(|p| match &p.name {
                        Some(n) => format!("{} ({})", p.container.0, n.as_str()),
                        None => p.container.0.to_string(),
                    })
                    .collect();
                let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
                let what = match target {
                    PortTarget::Number(n) => format!("port {}", n.0),
                    PortTarget::Name(n) => format!("a port named {:?}", n.as_str()),
                };
                Err(format!("expected one of the app's TCP ports (declared: {have}), found {what}"))
            }
        }
    }
}

impl AppSpec {
    /// Checks that span fields; each problem names the field it is about.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.name.is_unnamed() {
            out.push(Problem::new(vec![PathPart::Key("name")], "expected a name"));
        }
        out.extend(self.check_pod());
        let mut names = BTreeSet::new();
        let mut container_ports = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(n) = &p.name {
                if !names.insert(n.as_str()) {
                    out.push(Problem::new(
                        vec![Key("ports"), Index(i), Key("name")],
                        format!("duplicate port name {:?}", n.as_str()),
                    ));
                }
            }
            if !container_ports.insert((p.container, p.protocol)) {
                out.push(Problem::new(
                    vec![Key("ports"), Index(i), Key("container")],
                    format!("container port {} is listed twice", p.container.0),
                ));
            }
            if p.host.is_some() && self.host_network {
                out.push(Problem::new(
                    vec![Key("ports"), Index(i), Key("host")],
                    "on the host network the container's port is the board's own: leave out host".to_string(),
                ));
            }
            if let Some(h) = p.host {
                if !host_ports.insert((h, p.protocol)) {
                    out.push(Problem::new(
                        vec![Key("ports"), Index(i), Key("host")],
                        format!("host port {} is listed twice", h.0),
                    ));
                }
            }
        }
        let mut after = BTreeSet::new();
        for (i, a) in self.after.iter().enumerate() {
            let at = || vec![Key("after"), Index(i)];
            if *a == self.name {
                out.push(Problem::new(at(), "an app cannot start after itself: name another app"));
            } else if !after.insert(a) {
                out.push(Problem::new(at(), format!("app {:?} is listed twice", a.as_str())));
            }
        }
        let mut paths = BTreeSet::new();
        let mounts = self
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| ("volumes", i, v.path.as_str()))
            .chain(self.configs.iter().enumerate().map(|(i, c)| ("configs", i, c.path.as_str())));
        for (list, i, path) in mounts {
            let at = || vec![Key(list), Index(i), Key("path")];
            let reserved = ["/proc", "/sys", "/dev", "/run/secrets", "/etc/resolv.conf", "/etc/hosts"];
            match crate::hostpath::normalize(path) {
                Err(e) => out.push(Problem::new(at(), e.to_string())),
                Ok(p) if p == "/" => {
                    out.push(Problem::new(at(), format!("expected an absolute path other than /, found {path:?}")))
                }
                Ok(p) if reserved.iter().any(|r| crate::hostpath::within(&p, r)) => out.push(Problem::new(
                    at(),
                    format!(
                        "{p} is the container's own (/proc, /sys, /dev, /run/secrets, /etc/resolv.conf, /etc/hosts)"
                    ),
                )),
                Ok(p) => {
                    if !paths.insert(p.clone()) {
                        out.push(Problem::new(at(), format!("{p} is mounted twice")));
                    }
                }
            }
        }
        for (k, v) in &self.secret_env {
            let ok = v.split_once('/').is_some_and(|(s, key)| check_dns_label(s).is_ok() && is_file_key(key));
            if !ok {
                out.push(Problem::new(
                    vec![Key("secret_env")],
                    format!("{}: expected \"SECRET/KEY\" (a secret's name and one of its keys), found {v:?}", k.0),
                ));
            } else if self.env.contains_key(k) {
                out.push(Problem::new(vec![Key("secret_env")], format!("{} is also set in env", k.0)));
            }
        }
        if let Some(a) = &self.autoscale {
            let at = |k: &'static str| vec![Key("autoscale"), Key(k)];
            if a.min.0 < 1 {
                out.push(Problem::new(at("min"), "expected at least 1"));
            }
            if a.min > a.max {
                out.push(Problem::new(at("min"), format!("min ({}) is above max ({})", a.min.0, a.max.0)));
            }
            if a.cpu.is_none() && a.memory.is_none() {
                out.push(Problem::new(vec![Key("autoscale")], "expected a target: cpu = \"70%\" or memory = \"80%\""));
            }
            if a.cpu.is_some() && self.resources.cpu.is_none() {
                out.push(Problem::new(
                    at("cpu"),
                    "a CPU target is a share of the request: set resources.cpu (e.g. \"250m\")",
                ));
            }
            if a.memory.is_some() && self.resources.memory.is_none() {
                out.push(Problem::new(
                    at("memory"),
                    "a memory target is a share of the request: set resources.memory (e.g. \"128Mi\")",
                ));
            }
        }
        for (k, v) in &self.labels {
            if let Err(e) = crate::names::check_label_key(k).and_then(|_| crate::names::check_label_value(v)) {
                out.push(Problem::new(vec![Key("labels")], e.to_string()));
            }
        }
        if self.labels.len() > 64 {
            out.push(Problem::new(
                vec![Key("labels")],
                format!("expected at most 64 labels, found {}", self.labels.len()),
            ));
        }
        if self.security.cap_add.iter().any(|c| c.as_str() == "ALL") {
            out.push(Problem::new(
                vec![Key("security"), Key("cap_add")],
                "name the capabilities to add (\"ALL\" is for cap_drop: no container gets every capability)",
            ));
        }
        if self.is_job() {
            let refuse = |key: &'static str, set: bool, out: &mut Vec<Problem>| {
                if set {
                    out.push(Problem::new(
                        vec![Key(key)],
                        format!(
                            "a job runs to completion: it has no {key} (completions and parallelism say how many runs)"
                        ),
                    ));
                }
            };
            refuse("replicas", self.replicas != Replicas::default(), &mut out);
            refuse("autoscale", self.autoscale.is_some(), &mut out);
            refuse("min_available", self.min_available.is_some(), &mut out);
            refuse("update", self.update != UpdateStrategy::default(), &mut out);
            refuse("replace_after", self.replace_after.is_some(), &mut out);
            if self.restart == RestartPolicy::OnFailure {
                out.push(Problem::new(
                    vec![Key("restart")],
                    "a job's runs are not restarted in place: a failed run is retried as a new run (backoff_limit)",
                ));
            }
            for (key, v) in [("completions", self.completions), ("parallelism", self.parallelism)] {
                if v == Some(0) || v.is_some_and(|n| n > 10_000) {
                    out.push(Problem::new(vec![Key(key)], format!("expected 1 to 10000, found {}", v.unwrap_or(0))));
                }
            }
        } else {
            for (key, set) in [
                ("completions", self.completions.is_some()),
                ("parallelism", self.parallelism.is_some()),
                ("backoff_limit", self.backoff_limit.is_some()),
                ("active_deadline", self.active_deadline.is_some()),
                ("ttl_after_finished", self.ttl_after_finished.is_some()),
            ] {
                if set {
                    out.push(Problem::new(vec![Key(key)], format!("only a job ([[job]]) has {key}")));
                }
            }
        }
        if self.mode == AppMode::EveryBoard {
            if self.autoscale.is_some() {
                out.push(Problem::new(
                    vec![Key("autoscale")],
                    "an every-board app has one replica per board: it cannot autoscale",
                ));
            }
            if self.placement.max_per_node.is_some() {
                out.push(Problem::new(
                    vec![Key("placement"), Key("max_per_node")],
                    "an every-board app has one replica per board already",
                ));
            }
        }
        if self.devices.len() > crate::device::MAX_APP_DEVICES {
            out.push(Problem::new(
                vec![Key("devices")],
                format!("expected at most {} devices, found {}", crate::device::MAX_APP_DEVICES, self.devices.len()),
            ));
        }
        let mut devices = BTreeSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            if !devices.insert(d) {
                out.push(Problem::new(vec![Key("devices"), Index(i)], format!("{d} is listed twice")));
            }
        }
        let mut config_names = BTreeSet::new();
        for (i, c) in self.configs.iter().enumerate() {
            if !config_names.insert(c.name.as_str()) {
                out.push(Problem::new(
                    vec![Key("configs"), Index(i), Key("name")],
                    format!("config {} is mounted twice", c.name),
                ));
            }
            for (key, message) in c.check() {
                out.push(Problem::new(vec![Key("configs"), Index(i), Key(key)], message));
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if v.size.is_some_and(|s| s.0 < 4096) {
                out.push(Problem::new(vec![Key("volumes"), Index(i), Key("size")], "expected at least 4Ki"));
            }
            out.extend(
                v.check_kind().into_iter().map(|(key, m)| Problem::new(vec![Key("volumes"), Index(i), Key(key)], m)),
            );
        }
        for (which, probe) in self.probes.each() {
            let handlers = [probe.exec.is_some(), probe.http.is_some(), probe.tcp.is_some()];
            if handlers.iter().filter(|h| **h).count() != 1 {
                out.push(Problem::new(
                    vec![Key("probes"), Key(which)],
                    "expected exactly one of `exec`, `http` or `tcp`",
                ));
            }
            if probe.exec.as_ref().is_some_and(|c| c.is_empty()) {
                out.push(Problem::new(
                    vec![Key("probes"), Key(which), Key("exec")],
                    "expected a command, found an empty list",
                ));
            }
            if let Some(Err(e)) = probe.port(self) {
                let how = if probe.http.is_some() { "http" } else { "tcp" };
                out.push(Problem::new(vec![Key("probes"), Key(which), Key(how), Key("port")], e));
            }
            if probe.timeout() > probe.period() {
                out.push(Problem::new(
                    vec![Key("probes"), Key(which), Key("timeout")],
                    format!(
                        "expected a timeout no longer than the period ({}), found {}",
                        HumanDuration(probe.period()),
                        HumanDuration(probe.timeout())
                    ),
                ));
            }
            if which != "readiness" && probe.success_threshold() != 1 {
                out.push(Problem::new(
                    vec![Key("probes"), Key(which), Key("success_threshold")],
                    format!("expected 1 for a {which} probe (only readiness may ask for more)"),
                ));
            }
            if probe.period().is_zero() {
                out.push(Problem::new(vec![Key("probes"), Key(which), Key("period")], "expected more than 0s"));
            }
        }
        if self.update.progress_deadline.is_some_and(|d| d.0.is_zero()) {
            out.push(Problem::new(vec![Key("update"), Key("progress_deadline")], "expected more than 0s"));
        }
        for (i, t) in self.placement.tolerations.iter().enumerate() {
            if t.operator == TolerationOperator::Exists && t.value.is_some() {
                out.push(Problem::new(
                    vec![Key("placement"), Key("tolerations"), Index(i), Key("value")],
                    "expected no value with operator \"Exists\"",
                ));
            }
            if t.key.is_none() && t.operator == TolerationOperator::Equal {
                out.push(Problem::new(
                    vec![Key("placement"), Key("tolerations"), Index(i)],
                    "expected a key (only operator \"Exists\" may leave it out to tolerate every taint)",
                ));
            }
        }
        if self.update.max_surge.0 == 0 && self.update.max_unavailable.0 == 0 {
            out.push(Problem::new(
                vec![Key("update")],
                "expected max_surge or max_unavailable above zero, or a rolling update could never make progress",
            ));
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                out.push(Problem::new(vec![Key("workdir")], format!("expected an absolute path, found {w:?}")));
            }
        }
        out
    }
}

/// What a taint does to replicas that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}
