//! The agent's wiring, and the only place that starts its threads and tasks: the data dir made
//! private; the reconciler (which adopts the containers this board ran before, under their
//! shims); the watchdog feeder; the network thread; then the sessions with the leaders
//! (`crate::session::serve`). Shutdown runs the other way: when `cancel` fires the session ends
//! (no more desired sets), then the reconciler and the network thread stop as their channels
//! close; containers keep running under their shims.

use crate::config::AgentConfig;
use crate::net::{self, pods::Pods};
use crate::reconcile::real::PodNetwork;
use crate::session::AgentError;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Runs the agent until `cancel` fires. `ready` is called once the board's own machinery runs
/// (containers adopted, the reconciler and the network controller going), before any leader
/// answers: a board that boots with its leader unreachable keeps its replicas running, and under
/// systemd (`Type=notify`) its start must not time out waiting for a leader (it did: the unit was
/// killed and started again every 90 s). Joining and sessions follow; their trouble is in the log
/// and in `bramble get nodes`.
pub async fn run(
    config: AgentConfig,
    cancel: CancellationToken,
    ready: impl FnOnce() + Send,
) -> Result<(), AgentError> {
    let name = config.node_name()?;
    let dir = config.data_dir.clone();
    // The board's key, its state and the secrets' mounts: the agent's alone, whatever the umask.
    bramble_proto::fsutil::private_dir(&dir).map_err(AgentError::Workloads)?;
    // Containers and their network first: what this board ran before keeps running, reachable,
    // even if no leader answers.
    let exe = std::env::current_exe().map_err(AgentError::Workloads)?;
    let shim_bin = crate::runtime::shim_binary_for(&exe).map_err(AgentError::NoShim)?;
    let pods = Arc::new(Pods::open(&config.data_dir.join("pods")).map_err(|e| AgentError::Network(e.to_string()))?);
    let (net_tx, net_rx) = std::sync::mpsc::sync_channel(64);
    let network = PodNetwork { pods: pods.clone(), changed: net_tx.clone() };
    let mut work = crate::reconcile::spawn(&config, &shim_bin, network).map_err(AgentError::Workloads)?;
    if let Some(interval) = bramble_daemon::systemd::watchdog_interval() {
        info!("feeding systemd's watchdog every {} ms while the reconciler goes round", interval.as_millis() / 2);
        tokio::spawn(bramble_daemon::systemd::watchdog(interval, vec![("reconciler", work.heartbeat.clone())]));
    }
    let controller = net::node::Controller::new(
        config.network_settings(),
        pods,
        work.ports.clone(),
        tokio::runtime::Handle::current(),
    );
    work.network_applied = Some(controller.applied_versions());
    work.network_problem = Some(controller.problems());
    std::thread::Builder::new()
        .name("network".into())
        .spawn(move || controller.run(net_rx))
        .map_err(AgentError::Workloads)?;
    work.network = Some(net_tx);
    ready();
    crate::session::serve(config, name, work, cancel).await
}
