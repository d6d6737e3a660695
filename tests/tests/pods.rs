//! Several containers in one replica (issue 31), real containers on a board: an init container
//! migrates a local volume before the server starts; a sidecar reads the server on localhost and
//! shares a tmpfs volume with it; readiness and usage are both containers'; `logs -c` and `exec -c` reach each
//! container; an init container that fails restarts with backoff and the replica says
//! `Init:Error`; deleting the app removes every container and the pod's network.

use bramble_tests::{text, wait_for};
use std::time::Duration;

#[test]
fn an_init_container_migrates_then_a_sidecar_reads_the_server_on_localhost() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(1, "[monitoring]\ninterval = \"1s\"\n");
    let file = |name: &str, body: String| c.write(name, &body);
    let app = format!(
        "[[app]]\nname = \"web\"\nimage = \"{image}\"\n\
         command = [\"/bin/sh\", \"-c\", \"cp /data/schema /shared/index.html && exec httpd -f -p 8080 -h /shared\"]\n\
         ports = [{{ container = 8080 }}]\n\
         [[app.volumes]]\ntype = \"local\"\nname = \"webdata\"\npath = \"/data\"\n\
         [[app.volumes]]\ntype = \"tmpfs\"\npath = \"/shared\"\nsize = \"1Mi\"\n\
         [[app.init]]\nname = \"migrate\"\nimage = \"{image}\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo schema-v2 > /data/schema && echo migrated\"]\n\
         [[app.containers]]\nname = \"reader\"\nimage = \"{image}\"\n\
         command = [\"/bin/sh\", \"-c\", \"while true; do wget -qO- http://127.0.0.1:8080/ && cat /shared/index.html > /tmp/seen; sleep 1; done\"]\n\
         probes = {{ readiness = {{ exec = [\"/bin/sh\", \"-c\", \"grep -q schema-v2 /tmp/seen\"], period = \"1s\" }} }}\n"
    );
    let path = file("web.toml", app.clone());
    // Two containers may not share a port.
    let clash = file("clash.toml", app.replace("probes = {", "ports = [{ container = 8080 }]\nprobes = {"));
    let out = c.cli(&["apply", "-f", &clash]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("app[0].containers[0].ports[0].container: port 8080"), "{err}");

    c.ok(&["apply", "-f", &path]);
    let started = std::time::Instant::now();
    let replica = wait_for("the replica ready", Duration::from_secs(120), || {
        let r = c.replicas_of("web").into_iter().next()?;
        r.ready.then_some(r)
    });
    eprintln!("apply -> ready with an init container and a sidecar: {:?}", started.elapsed());
    let name = replica.meta.name.clone();
    // The sidecar read the server over localhost: what the init container wrote.
    let logs = c.ok(&["logs", &name, "-c", "reader"]);
    assert!(logs.contains("schema-v2"), "{logs}");
    assert!(c.ok(&["logs", &name, "-c", "migrate"]).contains("migrated"));
    let out = c.ok(&["exec", &name, "-c", "reader", "--", "cat", "/shared/index.html"]);
    assert_eq!(out.trim(), "schema-v2", "the tmpfs volume is shared");
    let out = c.ok(&["exec", &name, "--", "cat", "/data/schema"]);
    assert_eq!(out.trim(), "schema-v2");
    // Its usage is every container's: the server's process and the sidecar's shell at least.
    let pids = wait_for("a usage sample of both containers", Duration::from_secs(30), || {
        let top: serde_json::Value =
            serde_json::from_str(&c.ok(&["top", "replicas", "--app", "web", "-o", "json"])).ok()?;
        let pids = top[0]["pids"].as_u64()?;
        (pids >= 2).then_some(pids)
    });
    eprintln!("the replica's processes, all containers: {pids}");
    let wrong = c.cli(&["logs", &name, "-c", "nope"]);
    let err = text(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("app web has no container \"nope\""), "{err}");
    assert!(err.contains("migrate") && err.contains("reader"), "{err}");

    // An init container that always fails: restarted with backoff, the replica says so.
    let failing = file(
        "bad.toml",
        format!(
            "[[app]]\nname = \"bad\"\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\n\
             [[app.init]]\nname = \"check\"\nimage = \"{image}\"\ncommand = [\"/bin/sh\", \"-c\", \"echo no db; exit 2\"]\n"
        ),
    );
    c.ok(&["apply", "-f", &failing]);
    let r = wait_for("Init:Error", Duration::from_secs(60), || {
        let r = c.replicas_of("bad").into_iter().next()?;
        r.reason.starts_with("Init:Error").then_some(r)
    });
    assert!(r.reason.contains("init container check") && r.reason.contains("exited with code 2"), "{}", r.reason);
    assert!(!r.ready);

    // Deleted: every container goes, the pod's network with the last.
    c.ok(&["delete", "app", "web"]);
    wait_for("web's containers gone", Duration::from_secs(60), || {
        let left = std::fs::read_dir(c.agent_dir(1).join("containers")).ok()?;
        (!left.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&name))).then_some(())
    });
    wait_for("its shared tmpfs gone", Duration::from_secs(30), || {
        (!c.agent_dir(1).join("pod-tmpfs").join(&name).exists()).then_some(())
    });
}
