//! Start order end to end (issue 31): `after = ["db"]` keeps an app's replicas Pending, saying
//! why, until db has a ready replica — here a db whose readiness probe passes only after a few
//! seconds; a cycle and a name that is no app are apply errors with the file's line.

use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::{text, wait_for, Cluster, ClusterOptions};
use std::time::Duration;

fn replicas(c: &Cluster, app: &str) -> Vec<Replica> {
    c.replicas_of(app)
}

#[test]
fn an_app_waits_for_the_apps_it_starts_after() {
    let opts = ClusterOptions { agents: 2, ..Default::default() };
    let (c, _registry, image) = bramble_tests::cluster::with_busybox_opts(opts, "");
    let dir = c.dir.path();
    let file = |name: &str, body: String| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let app = |name: &str, extra: &str, run: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\n{extra}\
             command = [\"/bin/sh\", \"-c\", \"{run}trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        )
    };

    // A cycle, and a name that is no app: refused with the line, nothing stored.
    let cycle = file("cycle.toml", app("a", "after = [\"b\"]\n", "") + &app("b", "after = [\"a\"]\n", ""));
    let out = c.cli(&["apply", "-f", &cycle]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cycle.toml:4:9: app[0].after") && err.contains("start order has a cycle: a -> b -> a"),
        "{err}"
    );
    let nothing = file("nothing.toml", app("lonely", "after = [\"ghost\"]\n", ""));
    let out = c.cli(&["apply", "-f", &nothing]);
    let err = text(&out.stderr);
    assert!(err.contains("nothing.toml:4:10: app[0].after[0]") && err.contains("found \"ghost\""), "{err}");
    assert!(!c.ok(&["get", "apps"]).contains("lonely"));

    // db is ready 6 s after it starts; web, after it, waits until then.
    let both = file(
        "both.toml",
        app("db", "", "sleep 6; touch /tmp/ready; ")
            + "[app.probes.readiness]\nexec = [\"cat\", \"/tmp/ready\"]\nperiod = \"1s\"\n"
            + &app("web", "replicas = 2\nafter = [\"db\"]\n", ""),
    );
    c.ok(&["apply", "-f", &both]);
    let waiting = wait_for("web waits, saying why", Duration::from_secs(30), || {
        let rs = replicas(&c, "web");
        (rs.len() == 2
            && rs.iter().all(|r| r.node.is_none() && r.reason.contains("waiting for app db to have a ready replica")))
        .then_some(rs)
    });
    assert!(waiting.iter().all(|r| r.phase == ReplicaPhase::Pending), "{waiting:?}");
    let db = wait_for("db ready", Duration::from_secs(60), || replicas(&c, "db").into_iter().find(|r| r.serving()));
    let web = wait_for("web running", Duration::from_secs(60), || {
        let rs = replicas(&c, "web");
        (rs.len() == 2 && rs.iter().all(|r| r.phase == ReplicaPhase::Running)).then_some(rs)
    });
    let ready_ms = db.ready_ms.expect("db's ready time");
    for r in &web {
        let started = r.started_ms.expect("a start time");
        assert!(started >= ready_ms, "{} started at {started}, before db was ready at {ready_ms}", r.meta.name);
    }
    let described = c.ok(&["describe", "app", "web"]);
    assert!(described.contains("Starts after: db"), "{described}");
    let events = c.ok(&["events"]);
    assert!(events.contains("WaitingForApps"), "{events}");
    c.ok(&["delete", "app", "web", "db"]);
    c.remove_containers();
}
