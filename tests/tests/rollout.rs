//! Rollouts end to end, under load, all real: three boards, a web app of three replicas behind a
//! service, a load generator on a board sending requests through the virtual IP — new
//! connections and keep-alive connections — while a new image rolls out: not one request fails.
//! Then an image whose readiness never passes: the rollout stays within its limits, the old
//! replicas keep serving, `rollout status` fails after the (short) deadline and the app is rolled
//! back; `rollout history`, `undo` and `restart`.

use bramble_proto::model::{Replica, RevisionRecord, RolloutState, Service};
use bramble_tests::load::{load, web_app, Stats};
use bramble_tests::testimages::push_from;
use bramble_tests::{wait_for, Cluster};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cli_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn replicas(c: &Cluster) -> Vec<Replica> {
    serde_json::from_str(&cli_ok(c, &["get", "replicas", "--app", "web", "-o", "json"])).expect("replicas parse")
}

fn service(c: &Cluster) -> Service {
    let all: Vec<Service> =
        serde_json::from_str(&cli_ok(c, &["get", "services", "-o", "json"])).expect("services parse");
    all.into_iter().find(|s| s.meta.name == "web").expect("service web")
}

fn history(c: &Cluster) -> Vec<RevisionRecord> {
    serde_json::from_str(&cli_ok(c, &["rollout", "history", "app/web", "-o", "json"])).expect("history parse")
}

/// The web app at `version`, with a readiness probe and a short progress deadline; `extra` goes
/// after its port.
fn manifest(image: &str, version: &str, extra: &str) -> String {
    let probe = "[app.probes.readiness]\nhttp = { port = \"http\", path = \"/\" }\nperiod = \"1s\"\n";
    web_app("web", image, 3, version, "update = { progress_deadline = \"20s\" }", &format!("{extra}\n{probe}"))
}

fn apply(c: &Cluster, text: &str) {
    let path = c.dir.path().join("web.toml");
    std::fs::write(&path, text).unwrap();
    cli_ok(c, &["apply", "-f", path.to_str().unwrap()]);
}

#[test]
fn a_rollout_under_load_drops_nothing_and_a_bad_one_is_rolled_back() {
    let (c, registry, v1) = bramble_tests::cluster::with_busybox(3, "");
    let v2 = format!("{}/bramble/busybox:2", registry.addr);
    push_from(Some(&c.lab.ns(0)), &c.dir.path().join("layout"), "1", &v2);

    apply(&c, &manifest(&v1, "1", ""));
    let out = c.cli(&["rollout", "status", "app/web", "--timeout", "90s"]);
    assert!(out.status.success(), "the first revision rolls out: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revision 1 rolled out"));
    wait_for("three ready endpoints", Duration::from_secs(20), || {
        (service(&c).endpoints.iter().filter(|e| e.ready).count() == 3).then_some(())
    });
    let vip = service(&c).vip.expect("a VIP");

    // 0. Before applying: `diff` says what would change (exit 1) or that nothing would (exit 0),
    // and `apply --dry-run` shows each replica replaced on its board, storing nothing.
    let next = c.dir.path().join("next.toml");
    std::fs::write(&next, manifest(&v2, "2", "")).unwrap();
    let same = c.dir.path().join("same.toml");
    std::fs::write(&same, manifest(&v1, "1", "")).unwrap();
    let out = c.cli(&["diff", "-f", same.to_str().unwrap()]);
    assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 0), "nothing would change");
    let out = c.cli(&["diff", "-f", next.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "something would change: {said}");
    assert!(said.starts_with("--- app/web (stored)\n+++ app/web (new)\n@@ "), "{said}");
    assert!(said.contains(&format!("\n-image = \"{v1}\"\n+image = \"{v2}\"\n")), "{said}");
    assert!(said.contains("\n-VERSION = \"1\"\n+VERSION = \"2\"\n"), "{said}");
    assert!(!said.contains("service/web"), "the service would not change: {said}");
    let before = (replicas(&c), history(&c), cli_ok(&c, &["get", "apps", "-o", "json"]));
    let plan = cli_ok(&c, &["apply", "--dry-run", "-f", next.to_str().unwrap()]);
    assert!(plan.contains(&format!("app/web configured (revision 2: apply: image {v1} -> {v2})")), "{plan}");
    for r in &before.0 {
        let line = format!("~ replace {:<20} on {}", r.meta.name, r.node.as_deref().unwrap());
        assert!(plan.contains(&line), "{line:?} in {plan}");
    }
    assert!(plan.contains("service/web unchanged") && plan.contains("dry run: nothing was stored"), "{plan}");
    let json: bramble_proto::wire::ApplyPlan =
        serde_json::from_str(&cli_ok(&c, &["apply", "--dry-run", "-o", "json", "-f", next.to_str().unwrap()])).unwrap();
    assert_eq!(json.apps[0].changes.len(), 3, "{json:?}");
    let after = (replicas(&c), history(&c), cli_ok(&c, &["get", "apps", "-o", "json"]));
    assert_eq!(after.1, before.1, "a dry run records no revision");
    assert_eq!(after.2, before.2, "a dry run stores no spec");
    let names = |rs: &[Replica]| rs.iter().map(|r| r.meta.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after.0), names(&before.0), "a dry run starts and stops nothing");

    // 1. A new image under load: not one request fails.
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(c.lab.ns_path(1), SocketAddr::from((vip, 80)), stop.clone(), stats.clone());
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    apply(&c, &manifest(&v2, "2", ""));
    let out = c.cli(&["rollout", "status", "app/web", "--timeout", "120s"]);
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "rollout status: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("revision 2 rolled out (3 of 3 replicas available)"), "{said}");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let (ok, failed) = (stats.ok.load(Ordering::SeqCst), stats.failed.load(Ordering::SeqCst));
    eprintln!(
        "rollout under load: {took:?}; {ok} requests answered, {failed} failed, {} keep-alive reuses, {} resent after an idle close",
        stats.reused.load(Ordering::SeqCst),
        stats.retried.load(Ordering::SeqCst)
    );
    assert_eq!(failed, 0, "no request fails during the rollout: {:?}", stats.failures.lock().unwrap());
    assert!(ok > 200, "the load really ran: {ok}");
    assert!(stats.reused.load(Ordering::SeqCst) > 50, "keep-alive connections were kept");
    assert_eq!(*stats.versions.lock().unwrap(), ["v1", "v2"].map(String::from).into(), "both versions answered");
    assert!(replicas(&c).iter().all(|r| r.serving() && r.revision_hash == replicas(&c)[0].revision_hash));
    // Each old replica left the service, and was stopped only once every board had applied that.
    let events = cli_ok(&c, &["events"]);
    let drained = events.matches("deleted after leaving its services (every board stopped sending to it)").count();
    assert_eq!(drained, 3, "{events}");
    assert!(!events.contains("not every board confirmed in time"), "{events}");

    // 2. An image whose readiness never passes (its probe asks a port nothing listens on): the
    // rollout adds one replica (max_surge 1), the old ones keep serving, `rollout status` fails
    // after the 20 s deadline, and the app goes back to revision 2.
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = load(c.lab.ns_path(2), SocketAddr::from((vip, 80)), stop.clone(), stats.clone());
    let bad = manifest(&v1, "3", "[[app.ports]]\nname = \"never\"\ncontainer = 9999\n")
        .replace("http = { port = \"http\", path = \"/\" }", "tcp = { port = \"never\" }");
    apply(&c, &bad);
    let mut most = 0;
    let out = std::thread::scope(|s| {
        let status = s.spawn(|| c.cli(&["rollout", "status", "app/web", "--timeout", "120s"]));
        while !status.is_finished() {
            most = most.max(replicas(&c).len());
            std::thread::sleep(Duration::from_millis(300));
        }
        status.join().unwrap()
    });
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "a failed rollout fails the pipeline: {said}");
    assert!(
        said.contains("revision 3 was rolled back: no progress for 20s") && said.contains("rolled back to revision 2"),
        "{said}"
    );
    assert!(most <= 4, "never more than one above the count: {most}");
    let h = history(&c);
    assert_eq!(
        h.iter().map(|r| r.state).collect::<Vec<_>>()[..3],
        [RolloutState::Complete, RolloutState::Complete, RolloutState::RolledBack]
    );
    assert_eq!(h[3].cause, "rollback of revision 3 to revision 2");
    let out = c.cli(&["rollout", "status", "app/web", "--timeout", "60s"]);
    assert!(out.status.success(), "the rollback completes: {}", String::from_utf8_lossy(&out.stdout));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        stats.failed.load(Ordering::SeqCst),
        0,
        "the old replicas served throughout: {:?}",
        stats.failures.lock().unwrap()
    );
    assert!(stats.versions.lock().unwrap().iter().all(|v| v == "v2"), "only the good version ever answered");
    let describe = cli_ok(&c, &["describe", "app", "web"]);
    assert!(describe.contains("RolledBack") || describe.contains("Rollout:     revision 4"), "{describe}");

    // 3. History, undo to revision 1, restart.
    let table = cli_ok(&c, &["rollout", "history", "app/web"]);
    assert!(table.starts_with("REVISION") && table.contains("RolledBack") && table.contains("apply: image"), "{table}");
    let undo = cli_ok(&c, &["rollout", "undo", "app/web", "--to-revision", "1"]);
    assert!(undo.contains("rolled back to revision 1 (as revision 5)"), "{undo}");
    let out = c.cli(&["rollout", "status", "app/web", "--timeout", "90s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(replicas(&c).iter().all(|r| r.serving()));
    let apps: Vec<bramble_proto::model::App> =
        serde_json::from_str(&cli_ok(&c, &["get", "apps", "-o", "json"])).unwrap();
    let spec = &apps[0].spec;
    let version = spec.env.iter().find(|(k, _)| k.0 == "VERSION").map(|(_, v)| v.as_str());
    assert_eq!((spec.image.to_string(), version), (v1.clone(), Some("1")), "revision 1's template");
    let before: Vec<String> = replicas(&c).iter().map(|r| r.meta.name.clone()).collect();
    assert!(cli_ok(&c, &["rollout", "restart", "app/web"]).contains("restarting (revision 6)"));
    let out = c.cli(&["rollout", "status", "app/web", "--timeout", "90s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let after = replicas(&c);
    assert!(after.iter().all(|r| !before.contains(&r.meta.name)), "every replica replaced by the restart");
    let bad_undo = c.cli(&["rollout", "undo", "app/web", "--to-revision", "42"]);
    assert_eq!(bad_undo.status.code(), Some(4), "an unknown revision");
    assert!(String::from_utf8_lossy(&bad_undo.stderr).contains("app web has no revision 42 (kept: 1 to 6)"));

    // 4. exec: output streams and the exit code, standard input, a terminal, bad targets.
    let name = after[0].meta.name.clone();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    let out = c.cli(&["exec", &name, "--", "sh", "-c", "echo out $VERSION; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "the command's exit code: {}", text(&out.stderr));
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("out 1\n".into(), "err\n".into()), "as the container runs");
    let out =
        c.cli_input(&["exec", "app/web", "-i", "--", "sh", "-c", "read x; echo \"got $x\"; cat"], b"hello\nrest\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got hello\nrest\n");
    let out = c.cli(&["exec", &name, "-t", "--", "sh", "-c", "tty; stty size"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.starts_with("/dev/pts/") && said.contains("24 80\r\n"), "a terminal of the default size: {said:?}");
    let out = c.cli_input(&["exec", &name, "-it", "--", "sh"], b"echo $((6*7))\nexit 5\n");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("42\r\n"), "an interactive shell answered: {:?}", text(&out.stdout));
    let out = c.cli(&["exec", "web-nothing", "--", "true"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("replica \"web-nothing\" not found"), "{}", text(&out.stderr));
    let out = c.cli(&["exec", &name, "--", "/no/such/program"]);
    assert_ne!(out.status.code(), Some(0), "a command that cannot run fails");
    assert!(!text(&out.stderr).is_empty(), "and says why");

    // 5. The CI/CD example: build a tagged image, push it, diff, apply, wait; again: nothing to do.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci/deploy.sh");
    let deploy = |tag: &str| {
        let path = format!("{}:{}", c.bins.display(), std::env::var("PATH").unwrap_or_default());
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &c.lab.ns(0), "env"])
            .arg(format!("BRAMBLE_CONFIG={}", c.leader_dir().join("admin.toml").display()))
            .arg(format!("REGISTRY={}", registry.addr))
            .arg(format!("PATH={path}"))
            .args(["TIMEOUT=90s", script.to_str().unwrap(), tag])
            .output()
            .expect("run examples/ci/deploy.sh");
        (out.status.code(), text(&out.stdout) + &text(&out.stderr))
    };
    let (code, said) = deploy("v7");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("+++ app/ci-hello (new)") && said.contains("revision 1 rolled out"), "{said}");
    let out = c.cli(&["exec", "app/ci-hello", "--", "wget", "-qO-", "http://127.0.0.1:8080/"]);
    assert_eq!(text(&out.stdout), "ci-hello v7\n", "the new build serves: {}", text(&out.stderr));
    let (code, said) = deploy("v7");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("nothing to deploy"), "{said}");
    c.remove_containers();
}
