//! The network as boards see it: the cluster's settings, every board's pod subnet and address,
//! every service with its endpoints; and the message that brings a board from what its session
//! last sent to what it must know now. Pure.

use super::endpoints::Routes;
use bramble_proto::network::{Cidr, ClusterNetwork, NodeNetwork, Peer};
use bramble_proto::wire::LeaderMsg;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What the controller publishes for the sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkView {
    pub cluster: ClusterNetwork,
    /// Every node: its pod subnet and address, where known.
    pub nodes: BTreeMap<String, (Option<Cidr>, Option<Ipv4Addr>)>,
    pub services: Routes,
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
        NodeNetwork { cluster: self.cluster.clone(), pod_cidr, peers }
    }
}

/// What a session last sent its board.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub node: NodeNetwork,
    pub services: Routes,
}

/// The message that brings a board from `sent` (none yet this session) to `view`; `None` when
/// nothing changed. A changed service is sent alone, not the whole list.
pub fn delta(sent: Option<&Sent>, view: &NetworkView, name: &str) -> (Option<LeaderMsg>, Sent) {
    let now = Sent { node: view.node(name), services: view.services.clone() };
    let msg = match sent {
        None => Some(LeaderMsg::Network {
            node: Some(now.node.clone()),
            full: true,
            upsert: now.services.values().cloned().collect(),
            remove: Vec::new(),
        }),
        Some(before) => {
            let node = (before.node != now.node).then(|| now.node.clone());
            let upsert: Vec<_> = now
                .services
                .iter()
                .filter(|(k, v)| before.services.get(*k) != Some(*v))
                .map(|(_, v)| v.clone())
                .collect();
            let remove: Vec<String> =
                before.services.keys().filter(|k| !now.services.contains_key(*k)).cloned().collect();
            (node.is_some() || !upsert.is_empty() || !remove.is_empty()).then_some(LeaderMsg::Network {
                node,
                full: false,
                upsert,
                remove,
            })
        }
    };
    (msg, now)
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
            cluster: ClusterNetwork::default(),
            nodes: nodes.into(),
            services: [svc("web", "10.43.0.1"), svc("db", "10.43.0.2")].into(),
        }
    }

    #[test]
    fn a_board_gets_its_subnet_and_peers_then_only_what_changes() {
        let v = view();
        let n = v.node("pi-1");
        assert_eq!(n.pod_cidr.unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(n.peers.len(), 1, "pi-3 has no subnet yet: no route to it");
        let (first, sent) = delta(None, &v, "pi-1");
        assert!(
            matches!(first, Some(LeaderMsg::Network { node: Some(_), full: true, ref upsert, .. }) if upsert.len() == 2)
        );
        assert_eq!(delta(Some(&sent), &v, "pi-1").0, None, "nothing changed");
        let mut v2 = v.clone();
        v2.services.remove("db");
        v2.services.get_mut("web").unwrap().vip = "10.43.0.9".parse().unwrap();
        let (msg, _) = delta(Some(&sent), &v2, "pi-1");
        match msg {
            Some(LeaderMsg::Network { node: None, full: false, upsert, remove }) => {
                assert_eq!(upsert.len(), 1);
                assert_eq!(remove, ["db"]);
            }
            other => panic!("{other:?}"),
        }
        v2.nodes.get_mut("pi-2").unwrap().1 = Some("192.168.1.22".parse().unwrap());
        assert!(
            matches!(delta(Some(&sent), &v2, "pi-1").0, Some(LeaderMsg::Network { node: Some(_), .. })),
            "a peer moved"
        );
    }
}
