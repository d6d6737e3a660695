//! The ruleset rendered from models, and (last test) the real nft: every diff applied on top of
//! a table must leave exactly what the whole table of the new model gives.

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
fn pods_cannot_reach_the_clusters_own_ports_but_control_plane_apps_can() {
    let mut m = model(&[], &[]);
    m.control_ports = [(Protocol::Udp, 7443), (Protocol::Tcp, 2379)].into();
    m.control_plane = ["10.42.1.9".parse().unwrap()].into();
    let s = full(&m);
    assert!(
        s.contains("set control_ports { type inet_proto . inet_service; elements = { tcp . 2379, udp . 7443 } }"),
        "{s}"
    );
    assert!(s.contains("set control_plane { type ipv4_addr; elements = { 10.42.1.9 } }"), "{s}");
    assert!(s.contains("chain input {\n    type filter hook input priority filter; policy accept;\n    ip saddr 10.42.0.0/16 ip saddr != @control_plane meta l4proto . th dport @control_ports reject"), "{s}");
    assert!(s.contains("ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 ip saddr != @control_plane meta l4proto . th dport @control_ports reject"), "forward, to other boards: {s}");
    let mut n = m.clone();
    n.control_plane.clear();
    n.control_ports.insert((Protocol::Tcp, 9464));
    assert_eq!(
        diff(&m, &n),
        "add element ip bramble control_ports { tcp . 9464 }\ndelete element ip bramble control_plane { 10.42.1.9 }\n"
    );
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

/// A model drawn from a small universe, so that consecutive draws share, change and drop
/// services, endpoints, host ports and pods.
fn random_model(rng: &mut fastrand::Rng) -> Model {
    let mut services = Vec::new();
    for v in 1..=5u8 {
        if rng.u8(0..4) == 0 {
            continue;
        }
        let protocol = if rng.bool() { Protocol::Tcp } else { Protocol::Udp };
        let eps: Vec<String> =
            (0..rng.usize(0..4)).map(|_| format!("10.42.{}.{}", rng.u8(1..3), rng.u8(2..8))).collect();
        let mut eps: Vec<&str> = eps.iter().map(String::as_str).collect::<BTreeSet<_>>().into_iter().collect();
        rng.shuffle(&mut eps);
        let mut s = service(&format!("s{v}"), &format!("10.43.0.{v}"), protocol, &eps);
        if rng.bool() {
            s.ports.push(RoutePort { port: 443, protocol, target: 8443 });
        }
        services.push(s);
    }
    let hosts: Vec<HostPort> = (0..rng.u16(0..3))
        .map(|i| HostPort {
            protocol: if rng.bool() { Protocol::Tcp } else { Protocol::Udp },
            port: 18080 + i,
            ip: Ipv4Addr::new(10, 42, 1, rng.u8(2..5)),
            target: 8080,
        })
        .collect();
    let map: BTreeMap<String, ServiceRoute> = services.iter().map(|s| (s.name.clone(), s.clone())).collect();
    let pods: Vec<Ipv4Addr> = (2..6u8).filter(|_| rng.bool()).map(|i| Ipv4Addr::new(10, 42, 1, i)).collect();
    let mut m = Model::new(Some("10.42.0.0/16".parse().unwrap()), &map, &hosts, pods.clone());
    m.control_ports = [(Protocol::Udp, 7443), (Protocol::Tcp, 2379), (Protocol::Tcp, 9464)]
        .into_iter()
        .filter(|_| rng.bool())
        .collect();
    m.control_plane = pods.into_iter().filter(|_| rng.bool()).collect();
    m
}

/// `nft -j list table ip bramble`, without handles, objects in a stable order, set elements sorted.
fn listed() -> serde_json::Value {
    let out = std::process::Command::new("nft").args(["-j", "list", "table", "ip", TABLE]).output().expect("nft");
    assert!(out.status.success(), "nft list: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft's JSON");
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.remove("handle");
                if let Some(serde_json::Value::Array(elems)) = o.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut objects: Vec<serde_json::Value> =
        v["nftables"].as_array().expect("objects").iter().filter(|o| o.get("metainfo").is_none()).cloned().collect();
    objects.iter_mut().for_each(strip);
    // Rules keep their order within a chain (a stable sort on the chain's name only).
    let key = |o: &serde_json::Value| {
        let (kind, body) = o.as_object().and_then(|m| m.iter().next()).expect("one kind per object");
        let name = body.get("name").or_else(|| body.get("chain")).map(|n| n.to_string()).unwrap_or_default();
        (kind.clone(), name)
    };
    objects.sort_by_key(key);
    serde_json::Value::Array(objects)
}

#[test]
fn every_diff_on_the_real_nft_leaves_what_the_whole_table_gives() {
    let run = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("this test needs root and network namespaces (unshare CLONE_NEWNET)");
        let mut rng = fastrand::Rng::with_seed(11);
        let mut old = random_model(&mut rng);
        crate::net::nft::apply(&full(&old)).expect("the first table (needs Debian's nftables: nft)");
        for step in 0..40 {
            let new = random_model(&mut rng);
            let d = diff(&old, &new);
            if !d.is_empty() {
                if let Err(e) = crate::net::nft::apply(&d) {
                    panic!("step {step}: nft refused the diff: {e}\n--- diff\n{d}--- from\n{}", full(&old));
                }
            }
            let after_diff = listed();
            crate::net::nft::apply(&full(&new)).expect("the whole table");
            assert_eq!(after_diff, listed(), "step {step}: the diff\n{d}left another table than\n{}", full(&new));
            old = new;
        }
    });
    run.join().expect("the nft round trip");
}
