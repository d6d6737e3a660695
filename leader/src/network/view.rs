//! The network as boards see it: the cluster's settings, every board's pod subnet and address,
//! every service with its endpoints; and the message that brings a board from what its session
//! last sent to what it must know now. Pure.

use super::endpoints::Routes;
use bramble_proto::network::{Cidr, ClusterNetwork, NodeNetwork, Peer};
use bramble_proto::wire::LeaderMsg;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// What the controller publishes for the sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkView {
    /// Bumped by each publication that changes the view; boards say which one they applied.
    pub version: u64,
    pub cluster: ClusterNetwork,
    /// Every node: its pod subnet and address, where known.
    pub nodes: BTreeMap<String, (Option<Cidr>, Option<Ipv4Addr>)>,
    pub services: Routes,
    /// The cluster's own ports, which no pod but a control-plane app's may reach.
    pub control_ports: Vec<(bramble_proto::manifest::Protocol, u16)>,
}

impl NetworkView {
    /// What node `name` must know of the network.
    pub fn node(&self, name: &str) -> NodeNetwork {
        let pod_cidr = self.nodes.get(name).and_then(|n| n.0);
        let peers = self
            .nodes
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .filter_map(|(n, (cidr, addr))| Some(Peer { node: n.clone(), address: (*addr)?, pod_cidr: (*cidr)? }))
            .collect();
        NodeNetwork { cluster: self.cluster.clone(), pod_cidr, peers, control_ports: self.control_ports.clone() }
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
/// with nothing new for this board is still sent (empty), so that the board confirms it.
pub fn delta(sent: Option<&Sent>, view: &Arc<NetworkView>, name: &str) -> (Option<LeaderMsg>, Sent) {
    let version = view.version;
    let msg = match sent {
        None => Some(LeaderMsg::Network {
            node: Some(view.node(name)),
            full: true,
            upsert: view.services.values().cloned().collect(),
            remove: Vec::new(),
            version,
        }),
        Some(before) if Arc::ptr_eq(&before.view, view) || *before.view == **view => None,
        Some(before) => {
            let now = view.node(name);
            let node = (before.view.node(name) != now).then_some(now);
            let upsert: Vec<_> = view
                .services
                .iter()
                .filter(|(k, v)| before.view.services.get(*k) != Some(*v))
                .map(|(_, v)| v.clone())
                .collect();
            let remove: Vec<String> =
                before.view.services.keys().filter(|k| !view.services.contains_key(*k)).cloned().collect();
            Some(LeaderMsg::Network { node, full: false, upsert, remove, version })
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
        }
    }

    #[test]
    fn a_board_gets_its_subnet_and_peers_then_only_what_changes() {
        let v = Arc::new(view());
        let n = v.node("pi-1");
        assert_eq!(n.pod_cidr.unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(n.peers.len(), 1, "pi-3 has no subnet yet: no route to it");
        let (first, sent) = delta(None, &v, "pi-1");
        assert!(
            matches!(first, Some(LeaderMsg::Network { node: Some(_), full: true, ref upsert, .. }) if upsert.len() == 2)
        );
        assert_eq!(delta(Some(&sent), &v, "pi-1").0, None, "nothing changed");
        assert!(Arc::ptr_eq(&sent.view, &v), "a session keeps the published view, not a copy of its part");
        assert_eq!(delta(Some(&sent), &Arc::new(view()), "pi-1").0, None, "the same view published again");
        let mut v2 = (*v).clone();
        v2.version = 2;
        v2.services.remove("db");
        v2.services.get_mut("web").unwrap().vip = "10.43.0.9".parse().unwrap();
        let (msg, _) = delta(Some(&sent), &Arc::new(v2.clone()), "pi-1");
        match msg {
            Some(LeaderMsg::Network { node: None, full: false, upsert, remove, version: 2 }) => {
                assert_eq!(upsert.len(), 1);
                assert_eq!(remove, ["db"]);
            }
            other => panic!("{other:?}"),
        }
        let mut v3 = (*v).clone();
        v3.version = 3;
        let (msg, _) = delta(Some(&sent), &Arc::new(v3), "pi-1");
        assert!(
            matches!(msg, Some(LeaderMsg::Network { node: None, ref upsert, ref remove, version: 3, .. }) if upsert.is_empty() && remove.is_empty()),
            "a new version with nothing new for this board is still sent, to be confirmed: {msg:?}"
        );
        v2.nodes.get_mut("pi-2").unwrap().1 = Some("192.168.1.22".parse().unwrap());
        assert!(
            matches!(
                delta(Some(&sent), &Arc::new(v2.clone()), "pi-1").0,
                Some(LeaderMsg::Network { node: Some(_), .. })
            ),
            "a peer moved"
        );
    }
}
