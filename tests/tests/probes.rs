//! Probes end to end, all real: the shim probes real containers over their pod addresses and
//! inside them. Readiness decides whether a replica is a service endpoint (and shows as READY);
//! a failing liveness probe restarts the container, with `Unhealthy` and `Killing` events; a slow
//! starter protected by a startup probe is not killed.

use bramble_agent::runtime::Runtime;
use bramble_proto::model::{Replica, ReplicaPhase, Service};
use bramble_tests::{wait_for, Cluster};
use std::time::{Duration, Instant};

fn cli_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn replicas(c: &Cluster, app: &str) -> Vec<Replica> {
    serde_json::from_str(&cli_ok(c, &["get", "replicas", "--app", app, "-o", "json"])).expect("replicas parse")
}

fn service(c: &Cluster, name: &str) -> Service {
    let all: Vec<Service> =
        serde_json::from_str(&cli_ok(c, &["get", "services", "-o", "json"])).expect("services parse");
    all.into_iter().find(|s| s.meta.name == name).unwrap_or_else(|| panic!("service {name} listed"))
}

fn board_of(r: &Replica) -> usize {
    r.node.as_deref().and_then(|n| n.strip_prefix("board-")?.parse().ok()).expect("a board")
}

/// Runs `cmd` inside replica `r`'s container through its shim.
fn exec(c: &Cluster, r: &Replica, cmd: &str) -> (i32, String) {
    let runtime = Runtime::new(&c.shims_dir(board_of(r)), &bramble_tests::process::bin_dir().join("bramble-shim"));
    let args = vec!["/bin/sh".to_string(), "-c".into(), cmd.into()];
    let (code, out, _) = runtime.exec(&r.meta.name, args, Vec::new(), Duration::from_secs(10)).expect("exec");
    (code, out)
}

/// Serves /www over HTTP; `/ready` answers only while the file exists (404 otherwise).
const WEB: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";
/// Alive while /tmp/alive exists; the probe reads it.
const LIVE: &str = "touch /tmp/alive; trap 'exit 0' TERM; while true; do sleep 1; done";
/// Takes 6 s before it listens.
const SLOW: &str = "sleep 6; mkdir -p /www && exec httpd -f -p 8080 -h /www";

fn manifest(image: &str) -> String {
    format!(
        r#"[[app]]
name = "web"
image = "{image}"
command = ["/bin/sh", "-c", "{WEB}"]
replicas = 2
[[app.ports]]
name = "http"
container = 8080
[app.probes.readiness]
http = {{ port = "http", path = "/ready" }}
period = "1s"
failure_threshold = 2

[[service]]
name = "web"
app = "web"
ports = [{{ port = 80, target = "http" }}]

[[app]]
name = "live"
image = "{image}"
command = ["/bin/sh", "-c", "{LIVE}"]
stop_grace = "2s"
[app.probes.liveness]
exec = ["cat", "/tmp/alive"]
period = "1s"
failure_threshold = 2

[[app]]
name = "hang"
image = "{image}"
command = ["/bin/sh", "-c", "{LIVE}"]
stop_grace = "1s"
[app.probes.liveness]
exec = ["sleep", "60"]
period = "2s"
timeout = "1s"
failure_threshold = 1

[[app]]
name = "slow"
image = "{image}"
command = ["/bin/sh", "-c", "{SLOW}"]
[[app.ports]]
container = 8080
[app.probes.startup]
tcp = {{ port = 8080 }}
period = "1s"
failure_threshold = 20
[app.probes.liveness]
tcp = {{ port = 8080 }}
period = "1s"
failure_threshold = 1
"#
    )
}

#[test]
fn probes_decide_readiness_restart_unhealthy_containers_and_spare_slow_starters() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(3, "");
    let path = c.dir.path().join("probes.toml");
    std::fs::write(&path, manifest(&image)).unwrap();
    let applied_at = Instant::now();
    cli_ok(&c, &["apply", "-f", path.to_str().unwrap()]);

    // 1. Readiness: running but not ready until /ready exists; then an endpoint; then not again.
    let web = wait_for("two web replicas running", Duration::from_secs(60), || {
        let r = replicas(&c, "web");
        (r.len() == 2 && r.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(r)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(replicas(&c, "web").iter().all(|r| !r.ready), "no /ready yet: not ready");
    assert!(service(&c, "web").endpoints.iter().all(|e| !e.ready), "and no ready endpoint");
    let table = cli_ok(&c, &["get", "replicas", "--app", "web"]);
    assert!(table.contains("READY") && table.contains(" 0/1 "), "{table}");
    let describe = cli_ok(&c, &["describe", "replica", &web[0].meta.name]);
    assert!(
        describe.contains("readiness  http :8080/ready")
            && describe.contains("failure")
            && describe.contains("HTTP status 404"),
        "{describe}"
    );
    assert_eq!(exec(&c, &web[0], "touch /www/ready").0, 0);
    wait_for("the first replica ready and an endpoint", Duration::from_secs(10), || {
        let s = service(&c, "web");
        let ready: Vec<_> = s.endpoints.iter().filter(|e| e.ready).map(|e| e.replica.clone()).collect();
        (ready == [web[0].meta.name.clone()]).then_some(())
    });
    assert!(cli_ok(&c, &["get", "replicas", "--app", "web"]).contains(" 1/1 "));
    assert_eq!(exec(&c, &web[0], "rm /www/ready").0, 0);
    wait_for("the replica unready after two failures", Duration::from_secs(10), || {
        service(&c, "web").endpoints.iter().all(|e| !e.ready).then_some(())
    });
    let r = replicas(&c, "web").into_iter().find(|r| r.meta.name == web[0].meta.name).unwrap();
    assert_eq!((r.phase, r.restarts), (ReplicaPhase::Running, 0), "readiness never restarts");

    // 2. Liveness: the probe fails twice, the container is stopped and restarted, with events.
    let live = wait_for("the live replica running", Duration::from_secs(60), || {
        replicas(&c, "live").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    assert_eq!(exec(&c, &live, "rm /tmp/alive").0, 0);
    let restarted = wait_for("the unhealthy container restarted", Duration::from_secs(20), || {
        replicas(&c, "live").into_iter().find(|r| r.restarts >= 1 && r.phase == ReplicaPhase::Running)
    });
    assert_eq!(restarted.exit_code, Some(0), "it took the stop signal and exited (trap)");
    let describe = cli_ok(&c, &["describe", "replica", &live.meta.name]);
    assert!(
        describe.contains("Unhealthy") && describe.contains("liveness probe failed (exec cat /tmp/alive)"),
        "{describe}"
    );
    assert!(describe.contains("Killing") && describe.contains("killed the container 1 times"), "{describe}");
    let r = replicas(&c, "live").remove(0);
    assert!(r.serving(), "alive again (the new run made /tmp/alive): {r:?}");

    // A probe that hangs is killed at its timeout, and counts as a failure.
    let hung = wait_for("the hanging probe's container restarted", Duration::from_secs(30), || {
        replicas(&c, "hang").into_iter().find(|r| r.restarts >= 1)
    });
    let describe = cli_ok(&c, &["describe", "replica", &hung.meta.name]);
    assert!(describe.contains("liveness probe failed (exec sleep 60): timed out"), "{describe}");

    // 3. A slow starter: 6 s before it listens, a liveness probe that would kill it at its
    // first failure — but the startup probe holds it back until the port answers.
    let slow = wait_for("the slow starter ready", Duration::from_secs(60), || {
        replicas(&c, "slow").into_iter().find(|r| r.serving())
    });
    assert!(applied_at.elapsed() >= Duration::from_secs(6), "ready only once it listens");
    assert_eq!(slow.restarts, 0, "never killed while starting: {slow:?}");
    std::thread::sleep(Duration::from_secs(3));
    let slow = replicas(&c, "slow").remove(0);
    assert_eq!((slow.restarts, slow.serving()), (0, true), "the liveness probe passes once started");
    // Removed (the cluster dropped: agents stopped, then their containers), nothing of them is
    // left in the cgroup tree — not even of the container killed over and over while its probe
    // hung (libcontainer's v1 delete left the hierarchies it had not reached when one answered
    // ENODEV).
    let names: Vec<String> =
        ["web", "live", "hang", "slow"].iter().flat_map(|a| replicas(&c, a)).map(|r| r.meta.name).collect();
    drop(c);
    let cgroups = bramble_agent::runtime::cgroups::CgroupFs::host();
    let left: Vec<&String> = names.iter().filter(|n| cgroups.exists(&format!("/bramble/{n}"))).collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}
