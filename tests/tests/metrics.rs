//! `/metrics` scraped by a real Prometheus (Debian's package): the leader serves OpenMetrics text
//! on the address leader.toml names; Prometheus, in the leader's namespace, scrapes it every second
//! and answers queries through its HTTP API with the nodes' readiness, a replica's CPU and the
//! controller's pass histogram.

use bramble_tests::process::Proc;
use bramble_tests::{ok, text};
use nix::sys::signal::Signal;
use std::time::Duration;

/// GET `url` from inside network namespace `ns`.
fn get(ns: &str, url: &str) -> String {
    let out =
        std::process::Command::new("ip").args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5", url]).output();
    out.map(|o| text(&o.stdout)).unwrap_or_default()
}

/// The shipped alert rules fire on the series they should and stay quiet otherwise (promtool's
/// unit tests, `dist/prometheus/bramble-alerts.test.yml`).
#[test]
fn the_shipped_alert_rules_pass_their_unit_tests() {
    let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/prometheus");
    let out = std::process::Command::new("promtool")
        .current_dir(dist)
        .args(["test", "rules", "bramble-alerts.test.yml"])
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    assert!(out.status.success(), "promtool test rules: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("SUCCESS"));
}

#[test]
fn prometheus_scrapes_the_leader_and_answers_queries() {
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(prometheus.exists(), "Debian's prometheus package is missing (scripts/test installs it)");
    let listen = "127.0.0.1:7449".to_string();
    let (c, _registry) = bramble_tests::cluster::with_metrics_and_web(&listen, 2);
    let ns = c.lab.ns(0);

    // The text itself: OpenMetrics, with our names.
    let body = bramble_tests::wait_for("/metrics with the replicas' usage", Duration::from_secs(60), || {
        let b = get(&ns, &format!("http://{listen}/metrics"));
        b.contains("bramble_replica_cpu_usage_cores{").then_some(b)
    });
    for want in [
        "# TYPE bramble_node_ready gauge",
        "bramble_node_ready{node=\"board-1\"} 1",
        "bramble_replicas{app=\"web\",phase=\"Running\"} 2",
        "# TYPE bramble_controller_pass_duration_seconds histogram",
        "# TYPE bramble_controller_passes_skipped counter",
        "\nbramble_store_size_bytes ",
        "\nbramble_sessions 1.0\n",
        "# EOF",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }
    assert!(get(&ns, &format!("http://{listen}/nope")).contains("served here: / (the dashboard)"));

    // A real Prometheus scrapes it with the shipped config and alert rules, and answers a query.
    let dist = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/prometheus");
    let rules = c.dir.path().join("bramble-alerts.yml");
    std::fs::copy(format!("{dist}/bramble-alerts.yml"), &rules).unwrap();
    let shipped = std::fs::read_to_string(format!("{dist}/prometheus.yml")).unwrap();
    for want in ["/etc/prometheus/bramble-alerts.yml", "'127.0.0.1:7449'", "scrape_interval: 15s"] {
        assert!(shipped.contains(want), "{want} in the shipped prometheus.yml");
    }
    let config = c.dir.path().join("prometheus.yml");
    let mine = shipped
        .replace("/etc/prometheus/bramble-alerts.yml", rules.to_str().unwrap())
        .replace("'127.0.0.1:7449'", &format!("'{listen}'"))
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    std::fs::write(&config, mine).unwrap();
    let check = std::process::Command::new("promtool").arg("check").arg("config").arg(&config).output().unwrap();
    assert!(check.status.success(), "promtool check config: {}{}", text(&check.stdout), text(&check.stderr));
    let args: Vec<String> = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", c.dir.path().join("tsdb").display()),
        "--web.listen-address=127.0.0.1:9090".into(),
    ];
    let mut prom = Proc::spawn("prometheus", &ns, prometheus, &args, &c.dir.path().join("prometheus.log"));
    let query = |q: &str| get(&ns, &format!("http://127.0.0.1:9090/api/v1/query?query={q}"));
    let ready = bramble_tests::wait_for("Prometheus to have scraped the leader", Duration::from_secs(60), || {
        let r = query("bramble_node_ready");
        r.contains("\"board-1\"").then_some(r)
    });
    assert!(ready.contains("\"status\":\"success\"") && ready.contains("\"1\"]"), "{ready}");
    let running = query("sum(bramble_replicas%7Bphase%3D%22Running%22%7D)");
    assert!(running.contains("\"2\"]"), "{running}");
    let loaded = get(&ns, "http://127.0.0.1:9090/api/v1/rules");
    for alert in
        ["BrambleNodeNotReady", "BrambleReplicaCrashLooping", "BrambleBackupFailing", "BrambleCertificateExpiring"]
    {
        assert!(loaded.contains(alert), "{alert} loaded by Prometheus: {loaded}");
    }
    for series in [
        "bramble_node_network_unavailable",
        "bramble_replica_restarts",
        "bramble_node_certificate_expiry_timestamp_seconds",
    ] {
        let r = query(series);
        assert!(r.contains("\"board-1\"") || r.contains("\"web\""), "{series}: {r}");
    }
    let passes = query("bramble_controller_pass_duration_seconds_count");
    assert!(passes.contains("\"status\":\"success\"") && passes.contains("bramble"), "{passes}");
    prom.stop(Signal::SIGTERM);
    ok(c.cli(&["delete", "app", "web"]), "delete");
    c.remove_containers();
}
