//! The object model (DESIGN §4): what the leader stores and what the CLI shows.
//!
//! Times are milliseconds since the Unix epoch (`*_ms`). Every stored object carries `generation`
//! (bumped when its desired part changes) and the store `revision` it was last written at.

pub use crate::event::{Event, Reason as EventReason};
pub use crate::object::{Kind, ObjectRef};
pub use crate::platform::Platform;

use crate::manifest::{AppSpec, ServiceSpec};
use crate::network::{Cidr, Endpoint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// Metadata every stored object carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectMeta {
    pub name: String,
    /// Bumped each time the desired part of the object changes.
    #[serde(default)]
    pub generation: u64,
    /// The store revision of the last write (filled in on read).
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub created_ms: u64,
    /// Who made the last change to its desired part (`deployer:ci`), where it is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
}

pub use crate::manifest::TaintEffect;
pub use crate::platform::Arch;

/// Amounts of the resources the scheduler shares out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// How many replicas the node accepts.
    pub replicas: u32,
}

/// What an agent reports about its board at the start of each session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub arch: Arch,
    pub os: String,
    pub kernel: String,
    pub agent_version: String,
    /// Labels from the agent's config file.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub allocatable: Resources,
    /// Addresses of the board's interfaces (the leader adds the one it sees the session from).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Why the board cannot give pods a network now, if it cannot (the `NetworkUnavailable`
    /// condition: no new replica is placed there until it clears).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_problem: Option<NetworkProblem>,
    /// The devices the board has for apps (`gpio`, `i2c`, `spi`, `serial`, `video`, `usb`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<crate::device::Device>,
}

/// Why a board cannot network its pods, as its agent found: missing `nft`, a bridge or a route
/// the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkProblem {
    /// A CamelCase word: `NftMissing`, `RulesRefused`, `BridgeRefused`, `RoutesRefused`.
    pub reason: String,
    /// What failed, and what to do about it.
    pub message: String,
    /// Since when the leader has known it (its clock; set where it lands).
    #[serde(default)]
    pub since_ms: u64,
}

/// How long a board's network problem's message may be.
pub const MAX_PROBLEM_TEXT: usize = 1024;

/// The prefix of the labels a board reports about itself.
pub const BOARD_LABELS: &str = "board.bramble.dev/";
/// What a board may report about itself: at most this many labels, addresses and bytes of text.
pub const MAX_BOARD_LABELS: usize = 64;
pub const MAX_BOARD_ADDRESSES: usize = 32;
pub const MAX_BOARD_TEXT: usize = 256;

impl NodeInfo {
    /// What a board said about itself, kept within bounds where it lands on the leader: labels
    /// with plain keys (no prefix: the board's all go under [`BOARD_LABELS`]) and valid values,
    /// at most [`MAX_BOARD_LABELS`]; addresses that parse; text cut. Returns what was dropped.
    pub fn sanitize(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        let cut_to = |s: &mut String, max: usize| {
            if s.len() > max {
                let mut end = max;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
        };
        let cut = |s: &mut String| cut_to(s, MAX_BOARD_TEXT);
        if let Some(p) = &mut self.network_problem {
            let word =
                !p.reason.is_empty() && p.reason.len() <= 64 && p.reason.chars().all(|c| c.is_ascii_alphanumeric());
            if !word {
                p.reason = "NetworkUnavailable".into();
            }
            // Logged and shown by the leader: one line, no control characters.
            p.message = p.message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            cut_to(&mut p.message, MAX_PROBLEM_TEXT);
            // The leader's clock says since when, not the board's.
            p.since_ms = 0;
        }
        cut(&mut self.os);
        cut(&mut self.kernel);
        cut(&mut self.agent_version);
        let labels = std::mem::take(&mut self.labels);
        for (k, v) in labels {
            let ok = !k.contains('/')
                && crate::names::check_label_key(&k).is_ok()
                && crate::names::check_label_value(&v).is_ok()
                && self.labels.len() < MAX_BOARD_LABELS;
            if ok {
                self.labels.insert(k, v);
            } else {
                dropped.push(format!("label {}", k.chars().take(64).collect::<String>()));
            }
        }
        let before = self.addresses.len();
        self.addresses.retain(|a| a.len() <= 64 && a.parse::<std::net::IpAddr>().is_ok());
        self.addresses.truncate(MAX_BOARD_ADDRESSES);
        if self.addresses.len() < before {
            dropped.push(format!("{} addresses", before - self.addresses.len()));
        }
        if let Arch::Other(a) = &mut self.arch {
            cut(a);
        }
        let devices = std::mem::take(&mut self.devices);
        for d in devices {
            match d.check() {
                Ok(()) if self.devices.len() < crate::device::MAX_BOARD_DEVICES => self.devices.push(d),
                Ok(()) => dropped.push(format!("device {} (too many)", d.path)),
                Err(e) => dropped.push(format!("device: {}", e.chars().take(160).collect::<String>())),
            }
        }
        self.devices.sort();
        self.devices.dedup_by(|a, b| a.path == b.path);
        dropped
    }

    /// A Linux board of `arch` offering `resources` (capacity and allocatable), nothing more known.
    pub fn board(arch: Arch, resources: Resources) -> NodeInfo {
        NodeInfo {
            arch,
            os: "linux".into(),
            kernel: String::new(),
            agent_version: String::new(),
            labels: BTreeMap::new(),
            capacity: resources,
            allocatable: resources,
            addresses: Vec::new(),
            network_problem: None,
            devices: Vec::new(),
        }
    }
}

/// A taint keeps replicas off a node unless they tolerate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: TaintEffect,
}

/// A board that joined, as stored by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub meta: ObjectMeta,
    /// SHA-256 (hex) of the node's public key; a name is bound to one key.
    pub key_fingerprint: String,
    /// The key before its last renewal: accepted too until its certificate expires, so a board
    /// that renewed but did not save the new certificate (power cut) still gets in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_key_fingerprint: Option<String>,
    /// When the certificate the board last connected with (or was last given) expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_ms: Option<u64>,
    /// Labels set by operators (`bramble label node`); they win over the agent's own.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Cordoned: no new replicas are placed here.
    #[serde(default)]
    pub unschedulable: bool,
    /// Being drained (`bramble drain`): cordoned, and its replicas moved away one app at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<Draining>,
    pub info: NodeInfo,
    /// Its pod subnet, allocated by the leader from the cluster CIDR; released when the node is
    /// deleted.
    #[serde(default)]
    pub pod_cidr: Option<Cidr>,
    /// The address the leader sees its agent at (routes and vxlan entries of other boards use it).
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
}

/// A drain under way: since when, by whom, and whether every-board apps leave the board too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draining {
    pub since_ms: u64,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub include_every_board: bool,
}

impl Node {
    /// A node that has just joined: its key, what its agent reports, nothing set by operators.
    pub fn joined(name: &str, key_fingerprint: String, info: NodeInfo, created_ms: u64) -> Node {
        Node {
            meta: ObjectMeta { name: name.to_string(), generation: 1, revision: 0, created_ms, changed_by: None },
            key_fingerprint,
            old_key_fingerprint: None,
            cert_expires_ms: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            draining: None,
            info,
            pod_cidr: None,
            address: None,
        }
    }

    /// The labels in effect: the operators', and the board's own under [`BOARD_LABELS`] (a board
    /// cannot set an operator's label: `disk=ssd` from agent.toml is `board.bramble.dev/disk=ssd`,
    /// which only a selector naming it matches).
    pub fn effective_labels(&self) -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> =
            self.info.labels.iter().map(|(k, v)| (format!("{BOARD_LABELS}{k}"), v.clone())).collect();
        l.extend(self.labels.clone());
        l
    }
}

/// Whether a condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// e.g. `Ready`.
    pub kind: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub last_transition_ms: u64,
}

/// A node as the API shows it: the stored object plus the leader's live view of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: Node,
    pub ready: Condition,
    /// Last contact from the agent (0 if none since the leader started).
    pub last_seen_ms: u64,
    /// The current session epoch, if the agent is connected.
    pub session_epoch: Option<u64>,
    /// The address the leader sees the agent's session come from.
    pub session_address: Option<String>,
    /// The images in the node's store, as its agent last said.
    #[serde(default)]
    pub images: Vec<String>,
    /// The node's other conditions that hold (`NetworkUnavailable`), besides `ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How its link has held, and the grace period it has now.
    #[serde(default)]
    pub link: LinkHealth,
}

/// How a board's link to the leader has held since the leader started: sessions lost (timed
/// out), and the grace period the leader gives it now — the configured `not_ready_after`,
/// lengthened while the board keeps losing its link (damping: a flapping board's replicas are
/// not moved back and forth).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkHealth {
    pub losses: u64,
    /// When the last loss was (0: none).
    pub last_lost_ms: u64,
    pub grace_ms: u64,
    pub base_grace_ms: u64,
}

impl NodeView {
    /// `Ready`, `NotReady` or `Unknown`, then the conditions that hold (`,NetworkUnavailable`),
    /// and `,SchedulingDisabled` when cordoned.
    pub fn status_text(&self) -> String {
        let s = match self.ready.status {
            ConditionStatus::True => "Ready",
            ConditionStatus::False => "NotReady",
            ConditionStatus::Unknown => "Unknown",
        };
        let mut text = s.to_string();
        for c in self.conditions.iter().filter(|c| c.status == ConditionStatus::True) {
            text.push(',');
            text.push_str(&c.kind);
        }
        if self.node.unschedulable {
            text.push_str(",SchedulingDisabled");
        }
        text
    }
}

/// A long-running workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub meta: ObjectMeta,
    pub spec: AppSpec,
    /// The cron job that made this job (its history keeps or deletes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cronjob: Option<String>,
}

/// Web apps by host name, through the ingress proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingress {
    pub meta: ObjectMeta,
    pub spec: crate::manifest::IngressSpec,
}

/// How boards reach a registry: credentials from a secret, plain HTTP, mirrors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub meta: ObjectMeta,
    pub spec: crate::manifest::RegistrySpec,
}

/// Jobs made on a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronJob {
    pub meta: ObjectMeta,
    pub spec: crate::manifest::CronJobSpec,
    #[serde(default)]
    pub status: CronStatus,
}

/// What the leader's cron controller recorded, in the same write that made the job: a leader
/// that takes over reads it and neither skips nor doubles a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronStatus {
    /// The scheduled time of the last run made or skipped (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_ms: Option<u64>,
    /// The job the last run made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<String>,
}

/// The phase of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaPhase {
    Pending,
    Pulling,
    Starting,
    Running,
    /// Exited (or could not start) and restarts at `restart_at_ms`.
    BackOff,
    Succeeded,
    /// Exited and will not be restarted (its restart policy says so).
    Failed,
    Lost,
}

/// One scheduled copy of an app revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub meta: ObjectMeta,
    pub app: String,
    /// Hash of the app's pod template this replica runs.
    pub revision_hash: String,
    pub node: Option<String>,
    pub phase: ReplicaPhase,
    /// Why it is in this phase (e.g. why it is still Pending).
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub restarts: u32,
    pub exit_code: Option<i32>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub container_id: Option<String>,
    /// Its pod address on its board.
    pub ip: Option<Ipv4Addr>,
    /// Running and passing its readiness probe (or running, without one): it takes traffic.
    #[serde(default)]
    pub ready: bool,
    /// When it last became ready (the leader's clock).
    #[serde(default)]
    pub ready_ms: Option<u64>,
    /// In BackOff: when it restarts.
    #[serde(default)]
    pub restart_at_ms: Option<u64>,
    /// Being stopped since then: out of every service's endpoints, stopped once every board has
    /// applied that (or after a short bound).
    #[serde(default)]
    pub terminating_ms: Option<u64>,
}

impl Replica {
    /// Whether it should receive traffic: ready, running and not being stopped.
    pub fn serving(&self) -> bool {
        self.ready && self.phase == ReplicaPhase::Running && self.terminating_ms.is_none()
    }

    /// A new replica of `app` at `revision_hash`, created at `now_ms`: Pending, on no node yet.
    pub fn new(app: &str, name: &str, revision_hash: &str, now_ms: u64) -> Replica {
        Replica {
            meta: ObjectMeta {
                name: name.to_string(),
                generation: 1,
                revision: 0,
                created_ms: now_ms,
                changed_by: None,
            },
            app: app.to_string(),
            revision_hash: revision_hash.to_string(),
            node: None,
            phase: ReplicaPhase::Pending,
            reason: String::new(),
            restarts: 0,
            exit_code: None,
            started_ms: None,
            finished_ms: None,
            container_id: None,
            ip: None,
            ready: false,
            ready_ms: None,
            restart_at_ms: None,
            terminating_ms: None,
        }
    }
}

/// How rolling out one revision went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutState {
    /// Replicas are being replaced.
    Progressing,
    /// Every replica runs this revision and is ready.
    Complete,
    /// No progress within the deadline; held where it was (`auto_rollback = false`).
    Failed,
    /// No progress within the deadline; the app went back to the revision before.
    RolledBack,
    /// Another revision was applied before this one completed.
    Superseded,
}

impl RolloutState {
    /// Whether the rollout has ended.
    pub fn done(self) -> bool {
        self != RolloutState::Progressing
    }
}

/// One revision of an app's pod template and how rolling it out went (`rollout history`). The
/// last ten are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub app: String,
    /// 1, 2, 3… per app.
    pub number: u64,
    pub hash: String,
    pub spec: AppSpec,
    pub created_ms: u64,
    /// Why it exists: `created`, `apply`, `undo to revision 3`, `restart`, `rollback of revision 5`.
    pub cause: String,
    pub state: RolloutState,
    /// When it last made progress (more of its replicas available, or fewer old ones).
    pub progress_ms: u64,
    pub finished_ms: Option<u64>,
    /// Why it ended, or where it stands.
    pub message: String,
    /// Its replicas available, and old replicas left, when it last moved.
    pub available: u32,
    pub old: u32,
}

/// A stable name and virtual IP in front of the ready replicas of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub meta: ObjectMeta,
    pub spec: ServiceSpec,
    /// Allocated by the leader from the service CIDR when the service is created; kept for life.
    pub vip: Option<Ipv4Addr>,
    /// The app's replicas that take traffic (derived when read, never stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}

/// What an admin lets deployers ask for in one app (named after it): `bramble policy allow`.
/// An apply by a deployer of that app may ask for no more than this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Policy {
    pub meta: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<crate::manifest::CapName>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seccomp_unconfined: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control_plane: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

impl Policy {
    /// What of `app`'s privileges this policy does not allow, in words.
    pub fn refuses(&self, app: &crate::manifest::AppSpec) -> Vec<String> {
        let security = &app.security;
        let mut out = Vec::new();
        let extra: Vec<&str> =
            security.cap_add.iter().filter(|c| !self.cap_add.contains(c)).map(|c| c.as_str()).collect();
        if !extra.is_empty() {
            out.push(format!("security.cap_add {}", extra.join(", ")));
        }
        if security.seccomp == crate::manifest::SeccompProfile::Unconfined && !self.seccomp_unconfined {
            out.push("security.seccomp = \"unconfined\"".into());
        }
        if security.control_plane && !self.control_plane {
            out.push("security.control_plane = true".into());
        }
        if app.host_network && !self.host_network {
            out.push("host_network = true".into());
        }
        out
    }
}

/// Files mounted into apps that name it (`[[config]]`); its generation is its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub meta: ObjectMeta,
    pub spec: crate::manifest::ConfigSpec,
}

/// Named key/value bytes, encrypted at rest by the leader; `get` never prints `data`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub meta: ObjectMeta,
    pub data: BTreeMap<String, Vec<u8>>,
    pub version: u64,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("meta", &self.meta)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_round_trips_in_oci_terms() {
        for a in ["amd64", "arm64", "arm/v7", "arm/v6", "riscv64"] {
            let arch = Arch::try_from(a.to_string()).unwrap();
            assert_eq!(arch.to_string(), a);
        }
        assert_eq!(Arch::try_from("arm64/v8".to_string()).unwrap(), Arch::Arm64);
        let json = serde_json::to_string(&Arch::ArmV7).unwrap();
        assert_eq!(json, "\"arm/v7\"");
    }

    #[test]
    fn a_board_runs_images_of_its_binary_family_at_the_version_its_kernel_reports() {
        let cases = [
            ("x86_64", "x86_64", Arch::Amd64),
            ("aarch64", "aarch64", Arch::Arm64),
            // A 32-bit userland: the kernel says the version.
            ("arm", "armv7l", Arch::ArmV7),
            ("arm", "armv6l", Arch::ArmV6),
            // A Pi 3/4 with a 32-bit OS: an arm64 kernel (aarch64) or a 32-bit one on ARMv8 (armv8l).
            ("arm", "aarch64", Arch::ArmV7),
            ("arm", "armv8l", Arch::ArmV7),
            ("arm", "armv5tel", Arch::Other("arm/v5".into())),
            // Nothing known from the kernel: what runs on every 32-bit ARM board we support.
            ("arm", "", Arch::ArmV6),
            ("riscv64", "riscv64", Arch::Other("riscv64".into())),
        ];
        for (binary, machine, arch) in cases {
            assert_eq!(Arch::of_board(binary, machine), arch, "{binary} binary, uname -m {machine:?}");
        }
    }

    #[test]
    fn secret_debug_hides_data() {
        let mut data = BTreeMap::new();
        data.insert("password".to_string(), b"hunter2".to_vec());
        let s = Secret { meta: ObjectMeta::default(), data, version: 1 };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}

#[cfg(test)]
mod board_tests {
    use super::*;

    #[test]
    fn a_board_cannot_set_an_operators_label_or_report_without_bounds() {
        let mut info = NodeInfo::board(Arch::Arm64, Resources::default());
        info.labels.insert("disk".into(), "ssd".into());
        info.labels.insert("example.com/role".into(), "db".into());
        info.labels.insert("bad key".into(), "x".into());
        for i in 0..100 {
            info.labels.insert(format!("l{i:03}"), "v".into());
        }
        info.addresses = vec!["10.0.0.1".into(), "not an address".into()];
        info.kernel = "k".repeat(10_000);
        let dropped = info.sanitize();
        assert_eq!(info.labels.len(), MAX_BOARD_LABELS);
        assert!(!info.labels.contains_key("example.com/role") && !info.labels.contains_key("bad key"));
        assert_eq!(info.addresses, ["10.0.0.1"]);
        assert_eq!(info.kernel.len(), MAX_BOARD_TEXT);
        assert!(dropped.iter().any(|d| d == "label example.com/role"), "{dropped:?}");
        let mut node = Node::joined("pi-1", "x".into(), info, 0);
        node.labels.insert("zone".into(), "kitchen".into());
        let l = node.effective_labels();
        assert_eq!(l.get("board.bramble.dev/disk").map(String::as_str), Some("ssd"));
        assert!(!l.contains_key("disk"), "the board's own labels are not operators'");
        assert_eq!(l.get("zone").map(String::as_str), Some("kitchen"));
    }

    #[test]
    fn a_boards_network_problem_is_kept_within_bounds_and_timed_by_the_leader() {
        let mut info = NodeInfo::board(Arch::Arm64, Resources::default());
        info.network_problem =
            Some(NetworkProblem { reason: "<script>".into(), message: "é".repeat(5_000), since_ms: 1 });
        info.sanitize();
        let p = info.network_problem.clone().unwrap();
        assert_eq!(p.reason, "NetworkUnavailable", "not a word: replaced");
        assert!(p.message.len() <= MAX_PROBLEM_TEXT && p.message.len() >= MAX_PROBLEM_TEXT - 1);
        assert_eq!(p.since_ms, 0, "the board's clock is not taken");
        info.network_problem =
            Some(NetworkProblem { reason: "NftMissing".into(), message: "m\nWARN forged\x1b[0m".into(), since_ms: 0 });
        info.sanitize();
        let p = info.network_problem.as_ref().unwrap();
        assert_eq!(
            (p.reason.as_str(), p.message.as_str()),
            ("NftMissing", "m WARN forged [0m"),
            "one line, no escapes"
        );
        // Older agents send no problem; older leaders ignore the field.
        let json = serde_json::to_value(NodeInfo::board(Arch::Arm64, Resources::default())).unwrap();
        assert!(json.get("network_problem").is_none());
        let mut view = NodeView {
            node: Node::joined("pi", "x".into(), info.clone(), 0),
            ready: Condition {
                kind: "Ready".into(),
                status: ConditionStatus::True,
                reason: String::new(),
                message: String::new(),
                last_transition_ms: 0,
            },
            last_seen_ms: 0,
            session_epoch: None,
            session_address: None,
            images: Vec::new(),
            conditions: Vec::new(),
            link: LinkHealth::default(),
        };
        view.conditions.push(Condition { kind: "NetworkUnavailable".into(), ..view.ready.clone() });
        view.node.unschedulable = true;
        assert_eq!(view.status_text(), "Ready,NetworkUnavailable,SchedulingDisabled");
    }
}
