//! Pod subnets and virtual IPs through the real API and controller code over an in-memory store.

use super::*;
use crate::api::Api;
use crate::boards::nodes::{NodeRegistry, Session};
use crate::events::Events;
use crate::store::{MemStore, Store};
use bramble_proto::model::{Arch, ConditionStatus, EventReason, Node, NodeInfo, Resources, Service};
use bramble_proto::wire::{Request, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn api(network: ClusterNetwork) -> Api {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let events = Arc::new(Events::new());
    let registry = Arc::new(NodeRegistry::new(Duration::from_secs(15), events.clone()));
    let ca = bramble_transport::pki::Ca::generate("test").unwrap();
    Api::new(Objects::new(store), ca, registry, events, network)
}

fn add_node(api: &Api, name: &str) {
    let res = Resources { cpu_millis: 1000, memory_bytes: 1 << 30, replicas: 10 };
    api.objects.put(&Node::joined(name, name.into(), NodeInfo::board(Arch::Arm64, res), 1), Expect::Absent).unwrap();
    let s = Session { epoch: 1, address: "10.0.0.1:1".into(), connection: None };
    api.registry.connect(name, s, Instant::now(), 1).unwrap();
}

use crate::api::testing::{admin, apply};

fn vip(api: &Api, name: &str) -> std::net::Ipv4Addr {
    api.objects.load::<Service>(name).unwrap().value.vip.expect("a VIP")
}

const SVC: &str = "[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80 }]\n";

#[test]
fn a_service_keeps_its_vip_for_life_and_gives_it_back_when_deleted() {
    let api = api(ClusterNetwork::default());
    apply(&api, SVC);
    let first = vip(&api, "web");
    assert_eq!(first.to_string(), "10.43.0.1");
    apply(&api, &SVC.replace("port = 80", "port = 8080"));
    assert_eq!(vip(&api, "web"), first, "kept when the service changes");
    apply(&api, &SVC.replace("\"web\"\napp", "\"db\"\napp"));
    assert_eq!(vip(&api, "db").to_string(), "10.43.0.2", "another service, another VIP");
    admin(
        &api,
        Request::Delete {
            apps: vec![],
            services: vec!["web".into()],
            secrets: vec![],
            configs: vec![],
            cronjobs: vec![],
            ingresses: vec![],
            registries: vec![],
        },
    );
    apply(&api, &SVC.replace("\"web\"\napp", "\"cache\"\napp"));
    assert_eq!(vip(&api, "cache"), first, "the deleted one's VIP is free again");
}

#[test]
fn a_full_service_range_and_a_port_the_app_lacks_are_refused() {
    let api = api(ClusterNetwork { service_cidr: "10.43.0.0/30".parse().unwrap(), ..Default::default() });
    apply(&api, SVC);
    apply(&api, &SVC.replace("\"web\"\napp", "\"db\"\napp"));
    let Response::Error(e) = apply(&api, &SVC.replace("\"web\"\napp", "\"cache\"\napp")) else { panic!("refused") };
    assert!(e.message.contains("the service CIDR 10.43.0.0/30 has no virtual IP left"), "{}", e.message);
    apply(&api, "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\n[[app.ports]]\nname = \"http\"\ncontainer = 8080\n");
    let named = "[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80, target = \"https\" }]\n";
    let Response::Error(e) = apply(&api, named) else { panic!("refused") };
    assert!(e.message.contains("service/web: ports[0].target: app web has no port named \"https\""), "{}", e.message);
}

#[test]
fn nodes_get_a_subnet_each_and_one_too_many_is_not_ready_saying_why() {
    let network = ClusterNetwork { cluster_cidr: "10.42.0.0/23".parse().unwrap(), ..Default::default() };
    let api = api(network);
    for n in ["pi-1", "pi-2", "pi-3"] {
        add_node(&api, n);
    }
    let ctx = api.context();
    assign_subnets(&ctx.objects, &ctx.events, &ctx.network, 5).unwrap();
    let views = match admin(&api, Request::GetNodes) {
        Response::Nodes(v) => v,
        r => panic!("{r:?}"),
    };
    let subnets: Vec<String> = views.iter().filter_map(|v| v.node.pod_cidr.map(|c| c.to_string())).collect();
    assert_eq!(subnets, ["10.42.0.0/24", "10.42.1.0/24"]);
    let left = views.iter().find(|v| v.node.pod_cidr.is_none()).unwrap();
    assert_eq!((left.ready.status, left.ready.reason.as_str()), (ConditionStatus::False, "NoPodSubnet"));
    assert!(
        left.ready.message.contains("no pod subnet left: 10.42.0.0/23 holds 2 blocks of /24"),
        "{}",
        left.ready.message
    );
    assert_eq!(api.events.filter(|e| e.reason == EventReason::NoPodSubnet).len(), 1);
    assign_subnets(&ctx.objects, &ctx.events, &ctx.network, 6).unwrap();
    assert_eq!(api.events.filter(|e| e.reason == EventReason::NoPodSubnet).len(), 1, "said once");
    // A board that is gone is deleted: its subnet goes to the one that waited.
    let Response::Done(m) = admin(&api, Request::DeleteNode { name: "pi-1".into() }) else { panic!() };
    assert!(m.contains("pod subnet 10.42.0.0/24 released"), "{m}");
    assign_subnets(&ctx.objects, &ctx.events, &ctx.network, 7).unwrap();
    let node = api.objects.load::<Node>(&left.node.meta.name).unwrap().value;
    assert_eq!(node.pod_cidr.unwrap().to_string(), "10.42.0.0/24");
}

#[test]
fn a_changed_network_is_refused_at_start() {
    let objects = Objects::new(Arc::new(MemStore::new()));
    ensure_settings(&objects, &ClusterNetwork::default()).unwrap();
    ensure_settings(&objects, &ClusterNetwork::default()).unwrap();
    let other = ClusterNetwork { cluster_cidr: "10.99.0.0/16".parse().unwrap(), ..Default::default() };
    let e = ensure_settings(&objects, &other).unwrap_err().to_string();
    assert!(e.contains("differs from the one this cluster was created with (cluster_cidr 10.42.0.0/16"), "{e}");
}
