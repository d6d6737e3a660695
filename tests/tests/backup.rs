//! Backup and restore for real: a sealed backup of a running cluster, inspected; the leader's data
//! dir destroyed; a new leader restored from the backup; the board reconnects by itself and every
//! replica keeps its container (none restarted), with apps, secrets and configs as they were. Wrong
//! passphrases and damaged files are refused, and nothing is written.

use bramble_proto::model::{App, ReplicaPhase};
use bramble_tests::{ok, text};
use nix::sys::signal::Signal;
use std::time::Duration;

#[test]
fn a_cluster_comes_back_from_its_backup_without_restarting_a_container() {
    let (mut c, _registry, image) = bramble_tests::cluster::with_busybox(1, "");
    let dir = c.dir.path().to_path_buf();
    let manifest = dir.join("web.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[config]]\nname = \"site\"\nfiles = {{ \"index.html\" = \"hi\" }}\n\n\
             [[app]]\nname = \"web\"\nimage = \"{image}\"\nreplicas = 2\nsecrets = [\"db\"]\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n\
             [[app.configs]]\nname = \"site\"\npath = \"/www\"\n"
        ),
    )
    .unwrap();
    ok(c.cli(&["secret", "create", "db", "--from-literal", "password=s3cret-value"]), "secret");
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let before = bramble_tests::wait_for("two replicas running", Duration::from_secs(60), || {
        let rs = c.replicas_of("web");
        (rs.len() == 2 && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(rs)
    });
    let apps_before: Vec<App> = serde_json::from_str(&ok(c.cli(&["get", "apps", "-o", "json"]), "get apps")).unwrap();

    let pass = dir.join("pass");
    std::fs::write(&pass, "correct horse battery\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let file = dir.join("cluster.bak");
    let said =
        ok(c.cli(&["backup", "--out", file.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]), "backup");
    assert!(said.starts_with("backup of cluster bramble written to"), "{said}");
    let sealed = std::fs::read(&file).unwrap();
    assert!(!sealed.windows(12).any(|w| w == b"s3cret-value") && !text(&sealed).contains("PRIVATE KEY"), "sealed");
    let inspect = |p: &std::path::Path, f: &std::path::Path| {
        c.cli(&["backup", "inspect", f.to_str().unwrap(), "--passphrase-file", p.to_str().unwrap()])
    };
    let shown = ok(inspect(&pass, &file), "inspect");
    assert!(shown.contains("Cluster:     bramble") && shown.contains("replicas       2"), "{shown}");
    assert!(shown.contains("apps           1") && shown.contains("secrets        1"), "{shown}");
    let refused = inspect(&wrong, &file);
    assert!(!refused.status.success() && text(&refused.stderr).contains("the passphrase is wrong"));
    let truncated = dir.join("truncated.bak");
    std::fs::write(&truncated, &sealed[..sealed.len() / 2]).unwrap();
    assert!(text(&inspect(&pass, &truncated).stderr).contains("truncated or corrupted"));

    // The leader's board dies with its data dir.
    c.leader.take().unwrap().stop(Signal::SIGTERM);
    let leader_dir = c.leader_dir();
    std::fs::remove_dir_all(&leader_dir).unwrap();
    let restore = |p: &std::path::Path, f: &std::path::Path| {
        std::process::Command::new(bramble_tests::process::bin_dir().join("bramble-leader"))
            .args(["restore", "--data-dir", leader_dir.to_str().unwrap(), "--passphrase-file"])
            .arg(p)
            .arg(f)
            .output()
            .unwrap()
    };
    let bad = restore(&wrong, &file);
    assert!(!bad.status.success() && text(&bad.stderr).contains("nothing was written"), "{}", text(&bad.stderr));
    assert!(!leader_dir.exists(), "nothing written for a refused backup");
    let bad = restore(&pass, &truncated);
    assert!(!bad.status.success() && !leader_dir.exists());
    let good = restore(&pass, &file);
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(text(&good.stdout).starts_with("restored cluster bramble"), "{}", text(&good.stdout));
    let again = restore(&pass, &file);
    assert!(text(&again.stderr).contains("already holds a cluster"), "{}", text(&again.stderr));

    // The new leader: the board reconnects by itself and adopts what it runs.
    c.start_leader();
    c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    let apps_after: Vec<App> = serde_json::from_str(&ok(c.cli(&["get", "apps", "-o", "json"]), "get apps")).unwrap();
    let specs = |a: &[App]| a.iter().map(|a| (a.meta.name.clone(), a.spec.clone())).collect::<Vec<_>>();
    assert_eq!(specs(&apps_after), specs(&apps_before));
    std::thread::sleep(Duration::from_secs(3));
    let after = c.replicas_of("web");
    let ids = |rs: &[bramble_proto::model::Replica]| {
        let mut v: Vec<_> = rs.iter().map(|r| (r.meta.name.clone(), r.container_id.clone(), r.restarts)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&after), ids(&before), "the same replicas, the same containers, no restart");
    assert!(after.iter().all(|r| r.phase == ReplicaPhase::Running));
    let secret = ok(c.cli(&["describe", "secret", "db"]), "the secret came back");
    assert!(secret.contains("password"), "{secret}");
    let id = &after[0].meta.name;
    assert_eq!(ok(c.cli(&["exec", id, "--", "cat", "/run/secrets/db/password"]), "secret readable"), "s3cret-value");
    ok(c.cli(&["describe", "config", "site"]), "the config came back");
    ok(c.cli(&["delete", "app", "web"]), "delete");
    c.remove_containers();
}

#[test]
fn scheduled_backups_are_written_kept_to_their_number_and_failures_said() {
    let dir = tempfile::Builder::new().prefix("bramble-e2e-backups-").tempdir().unwrap();
    let backups = dir.path().join("usb");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "scheduled passphrase\n").unwrap();
    let edits = vec![
        ("# dir = \"/media/usb/bramble-backups\"".to_string(), format!("dir = \"{}\"", backups.display())),
        (
            "# passphrase_file = \"/etc/bramble/backup.pass\"".to_string(),
            format!("passphrase_file = \"{}\"", pass.display()),
        ),
        ("every = \"6h\"".to_string(), "every = \"10s\"".to_string()),
        ("keep = 7".to_string(), "keep = 2".to_string()),
    ];
    let c = bramble_tests::Cluster::start(bramble_tests::ClusterOptions {
        agents: 1,
        leader_toml_edits: edits,
        ..Default::default()
    });
    let taken = || {
        let events = ok(c.cli(&["events"]), "events");
        events.matches("scheduled backup written to").count()
    };
    // The first soon after start, then every 10 s: after the third, two are kept.
    bramble_tests::wait_for("three scheduled backups", Duration::from_secs(60), || (taken() >= 3).then_some(()));
    let files: Vec<_> = std::fs::read_dir(&backups).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let shown = ok(
            c.cli(&["backup", "inspect", f.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]),
            "inspect a scheduled backup",
        );
        assert!(shown.contains("nodes          1"), "{shown}");
    }
    // A failure (the passphrase file is gone) is an event, and the leader goes on.
    std::fs::remove_file(&pass).unwrap();
    bramble_tests::wait_for("a failed backup said", Duration::from_secs(30), || {
        ok(c.cli(&["events"]), "events").contains("BackupFailed").then_some(())
    });
    ok(c.cli(&["get", "nodes"]), "the leader serves on");
}

#[test]
fn a_stale_backup_stops_nothing_until_every_board_has_been_seen() {
    let (mut c, _registry, image) = bramble_tests::cluster::with_busybox(2, "");
    let dir = c.dir.path().to_path_buf();
    ok(c.cli(&["label", "node", "board-1", "pin=1"]), "label");
    let app = |name: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\nplacement = {{ node_selector = {{ pin = \"1\" }} }}\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        )
    };
    let apply = |name: &str| {
        let f = dir.join(format!("{name}.toml"));
        std::fs::write(&f, app(name)).unwrap();
        ok(c.cli(&["apply", "-f", f.to_str().unwrap()]), "apply");
        bramble_tests::wait_for("running", Duration::from_secs(60), || {
            c.replicas_of(name).into_iter().find(|r| r.phase == ReplicaPhase::Running)
        })
    };
    let old = apply("old");
    let pass = dir.join("pass");
    std::fs::write(&pass, "correct horse battery\n").unwrap();
    let file = dir.join("stale.bak");
    ok(c.cli(&["backup", "--out", file.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]), "backup");
    // After the backup: an app it does not know.
    let new = apply("new");
    let shim = c.shims_dir(1).join(&new.meta.name);
    assert!(shim.join("state.json").exists());

    // Board 2 is off; the leader is lost and restored from the stale backup.
    c.kill_agent(2);
    c.leader.take().unwrap().stop(Signal::SIGTERM);
    std::fs::remove_dir_all(c.leader_dir()).unwrap();
    let out = std::process::Command::new(bramble_tests::process::bin_dir().join("bramble-leader"))
        .args(["restore", "--data-dir", c.leader_dir().to_str().unwrap(), "--passphrase-file"])
        .arg(&pass)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.start_leader();
    c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    // Board 1 is back, board 2 not seen yet: the unknown replica keeps running.
    std::thread::sleep(Duration::from_secs(5));
    assert!(shim.join("state.json").exists(), "not stopped while a board is unseen");
    assert!(!ok(c.cli(&["get", "apps"]), "apps").contains("new"), "the backup does not know it");
    let kept = c.replicas_of("old").remove(0);
    assert_eq!((kept.meta.name, kept.container_id), (old.meta.name.clone(), old.container_id.clone()));

    // Board 2 comes back: every board seen, the boards now run exactly what the leader holds.
    c.start_agent(2);
    bramble_tests::wait_for("the unknown replica stopped", Duration::from_secs(60), || (!shim.exists()).then_some(()));
    assert!(ok(c.cli(&["events"]), "events").contains("has been seen since the restore"));
    let still = c.replicas_of("old").remove(0);
    assert_eq!(still.container_id, old.container_id, "the known one untouched");
    c.remove_containers();
}

#[test]
fn a_leader_of_another_ca_gets_nothing_from_the_boards_which_say_so_and_keep_their_containers() {
    let (mut c, _registry, image) = bramble_tests::cluster::with_busybox(1, "");
    let manifest = bramble_tests::cluster::idle_app(c.dir.path(), "web", &image, 1);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let before = bramble_tests::wait_for("web running", Duration::from_secs(60), || {
        c.replicas_of("web").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    // The leader's board is replaced by a leader of another cluster (another CA) at its address,
    // as a backup of the wrong cluster restored there would be.
    c.leader.take().unwrap().stop(Signal::SIGTERM);
    let ours = c.dir.path().join("leader-ours");
    std::fs::rename(c.leader_dir(), &ours).unwrap();
    let listen = format!("{}:{}", c.lab.addr(0), bramble_tests::cluster::LEADER_PORT);
    let out = std::process::Command::new(bramble_tests::process::bin_dir().join("bramble-leader"))
        .args(["init", "--data-dir", c.leader_dir().to_str().unwrap(), "--listen", &listen, "--cluster-name", "other"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.start_leader();
    bramble_tests::wait_for("the board to say why", Duration::from_secs(30), || {
        c.agent(1).log_text().contains("presents a certificate from another CA").then_some(())
    });
    assert!(c.nodes().is_empty(), "the other cluster knows no board");
    // Ours comes back: the board reconnects, its container untouched.
    c.leader.take().unwrap().stop(Signal::SIGTERM);
    std::fs::remove_dir_all(c.leader_dir()).unwrap();
    std::fs::rename(&ours, c.leader_dir()).unwrap();
    c.start_leader();
    c.wait_status(1, bramble_proto::model::ConditionStatus::True, Duration::from_secs(30));
    let after = c.replicas_of("web").remove(0);
    assert_eq!(
        (after.meta.name, after.container_id, after.restarts),
        (before.meta.name, before.container_id, before.restarts)
    );
    c.remove_containers();
}

#[test]
fn a_cluster_comes_back_on_another_board_from_its_backup() {
    // The defaults of a real cluster: boards notice a killed leader within the QUIC idle timeout (8 s).
    let opts = bramble_tests::cluster::ClusterOptions {
        agents: 2,
        leaders_also_on: vec![2],
        not_ready_after: "15s",
        ..Default::default()
    };
    let (mut c, _registry, image) = bramble_tests::cluster::with_busybox_opts(opts, "");
    let manifest = bramble_tests::cluster::idle_app(c.dir.path(), "web", &image, 2);
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let before = bramble_tests::wait_for("two replicas running", Duration::from_secs(60), || {
        let rs = c.replicas_of("web");
        (rs.len() == 2 && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(rs)
    });
    let apps_before = ok(c.cli(&["get", "apps", "-o", "json"]), "get apps");
    let pass = c.dir.path().join("pass");
    std::fs::write(&pass, "another board\n").unwrap();
    let file = c.dir.path().join("cluster.bak");
    ok(c.cli(&["backup", "--out", file.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]), "backup");

    // The leader's board dies with its SD card; board 2 (its own network namespace and address)
    // becomes the leader's board too.
    c.leader.take().unwrap().stop(Signal::SIGKILL);
    std::fs::remove_dir_all(c.leader_dir()).unwrap();
    let listen = format!("{}:{}", c.lab.addr(2), bramble_tests::cluster::LEADER_PORT);
    let out = std::process::Command::new(bramble_tests::process::bin_dir().join("bramble-leader"))
        .args(["restore", "--data-dir", c.leader_dir().to_str().unwrap(), "--listen", &listen, "--passphrase-file"])
        .arg(&pass)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let admin = std::fs::read_to_string(c.leader_dir().join("admin.toml")).unwrap();
    assert!(admin.contains(&format!("leaders = [\"{listen}\"")), "the CLI asks the new leader first: {admin}");
    let args = vec!["run".to_string(), "--config".into(), c.leader_dir().join("leader.toml").display().to_string()];
    let log = c.dir.path().join("leader-board-2.log");
    c.leader =
        Some(bramble_tests::process::Proc::spawn("leader", &c.lab.ns(2), &c.bins.join("bramble-leader"), &args, &log));
    for i in 1..=2 {
        c.wait_status(i, bramble_proto::model::ConditionStatus::True, Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_secs(3));
    // The same apps (the store's revisions are renumbered by the restore).
    let specs = |json: &str| {
        let apps: Vec<App> = serde_json::from_str(json).unwrap();
        apps.into_iter().map(|a| (a.meta.name, a.meta.generation, a.spec)).collect::<Vec<_>>()
    };
    assert_eq!(specs(&ok(c.cli(&["get", "apps", "-o", "json"]), "get apps")), specs(&apps_before));
    let after = c.replicas_of("web");
    let ids = |rs: &[bramble_proto::model::Replica]| {
        let mut v: Vec<_> = rs.iter().map(|r| (r.meta.name.clone(), r.container_id.clone(), r.restarts)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&after), ids(&before), "the same replicas, the same containers, no restart");
    c.remove_containers();
}
