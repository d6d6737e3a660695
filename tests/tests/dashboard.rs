//! The dashboard in a real headless browser (Debian's Chromium): the page the leader serves loads,
//! runs its script against `api/cluster`, and shows the test cluster's board (Ready, with its CPU,
//! memory and temperature figures), its app with replicas by phase, and recent events. A
//! screenshot is kept as `target/test-artifacts/dashboard.png`.

use bramble_tests::{ok, text};
use std::time::Duration;

#[test]
fn the_dashboard_shows_the_cluster_in_a_real_browser() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(chromium.exists(), "Debian's chromium package is missing (scripts/test installs it)");
    let listen = "127.0.0.1:7449".to_string();
    let (c, _registry) = bramble_tests::cluster::with_metrics_and_web(&listen, 2);
    let ns = c.lab.ns(0);
    let url = format!("http://{listen}/");
    let browser = |extra: &[&str]| {
        let profile = c.dir.path().join("chromium");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=10000", "--window-size=1280,1000"])
            .args(extra)
            .arg(&url)
            .env("HOME", c.dir.path())
            .output()
            .expect("run chromium");
        (text(&out.stdout), text(&out.stderr))
    };
    // The JSON the page reads: wait until it has the board's usage and both replicas running.
    bramble_tests::wait_for("the cluster's figures", Duration::from_secs(60), || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-sS", &format!("http://{listen}/api/cluster")])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let running = v["apps"][0]["phases"]["Running"].as_u64() == Some(2);
        let usage = !v["nodes"][0]["usage"].is_null() && v["nodes"][0]["usage"]["cpu_history"].as_array()?.len() >= 2;
        (running && usage).then_some(())
    });
    let (dom, err) = browser(&["--dump-dom"]);
    for want in
        ["data-node=\"board-1\"", ">Ready<", "data-app=\"web\"", "2 Running", "CPU ", "Memory ", "<polyline", "Created"]
    {
        assert!(dom.contains(want), "{want:?} is not on the page:\n{dom}\n{err}");
    }
    assert!(dom.contains("<span id=\"error\" class=\"bad\"></span>"), "no error shown: {dom}");
    let artifacts = bramble_tests::testimages::assets_dir().parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let (_, err) = browser(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{err}", shot.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of the page ({} bytes)", png.len());
    ok(c.cli(&["delete", "app", "web"]), "delete");
    c.remove_containers();
}
