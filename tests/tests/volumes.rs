//! Volumes end to end, with real containers on two boards: a named local volume keeps its data
//! across a container crash, an agent restart and an image update (the new replica comes back to
//! the board that holds it, though spreading alone would move it), while a tmpfs starts empty
//! each time; a lost board's pinned replica waits instead of moving; `volume ls|rm` (refused in
//! use, kept after the app is deleted); a host path is mounted read-only on the labelled board
//! only, and one reached through a symlink is refused with the reason shown.

use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::Cluster;
use bramble_tests::{ok, text};
use std::time::Duration;

fn running(c: &Cluster, app: &str, what: &str) -> Replica {
    bramble_tests::wait_for(what, Duration::from_secs(90), || {
        let rs = c.replicas_of(app);
        let live: Vec<Replica> = rs.into_iter().filter(|r| r.terminating_ms.is_none()).collect();
        (live.len() == 1 && live[0].phase == ReplicaPhase::Running).then(|| live[0].clone())
    })
}

fn exec(c: &Cluster, id: &str, script: &str) -> std::process::Output {
    c.cli(&["exec", id, "--", "sh", "-c", script])
}

#[test]
fn local_volumes_outlive_containers_agents_and_updates_and_host_paths_stay_on_their_boards() {
    // The boards allow host volumes under one directory of their own (the leader's and agents'
    // data dirs are elsewhere, under the cluster's directory).
    let host = tempfile::Builder::new().prefix("bramble-host-").tempdir().unwrap();
    let allow = format!("[volumes]\nhost_paths = [\"{}\"]\n", host.path().display());
    let (mut c, registry, image) = bramble_tests::cluster::with_busybox(2, &allow);
    // The same image under a second tag: an update is a new revision.
    bramble_tests::testimages::push_from(
        Some(&c.lab.ns(0)),
        &c.dir.path().join("layout"),
        "1",
        &format!("{}/bramble/busybox:2", registry.addr),
    );
    let manifest = c.dir.path().join("db.toml");
    let app = |image: &str| {
        format!(
            "[[app]]\nname = \"db\"\nimage = \"{image}\"\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             [[app.volumes]]\ntype = \"local\"\nname = \"dbdata\"\npath = \"/data\"\n\
             [[app.volumes]]\ntype = \"tmpfs\"\npath = \"/cache\"\nsize = \"1Mi\"\n"
        )
    };
    std::fs::write(&manifest, app(&image)).unwrap();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let first = running(&c, "db", "the db running");
    let home = first.node.clone().unwrap();
    let home_i: usize = home.strip_prefix("board-").unwrap().parse().unwrap();
    let volume_dir = c.agent_dir(home_i).join("volumes/dbdata");
    ok(exec(&c, &first.meta.name, "echo one > /data/f && echo scratch > /cache/f"), "write");
    assert_eq!(std::fs::read_to_string(volume_dir.join("f")).unwrap(), "one\n", "in the agent's data dir");

    // A crash: the container restarts; the local volume kept its data, the tmpfs is new.
    // (PID 1 of a PID namespace ignores SIGKILL from inside it; its TERM trap exits.)
    let _ = exec(&c, &first.meta.name, "kill 1");
    bramble_tests::wait_for("the restart", Duration::from_secs(60), || {
        c.replicas_of("db").into_iter().find(|r| r.restarts >= 1 && r.phase == ReplicaPhase::Running)
    });
    assert_eq!(ok(exec(&c, &first.meta.name, "cat /data/f"), "cat after the crash"), "one\n");
    let cache = exec(&c, &first.meta.name, "cat /cache/f");
    assert!(!cache.status.success(), "the tmpfs starts empty after a restart: {}", text(&cache.stdout));

    // The agent killed and restarted: the same container, the same data.
    c.kill_agent(home_i);
    c.start_agent(home_i);
    bramble_tests::wait_for("an exec after the agent restart", Duration::from_secs(30), || {
        exec(&c, &first.meta.name, "echo two >> /data/f").status.success().then_some(())
    });

    // An image update: the new replica comes back to the board that holds the volume.
    std::fs::write(&manifest, app(&image.replace(":1", ":2"))).unwrap();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply :2");
    let updated = bramble_tests::wait_for("the update done", Duration::from_secs(90), || {
        let rs = c.replicas_of("db");
        (rs.len() == 1 && rs[0].phase == ReplicaPhase::Running && rs[0].meta.name != first.meta.name)
            .then(|| rs[0].clone())
    });
    assert_eq!(updated.node.as_deref(), Some(home.as_str()), "pinned to the volume's board");
    assert_eq!(ok(exec(&c, &updated.meta.name, "cat /data/f"), "cat after the update"), "one\ntwo\n");
    let described = ok(c.cli(&["describe", "app", "db"]), "describe");
    assert!(described.contains("Volume:      /data <- local volume dbdata"), "{described}");
    assert!(described.contains("Pinned:      replicas stay on the nodes"), "{described}");

    // volume ls, and rm refused while the app uses it.
    let ls = ok(c.cli(&["volume", "ls"]), "volume ls");
    assert!(ls.starts_with("NODE") && ls.contains("dbdata") && ls.contains(&updated.meta.name), "{ls}");
    let json: Vec<bramble_proto::wire::VolumeInfo> =
        serde_json::from_str(&ok(c.cli(&["volume", "ls", "--node", &home, "-o", "json"]), "ls json")).unwrap();
    assert_eq!((json.len(), json[0].size, json[0].files), (1, 8, 1), "{json:?}");
    let busy = c.cli(&["volume", "rm", "dbdata", "--node", &home]);
    assert!(!busy.status.success() && text(&busy.stderr).contains("is in use by"), "{}", text(&busy.stderr));

    // Its board lost: the replica waits for it, with the reason, and is not placed elsewhere.
    c.kill_agent(home_i);
    let lost = bramble_tests::wait_for("the replica lost", Duration::from_secs(30), || {
        c.replicas_of("db").into_iter().find(|r| r.phase == ReplicaPhase::Lost)
    });
    assert!(lost.reason.contains("it waits for its node"), "{}", lost.reason);
    std::thread::sleep(Duration::from_secs(5));
    let rs = c.replicas_of("db");
    assert_eq!(rs.len(), 1, "not replaced elsewhere: {rs:?}");
    c.start_agent(home_i);
    let back = running(&c, "db", "the replica back on its board");
    assert_eq!(back.node.as_deref(), Some(home.as_str()));
    assert_eq!(ok(exec(&c, &back.meta.name, "cat /data/f"), "cat after the loss"), "one\ntwo\n");

    // Deleting the app keeps the volume; `volume rm` removes it.
    ok(c.cli(&["delete", "app", "db"]), "delete");
    bramble_tests::wait_for("the app's replicas gone", Duration::from_secs(30), || {
        let all: Vec<Replica> = serde_json::from_str(&ok(c.cli(&["get", "replicas", "-o", "json"]), "get")).unwrap();
        all.iter().all(|r| r.app != "db").then_some(())
    });
    assert!(volume_dir.join("f").exists(), "kept after the app is deleted");
    let missing = c.cli(&["volume", "rm", "nope", "--node", &home]);
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing.stderr));
    let removed = ok(c.cli(&["volume", "rm", "dbdata", "--node", &home]), "volume rm");
    assert!(removed.starts_with("removed volume dbdata"), "{removed}");
    assert!(!volume_dir.exists());

    // A host path: only on the labelled board, read-only; through a symlink it is refused.
    let media = host.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("song"), "la\n").unwrap();
    std::os::unix::fs::symlink(&media, host.path().join("media-link")).unwrap();
    ok(c.cli(&["label", "node", "board-2", "media=usb"]), "label");
    let host_app = |name: &str, path: &std::path::Path| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             [[app.volumes]]\ntype = \"host\"\nhost_path = \"{}\"\nnode_label = \"media=usb\"\npath = \"/media\"\nread_only = true\n",
            path.display()
        )
    };
    let hosts = c.dir.path().join("host.toml");
    std::fs::write(&hosts, host_app("player", &media) + &host_app("tricked", &host.path().join("media-link"))).unwrap();
    ok(c.cli(&["apply", "-f", hosts.to_str().unwrap()]), "apply host apps");
    let player = running(&c, "player", "the player running");
    assert_eq!(player.node.as_deref(), Some("board-2"));
    assert_eq!(ok(exec(&c, &player.meta.name, "cat /media/song"), "cat"), "la\n");
    let write = exec(&c, &player.meta.name, "echo x > /media/new");
    assert!(!write.status.success() && !media.join("new").exists(), "read-only");
    let tricked = bramble_tests::wait_for("the symlink refused", Duration::from_secs(30), || {
        c.replicas_of("tricked").into_iter().find(|r| r.reason.contains("is a symlink"))
    });
    assert_ne!(tricked.phase, ReplicaPhase::Running, "{tricked:?}");
    ok(c.cli(&["delete", "app", "player", "tricked"]), "delete host apps");

    // What a deployer tried (issue 27): the system, its parents, doubled slashes, the leader's
    // data dir — refused at apply with the file and line; nothing is stored.
    let leader_dir = c.leader_dir();
    for path in ["/var/lib", "//etc", "/var", &format!("/{}", leader_dir.display())] {
        let bad = c.dir.path().join("bad.toml");
        std::fs::write(&bad, host_app("thief", std::path::Path::new(path))).unwrap();
        let out = c.cli(&["apply", "-f", bad.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success() && err.contains("bad.toml:7:13: app[0].volumes[0].host_path"), "{path}: {err}");
        assert!(err.contains("system directory") || err.contains("the leader's data dir"), "{path}: {err}");
    }
    let apps = ok(c.cli(&["get", "apps", "-o", "json"]), "get apps");
    assert!(!apps.contains("\"thief\""), "nothing stored: {apps}");
    // A path the leader cannot judge but the board does not allow: it waits, with the board's
    // reason — inside an agent's data dir, and outside the directory it allows.
    let outside = tempfile::Builder::new().prefix("bramble-outside-").tempdir().unwrap();
    for (app, path, says) in [
        ("thief", c.agent_dir(2).join("pki"), "is inside the agent's data dir"),
        ("stranger", outside.path().to_path_buf(), "does not allow mounting"),
    ] {
        std::fs::write(&hosts, host_app(app, &path)).unwrap();
        ok(c.cli(&["apply", "-f", hosts.to_str().unwrap()]), "apply a path the board refuses");
        let r = bramble_tests::wait_for("the board's refusal", Duration::from_secs(30), || {
            c.replicas_of(app).into_iter().find(|r| r.reason.contains(says))
        });
        assert_ne!(r.phase, ReplicaPhase::Running, "{r:?}");
        ok(c.cli(&["delete", "app", app]), "delete");
    }
    c.remove_containers();
}
