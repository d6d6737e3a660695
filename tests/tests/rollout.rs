//! Rollouts end to end, under load, all real: three boards, a web app of three replicas behind a
//! service, a load generator on a board sending requests through the virtual IP — new
//! connections and keep-alive connections — while a new image rolls out: not one request fails.
//! Then an image whose readiness never passes: the rollout stays within its limits, the old
//! replicas keep serving, `rollout status` fails after the (short) deadline and the app is rolled
//! back; `rollout history`, `undo` and `restart`.

use bramble_proto::model::{Replica, RevisionRecord, RolloutState, Service};
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layout, push_from};
use bramble_tests::{wait_for, Cluster, ClusterOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// An HTTP/1.1 server in busybox sh behind `nc -ll`: one handler per connection, answering
/// requests on it until the client closes (keep-alive) or asks to close.
const HANDLER: &str = r#"#!/bin/sh
CR=$(printf '\r')
close=
while read -r line; do
  case "$line" in *HTTP/1.0*) close=1;; esac
  while read -r h; do
    case "$h" in "$CR"|"") break;; [Cc]onnection:*[Cc]lose*) close=1;; esac
  done
  body="$(hostname) v$VERSION"
  if [ -n "$close" ]; then
    printf 'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' ${#body} "$body"
    exit 0
  fi
  printf 'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' ${#body} "$body"
done
"#;

/// Serves with the handler; on the stop signal it stops listening and exits at once (no grace
/// of its own: not dropping requests is Bramble's part).
const RUN: &str = "echo \"$HANDLER\" > /h.sh; chmod +x /h.sh; nc -ll -p 8080 -e /h.sh & pid=$!; \
                   trap 'kill $pid; exit 0' TERM; wait $pid";

fn manifest(image: &str, version: &str, extra: &str) -> String {
    format!(
        r#"[[app]]
name = "web"
image = "{image}"
replicas = 3
command = ["/bin/sh", "-c", "{run}"]
env = {{ VERSION = "{version}", HANDLER = '''{HANDLER}''' }}
stop_grace = "5s"
update = {{ progress_deadline = "20s" }}
[[app.ports]]
name = "http"
container = 8080
{extra}
[app.probes.readiness]
http = {{ port = "http", path = "/" }}
period = "1s"

[[service]]
name = "web"
app = "web"
ports = [{{ port = 80, target = "http" }}]
"#,
        run = RUN.replace('"', "\\\"")
    )
}

/// What the load generator saw.
#[derive(Debug, Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Requests sent again on a new connection because the server had closed the reused one
    /// before answering (what HTTP clients do for idempotent requests).
    retried: AtomicU64,
    reused: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Bodies seen: which versions answered.
    versions: Mutex<std::collections::BTreeSet<String>>,
}

impl Stats {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(why);
        }
    }
    fn ok(&self, body: &str) {
        self.ok.fetch_add(1, Ordering::SeqCst);
        if let Some(v) = body.split_whitespace().nth(1) {
            self.versions.lock().unwrap().insert(v.to_string());
        }
    }
}

/// Reads one response (status line, headers, `Content-Length` body). `Ok(None)`: the connection
/// closed before a single byte of it.
fn read_response(s: &mut TcpStream) -> std::io::Result<Option<(u16, String, bool)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed inside the headers")),
            Ok(_) => buf.push(byte[0]),
            Err(e) if buf.is_empty() && e.kind() == ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let close = head.to_ascii_lowercase().contains("connection: close");
    Ok(Some((status, String::from_utf8_lossy(&body).to_string(), close)))
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    Ok(s)
}

/// A client that opens a connection for every request.
fn new_connections(addr: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    while !stop.load(Ordering::SeqCst) {
        let r = connect(addr).and_then(|mut s| {
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")?;
            read_response(&mut s)
        });
        match r {
            Ok(Some((200, body, _))) => stats.ok(&body),
            Ok(Some((code, body, _))) => stats.fail(format!("new connection: HTTP {code} {body}")),
            Ok(None) => stats.fail("new connection: closed without an answer".into()),
            Err(e) => stats.fail(format!("new connection: {e}")),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client that keeps its connection open between requests, as browsers and HTTP libraries do.
fn keep_alive(addr: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reused = conn.is_some();
            let mut s = match conn.take() {
                Some(s) => s,
                None => match connect(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        stats.fail(format!("keep-alive connect: {e}"));
                        break;
                    }
                },
            };
            if reused {
                stats.reused.fetch_add(1, Ordering::SeqCst);
            }
            let r = s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").and_then(|_| read_response(&mut s));
            match r {
                Ok(Some((200, body, close))) => {
                    stats.ok(&body);
                    if !close {
                        conn = Some(s);
                    }
                    break;
                }
                Ok(Some((code, body, _))) => {
                    stats.fail(format!("keep-alive: HTTP {code} {body}"));
                    break;
                }
                // The server closed the idle connection before this request reached it: send it
                // again on a new one (once).
                Ok(None) | Err(_) if reused && attempt == 1 => {
                    stats.retried.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Ok(None) => {
                    stats.fail("keep-alive: closed without an answer on a new connection".into());
                    break;
                }
                Err(e) => {
                    stats.fail(format!("keep-alive (reused: {reused}): {e}"));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the load from board `ns` to `addr`: two clients of each kind.
fn load(ns: PathBuf, addr: SocketAddr, stop: Arc<AtomicBool>, stats: Arc<Stats>) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|i| {
            let (ns, stop, stats) = (ns.clone(), stop.clone(), stats.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open(&ns).expect("the board's namespace");
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                if i % 2 == 0 {
                    new_connections(addr, stop, stats)
                } else {
                    keep_alive(addr, stop, stats)
                }
            })
        })
        .collect()
}

fn apply(c: &Cluster, text: &str) {
    let path = c.dir.path().join("web.toml");
    std::fs::write(&path, text).unwrap();
    cli_ok(c, &["apply", "-f", path.to_str().unwrap()]);
}

#[test]
fn a_rollout_under_load_drops_nothing_and_a_bad_one_is_rolled_back() {
    let c = Cluster::start_with(ClusterOptions::default(), |lab| {
        format!("[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0))
    });
    let registry = Registry::start_in_netns(&c.lab.ns(0), &c.lab.addr(0));
    let layout = tempfile::tempdir().unwrap();
    busybox_layout(layout.path(), "1");
    let v1 = format!("{}/bramble/busybox:1", registry.addr);
    let v2 = format!("{}/bramble/busybox:2", registry.addr);
    push_from(Some(&c.lab.ns(0)), layout.path(), "1", &v1);
    push_from(Some(&c.lab.ns(0)), layout.path(), "1", &v2);

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
    c.remove_containers();
}
