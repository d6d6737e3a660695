//! The cluster's network, measured on a real cluster (boards as network namespaces, real
//! containers, real nft):
//! - endpoint propagation: a new replica is Running → another board's requests to the VIP reach it;
//! - rule sync: nft for 100 services × 10 endpoints, whole, and one endpoint change among them;
//! - throughput (iperf3): pod to pod across boards vs board to board, and through the VIP vs the
//!   pod's own address;
//! - requests per second through a host port (kernel DNAT) vs the userspace forwarder Bramble used
//!   before (a thread per connection copying into the pod's namespace), same pod, same run.

use crate::apps::{replicas, setup, wait};
use crate::stats::summarize;
use bramble_agent::net::rules::{diff, full, Model};
use bramble_proto::manifest::Protocol;
use bramble_proto::model::{Replica, ReplicaPhase, Service};
use bramble_proto::network::{Endpoint, RoutePort, ServiceRoute};
use bramble_tests::Cluster;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cli(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn running(c: &Cluster, app: &str, n: usize) -> Vec<Replica> {
    wait(&format!("{n} running replicas of {app}"), Duration::from_secs(120), || {
        let r = replicas(c, app);
        (r.len() == n && r.iter().all(|r| r.phase == ReplicaPhase::Running && r.ip.is_some())).then_some(r)
    })
}

fn service(c: &Cluster, name: &str) -> Service {
    let all: Vec<Service> = serde_json::from_str(&cli(c, &["get", "services", "-o", "json"])).expect("services");
    all.into_iter().find(|s| s.meta.name == name).expect("the service")
}

fn board(r: &Replica) -> usize {
    r.node.as_deref().and_then(|n| n.strip_prefix("board-")?.parse().ok()).expect("a board")
}

fn pod_ns(c: &Cluster, r: &Replica) -> PathBuf {
    c.agent_dir(board(r)).join("pods").join(&r.meta.name).join("netns")
}

fn get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split("\r\n\r\n").nth(1)?.trim().to_string())
}

const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn manifest(image: &str) -> String {
    format!(
        r#"[[app]]
name = "prop"
image = "{image}"
command = ["/bin/sh", "-c", "{HTTPD}"]
placement = {{ node_selector = {{ role = "server" }} }}
[[app.ports]]
name = "http"
container = 8080

[[service]]
name = "prop"
app = "prop"
ports = [{{ port = 80, target = "http" }}]

[[app]]
name = "iperf"
image = "{image}"
command = ["/bin/sh", "-c", "{IDLE}"]
placement = {{ node_selector = {{ role = "server" }}, max_per_node = 1 }}
replicas = 2

[[service]]
name = "iperf"
app = "iperf"
ports = [{{ port = 5201 }}]

[[app]]
name = "hp"
image = "{image}"
command = ["/bin/sh", "-c", "{HTTPD}"]
placement = {{ node_selector = {{ role = "server" }} }}
[[app.ports]]
container = 8080
host = 18080
"#
    )
}

pub fn run(runs: usize) -> serde_json::Value {
    let sync = rule_sync(runs.max(20));
    let (c, _registry, image) = setup(3, "");
    for n in ["board-2", "board-3"] {
        cli(&c, &["label", "node", n, "role=server"]);
    }
    let path = c.dir.path().join("net.toml");
    std::fs::write(&path, manifest(&image)).expect("manifest");
    cli(&c, &["apply", "-f", path.to_str().expect("utf-8")]);
    running(&c, "prop", 1);
    running(&c, "iperf", 2);
    running(&c, "hp", 1);
    let prop = propagation(&c, runs);
    let throughput = throughput(&c);
    let host_port = host_port(&c);
    serde_json::json!({ "rule_sync": sync, "propagation": prop, "throughput": throughput, "host_port": host_port })
}

/// 100 services × 10 endpoints: the whole table, and one endpoint changed, applied by the real
/// nft in a namespace of its own.
fn rule_sync(runs: usize) -> serde_json::Value {
    let services: BTreeMap<String, ServiceRoute> = (0..100u32)
        .map(|i| {
            let endpoints = (0..10u32)
                .map(|e| Endpoint {
                    replica: format!("s{i}-{e}"),
                    node: "pi".into(),
                    ip: Ipv4Addr::new(10, 42, (e % 4) as u8, (i * 2 + e) as u8),
                    ready: true,
                })
                .collect();
            let route = ServiceRoute {
                name: format!("s{i}"),
                vip: Ipv4Addr::new(10, 43, 0, i as u8 + 1),
                ports: vec![RoutePort { port: 80, protocol: Protocol::Tcp, target: 8080 }],
                endpoints,
            };
            (route.name.clone(), route)
        })
        .collect();
    let model =
        |s: &BTreeMap<String, ServiceRoute>| Model::new(Some("10.42.0.0/16".parse().expect("cidr")), s, &[], []);
    let a = model(&services);
    let mut changed = services.clone();
    changed.get_mut("s50").expect("s50").endpoints[3].ip = Ipv4Addr::new(10, 42, 9, 9);
    let b = model(&changed);
    let whole = full(&a);
    let (forward, back) = (diff(&a, &b), diff(&b, &a));
    let (lines_whole, lines_one) = (whole.lines().count(), forward.lines().count());
    let (fulls, ones, floors) = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a namespace of its own");
        let mut fulls = Vec::new();
        let mut ones = Vec::new();
        let mut floors = Vec::new();
        for _ in 0..runs {
            fulls.push(bramble_agent::net::nft::apply(&whole).expect("the whole table"));
            ones.push(bramble_agent::net::nft::apply(&forward).expect("one change"));
            ones.push(bramble_agent::net::nft::apply(&back).expect("and back"));
            // The floor: nft started, its cache of the ruleset read, a transaction of one line.
            floors.push(bramble_agent::net::nft::apply("add table ip bramble-floor\n").expect("floor"));
        }
        (fulls, ones, floors)
    })
    .join()
    .expect("the nft thread");
    let (f, o, z) = (summarize(&fulls), summarize(&ones), summarize(&floors));
    println!("nft rule sync, 100 services x 10 endpoints ({lines_whole} lines), {runs} runs:");
    println!("  whole table      median {:>6.1} ms  p95 {:>6.1} ms", f.median, f.p95);
    println!("  one endpoint     median {:>6.1} ms  p95 {:>6.1} ms  ({lines_one} lines)", o.median, o.p95);
    println!("  floor (1 line)   median {:>6.1} ms  p95 {:>6.1} ms  (nft's start and ruleset read)", z.median, z.p95);
    serde_json::json!({ "whole": f.json(), "one_endpoint": o.json(), "floor": z.json(), "lines_whole": lines_whole, "lines_one": lines_one })
}

/// A replica becomes Running → board 1's requests to the VIP reach it.
fn propagation(c: &Cluster, runs: usize) -> serde_json::Value {
    let vip = service(c, "prop").vip.expect("a VIP");
    let mut samples = Vec::new();
    for _ in 0..runs {
        let before: Vec<String> = replicas(c, "prop").into_iter().map(|r| r.meta.name).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
        let (s2, seen2) = (stop.clone(), seen.clone());
        let probe = std::thread::spawn({
            let ns = c.lab.ns_path(1);
            move || {
                let file = std::fs::File::open(ns).expect("board 1");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                while !s2.load(Ordering::SeqCst) {
                    if let Some(name) = get(SocketAddr::from((vip, 80))) {
                        seen2.lock().expect("seen").entry(name).or_insert_with(bramble_proto::time::now_ms);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        cli(c, &["scale", "app", "prop", "--replicas", "2"]);
        let all = running(c, "prop", 2);
        let new = all.into_iter().find(|r| !before.contains(&r.meta.name)).expect("the new replica");
        let reached = wait("the new replica to answer through the VIP", Duration::from_secs(30), || {
            seen.lock().expect("seen").get(&new.meta.name).copied()
        });
        stop.store(true, Ordering::SeqCst);
        probe.join().expect("the probe");
        samples.push(Duration::from_millis(reached.saturating_sub(new.started_ms.expect("started"))));
        cli(c, &["scale", "app", "prop", "--replicas", "1"]);
        running(c, "prop", 1);
        wait("one endpoint again", Duration::from_secs(30), || {
            (service(c, "prop").endpoints.iter().filter(|e| e.ready).count() == 1).then_some(())
        });
    }
    let s = summarize(&samples);
    println!(
        "endpoint propagation (replica Running -> another board's request through the VIP reaches it), {runs} runs:"
    );
    println!("  min {:.0} ms  median {:.0} ms  p95 {:.0} ms", s.min, s.median, s.p95);
    s.json()
}

/// iperf3 for `secs` from namespace `client` to `addr` (a server must listen there); Gbit/s.
fn iperf(server_ns: &Path, client_ns: &Path, addr: Ipv4Addr, secs: u32) -> f64 {
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", server_ns.display()))
        .args(["iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", client_ns.display()))
        .args(["iperf3", "-J", "-c", &addr.to_string(), "-p", "5201", "-t", &secs.to_string()])
        .output()
        .expect("iperf3 client");
    // A server that took the connection has exited (-1); through the VIP the connection may have
    // gone to the other endpoint's server instead, so this one is stopped rather than awaited.
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J output");
    let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() else {
        panic!("iperf3 from {} to {addr}: {}", client_ns.display(), v["error"]);
    };
    bps / 1e9
}

fn throughput(c: &Cluster) -> serde_json::Value {
    let pods = running(c, "iperf", 2);
    let (server, client) = (&pods[0], &pods[1]);
    assert_ne!(board(server), board(client), "one on each board");
    let (sns, cns) = (pod_ns(c, server), pod_ns(c, client));
    let (sb, cb) = (c.lab.ns_path(board(server)), c.lab.ns_path(board(client)));
    let server_board: Ipv4Addr = c.lab.addr(board(server)).parse().expect("ip");
    let mut pod_pod = Vec::new();
    let mut host_host = Vec::new();
    for _ in 0..5 {
        pod_pod.push(iperf(&sns, &cns, server.ip.expect("ip"), 3));
        host_host.push(iperf(&sb, &cb, server_board, 3));
    }
    // iperf3 opens a control and a data connection, and a VIP balances each on its own: with two
    // endpoints they may land on different servers. So the VIP figure is taken with one endpoint,
    // sent from board 1 (where no iperf pod runs), beside the same board to the pod's address.
    cli(c, &["scale", "app", "iperf", "--replicas", "1"]);
    let server = running(c, "iperf", 1).remove(0);
    wait("one iperf endpoint", Duration::from_secs(30), || (service(c, "iperf").endpoints.len() == 1).then_some(()));
    let vip = service(c, "iperf").vip.expect("a VIP");
    let (sns, b1) = (pod_ns(c, &server), c.lab.ns_path(1));
    let mut via_vip = Vec::new();
    let mut via_pod = Vec::new();
    for _ in 0..5 {
        via_vip.push(iperf(&sns, &b1, vip, 3));
        via_pod.push(iperf(&sns, &b1, server.ip.expect("ip"), 3));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (pp, hh, vv, vp) = (med(&mut pod_pod), med(&mut host_host), med(&mut via_vip), med(&mut via_pod));
    println!("throughput (iperf3, 3 s, median of 5):");
    println!("  pod -> pod across boards {pp:>6.2} Gbit/s   board -> board {hh:>6.2} Gbit/s   ratio {:.2}", pp / hh);
    println!("  board -> VIP             {vv:>6.2} Gbit/s   board -> pod   {vp:>6.2} Gbit/s   ratio {:.2}", vv / vp);
    serde_json::json!({ "pod_pod_gbps": pp, "host_host_gbps": hh, "pod_ratio": pp / hh, "vip_gbps": vv, "pod_ip_gbps": vp, "vip_ratio": vv / vp })
}

/// Requests per second from the leader's namespace to `addr`, `threads` at a time, for `secs`.
fn load(from: &Path, addr: SocketAddr, threads: usize, secs: u64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (count, file) = (count.clone(), std::fs::File::open(from).expect("namespace"));
            std::thread::spawn(move || {
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                while Instant::now() < end {
                    if get(addr).is_some() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    count.load(Ordering::Relaxed) as f64 / secs as f64
}

/// The forwarder Bramble had before host ports were DNAT: a listener on the board, and for each
/// connection a thread that joins the pod's namespace, connects to 127.0.0.1 there, and copies.
fn userspace_forwarder(board_ns: PathBuf, pod_ns: PathBuf, port: u16, target: u16) {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&board_ns).expect("board");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("the forwarder's port");
        for client in listener.incoming().flatten() {
            let pod_ns = pod_ns.clone();
            std::thread::spawn(move || {
                let inside = std::thread::spawn(move || {
                    let f = std::fs::File::open(&pod_ns).ok()?;
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                    TcpStream::connect(("127.0.0.1", target)).ok()
                })
                .join()
                .ok()
                .flatten();
                let Some(upstream) = inside else { return };
                let (mut a, mut b) = (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
                let (mut c2, mut u2) = (client, upstream);
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut b, &mut c2);
                // The reply is done: close the client's side (the other thread holds a copy of
                // the socket, so dropping ours alone would not send the FIN).
                let _ = c2.shutdown(std::net::Shutdown::Both);
                let _ = t.join();
            });
        }
    });
}

fn host_port(c: &Cluster) -> serde_json::Value {
    let hp = running(c, "hp", 1).remove(0);
    let b = board(&hp);
    let addr: Ipv4Addr = c.lab.addr(b).parse().expect("ip");
    userspace_forwarder(c.lab.ns_path(b), pod_ns(c, &hp), 28080, 8080);
    std::thread::sleep(Duration::from_millis(300));
    let leader = c.lab.ns_path(0);
    let mut dnat = Vec::new();
    let mut user = Vec::new();
    for _ in 0..3 {
        dnat.push(load(&leader, SocketAddr::from((addr, 18080)), 4, 5));
        user.push(load(&leader, SocketAddr::from((addr, 28080)), 4, 5));
    }
    dnat.sort_by(f64::total_cmp);
    user.sort_by(f64::total_cmp);
    let (d, u) = (dnat[1], user[1]);
    println!("host port, HTTP/1.0 requests per second (4 clients, 5 s, median of 3):");
    println!("  kernel DNAT {d:>8.0}/s   userspace forwarder (before) {u:>8.0}/s   ratio {:.2}", d / u);
    serde_json::json!({ "dnat_rps": d, "userspace_rps": u, "ratio": d / u })
}
