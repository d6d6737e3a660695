//! The ruleset rendered from models (the real nft applies it in the end-to-end tests).

use super::*;
use bramble_proto::network::{Endpoint, RoutePort};

fn service(name: &str, vip: &str, protocol: Protocol, eps: &[&str]) -> ServiceRoute {
    ServiceRoute {
        name: name.into(),
        vip: vip.parse().unwrap(),
        ports: vec![RoutePort { port: 80, protocol, target: 8080 }],
        endpoints: eps
            .iter()
            .map(|ip| Endpoint { replica: format!("r-{ip}"), node: "pi".into(), ip: ip.parse().unwrap(), ready: true })
            .collect(),
    }
}

fn model(services: &[ServiceRoute], hosts: &[HostPort]) -> Model {
    let map: BTreeMap<String, ServiceRoute> = services.iter().map(|s| (s.name.clone(), s.clone())).collect();
    Model::new(Some("10.42.0.0/16".parse().unwrap()), &map, hosts, ["10.42.1.5".parse().unwrap()])
}

#[test]
fn the_whole_table_spreads_each_port_and_rejects_ports_without_endpoints() {
    let m = model(
        &[
            service("web", "10.43.0.1", Protocol::Tcp, &["10.42.1.5", "10.42.2.7"]),
            service("db", "10.43.0.2", Protocol::Udp, &[]),
        ],
        &[HostPort { protocol: Protocol::Tcp, port: 18080, ip: "10.42.1.5".parse().unwrap(), target: 8080 }],
    );
    let s = full(&m);
    assert!(s.starts_with("table ip bramble\ndelete table ip bramble\n"), "replaced atomically");
    assert!(s.contains("elements = { 10.43.0.1 . tcp . 80 : goto svc-10-43-0-1-tcp-80 }"), "{s}");
    assert!(
        s.contains("meta l4proto tcp dnat to numgen random mod 2 map { 0 : 10.42.1.5 . 8080, 1 : 10.42.2.7 . 8080 }"),
        "{s}"
    );
    assert!(
        s.contains(
            "set no_endpoints { type ipv4_addr . inet_proto . inet_service; elements = { 10.43.0.2 . udp . 80 } }"
        ),
        "{s}"
    );
    assert!(
        s.contains(
            "map host_tcp { type inet_service : ipv4_addr . inet_service; elements = { 18080 : 10.42.1.5 . 8080 } }"
        ),
        "{s}"
    );
    assert!(s.contains("ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade"), "{s}");
    assert!(s.contains("elements = { 10.42.1.5 . 10.42.1.5 }"), "hairpin for the local pod: {s}");
    assert!(!s.contains("svc-10-43-0-2"), "no chain for a port without endpoints");
}

#[test]
fn one_changed_endpoint_rewrites_only_its_service() {
    let a = model(
        &[
            service("web", "10.43.0.1", Protocol::Tcp, &["10.42.1.5", "10.42.2.7"]),
            service("api", "10.43.0.3", Protocol::Tcp, &["10.42.3.3"]),
        ],
        &[],
    );
    let b = model(
        &[
            service("web", "10.43.0.1", Protocol::Tcp, &["10.42.1.5"]),
            service("api", "10.43.0.3", Protocol::Tcp, &["10.42.3.3"]),
        ],
        &[],
    );
    let d = diff(&a, &b);
    assert_eq!(
        d,
        "add chain ip bramble svc-10-43-0-1-tcp-80\nflush chain ip bramble svc-10-43-0-1-tcp-80\n\
         add rule ip bramble svc-10-43-0-1-tcp-80 meta l4proto tcp dnat to numgen random mod 1 map { 0 : 10.42.1.5 . 8080 }\n"
    );
    assert_eq!(diff(&b, &b), "", "nothing changed, nothing to do");
}

#[test]
fn a_port_that_loses_its_last_endpoint_rejects_and_back() {
    let live = model(&[service("web", "10.43.0.1", Protocol::Udp, &["10.42.1.5"])], &[]);
    let none = model(&[service("web", "10.43.0.1", Protocol::Udp, &[])], &[]);
    let d = diff(&live, &none);
    let order: Vec<&str> = d.lines().collect();
    assert_eq!(
        order,
        [
            "delete element ip bramble services { 10.43.0.1 . udp . 80 }",
            "delete chain ip bramble svc-10-43-0-1-udp-80",
            "add element ip bramble no_endpoints { 10.43.0.1 . udp . 80 }",
        ],
        "the element before its chain"
    );
    assert_eq!(udp_gone(&live, &none), [("10.43.0.1".parse().unwrap(), 80, "10.42.1.5".parse().unwrap())]);
    let back = diff(&none, &live);
    assert!(back.contains("add element ip bramble services { 10.43.0.1 . udp . 80 : goto svc-10-43-0-1-udp-80 }"));
    assert!(back.contains("delete element ip bramble no_endpoints { 10.43.0.1 . udp . 80 }"));
    let gone = model(&[], &[]);
    let d = diff(&live, &gone);
    assert!(d.contains("delete element ip bramble vips { 10.43.0.1 }"), "{d}");
}

#[test]
fn a_host_port_that_moves_is_deleted_by_key_then_added() {
    let hp = |ip: &str| HostPort { protocol: Protocol::Udp, port: 5353, ip: ip.parse().unwrap(), target: 53 };
    let d = diff(&model(&[], &[hp("10.42.1.5")]), &model(&[], &[hp("10.42.1.6")]));
    assert_eq!(
        d,
        "delete element ip bramble host_udp { 5353 }\nadd element ip bramble host_udp { 5353 : 10.42.1.6 . 53 }\n"
    );
}
