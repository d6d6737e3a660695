//! The scheduler: a pure function from a snapshot of nodes and a replica to a node, or to the
//! reasons it fits nowhere. Filter (ready, not cordoned, networked, image platform, cpu, memory, replica
//! slots, node selector, taints, host ports, max per node) → score (spread the app, least
//! allocated, image already there) → the best node, ties broken by name.
//!
//! No I/O and no clock: the caller builds the snapshot, binds with compare-and-swap, and calls
//! again for the next replica with the snapshot updated (see [`Scheduler::bind`]).

use bramble_proto::manifest::{AppSpec, Protocol, TolerationOperator};
use bramble_proto::model::Platform;
use bramble_proto::model::{Arch, Resources, Taint, TaintEffect};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What the scheduler knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub name: String,
    pub arch: Arch,
    pub ready: bool,
    pub unschedulable: bool,
    /// The board cannot network pods now (`NetworkUnavailable`).
    pub network_unavailable: bool,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// What the replicas bound to it ask for.
    pub requested: Resources,
    pub host_ports: BTreeSet<(u16, Protocol)>,
    /// Image references the node has in its store.
    pub images: BTreeSet<String>,
    /// Local volumes the node holds.
    pub volumes: BTreeSet<String>,
    /// Replicas per app bound to it.
    pub apps: BTreeMap<String, u32>,
    /// Replicas per pod template (revision hash) bound to it.
    pub revisions: BTreeMap<String, u32>,
    /// The devices the board offers apps.
    pub devices: Vec<bramble_proto::device::Device>,
}

/// Board → the platforms the image offers, as that board found when it could not pull it.
pub type Misses = BTreeMap<String, Vec<Platform>>;

/// Whether `node`'s own miss says the image cannot run there.
pub fn missed(misses: &Misses, node: &str, arch: &bramble_proto::model::Arch) -> bool {
    misses.get(node).is_some_and(|offered| Platform::choose(offered, arch).is_none())
}

/// One replica to place.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub app: &'a str,
    pub spec: &'a AppSpec,
    /// What boards found the image offers (board → platforms), each about itself only: a node
    /// is refused when its own miss says the image lacks its arch. (One board cannot speak for
    /// others: a rogue one would stop an app everywhere.)
    pub misses: Option<&'a Misses>,
    /// The pod template's revision hash.
    pub revision: &'a str,
    /// Apps pinned by local volumes: the only nodes it may go to (where its volumes are).
    pub homes: Option<&'a BTreeSet<String>>,
}

/// Why a node was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    NotReady,
    Cordoned,
    NetworkUnavailable,
    ArchMismatch,
    InsufficientCpu,
    InsufficientMemory,
    TooManyReplicas,
    NodeSelector,
    Taint,
    HostPort,
    MaxPerNode,
    HostVolume,
    VolumeElsewhere,
    MissingDevice,
    /// An every-board app already has its replica there.
    OnePerBoard,
    /// Being drained, every-board apps included.
    Draining,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::NotReady => "not ready",
            Reason::Cordoned => "cordoned",
            Reason::NetworkUnavailable => "network unavailable",
            Reason::ArchMismatch => "arch mismatch",
            Reason::InsufficientCpu => "insufficient cpu",
            Reason::InsufficientMemory => "insufficient memory",
            Reason::TooManyReplicas => "too many replicas",
            Reason::NodeSelector => "node selector mismatch",
            Reason::Taint => "untolerated taint",
            Reason::HostPort => "host port in use",
            Reason::MaxPerNode => "max per node reached",
            Reason::HostVolume => "no host volume label",
            Reason::VolumeElsewhere => "local volume on another node",
            Reason::MissingDevice => "missing device",
            Reason::OnePerBoard => "already running one",
            Reason::Draining => "being drained",
        }
    }
}

/// A replica that fits nowhere, with a reason a human can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub nodes: usize,
    /// First failing filter per node, counted.
    pub reasons: BTreeMap<Reason, usize>,
    /// The devices asked for that the nodes refused for [`Reason::MissingDevice`] lack.
    pub devices: BTreeSet<String>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("0/0 nodes: no nodes in the cluster");
        }
        let mut parts: Vec<(usize, Reason)> = self.reasons.iter().map(|(r, n)| (*n, *r)).collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let text: Vec<String> = parts
            .iter()
            .map(|(n, r)| match r {
                Reason::MissingDevice if !self.devices.is_empty() => {
                    let list: Vec<&str> = self.devices.iter().map(String::as_str).collect();
                    format!("{n} {} {}", r.text(), list.join(", "))
                }
                _ => format!("{n} {}", r.text()),
            })
            .collect();
        write!(f, "0/{} nodes: {}", self.nodes, text.join(", "))
    }
}

impl std::error::Error for Unschedulable {}

fn tolerates(spec: &AppSpec, t: &Taint) -> bool {
    spec.placement.tolerations.iter().any(|tol| {
        let key_ok = match &tol.key {
            None => tol.operator == TolerationOperator::Exists,
            Some(k) => k == &t.key,
        };
        let value_ok = tol.operator == TolerationOperator::Exists || tol.value.as_deref().unwrap_or("") == t.value;
        let effect_ok = tol.effect.is_none_or(|e| e == t.effect);
        key_ok && value_ok && effect_ok
    })
}

/// The first filter `node` fails for `req`, if any.
pub fn filter(node: &NodeSnapshot, req: &Request<'_>) -> Option<Reason> {
    let spec = req.spec;
    if !node.ready {
        return Some(Reason::NotReady);
    }
    // Every-board apps run on cordoned boards too (a drain leaves them alone unless asked).
    if node.unschedulable && !spec.every_board() {
        return Some(Reason::Cordoned);
    }
    if node.network_unavailable {
        return Some(Reason::NetworkUnavailable);
    }
    if spec.every_board() && node.apps.get(req.app).is_some_and(|n| *n > 0) {
        return Some(Reason::OnePerBoard);
    }
    if let Some(r) = mismatch(node, req) {
        return Some(r);
    }
    // All of a replica's containers together (or its largest init container).
    let (cpu, mem) = spec.requests();
    if node.requested.cpu_millis + cpu > node.allocatable.cpu_millis {
        return Some(Reason::InsufficientCpu);
    }
    if node.requested.memory_bytes + mem > node.allocatable.memory_bytes {
        return Some(Reason::InsufficientMemory);
    }
    if node.requested.replicas + 1 > node.allocatable.replicas {
        return Some(Reason::TooManyReplicas);
    }
    if req.homes.is_some_and(|h| !h.contains(&node.name)) {
        // (An every-board app's homes are its boards: one it matches is left out only while a
        // drain moves it off.)
        return Some(if spec.every_board() { Reason::Draining } else { Reason::VolumeElsewhere });
    }
    if spec.board_ports().any(|port| node.host_ports.contains(&port)) {
        return Some(Reason::HostPort);
    }
    if let Some(max) = spec.placement.max_per_node {
        if node.apps.get(req.app).copied().unwrap_or(0) >= max.0 {
            return Some(Reason::MaxPerNode);
        }
    }
    None
}

/// What about `node` itself keeps `req` off it, whatever runs there and whether it is up now: its
/// arch, labels, devices and taints. An every-board app has a replica on each node this passes.
pub fn mismatch(node: &NodeSnapshot, req: &Request<'_>) -> Option<Reason> {
    let spec = req.spec;
    if req.misses.is_some_and(|m| missed(m, &node.name, &node.arch)) {
        return Some(Reason::ArchMismatch);
    }
    if spec.placement.node_selector.0.iter().any(|(k, v)| node.labels.get(k) != Some(v)) {
        return Some(Reason::NodeSelector);
    }
    if spec.host_volume_labels().any(|(k, v)| match v {
        Some(v) => node.labels.get(k).map(String::as_str) != Some(v),
        None => !node.labels.contains_key(k),
    }) {
        return Some(Reason::HostVolume);
    }
    if !bramble_proto::device::missing(&spec.devices, &node.devices).is_empty() {
        return Some(Reason::MissingDevice);
    }
    if node.taints.iter().any(|t| t.effect != TaintEffect::PreferNoSchedule && !tolerates(spec, t)) {
        return Some(Reason::Taint);
    }
    None
}

/// Higher is better. Spread dominates — of the replicas of the same template first (so a rolling
/// update ends as spread as it began), then of the app — then free resources, then image locality.
pub fn score(node: &NodeSnapshot, req: &Request<'_>) -> i64 {
    let same_app = i64::from(node.apps.get(req.app).copied().unwrap_or(0));
    let same_revision = i64::from(node.revisions.get(req.revision).copied().unwrap_or(0));
    let free = |used: u64, total: u64| (total.saturating_sub(used) * 100).checked_div(total).unwrap_or(0) as i64;
    let (cpu, mem) = req.spec.requests();
    let least_allocated = (free(node.requested.cpu_millis + cpu, node.allocatable.cpu_millis)
        + free(node.requested.memory_bytes + mem, node.allocatable.memory_bytes))
        / 2;
    let image = if node.images.contains(req.spec.image.as_str()) { 10 } else { 0 };
    let prefer_not =
        node.taints.iter().filter(|t| t.effect == TaintEffect::PreferNoSchedule && !tolerates(req.spec, t)).count()
            as i64;
    -same_revision * 100_000 - same_app * 1000 + least_allocated + image - prefer_not * 50
}

/// Places replicas one by one over a snapshot it keeps up to date.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pub nodes: Vec<NodeSnapshot>,
}

impl Scheduler {
    pub fn new(mut nodes: Vec<NodeSnapshot>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Scheduler { nodes }
    }

    /// The best node for `req` (its index), or why there is none. Changes nothing.
    pub fn place(&self, req: &Request<'_>) -> Result<usize, Unschedulable> {
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut devices = BTreeSet::new();
        let mut best: Option<(i64, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            match filter(n, req) {
                Some(r) => {
                    *reasons.entry(r).or_default() += 1;
                    if r == Reason::MissingDevice {
                        devices.extend(
                            bramble_proto::device::missing(&req.spec.devices, &n.devices).iter().map(|d| d.to_string()),
                        );
                    }
                }
                None => {
                    let s = score(n, req);
                    // Strictly better only: ties go to the first name.
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, i));
                    }
                }
            }
        }
        best.map(|(_, i)| i).ok_or(Unschedulable { nodes: self.nodes.len(), reasons, devices })
    }

    /// Records that a replica of `req` is bound to node `i`.
    pub fn bind(&mut self, i: usize, req: &Request<'_>) {
        let n = &mut self.nodes[i];
        let (cpu, mem) = req.spec.requests();
        n.requested.cpu_millis += cpu;
        n.requested.memory_bytes += mem;
        n.requested.replicas += 1;
        n.host_ports.extend(req.spec.board_ports());
        *n.apps.entry(req.app.to_string()).or_default() += 1;
        *n.revisions.entry(req.revision.to_string()).or_default() += 1;
    }

    /// Records that a replica of `app` (with `spec`, at `revision`) no longer takes room on node `i`.
    pub fn unbind(&mut self, i: usize, app: &str, spec: &AppSpec, revision: &str) {
        let n = &mut self.nodes[i];
        let (cpu, mem) = spec.requests();
        n.requested.cpu_millis = n.requested.cpu_millis.saturating_sub(cpu);
        n.requested.memory_bytes = n.requested.memory_bytes.saturating_sub(mem);
        n.requested.replicas = n.requested.replicas.saturating_sub(1);
        for port in spec.board_ports() {
            n.host_ports.remove(&port);
        }
        if let Some(c) = n.apps.get_mut(app) {
            *c = c.saturating_sub(1);
        }
        if let Some(c) = n.revisions.get_mut(revision) {
            *c = c.saturating_sub(1);
        }
    }

    /// The index of node `name` (nodes are sorted by name).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.name.as_str().cmp(name)).ok()
    }

    /// Places and binds `count` replicas; returns the node names (or the first failure).
    pub fn place_many(&mut self, req: &Request<'_>, count: usize) -> Result<Vec<String>, Unschedulable> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let i = self.place(req)?;
            self.bind(i, req);
            out.push(self.nodes[i].name.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
