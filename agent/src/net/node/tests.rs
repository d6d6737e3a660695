//! The board's network controller against the recording kernel (`net::fake`): what it writes to
//! the nft table and when, the flows it forgets, the DNS server, the problems it reports, the
//! state it keeps for a restart with the leader away.

use super::*;
use crate::net::fake::FakeKernel;
use crate::net::ports::{Binding, HostPortPolicy, PortRange};
use bramble_proto::network::{ClusterNetwork, Endpoint, RoutePort};

struct Board {
    controller: Controller<FakeKernel>,
    kernel: FakeKernel,
    pods: Arc<Pods>,
    rules: tokio::sync::watch::Sender<PodRules>,
    dir: tempfile::TempDir,
}

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        bridge: "bramble0".into(),
        mtu: 1500,
        dns_upstreams: vec!["192.0.2.53:53".parse().unwrap()],
        state_file: dir.join("network.json"),
        host_ports: HostPortPolicy::new(PortRange::default(), &[], &[]),
        control_ports: BTreeSet::from([(Protocol::Udp, 7443)]),
        check_every: Duration::from_secs(60),
        nft: true,
    }
}

fn board_in(dir: tempfile::TempDir) -> Board {
    let kernel = FakeKernel::default();
    let pods = Arc::new(Pods::open(&dir.path().join("pods")).unwrap());
    let (rules, bindings) = tokio::sync::watch::channel(PodRules::default());
    let controller = Controller::with_kernel(settings(dir.path()), pods.clone(), bindings, kernel.clone());
    Board { controller, kernel, pods, rules, dir }
}

fn board() -> Board {
    board_in(tempfile::tempdir().unwrap())
}

fn node() -> NodeNetwork {
    NodeNetwork {
        cluster: ClusterNetwork::default(),
        pod_cidr: Some("10.42.1.0/24".parse().unwrap()),
        peers: vec![],
        control_ports: vec![],
    }
}

fn service(name: &str, vip: [u8; 4], protocol: Protocol, endpoints: &[[u8; 4]]) -> ServiceRoute {
    ServiceRoute {
        name: name.into(),
        vip: Ipv4Addr::from(vip),
        ports: vec![RoutePort { port: 53, protocol, target: 5353 }],
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, ip)| Endpoint {
                replica: format!("{name}-{i}"),
                node: "b1".into(),
                ip: Ipv4Addr::from(*ip),
                ready: true,
            })
            .collect(),
    }
}

fn said(node: Option<NodeNetwork>, full: bool, upsert: Vec<ServiceRoute>, remove: &[&str], version: u64) -> NetInput {
    NetInput::Leader {
        node,
        full,
        upsert,
        remove: remove.iter().map(|r| r.to_string()).collect(),
        version,
        peers: None,
    }
}

impl Board {
    fn scripts(&self) -> Vec<String> {
        self.kernel.state().scripts.clone()
    }
    fn problem(&self) -> Option<String> {
        self.controller.problem.borrow().as_ref().map(|p| p.reason.clone())
    }
}

#[test]
fn nothing_is_done_before_the_leader_says_and_then_the_table_dns_and_confirmation_follow() {
    let mut b = board();
    let versions = b.controller.applied_versions();
    b.controller.turn(false, true);
    assert!(b.scripts().is_empty(), "no node network known: nothing written");
    assert_eq!(b.kernel.state().dns, None);
    let dns = service("dns", [10, 43, 0, 10], Protocol::Udp, &[[10, 42, 1, 5], [10, 42, 2, 7]]);
    b.controller.input(said(Some(node()), true, vec![dns], &[], 4));
    b.controller.turn(true, false);
    let scripts = b.scripts();
    assert_eq!(scripts.len(), 1, "one transaction");
    for piece in ["10.43.0.10", "10.42.1.5", "10.42.2.7", "udp . 7443"] {
        assert!(scripts[0].contains(piece), "the whole table names {piece}:\n{}", scripts[0]);
    }
    assert_eq!(b.kernel.state().dns, Some("10.42.1.1".parse().unwrap()), "DNS on the bridge's address");
    let names = b.kernel.state().names.clone().unwrap();
    assert_eq!(names.lookup("dns.bramble.internal"), Some(Some("10.43.0.10".parse().unwrap())));
    assert_eq!(*versions.borrow(), 4, "the view is confirmed once it is in the kernel");
    assert_eq!(b.problem(), None);
    // Nothing new: nothing written, DNS not restarted.
    b.controller.turn(false, false);
    assert_eq!(b.scripts().len(), 1);
    assert_eq!(b.kernel.state().dns_starts, 1);
}

#[test]
fn a_gone_endpoint_is_a_diff_and_its_flows_are_forgotten() {
    let mut b = board();
    let dns = |eps: &[[u8; 4]]| service("dns", [10, 43, 0, 10], Protocol::Udp, eps);
    b.controller.input(said(Some(node()), true, vec![dns(&[[10, 42, 1, 5], [10, 42, 2, 7]])], &[], 1));
    b.controller.turn(true, false);
    b.controller.input(said(None, false, vec![dns(&[[10, 42, 1, 5]])], &[], 2));
    b.controller.turn(true, false);
    let scripts = b.scripts();
    assert_eq!(scripts.len(), 2);
    assert!(!scripts[1].contains("delete table"), "a change is a diff, not the whole table:\n{}", scripts[1]);
    assert!(!scripts[1].contains("10.42.2.7"), "{}", scripts[1]);
    let s = b.kernel.state();
    assert_eq!(s.forgotten_udp, [("10.43.0.10".parse().unwrap(), 53, "10.42.2.7".parse().unwrap())]);
    assert_eq!(s.forgotten_replies, ["10.42.2.7".parse::<Ipv4Addr>().unwrap()], "gone from every service");
    assert_eq!(s.forgets, 1, "one dump of the table for the sync, not one per endpoint");
}

#[test]
fn a_periodic_check_rewrites_the_whole_table_whatever_happened_to_it() {
    let mut b = board();
    b.controller.input(said(Some(node()), true, vec![], &[], 1));
    b.controller.turn(true, true);
    // Someone flushed the table meanwhile: the controller cannot see it, the full pass repairs it.
    b.controller.turn(false, true);
    let scripts = b.scripts();
    assert_eq!(scripts.len(), 2);
    assert_eq!(scripts[0], scripts[1], "the whole table, written again");
}

#[test]
fn without_nft_or_when_nft_refuses_the_board_says_why_and_writes_whole_once_it_can() {
    let mut b = board();
    b.kernel.state().no_nft = true;
    b.controller.input(said(Some(node()), true, vec![], &[], 1));
    b.controller.turn(true, false);
    assert_eq!(b.problem().as_deref(), Some("NftMissing"));
    assert!(b.scripts().is_empty());
    b.kernel.state().no_nft = false;
    b.kernel.state().refuse = Some("Error: Could not process rule: No such file or directory".into());
    b.controller.turn(true, false);
    assert_eq!(b.problem().as_deref(), Some("RulesRefused"));
    b.kernel.state().refuse = None;
    b.controller.turn(true, false);
    assert_eq!(b.problem(), None, "it works again");
    assert!(b.scripts()[0].contains("delete table ip bramble"), "after a refusal the table is written whole");
}

#[test]
fn a_host_port_a_process_listens_on_is_not_taken_and_one_already_forwarded_is_kept() {
    let mut b = board();
    b.controller.input(said(Some(node()), true, vec![], &[], 1));
    b.controller.turn(true, false);
    let ip = b.pods.allocate("web-1").unwrap();
    let bind = |host| Binding { protocol: Protocol::Tcp, host, container: 80, replica: "web-1".into() };
    b.kernel.state().listening.insert((Protocol::Tcp, 8081));
    b.rules.send_replace(PodRules { host_ports: vec![bind(8080), bind(8081), bind(53)], ..Default::default() });
    b.controller.turn(false, false);
    let forwarded: Vec<_> = b.controller.rules().unwrap().host_ports.keys().copied().collect();
    assert_eq!(forwarded, [(Protocol::Tcp, 8080)], "8081 is a process's, 53 is DNS's");
    assert_eq!(b.controller.rules().unwrap().host_ports[&(Protocol::Tcp, 8080)], (ip, 80));
    // Once forwarded, the DNAT takes the port first: a listener seen later is not the owner.
    b.kernel.state().listening.insert((Protocol::Tcp, 8080));
    b.controller.turn(false, true);
    assert!(b.controller.rules().unwrap().host_ports.contains_key(&(Protocol::Tcp, 8080)));
}

#[test]
fn after_a_restart_with_the_leader_away_the_board_is_rebuilt_from_what_it_kept() {
    let mut b = board();
    let web = service("web", [10, 43, 0, 20], Protocol::Tcp, &[[10, 42, 1, 9]]);
    b.controller.input(said(Some(node()), true, vec![web.clone()], &[], 3));
    b.controller.turn(true, false);
    let before = b.scripts();
    let again = board_in(b.dir);
    let mut restarted = again.controller;
    assert_eq!(restarted.services().get("web"), Some(&web), "network.json kept the services");
    restarted.turn(false, true);
    assert_eq!(again.kernel.state().scripts, before, "the same table, with no word from the leader");
    assert_eq!(again.kernel.state().dns, Some("10.42.1.1".parse().unwrap()));
}

#[test]
fn other_boards_changes_are_applied_to_the_part_kept_and_survive_a_restart() {
    use bramble_proto::network::{Peer, PeerChanges};
    let peer = |n: &str, last: u8| Peer {
        node: n.into(),
        address: Ipv4Addr::new(192, 168, 1, last),
        pod_cidr: format!("10.42.{last}.0/24").parse().unwrap(),
    };
    let mut b = board();
    let changes = |upsert: Vec<Peer>, remove: &[&str], version| NetInput::Leader {
        node: None,
        full: false,
        upsert: vec![],
        remove: vec![],
        version,
        peers: Some(PeerChanges { upsert, remove: remove.iter().map(|r| r.to_string()).collect() }),
    };
    // Before this board's own part: nothing to apply them to.
    b.controller.input(changes(vec![peer("b2", 2)], &[], 1));
    assert_eq!(b.controller.node(), None);
    b.controller.input(said(
        Some(NodeNetwork { peers: vec![peer("b2", 2), peer("b3", 3)], ..node() }),
        true,
        vec![],
        &[],
        2,
    ));
    b.controller.input(changes(vec![peer("b4", 4), peer("b2", 22)], &["b3"], 3));
    let want = vec![peer("b2", 22), peer("b4", 4)];
    assert_eq!(b.controller.node().map(|n| &n.peers), Some(&want));
    b.controller.turn(true, false);
    let again = board_in(b.dir);
    assert_eq!(again.controller.node().map(|n| &n.peers), Some(&want), "network.json kept the peers as changed");
}
