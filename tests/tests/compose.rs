//! Coming from Compose (issue 34) on a real board: `bramble apply -f docker-compose.yml` converts
//! the file on the fly (variables from a `.env` beside it, an anchor merged into a service) and
//! runs it — a web server on a host port with a config file, a client that waits for it
//! (`depends_on`) and reaches it by its service name; a field that does not map refuses the
//! apply at its line, and nothing is stored; `bramble convert` prints what apply took.

use bramble_proto::model::ReplicaPhase;
use bramble_tests::{text, wait_for, Cluster};
use std::time::Duration;

fn running(c: &Cluster, app: &str) {
    wait_for(&format!("{app} running"), Duration::from_secs(90), || {
        c.replicas_of(app).iter().any(|r| r.phase == ReplicaPhase::Running).then_some(())
    });
}

#[test]
fn a_compose_file_applies_as_it_is() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(1, "");
    let dir = c.dir.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), format!("IMAGE={image}\nGREETING=hello-from-compose\n")).unwrap();
    std::fs::write(dir.join("index.html"), "${GREETING}\n").unwrap();
    let compose = "x-base: &base\n  image: ${IMAGE}\n  restart: unless-stopped\n\
                   services:\n\
                   \x20 web:\n    <<: *base\n\
                   \x20   command: [\"/bin/sh\", \"-c\", \"mkdir -p /www && cat /etc/site/index.html > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n\
                   \x20   ports: [\"18088:8080\"]\n\
                   \x20   configs:\n      - source: index.html\n        target: /etc/site/index.html\n\
                   \x20 client:\n    <<: *base\n\
                   \x20   depends_on: [web]\n\
                   \x20   command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
                   configs:\n  index.html:\n    file: ./index.html\n";
    let file = dir.join("docker-compose.yml");
    std::fs::write(&file, compose).unwrap();
    let out = c.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("app/web") && out.contains("app/client") && out.contains("config/index-html"), "{out}");
    running(&c, "web");
    running(&c, "client");
    // The client reaches the web server by its service name, through the VIP.
    let client = c.replicas_of("client").into_iter().find(|r| r.phase == ReplicaPhase::Running).unwrap();
    let got = wait_for("web by name from the client", Duration::from_secs(30), || {
        let out = c.cli(&["exec", &client.meta.name, "--", "wget", "-q", "-O", "-", "http://web:8080/"]);
        out.status.success().then(|| text(&out.stdout))
    });
    // (The config file itself is not interpolated: Compose fills variables in the Compose file.)
    assert_eq!(got.trim(), "${GREETING}");
    // And from the LAN, on the board's host port.
    let body = wait_for("the host port", Duration::from_secs(30), || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &c.lab.ns(0), "curl", "-sf", "--max-time", "3"])
            .arg(format!("http://{}:18088/", c.lab.addr(1)))
            .output()
            .ok()?;
        out.status.success().then(|| text(&out.stdout))
    });
    assert_eq!(body.trim(), "${GREETING}");

    // What does not map refuses the apply at its line; nothing of it is stored.
    let bad = dir.join("bad-compose.yml");
    std::fs::write(&bad, format!("services:\n  other:\n    image: {image}\n    privileged: true\n")).unwrap();
    let out = c.cli(&["apply", "-f", bad.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("bad-compose.yml:4:17: services.other.privileged"), "{err}");
    assert!(!c.ok(&["get", "apps"]).contains("other"));
    // convert prints what apply took, and apply takes it back unchanged.
    let printed = c.ok(&["convert", "-f", file.to_str().unwrap()]);
    let toml = c.write("converted.toml", &printed);
    let diff = c.cli(&["diff", "-f", &toml]);
    assert_eq!(diff.status.code(), Some(0), "nothing would change: {}", text(&diff.stdout));
    c.ok(&["delete", "app", "web", "client"]);
    c.remove_containers();
}

/// The public corpus (`tests/corpus/`: 39 Compose samples, 26 Kubernetes examples): each converts
/// leniently, and what it gives passes a real leader's `apply --dry-run` (its admission, the
/// planner) — the manifests Bramble's own apply would take.
#[test]
fn the_corpus_converts_and_a_leader_plans_it() {
    let (c, _registry, _image) = bramble_tests::cluster::with_busybox(1, "");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let (mut planned, mut empty, mut refused) = (0, 0, Vec::new());
    for kind in ["compose", "kubernetes"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(kind)).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let out = c.cli(&["convert", "--lenient", "-f", f.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", f.display(), text(&out.stderr));
            let manifest = text(&out.stdout);
            if manifest.trim().is_empty() {
                empty += 1;
                continue;
            }
            let path = c.write("corpus.toml", &manifest);
            let dry = c.cli(&["apply", "--dry-run", "-f", &path]);
            let err = text(&dry.stderr);
            if !dry.status.success() && err.contains("is the cluster's own") {
                // A host port the cluster keeps (Pi-hole's 53: the boards' DNS): refused as for
                // any manifest, with the line; counted and shown.
                refused.push(format!(
                    "{}: {}",
                    f.file_name().unwrap().to_string_lossy(),
                    err.lines().nth(1).unwrap_or_default()
                ));
                continue;
            }
            assert!(dry.status.success(), "{}: apply --dry-run: {err}\n{manifest}", f.display());
            planned += 1;
        }
    }
    eprintln!("corpus: {planned} files planned by the leader's dry run, {empty} gave nothing to apply (images to build), {} refused:", refused.len());
    for r in &refused {
        eprintln!("  {r}");
    }
    assert!(refused.len() <= 2, "{refused:#?}");
    assert!(planned >= 50, "{planned}");
    assert!(!c.ok(&["get", "apps"]).contains("wordpress"), "a dry run stores nothing");
}
