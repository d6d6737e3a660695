//! Secrets end to end, with a real leader: created from literals and files, listed and described
//! without their values, updated, refused when malformed or too big, re-sealed by `rotate-key`
//! (refused while the leader runs), deleted — and their values appear nowhere in the leader's
//! data dir (store, key file aside), its log, or any answer.

use bramble_tests::{ok, text};
use bramble_tests::{Cluster, ClusterOptions};
use nix::sys::signal::Signal;
use std::path::Path;

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t)
                    if t.is_file() && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) =>
                {
                    found.push(p.display().to_string());
                }
                _ => {}
            }
        }
    }
    found
}

#[test]
fn secrets_are_write_only_sealed_at_rest_and_rotated() {
    let mut c = Cluster::start(ClusterOptions { agents: 1, ..Default::default() });
    // Values no other byte sequence in the data dir would hold by chance.
    let password = format!("pw-{}-{}", std::process::id(), bramble_proto::time::now_ms());
    let cert = format!("-----CERT {}-----", bramble_proto::time::now_ms() * 7);
    let cert_file = c.dir.path().join("tls.crt");
    std::fs::write(&cert_file, &cert).unwrap();
    let said = ok(
        c.cli(&[
            "secret",
            "create",
            "db",
            "--from-literal",
            &format!("password={password}"),
            "--from-file",
            &format!("tls.crt={}", cert_file.display()),
        ]),
        "secret create",
    );
    assert_eq!(said, "secret/db created\n");

    // Listed and described by keys and sizes only.
    let table = ok(c.cli(&["get", "secrets"]), "get secrets");
    assert!(table.starts_with("NAME") && table.contains("db") && table.contains("password,tls.crt"), "{table}");
    let json = ok(c.cli(&["get", "secrets", "-o", "json"]), "get secrets -o json");
    let described = ok(c.cli(&["describe", "secret", "db"]), "describe secret");
    assert!(described.contains(&format!("password                       {} bytes", password.len())), "{described}");
    assert!(described.contains("Created") && described.contains("secret/db created by admin:admin"), "{described}");
    let events = ok(c.cli(&["events"]), "events");
    for shown in [&table, &json, &described, &events] {
        assert!(!shown.contains(&password) && !shown.contains(&cert), "a value was shown: {shown}");
    }

    // Mistakes: each refused with its exit code and a reason, nothing changed.
    let again = c.cli(&["secret", "create", "db", "--from-literal", "a=b"]);
    assert_eq!(again.status.code(), Some(6), "exists: a conflict");
    assert!(text(&again.stderr).contains("secret db exists; `bramble secret update db` replaces its keys"));
    let missing = c.cli(&["secret", "update", "nope", "--from-literal", "a=b"]);
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing.stderr));
    let big = c.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 600 << 10]).unwrap();
    let too_big = c.cli(&["secret", "create", "big", "--from-file", &format!("blob={}", big.display())]);
    assert_eq!(too_big.status.code(), Some(1));
    assert!(text(&too_big.stderr).contains("a secret holds at most 524288 bytes"), "{}", text(&too_big.stderr));
    let bad_key = c.cli(&["secret", "create", "k", "--from-literal", "../x=1"]);
    assert!(text(&bad_key.stderr).contains("is not a file name"), "{}", text(&bad_key.stderr));
    let no_eq = c.cli(&["secret", "create", "k", "--from-literal", "novalue"]);
    assert!(text(&no_eq.stderr).contains("expected KEY=VALUE"), "{}", text(&no_eq.stderr));
    assert!(!ok(c.cli(&["get", "secrets"]), "get").contains("big"), "nothing half-made");

    // An update: new version, new keys.
    let new_password = format!("{password}-v2");
    ok(c.cli(&["secret", "update", "db", "--from-literal", &format!("password={new_password}")]), "update");
    let described = ok(c.cli(&["describe", "secret", "db"]), "describe");
    let keys = described.split("Events:").next().unwrap();
    assert!(keys.contains("Version:     2") && !keys.contains("tls.crt"), "the keys replaced: {described}");

    // Nowhere on disk in the clear: not in the store, not in the log, not anywhere in the data dir.
    let leader_dir = c.leader_dir();
    for v in [&password, &new_password, &cert] {
        assert_eq!(files_containing(&leader_dir, v.as_bytes()), Vec::<String>::new(), "{v} found on disk");
        // The whole test dir: agents' data dirs and every process's log too.
        let expected = if v == &cert { vec![cert_file.display().to_string()] } else { Vec::new() };
        assert_eq!(files_containing(c.dir.path(), v.as_bytes()), expected, "only the file it was read from");
    }
    let key = std::fs::metadata(leader_dir.join("secrets.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);

    // rotate-key: refused while the leader holds the store; then re-seals.
    let rotate = |dir: &Path| {
        std::process::Command::new(bramble_tests::process::bin_dir().join("bramble-leader"))
            .args(["secrets", "rotate-key", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let busy = rotate(&leader_dir);
    assert!(!busy.status.success() && text(&busy.stderr).contains("is the leader running? stop it first"));
    let before = std::fs::read_to_string(leader_dir.join("secrets.key")).unwrap();
    c.leader.take().unwrap().stop(Signal::SIGTERM);
    let rotated = rotate(&leader_dir);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    assert!(text(&rotated.stdout).starts_with("re-sealed 1 secrets with key 2"), "{}", text(&rotated.stdout));
    let after = std::fs::read_to_string(leader_dir.join("secrets.key")).unwrap();
    assert!(after.starts_with("2 ") && after.lines().count() == 1 && !after.contains(before.trim()), "{after}");
    c.start_leader();
    let described = ok(c.cli(&["describe", "secret", "db"]), "describe after the rotation");
    assert!(described.contains("Version:     2"), "{described}");
    ok(c.cli(&["secret", "update", "db", "--from-literal", "password=x"]), "writes go on under the new key");

    ok(c.cli(&["delete", "secret", "db"]), "delete");
    assert!(!ok(c.cli(&["get", "secrets"]), "get").contains("db"));
    let gone = c.cli(&["describe", "secret", "db"]);
    assert_eq!(gone.status.code(), Some(4));
}

/// Every tmpfs mount point.
fn tmpfs_mounts() -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts.lines().filter(|l| l.contains(" - tmpfs ")).filter_map(|l| l.split(' ').nth(4)).map(String::from).collect()
}

/// Whether a tmpfs is mounted at `path`.
fn tmpfs_at(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.display().to_string();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(p.as_str()) && l.contains(" - tmpfs "))
}

#[test]
fn a_secret_reaches_only_the_board_that_runs_its_replica_and_only_its_memory() {
    let (mut c, _registry, image) = bramble_tests::cluster::with_busybox(2, "");
    ok(c.cli(&["label", "node", "board-1", "role=db"]), "label");
    let password = format!("pw-{}-{}", std::process::id(), bramble_proto::time::now_ms());
    ok(c.cli(&["secret", "create", "db", "--from-literal", &format!("password={password}")]), "create");
    let manifest = c.dir.path().join("apps.toml");
    let app = |name: &str, secret: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\nsecrets = [\"{secret}\"]\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             [app.placement]\nnode_selector = {{ role = \"db\" }}\n"
        )
    };
    let cache = "[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/cache\"\nsize = \"1Mi\"\n";
    let envy = format!(
        "[[app]]\nname = \"envy\"\nimage = \"{image}\"\n\
         command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
         secret_env = {{ DB_PASSWORD = \"db/password\" }}\n[app.placement]\nnode_selector = {{ role = \"db\" }}\n"
    );
    std::fs::write(&manifest, app("reader", "db") + cache + &app("waiter", "later") + &envy).unwrap();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let reader = bramble_tests::wait_for("the reader running", std::time::Duration::from_secs(60), || {
        c.replicas_of("reader").into_iter().find(|r| r.phase == bramble_proto::model::ReplicaPhase::Running)
    });
    assert_eq!(reader.node.as_deref(), Some("board-1"));
    let id = reader.meta.name.clone();

    // The container reads the file: the value, read-only, 0400, its user's.
    let out = ok(c.cli(&["exec", &id, "--", "cat", "/run/secrets/db/password"]), "cat");
    assert_eq!(out, password);
    let out = ok(c.cli(&["exec", &id, "--", "busybox", "stat", "-c", "%a %u", "/run/secrets/db/password"]), "stat");
    assert_eq!(out.trim(), "400 0");
    let write = c.cli(&["exec", &id, "--", "sh", "-c", "echo x > /run/secrets/db/password"]);
    assert!(!write.status.success(), "the mount is read-only");

    // A tmpfs volume: mounted where the app said, capped at its size.
    let df = ok(c.cli(&["exec", &id, "--", "busybox", "df", "-k", "/cache"]), "df");
    assert!(
        df.lines().nth(1).is_some_and(|l| l.starts_with("tmpfs") && l.split_whitespace().nth(1) == Some("1024")),
        "{df}"
    );
    ok(c.cli(&["exec", &id, "--", "sh", "-c", "echo kept > /cache/f && cat /cache/f"]), "write into the tmpfs");
    let full = c.cli(&["exec", &id, "--", "sh", "-c", "yes 0123456789 | busybox head -c 2000000 > /cache/big"]);
    assert!(!full.status.success(), "2 MB does not fit in 1 MiB");

    // Through the environment, where the app asks.
    let envy = bramble_tests::wait_for("envy running", std::time::Duration::from_secs(60), || {
        c.replicas_of("envy").into_iter().find(|r| r.phase == bramble_proto::model::ReplicaPhase::Running)
    });
    let env = ok(c.cli(&["exec", &envy.meta.name, "--", "sh", "-c", "echo \"$DB_PASSWORD\""]), "printenv");
    assert_eq!(env.trim_end(), password);

    // Only board-1 got it, and only in memory: a tmpfs for the replica, nothing on any disk.
    let secrets_dir = c.agent_dir(1).join("secrets").join(&id);
    assert!(tmpfs_at(&secrets_dir), "a tmpfs at {}", secrets_dir.display());
    let logs = |i: usize| std::fs::read_to_string(c.dir.path().join(format!("agent-{i}.log"))).unwrap_or_default();
    assert!(logs(1).contains("secrets from the leader") && logs(1).contains("db v1"), "board-1 got it");
    assert!(!logs(2).contains("secrets from the leader"), "board-2 never got a secret: {}", logs(2));
    let mut on_disk = files_containing(c.dir.path(), password.as_bytes());
    // (A tmpfs is memory: the secrets' of each replica, the bundle whose spec holds the
    // environment.)
    let in_memory = tmpfs_mounts();
    on_disk.retain(|p| !in_memory.iter().any(|m| p.starts_with(&format!("{m}/"))));
    assert_eq!(on_disk, Vec::<String>::new(), "the value is on no disk (the tmpfs aside)");
    assert!(in_memory.iter().any(|m| m.ends_with(&format!("{}/bundle", envy.meta.name))), "{in_memory:?}");
    let desired = std::fs::read_to_string(c.agent_dir(1).join("desired.json")).unwrap();
    assert!(desired.contains("\"secrets\"") && !desired.contains(&password), "names only in desired.json");

    // An update reaches the running container's file.
    let updated = format!("{password}-v2");
    ok(c.cli(&["secret", "update", "db", "--from-literal", &format!("password={updated}")]), "update");
    bramble_tests::wait_for("the new value in the container", std::time::Duration::from_secs(10), || {
        let out = c.cli(&["exec", &id, "--", "cat", "/run/secrets/db/password"]);
        (text(&out.stdout) == updated).then_some(())
    });
    // The app that takes it through its environment rolled: a new replica with the new value.
    let rolled = bramble_tests::wait_for("envy rolled", std::time::Duration::from_secs(90), || {
        let rs = c.replicas_of("envy");
        (rs.len() == 1
            && rs[0].meta.name != envy.meta.name
            && rs[0].phase == bramble_proto::model::ReplicaPhase::Running)
            .then(|| rs[0].clone())
    });
    let env =
        ok(c.cli(&["exec", &rolled.meta.name, "--", "sh", "-c", "echo \"$DB_PASSWORD\""]), "printenv after the update");
    assert_eq!(env.trim_end(), updated);
    let history = ok(c.cli(&["rollout", "history", "app/envy"]), "history");
    assert!(history.contains("secret db changed"), "{history}");

    // An agent killed and restarted under the running container: the leader sends the secret
    // again (the agent's memory was empty), and a later update still reaches the same container.
    c.kill_agent(1);
    c.start_agent(1);
    let third = format!("{password}-v3");
    ok(c.cli(&["secret", "update", "db", "--from-literal", &format!("password={third}")]), "update again");
    bramble_tests::wait_for("the update after an agent restart", std::time::Duration::from_secs(20), || {
        let out = c.cli(&["exec", &id, "--", "cat", "/run/secrets/db/password"]);
        (text(&out.stdout) == third).then_some(())
    });
    let same = c.replicas_of("reader").into_iter().find(|r| r.meta.name == id).expect("the same replica");
    assert_eq!((same.restarts, same.container_id.clone()), (0, reader.container_id.clone()), "not restarted");

    // A replica whose secret does not exist yet waits and says why; it starts once it exists.
    let waiting = bramble_tests::wait_for("the waiter's reason", std::time::Duration::from_secs(30), || {
        c.replicas_of("waiter").into_iter().find(|r| r.reason.contains("waiting for secret later from the leader"))
    });
    assert_ne!(waiting.phase, bramble_proto::model::ReplicaPhase::Running);
    ok(c.cli(&["secret", "create", "later", "--from-literal", "k=v"]), "create later");
    let waiter = bramble_tests::wait_for("the waiter running", std::time::Duration::from_secs(90), || {
        c.replicas_of("waiter").into_iter().find(|r| r.phase == bramble_proto::model::ReplicaPhase::Running)
    });
    assert_eq!(ok(c.cli(&["exec", &waiter.meta.name, "--", "cat", "/run/secrets/later/k"]), "cat"), "v");

    // Deleting the apps unmounts their secrets.
    ok(c.cli(&["delete", "app", "reader", "waiter", "envy"]), "delete");
    bramble_tests::wait_for("the tmpfs gone", std::time::Duration::from_secs(30), || {
        (!tmpfs_at(&secrets_dir) && !secrets_dir.exists()).then_some(())
    });
    c.remove_containers();
}
