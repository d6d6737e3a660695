//! `/metrics` for Prometheus (and the dashboard, `/` and `/api/cluster`) (OpenMetrics text, with `prometheus-client`) and the small HTTP
//! listener that serves it, on the address `[metrics] listen` names in leader.toml (off unless
//! set). Gauges are filled from the leader's state at each scrape; the controller's timings are
//! histograms kept for the leader's life. Plain HTTP on an address the admin chooses (loopback, or
//! a management network): the figures are usage and counts, never secrets.

use crate::controllers::plan::holds_node;
use bramble_proto::model::{App, ConditionStatus, Node, Replica, RolloutState};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What `/metrics` and the dashboard read.
#[derive(Debug, Clone)]
pub struct Handles {
    /// The store, readiness, usage and events (the dashboard reads only these).
    pub dashboard: crate::observability::dashboard::Handles,
    /// The store's file, for its size (none: in memory).
    pub store_path: Option<std::path::PathBuf>,
    /// Scheduled backups' results.
    pub backups: Arc<crate::backup::BackupStats>,
    /// The replica controller's timings.
    pub published: Arc<crate::controllers::Published>,
    /// The ingress certificates' ends.
    pub ingress: Arc<crate::ingress::ProxyState>,
}

impl std::ops::Deref for Handles {
    type Target = crate::observability::dashboard::Handles;
    fn deref(&self) -> &crate::observability::dashboard::Handles {
        &self.dashboard
    }
}

impl Handles {
    /// The size of the store's file, if it has one.
    pub fn store_size(&self) -> Option<u64> {
        std::fs::metadata(self.store_path.as_ref()?).ok().map(|m| m.len())
    }
}

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Registers a gauge family named `name` and fills it (one value without labels: a plain gauge).
fn family(reg: &mut Registry, name: &str, help: &str, values: Vec<(Labels, f64)>) {
    if let [(l, v)] = values.as_slice() {
        if l.is_empty() {
            let g = FloatGauge::default();
            g.set(*v);
            reg.register(name, help, g);
            return;
        }
    }
    let f = Family::<Labels, FloatGauge>::default();
    for (l, v) in values {
        f.get_or_create(&l).set(v);
    }
    reg.register(name, help, f);
}

/// The OpenMetrics text of everything the leader knows now.
pub fn render(api: &Handles) -> Result<String, String> {
    let err = |e: crate::error::Error| e.to_string();
    let nodes: Vec<Node> = api.objects.list::<Node>().map_err(err)?.into_iter().map(|v| v.value).collect();
    let apps: Vec<App> = api.objects.list::<App>().map_err(err)?.into_iter().map(|v| v.value).collect();
    let replicas: Vec<Replica> = api.objects.list::<Replica>().map_err(err)?.into_iter().map(|v| v.value).collect();
    let now = bramble_proto::time::now_ms();
    let mut reg = Registry::with_prefix("bramble");

    let ready = nodes
        .iter()
        .map(|n| {
            let up = api.registry.view(&n.meta.name, now).ready.status == ConditionStatus::True;
            (labels(&[("node", &n.meta.name)]), if up { 1.0 } else { 0.0 })
        })
        .collect();
    family(&mut reg, "node_ready", "Whether the node is Ready (1) or not (0)", ready);
    let unnetworked = nodes
        .iter()
        .map(|n| (labels(&[("node", &n.meta.name)]), if n.info.network_problem.is_some() { 1.0 } else { 0.0 }))
        .collect();
    family(
        &mut reg,
        "node_network_unavailable",
        "Whether the node's agent cannot network pods (NetworkUnavailable: no nft, a refused bridge or route)",
        unnetworked,
    );
    let expiring = nodes
        .iter()
        .filter_map(|n| Some((labels(&[("node", &n.meta.name)]), n.cert_expires_ms? as f64 / 1000.0)))
        .collect();
    family(
        &mut reg,
        "node_certificate_expiry_timestamp_seconds",
        "When the node's certificate expires (agents renew two thirds in)",
        expiring,
    );
    let connected = nodes.iter().filter(|n| api.registry.connection(&n.meta.name).is_some()).count();
    family(&mut reg, "sessions", "Agents connected to this leader", vec![(Vec::new(), connected as f64)]);

    let usage = api.usage.nodes();
    let node_figure = |f: &dyn Fn(&bramble_proto::usage::NodeUsage) -> Option<f64>| {
        usage.iter().filter_map(|u| Some((labels(&[("node", &u.node)]), f(u)?))).collect::<Vec<_>>()
    };
    family(&mut reg, "node_cpu_usage_cores", "CPU the node uses", node_figure(&|u| Some(u.cpu_millis as f64 / 1000.0)));
    family(&mut reg, "node_cpus", "CPUs of the node", node_figure(&|u| Some(f64::from(u.cpus))));
    family(
        &mut reg,
        "node_memory_used_bytes",
        "Memory in use (total minus available)",
        node_figure(&|u| Some(u.memory_used as f64)),
    );
    family(&mut reg, "node_memory_total_bytes", "Memory of the node", node_figure(&|u| Some(u.memory_total as f64)));
    family(&mut reg, "node_load1", "The 1-minute load average", node_figure(&|u| Some(u.load1_milli as f64 / 1000.0)));
    family(
        &mut reg,
        "node_disk_free_bytes",
        "Room left on the agent's data dir",
        node_figure(&|u| Some(u.disk_free as f64)),
    );
    family(
        &mut reg,
        "node_temperature_celsius",
        "The hottest thermal zone",
        node_figure(&|u| u.temperature_mc.map(|t| t as f64 / 1000.0)),
    );
    family(
        &mut reg,
        "node_throttled",
        "The firmware's throttling flags (a Raspberry Pi's get_throttled); 0 is none",
        node_figure(&|u| u.throttled.map(|t| t as f64)),
    );

    let rusage = api.usage.replicas();
    let replica_figure = |f: &dyn Fn(&bramble_proto::usage::ReplicaUsage) -> f64| {
        rusage
            .iter()
            .map(|u| (labels(&[("app", &u.app), ("replica", &u.replica), ("node", &u.node)]), f(u)))
            .collect::<Vec<_>>()
    };
    family(
        &mut reg,
        "replica_cpu_usage_cores",
        "CPU the replica uses",
        replica_figure(&|u| u.cpu_millis as f64 / 1000.0),
    );
    family(
        &mut reg,
        "replica_cpu_throttled_ratio",
        "Share of the last interval the CPU quota held the replica back",
        replica_figure(&|u| u.throttled_permille as f64 / 1000.0),
    );
    family(
        &mut reg,
        "replica_memory_working_set_bytes",
        "Memory in use minus inactive file cache",
        replica_figure(&|u| u.memory_working_set as f64),
    );
    family(
        &mut reg,
        "replica_oom_kills",
        "Processes the kernel killed for memory",
        replica_figure(&|u| u.oom_kills as f64),
    );
    family(&mut reg, "replica_pids", "Processes in the replica", replica_figure(&|u| u.pids as f64));
    family(
        &mut reg,
        "replica_network_receive_bytes_per_second",
        "Bytes the pod received per second",
        replica_figure(&|u| u.net_rx_per_s as f64),
    );
    family(
        &mut reg,
        "replica_network_transmit_bytes_per_second",
        "Bytes the pod sent per second",
        replica_figure(&|u| u.net_tx_per_s as f64),
    );

    let mut by_phase: BTreeMap<(String, String), f64> = BTreeMap::new();
    for a in &apps {
        // Every phase of every app, zero included, so a series does not vanish.
        for p in ["Pending", "Pulling", "Starting", "Running", "BackOff", "Succeeded", "Failed", "Lost"] {
            by_phase.insert((a.meta.name.clone(), p.to_string()), 0.0);
        }
    }
    for r in &replicas {
        *by_phase.entry((r.app.clone(), format!("{:?}", r.phase))).or_default() += 1.0;
    }
    let phases = by_phase.into_iter().map(|((a, p), v)| (labels(&[("app", &a), ("phase", &p)]), v)).collect();
    family(&mut reg, "replicas", "Replicas by app and phase", phases);
    let restarts = replicas
        .iter()
        .map(|r| (labels(&[("app", &r.app), ("replica", &r.meta.name)]), f64::from(r.restarts)))
        .collect();
    family(&mut reg, "replica_restarts", "How often the replica's container was restarted", restarts);
    let desired = apps.iter().map(|a| (labels(&[("app", &a.meta.name)]), f64::from(a.spec.replicas.0))).collect();
    family(&mut reg, "app_desired_replicas", "The replica count each app asks for", desired);
    let held = replicas.iter().filter(|r| holds_node(r) && r.node.is_some()).count();
    family(&mut reg, "replicas_bound", "Replicas bound to a node", vec![(Vec::new(), held as f64)]);
    let mut rolling = 0.0;
    for a in &apps {
        let latest = api.objects.history(&a.meta.name).map_err(err)?.pop();
        if latest.is_some_and(|h| h.value.state == RolloutState::Progressing) {
            rolling += 1.0;
        }
    }
    family(&mut reg, "rollouts_in_progress", "Apps whose latest rollout is progressing", vec![(Vec::new(), rolling)]);
    family(
        &mut reg,
        "objects",
        "Stored objects by kind",
        vec![
            (labels(&[("kind", "node")]), nodes.len() as f64),
            (labels(&[("kind", "app")]), apps.len() as f64),
            (labels(&[("kind", "replica")]), replicas.len() as f64),
        ],
    );
    if let Some(size) = api.store_size() {
        family(&mut reg, "store_size_bytes", "The size of the leader's store file", vec![(Vec::new(), size as f64)]);
    }
    let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
    failures.inc_by(api.backups.failures.load(std::sync::atomic::Ordering::Relaxed));
    reg.register("backup_failures", "Scheduled backups that failed", failures);
    let last = api.backups.last_success_ms.load(std::sync::atomic::Ordering::Relaxed);
    if last > 0 {
        family(
            &mut reg,
            "backup_last_success_timestamp_seconds",
            "When the last scheduled backup was written",
            vec![(Vec::new(), last as f64 / 1000.0)],
        );
    }
    let ends = api.ingress.certificate_ends();
    if !ends.is_empty() {
        family(
            &mut reg,
            "ingress_certificate_expiry_timestamp_seconds",
            "When an ingress's certificate ends: from a secret, or as a proxy serves it (ACME)",
            ends.iter()
                .map(|(i, s, node, end)| {
                    (labels(&[("ingress", i), ("source", s), ("node", node)]), *end as f64 / 1000.0)
                })
                .collect(),
        );
    }
    let t = &api.published.timings;
    reg.register("controller_pass_duration_seconds", "One pass of the replica controller", t.pass.clone());
    reg.register("scheduler_plan_duration_seconds", "The pure plan of a pass, scheduling included", t.plan.clone());
    reg.register(
        "controller_passes_skipped",
        "Seconds without a replica controller pass: the cluster settled, nothing it reads changed",
        t.skipped.clone(),
    );

    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Serves `/metrics` on `listen` until `cancel`. A taken or invalid address is said once, and
/// the leader goes on serving the cluster without it.
/// Whether the request `head` bears `token` (`Authorization: Bearer …`), compared in constant
/// time.
pub fn bears(head: &str, token: Option<&str>) -> bool {
    let Some(token) = token.filter(|t| !t.is_empty()) else { return false };
    let given = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("authorization").then(|| value.trim())?.strip_prefix("Bearer ")
    });
    let Some(given) = given else { return false };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

pub async fn serve(
    api: Handles,
    listen: String,
    cluster_name: String,
    token: Option<String>,
    cancel: CancellationToken,
) {
    let token: Option<Arc<str>> = token.map(Into::into);
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            warn!("metrics: listen address {listen:?} is invalid ({e}; expected ip:port); the cluster is served without /metrics");
            return;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!("metrics: cannot listen on {addr}: {e}; the cluster is served without /metrics");
            return;
        }
    };
    info!("metrics on http://{addr}/metrics");
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!("metrics: accept: {e}");
                    continue;
                }
            },
        };
        let api = api.clone();
        let cluster_name = cluster_name.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.lines().next().and_then(|l| l.strip_prefix("GET ")).and_then(|l| l.split(' ').next());
            let (status, kind, body) = match path.map(|p| p.split('?').next().unwrap_or(p)) {
                Some("/metrics") => {
                    let a = api.clone();
                    match tokio::task::spawn_blocking(move || render(&a)).await {
                        Ok(Ok(text)) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
                        Ok(Err(e)) => ("500 Internal Server Error", "text/plain", e),
                        Err(e) => ("500 Internal Server Error", "text/plain", e.to_string()),
                    }
                }
                Some("/") | Some("/index.html") => {
                    ("200 OK", "text/html; charset=utf-8", crate::observability::dashboard::INDEX_HTML.to_string())
                }
                Some("/api/cluster") => {
                    let a = api.clone();
                    let details = bears(&head, token.as_deref());
                    match tokio::task::spawn_blocking(move || {
                        crate::observability::dashboard::cluster(&a.dashboard, &cluster_name, details)
                    })
                    .await
                    {
                        Ok(Ok(v)) => ("200 OK", "application/json", v.to_string()),
                        Ok(Err(e)) => ("500 Internal Server Error", "text/plain", e),
                        Err(e) => ("500 Internal Server Error", "text/plain", e.to_string()),
                    }
                }
                Some(_) => (
                    "404 Not Found",
                    "text/plain",
                    "served here: / (the dashboard), /api/cluster, /metrics\n".to_string(),
                ),
                None => ("405 Method Not Allowed", "text/plain", "GET only\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
