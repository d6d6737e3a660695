//! Messages between the CLI, agents and the leader.
//!
//! Every QUIC stream starts with one [`Open`] frame that carries the protocol version. A *call*
//! stream (CLI requests, an agent's join) then carries one [`Response`] back. A *session* stream
//! (one per connected agent) then carries [`LeaderMsg`] down and [`AgentMsg`] up for as long as the
//! agent is connected.

use crate::manifest::{AppSpec, ServiceSpec};
use crate::model::{App, Event, NodeInfo, NodeView, Service};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The TLS ALPN protocol id.
pub const ALPN: &[u8] = b"bramble/1";
/// The name every leader certificate carries and every client verifies.
pub const LEADER_SERVER_NAME: &str = "bramble-leader";

/// The first frame of every stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    pub version: u32,
    pub kind: OpenKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenKind {
    Call(Request),
    Session(Hello),
}

/// A request that gets exactly one [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// An agent without a certificate asks to join with a token and a CSR (PEM).
    Join {
        token: String,
        node_name: String,
        csr_pem: String,
        info: NodeInfo,
    },
    GetNodes,
    GetNode {
        name: String,
    },
    LabelNode {
        name: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    SetCordon {
        name: String,
        cordoned: bool,
    },
    CreateToken {
        ttl_secs: u64,
    },
    /// Creates or updates every object, or none of them.
    Apply {
        apps: Vec<AppSpec>,
        services: Vec<ServiceSpec>,
    },
    GetApps,
    GetServices,
    /// Deletes the named objects (all must exist), or none of them.
    Delete {
        apps: Vec<String>,
        services: Vec<String>,
    },
}

impl Request {
    /// Whether the request changes state (admins only).
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::GetNodes | Request::GetNode { .. } | Request::GetApps | Request::GetServices)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Joined {
        node_name: String,
        cert_pem: String,
        ca_pem: String,
    },
    Nodes(Vec<NodeView>),
    Node {
        node: Box<NodeView>,
        events: Vec<Event>,
    },
    Token {
        token: String,
        expires_ms: u64,
    },
    /// Done, with a sentence for humans (e.g. `node/pi-1 cordoned`).
    Done(String),
    /// What `Apply` did to each object, in order.
    Applied(Vec<Applied>),
    Apps(Vec<App>),
    Services(Vec<Service>),
    Error(ApiError),
}

/// What applying did to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// `app` or `service`.
    pub kind: String,
    pub name: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = match self.outcome {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        };
        write!(f, "{}/{} {o}", self.kind, self.name)
    }
}

/// Errors the leader returns, with codes a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    /// No valid client certificate, or a bad join token.
    Unauthenticated,
    PermissionDenied,
    /// A compare-and-swap lost, or a name is taken.
    Conflict,
    VersionMismatch,
    Unavailable,
    Internal,
}

/// What an agent says when its session starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub node_name: String,
    /// Increases with every session the agent starts (across its restarts); a leader never lets
    /// a session with a lower epoch replace one with a higher epoch.
    pub epoch: u64,
    pub info: NodeInfo,
}

/// Leader → agent on a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderMsg {
    /// The session is accepted; send heartbeats this often.
    Welcome { epoch: u64, heartbeat_ms: u64 },
    /// The session is refused or ended; the agent should not retry at once.
    Refused(ApiError),
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
}
