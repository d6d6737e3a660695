//! Configs end to end on a real board: files from a `[[config]]` manifest and from `bramble config
//! create --from-file`, mounted read-only where the app says; an update changes the file in the
//! running container (same container), and an app that asks (`roll = true`) rolls instead; a
//! replica whose config does not exist waits and says why; bad configs are refused with file:line.

use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::Cluster;
use bramble_tests::{ok, text};
use std::time::Duration;

fn the_running(c: &Cluster, app: &str, not: Option<&str>) -> Replica {
    bramble_tests::wait_for(&format!("{app} running"), Duration::from_secs(90), || {
        let rs = c.replicas_of(app);
        (rs.len() == 1 && rs[0].phase == ReplicaPhase::Running && Some(rs[0].meta.name.as_str()) != not)
            .then(|| rs[0].clone())
    })
}

#[test]
fn configs_are_mounted_read_only_updated_in_place_or_rolled() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(1, "");
    let conf = c.dir.path().join("app.conf");
    std::fs::write(&conf, "mode = 1\n").unwrap();
    ok(c.cli(&["config", "create", "settings", "--from-file", &format!("app.conf={}", conf.display())]), "create");
    let again = c.cli(&["config", "create", "settings", "--from-literal", "a=b"]);
    assert_eq!(again.status.code(), Some(6), "{}", text(&again.stderr));
    let manifest = c.dir.path().join("apps.toml");
    let app = |name: &str, mounts: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n{mounts}"
        )
    };
    let text_manifest = format!(
        "[[config]]\nname = \"site\"\n[config.files]\n\"index.html\" = \"<h1>v1</h1>\"\n\n{}{}{}",
        app("web", "[[app.configs]]\nname = \"site\"\npath = \"/www\"\n[[app.configs]]\nname = \"settings\"\npath = \"/etc/app\"\n"),
        app("rolled", "[[app.configs]]\nname = \"settings\"\npath = \"/etc/app\"\nroll = true\n"),
        app("waiter", "[[app.configs]]\nname = \"later\"\npath = \"/etc/later\"\n"),
    );
    std::fs::write(&manifest, text_manifest).unwrap();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let web = the_running(&c, "web", None);
    let rolled = the_running(&c, "rolled", None);
    let cat = |id: &str, path: &str| text(&c.cli(&["exec", id, "--", "cat", path]).stdout);
    assert_eq!(cat(&web.meta.name, "/www/index.html"), "<h1>v1</h1>");
    assert_eq!(cat(&web.meta.name, "/etc/app/app.conf"), "mode = 1\n");
    let stat = ok(c.cli(&["exec", &web.meta.name, "--", "busybox", "stat", "-c", "%a", "/www/index.html"]), "stat");
    assert_eq!(stat.trim(), "444");
    let write = c.cli(&["exec", &web.meta.name, "--", "sh", "-c", "echo x > /www/index.html"]);
    assert!(!write.status.success(), "read-only");

    // Listed and described.
    let list = ok(c.cli(&["get", "configs"]), "get configs");
    assert!(list.contains("site") && list.contains("index.html") && list.contains("settings"), "{list}");
    let described = ok(c.cli(&["describe", "config", "site"]), "describe config");
    assert!(described.contains("File index.html (11 bytes):") && described.contains("<h1>v1</h1>"), "{described}");
    let app_described = ok(c.cli(&["describe", "app", "rolled"]), "describe app");
    assert!(app_described.contains("Config:      /etc/app <- config settings (read-only, rolls on change)"));

    // An update: web's file changes in place (the same container); `rolled` rolls.
    std::fs::write(&conf, "mode = 2\n").unwrap();
    ok(c.cli(&["config", "update", "settings", "--from-file", &format!("app.conf={}", conf.display())]), "update");
    bramble_tests::wait_for("the new file in the running container", Duration::from_secs(20), || {
        (cat(&web.meta.name, "/etc/app/app.conf") == "mode = 2\n").then_some(())
    });
    let same = c.replicas_of("web").remove(0);
    assert_eq!((same.meta.name.as_str(), same.restarts), (web.meta.name.as_str(), 0), "not restarted");
    let new = the_running(&c, "rolled", Some(&rolled.meta.name));
    assert_eq!(cat(&new.meta.name, "/etc/app/app.conf"), "mode = 2\n");
    let history = ok(c.cli(&["rollout", "history", "app/rolled"]), "history");
    assert!(history.contains("config settings changed"), "{history}");
    let missing = c.cli(&["config", "update", "nope", "--from-literal", "a=b"]);
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing.stderr));

    // A replica whose config does not exist yet waits, and starts once it does.
    bramble_tests::wait_for("the waiter's reason", Duration::from_secs(30), || {
        c.replicas_of("waiter").into_iter().find(|r| r.reason.contains("waiting for config later from the leader"))
    });
    ok(c.cli(&["config", "create", "later", "--from-literal", "k=v"]), "create later");
    let waiter = the_running(&c, "waiter", None);
    assert_eq!(cat(&waiter.meta.name, "/etc/later/k"), "v");

    // Bad configs: refused with the file and line, nothing applied.
    let bad = c.dir.path().join("bad.toml");
    std::fs::write(&bad, "[[config]]\nname = \"x\"\n[config.files]\n\"../etc\" = \"a\"\n").unwrap();
    let refused = c.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!refused.status.success(), "refused");
    let e = text(&refused.stderr);
    assert!(e.contains("bad.toml:3:") && e.contains("config[0].files") && e.contains("is not a file name"), "{e}");
    let binary = c.dir.path().join("bin");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    let b = c.cli(&["config", "create", "b", "--from-file", &format!("x={}", binary.display())]);
    assert!(text(&b.stderr).contains("a config holds text"), "{}", text(&b.stderr));

    ok(c.cli(&["delete", "app", "web", "rolled", "waiter"]), "delete apps");
    ok(c.cli(&["delete", "config", "site", "settings", "later"]), "delete configs");
    assert!(!ok(c.cli(&["get", "configs"]), "get").contains("site"));
    c.remove_containers();
}
