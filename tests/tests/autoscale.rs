//! The autoscaler end to end: an app whose replicas burn CPU while a config says so (the test
//! controls the load by updating the config in place) grows to its max within a minute, and
//! shrinks back to its min once the load stops and the (test-shortened) window has passed; every
//! change is an event with the figures; `describe app` shows the autoscaler's state; a manual scale
//! says what will happen.

use bramble_tests::ok;
use std::time::Duration;

#[test]
fn an_app_grows_under_load_and_shrinks_after_it() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(1, "[monitoring]\ninterval = \"1s\"\n");
    let manifest = c.dir.path().join("web.toml");
    let script = "while :; do if [ \\\"$(cat /etc/load/mode)\\\" = burn ]; then i=0; \
                  while [ $i -lt 20000 ]; do i=$((i+1)); done; else sleep 1; fi; done";
    std::fs::write(
        &manifest,
        format!(
            "[[config]]\nname = \"load\"\nfiles = {{ mode = \"burn\" }}\n\n\
             [[app]]\nname = \"web\"\nimage = \"{image}\"\ncommand = [\"/bin/sh\", \"-c\", \"{script}\"]\n\
             resources = {{ cpu = \"200m\", memory = \"32Mi\" }}\n\
             [[app.configs]]\nname = \"load\"\npath = \"/etc/load\"\n\
             [app.autoscale]\nmin = 1\nmax = 3\ncpu = \"50%\"\nscale_down_window = \"10s\"\nscale_up_period = \"2s\"\n"
        ),
    )
    .unwrap();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let count = || {
        let apps: Vec<bramble_proto::model::App> =
            serde_json::from_str(&ok(c.cli(&["get", "apps", "-o", "json"]), "get apps")).unwrap();
        apps.iter().find(|a| a.meta.name == "web").map(|a| a.spec.replicas.0)
    };
    bramble_tests::wait_for("the app at its max under load", Duration::from_secs(90), || (count()? == 3).then_some(()));
    let events = ok(c.cli(&["events"]), "events");
    // (At 99% of the request it is 1 -> 2; at 101%, ceil(1 x 2.02) = 3 at once.)
    assert!(events.contains("autoscaled from 1 to ") && events.contains("% of request (target 50%)"), "{events}");
    let described = ok(c.cli(&["describe", "app", "web"]), "describe");
    assert!(described.contains("Autoscale:   min 1, max 3, cpu 50% of request"), "{described}");
    assert!(described.contains("Changed by:  autoscaler") && described.contains("Last pass:"), "{described}");

    // The load stops: the replicas idle, and after the window the app is back at its min.
    ok(c.cli(&["config", "update", "load", "--from-literal", "mode=idle"]), "stop the load");
    bramble_tests::wait_for("the app back at its min", Duration::from_secs(120), || (count()? == 1).then_some(()));
    let events = ok(c.cli(&["events"]), "events");
    assert!(events.contains(" to 1: cpu ") && events.contains("% of request (target 50%)"), "{events}");

    // A manual scale of an autoscaled app says what will happen.
    let said = ok(c.cli(&["scale", "app", "web", "--replicas", "2"]), "scale");
    assert!(said.contains("it is autoscaled (min 1, max 3): the autoscaler sets the count again"), "{said}");
    ok(c.cli(&["delete", "app", "web"]), "delete");
    c.remove_containers();
}
