//! Images shared by the boards: three boards in namespaces pull a multi-layer image from a
//! registry whose every sent byte the test counts (an nft counter on its namespace's output). A
//! rollout to three boards at once crosses that link once per layer (the first board fetches, the
//! others wait and copy from it); with the registry gone, a new replica starts from a peer; a peer
//! whose copy is corrupt is caught by the digest and passed over. Boards with `[images] peers =
//! false` each pull from the registry and ask no peer.

use bramble_proto::model::ReplicaPhase;
use bramble_tests::registry::Registry;
use bramble_tests::testimages::{busybox_layer, Layout, TarBuilder};
use bramble_tests::{ok, wait_for, Cluster, ClusterOptions};
use std::process::Command;
use std::time::Duration;

fn nft(ns: &str, script: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "nft", "-j"]).args(script.split(' ')).output().unwrap();
    assert!(out.status.success(), "nft {script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes the registry's port sent since the counter was made.
fn sent(ns: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&nft(ns, "list table inet bramble_test_count")).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["bytes"].as_u64())
        .sum()
}

fn running_on(c: &Cluster, app: &str) -> Vec<String> {
    let mut v: Vec<String> =
        c.replicas_of(app).into_iter().filter(|r| r.phase == ReplicaPhase::Running).filter_map(|r| r.node).collect();
    v.sort();
    v
}

fn app(name: &str, image: &str, replicas: usize, selector: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\nreplicas = {replicas}\n\
         command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
         [app.placement]\nmax_per_node = 1\n{selector}"
    )
}

/// busybox and one layer of 3 MiB of noise (`seed`), pushed to `registry` (in namespace `ns`) as
/// `bramble/<name>:1`; the image's reference and the size of all its blobs.
fn push_image(c: &Cluster, ns: &str, registry: &Registry, name: &str, seed: u64) -> (String, u64) {
    let layout = c.dir.path().join(name);
    let l = Layout::new(&layout);
    let layers = vec![
        busybox_layer("amd64"),
        TarBuilder::default().file("a", 0o644, &bramble_tests::testimages::noise(seed, 3 << 20)).finish(),
    ];
    let m = l.image("amd64", None, &layers, &["sh"]);
    l.finish("1", vec![m], false);
    let size: u64 =
        std::fs::read_dir(layout.join("blobs/sha256")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    let image = format!("{}/bramble/{name}:1", registry.addr);
    bramble_tests::testimages::push_from(Some(ns), &layout, "1", &image);
    (image, size)
}

#[test]
fn a_rollout_crosses_the_uplink_once_per_layer_and_boards_serve_each_other() {
    let c = Cluster::start_with(ClusterOptions { agents: 3, ..Default::default() }, |lab| {
        format!("[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0))
    });
    let ns = c.lab.ns(0);
    let mut registry = Some(Registry::start_in_netns(&ns, &c.lab.addr(0)));
    let addr = registry.as_ref().unwrap().addr.clone();
    // busybox and two layers of 3 MiB of noise.
    let layout = c.dir.path().join("multi");
    let l = Layout::new(&layout);
    let layers = vec![
        busybox_layer("amd64"),
        TarBuilder::default().file("a", 0o644, &bramble_tests::testimages::noise(1, 3 << 20)).finish(),
        TarBuilder::default().file("b", 0o644, &bramble_tests::testimages::noise(2, 3 << 20)).finish(),
    ];
    let m = l.image("amd64", None, &layers, &["sh"]);
    l.finish("1", vec![m], false);
    // Every blob of the image, as the registry will hold it.
    let size: u64 =
        std::fs::read_dir(layout.join("blobs/sha256")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    let image = format!("{addr}/bramble/multi:1");
    bramble_tests::testimages::push_from(Some(&ns), &layout, "1", &image);
    nft(&ns, "add table inet bramble_test_count");
    nft(&ns, "add chain inet bramble_test_count out { type filter hook output priority 0 ; }");
    nft(&ns, "add rule inet bramble_test_count out tcp sport 5000 counter");
    assert_eq!(sent(&ns), 0);

    // Three boards at once: one fetches, the others copy from it.
    ok(c.cli(&["apply", "-f", &c.write("multi.toml", &app("multi", &image, 3, ""))]), "apply");
    wait_for("three replicas running", Duration::from_secs(120), || (running_on(&c, "multi").len() == 3).then_some(()));
    let crossed = sent(&ns);
    eprintln!("image {size} bytes; the registry sent {crossed} bytes for three boards");
    assert!(crossed > size, "the image crossed at least once: {crossed}");
    assert!(crossed < size + size / 2, "it crossed once, not three times: {crossed} bytes for {size}");
    let events = ok(c.cli(&["events"]), "events");
    assert!(events.contains("layers from peer board-"), "{events}");
    assert!(events.contains(&format!("from registry {addr}")), "{events}");

    // Two boards hold it when the registry goes; the third's copy of the biggest layer is corrupt.
    ok(c.cli(&["delete", "app", "multi"]), "delete");
    for (i, label) in [(1, "one=1"), (2, "two=1"), (3, "three=1")] {
        ok(c.cli(&["label", "node", &Cluster::node_name(i), label]), "label");
    }
    let big = bramble_images::Digest::of(&bramble_tests::testimages::gzip(&layers[1]));
    let gz = std::fs::read_dir(c.agent_dir(1).join("images/blobs/sha256")).unwrap().count();
    assert!(gz >= 4, "board-1 holds the image's blobs");
    // Board-1's copy of one layer is now corrupt (a byte flipped on its disk).
    let p = c.agent_dir(1).join("images/blobs/sha256").join(big.hex());
    let mut b = std::fs::read(&p).unwrap();
    b[100] ^= 0xff;
    std::fs::write(&p, b).unwrap();
    // Board-2 forgets it, and the registry goes away.
    wait_for("board-2's copy removed once its replica has stopped", Duration::from_secs(60), || {
        c.cli(&["image", "rm", &image, "--node", "board-2"]).status.success().then_some(())
    });
    drop(registry.take());
    let before = sent(&ns);
    ok(
        c.cli(&["apply", "-f", &c.write("again.toml", &app("again", &image, 1, "node_selector = { two = \"1\" }\n"))]),
        "apply",
    );
    wait_for("again running on board-2 from its peers", Duration::from_secs(120), || {
        (running_on(&c, "again") == ["board-2"]).then_some(())
    });
    // (A closed connection's RST is 40 bytes: no image byte came from the registry.)
    assert!(sent(&ns) - before < 1000, "the registry is gone: nothing came from it ({} bytes)", sent(&ns) - before);
    // What board-2 stored matches its digest: the corrupt copy never landed.
    let stored = std::fs::read(c.agent_dir(2).join("images/blobs/sha256").join(big.hex())).unwrap();
    assert_eq!(bramble_images::Digest::of(&stored), big);
    let events = ok(c.cli(&["events"]), "events");
    eprintln!("{}", events.lines().filter(|l| l.contains("pulled")).collect::<Vec<_>>().join("\n"));
    // Board-1 (the first by name) was asked first: its corrupt copy was refused, and the next
    // try took that layer from board-3.
    let log = std::fs::read_to_string(c.dir.path().join("agent-2.log")).unwrap_or_default();
    assert!(log.contains("board board-1 sent a copy that does not match"), "{log}");
    assert!(events.contains("1 layer from peer board-3"), "the good copy came from board-3: {events}");
}

#[test]
fn the_leaders_mirror_fetches_once_for_boards_that_cannot_reach_the_registry() {
    let c = Cluster::start_with(
        ClusterOptions {
            agents: 2,
            leader_toml_edits: vec![(
                "# [mirror]\n# upstreams = [\"docker.io\"]".to_string(),
                "[mirror]\nupstreams = [\"@LEADER_ADDR@:5000\"]\nmax_size = \"64Mi\"".to_string(),
            )],
            ..Default::default()
        },
        |_| String::new(),
    );
    let (ns, ip) = (c.lab.ns(0), c.lab.addr(0));
    let registry = Registry::start_in_netns(&ns, &ip);
    let (image, size) = push_image(&c, &ns, &registry, "multi", 3);
    // Only the leader (its own address) reaches the registry: the boards' packets are dropped.
    nft(&ns, "add table inet bramble_test_count");
    nft(&ns, "add chain inet bramble_test_count in { type filter hook input priority 0 ; }");
    nft(&ns, &format!("add rule inet bramble_test_count in tcp dport 5000 ip saddr != {ip} reject with tcp reset"));
    nft(&ns, "add chain inet bramble_test_count out { type filter hook output priority 0 ; }");
    nft(&ns, "add rule inet bramble_test_count out tcp sport 5000 counter");
    // Plain HTTP for the mirror's fetches and the boards' tries.
    let reg = format!("[[registry]]\nname = \"lan\"\nhost = \"{}\"\ninsecure = true\n", registry.addr);
    ok(c.cli(&["apply", "-f", &c.write("reg.toml", &reg)]), "apply registry");

    ok(c.cli(&["apply", "-f", &c.write("multi.toml", &app("multi", &image, 2, ""))]), "apply");
    wait_for("both replicas running from the mirror", Duration::from_secs(180), || {
        (running_on(&c, "multi").len() == 2).then_some(())
    });
    let crossed = sent(&ns);
    eprintln!("image {size} bytes; the registry sent {crossed} bytes");
    assert!(crossed > size && crossed < size + size / 2, "once through the mirror: {crossed} bytes for {size}");
    let events = ok(c.cli(&["events"]), "events");
    assert!(events.contains("from the leader's mirror"), "{events}");
    let cache = c.leader_dir().join("mirror/blobs/sha256");
    assert!(std::fs::read_dir(&cache).unwrap().count() >= 4, "the mirror keeps the image's blobs");
}

#[test]
fn boards_that_opt_out_each_pull_from_the_registry_and_ask_no_peer() {
    let c = Cluster::start_with(ClusterOptions { agents: 2, ..Default::default() }, |lab| {
        format!("[images]\npeers = false\n[[images.registry]]\nhost = \"{}:5000\"\ninsecure = true\n", lab.addr(0))
    });
    let ns = c.lab.ns(0);
    let registry = Registry::start_in_netns(&ns, &c.lab.addr(0));
    let (image, size) = push_image(&c, &ns, &registry, "alone", 3);
    nft(&ns, "add table inet bramble_test_count");
    nft(&ns, "add chain inet bramble_test_count out { type filter hook output priority 0 ; }");
    nft(&ns, "add rule inet bramble_test_count out tcp sport 5000 counter");

    ok(c.cli(&["apply", "-f", &c.write("alone.toml", &app("alone", &image, 2, ""))]), "apply");
    wait_for("two replicas running", Duration::from_secs(120), || (running_on(&c, "alone").len() == 2).then_some(()));
    let crossed = sent(&ns);
    eprintln!("image {size} bytes; the registry sent {crossed} bytes for two boards that do not share");
    assert!(crossed > 2 * size, "each board pulled the whole image itself: {crossed} bytes for {size}");
    let events = ok(c.cli(&["events"]), "events");
    let pulled: Vec<&str> = events.lines().filter(|l| l.contains(&format!("pulled {image} in"))).collect();
    assert_eq!(pulled.len(), 2, "one pull per board: {events}");
    assert!(pulled.iter().all(|l| !l.contains("from peer") && l.contains("from registry")), "{pulled:?}");
    ok(c.cli(&["delete", "app", "alone"]), "delete");
    c.remove_containers();
}
