//! Host networking end to end (issue 30): a deployer's `host_network = true` is refused until an
//! admin's policy names the app; the container then shares its board's network namespace — it
//! sees the board's interfaces, serves on the board's own address, and its service's VIP reaches it
//! from a pod on another board; its ports are the board's, so a second host-network app on the
//! same port waits Pending ("host port in use") instead of failing on the board.

use bramble_agent::runtime::Runtime;
use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::{text, wait_for, Cluster, ClusterOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn running(c: &Cluster, app: &str) -> Replica {
    wait_for(&format!("{app} running with an address"), Duration::from_secs(90), || {
        c.replicas_of(app).into_iter().find(|r| r.phase == ReplicaPhase::Running && r.ip.is_some())
    })
}

fn exec(c: &Cluster, board: usize, r: &Replica, cmd: &str) -> (i32, String) {
    let runtime = Runtime::new(&c.shims_dir(board), &bramble_tests::process::bin_dir().join("bramble-shim"));
    let args = vec!["/bin/sh".to_string(), "-c".into(), cmd.into()];
    let (code, out, _) = runtime.exec(&r.meta.name, args, Vec::new(), Duration::from_secs(15)).expect("exec");
    (code, out)
}

/// An HTTP GET of `/` at `addr` from board `from`'s namespace: the body.
fn get_from(c: &Cluster, from: usize, addr: SocketAddr) -> std::io::Result<String> {
    let ns = std::fs::File::open(c.lab.ns_path(from)).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    })
    .join()
    .unwrap()
}

#[test]
fn host_network_apps_share_their_boards_network_under_the_admins_control() {
    let opts = ClusterOptions { agents: 2, ..Default::default() };
    let (c, _registry, image) = bramble_tests::cluster::with_busybox_opts(opts, "");
    c.ok(&["label", "node", "board-1", "role=edge"]);
    c.ok(&["label", "node", "board-2", "role=client"]);
    let ci = c.dir.path().join("ci.toml");
    c.ok(&["user", "create", "ci", "--role", "deployer", "--out", ci.to_str().unwrap()]);
    let file = |name: &str, body: String| c.write(name, &body);
    let server = |name: &str, role: &str, extra: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\n\
             command = [\"/bin/sh\", \"-c\", \"mkdir -p /www; echo {name} > /www/index.html; exec httpd -f -p 8099 -h /www\"]\n\
             placement = {{ node_selector = {{ role = \"{role}\" }} }}\n{extra}"
        )
    };
    let web = file(
        "web.toml",
        server("exporter", "edge", "host_network = true\nports = [{ name = \"http\", container = 8099 }]\n")
            + "probes = { readiness = { http = { port = \"http\", path = \"/\" }, period = \"1s\" } }\n"
            + "[[service]]\nname = \"exporter\"\napp = \"exporter\"\nports = [{ port = 80, target = \"http\" }]\n",
    );

    // 1. A deployer may not: the refusal names what needs the admin.
    let out = c.cli_as(&ci, &["apply", "-f", &web]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("app/exporter asks for host_network = true"), "{err}");
    assert!(!c.ok(&["get", "apps"]).contains("exporter"), "nothing of a refused apply is stored");
    // A host port beside host_network is refused for anyone, with the line.
    let bad =
        file("bad.toml", server("bad", "edge", "host_network = true\nports = [{ container = 8099, host = 9000 }]\n"));
    let out = c.cli(&["apply", "-f", &bad]);
    assert!(!out.status.success() && text(&out.stderr).contains("leave out host"), "{}", text(&out.stderr));

    // 2. An admin's policy lets the deployer apply exactly this app with it.
    c.ok(&["policy", "allow", "exporter", "--host-network"]);
    let policies = c.ok(&["policy", "ls", "-o", "json"]);
    assert!(policies.contains("\"host_network\": true"), "{policies}");
    let out = c.cli_as(&ci, &["apply", "-f", &web]);
    assert!(out.status.success(), "the policy lets the deployer: {}", text(&out.stderr));

    // 3. The container is on the board's network: it sees the board's bridge and lab interface,
    //    not a pod's lone eth0, and serves on the board's own address.
    let exporter = running(&c, "exporter");
    assert_eq!(exporter.node.as_deref(), Some("board-1"));
    let (code, ifaces) = exec(&c, 1, &exporter, "cat /proc/net/dev");
    assert_eq!(code, 0, "{ifaces}");
    assert!(ifaces.contains("bramble0:"), "the board's pod bridge is in its namespace: {ifaces}");
    let board1: SocketAddr = format!("{}:8099", c.lab.addr(1)).parse().unwrap();
    let body = wait_for("the board's address serves the app", Duration::from_secs(20), || get_from(&c, 2, board1).ok());
    assert_eq!(body.trim(), "exporter");

    // 4. Its service reaches it from a pod on the other board, by name through the VIP.
    let client = file("client.toml", server("client", "client", ""));
    c.ok(&["apply", "-f", &client]);
    let client = running(&c, "client");
    let (code, out) = wait_for("the service reaches the host-network app", Duration::from_secs(30), || {
        let (code, out) = exec(&c, 2, &client, "wget -q -O - http://exporter/");
        (code == 0).then_some((code, out))
    });
    assert_eq!((code, out.trim()), (0, "exporter"));

    // 5. A second host-network app on the same port and board (an admin's: accepted) waits
    //    Pending with the scheduler's reason; the first keeps serving.
    let clash = file("clash.toml", server("clash", "edge", "host_network = true\nports = [{ container = 8099 }]\n"));
    c.ok(&["apply", "-f", &clash]);
    let r = wait_for("the clash is Pending with its reason", Duration::from_secs(30), || {
        c.replicas_of("clash").into_iter().find(|r| r.phase == ReplicaPhase::Pending && r.reason.contains("host port"))
    });
    assert!(r.node.is_none(), "{r:?}");
    assert_eq!(get_from(&c, 2, board1).expect("still served").trim(), "exporter");

    // 6. Deleted, its port is free: the waiting app takes it.
    c.ok(&["delete", "app", "exporter"]);
    running(&c, "clash");
    let body = wait_for("the other app serves on the port", Duration::from_secs(30), || {
        get_from(&c, 2, board1).ok().filter(|b| b.trim() == "clash")
    });
    assert_eq!(body.trim(), "clash");
    c.ok(&["delete", "app", "clash", "client"]);
    c.remove_containers();
}
