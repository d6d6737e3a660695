//! An agent's session: its `Hello`, then `LeaderMsg` down and `AgentMsg` up while it is connected.

use super::api::{ApiError, ExecRequest, ImageOp, VolumeOp};
use crate::manifest::AppSpec;
use crate::model::{Event, NodeInfo, Platform, ReplicaPhase};
use crate::network::{NodeNetwork, PeerChanges, ServiceRoute};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// What an agent says when its session starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub node_name: String,
    /// Increases with every session the agent starts (across its restarts); a leader never lets
    /// a session with a lower epoch replace one with a higher epoch.
    pub epoch: u64,
    pub info: NodeInfo,
    /// What this agent understands beyond its protocol version (an older agent says nothing, and
    /// is sent nothing it would not understand): [`FEATURE_REGISTRIES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// The agent takes [`LeaderMsg::Registries`].
pub const FEATURE_REGISTRIES: &str = "registries";

/// The agent keeps its session alive every 500 ms: the leader may end it after 2 s without a
/// datagram (an older agent keeps alive every 2 s, and gets QUIC's idle timeout only).
pub const FEATURE_LIVENESS: &str = "liveness";

/// The agent takes its peers' changes alone ([`LeaderMsg::Network`]'s `peers`): a board joining
/// or moving costs every other board one entry, not the whole list (an older agent is sent its
/// whole part, every peer, each time one changes).
pub const FEATURE_PEER_DELTAS: &str = "peer_deltas";

/// Leader → agent on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderMsg {
    /// The session is accepted; send heartbeats this often. `fence_ms`: once cut off from every
    /// leader for this long, the board stops its jobs' runs (the leader replaces them only after
    /// that, see `job::lost_run_wait_ms`); 0 (an older leader): never.
    Welcome {
        epoch: u64,
        heartbeat_ms: u64,
        #[serde(default)]
        fence_ms: u64,
    },
    /// The session is refused or ended; the agent should not retry at once.
    Refused(ApiError),
    /// The replicas this node must run. `full`: exactly these (anything else is stopped), sent at
    /// every session start; otherwise a delta: `upsert` added or changed, `remove` gone.
    Desired { full: bool, upsert: Vec<Assignment>, remove: Vec<String> },
    /// The network: this board's part (`node`, when it changed; always at session start) and the
    /// cluster's services — `full`: exactly these; otherwise `upsert` added or changed, `remove`
    /// gone. Sent before the first desired set of a session.
    /// `version` names the view; the board says when it has applied it
    /// ([`AgentMsg::NetworkApplied`]), so the leader knows when no board sends to a replica any more.
    /// `peers` (only to an agent that said [`FEATURE_PEER_DELTAS`]): other boards added, changed
    /// or gone, applied after `node` — which is then sent only when this board's own part changed.
    Network {
        node: Option<NodeNetwork>,
        full: bool,
        upsert: Vec<ServiceRoute>,
        remove: Vec<String>,
        #[serde(default)]
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peers: Option<PeerChanges>,
    },
    /// Secrets the board's replicas use: `put` new or changed ones (values in the clear, inside
    /// the mTLS session only), `drop` those no replica here uses any more. Sent before the desired
    /// set that needs them. `full` (the first of a session): `put` is every one needed here, and
    /// the board drops any other it holds — from an earlier session, whose leader could not say
    /// (absent from older leaders: false).
    Secrets {
        put: Vec<SecretPayload>,
        drop: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        full: bool,
    },
    /// Configs the board's replicas mount, as `Secrets` (files by name; `version` is the
    /// config's generation).
    Configs {
        put: Vec<SecretPayload>,
        drop: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        full: bool,
    },
    /// How to reach the registries the board's replicas pull from, as `Secrets` (the payload's
    /// name is the host; its values `insecure`, `mirrors` — comma-separated — and the
    /// credentials' `username` and `password` or `token`; a mirror's own settings under
    /// `mirror/<host>/…`). Sent only to boards whose replicas use an image from that host.
    Registries {
        put: Vec<SecretPayload>,
        drop: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        full: bool,
    },
    /// The answer to [`AgentMsg::Renew`]: the new certificate, or why there is none.
    Renewed { cert_pem: Option<String>, error: Option<String> },
}

/// One secret's values for a board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPayload {
    pub name: String,
    pub version: u64,
    pub values: SecretValues,
}

/// A secret's keys and values. `Debug` shows the keys only, so no log of a message that carries
/// one (a request, a session frame) can show a value.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(pub BTreeMap<String, Vec<u8>>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValues {{ keys: {:?} }}", self.0.keys().collect::<Vec<_>>())
    }
}

/// One replica a node must run. Replica names are never reused, so a replica that moved away
/// is stopped by name when its old node comes back (fencing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub replica: String,
    pub app: String,
    pub revision: String,
    /// Shared by every replica of a revision (in the leader's desired sets and sessions).
    pub spec: std::sync::Arc<AppSpec>,
}

/// What an agent reports about one replica it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub replica: String,
    pub phase: ReplicaPhase,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub restarts: u32,
    pub exit_code: Option<i32>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub container_id: Option<String>,
    /// The replica's pod address.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Live detail such as image pull progress (kept in the leader's memory, never stored).
    #[serde(default)]
    pub detail: Option<String>,
    /// Set when the replica's image offers no platform for this node: what it does offer.
    #[serde(default)]
    pub platform_miss: Option<PlatformMiss>,
    /// Running and passing its readiness probe (running, without one).
    #[serde(default)]
    pub ready: bool,
    /// In BackOff: when it restarts.
    #[serde(default)]
    pub restart_at_ms: Option<u64>,
    /// Each probe's latest result (kept in the leader's memory, never stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeStatus>,
}

/// What a probe found lately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// `startup`, `liveness` or `readiness`.
    pub probe: String,
    /// `http :8080/healthz`, `tcp :5432`, `exec cat /ready`.
    pub action: String,
    /// None until it has run once.
    pub ok: Option<bool>,
    /// Failures in a row.
    pub failures: u32,
    /// Why the last failure failed.
    #[serde(default)]
    pub message: String,
    /// Times a liveness or startup probe had the container killed.
    #[serde(default)]
    pub kills: u32,
}

/// An image that offers no platform for a node, and the platforms it offers (`linux/arm64`, …);
/// a platform that does not parse makes the whole message fail to decode (refused, not dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformMiss {
    pub image: String,
    pub offered: Vec<Platform>,
}

impl ReplicaStatus {
    /// A replica in `phase`, with nothing else known yet.
    pub fn new(replica: &str, phase: ReplicaPhase) -> ReplicaStatus {
        ReplicaStatus {
            replica: replica.to_string(),
            phase,
            reason: String::new(),
            restarts: 0,
            exit_code: None,
            started_ms: None,
            finished_ms: None,
            container_id: None,
            ip: None,
            detail: None,
            platform_miss: None,
            ready: false,
            restart_at_ms: None,
            probes: Vec::new(),
        }
    }
}

/// Leader → agent: the first frame of a stream the leader opens on the agent's connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRequest {
    /// Answered with [`LogFrame`]s.
    Logs(AgentLogRequest),
    /// Answered with one [`Response`]; an import's bytes follow this frame.
    Image(ImageOp),
    /// Answered with [`ExecOutput`] frames; [`ExecInput`] frames follow this one.
    Exec(ExecRequest),
    /// Answered with one [`Response`].
    Volume(VolumeOp),
    /// Pull `reference` into the store now (a prefetch): answered with [`Response::Pulling`]
    /// frames, then [`Response::Images`] (the image) or an error. `registry`: the settings of the
    /// reference's registry for this pull only (as in [`LeaderMsg::Registries`]), kept in memory
    /// until it ends.
    Pull { reference: String, registry: Option<SecretPayload> },
    /// A peer's request, relayed (see [`super::PeerRequest`]): answered with one
    /// [`super::PeerReply`] (`Found` or `NotHere`), a blob's bytes after it.
    Peer(super::PeerRequest),
}

/// Send this replica's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentLogRequest {
    pub replica: String,
    pub tail: Option<u64>,
    pub since_ms: Option<u64>,
    pub follow: bool,
}

/// Agent → leader on such a stream: lines until the end, or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFrame {
    Lines(Vec<String>),
    Error(String),
}

/// Agent → leader on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMsg {
    Heartbeat {
        seq: u64,
    },
    /// What the board reports changed (labels in config, capacity, addresses).
    Info(NodeInfo),
    /// Replica states: all of them when `full` (at session start), else only those that changed.
    Status {
        full: bool,
        replicas: Vec<ReplicaStatus>,
    },
    /// Something that happened on the board (a container started, crashed, an image was pulled).
    Event(Event),
    /// The image references in the board's store (at session start and when they change), so
    /// that the scheduler prefers boards that need no pull.
    Images(Vec<String>),
    /// The network view `version` is in the board's kernel (routes, nft rules).
    NetworkApplied {
        version: u64,
    },
    /// The local volumes the board holds (at session start and when they change), so that
    /// replicas pinned by them come back here.
    Volumes(Vec<String>),
    /// Two thirds of the board's certificate's life have passed: a CSR for a new key.
    Renew {
        csr_pem: String,
    },
    /// What the board and its replicas use (every `monitoring.interval`).
    Usage(crate::usage::UsageSample),
}
