//! The reconciler's side effects, each behind a narrow trait with a real implementation
//! (`real.rs`: shims, the content store and registry, network namespaces) and a recording fake
//! (`fake.rs`, for tests and the simulated cluster).

use crate::runtime::protocol::ShimState;
use bramble_images::Progress;
use bramble_proto::image_ref::ImageRef;
use bramble_proto::model::Platform;
use bramble_proto::wire::Assignment;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub use crate::net::pods::PodNet;

/// Why a replica could not be started (kept with its retry, shown in its status).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReconcileError {
    /// The image offers no platform for this board: the leader places the replica elsewhere.
    #[error("pulling {image}: {message}")]
    NoPlatform { image: String, offered: Vec<Platform>, message: String },
    #[error("pulling {image}: {message}")]
    Pull { image: String, message: String },
    #[error("image {0} is not in the store")]
    NotPulled(String),
    #[error("preparing the root filesystem: {0}")]
    Rootfs(String),
    /// The app and the image do not make a container (e.g. an unknown user).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
    #[error("network: {0}")]
    Network(String),
}

/// Containers on this board (one shim each, in production).
pub trait Containers: Send + Sync {
    /// Every container with a directory here, live or not, sorted.
    fn ids(&self) -> Vec<String>;
    /// Asks the container's shim for its state (`None` if it does not answer).
    fn state(&self, id: &str) -> Option<ShimState>;
    /// Prepares the root filesystem and starts the container of `a` (its image is in the store)
    /// in the pod network `net`.
    /// Creates and starts container `a.replica` (its id) in `net`; `pod`: the replica's name when
    /// it has several containers (they share its tmpfs volumes).
    fn start(&self, a: &Assignment, net: &PodNet, pod: Option<&str>) -> Result<(), ReconcileError>;
    /// Stops (within the grace period) and removes a container with its root filesystem and logs.
    fn remove(&self, id: &str) -> Result<(), ReconcileError>;
    /// Stops a container for good (SIGTERM, SIGKILL after `grace`), keeping it and its exit.
    fn stop(&self, id: &str, grace: std::time::Duration) -> Result<(), ReconcileError>;
    /// Runs `args` in the running container (a config's reload): its exit code and output.
    fn exec(&self, id: &str, args: Vec<String>, timeout: std::time::Duration) -> Result<(i32, String), ReconcileError>;
}

/// The images this board can run.
pub trait Images: Send + Sync {
    /// The references the store holds.
    fn present(&self) -> BTreeSet<String>;
    /// Fetches `image` into the store, reporting bytes on `progress`; says where its layers came
    /// from (empty: nothing to say).
    fn pull(&self, image: &ImageRef, progress: &Progress) -> Result<String, ReconcileError>;
}

/// Pods' networks.
pub trait Network: Send + Sync {
    /// The network of `replica`'s pod, made if it is not there (`host`: the board's own network,
    /// `host_network = true`). Safe to repeat.
    fn prepare(&self, replica: &str, host: bool) -> Result<PodNet, ReconcileError>;
    /// Removes the network of `replica`'s pod. Safe to repeat.
    fn release(&self, replica: &str) -> Result<(), ReconcileError>;
    /// The address of `replica`'s pod, if it has one.
    fn ip(&self, replica: &str) -> Option<Ipv4Addr>;
}
