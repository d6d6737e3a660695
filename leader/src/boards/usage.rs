//! What boards measure of themselves and their replicas, kept in the leader's memory only: the
//! latest figures and the last 15 minutes per series (nothing is written; a restart starts over).
//! Counters become rates between consecutive samples, timed by the leader's clock (boards' clocks
//! may lag). Samples that make no sense — a counter going backwards, used above total, more CPU
//! than the board has — are dropped with a warning, never recorded.

use bramble_proto::usage::{NodeSample, NodeUsage, ReplicaUsage, UsageSample};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How long the history goes back.
pub const KEEP_MS: u64 = 15 * 60 * 1000;
/// At most this many points per series (a 1 s interval for 15 minutes).
const MAX_POINTS: usize = 900;

/// Memory series are kept in KiB, CPU in millicores.
const KIB: u64 = 1024;

/// A series of (time, value), oldest first, bounded by time and count: whole seconds of the
/// leader's clock and the value in the series' unit, 8 bytes a point. (10,000 replicas, a sample
/// every 15 s for 15 minutes: 1.2 million points, 9.6 MB at 8 bytes, twice that at 16.)
#[derive(Debug, Clone, Default)]
struct Series(VecDeque<(u32, u32)>);

impl Series {
    fn push(&mut self, at_ms: u64, v: u64, unit: u64) {
        let at = u32::try_from(at_ms / 1000).unwrap_or(u32::MAX);
        self.0.push_back((at, u32::try_from(v / unit).unwrap_or(u32::MAX)));
        let keep = (KEEP_MS / 1000) as u32;
        while self.0.len() > MAX_POINTS || self.0.front().is_some_and(|(t, _)| t.saturating_add(keep) < at) {
            self.0.pop_front();
        }
    }

    fn values(&self, unit: u64) -> Vec<u64> {
        self.0.iter().map(|(_, v)| u64::from(*v) * unit).collect()
    }
}

#[derive(Debug, Clone, Default)]
struct NodeState {
    raw: Option<(u64, NodeSample)>,
    latest: NodeUsage,
    cpu: Series,
    memory: Series,
}

/// A replica's last counters and when they came: what the next sample's rates are taken against.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at_ms: u64,
    cpu_ns: u64,
    throttled_ns: u64,
    net_rx: u64,
    net_tx: u64,
}

#[derive(Debug, Clone, Default)]
struct ReplicaState {
    raw: Option<Counters>,
    /// The latest figures, without the replica's name (the map's key) or history (below).
    latest: ReplicaUsage,
    cpu: Series,
    memory: Series,
}

/// The board's and replicas' usage. A replica's state is boxed: the map of thousands of them
/// then holds pointers, not a few hundred bytes per slot, empty slots included.
#[derive(Debug, Default)]
pub struct Usage {
    nodes: Mutex<HashMap<String, NodeState>>,
    replicas: Mutex<HashMap<String, Box<ReplicaState>>>,
}

/// Per second over `ms`, of a counter that went from `a` to `b` (None if it went backwards).
fn rate(a: u64, b: u64, ms: u64) -> Option<u64> {
    (b >= a && ms > 0).then(|| (b - a) * 1000 / ms)
}

/// Why a board's own figures are absurd, if they are.
fn node_absurd(n: &NodeSample) -> Option<String> {
    if n.cpus == 0 || n.cpus > 4096 {
        return Some(format!("{} CPUs", n.cpus));
    }
    if n.memory_used > n.memory_total || n.disk_free > n.disk_total {
        return Some("more used (or free) than there is".into());
    }
    if n.temperature_mc.is_some_and(|t| !(-50_000..=150_000).contains(&t)) {
        return Some(format!("a temperature of {} m°C", n.temperature_mc.unwrap_or(0)));
    }
    None
}

impl Usage {
    pub fn new() -> Usage {
        Usage::default()
    }

    /// Records a sample from `node` received at `now_ms`. `bound_here` says whether a replica is
    /// bound to that node (a board speaks only for its own). Returns warnings about what was dropped.
    pub fn record(
        &self,
        node: &str,
        sample: UsageSample,
        now_ms: u64,
        bound_here: impl Fn(&str) -> Option<String>,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        let cpus = sample.node.cpus;
        {
            let mut nodes = self.nodes.lock().expect("usage lock");
            let st = nodes.entry(node.to_string()).or_default();
            match node_absurd(&sample.node) {
                Some(why) => warnings.push(format!("node {node}: sample dropped: {why}")),
                None => {
                    let n = &sample.node;
                    let cpu = match &st.raw {
                        Some((at, prev)) => match rate(prev.cpu_busy_ns, n.cpu_busy_ns, now_ms.saturating_sub(*at)) {
                            // ns per second → millicores
                            Some(ns_per_s) => Some((ns_per_s / 1_000_000).min(u64::from(n.cpus) * 1000)),
                            None => {
                                warnings.push(format!("node {node}: its CPU counter went backwards (a reboot?)"));
                                None
                            }
                        },
                        None => None,
                    };
                    if let Some(c) = cpu {
                        st.cpu.push(now_ms, c, 1);
                        st.latest.cpu_millis = c;
                    }
                    st.memory.push(now_ms, n.memory_used, KIB);
                    st.latest = NodeUsage {
                        node: node.to_string(),
                        at_ms: now_ms,
                        cpus: n.cpus,
                        cpu_millis: st.latest.cpu_millis,
                        memory_used: n.memory_used,
                        memory_total: n.memory_total,
                        load1_milli: n.load1_milli,
                        disk_free: n.disk_free,
                        disk_total: n.disk_total,
                        temperature_mc: n.temperature_mc,
                        throttled: n.throttled,
                        ..Default::default()
                    };
                    st.raw = Some((now_ms, n.clone()));
                }
            }
        }
        let mut replicas = self.replicas.lock().expect("usage lock");
        for r in sample.replicas {
            let Some(app) = bound_here(&r.replica) else {
                warnings.push(format!("node {node}: sample for replica {} dropped: it is not bound there", r.replica));
                continue;
            };
            let st = replicas.entry(r.replica.clone()).or_default();
            let (mut cpu, mut throttled, mut rx, mut tx) = (None, 0, 0, 0);
            if let Some(prev) = &st.raw {
                let ms = now_ms.saturating_sub(prev.at_ms);
                match rate(prev.cpu_ns, r.cpu_ns, ms) {
                    Some(ns_per_s) if ns_per_s / 1_000_000 <= u64::from(cpus.max(1)) * 1500 => {
                        cpu = Some(ns_per_s / 1_000_000);
                        let t = rate(prev.throttled_ns, r.throttled_ns, ms).unwrap_or(0);
                        throttled = (t / 1_000_000).min(1000);
                        rx = rate(prev.net_rx, r.net_rx, ms).unwrap_or(0);
                        tx = rate(prev.net_tx, r.net_tx, ms).unwrap_or(0);
                    }
                    Some(_) => warnings.push(format!("replica {}: more CPU than its board has; dropped", r.replica)),
                    // The container restarted: its counters began again.
                    None => {}
                }
            }
            if let Some(c) = cpu {
                st.cpu.push(now_ms, c, 1);
            }
            st.memory.push(now_ms, r.memory_working_set, KIB);
            st.latest = ReplicaUsage {
                app,
                node: node.to_string(),
                at_ms: now_ms,
                cpu_millis: cpu.unwrap_or(st.latest.cpu_millis),
                throttled_permille: throttled,
                memory_working_set: r.memory_working_set,
                memory_limit: r.memory_limit,
                oom_kills: r.oom_kills,
                pids: r.pids,
                net_rx_per_s: rx,
                net_tx_per_s: tx,
                ..Default::default()
            };
            st.raw = Some(Counters {
                at_ms: now_ms,
                cpu_ns: r.cpu_ns,
                throttled_ns: r.throttled_ns,
                net_rx: r.net_rx,
                net_tx: r.net_tx,
            });
        }
        warnings
    }

    /// The latest figures and history of every board that has sent a sample.
    pub fn nodes(&self) -> Vec<NodeUsage> {
        let nodes = self.nodes.lock().expect("usage lock");
        let mut out: Vec<NodeUsage> = nodes
            .values()
            .filter(|s| s.raw.is_some())
            .map(|s| NodeUsage {
                cpu_history: s.cpu.values(1),
                memory_history: s.memory.values(KIB),
                ..s.latest.clone()
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// The latest figures and history of every replica with a sample.
    pub fn replicas(&self) -> Vec<ReplicaUsage> {
        let replicas = self.replicas.lock().expect("usage lock");
        let mut out: Vec<ReplicaUsage> = replicas
            .iter()
            .map(|(name, s)| ReplicaUsage {
                replica: name.clone(),
                cpu_history: s.cpu.values(1),
                memory_history: s.memory.values(KIB),
                ..s.latest.clone()
            })
            .collect();
        out.sort_by(|a, b| (a.app.as_str(), a.replica.as_str()).cmp(&(b.app.as_str(), b.replica.as_str())));
        out
    }

    /// Forgets replicas `keep` rejects (deleted ones) and nodes that are gone.
    pub fn retain(&self, keep_replica: impl Fn(&str) -> bool, keep_node: impl Fn(&str) -> bool) {
        self.replicas.lock().expect("usage lock").retain(|k, _| keep_replica(k));
        self.nodes.lock().expect("usage lock").retain(|k, _| keep_node(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::usage::ReplicaSample;

    fn node(cpu_busy_ns: u64) -> NodeSample {
        NodeSample {
            cpu_busy_ns,
            cpus: 4,
            memory_total: 4 << 30,
            memory_used: 1 << 30,
            load1_milli: 500,
            disk_total: 32 << 30,
            disk_free: 20 << 30,
            temperature_mc: Some(52_000),
            throttled: None,
        }
    }

    fn replica(name: &str, cpu_ns: u64) -> ReplicaSample {
        ReplicaSample { replica: name.into(), cpu_ns, memory_working_set: 10 << 20, ..Default::default() }
    }

    fn ours(r: &str) -> Option<String> {
        r.starts_with("web-").then(|| "web".to_string())
    }

    #[test]
    fn counters_become_rates_and_history_is_kept_for_fifteen_minutes() {
        let u = Usage::new();
        let s = |t: u64, node_ns: u64, web_ns: u64| UsageSample {
            at_ms: t,
            node: node(node_ns),
            replicas: vec![replica("web-1", web_ns)],
        };
        assert!(u.record("pi-1", s(0, 0, 0), 1_000, ours).is_empty());
        // 15 s later: 30 s of CPU time on the board (2 cores busy), 7.5 s in the replica (500m).
        assert!(u.record("pi-1", s(0, 30_000_000_000, 7_500_000_000), 16_000, ours).is_empty());
        let n = &u.nodes()[0];
        assert_eq!((n.cpu_millis, n.cpu_history.clone(), n.temperature_mc), (2000, vec![2000], Some(52_000)));
        let r = &u.replicas()[0];
        assert_eq!((r.app.as_str(), r.cpu_millis, r.cpu_history.clone()), ("web", 500, vec![500]));
        // An hour of samples: only the last 15 minutes stay.
        for i in 2..=240u64 {
            u.record("pi-1", s(0, i * 30_000_000_000, i * 7_500_000_000), 1_000 + i * 15_000, ours);
        }
        let n = &u.nodes()[0];
        assert!(n.cpu_history.len() <= 61 && n.cpu_history.len() >= 60, "{}", n.cpu_history.len());
    }

    #[test]
    fn absurd_samples_and_other_boards_replicas_are_dropped() {
        let u = Usage::new();
        u.record(
            "pi-1",
            UsageSample { node: node(10), replicas: vec![replica("web-1", 100)], ..Default::default() },
            0,
            ours,
        );
        let mut bad = node(5);
        bad.memory_used = bad.memory_total + 1;
        let w = u.record("pi-1", UsageSample { node: bad, ..Default::default() }, 15_000, ours);
        assert!(w[0].contains("more used"), "{w:?}");
        // A counter going backwards gives no rate (a reboot), and says so.
        let w = u.record("pi-1", UsageSample { node: node(5), ..Default::default() }, 30_000, ours);
        assert!(w[0].contains("went backwards"), "{w:?}");
        assert!(u.nodes()[0].cpu_history.is_empty());
        // Another board's replica, and more CPU than the board has.
        let w = u.record(
            "pi-1",
            UsageSample {
                node: node(10),
                replicas: vec![replica("db-1", 1), replica("web-1", 10_000_000_000_000)],
                ..Default::default()
            },
            45_000,
            ours,
        );
        assert!(w.iter().any(|w| w.contains("db-1 dropped: it is not bound there")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("more CPU than its board has")), "{w:?}");
        assert!(u.replicas()[0].cpu_history.is_empty());
        let mut zero = node(20);
        zero.cpus = 0;
        assert!(!u.record("pi-1", UsageSample { node: zero, ..Default::default() }, 60_000, ours).is_empty());
    }

    #[test]
    fn history_keeps_bytes_to_the_kibibyte_and_names_each_replica() {
        let u = Usage::new();
        let mut r = replica("web-1", 0);
        r.memory_working_set = (5 << 30) + 1023; // above what 32 bits of bytes hold
        let sample = |r: ReplicaSample| UsageSample { node: node(0), replicas: vec![r], ..Default::default() };
        u.record("pi-1", sample(r.clone()), 1_000, ours);
        r.cpu_ns = 3_000_000_000;
        u.record("pi-1", sample(r), 4_000, ours);
        let got = &u.replicas()[0];
        assert_eq!(got.replica, "web-1");
        assert_eq!(got.memory_history, vec![5 << 30, 5 << 30]);
        assert_eq!(got.memory_working_set, (5 << 30) + 1023, "the latest figure stays exact");
        assert_eq!(got.cpu_history, vec![1000]);
        assert_eq!(u.nodes()[0].memory_history, vec![1 << 30, 1 << 30]);
    }
}
