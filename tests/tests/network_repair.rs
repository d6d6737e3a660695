//! A board's network is its agent's to keep (issue 28): what someone or something else changes —
//! a stray address on the bridge, the route to the board's own pods deleted, the nft table
//! flushed, a veth no pod owns, an old cluster's fallback route — is put back within
//! `network.check_every`, and the pods serve again; traffic to the cluster's ranges that no route
//! takes is refused on the board instead of leaving by its default route. A board that cannot
//! network pods (no `nft`) says so: the node is `Ready,NetworkUnavailable`, no replica is placed
//! there, and it clears by itself once `nft` is there. All real: a board in a network namespace,
//! containers through libcontainer, the kernel's routes and nft.

use bramble_proto::model::{ConditionStatus, NodeView, Replica, ReplicaPhase, Service};
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layout, push_from};
use bramble_tests::{wait_for, Cluster, ClusterOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

fn cli_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn replicas(c: &Cluster, app: &str) -> Vec<Replica> {
    serde_json::from_str(&cli_ok(c, &["get", "replicas", "--app", app, "-o", "json"])).expect("replicas parse")
}

fn node(c: &Cluster) -> NodeView {
    let nodes: Vec<NodeView> = serde_json::from_str(&cli_ok(c, &["get", "nodes", "-o", "json"])).expect("nodes parse");
    nodes.into_iter().next().expect("one node")
}

/// `ip ARGS` in board 1's namespace: its output (it must succeed).
fn ip(c: &Cluster, args: &[&str]) -> String {
    let out = Command::new("ip").args(["-n", &c.lab.ns(1)]).args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP GET over a fresh connection from board 1's namespace.
fn http_get(c: &Cluster, addr: SocketAddr) -> Result<String, String> {
    let file = std::fs::File::open(c.lab.ns_path(1)).expect("board netns");
    std::thread::spawn(move || {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
    })
    .join()
    .expect("the namespace thread")
}

const WEB: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";

fn web(image: &str, replicas: u32) -> String {
    format!(
        r#"[[app]]
name = "web"
image = "{image}"
command = ["/bin/sh", "-c", "{WEB}"]
replicas = {replicas}
[[app.ports]]
name = "http"
container = 8080
[app.probes.readiness]
http = {{ port = "http", path = "/" }}
period = "1s"

[[service]]
name = "web"
app = "web"
ports = [{{ port = 80, target = "http" }}]
"#
    )
}

fn cluster(agent_path: Option<String>) -> (Cluster, Registry, String) {
    let opts = ClusterOptions { agents: 1, agent_path, ..Default::default() };
    let c = Cluster::start_with(opts, |lab| {
        format!(
            "[network]\ncheck_every = \"2s\"\n[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n",
            lab.addr(0)
        )
    });
    let registry = Registry::start_in_netns(&c.lab.ns(0), &c.lab.addr(0));
    let layout = tempfile::tempdir().unwrap();
    busybox_layout(layout.path(), "1");
    let image = format!("{}/bramble/busybox:1", registry.addr);
    push_from(Some(&c.lab.ns(0)), layout.path(), "1", &image);
    (c, registry, image)
}

fn apply(c: &Cluster, text: &str) {
    let path = c.dir.path().join("web.toml");
    std::fs::write(&path, text).unwrap();
    cli_ok(c, &["apply", "-f", path.to_str().unwrap()]);
}

/// Every replica of web Running and ready, with its address.
fn serving(c: &Cluster, n: usize) -> Vec<Replica> {
    wait_for(&format!("{n} ready replicas of web"), Duration::from_secs(90), || {
        let r = replicas(c, "web");
        (r.len() == n && r.iter().all(|r| r.phase == ReplicaPhase::Running && r.ready && r.ip.is_some())).then_some(r)
    })
}

/// Waits (a few checks of the board's network at most) until `what` holds.
fn repaired<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for(what, Duration::from_secs(20), f)
}

#[test]
fn a_board_repairs_what_others_change_of_its_network_and_its_pods_serve_again() {
    let (c, _registry, image) = cluster(None);
    apply(&c, &web(&image, 2));
    let pods = serving(&c, 2);
    let svc: Vec<Service> = serde_json::from_str(&cli_ok(&c, &["get", "services", "-o", "json"])).unwrap();
    let vip = SocketAddr::new(svc[0].vip.expect("a VIP").into(), 80);
    let subnet = node(&c).node.pod_cidr.expect("a pod subnet").to_string();
    let pod = |i: usize| SocketAddr::new(pods[i].ip.unwrap().into(), 8080);
    let names: Vec<String> = pods.iter().map(|r| r.meta.name.clone()).collect();
    let answers = |addr: SocketAddr| http_get(&c, addr).ok().filter(|body| names.contains(body));
    repaired("the VIP answers", || answers(vip));

    // The cluster's ranges have fallbacks: an address of the pod range that no board has is
    // refused here, never sent to the default gateway.
    let fallbacks = ip(&c, &["route", "show", "type", "unreachable"]);
    for range in ["10.42.0.0/16", "10.43.0.0/16"] {
        assert!(fallbacks.contains(&format!("unreachable {range} proto 66 metric 4242")), "{fallbacks}");
    }
    let out = Command::new("ip").args(["-n", &c.lab.ns(1), "route", "get", "10.42.250.9"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("No route to host"), "{said}{:?}", out.stdout);

    // 1. A second address on the bridge (an older cluster's subnet): removed, with its route.
    ip(&c, &["addr", "add", "10.42.201.1/24", "dev", "bramble0"]);
    repaired("the stray address gone from bramble0", || {
        (!ip(&c, &["-4", "addr", "show", "dev", "bramble0"]).contains("10.42.201.1")).then_some(())
    });
    assert!(!ip(&c, &["route"]).contains("10.42.201.0/24"), "{}", ip(&c, &["route"]));
    repaired("pod 0 answers after the address", || answers(pod(0)));

    // 2. The route to the board's own pods deleted: back, through the bridge.
    ip(&c, &["route", "del", &subnet]);
    repaired("the route to the board's pods back", || {
        let r = ip(&c, &["route", "show", &subnet]);
        r.contains("dev bramble0").then_some(r)
    });
    repaired("pod 1 answers after the route", || answers(pod(1)));

    // 3. Every nft table flushed: services come back.
    let out = Command::new("ip").args(["netns", "exec", &c.lab.ns(1), "nft", "flush", "ruleset"]).output().unwrap();
    assert!(out.status.success(), "nft flush ruleset: {}", String::from_utf8_lossy(&out.stderr));
    repaired("the VIP answers after nft flush ruleset", || answers(vip));

    // 4. A veth no pod owns, named like ours, and a foreign link on the pods' bridge: the first
    //    deleted, the second taken off the bridge (it could see the pods' traffic).
    ip(&c, &["link", "add", "bvdeadbeef00", "type", "veth", "peer", "name", "stray-peer"]);
    ip(&c, &["link", "set", "bvdeadbeef00", "master", "bramble0"]);
    ip(&c, &["link", "add", "sniff0", "type", "veth", "peer", "name", "sniff1"]);
    ip(&c, &["link", "set", "sniff0", "master", "bramble0"]);
    repaired("the stray veth deleted and the foreign link detached", || {
        let links = ip(&c, &["-o", "link", "show"]);
        let on_bridge = ip(&c, &["-o", "link", "show", "master", "bramble0"]);
        (!links.contains("bvdeadbeef00") && links.contains("sniff0") && !on_bridge.contains("sniff0")).then_some(())
    });
    let on_bridge = ip(&c, &["-o", "link", "show", "master", "bramble0"]);
    assert_eq!(on_bridge.lines().count(), 2, "the two pods' veths stay: {on_bridge}");

    // 5. Another cluster's fallback route (Bramble's protocol, another range): removed.
    ip(&c, &["route", "add", "unreachable", "10.77.0.0/16", "proto", "66", "metric", "4242"]);
    repaired("the other cluster's fallback gone", || {
        (!ip(&c, &["route", "show", "type", "unreachable"]).contains("10.77.0.0/16")).then_some(())
    });

    // Through all of it the board stayed placeable and the replicas stayed.
    for i in 0..2 {
        repaired("the pods answer at the end", || answers(pod(i)));
    }
    repaired("the VIP answers at the end", || answers(vip));
    let after: Vec<String> = replicas(&c, "web").iter().map(|r| r.meta.name.clone()).collect();
    assert_eq!(after, names, "no replica was replaced");
    assert!(node(&c).conditions.is_empty(), "{:?}", node(&c).conditions);
    let log = std::fs::read_to_string(&c.agent(1).log).unwrap();
    assert!(log.contains("removing a stray address 10.42.201.1/24"), "the agent says what it repaired");
}

#[test]
fn a_board_without_nft_is_network_unavailable_gets_no_replica_and_clears_by_itself() {
    // The agent's PATH: an empty directory, so no nft (as on a board where nftables is not
    // installed; the agent needs no other program: it speaks netlink itself).
    let bin = tempfile::tempdir().unwrap();
    let out = Command::new("sh").args(["-c", "command -v nft"]).output().unwrap();
    let nft = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!nft.is_empty(), "this test needs nft on the PATH (apt-get install nftables)");
    let (c, _registry, image) = cluster(Some(bin.path().to_str().unwrap().to_string()));

    let n = wait_for("the node NetworkUnavailable", Duration::from_secs(30), || {
        let n = node(&c);
        (!n.conditions.is_empty()).then_some(n)
    });
    assert_eq!(n.ready.status, ConditionStatus::True, "the agent is connected: Ready");
    let cond = &n.conditions[0];
    assert_eq!(
        (cond.kind.as_str(), cond.status, cond.reason.as_str()),
        ("NetworkUnavailable", ConditionStatus::True, "NftMissing")
    );
    assert!(cond.message.contains("apt-get install nftables"), "says the fix: {}", cond.message);
    assert!(cond.last_transition_ms > 0, "since when, by the leader's clock");
    let table = cli_ok(&c, &["get", "nodes"]);
    assert!(table.contains("Ready,NetworkUnavailable"), "{table}");
    let described = cli_ok(&c, &["describe", "node", &Cluster::node_name(1)]);
    assert!(described.contains("NetworkUnavailable  True  NftMissing  nft is missing"), "{described}");

    // No replica is placed on it, and Pending says why.
    apply(&c, &web(&image, 1));
    let pending = wait_for("web Pending with the reason", Duration::from_secs(20), || {
        replicas(&c, "web")
            .into_iter()
            .find(|r| r.phase == ReplicaPhase::Pending && r.reason.contains("network unavailable"))
    });
    assert_eq!(pending.node, None, "{pending:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(replicas(&c, "web").iter().all(|r| r.node.is_none()), "still unplaced");

    // nft installed: the board notices by itself, the condition clears, the replica runs.
    std::os::unix::fs::symlink(&nft, bin.path().join("nft")).unwrap();
    wait_for("the condition cleared", Duration::from_secs(30), || node(&c).conditions.is_empty().then_some(()));
    assert!(!cli_ok(&c, &["get", "nodes"]).contains("NetworkUnavailable"));
    let running = serving(&c, 1);
    assert_eq!(running[0].node.as_deref(), Some(Cluster::node_name(1).as_str()));
    let events = cli_ok(&c, &["events"]);
    assert!(events.contains("NetworkUnavailable") && events.contains("NetworkAvailable"), "{events}");
}
