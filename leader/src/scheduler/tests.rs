use super::*;
use bramble_proto::manifest::parse_manifest;
use proptest::prelude::*;

fn app(extra: &str) -> AppSpec {
    parse_manifest("t.toml", &format!("[[app]]\nname = \"web\"\nimage = \"reg.lan/web:1\"\n{extra}"))
        .unwrap()
        .apps
        .remove(0)
}

fn node(name: &str, cpu: u64, mem_mi: u64) -> NodeSnapshot {
    NodeSnapshot {
        name: name.into(),
        arch: Arch::Arm64,
        ready: true,
        unschedulable: false,
        network_unavailable: false,
        labels: BTreeMap::new(),
        taints: Vec::new(),
        allocatable: Resources { cpu_millis: cpu, memory_bytes: mem_mi << 20, replicas: 110 },
        requested: Resources::default(),
        host_ports: BTreeSet::new(),
        images: BTreeSet::new(),
        volumes: BTreeSet::new(),
        apps: BTreeMap::new(),
        revisions: BTreeMap::new(),
        devices: Vec::new(),
    }
}

fn req<'a>(spec: &'a AppSpec, misses: Option<&'a Misses>) -> Request<'a> {
    Request { app: "web", spec, misses, revision: "r1", homes: None }
}

#[test]
fn spreads_two_per_node_on_three_equal_nodes() {
    let spec = app("resources = { cpu = \"100m\", memory = \"64Mi\" }\n");
    let mut s = Scheduler::new(vec![node("pi-3", 4000, 4096), node("pi-1", 4000, 4096), node("pi-2", 4000, 4096)]);
    let placed = s.place_many(&req(&spec, None), 6).unwrap();
    let mut counts = BTreeMap::new();
    for p in placed {
        *counts.entry(p).or_insert(0) += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
}

#[test]
fn reasons_a_human_can_act_on() {
    let spec = app("resources = { memory = \"2Gi\" }\n");
    let mut small = node("a", 4000, 1024);
    small.arch = Arch::Arm64;
    let mut small2 = node("b", 4000, 1024);
    small2.arch = Arch::Arm64;
    let mut armv7 = node("c", 4000, 4096);
    armv7.arch = Arch::ArmV7;
    // Board c found the image offers arm64 and amd64 only (what a or b found is their own).
    let platforms: Vec<Platform> = vec!["linux/arm64".parse().unwrap(), "linux/amd64".parse().unwrap()];
    let misses = Misses::from([("c".to_string(), platforms)]);
    let s = Scheduler::new(vec![small, small2, armv7]);
    let e = s.place(&req(&spec, Some(&misses))).unwrap_err();
    assert_eq!(e.to_string(), "0/3 nodes: 2 insufficient memory, 1 arch mismatch");
    assert_eq!(
        Scheduler::new(vec![]).place(&req(&spec, None)).unwrap_err().to_string(),
        "0/0 nodes: no nodes in the cluster"
    );
}

#[test]
fn every_filter_applies() {
    let spec = app(
        "ports = [{ container = 80, host = 8080 }]\n[app.placement]\nnode_selector = { disk = \"ssd\" }\nmax_per_node = 1\ntolerations = [{ key = \"dedicated\", value = \"web\", effect = \"NoSchedule\" }]\n",
    );
    let r = req(&spec, None);
    let mut ok = node("ok", 1000, 1024);
    ok.labels.insert("disk".into(), "ssd".into());
    ok.taints.push(Taint { key: "dedicated".into(), value: "web".into(), effect: TaintEffect::NoSchedule });
    assert_eq!(filter(&ok, &r), None, "tolerated taint, matching selector");
    let mut n = ok.clone();
    n.ready = false;
    assert_eq!(filter(&n, &r), Some(Reason::NotReady));
    let mut n = ok.clone();
    n.unschedulable = true;
    assert_eq!(filter(&n, &r), Some(Reason::Cordoned));
    let mut n = ok.clone();
    n.network_unavailable = true;
    assert_eq!(filter(&n, &r), Some(Reason::NetworkUnavailable));
    let mut n = ok.clone();
    n.labels.clear();
    assert_eq!(filter(&n, &r), Some(Reason::NodeSelector));
    let mut n = ok.clone();
    n.taints.push(Taint { key: "gpu".into(), value: String::new(), effect: TaintEffect::NoExecute });
    assert_eq!(filter(&n, &r), Some(Reason::Taint));
    let mut n = ok.clone();
    n.host_ports.insert((8080, Protocol::Tcp));
    assert_eq!(filter(&n, &r), Some(Reason::HostPort));
    let mut n = ok.clone();
    n.apps.insert("web".into(), 1);
    assert_eq!(filter(&n, &r), Some(Reason::MaxPerNode));
    let mut n = ok.clone();
    n.allocatable.replicas = 0;
    assert_eq!(filter(&n, &r), Some(Reason::TooManyReplicas));
    // A PreferNoSchedule taint only lowers the score.
    let mut n = ok.clone();
    n.taints.push(Taint { key: "slow".into(), value: String::new(), effect: TaintEffect::PreferNoSchedule });
    assert_eq!(filter(&n, &r), None);
    assert!(score(&n, &r) < score(&ok, &r));
}

#[test]
fn the_image_already_present_breaks_ties() {
    let spec = app("");
    let a = node("a", 1000, 1024);
    let mut b = node("b", 1000, 1024);
    b.images.insert("reg.lan/web:1".into());
    let s = Scheduler::new(vec![a, b]);
    assert_eq!(s.nodes[s.place(&req(&spec, None)).unwrap()].name, "b");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the cluster, a placed replica passes every filter on its node, no node is
    /// overcommitted, and identical nodes stay within one replica of each other.
    #[test]
    fn placements_respect_filters_and_spread(
        nodes in proptest::collection::vec((500u64..4000, 128u64..2048, any::<bool>(), any::<bool>(), any::<bool>()), 1..12),
        cpu in 0u64..600,
        mem in 0u64..300,
        count in 1usize..40,
    ) {
        let spec = app(&format!("resources = {{ {}{} }}\n",
            if cpu > 0 { format!("cpu = \"{cpu}m\"") } else { String::new() },
            if mem > 0 { format!("{}memory = \"{mem}Mi\"", if cpu > 0 { ", " } else { "" }) } else { String::new() }));
        let snapshots: Vec<NodeSnapshot> = nodes.iter().enumerate().map(|(i, (c, m, ready, cordoned, ssd))| {
            let mut n = node(&format!("n{i:02}"), *c, *m);
            n.ready = *ready;
            n.unschedulable = *cordoned;
            if *ssd { n.labels.insert("disk".into(), "ssd".into()); }
            n
        }).collect();
        let mut s = Scheduler::new(snapshots);
        let r = req(&spec, None);
        for _ in 0..count {
            match s.place(&r) {
                Ok(i) => {
                    prop_assert_eq!(filter(&s.nodes[i], &r), None);
                    s.bind(i, &r);
                }
                Err(e) => {
                    prop_assert!(s.nodes.iter().all(|n| filter(n, &r).is_some()));
                    prop_assert_eq!(e.reasons.values().sum::<usize>(), s.nodes.len());
                    break;
                }
            }
        }
        for n in &s.nodes {
            prop_assert!(n.requested.cpu_millis <= n.allocatable.cpu_millis);
            prop_assert!(n.requested.memory_bytes <= n.allocatable.memory_bytes);
        }
    }

    #[test]
    fn identical_nodes_stay_balanced(n in 1usize..20, count in 1usize..100) {
        let spec = app("");
        let mut s = Scheduler::new((0..n).map(|i| node(&format!("n{i:02}"), 100_000, 100_000)).collect());
        s.place_many(&req(&spec, None), count).unwrap();
        let counts: Vec<u32> = s.nodes.iter().map(|x| x.apps.get("web").copied().unwrap_or(0)).collect();
        prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{:?}", counts);
    }
}

#[test]
fn host_volumes_need_their_label_and_local_volumes_keep_their_homes() {
    let spec =
        app("[[app.volumes]]\ntype = \"host\"\nhost_path = \"/srv/m\"\nnode_label = \"media=usb\"\npath = \"/m\"\n");
    let mut with = node("b", 4000, 4096);
    with.labels.insert("media".into(), "usb".into());
    let mut other_value = node("c", 4000, 4096);
    other_value.labels.insert("media".into(), "sd".into());
    let s = Scheduler::new(vec![node("a", 4000, 4096), with, other_value]);
    assert_eq!(s.nodes[s.place(&req(&spec, None)).unwrap()].name, "b");
    let only_a = Scheduler::new(vec![node("a", 4000, 4096)]);
    assert_eq!(only_a.place(&req(&spec, None)).unwrap_err().to_string(), "0/1 nodes: 1 no host volume label");

    let local = app("[[app.volumes]]\ntype = \"local\"\nname = \"db\"\npath = \"/d\"\n");
    let homes: BTreeSet<String> = ["c".to_string()].into();
    let s = Scheduler::new(vec![node("a", 4000, 4096), node("b", 4000, 4096), node("c", 4000, 4096)]);
    let pinned = Request { homes: Some(&homes), ..req(&local, None) };
    assert_eq!(s.nodes[s.place(&pinned).unwrap()].name, "c");
    let mut c_down = s.clone();
    c_down.nodes[2].ready = false;
    assert_eq!(
        c_down.place(&pinned).unwrap_err().to_string(),
        "0/3 nodes: 2 local volume on another node, 1 not ready"
    );
}

#[test]
fn devices_place_replicas_only_where_the_board_has_them() {
    use bramble_proto::device::{Device, DeviceClass, DeviceKind};
    let serial = |path: &str, usb: &str| Device {
        class: DeviceClass::Serial,
        path: path.into(),
        kind: DeviceKind::Char,
        major: 188,
        minor: 0,
        mode: 0o660,
        gid: 20,
        usb: Some(usb.parse().unwrap()),
        serial: None,
    };
    let mut a = node("a", 4000, 4096);
    a.devices = vec![serial("/dev/ttyUSB0", "1a86:7523")];
    let mut b = node("b", 4000, 4096);
    b.devices = vec![serial("/dev/ttyUSB0", "10c4:ea60")];
    let c = node("c", 4000, 4096);
    let s = Scheduler::new(vec![a, b, c]);
    let zigbee = app("devices = [\"serial:10c4:ea60\"]");
    assert_eq!(s.nodes[s.place(&req(&zigbee, None)).unwrap()].name, "b", "only b has the CP2102");
    let any_serial = app("devices = [\"serial\"]");
    let on = s.place(&req(&any_serial, None)).unwrap();
    assert!(["a", "b"].contains(&s.nodes[on].name.as_str()));
    let camera = app("devices = [\"/dev/video0\", \"serial\"]");
    assert_eq!(
        s.place(&req(&camera, None)).unwrap_err().to_string(),
        "0/3 nodes: 3 missing device /dev/video0, serial"
    );
    let no_i2c = app("devices = [\"i2c\"]");
    assert_eq!(s.place(&req(&no_i2c, None)).unwrap_err().to_string(), "0/3 nodes: 3 missing device i2c");
}

#[test]
fn host_network_ports_are_the_boards_own() {
    let spec = app("host_network = true\nports = [{ container = 9100 }, { container = 5353, protocol = \"udp\" }]\n");
    assert_eq!(spec.board_ports().collect::<Vec<_>>(), [(9100, Protocol::Tcp), (5353, Protocol::Udp)]);
    // Two replicas never share a board: the second goes to the other one, a third has nowhere.
    let mut s = Scheduler::new(vec![node("pi-1", 4000, 4096), node("pi-2", 4000, 4096)]);
    let placed = s.place_many(&req(&spec, None), 2).unwrap();
    assert_ne!(placed[0], placed[1], "{placed:?}");
    let e = s.place(&req(&spec, None)).unwrap_err();
    assert_eq!(e.reasons.get(&Reason::HostPort), Some(&2), "{e:?}");
    // A plain app with that port as a host port meets the same refusal; without a host port it
    // fits (its port is its pod's).
    let other = app("ports = [{ container = 80, host = 9100 }]\n");
    assert!(s.place(&req(&other, None)).is_err());
    let pod = app("ports = [{ container = 9100 }]\n");
    assert!(s.place(&req(&pod, None)).is_ok());
    // Unbound, the port is free again.
    let i = s.index_of(&placed[0]).unwrap();
    s.unbind(i, "web", &spec, "r1");
    assert_eq!(s.place(&req(&spec, None)).unwrap(), i);
}
