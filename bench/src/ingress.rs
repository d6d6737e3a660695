//! The ingress proxy (issue 32, ADR 16) on a real cluster: three boards, Caddy on board-1 (the
//! leader's `[ingress]`), a busybox httpd behind a service on boards 2 and 3.
//! - requests per second and p99 latency (Apache's `ab`, 8 at a time, from board-1's namespace)
//!   to the same backend directly (a pod's address), through its VIP, and through the ingress
//!   (board-1's address, `Host:` header), alternating, same run;
//! - the proxy's memory on its board (RSS), idle and after the load;
//! - an ingress change → served through the proxy.

use crate::apps::{replicas, setup, wait};
use crate::stats::summarize;
use bramble_proto::model::ReplicaPhase;
use bramble_tests::Cluster;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

const HTTPD: &str = "mkdir -p /www && echo hello-from-the-backend > /www/index.html && exec httpd -f -p 8080 -h /www";

fn cli(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(out.status.success(), "bramble {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// One `ab` run from network namespace `ns`: (requests/s, p99 ms, failed).
fn ab(ns: &str, url: &str, host: Option<&str>, requests: u32) -> (f64, f64, u64) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ab", "-q", "-n", &requests.to_string(), "-c", "8"]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output().expect("ab (Debian's apache2-utils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "ab {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name:?} in ab's report: {text}"))
    };
    (field("Requests per second:"), field("99%"), field("Failed requests:") as u64)
}

/// The resident memory of the `caddy` processes in network namespace `ns` (the proxy runs on its
/// board's network), in MiB.
fn caddy_rss_mib(ns_path: &std::path::Path) -> f64 {
    let want = std::fs::metadata(ns_path).expect("the board's namespace").ino();
    let mut kib = 0u64;
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = e.path();
        let exe = std::fs::read_link(pid.join("exe")).unwrap_or_default();
        if exe.file_name().and_then(|n| n.to_str()) != Some("caddy") {
            continue;
        }
        if std::fs::metadata(pid.join("ns/net")).map(|m| m.ino()).ok() != Some(want) {
            continue;
        }
        let status = std::fs::read_to_string(pid.join("status")).unwrap_or_default();
        kib += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    kib as f64 / 1024.0
}

pub fn run(runs: usize) -> serde_json::Value {
    let (mut c, registry, image) = setup(3, bramble_tests::ingress::AGENT_TOML);
    let caddy = bramble_tests::ingress::push_caddy(&c, &registry);
    cli(&c, &["label", "node", "board-1", "ingress=true"]);
    for n in ["board-2", "board-3"] {
        cli(&c, &["label", "node", n, "role=server"]);
    }
    let manifest = format!(
        "[[app]]\nname = \"web\"\nimage = \"{image}\"\nreplicas = 2\ncommand = [\"/bin/sh\", \"-c\", \"{HTTPD}\"]\n\
         placement = {{ node_selector = {{ role = \"server\" }}, max_per_node = 1 }}\n\
         ports = [{{ name = \"http\", container = 8080 }}]\n\
         [[service]]\nname = \"web\"\napp = \"web\"\nports = [{{ port = 80, target = \"http\" }}]\n\
         [[ingress]]\nname = \"web\"\nhost = \"web.lan\"\nservice = \"web\"\nport = 80\n"
    );
    let path = c.write("ingress.toml", &manifest);
    cli(&c, &["apply", "-f", &path]);
    bramble_tests::ingress::run_proxy(&mut c, &format!("image = \"{caddy}\"\n"), &["board-1"]);
    let web = wait("two web replicas", Duration::from_secs(120), || {
        let r = replicas(&c, "web");
        (r.len() == 2 && r.iter().all(|r| r.phase == ReplicaPhase::Running && r.ip.is_some())).then_some(r)
    });
    let services: Vec<bramble_proto::model::Service> =
        serde_json::from_str(&cli(&c, &["get", "services", "-o", "json"])).expect("services");
    let vip = services.iter().find(|s| s.meta.name == "web").and_then(|s| s.vip).expect("web's VIP");
    let (ns, board1) = (c.lab.ns(1), c.lab.addr(1));
    let pod = web[0].ip.expect("a pod address");
    let ingress_url = format!("http://{board1}/");
    wait("the ingress serves web.lan", Duration::from_secs(30), || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-sf", "--max-time", "2", "-H", "Host: web.lan", &ingress_url])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).contains("hello-from-the-backend").then_some(())
    });
    let idle = caddy_rss_mib(&c.lab.ns_path(1));

    // Direct, VIP and ingress, alternating: the median of three runs of each.
    let targets = [
        ("direct", format!("http://{pod}:8080/"), None),
        ("vip", format!("http://{vip}/"), None),
        ("ingress", ingress_url.clone(), Some("web.lan")),
    ];
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 3];
    let mut failed = 0;
    for _ in 0..3 {
        for (k, (_, url, host)) in targets.iter().enumerate() {
            let (rps, p99, f) = ab(&ns, url, *host, 3_000);
            results[k].push((rps, p99));
            failed += f;
        }
    }
    let loaded = caddy_rss_mib(&c.lab.ns_path(1));
    let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let mut out = serde_json::Map::new();
    println!(
        "HTTP/1.0 through the ingress vs the same backend (busybox httpd, 2 replicas), ab -c 8, median of 3 x 3,000:"
    );
    let direct = median(&results[0], |r| r.0);
    for (k, (name, _, _)) in targets.iter().enumerate() {
        let (rps, p99) = (median(&results[k], |r| r.0), median(&results[k], |r| r.1));
        println!("  {name:<8} {rps:>8.0} req/s  p99 {p99:>4.0} ms  ({:.2} of direct)", rps / direct);
        out.insert(name.to_string(), serde_json::json!({ "rps": rps, "p99_ms": p99, "of_direct": rps / direct }));
    }
    println!("  failed requests: {failed}");
    println!("the proxy's memory on its board (RSS, Caddy 2.6.2): idle {idle:.1} MiB, after the load {loaded:.1} MiB");
    out.insert("failed".into(), failed.into());
    out.insert("proxy_rss_mib".into(), serde_json::json!({ "idle": idle, "after_load": loaded }));

    // An ingress change -> served: a new path each run (to a service of an app that does not
    // exist, so that its answer tells it from the old route's), polled from the board.
    let mut served = Vec::new();
    for i in 0..runs {
        let text = format!(
            "[[service]]\nname = \"alt{i}\"\napp = \"none\"\nports = [{{ port = 81 }}]\n\
             [[ingress]]\nname = \"web\"\nhost = \"web.lan\"\n\
             [[ingress.paths]]\npath = \"/\"\nservice = \"web\"\nport = 80\n\
             [[ingress.paths]]\npath = \"/run{i}\"\nmatch = \"exact\"\nservice = \"alt{i}\"\nport = 81\n"
        );
        let path = c.write("change.toml", &text);
        let url = format!("http://{board1}/run{i}");
        let t = Instant::now();
        cli(&c, &["apply", "-f", &path]);
        wait("the new path served", Duration::from_secs(30), || {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"])
                .args(["-H", "Host: web.lan", &url])
                .output()
                .ok()?;
            // Before the change, /runN falls under "/" and web's httpd answers 404; after it, the
            // proxy sends it to a service with no endpoints and answers 502.
            (String::from_utf8_lossy(&out.stdout) == "502").then_some(())
        });
        served.push(t.elapsed());
    }
    let s = summarize(&served);
    println!(
        "ingress change -> served through the proxy ({} runs): median {:.0} ms, p95 {:.0} ms, min {:.0} ms",
        s.runs, s.median, s.p95, s.min
    );
    out.insert("change_to_served".into(), s.json());
    serde_json::Value::Object(out)
}
