//! Usage samples: what an agent measures of its board and each replica, every interval, sent up
//! its session and kept only in the leader's memory. Counters (CPU time, network bytes) are sent
//! raw; the leader turns consecutive samples into rates.

use serde::{Deserialize, Serialize};

/// One measurement of a board and its replicas at `at_ms` (the board's clock).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UsageSample {
    pub at_ms: u64,
    pub node: NodeSample,
    pub replicas: Vec<ReplicaSample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeSample {
    /// CPU time spent not idle, all CPUs together (a counter, ns).
    pub cpu_busy_ns: u64,
    pub cpus: u32,
    pub memory_total: u64,
    /// Total minus available (MemAvailable).
    pub memory_used: u64,
    /// The 1-minute load average × 1000.
    pub load1_milli: u64,
    /// The file system of the agent's data dir.
    pub disk_total: u64,
    pub disk_free: u64,
    /// The hottest thermal zone, in millidegrees Celsius, where the board has one.
    #[serde(default)]
    pub temperature_mc: Option<i64>,
    /// The firmware's throttling flags (a Raspberry Pi's `get_throttled`), where it says.
    #[serde(default)]
    pub throttled: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaSample {
    pub replica: String,
    /// CPU time (a counter, ns).
    pub cpu_ns: u64,
    /// Time its CPU quota held it back (a counter, ns).
    pub throttled_ns: u64,
    /// Memory in use minus inactive file cache (as the kubelet counts).
    pub memory_working_set: u64,
    pub memory_limit: Option<u64>,
    pub oom_kills: u64,
    pub pids: u64,
    /// Bytes the pod received and sent (counters).
    pub net_rx: u64,
    pub net_tx: u64,
}

/// A board's usage as `bramble top nodes` shows it: the latest figures, what its replicas ask for,
/// and the recent history (oldest first).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeUsage {
    pub node: String,
    /// When the latest sample came (the leader's clock).
    pub at_ms: u64,
    pub cpus: u32,
    pub cpu_millis: u64,
    pub memory_used: u64,
    pub memory_total: u64,
    pub load1_milli: u64,
    pub disk_free: u64,
    pub disk_total: u64,
    pub temperature_mc: Option<i64>,
    pub throttled: Option<u64>,
    /// What the replicas bound to it request, and what it offers.
    pub requested_cpu_millis: u64,
    pub requested_memory: u64,
    pub allocatable_cpu_millis: u64,
    pub allocatable_memory: u64,
    pub cpu_history: Vec<u64>,
    pub memory_history: Vec<u64>,
}

/// A replica's usage as `bramble top replicas` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplicaUsage {
    pub replica: String,
    pub app: String,
    pub node: String,
    pub at_ms: u64,
    pub cpu_millis: u64,
    /// Of the last interval, the share the CPU quota held it back (‰).
    pub throttled_permille: u64,
    pub memory_working_set: u64,
    pub memory_limit: Option<u64>,
    /// The app's request (its `resources`), if any.
    pub cpu_request_millis: Option<u64>,
    pub memory_request: Option<u64>,
    pub oom_kills: u64,
    pub pids: u64,
    /// Bytes per second, over the last interval.
    pub net_rx_per_s: u64,
    pub net_tx_per_s: u64,
    pub cpu_history: Vec<u64>,
    pub memory_history: Vec<u64>,
}
