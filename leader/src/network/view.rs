//! The network as boards see it: the cluster's settings, every board's pod subnet and address,
//! every service with its endpoints; and the message that brings a board from what its session
//! last sent to what it must know now. Pure.

use super::endpoints::Routes;
use bramble_proto::network::{Cidr, ClusterNetwork, NodeNetwork, Peer, PeerChanges};
use bramble_proto::wire::LeaderMsg;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// What the controller publishes for the sessions.
#[derive(Debug, Clone)]
pub struct NetworkView {
    /// Bumped by each publication that changes the view; boards say which one they applied.
    pub version: u64,
    pub cluster: ClusterNetwork,
    /// Every node: its pod subnet and address, where known.
    pub nodes: BTreeMap<String, (Option<Cidr>, Option<Ipv4Addr>)>,
    pub services: Routes,
    /// The cluster's own ports, which no pod but a control-plane app's may reach.
    pub control_ports: Vec<(bramble_proto::manifest::Protocol, u16)>,
    /// The nodes whose entry differs from the view published just before this one (added,
    /// changed or gone), noted once when it is published ([`NetworkView::note_changes`]): a
    /// session one version behind looks at those alone. None: not noted (every session then walks
    /// both views). Not part of what the view says: equality ignores it.
    pub nodes_changed: Option<Vec<String>>,
}

impl PartialEq for NetworkView {
    fn eq(&self, o: &NetworkView) -> bool {
        // Every field named: one added later must be placed here or the build fails.
        let NetworkView { version, cluster, nodes, services, control_ports, nodes_changed: _ } = self;
        *version == o.version
            && *cluster == o.cluster
            && *nodes == o.nodes
            && *services == o.services
            && *control_ports == o.control_ports
    }
}

/// A node's entry as a route to its pods: its subnet and address, when both are known.
fn route((cidr, address): &(Option<Cidr>, Option<Ipv4Addr>)) -> Option<(Cidr, Ipv4Addr)> {
    Some(((*cidr)?, (*address)?))
}

impl NetworkView {
    /// What node `name` must know of the network.
    pub fn node(&self, name: &str) -> NodeNetwork {
        let pod_cidr = self.nodes.get(name).and_then(|n| n.0);
        let peers = self
            .nodes
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .filter_map(|(n, e)| route(e).map(|(pod_cidr, address)| Peer { node: n.clone(), address, pod_cidr }))
            .collect();
        NodeNetwork { cluster: self.cluster.clone(), pod_cidr, peers, control_ports: self.control_ports.clone() }
    }

    /// Whether node `name`'s own part (all of [`NetworkView::node`] but the peers) is the same in
    /// both views.
    fn same_own_part(&self, other: &NetworkView, name: &str) -> bool {
        let cidr = |v: &NetworkView| v.nodes.get(name).and_then(|n| n.0);
        self.cluster == other.cluster && self.control_ports == other.control_ports && cidr(self) == cidr(other)
    }

    /// Notes which nodes' entries differ from `before`, the view published just before this one.
    pub fn note_changes(&mut self, before: &NetworkView) {
        let changed = self.nodes.iter().filter(|(n, e)| before.nodes.get(*n) != Some(*e)).map(|(n, _)| n);
        let gone = before.nodes.keys().filter(|n| !self.nodes.contains_key(*n));
        self.nodes_changed = Some(changed.chain(gone).cloned().collect());
    }

    /// The other boards that came, changed or went for node `name` from `before` to this view,
    /// one entry each, without building either whole list. With hundreds of boards joining, every
    /// session is brought up to date after every join: a session one version behind looks only at
    /// the nodes noted as changed, any other walks both views.
    pub fn peer_changes(&self, before: &NetworkView, name: &str) -> PeerChanges {
        let names: Box<dyn Iterator<Item = &String>> = match &self.nodes_changed {
            Some(changed) if before.version + 1 == self.version => Box::new(changed.iter()),
            _ => Box::new(self.nodes.keys().chain(before.nodes.keys().filter(|n| !self.nodes.contains_key(*n)))),
        };
        let mut out = PeerChanges::default();
        for n in names.filter(|n| n.as_str() != name) {
            let now = self.nodes.get(n).and_then(route);
            if now != before.nodes.get(n).and_then(route) {
                match now {
                    Some((pod_cidr, address)) => out.upsert.push(Peer { node: n.clone(), address, pod_cidr }),
                    None => out.remove.push(n.clone()),
                }
            }
        }
        out
    }
}

/// What a session last sent its board: the view it was brought to, shared with every other
/// session (a copy per board of its peers and of the services would be O(boards²) memory).
#[derive(Debug, Clone)]
pub struct Sent {
    pub view: Arc<NetworkView>,
}

/// The message that brings a board from `sent` (none yet this session) to `view`; `None` when
/// the version is the same. A changed service is sent alone, not the whole list; a new version
/// with nothing new for this board is still sent (empty), so that the board confirms it. With
/// `peer_deltas` (the agent takes them), other boards' changes go alone too, and the board's part
/// whole only when its own subnet, the cluster's settings or its control ports changed.
pub fn delta(sent: Option<&Sent>, view: &Arc<NetworkView>, name: &str, peer_deltas: bool) -> (Option<LeaderMsg>, Sent) {
    let version = view.version;
    let msg = match sent {
        None => Some(LeaderMsg::Network {
            node: Some(view.node(name)),
            full: true,
            upsert: view.services.values().cloned().collect(),
            remove: Vec::new(),
            version,
            peers: None,
        }),
        Some(before) if Arc::ptr_eq(&before.view, view) || *before.view == **view => None,
        Some(before) => {
            let (node, peers) = if !peer_deltas {
                let now = view.node(name);
                ((before.view.node(name) != now).then_some(now), None)
            } else if !view.same_own_part(&before.view, name) {
                (Some(view.node(name)), None)
            } else {
                let changes = view.peer_changes(&before.view, name);
                (None, (!changes.is_empty()).then_some(changes))
            };
            let upsert: Vec<_> = view
                .services
                .iter()
                .filter(|(k, v)| before.view.services.get(*k) != Some(*v))
                .map(|(_, v)| v.clone())
                .collect();
            let remove: Vec<String> =
                before.view.services.keys().filter(|k| !view.services.contains_key(*k)).cloned().collect();
            Some(LeaderMsg::Network { node, full: false, upsert, remove, version, peers })
        }
    };
    (msg, Sent { view: view.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::network::ServiceRoute;

    fn view() -> NetworkView {
        let nodes = [
            ("pi-1".to_string(), (Some("10.42.0.0/24".parse().unwrap()), Some("192.168.1.11".parse().unwrap()))),
            ("pi-2".to_string(), (Some("10.42.1.0/24".parse().unwrap()), Some("192.168.1.12".parse().unwrap()))),
            ("pi-3".to_string(), (None, Some("192.168.1.13".parse().unwrap()))),
        ];
        let svc = |n: &str, vip: &str| {
            (
                n.to_string(),
                ServiceRoute { name: n.into(), vip: vip.parse().unwrap(), ports: vec![], endpoints: vec![] },
            )
        };
        NetworkView {
            version: 1,
            cluster: ClusterNetwork::default(),
            nodes: nodes.into(),
            services: [svc("web", "10.43.0.1"), svc("db", "10.43.0.2")].into(),
            control_ports: Vec::new(),
            nodes_changed: None,
        }
    }

    #[test]
    fn an_older_board_gets_its_subnet_and_peers_then_only_what_changes() {
        let v = Arc::new(view());
        let n = v.node("pi-1");
        assert_eq!(n.pod_cidr.unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(n.peers.len(), 1, "pi-3 has no subnet yet: no route to it");
        let (first, sent) = delta(None, &v, "pi-1", false);
        assert!(
            matches!(first, Some(LeaderMsg::Network { node: Some(_), full: true, ref upsert, .. }) if upsert.len() == 2)
        );
        assert_eq!(delta(Some(&sent), &v, "pi-1", false).0, None, "nothing changed");
        assert!(Arc::ptr_eq(&sent.view, &v), "a session keeps the published view, not a copy of its part");
        assert_eq!(delta(Some(&sent), &Arc::new(view()), "pi-1", false).0, None, "the same view published again");
        let mut v2 = (*v).clone();
        v2.version = 2;
        v2.services.remove("db");
        v2.services.get_mut("web").unwrap().vip = "10.43.0.9".parse().unwrap();
        let (msg, _) = delta(Some(&sent), &Arc::new(v2.clone()), "pi-1", false);
        match msg {
            Some(LeaderMsg::Network { node: None, full: false, upsert, remove, version: 2, peers: None }) => {
                assert_eq!(upsert.len(), 1);
                assert_eq!(remove, ["db"]);
            }
            other => panic!("{other:?}"),
        }
        let mut v3 = (*v).clone();
        v3.version = 3;
        let (msg, _) = delta(Some(&sent), &Arc::new(v3), "pi-1", false);
        assert!(
            matches!(msg, Some(LeaderMsg::Network { node: None, ref upsert, ref remove, version: 3, .. }) if upsert.is_empty() && remove.is_empty()),
            "a new version with nothing new for this board is still sent, to be confirmed: {msg:?}"
        );
        v2.nodes.get_mut("pi-2").unwrap().1 = Some("192.168.1.22".parse().unwrap());
        assert!(
            matches!(
                delta(Some(&sent), &Arc::new(v2.clone()), "pi-1", false).0,
                Some(LeaderMsg::Network { node: Some(_), .. })
            ),
            "a peer moved"
        );
    }

    /// What a board knows after each message, as the agent applies it.
    fn apply(known: &mut Option<NodeNetwork>, msg: LeaderMsg) {
        let LeaderMsg::Network { node, peers, .. } = msg else { panic!("{msg:?}") };
        if let Some(n) = node {
            *known = Some(n);
        }
        if let Some(c) = peers {
            known.as_mut().expect("peers after the board's part").apply_peers(c);
        }
    }

    #[test]
    fn a_board_gets_other_boards_changes_alone_and_ends_where_the_view_is() {
        let mut v = view();
        let (first, mut sent) = delta(None, &Arc::new(v.clone()), "pi-1", true);
        let mut known = None;
        apply(&mut known, first.unwrap());
        // pi-3 gets its subnet, pi-4 joins without an address, pi-2 moves, pi-5 comes whole.
        type Step = Box<dyn Fn(&mut NetworkView)>;
        let steps: Vec<Step> = vec![
            Box::new(|v| v.nodes.get_mut("pi-3").unwrap().0 = Some("10.42.3.0/24".parse().unwrap())),
            Box::new(|v| {
                v.nodes.insert("pi-4".into(), (Some("10.42.4.0/24".parse().unwrap()), None));
            }),
            Box::new(|v| v.nodes.get_mut("pi-2").unwrap().1 = Some("192.168.1.22".parse().unwrap())),
            Box::new(|v| {
                v.nodes.insert(
                    "pi-5".into(),
                    (Some("10.42.5.0/24".parse().unwrap()), Some("192.168.1.15".parse().unwrap())),
                );
            }),
            Box::new(|v| {
                v.nodes.remove("pi-2");
            }),
            Box::new(|v| v.nodes.get_mut("pi-4").unwrap().1 = Some("192.168.1.14".parse().unwrap())),
            Box::new(|v| v.nodes.get_mut("pi-5").unwrap().0 = None),
        ];
        let mut sizes = Vec::new();
        let mut behind = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let before = v.clone();
            step(&mut v);
            v.version += 1;
            // As published: the nodes that changed noted; a session one version behind uses them,
            // and gets what walking both views gives.
            v.note_changes(&before);
            let (msg, now) = delta(Some(&sent), &Arc::new(v.clone()), "pi-1", true);
            let walked = NetworkView { nodes_changed: None, ..v.clone() };
            assert_eq!(msg, delta(Some(&sent), &Arc::new(walked), "pi-1", true).0, "step {i}");
            // One that fell behind (two versions) walks both views: the noted ones are not all.
            if let Some(old) = behind.last() {
                let (msg, _) = delta(Some(old), &Arc::new(v.clone()), "pi-1", true);
                let mut k = Some(before.node("pi-1"));
                k.as_mut().unwrap().peers = old.view.node("pi-1").peers;
                apply(&mut k, msg.unwrap());
                assert_eq!(k, Some(v.node("pi-1")), "step {i}, two versions behind");
            }
            behind.push(sent.clone());
            let msg = msg.expect("a new version is sent");
            let LeaderMsg::Network { node, peers, .. } = &msg else { panic!("step {i}: {msg:?}") };
            assert!(node.is_none(), "step {i}: only others changed, the board's part is not sent whole");
            sizes.push(peers.as_ref().map_or(0, |c| c.upsert.len() + c.remove.len()));
            apply(&mut known, msg);
            assert_eq!(known.as_ref(), Some(&v.node("pi-1")), "step {i}");
            sent = now;
        }
        assert_eq!(sizes, [1, 0, 1, 1, 1, 1, 1], "one entry per change; pi-4 without an address is no peer yet");
        // Its own subnet changes: its part is sent whole.
        v.nodes.get_mut("pi-1").unwrap().0 = Some("10.42.9.0/24".parse().unwrap());
        v.version += 1;
        let (msg, _) = delta(Some(&sent), &Arc::new(v.clone()), "pi-1", true);
        assert!(matches!(msg, Some(LeaderMsg::Network { node: Some(_), peers: None, .. })), "{msg:?}");
        apply(&mut known, msg.unwrap());
        assert_eq!(known, Some(v.node("pi-1")));
    }
}
