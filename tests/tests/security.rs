//! What a deployer, a pod and a stranger cannot do, end to end (issue 27; docs/SECURITY.md says
//! which line each test shows): a hostile host port never takes the leader's port or a port a
//! process on the board listens on, and the leader stays reachable; pods cannot reach the
//! cluster's own ports (here the leader's metrics listener) while services and DNS keep working,
//! unless an admin made their app a control-plane app; a deployer cannot ask for containers
//! without seccomp or for the control plane.

use bramble_agent::runtime::Runtime;
use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::{text, wait_for, Cluster, ClusterOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn running(c: &Cluster, app: &str) -> Replica {
    wait_for(&format!("{app} running with an address"), Duration::from_secs(90), || {
        c.replicas_of(app).into_iter().find(|r| r.phase == ReplicaPhase::Running && r.ip.is_some())
    })
}

fn board_of(r: &Replica) -> usize {
    r.node.as_deref().and_then(|n| n.strip_prefix("board-")?.parse().ok()).expect("a board")
}

fn exec(c: &Cluster, r: &Replica, cmd: &str) -> (i32, String) {
    let runtime = Runtime::new(&c.shims_dir(board_of(r)), &bramble_tests::process::bin_dir().join("bramble-shim"));
    let args = vec!["/bin/sh".to_string(), "-c".into(), cmd.into()];
    let (code, out, _) = runtime.exec(&r.meta.name, args, Vec::new(), Duration::from_secs(15)).expect("exec");
    (code, out)
}

/// A TCP server in board `i`'s namespace on `port` that answers "mine" (a process of the board's
/// own, such as sshd or a database, that a pod must not take over).
fn board_listener(c: &Cluster, i: usize, port: u16) {
    let ns = std::fs::File::open(c.lab.ns_path(i)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind on the board");
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"mine\n");
        }
    });
    rx.recv().unwrap();
}

fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn hostile_host_ports_pods_and_deployers_are_kept_in_their_place() {
    // The leader's metrics listener on its board's address: a port of the cluster's own.
    let opts = ClusterOptions { agents: 2, metrics_listen: Some("0.0.0.0:9464".into()), ..Default::default() };
    let (c, _registry, image) = bramble_tests::cluster::with_busybox_opts(opts, "");
    let leader_ip = c.lab.addr(0);
    let dir = c.dir.path();
    c.ok(&["label", "node", "board-1", "role=edge"]);

    // A deployer.
    let ci = dir.join("ci.toml");
    c.ok(&["user", "create", "ci", "--role", "deployer", "--out", ci.to_str().unwrap()]);
    let app = |name: &str, extra: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             placement = {{ node_selector = {{ role = \"edge\" }} }}\n{extra}"
        )
    };
    let file = |name: &str, body: String| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };

    // 1. The leader's QUIC port as a host port: refused at apply, with the line; every board
    //    still reaches the leader.
    let f = file("lockout.toml", app("lockout", "ports = [{ container = 7443, host = 7443, protocol = \"udp\" }]\n"));
    let out = c.cli_as(&ci, &["apply", "-f", &f]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("lockout.toml:6:37: app[0].ports[0].host"), "{err}");
    assert!(err.contains("host port 7443/udp is the cluster's own (the leader's QUIC port)"), "{err}");
    c.ok(&["get", "nodes"]);

    // 2. A port a process on the board listens on: the replica waits with the board's reason,
    //    and the board's own server keeps its port.
    board_listener(&c, 1, 9999);
    let f = file("taker.toml", app("taker", "ports = [{ container = 8080, host = 9999 }]\n"));
    c.ok(&["apply", "-f", &f]);
    let r = wait_for("the board's refusal", Duration::from_secs(60), || {
        c.replicas_of("taker").into_iter().find(|r| r.reason.contains("a process on this board listens on it"))
    });
    assert_ne!(r.phase, ReplicaPhase::Running, "{r:?}");
    let board1: SocketAddr = format!("{}:9999", c.lab.addr(1)).parse().unwrap();
    let ns2 = std::fs::File::open(c.lab.ns_path(2)).unwrap();
    let answer = std::thread::spawn(move || {
        nix::sched::setns(ns2, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        fetch(board1)
    })
    .join()
    .unwrap()
    .expect("the board's server answers");
    assert_eq!(answer, "mine\n");
    c.ok(&["delete", "app", "taker"]);

    // 3. Containers without seccomp, or reaching the control plane: admins only.
    for (name, security) in [
        ("loose", "seccomp = \"unconfined\""),
        ("scraper", "control_plane = true"),
        ("netadmin", "cap_add = [\"NET_ADMIN\"]"),
    ] {
        let f = file(&format!("{name}.toml"), app(name, &format!("security = {{ {security} }}\n")));
        let out = c.cli_as(&ci, &["apply", "-f", &f]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("this needs the admin role; you are deployer:ci"), "{}", text(&out.stderr));
    }

    // Capabilities: an admin's app gets NET_ADMIN (bit 12 of CapEff); a deployer may drop some
    // (NET_RAW, bit 13) and gets nothing beyond the defaults.
    // A deployer may not write a policy; an admin lets deployers give `netadmin` NET_ADMIN, and
    // nothing more.
    let out = c.cli_as(&ci, &["policy", "allow", "netadmin", "--cap-add", "NET_ADMIN"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    c.ok(&["policy", "allow", "netadmin", "--cap-add", "net_admin"]);
    assert!(c.ok(&["policy", "ls"]).lines().any(|l| l.starts_with("netadmin") && l.contains("NET_ADMIN")));
    let more = file("more.toml", app("netadmin", "security = { cap_add = [\"NET_ADMIN\", \"SYS_ADMIN\"] }\n"));
    let out = c.cli_as(&ci, &["apply", "-f", &more]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("app/netadmin asks for security.cap_add SYS_ADMIN"), "{}", text(&out.stderr));
    let netadmin_toml = file("netadmin.toml", app("netadmin", "security = { cap_add = [\"CAP_NET_ADMIN\"] }\n"));
    let out = c.cli_as(&ci, &["apply", "-f", &netadmin_toml]);
    assert!(out.status.success(), "the policy lets the deployer: {}", text(&out.stderr));
    let f = file("dropper.toml", app("dropper", "security = { cap_drop = [\"net_raw\"] }\n"));
    let out = c.cli_as(&ci, &["apply", "-f", &f]);
    assert!(out.status.success(), "a deployer may drop capabilities: {}", text(&out.stderr));
    let cap_eff = |r: &Replica| {
        let (code, out) = exec(&c, r, "grep CapEff /proc/self/status");
        assert_eq!(code, 0, "{out}");
        u64::from_str_radix(out.split_whitespace().nth(1).expect("a mask"), 16).expect("hex")
    };
    let (netadmin, dropper) = (running(&c, "netadmin"), running(&c, "dropper"));
    let (with, without) = (cap_eff(&netadmin), cap_eff(&dropper));
    assert!(with & (1 << 12) != 0 && with & (1 << 13) != 0, "NET_ADMIN added, NET_RAW kept: {with:x}");
    assert!(without & (1 << 12) == 0 && without & (1 << 13) == 0, "NET_RAW dropped: {without:x}");
    c.ok(&["delete", "app", "netadmin", "dropper"]);
    c.ok(&["policy", "rm", "netadmin"]);
    let out = c.cli_as(&ci, &["apply", "-f", &netadmin_toml]);
    assert_eq!(out.status.code(), Some(5), "no policy, no privileges: {}", text(&out.stderr));

    // 4. Pods cannot reach the leader's metrics listener (a port of the cluster's own), on any
    //    board; a control-plane app can; the service and DNS keep working for all.
    let metrics_url = format!("http://{leader_ip}:9464/metrics");
    let f = file(
        "apps.toml",
        app("web", "ports = [{ name = \"http\", container = 8080 }]\n").replace(
            "while true; do sleep 1; done",
            "mkdir -p /www; echo hello > /www/index.html; exec httpd -f -p 8080 -h /www",
        ) + "[[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80, target = \"http\" }]\n"
            + &app("plain", ""),
    );
    c.ok(&["apply", "-f", &f]);
    let plain = running(&c, "plain");
    running(&c, "web");
    let (code, out) = exec(&c, &plain, "wget -q -O - http://web/");
    assert_eq!((code, out.trim()), (0, "hello"), "the service by name");
    // (busybox's `wget -T` crashes on a refused connection: plain wget, bounded by `timeout`.)
    let (code, out) = exec(&c, &plain, &format!("timeout 5 wget -q -O - {metrics_url}; echo exit=$?"));
    assert!(
        code == 0 && out.contains("exit=1") && !out.contains("bramble_"),
        "a pod reached the leader's metrics: {out}"
    );
    let f = file("scraper.toml", app("scraper", "security = { control_plane = true }\n"));
    c.ok(&["apply", "-f", &f]);
    let scraper = running(&c, "scraper");
    let (code, out) = wait_for("the control-plane app reaches the metrics", Duration::from_secs(20), || {
        let (code, out) = exec(&c, &scraper, &format!("timeout 5 wget -q -O - {metrics_url}"));
        (code == 0).then_some((code, out))
    });
    assert!(code == 0 && out.contains("bramble_"), "{out}");
    c.ok(&["get", "nodes"]);
    c.remove_containers();
}
