//! Agent ↔ shim messages: one JSON object per line over the shim's unix socket.

use super::cgroups::Stats;
use super::lifecycle::Lifecycle;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ShimRequest {
    State,
    /// SIGTERM, then SIGKILL after the grace period; no restarts afterwards.
    Stop {
        grace_ms: Option<u64>,
    },
    Signal {
        signal: i32,
    },
    /// Runs a command in the container's namespaces and cgroup; answers when it ends.
    Exec {
        args: Vec<String>,
        env: Vec<String>,
        timeout_ms: u64,
    },
    /// Runs a command in the container as its process runs, and hands its standard streams (or
    /// its terminal, with `tty`) to the caller with the answer; its exit code follows as
    /// [`ShimResponse::Exited`] on the same connection.
    Attach {
        args: Vec<String>,
        env: Vec<String>,
        tty: bool,
        rows: u16,
        cols: u16,
    },
    /// Stops the container, deletes it and its cgroup, and ends the shim.
    Remove,
}

/// The version of the agent ↔ shim protocol this build speaks. A shim outlives agent upgrades (its
/// container keeps running), so an agent must understand the shims of older builds: it reads
/// `protocol` from each shim's state and says so when one is older than
/// [`MIN_SHIM_PROTOCOL`]. Raise this when a message changes meaning; adding an optional field
/// or a request does not (an older shim answers an unknown request with an error).
///
/// 1: the first versioned protocol (the state says `protocol` and `version`); shims before it
///    report neither and are protocol 0, which this agent still speaks.
pub const SHIM_PROTOCOL: u32 = 1;
/// The oldest shim protocol this agent can manage.
pub const MIN_SHIM_PROTOCOL: u32 = 0;

/// Whether this agent can manage a shim that speaks `protocol` (every one so far: the check is
/// here for when [`MIN_SHIM_PROTOCOL`] is raised).
#[allow(clippy::absurd_extreme_comparisons)]
pub fn manages(protocol: u32) -> bool {
    protocol >= MIN_SHIM_PROTOCOL
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimState {
    pub id: String,
    pub shim_pid: i32,
    /// The protocol the shim speaks (0: a shim from before versioning).
    #[serde(default)]
    pub protocol: u32,
    /// The shim's build (`CARGO_PKG_VERSION`; empty before versioning).
    #[serde(default)]
    pub version: String,
    pub boot_id: String,
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub stats: Option<Stats>,
    /// Running and passing its probes (see `probe::Tracker::ready`).
    #[serde(default)]
    pub ready: bool,
    /// Each probe's latest result (live only: not written to state.json on every result).
    #[serde(default)]
    pub probes: Vec<bramble_proto::wire::ProbeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ShimResponse {
    State(Box<ShimState>),
    Ok,
    Exec {
        exit_code: i32,
        output: String,
        timed_out: bool,
    },
    /// The attached command runs: its descriptors come with this line.
    Attached {
        pid: i32,
    },
    Exited {
        exit_code: i32,
    },
    Error {
        message: String,
    },
}

/// The most output an exec returns (the rest is dropped).
pub const MAX_EXEC_OUTPUT: usize = 64 << 10;

/// This boot's id: state from another boot is stale.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}
