//! The cluster's network end to end, all real: boards as network namespaces, containers through
//! libcontainer, nft rules, conntrack, the DNS server. Pods reach each other on one board and
//! across boards (direct routes, and vxlan between two subnets), a client reaches a service by
//! name and gets answers from every replica, the boards reach services too, a pod reaches its own
//! service, UDP services move clients off a gone endpoint, a service without endpoints refuses at
//! once, host ports keep the client's address, services survive the leader and agent restarts,
//! and nothing is left behind.

use bramble_agent::runtime::Runtime;
use bramble_proto::model::{Replica, ReplicaPhase, Service};
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layout, push_from};
use bramble_tests::{wait_for, Cluster, ClusterOptions};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn cli_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn replicas(c: &Cluster, app: &str) -> Vec<Replica> {
    serde_json::from_str(&cli_ok(c, &["get", "replicas", "--app", app, "-o", "json"])).expect("replicas parse")
}

fn wait_running(c: &Cluster, app: &str, n: usize) -> Vec<Replica> {
    wait_for(&format!("{n} running replicas of {app} with addresses"), Duration::from_secs(90), || {
        let r = replicas(c, app);
        (r.len() == n && r.iter().all(|r| r.phase == ReplicaPhase::Running && r.ip.is_some())).then_some(r)
    })
}

fn service(c: &Cluster, name: &str) -> Service {
    let all: Vec<Service> =
        serde_json::from_str(&cli_ok(c, &["get", "services", "-o", "json"])).expect("services parse");
    all.into_iter().find(|s| s.meta.name == name).unwrap_or_else(|| panic!("service {name} listed"))
}

fn ready(s: &Service) -> BTreeSet<String> {
    s.endpoints.iter().filter(|e| e.ready).map(|e| e.replica.clone()).collect()
}

fn board_of(r: &Replica) -> usize {
    r.node.as_deref().and_then(|n| n.strip_prefix("board-")?.parse().ok()).expect("a board")
}

/// Runs `cmd` inside replica `r`'s container (its namespaces, its files) through its shim.
fn exec(c: &Cluster, r: &Replica, cmd: &str) -> (i32, String) {
    let runtime = Runtime::new(&c.shims_dir(board_of(r)), &bramble_tests::process::bin_dir().join("bramble-shim"));
    let args = vec!["/bin/sh".to_string(), "-c".into(), cmd.into()];
    let (code, out, timed_out) = runtime.exec(&r.meta.name, args, Vec::new(), Duration::from_secs(10)).expect("exec");
    assert!(!timed_out, "{cmd} timed out in {}", r.meta.name);
    (code, out)
}

/// `wget` of `url` inside replica `r`: the body, or why not.
fn wget(c: &Cluster, r: &Replica, url: &str) -> Result<String, String> {
    let (code, out) = exec(c, r, &format!("wget -q -O - {url}"));
    if code == 0 {
        Ok(out.trim().to_string())
    } else {
        let (_, why) = exec(c, r, "ip addr; ip route; cat /etc/resolv.conf /etc/hosts; ls -la /etc");
        Err(format!("wget {url} in {}: exit {code}: {out}\n{why}", r.meta.name))
    }
}

/// Runs `f` on a thread inside the network namespace at `ns`.
fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
    std::thread::spawn(move || {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("the namespace thread")
}

/// An HTTP GET over a fresh connection from the calling thread's namespace.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
}

fn pod_netns(c: &Cluster, r: &Replica) -> PathBuf {
    c.agent_dir(board_of(r)).join("pods").join(&r.meta.name).join("netns")
}

/// A UDP echo "server" for one replica of the `udp` app: it answers, from inside the replica's
/// network namespace, with the replica's name.
fn udp_echo(ns: PathBuf, name: String) {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).expect("pod netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = UdpSocket::bind("0.0.0.0:5353").expect("bind in the pod");
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), peer);
        }
    });
}

const WEB: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -v -p 8080 -h /www";
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn manifest(image: &str) -> String {
    format!(
        r#"[[app]]
name = "web"
image = "{image}"
command = ["/bin/sh", "-c", "{WEB}"]
replicas = 3
[[app.ports]]
name = "http"
container = 8080

[[service]]
name = "web"
app = "web"
ports = [{{ port = 80, target = "http" }}]

[[app]]
name = "client"
image = "{image}"
command = ["/bin/sh", "-c", "{IDLE}"]

[[app]]
name = "udp"
image = "{image}"
command = ["/bin/sh", "-c", "{IDLE}"]
replicas = 2
[[app.ports]]
name = "echo"
container = 5353
host = 15353
protocol = "udp"

[[service]]
name = "echo"
app = "udp"
ports = [{{ port = 53, target = "echo", protocol = "udp" }}]

[[service]]
name = "nowhere"
app = "absent"
ports = [{{ port = 81 }}]

[[app]]
name = "front"
image = "{image}"
command = ["/bin/sh", "-c", "{WEB}"]
[[app.ports]]
container = 8080
host = 18080
"#
    )
}

/// A cluster with the test image in its registry; returns it and the image reference.
fn cluster(opts: ClusterOptions) -> (Cluster, Registry, String) {
    let c = Cluster::start_with(opts, |lab| {
        format!("[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0))
    });
    let registry = Registry::start_in_netns(&c.lab.ns(0), &c.lab.addr(0));
    let layout = tempfile::tempdir().unwrap();
    busybox_layout(layout.path(), "1");
    let image = format!("{}/bramble/busybox:1", registry.addr);
    push_from(Some(&c.lab.ns(0)), layout.path(), "1", &image);
    (c, registry, image)
}

fn apply(c: &Cluster, name: &str, text: &str) {
    let path = c.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    cli_ok(c, &["apply", "-f", path.to_str().unwrap()]);
}

#[test]
fn services_dns_and_pod_networking_on_one_lan() {
    let (mut c, _registry, image) = cluster(ClusterOptions::default());
    apply(&c, "net.toml", &manifest(&image));
    let web = wait_running(&c, "web", 3);
    let client = wait_running(&c, "client", 1).remove(0);
    let udp = wait_running(&c, "udp", 2);
    let front = wait_running(&c, "front", 1).remove(0);

    // Every node has a subnet, every pod an address in its node's subnet.
    let nodes = c.nodes();
    let subnets: BTreeMap<String, bramble_proto::network::Cidr> =
        nodes.iter().map(|n| (n.node.meta.name.clone(), n.node.pod_cidr.expect("a pod subnet"))).collect();
    assert_eq!(subnets.values().collect::<BTreeSet<_>>().len(), 3, "one subnet each: {subnets:?}");
    for r in web.iter().chain([&client, &front]) {
        assert!(subnets[r.node.as_ref().unwrap()].contains(r.ip.unwrap()), "{} in its board's subnet", r.meta.name);
    }
    let wide = cli_ok(&c, &["get", "replicas", "-o", "wide"]);
    assert!(wide.contains(&web[0].ip.unwrap().to_string()), "IPs in -o wide:\n{wide}");

    // 1. Pod to pod, on the client's board and across boards, by address.
    for w in &web {
        let body = wget(&c, &client, &format!("http://{}:8080/", w.ip.unwrap())).unwrap();
        assert_eq!(body, w.meta.name, "{} answers as itself", w.meta.name);
    }
    assert!(web.iter().any(|w| w.node == client.node) || web.iter().all(|w| w.node != client.node));

    // 2. The service by name (short and full): the answers come from all three replicas.
    let svc = wait_for("three endpoints", Duration::from_secs(20), || {
        let s = service(&c, "web");
        (ready(&s).len() == 3).then_some(s)
    });
    let vip = svc.vip.expect("a VIP");
    assert!(vip.to_string().starts_with("10.43."), "from the service CIDR: {vip}");
    let listed = cli_ok(&c, &["get", "services"]);
    assert!(listed.contains(&format!("web       {vip}")) && listed.contains("3/3"), "{listed}");
    let described = cli_ok(&c, &["describe", "service", "web"]);
    assert!(described.contains(&format!("{}:8080", web[0].ip.unwrap())) && described.contains("ready"), "{described}");
    let mut seen = BTreeSet::new();
    for i in 0..40 {
        let url = if i % 2 == 0 { "http://web/" } else { "http://web.bramble.internal/" };
        seen.insert(wget(&c, &client, url).unwrap());
    }
    let names: BTreeSet<String> = web.iter().map(|r| r.meta.name.clone()).collect();
    assert_eq!(seen, names, "every replica answers through the service");
    let (code, out) = exec(&c, &client, "nslookup web");
    assert!(code == 0 && out.contains(&vip.to_string()), "the cluster DNS answers: {out}");
    let (code, _) = exec(&c, &client, "nslookup nosuch.bramble.internal");
    assert_ne!(code, 0, "a name of the cluster that does not exist");

    // 3. The boards themselves reach the VIP; a pod reaches its own service (hairpin).
    for i in 1..=3 {
        let body = in_netns(&c.lab.ns_path(i), move || http_get(SocketAddr::from((vip, 80)))).unwrap();
        assert!(names.contains(&body), "board {i} through the VIP: {body}");
    }
    for _ in 0..12 {
        wget(&c, &web[0], "http://web/").expect("a replica reaching its own service");
    }

    // 4. A UDP service; a client moves on at once when its endpoint goes (conntrack).
    for r in &udp {
        udp_echo(pod_netns(&c, r), r.meta.name.clone());
    }
    let echo_vip = service(&c, "echo").vip.unwrap();
    let ask = move |sock: &UdpSocket| -> Option<String> {
        sock.send_to(b"hi", (echo_vip, 53)).ok()?;
        let mut buf = [0u8; 128];
        let n = sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let board_ns = c.lab.ns_path(board_of(&client));
    let (first, second, took) = in_netns(&board_ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:40404").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let first = wait_for("a UDP answer", Duration::from_secs(10), || ask(&sock));
        (first, sock, Instant::now())
    });
    // A UDP host port: from another namespace to a board running a replica of the udp app.
    let ub = board_of(&udp[0]);
    let host: Ipv4Addr = c.lab.addr(ub).parse().unwrap();
    let answered = in_netns(&c.lab.ns_path(0), move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        wait_for("an answer through the UDP host port", Duration::from_secs(10), || {
            sock.send_to(b"hi", (host, 15353)).ok()?;
            let mut buf = [0u8; 128];
            let n = sock.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).to_string())
        })
    });
    let on_ub: BTreeSet<String> = udp.iter().filter(|r| board_of(r) == ub).map(|r| r.meta.name.clone()).collect();
    assert!(on_ub.contains(&answered), "the board's own replica answers its UDP host port: {answered}");
    let gone = udp.iter().find(|r| r.meta.name == first).unwrap().clone();
    crash_twice(&c, &gone);
    wait_for("the stopped replica to leave the UDP service", Duration::from_secs(20), || {
        (!ready(&service(&c, "echo")).contains(&gone.meta.name)).then_some(())
    });
    let next =
        in_netns(&board_ns, move || wait_for("an answer from the other", Duration::from_secs(5), || ask(&second)));
    assert_ne!(next, first, "the same client (same source port) is answered by the remaining endpoint");
    eprintln!("UDP client moved to the remaining endpoint {:?} after its endpoint went", took.elapsed());

    // 5. A service without endpoints refuses at once.
    let nowhere = service(&c, "nowhere");
    assert!(nowhere.endpoints.is_empty());
    let described = cli_ok(&c, &["describe", "service", "nowhere"]);
    assert!(described.contains("no such app yet"), "{described}");
    let started = Instant::now();
    let refused = wget(&c, &client, "http://nowhere:81/").unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused, not a black hole: {refused} after {:?}",
        started.elapsed()
    );

    // 6. A host port, from another namespace, with the client's address kept; and from the
    //    board itself on 127.0.0.1.
    let fb = board_of(&front);
    let board_addr: Ipv4Addr = c.lab.addr(fb).parse().unwrap();
    let body = in_netns(&c.lab.ns_path(0), move || http_get(SocketAddr::from((board_addr, 18080)))).unwrap();
    assert_eq!(body, front.meta.name);
    let leader_addr = c.lab.addr(0);
    wait_for("the client's address in the server's log", Duration::from_secs(10), || {
        cli_ok(&c, &["logs", &front.meta.name]).contains(&leader_addr).then_some(())
    });
    let local = in_netns(&c.lab.ns_path(fb), || http_get("127.0.0.1:18080".parse().unwrap())).unwrap();
    assert_eq!(local, front.meta.name, "the board's own 127.0.0.1 reaches its host port");

    // 7. A replica that crashes again right after a restart leaves the endpoints while it backs
    // off, and comes back when its shim restarts it.
    let victim = web[1].clone();
    crash_twice(&c, &victim);
    wait_for("the killed replica to leave the endpoints", Duration::from_secs(20), || {
        (!ready(&service(&c, "web")).contains(&victim.meta.name)).then_some(())
    });
    wait_for("it to come back", Duration::from_secs(40), || {
        ready(&service(&c, "web")).contains(&victim.meta.name).then_some(())
    });

    // 8. With the leader stopped, services still answer; an agent restart changes nothing.
    c.leader.take().unwrap().stop(Signal::SIGKILL);
    assert!(names.contains(&wget(&c, &client, "http://web/").unwrap()), "the service answers without a leader");
    // Without the board's agent the kernel's rules go on: the VIP and host ports answer (names
    // wait for the agent's DNS, back within moments of its restart).
    let pids = containers(&c);
    for i in 1..=3 {
        c.kill_agent(i);
    }
    let vip_url = format!("http://{vip}/");
    for _ in 0..6 {
        assert!(names.contains(&wget(&c, &client, &vip_url).unwrap()), "the VIP answers with every agent down");
    }
    let body = in_netns(&c.lab.ns_path(0), move || http_get(SocketAddr::from((board_addr, 18080)))).unwrap();
    assert_eq!(body, front.meta.name, "so does the host port");
    for i in 1..=3 {
        c.start_agent(i);
    }
    wait_for("the agents' DNS to answer again", Duration::from_secs(20), || wget(&c, &client, "http://web/").ok());
    assert_eq!(containers(&c), pids, "agent restarts rebuild the network without restarting a container");
    c.start_leader();

    // 9. A board is lost: its endpoints leave every service within the grace period.
    let lost_board = board_of(&web[2]);
    let on_lost: BTreeSet<String> =
        replicas(&c, "web").into_iter().filter(|r| board_of(r) == lost_board).map(|r| r.meta.name).collect();
    let t = Instant::now();
    c.kill_agent(lost_board);
    c.lab.set_link(lost_board, false);
    wait_for("the lost board's endpoints to leave", Duration::from_secs(30), || {
        ready(&service(&c, "web")).is_disjoint(&on_lost).then_some(())
    });
    eprintln!("a lost board's endpoints left the service {:?} after it vanished (grace 3 s)", t.elapsed());
    c.lab.set_link(lost_board, true);
    c.start_agent(lost_board);
    c.wait_status(lost_board, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));

    // 10. Delete everything: no veth, namespace, address, rule or route of the apps is left.
    cli_ok(&c, &["delete", "-f", c.dir.path().join("net.toml").to_str().unwrap()]);
    wait_for("every pod to go", Duration::from_secs(60), || (1..=3).all(|i| pods_left(&c, i).is_empty()).then_some(()));
    let gone: Vec<Replica> = web.iter().chain(&udp).chain([&client, &front]).cloned().collect();
    let left = |i: usize| {
        let ns = c.lab.ns_path(i);
        in_netns(&ns, || {
            let run = |cmd: &[&str]| {
                let out = std::process::Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).to_string()
            };
            (run(&["ip", "-o", "link"]), run(&["nft", "list", "table", "ip", "bramble"]), run(&["conntrack", "-L"]))
        })
    };
    // The rules and flows follow the pods within moments.
    wait_for("the rules and flows of the deleted pods to go", Duration::from_secs(15), || {
        (1..=3)
            .all(|i| {
                let (_, rules, flows) = left(i);
                gone.iter().all(|r| {
                    let ip = r.ip.unwrap().to_string();
                    !rules.contains(&ip) && !flows.contains(&format!("={ip} "))
                })
            })
            .then_some(())
    });
    for i in 1..=3 {
        let (links, rules, flows) = left(i);
        assert!(!links.contains(": bv"), "board {i}: no pod veth left:\n{links}");
        for r in web.iter().chain(&udp).chain([&client, &front]) {
            assert!(!rules.contains(&r.ip.unwrap().to_string()), "board {i}: no rule for {}:\n{rules}", r.meta.name);
        }
        assert!(!rules.contains(&vip.to_string()), "board {i}: the service's VIP is gone from the rules");
        let ipam = std::fs::read_to_string(c.agent_dir(i).join("pods/ipam.json")).unwrap_or_default();
        assert!(!ipam.contains("web-") && !ipam.contains("client-"), "board {i}: addresses released: {ipam}");
        for r in &gone {
            let ip = format!("={} ", r.ip.unwrap());
            assert!(!flows.contains(&ip), "board {i}: no conntrack entry of {} left:\n{flows}", r.meta.name);
        }
    }
}

/// Every container on every board with its process.
fn containers(c: &Cluster) -> BTreeMap<String, Option<i32>> {
    let mut out = BTreeMap::new();
    for i in 1..=3 {
        let runtime = Runtime::new(&c.shims_dir(i), &bramble_tests::process::bin_dir().join("bramble-shim"));
        for id in runtime.ids() {
            let pid = runtime.state(&id).ok().and_then(|s| match s.lifecycle.phase {
                bramble_agent::runtime::lifecycle::Phase::Running { pid, .. } => Some(pid),
                _ => None,
            });
            out.insert(id, pid);
        }
    }
    out
}

/// The pods (network namespaces) left on board `i`.
fn pods_left(c: &Cluster, i: usize) -> Vec<String> {
    std::fs::read_dir(c.agent_dir(i).join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

/// Stops a replica's process (its shim restarts it after the backoff).
/// Kills the replica's container twice in a row: the shim restarts the first crash at once, and
/// holds the second back (BackOff, 10 s), out of its services.
fn crash_twice(c: &Cluster, r: &Replica) {
    let runtime = Runtime::new(&c.shims_dir(board_of(r)), &bramble_tests::process::bin_dir().join("bramble-shim"));
    let running = || {
        let s = runtime.state(&r.meta.name).expect("the replica's shim");
        match s.lifecycle.phase {
            bramble_agent::runtime::lifecycle::Phase::Running { pid, .. } => Some((pid, s.lifecycle.restarts)),
            _ => None,
        }
    };
    let (pid, restarts) = running().unwrap_or_else(|| panic!("{} is not running", r.meta.name));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let (pid, _) = wait_for("the first crash restarted at once", Duration::from_secs(5), || {
        running().filter(|(_, n)| *n > restarts)
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
}

#[test]
fn pods_reach_each_other_across_subnets_over_vxlan() {
    let opts = ClusterOptions {
        agents: 2,
        init_args: vec!["--network-backend".into(), "vxlan".into()],
        second_lan_from: Some(2),
        ..Default::default()
    };
    let (c, _registry, image) = cluster(opts);
    assert_ne!(c.lab.addr(1).split('.').nth(1), c.lab.addr(2).split('.').nth(1), "two LANs");
    let text = manifest(&image).replace("replicas = 3", "replicas = 2");
    apply(&c, "net.toml", &text);
    let web = wait_running(&c, "web", 2);
    assert_ne!(web[0].node, web[1].node, "one on each LAN");
    let client = wait_running(&c, "client", 1).remove(0);
    for w in &web {
        assert_eq!(wget(&c, &client, &format!("http://{}:8080/", w.ip.unwrap())).unwrap(), w.meta.name);
    }
    let names: BTreeSet<String> = web.iter().map(|r| r.meta.name.clone()).collect();
    let seen: BTreeSet<String> = (0..20).map(|_| wget(&c, &client, "http://web/").unwrap()).collect();
    assert_eq!(seen, names, "the service spreads over both LANs");
    let links = in_netns(&c.lab.ns_path(1), || {
        String::from_utf8_lossy(
            &std::process::Command::new("ip").args(["-d", "link", "show", "bramble-vx"]).output().unwrap().stdout,
        )
        .to_string()
    });
    assert!(links.contains("vxlan id 42"), "a kernel vxlan device: {links}");
}
