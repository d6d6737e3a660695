//! What the agent asks a shim to run: a container, resolved to plain values and persisted next to
//! the shim, so the shim can restart it on its own while the agent is away.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Where a container's output goes: a file capped in size, rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    pub path: PathBuf,
    /// A file is rotated when it would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`).
    pub max_files: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Letters, digits, `-`, `_`, `.`: also the directory and cgroup name.
    pub id: String,
    pub rootfs: PathBuf,
    /// The final argv (entrypoint and cmd already merged).
    pub args: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// CPU limit in millicores (quota/period and shares/weight).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Process limit; a sane default keeps a fork bomb from taking the board.
    pub pids_limit: i64,
    pub restart: RestartPolicy,
    /// Between SIGTERM and SIGKILL on stop.
    pub stop_grace_ms: u64,
    /// The first restart delay (default 10 s, doubling to 5 min).
    #[serde(default)]
    pub backoff_base_ms: Option<u64>,
    pub log: LogConfig,
    /// A network namespace to join (the pod's, held by a file); none: a new, empty one.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The board's own network namespace (`host_network = true`): none of its own at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Files of the host mounted into the container (its resolv.conf, hosts), read-only.
    #[serde(default)]
    pub files: Vec<FileMount>,
    /// The pod's address (http and tcp probes connect to it).
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// The signal that asks the container to stop (SIGKILL follows after `stop_grace_ms`).
    #[serde(default = "sigterm")]
    pub stop_signal: i32,
    /// Startup, liveness and readiness probes, run by the shim.
    #[serde(default)]
    pub probes: Vec<super::probe::ProbeConfig>,
    /// tmpfs volumes: where, and how many bytes at most.
    #[serde(default)]
    pub tmpfs: Vec<(String, u64)>,
    /// Directories of the board (local and host volumes) mounted into the container.
    #[serde(default)]
    pub binds: Vec<BindMount>,
    /// Environment variables whose values are read, when the container starts, from these files
    /// (in the replica's secrets tmpfs): never written into a file on disk.
    #[serde(default)]
    pub secret_env: Vec<(String, PathBuf)>,
    /// Without the default seccomp profile (`security = { seccomp = "unconfined" }`, admins only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfined: bool,
    /// Device nodes of the board the container gets: made at the same path inside, each allowed
    /// read and write by a devices-cgroup rule of its own (never mknod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<bramble_proto::device::Device>,
    /// Capabilities beyond the default set, and taken from it (`ALL`: every one), by the name
    /// after `CAP_`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// The cgroup its cgroup is made under (`[resources] cgroup_parent`; a name, one level).
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
}

/// Where containers' cgroups go unless the agent's config says otherwise.
pub const DEFAULT_CGROUP_PARENT: &str = "bramble";

fn default_cgroup_parent() -> String {
    DEFAULT_CGROUP_PARENT.into()
}

/// A directory of the board seen at `destination` inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

fn sigterm() -> i32 {
    libc::SIGTERM
}

/// A host file seen at `destination` inside the container, read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMount {
    pub source: PathBuf,
    pub destination: String,
}

/// The default process limit per container.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

impl ContainerConfig {
    /// Its runtime spec holds secrets (its bundle lives on a tmpfs).
    pub fn holds_secrets(&self) -> bool {
        !self.secret_env.is_empty()
    }

    /// The cgroup path, the same under cgroup v1 and v2.
    pub fn cgroups_path(&self) -> String {
        format!("/{}/{}", self.cgroup_parent, self.id)
    }
}

/// Checks a container id (also a directory name and a cgroup name).
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid container id {id:?}: expected 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}
