//! The board's network controller: one thread that keeps the bridge, the routes to other boards
//! (or the vxlan device), the nft table and the DNS server in line with what the leader last
//! said, which it keeps in `network.json` — so after an agent restart with the leader away, the
//! board's network is rebuilt from it, and established connections (in conntrack) survive.
//!
//! What it decides is pure — the bridge and routes against the links it finds (`board.rs`), the nft
//! model from the services, the pods and the host ports, the script from the model the table holds
//! (`rules.rs`), which flows to forget — and what it does goes through [`Kernel`]: netlink, `nft`,
//! `conntrack`, `/proc/net`, the DNS server. [`Real`] is the board's; the unit tests (`node/tests.rs`)
//! and the simulated cluster record instead.

use super::board::{self, problem, Links, Want};
use super::dns::{self, Names};
use super::link::Netlink;
use super::pods::{Board, Pods};
use super::rules::{self, HostPort, Model};
use super::{conntrack, nft, NetError};
use crate::net::ports::PodRules;
use bramble_proto::manifest::Protocol;
use bramble_proto::model::NetworkProblem;
use bramble_proto::network::{Backend, Cidr, NodeNetwork, PeerChanges, ServiceRoute};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What the network controller does to the board.
pub trait Kernel {
    type Links: Links;
    /// A handle on the board's links, addresses and routes (netlink).
    fn links(&self) -> Result<Self::Links, NetError>;
    /// Whether `nft` can be run.
    fn has_nft(&self) -> bool;
    /// Applies an nft script as one transaction; how long it took.
    fn apply_rules(&self, script: &str) -> Result<Duration, NetError>;
    /// Forgets the flows of endpoints a rule sync took away (one dump for all of them).
    fn forget(&self, gone: &conntrack::Gone);
    /// The ports processes on the board listen on.
    fn listening(&self) -> BTreeSet<(Protocol, u16)>;
    /// Whether the DNS server serves on `addr`.
    fn dns_serving(&self, addr: Ipv4Addr) -> bool;
    /// (Re)starts the DNS server on `addr` with `names`, other names going to `upstreams`.
    fn serve_dns(&mut self, addr: Ipv4Addr, names: Arc<Names>, upstreams: Vec<SocketAddr>);
}

/// The board's kernel and tools; the DNS server runs on `rt`.
pub struct Real {
    rt: tokio::runtime::Handle,
    dns: Option<(Ipv4Addr, tokio::task::JoinHandle<()>)>,
}

impl Real {
    pub fn new(rt: tokio::runtime::Handle) -> Real {
        Real { rt, dns: None }
    }
}

impl Kernel for Real {
    type Links = Netlink;
    fn links(&self) -> Result<Netlink, NetError> {
        Netlink::open()
    }
    fn has_nft(&self) -> bool {
        super::check::binary("nft")
    }
    fn apply_rules(&self, script: &str) -> Result<Duration, NetError> {
        nft::apply(script)
    }
    fn forget(&self, gone: &conntrack::Gone) {
        conntrack::forget_gone(gone)
    }
    fn listening(&self) -> BTreeSet<(Protocol, u16)> {
        super::ports::listening()
    }
    fn dns_serving(&self, addr: Ipv4Addr) -> bool {
        self.dns.as_ref().is_some_and(|(a, task)| *a == addr && !task.is_finished())
    }
    fn serve_dns(&mut self, addr: Ipv4Addr, names: Arc<Names>, upstreams: Vec<SocketAddr>) {
        if let Some((_, task)) = self.dns.take() {
            task.abort();
        }
        self.dns = Some((addr, self.rt.spawn(dns::serve(addr, names, upstreams))));
    }
}

/// What the controller is told. (One input per message from the leader, moved through a channel
/// once: the size of the small variant does not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum NetInput {
    /// From the leader: this board's part (when it changed), then other boards' changes, and the
    /// services (`full`: exactly these; otherwise changes).
    Leader {
        node: Option<NodeNetwork>,
        full: bool,
        upsert: Vec<ServiceRoute>,
        remove: Vec<String>,
        version: u64,
        peers: Option<PeerChanges>,
    },
    /// A pod got or lost its network.
    PodsChanged,
}

/// The agent's network settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bridge: String,
    pub mtu: u32,
    /// Where names outside the cluster go (empty: the board's resolv.conf).
    pub dns_upstreams: Vec<SocketAddr>,
    pub state_file: PathBuf,
    /// The host ports the board lets pods take (a refused one is never forwarded).
    pub host_ports: super::ports::HostPortPolicy,
    /// Bramble's own ports this board knows of (its leaders', etcd's, an embedded leader's
    /// metrics), besides those the leader names: no pod reaches them.
    pub control_ports: BTreeSet<(Protocol, u16)>,
    /// Everything is checked (and repaired) again this often: something may have flushed a
    /// table, deleted a route or added an address.
    pub check_every: Duration,
    /// Whether services, host ports and the pods' firewall are programmed (`network.nft`).
    pub nft: bool,
}

/// What the leader last said, as kept on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Known {
    node: Option<NodeNetwork>,
    services: BTreeMap<String, ServiceRoute>,
}

pub struct Controller<K: Kernel = Real> {
    settings: Settings,
    pods: Arc<Pods>,
    bindings: tokio::sync::watch::Receiver<PodRules>,
    kernel: K,
    known: Known,
    names: Arc<Names>,
    /// What the nft table holds (none: unknown, write it whole).
    applied: Option<Model>,
    last_full: Instant,
    /// Every endpoint address of every service (ready or not), as last programmed.
    endpoint_ips: BTreeSet<Ipv4Addr>,
    /// The leader's view version received and not yet confirmed, and where confirmations go.
    pending_version: Option<u64>,
    applied_version: tokio::sync::watch::Sender<u64>,
    /// Why pods cannot be networked here now, if they cannot (the node's `NetworkUnavailable`).
    problem: tokio::sync::watch::Sender<Option<NetworkProblem>>,
}

impl Controller<Real> {
    /// The board's controller; its DNS server runs on `rt`.
    pub fn new(
        settings: Settings,
        pods: Arc<Pods>,
        bindings: tokio::sync::watch::Receiver<PodRules>,
        rt: tokio::runtime::Handle,
    ) -> Controller<Real> {
        Controller::with_kernel(settings, pods, bindings, Real::new(rt))
    }
}

impl<K: Kernel> Controller<K> {
    pub fn with_kernel(
        settings: Settings,
        pods: Arc<Pods>,
        bindings: tokio::sync::watch::Receiver<PodRules>,
        kernel: K,
    ) -> Controller<K> {
        if !settings.nft {
            warn!("network.nft = false: no service VIPs, host ports or pod firewall on this board");
        }
        let known = match std::fs::read(&settings.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!("ignoring {}: {e}", settings.state_file.display());
                Known::default()
            }),
            Err(_) => Known::default(),
        };
        Controller {
            settings,
            pods,
            bindings,
            kernel,
            known,
            names: Arc::default(),
            applied: None,
            last_full: Instant::now(),
            endpoint_ips: BTreeSet::new(),
            pending_version: None,
            applied_version: tokio::sync::watch::Sender::new(0),
            problem: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Why the board cannot network pods now (none: it can, or it does not know yet).
    pub fn problems(&self) -> tokio::sync::watch::Receiver<Option<NetworkProblem>> {
        self.problem.subscribe()
    }

    /// The leader's network view versions this board has applied (the latest).
    pub fn applied_versions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_version.subscribe()
    }

    /// Runs until `inputs` closes.
    pub fn run(mut self, inputs: Receiver<NetInput>) {
        self.sync(true);
        loop {
            let changed = match inputs.recv_timeout(Duration::from_millis(500)) {
                Ok(input) => {
                    self.input(input);
                    while let Ok(more) = inputs.try_recv() {
                        self.input(more);
                    }
                    true
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let full = self.last_full.elapsed() >= self.settings.check_every;
            self.turn(changed, full);
        }
    }

    /// One turn after inputs (`changed`): brings the board in line if anything changed (`full`:
    /// everything checked and the nft table rewritten whole), then confirms the leader's view.
    pub fn turn(&mut self, changed: bool, full: bool) {
        if changed || full || self.bindings.has_changed().unwrap_or(false) {
            self.sync(full);
        }
        // What the leader said is in the kernel now (or the board cannot route yet).
        if let Some(v) = self.pending_version.take() {
            self.applied_version.send_replace(v);
        }
    }

    /// This board's part of the network (its subnet, its peers) the leader last said, as kept in
    /// `network.json`.
    pub fn node(&self) -> Option<&NodeNetwork> {
        self.known.node.as_ref()
    }

    /// The services (with their endpoints) the leader last said, as kept in `network.json`.
    pub fn services(&self) -> &BTreeMap<String, ServiceRoute> {
        &self.known.services
    }

    /// What the nft table holds, as far as this controller knows (none: unknown or not written).
    pub fn rules(&self) -> Option<&Model> {
        self.applied.as_ref()
    }

    /// Takes what the leader said.
    pub fn input(&mut self, input: NetInput) {
        let NetInput::Leader { node, full, upsert, remove, version, peers } = input else { return };
        // The latest said (a restarted leader counts from 1 again: not the largest).
        self.pending_version = Some(version);
        let mut k = self.known.clone();
        if let Some(n) = node {
            k.node = Some(n);
        }
        match (peers, k.node.as_mut()) {
            (None, _) => {}
            (Some(changes), Some(n)) => n.apply_peers(changes),
            // A leader sends this board's part first in every session: peers before it are not
            // for a part this board knows.
            (Some(_), None) => warn!("other boards' changes before this board's own part: ignored"),
        }
        if full {
            k.services.clear();
        }
        for s in upsert {
            k.services.insert(s.name.clone(), s);
        }
        for r in remove {
            k.services.remove(&r);
        }
        if k != self.known {
            let bytes = serde_json::to_vec(&k).expect("network state serialises");
            if let Err(e) = bramble_proto::fsutil::write_file_atomic(&self.settings.state_file, &bytes, 0o600) {
                warn!("cannot keep the network state: {e}");
            }
            self.known = k;
        }
    }

    /// Brings the board in line with what is known, repairing what someone changed; `full`
    /// rewrites the whole nft table. Says what keeps pods from being networked, if anything.
    fn sync(&mut self, full: bool) {
        let Some(node) = self.known.node.clone() else { return };
        let Some(subnet) = node.pod_cidr else {
            warn!("this board has no pod subnet yet: pods cannot start here");
            return;
        };
        if full {
            self.last_full = Instant::now();
        }
        let problem = match self.board(&node, subnet) {
            Ok(()) => {
                let p = self.sync_rules(&node, full);
                self.serve_dns(subnet.gateway(), &node.cluster.domain);
                p
            }
            Err(p) => Some(p),
        };
        self.problem.send_if_modified(|old| {
            let same =
                old.as_ref().map(|o| (&o.reason, &o.message)) == problem.as_ref().map(|p| (&p.reason, &p.message));
            if !same {
                match &problem {
                    Some(p) => warn!(reason = %p.reason, "pods cannot be networked here: {}", p.message),
                    None if old.is_some() => info!("the board's network works again"),
                    None => {}
                }
                *old = problem;
            }
            !same
        });
    }

    /// The bridge, the routes and the pods' board settings (`super::board`); a problem when the
    /// kernel refuses a piece.
    fn board(&mut self, node: &NodeNetwork, subnet: Cidr) -> Result<(), NetworkProblem> {
        let want = Want { bridge: &self.settings.bridge, mtu: self.settings.mtu, node, subnet };
        let nl = self.kernel.links().map_err(|e| board::bridge_refused(&want, e))?;
        let pods = &self.pods;
        let bridge =
            board::bridge(&nl, &want, || pods.addresses().iter().map(|(r, _)| super::pods::host_veth(r)).collect())?;
        pods.set_board(Board {
            bridge: want.bridge.to_string(),
            subnet,
            mtu: want.pod_mtu(),
            domain: node.cluster.domain.clone(),
        })
        .map_err(|e| board::bridge_refused(&want, e))?;
        board::routes(&nl, &want, bridge)
    }

    fn model(&mut self, node: &NodeNetwork) -> Model {
        let rules = self.bindings.borrow_and_update().clone();
        let bindings = &rules.host_ports;
        let mut policy = self.settings.host_ports.clone();
        if node.cluster.backend == Backend::Vxlan {
            policy.reserved.insert((Protocol::Udp, node.cluster.vxlan_port), "the vxlan port".into());
        }
        let forwarded =
            |p: Protocol, port: u16| self.applied.as_ref().is_some_and(|m| m.host_ports.contains_key(&(p, port)));
        let mut listening = None;
        let host_ports: Vec<HostPort> = bindings
            .iter()
            .filter_map(|b| {
                let h =
                    HostPort { protocol: b.protocol, port: b.host, ip: self.pods.ip(&b.replica)?, target: b.container };
                // The reconciler refused to start such a replica; its port is never forwarded
                // either. A port already forwarded is no process's (the DNAT takes it first).
                if let Err(why) = policy.check(h.protocol, h.port) {
                    tracing::debug!(replica = %b.replica, "{why}");
                    return None;
                }
                if !forwarded(h.protocol, h.port)
                    && listening.get_or_insert_with(|| self.kernel.listening()).contains(&(h.protocol, h.port))
                {
                    return None;
                }
                Some(h)
            })
            .collect();
        let addresses = self.pods.addresses();
        let pods = addresses.iter().map(|(_, ip)| *ip);
        let mut m = Model::new(Some(node.cluster.cluster_cidr), &self.known.services, &host_ports, pods);
        m.control_ports = self.settings.control_ports.iter().chain(&node.control_ports).copied().collect();
        m.control_plane =
            addresses.iter().filter(|(r, _)| rules.control_plane.contains(r.as_str())).map(|(_, ip)| *ip).collect();
        m
    }

    /// The nft table; a problem when it cannot be written.
    fn sync_rules(&mut self, node: &NodeNetwork, full: bool) -> Option<NetworkProblem> {
        if !self.settings.nft {
            return None; // said once, at the start
        }
        if !self.kernel.has_nft() {
            self.applied = None;
            return Some(problem(
                "NftMissing",
                "nft is missing: services, host ports and the pods' firewall need it — apt-get install nftables \
                 (the board picks it up by itself)"
                    .into(),
            ));
        }
        let model = self.model(node);
        let script = match &self.applied {
            Some(old) if !full => rules::diff(old, &model),
            _ => rules::full(&model),
        };
        if script.is_empty() {
            return None;
        }
        match self.kernel.apply_rules(&script) {
            Ok(took) => {
                tracing::debug!(took_ms = took.as_millis() as u64, lines = script.lines().count(), "nft rules synced");
                let mut gone = conntrack::Gone::default();
                if let Some(old) = &self.applied {
                    gone.udp = rules::udp_gone(old, &model);
                }
                self.applied = Some(model);
                // A pod gone from every service (deleted, not just unready: established
                // connections to a draining replica are kept): this board's flows to it go.
                let now: BTreeSet<Ipv4Addr> =
                    self.known.services.values().flat_map(|s| s.endpoints.iter().map(|e| e.ip)).collect();
                gone.replies = self.endpoint_ips.difference(&now).copied().collect();
                self.kernel.forget(&gone);
                self.endpoint_ips = now;
                None
            }
            Err(e) => {
                self.applied = None;
                Some(problem(
                    "RulesRefused",
                    format!("{e} (does the kernel have nf_tables with NAT? `bramble-agent check` tries it)"),
                ))
            }
        }
    }

    fn serve_dns(&mut self, addr: Ipv4Addr, domain: &str) {
        self.names.set(domain, self.known.services.values().map(|s| (s.name.clone(), s.vip)));
        if self.kernel.dns_serving(addr) {
            return;
        }
        let upstreams = if self.settings.dns_upstreams.is_empty() {
            dns::system_resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            self.settings.dns_upstreams.clone()
        };
        self.kernel.serve_dns(addr, self.names.clone(), upstreams);
    }
}

#[cfg(test)]
mod tests;
