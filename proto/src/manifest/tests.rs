use super::*;
use crate::quantity::{Cpu, Memory};
use std::time::Duration;

const GOOD: &str = r#"
[[app]]
name = "web"
image = "registry.lan:5000/team/web:1.4"
command = ["/bin/httpd"]
args = ["-f", "-p", "8080"]
replicas = 3
env = { MODE = "prod" }
restart = "on-failure"

[app.resources]
cpu = "250m"
memory = "64Mi"

[[app.ports]]
name = "http"
container = 8080
host = 8080

[app.placement]
node_selector = { "bramble.dev/disk" = "ssd" }
tolerations = [{ key = "dedicated", value = "web", effect = "NoSchedule" }]

[app.probes.readiness]
http = { path = "/healthz", port = 8080 }
period = "5s"

[[service]]
name = "web"
app = "web"
ports = [{ port = 80, target = "http" }]
"#;

#[test]
fn a_full_manifest_parses() {
    let m = parse_manifest("web.toml", GOOD).unwrap();
    assert_eq!(m.apps.len(), 1);
    let app = &m.apps[0];
    assert_eq!(app.name.as_str(), "web");
    assert_eq!(app.replicas.0, 3);
    assert_eq!(app.resources.cpu, Some(Cpu(250)));
    assert_eq!(app.resources.memory, Some(Memory(64 << 20)));
    assert_eq!(app.ports[0].host.map(|p| p.0), Some(8080));
    assert_eq!(app.restart, RestartPolicy::OnFailure);
    assert_eq!(app.image.registry, "registry.lan:5000");
    assert_eq!(m.services[0].ports[0].target, Some(PortTarget::Name(crate::names::Name::new("http").unwrap())));
    // What the leader stores and sends is the same object after a JSON round trip.
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
}

#[test]
fn defaults_are_sensible() {
    let m = parse_manifest("a.toml", "[[app]]\nname = \"a\"\nimage = \"busybox\"\n").unwrap();
    let a = &m.apps[0];
    assert_eq!(a.replicas.0, 1);
    assert_eq!(a.restart, RestartPolicy::Always);
    assert_eq!(a.update.max_surge.0, 1);
    assert!(parse_manifest("empty.toml", "").unwrap().apps.is_empty());
}

/// Parses `text` expecting exactly one error; checks its line, column, field and message.
fn fails(text: &str, line: usize, column: usize, field: &str, message_part: &str) {
    let errs = parse_manifest("m.toml", text).expect_err("the manifest should be refused").0;
    let e = &errs[0];
    assert_eq!((e.line, e.column), (line, column), "position of: {e}");
    assert_eq!(e.field, field, "field of: {e}");
    assert!(e.message.contains(message_part), "message of {e:?} should contain {message_part:?}");
    assert!(e.to_string().starts_with(&format!("m.toml:{line}:{column}: ")), "{e}");
}

fn app(body: &str) -> String {
    format!("[[app]]\nname = \"web\"\nimage = \"busybox\"\n{body}")
}

#[test]
fn memory_with_mb_is_refused() {
    fails(&app("resources = { memory = \"64MB\" }\n"), 4, 24, "app[0].resources.memory", "\"64Mi\" or \"64M\"");
}

#[test]
fn cpu_in_cores_word_is_refused() {
    fails(&app("resources = { cpu = \"0.25cores\" }\n"), 4, 21, "app[0].resources.cpu", "\"250m\"");
}

#[test]
fn negative_replicas() {
    fails(&app("replicas = -1\n"), 4, 12, "app[0].replicas", "expected a replica count from 0 to 1000, found -1");
}

#[test]
fn absurd_replicas() {
    fails(&app("replicas = 100000000\n"), 4, 12, "app[0].replicas", "from 0 to 1000");
}

#[test]
fn replicas_of_the_wrong_type() {
    fails(&app("replicas = \"three\"\n"), 4, 12, "app[0].replicas", "expected a replica count");
}

#[test]
fn unknown_field_in_app() {
    fails(&app("replica = 3\n"), 4, 1, "app[0].replica", "unknown field `replica`");
}

#[test]
fn unknown_top_level_kind() {
    fails(
        "[[deployment]]\nname = \"x\"\n",
        1,
        3,
        "deployment",
        "unknown field `deployment`, expected one of `app`, `service`, `config`",
    );
}

#[test]
fn missing_image() {
    fails("[[app]]\nname = \"web\"\n", 1, 1, "app[0]", "missing field `image`");
}

#[test]
fn name_not_a_dns_label() {
    fails("[[app]]\nname = \"Web_1\"\nimage = \"busybox\"\n", 2, 8, "app[0].name", "expected a DNS label");
}

#[test]
fn name_too_long() {
    let text = format!("[[app]]\nname = \"{}\"\nimage = \"busybox\"\n", "a".repeat(64));
    fails(&text, 2, 8, "app[0].name", "1 to 63");
}

#[test]
fn duplicate_app_names() {
    let text = format!("{}\n[[app]]\nname = \"web\"\nimage = \"busybox\"\n", app(""));
    fails(&text, 6, 8, "app[1].name", "duplicate app name \"web\"");
}

#[test]
fn duplicate_service_names() {
    let svc = "[[service]]\nname = \"s\"\napp = \"web\"\nports = [{ port = 80 }]\n";
    fails(&format!("{svc}{svc}"), 6, 8, "service[1].name", "duplicate service name");
}

#[test]
fn bad_image_reference() {
    fails("[[app]]\nname = \"web\"\nimage = \"Registry.lan/Web\"\n", 3, 9, "app[0].image", "invalid image reference");
}

#[test]
fn image_with_bad_digest() {
    fails("[[app]]\nname = \"web\"\nimage = \"web@sha256:abc\"\n", 3, 9, "app[0].image", "sha256:<64");
}

#[test]
fn port_zero() {
    fails(
        &app("ports = [{ container = 0 }]\n"),
        4,
        24,
        "app[0].ports[0].container",
        "expected a port number from 1 to 65535, found 0",
    );
}

#[test]
fn port_too_large() {
    fails(&app("ports = [{ container = 80, host = 70000 }]\n"), 4, 35, "app[0].ports[0].host", "found 70000");
}

#[test]
fn port_as_string() {
    fails(&app("ports = [{ container = \"80\" }]\n"), 4, 24, "app[0].ports[0].container", "expected a port number");
}

#[test]
fn duplicate_host_ports() {
    fails(
        &app("ports = [{ container = 80, host = 8080 }, { container = 81, host = 8080 }]\n"),
        4,
        68,
        "app[0].ports[1].host",
        "host port 8080 is listed twice",
    );
}

#[test]
fn bad_protocol() {
    fails(
        &app("ports = [{ container = 80, protocol = \"sctp\" }]\n"),
        4,
        39,
        "app[0].ports[0].protocol",
        "unknown variant `sctp`",
    );
}

#[test]
fn bad_restart_policy() {
    fails(
        &app("restart = \"sometimes\"\n"),
        4,
        11,
        "app[0].restart",
        "expected one of `always`, `on-failure`, `never`",
    );
}

#[test]
fn bad_env_name() {
    fails(&app("env = { \"1BAD\" = \"x\" }\n"), 4, 9, "app[0].env.1BAD", "invalid environment variable name \"1BAD\"");
}

#[test]
fn env_value_not_a_string() {
    fails(&app("env = { PORT = 80 }\n"), 4, 16, "app[0].env.PORT", "expected a string");
}

#[test]
fn bad_node_selector_key() {
    fails(
        &app("placement = { node_selector = { \"disk!\" = \"ssd\" } }\n"),
        4,
        31,
        "app[0].placement.node_selector",
        "invalid label key \"disk!\"",
    );
}

#[test]
fn probe_with_two_handlers() {
    let text = app("[app.probes.liveness]\nexec = [\"true\"]\ntcp = { port = 80 }\n");
    fails(&text, 4, 1, "app[0].probes.liveness", "exactly one of `exec`, `http` or `tcp`");
}

#[test]
fn bad_probe_duration() {
    let text = app("[app.probes.liveness]\ntcp = { port = 80 }\nperiod = \"5 seconds\"\n");
    fails(&text, 6, 10, "app[0].probes.liveness.period", "invalid duration");
}

#[test]
fn update_that_cannot_progress() {
    fails(
        &app("update = { max_surge = 0, max_unavailable = 0 }\n"),
        4,
        10,
        "app[0].update",
        "could never make progress",
    );
}

#[test]
fn service_without_ports() {
    fails("[[service]]\nname = \"s\"\napp = \"web\"\nports = []\n", 4, 9, "service[0].ports", "at least one port");
}

#[test]
fn service_with_bad_target() {
    fails(
        "[[service]]\nname = \"s\"\napp = \"web\"\nports = [{ port = 80, target = \"Http!\" }]\n",
        4,
        32,
        "service[0].ports[0].target",
        "",
    );
}

#[test]
fn not_toml_at_all() {
    fails("[[app]\nname = 1\n", 1, 7, "", "");
}

#[test]
fn app_must_be_an_array_of_tables() {
    fails("[app]\nname = \"web\"\nimage = \"busybox\"\n", 1, 1, "app", "expected a sequence");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = format!(
        "{}ports = [{{ container = 80, host = 1 }}, {{ container = 80, host = 1 }}]\n\n[[app]]\nname = \"web\"\nimage = \"busybox\"\n",
        app("")
    );
    let errs = parse_manifest("m.toml", &text).unwrap_err();
    assert_eq!(errs.0.len(), 3, "{errs}");
    assert!(errs.0.windows(2).all(|w| w[0].line <= w[1].line));
}

#[test]
fn the_examples_and_the_readme_parse() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut seen = 0;
    for dir in ["examples", "examples/ci"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                // The CI example's image is filled in by its script.
                let text = std::fs::read_to_string(&path).unwrap().replace("\"IMAGE\"", "\"reg/app:1\"");
                parse_manifest(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "examples/ holds manifests");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```toml\n").skip(1).filter_map(|b| b.split("```").next()).collect();
    assert!(blocks.len() >= 2, "the README shows manifests");
    for b in blocks {
        parse_manifest("README.md", b).unwrap_or_else(|e| panic!("{e}\n{b}"));
    }
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Manifest-like text in any combination: an error or a manifest, never a panic, and
        /// every error points at a line of the text.
        #[test]
        fn any_text(text in "(\\[\\[app\\]\\]\n|\\[\\[service\\]\\]\n|\\[app\\.[a-z]{1,9}\\]\n|[a-z_]{1,12} = (\"[a-zA-Z0-9:/.@ -]{0,20}\"|-?[0-9]{1,12}|\\[\\]|\\{ \\}|true)\n|[\\[\\]{}=\"\n]){0,24}") {
            if let Err(errs) = parse_manifest("p.toml", &text) {
                for e in errs.0 {
                    prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e}");
                }
            }
        }
    }
}

#[test]
fn a_service_port_that_names_a_port_its_app_lacks() {
    let text = "[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\n[[app.ports]]\nname = \"http\"\ncontainer = 8080\n\
                [[app.ports]]\nname = \"dns\"\ncontainer = 53\nprotocol = \"udp\"\n\
                [[service]]\nname = \"web\"\napp = \"web\"\nports = [{ port = 80, target = \"web\" }, { port = 53, target = \"dns\" }]\n";
    let e = parse_manifest("m.toml", text).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert_eq!(e.0[0].field, "service[0].ports[0].target");
    assert_eq!(e.0[0].line, 14);
    assert!(e.0[0].message.contains("app web has no port named \"web\" (it has ports http, dns)"), "{e}");
    assert!(e.0[1].message.contains("port \"dns\" of app web is udp, this service port is tcp"), "{e}");
    let ok = text
        .replace("target = \"web\"", "target = \"http\"")
        .replace("{ port = 53, target = \"dns\" }", "{ port = 53, target = \"dns\", protocol = \"udp\" }");
    let m = parse_manifest("m.toml", &ok).unwrap();
    let s = &m.services[0];
    assert_eq!(s.target_port(&s.ports[0], &m.apps[0]), Ok(8080));
    assert_eq!(s.target_port(&s.ports[1], &m.apps[0]), Ok(53));
}

#[test]
fn a_service_of_an_app_elsewhere_is_not_checked_here() {
    parse_manifest(
        "m.toml",
        "[[service]]\nname = \"s\"\napp = \"other\"\nports = [{ port = 80, target = \"http\" }]\n",
    )
    .unwrap();
}

const PORTS: &str = "[[app.ports]]\nname = \"http\"\ncontainer = 8080\n";

#[test]
fn probes_with_kubernetes_defaults_and_a_startup_probe() {
    let text = app(&format!(
        "{PORTS}[app.probes.startup]\nhttp = {{ port = \"http\", path = \"/up\" }}\nfailure_threshold = 30\n\
         [app.probes.liveness]\ntcp = {{ port = 8080 }}\n[app.probes.readiness]\nexec = [\"cat\", \"/ready\"]\n"
    ));
    let m = parse_manifest("m.toml", &text).unwrap();
    let a = &m.apps[0];
    let startup = a.probes.startup.as_ref().unwrap();
    assert_eq!(startup.port(a), Some(Ok(8080)));
    assert_eq!((startup.failure_threshold(), startup.success_threshold()), (30, 1));
    let live = a.probes.liveness.as_ref().unwrap();
    assert_eq!((live.period(), live.timeout()), (PROBE_PERIOD, PROBE_TIMEOUT));
    assert_eq!((live.failure_threshold(), live.initial_delay()), (3, Duration::ZERO));
    assert_eq!(a.probes.readiness.as_ref().unwrap().port(a), None, "exec has no port");
    assert_eq!(a.probes.each().map(|(k, _)| k).collect::<Vec<_>>(), ["startup", "liveness", "readiness"]);
}

#[test]
fn a_probe_on_a_port_the_app_does_not_declare() {
    let text = app(&format!("{PORTS}[app.probes.readiness]\nhttp = {{ port = 9090 }}\n"));
    fails(
        &text,
        8,
        17,
        "app[0].probes.readiness.http.port",
        "expected one of the app's TCP ports (declared: 8080 (http)), found port 9090",
    );
    let text = app(&format!("{PORTS}[app.probes.liveness]\ntcp = {{ port = \"metrics\" }}\n"));
    fails(&text, 8, 16, "app[0].probes.liveness.tcp.port", "found a port named \"metrics\"");
}

#[test]
fn a_probe_threshold_of_zero() {
    let text = app(&format!("{PORTS}[app.probes.readiness]\ntcp = {{ port = 8080 }}\nfailure_threshold = 0\n"));
    fails(&text, 9, 21, "app[0].probes.readiness.failure_threshold", "expected a count from 1 to 100, found 0");
}

#[test]
fn a_probe_timeout_longer_than_its_period() {
    let text =
        app(&format!("{PORTS}[app.probes.readiness]\ntcp = {{ port = 8080 }}\nperiod = \"2s\"\ntimeout = \"5s\"\n"));
    fails(&text, 10, 11, "app[0].probes.readiness.timeout", "no longer than the period (2s), found 5s");
}

#[test]
fn only_readiness_may_ask_for_several_successes() {
    let text = app(&format!("{PORTS}[app.probes.liveness]\ntcp = {{ port = 8080 }}\nsuccess_threshold = 2\n"));
    fails(&text, 9, 21, "app[0].probes.liveness.success_threshold", "expected 1 for a liveness probe");
}

#[test]
fn stop_signal_and_grace_and_rollout_settings() {
    let text = app("stop_signal = \"SIGQUIT\"\nstop_grace = \"30s\"\nupdate = { min_ready = \"5s\", progress_deadline = \"2m\", auto_rollback = false }\n");
    let a = parse_manifest("m.toml", &text).unwrap().apps.remove(0);
    assert_eq!((a.stop_signal, a.stop_grace()), (Some(StopSignal(3)), Duration::from_secs(30)));
    assert_eq!(a.update.min_ready(), Duration::from_secs(5));
    assert_eq!(a.update.progress_deadline(), Duration::from_secs(120));
    assert!(!a.update.auto_rollback());
    let json = serde_json::to_string(&a).unwrap();
    assert!(json.contains("\"stop_signal\":\"SIGQUIT\""), "{json}");
    assert_eq!(serde_json::from_str::<AppSpec>(&json).unwrap(), a);
    let d = parse_manifest("m.toml", &app("")).unwrap().apps.remove(0);
    assert_eq!(
        (d.stop_grace(), d.update.progress_deadline(), d.update.auto_rollback()),
        (STOP_GRACE, PROGRESS_DEADLINE, true)
    );
    let json = serde_json::to_string(&d).unwrap();
    assert!(
        !json.contains("stop_") && !json.contains("startup") && !json.contains("min_ready"),
        "unset fields stay out (revision hashes do not move): {json}"
    );
    fails(&app("stop_signal = \"SIGSTOP\"\n"), 4, 15, "app[0].stop_signal", "expected one of SIGHUP, SIGINT");
}

#[test]
fn tmpfs_volumes_parse_with_a_default_size_and_bad_paths_are_refused_with_their_line() {
    let m = parse_manifest(
        "m.toml",
        &app("[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/cache\"\n[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/tmp\"\nsize = \"1Mi\"\n"),
    )
    .unwrap();
    let v = &m.apps[0].volumes;
    assert_eq!((v[0].size_bytes(), v[1].size_bytes()), (64 << 20, 1 << 20));
    fails(
        &app("[[app.volumes]]\ntype = \"tmpfs\"\npath = \"cache\"\n"),
        6,
        8,
        "app[0].volumes[0].path",
        "an absolute path",
    );
    fails(
        &app("[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/run/secrets/x\"\n"),
        6,
        8,
        "app[0].volumes[0].path",
        "the container's own",
    );
    fails(
        &app("[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/a/../proc\"\n"),
        6,
        8,
        "app[0].volumes[0].path",
        "expected a path without ..",
    );
    // A doubled slash or a dot does not get past the container's own paths.
    for path in ["//proc", "/./dev/x", "/run//secrets"] {
        fails(
            &app(&format!("[[app.volumes]]\ntype = \"tmpfs\"\npath = \"{path}\"\n")),
            6,
            8,
            "app[0].volumes[0].path",
            "the container's own",
        );
    }
    let twice =
        app("[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/c\"\n[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/c/\"\n");
    fails(&twice, 9, 8, "app[0].volumes[1].path", "/c is mounted twice");
    fails(&app("[[app.volumes]]\ntype = \"nfs\"\npath = \"/c\"\n"), 5, 8, "app[0].volumes[0].type", "tmpfs");
}

#[test]
fn local_and_host_volumes_need_their_fields_and_refuse_others() {
    let m = parse_manifest(
        "m.toml",
        &app("[[app.volumes]]\ntype = \"local\"\nname = \"data\"\npath = \"/data\"\n[[app.volumes]]\ntype = \"host\"\nhost_path = \"/srv/media\"\nnode_label = \"media=usb\"\npath = \"/media\"\nread_only = true\n"),
    )
    .unwrap();
    let a = &m.apps[0];
    assert_eq!(a.local_volumes().collect::<Vec<_>>(), ["data"]);
    assert!(a.pinned());
    assert_eq!(a.host_volume_labels().collect::<Vec<_>>(), [("media", Some("usb"))]);
    assert!(a.volumes[1].read_only);
    let moving = parse_manifest(
        "m.toml",
        &app("placement = { may_move = true }\n[[app.volumes]]\ntype = \"local\"\nname = \"data\"\npath = \"/data\"\n"),
    )
    .unwrap();
    assert!(!moving.apps[0].pinned());
    fails(
        &app("[[app.volumes]]\ntype = \"local\"\npath = \"/data\"\n"),
        5,
        8,
        "app[0].volumes[0].type",
        "needs a `name`",
    );
    fails(
        &app("[[app.volumes]]\ntype = \"local\"\nname = \"d\"\npath = \"/data\"\nsize = \"1Mi\"\n"),
        8,
        8,
        "app[0].volumes[0].size",
        "not used by a local volume",
    );
    fails(
        &app("[[app.volumes]]\ntype = \"host\"\nhost_path = \"/srv\"\npath = \"/m\"\n"),
        5,
        8,
        "app[0].volumes[0].type",
        "needs a `node_label`",
    );
    fails(
        &app("[[app.volumes]]\ntype = \"host\"\nhost_path = \"/etc/ssh\"\nnode_label = \"x\"\npath = \"/m\"\n"),
        6,
        13,
        "app[0].volumes[0].host_path",
        "/etc/ssh is inside the board's system directory /etc",
    );
    // What a deployer tried (issue 27): parents of system directories, doubled slashes.
    for (path, says) in [
        ("/var/lib", "/var/lib is the board's system directory /var/lib"),
        ("/var", "/var holds the board's system directory /var/lib"),
        ("//etc", "/etc is the board's system directory /etc"),
        ("//var/lib/bramble/leader", "/var/lib/bramble/leader is inside the board's system directory /var/lib"),
        ("/usr/", "/usr is the board's system directory /usr"),
        ("/./root", "/root is the board's system directory /root"),
        ("/home", "/home is the board's system directory /home"),
        ("//", "/ is the whole board"),
    ] {
        fails(
            &app(&format!(
                "[[app.volumes]]\ntype = \"host\"\nhost_path = \"{path}\"\nnode_label = \"x\"\npath = \"/m\"\n"
            )),
            6,
            13,
            "app[0].volumes[0].host_path",
            says,
        );
    }
    fails(
        &app("[[app.volumes]]\ntype = \"host\"\nhost_path = \"/srv/../etc\"\nnode_label = \"x\"\npath = \"/m\"\n"),
        6,
        13,
        "app[0].volumes[0].host_path",
        "expected a path without ..",
    );
    fails(
        &app("[[app.volumes]]\ntype = \"host\"\nhost_path = \"/srv\"\nnode_label = \"bad key!\"\npath = \"/m\"\n"),
        7,
        14,
        "app[0].volumes[0].node_label",
        "",
    );
    fails(
        &app("[[app.volumes]]\ntype = \"local\"\nname = \"Bad_Name\"\npath = \"/d\"\n"),
        6,
        8,
        "app[0].volumes[0].name",
        "",
    );
}

#[test]
fn configs_parse_and_their_files_and_mounts_are_checked() {
    let m = parse_manifest(
        "m.toml",
        "[[config]]\nname = \"site\"\nfiles = { \"index.html\" = \"<h1>hi</h1>\" }\n\n\
         [[app]]\nname = \"web\"\nimage = \"busybox\"\n[[app.configs]]\nname = \"site\"\npath = \"/www\"\nroll = true\n",
    )
    .unwrap();
    assert_eq!(m.configs[0].files["index.html"], "<h1>hi</h1>");
    assert!(m.apps[0].configs[0].roll);
    fails("[[config]]\nname = \"c\"\nfiles = {}\n", 3, 9, "config[0].files", "at least one file");
    fails(
        &app("[[app.configs]]\nname = \"c\"\npath = \"/etc/app\"\nroll = true\nreload = [\"nginx\", \"-s\", \"reload\"]\n"),
        8,
        10,
        "app[0].configs[0].reload",
        "a config that rolls the app restarts it",
    );
    fails(
        &app("[[app.configs]]\nname = \"c\"\npath = \"/etc/app\"\nreload = [\"\"]\n"),
        7,
        10,
        "app[0].configs[0].reload",
        "at most 32 arguments",
    );
    let big = format!("[[config]]\nname = \"c\"\nfiles = {{ a = \"{}\" }}\n", "x".repeat(600 << 10));
    fails(&big, 3, 9, "config[0].files", "at most 524288 bytes");
    fails(
        &app("[[app.configs]]\nname = \"c\"\npath = \"/etc/app\"\n[[app.volumes]]\ntype = \"tmpfs\"\npath = \"/etc/app/\"\n"),
        6,
        8,
        "app[0].configs[0].path",
        "/etc/app is mounted twice",
    );
    fails(
        &app("[[app.configs]]\nname = \"c\"\npath = \"/a\"\n[[app.configs]]\nname = \"c\"\npath = \"/b\"\n"),
        8,
        8,
        "app[0].configs[1].name",
        "config c is mounted twice",
    );
    fails(
        &app("[[app.configs]]\nname = \"c\"\npath = \"/proc/x\"\n"),
        6,
        8,
        "app[0].configs[0].path",
        "the container's own",
    );
}

#[test]
fn secret_env_names_a_secret_and_key() {
    let m = parse_manifest("m.toml", &app("secret_env = { DB_PASSWORD = \"db/password\" }\nsecrets = [\"tls\"]\n"))
        .unwrap();
    let a = &m.apps[0];
    assert_eq!(a.secret_env_refs().collect::<Vec<_>>(), [("DB_PASSWORD", "db", "password")]);
    assert_eq!(a.secret_names().into_iter().collect::<Vec<_>>(), ["db", "tls"]);
    fails(&app("secret_env = { X = \"nokey\" }\n"), 4, 14, "app[0].secret_env", "expected \"SECRET/KEY\"");
    fails(&app("secret_env = { X = \"db/../k\" }\n"), 4, 14, "app[0].secret_env", "expected \"SECRET/KEY\"");
    fails(
        &app("env = { X = \"1\" }\nsecret_env = { X = \"db/k\" }\n"),
        5,
        14,
        "app[0].secret_env",
        "X is also set in env",
    );
}

#[test]
fn autoscale_needs_targets_and_requests_and_sane_bounds() {
    let ok = app("resources = { cpu = \"250m\" }\n[app.autoscale]\nmin = 1\nmax = 10\ncpu = \"70%\"\nscale_down_window = \"1m\"\n");
    let m = parse_manifest("m.toml", &ok).unwrap();
    let a = m.apps[0].autoscale.as_ref().unwrap();
    assert_eq!((a.min.0, a.max.0, a.cpu, a.memory), (1, 10, Some(Percent(70)), None));
    fails(
        &app("[app.autoscale]\nmin = 1\nmax = 3\ncpu = \"50%\"\n"),
        7,
        7,
        "app[0].autoscale.cpu",
        "set resources.cpu",
    );
    fails(
        &app("resources = { cpu = \"1\" }\n[app.autoscale]\nmin = 5\nmax = 3\ncpu = \"50%\"\n"),
        6,
        7,
        "app[0].autoscale.min",
        "min (5) is above max (3)",
    );
    fails(
        &app("resources = { cpu = \"1\" }\n[app.autoscale]\nmin = 1\nmax = 3\ncpu = \"0%\"\n"),
        8,
        7,
        "app[0].autoscale.cpu",
        "from 1% to 1000%",
    );
    fails(
        &app("resources = { cpu = \"1\" }\n[app.autoscale]\nmin = 1\nmax = 3\ncpu = \"1200%\"\n"),
        8,
        7,
        "app[0].autoscale.cpu",
        "from 1% to 1000%",
    );
    fails(
        &app("resources = { cpu = \"1\" }\n[app.autoscale]\nmin = 1\nmax = 3\ngpu = \"50%\"\n"),
        8,
        1,
        "app[0].autoscale.gpu",
        "unknown field `gpu`",
    );
    fails(
        &app("resources = { cpu = \"1\" }\n[app.autoscale]\nmin = 1\nmax = 3\n"),
        5,
        1,
        "app[0].autoscale",
        "expected a target",
    );
}

#[test]
fn devices_and_labels_parse() {
    let m = parse_manifest(
        "m.toml",
        &app("labels = { tier = \"web\", \"example.com/team\" = \"edge\" }\ndevices = [\"i2c\", \"serial:10c4:ea60\", \"/dev/video0\"]\n"),
    )
    .unwrap();
    let a = &m.apps[0];
    assert_eq!(a.labels.get("tier").map(String::as_str), Some("web"));
    let shown: Vec<String> = a.devices.iter().map(|d| d.to_string()).collect();
    assert_eq!(shown, ["i2c", "serial:10c4:ea60", "/dev/video0"]);
}

#[test]
fn a_bad_device_says_where_and_what() {
    fails(
        &app("devices = [\"gpu\"]\n"),
        4,
        11,
        "app[0].devices[0]",
        "expected a device class (gpio, i2c, spi, serial, video, usb)",
    );
    fails(&app("devices = [\"/etc/shadow\"]\n"), 4, 11, "app[0].devices[0]", "expected a path under /dev/");
    fails(&app("devices = [\"/dev/../mem\"]\n"), 4, 11, "app[0].devices[0]", "no `..`");
    fails(&app("devices = [\"i2c\", \"i2c\"]\n"), 4, 19, "app[0].devices[1]", "i2c is listed twice");
}

#[test]
fn a_bad_label_is_refused() {
    fails(&app("labels = { \"bad key\" = \"x\" }\n"), 4, 10, "app[0].labels", "invalid label key \"bad key\"");
    fails(&app("labels = { tier = \"-web\" }\n"), 4, 10, "app[0].labels", "invalid label value \"-web\"");
}

#[test]
fn capabilities_are_named_as_the_kernel_names_them() {
    let m =
        parse_manifest("m.toml", &app("security = { cap_add = [\"cap_net_admin\"], cap_drop = [\"ALL\"] }\n")).unwrap();
    let s = &m.apps[0].security;
    assert_eq!((s.cap_add[0].as_str(), s.cap_drop[0].as_str()), ("NET_ADMIN", "ALL"));
    assert_eq!(s.privileged(), ["security.cap_add"]);
    let dropping = parse_manifest("m.toml", &app("security = { cap_drop = [\"NET_RAW\"] }\n")).unwrap();
    assert!(dropping.apps[0].security.privileged().is_empty(), "dropping needs no admin");
    let e = parse_manifest("m.toml", &app("security = { cap_add = [\"SUPERPOWER\"] }\n")).unwrap_err().0;
    assert!(e[0].message.contains("expected a Linux capability such as \"NET_ADMIN\""), "{}", e[0]);
    let e = parse_manifest("m.toml", &app("security = { cap_add = [\"ALL\"] }\n")).unwrap_err().0;
    assert!(e[0].message.contains("\"ALL\" is for cap_drop"), "{}", e[0]);
}

#[test]
fn host_network_needs_the_admin_and_takes_no_host_port() {
    let m = parse_manifest("m.toml", &app("host_network = true\nports = [{ container = 9100 }]\n")).unwrap();
    let a = &m.apps[0];
    assert!(a.host_network);
    assert_eq!(a.privileged(), ["host_network = true"]);
    assert!(a.security.privileged().is_empty(), "not a security field");
    fails(
        &app("host_network = true\nports = [{ container = 9100, host = 9200 }]\n"),
        5,
        37,
        "app[0].ports[0].host",
        "on the host network the container's port is the board's own: leave out host",
    );
    // A policy that allows it lets a deployer; one that allows something else does not.
    let mut policy = crate::model::Policy { cap_add: vec!["NET_ADMIN".parse().unwrap()], ..Default::default() };
    assert_eq!(policy.refuses(a), ["host_network = true"]);
    policy.host_network = true;
    assert!(policy.refuses(a).is_empty());
}

#[test]
fn start_order_names_other_apps_once() {
    let m = parse_manifest("m.toml", &app("after = [\"db\", \"cache\"]\n")).unwrap();
    assert_eq!(m.apps[0].after.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["db", "cache"]);
    fails(&app("after = [\"web\"]\n"), 4, 10, "app[0].after[0]", "an app cannot start after itself");
    fails(&app("after = [\"db\", \"db\"]\n"), 4, 16, "app[0].after[1]", "app \"db\" is listed twice");
    fails(&app("after = [\"Not A Name\"]\n"), 4, 9, "app[0].after[0]", "expected a DNS label");
}

fn cronjob(head: &str, job: &str) -> String {
    format!("[[cronjob]]\nname = \"backup\"\n{head}[cronjob.job]\nimage = \"busybox\"\n{job}")
}

#[test]
fn a_cron_job_parses_with_its_defaults_and_round_trips() {
    let text = cronjob(
        "schedule = \"@hourly\"\ntimezone = \"Europe/Berlin\"\nconcurrency = \"forbid\"\nstarting_deadline = \"5m\"\n",
        "command = [\"tar\", \"c\"]\nbackoff_limit = 2\n",
    );
    let m = parse_manifest("c.toml", &text).unwrap();
    let c = &m.cronjobs[0];
    assert_eq!((c.name.as_str(), c.schedule.to_string().as_str()), ("backup", "@hourly"));
    assert_eq!(
        (c.concurrency, c.history, c.suspend),
        (Concurrency::Forbid, History { successful: 3, failed: 1 }, false)
    );
    assert!(c.job.name.is_unnamed());
    let job = c.job_named(c.job_name(60 * 60_000));
    assert_eq!((job.name.as_str(), job.is_job(), job.job().backoff_limit), ("backup-60", true, 2));
    // What `get cronjob -o toml` prints parses again to the same.
    let again = toml::to_string(&m).unwrap();
    assert_eq!(parse_manifest("again.toml", &again).unwrap(), m, "{again}");
}

#[test]
fn a_bad_schedule_is_refused_at_its_value() {
    fails(&cronjob("schedule = \"61 * * * *\"\n", ""), 3, 12, "cronjob[0].schedule", "minute");
    fails(&cronjob("schedule = \"@sometimes\"\n", ""), 3, 12, "cronjob[0].schedule", "expected @yearly");
    fails(&cronjob("schedule = \"* * *\"\n", ""), 3, 12, "cronjob[0].schedule", "expected five fields");
}

#[test]
fn a_cron_jobs_template_has_no_name_mode_or_start_order() {
    fails(&cronjob("schedule = \"@daily\"\n", "name = \"x\"\n"), 6, 8, "cronjob[0].job.name", "expected no name here");
    fails(
        &cronjob("schedule = \"@daily\"\n", "mode = \"every-board\"\n"),
        6,
        8,
        "cronjob[0].job.mode",
        "expected no mode",
    );
    fails(&cronjob("schedule = \"@daily\"\n", "after = [\"db\"]\n"), 6, 9, "cronjob[0].job.after", "no start order");
    fails(
        &cronjob("schedule = \"@daily\"\n", "replicas = 2\n"),
        6,
        12,
        "cronjob[0].job.replicas",
        "a job runs to completion",
    );
}

#[test]
fn cron_job_fields_are_checked() {
    let long =
        format!("[[cronjob]]\nname = \"{}\"\nschedule = \"@daily\"\n[cronjob.job]\nimage = \"b\"\n", "a".repeat(55));
    fails(&long, 2, 8, "cronjob[0].name", "54 at most");
    fails(
        &cronjob("schedule = \"@daily\"\ntimezone = \"../../etc/passwd\"\n", ""),
        4,
        12,
        "cronjob[0].timezone",
        "not a time zone name",
    );
    fails(
        &cronjob("schedule = \"@daily\"\nconcurrency = \"sometimes\"\n", ""),
        4,
        15,
        "cronjob[0].concurrency",
        "allow",
    );
    fails(
        &cronjob("schedule = \"@daily\"\nhistory = { successful = 1000 }\n", ""),
        4,
        26,
        "cronjob[0].history.successful",
        "at most 100",
    );
    fails(
        &cronjob("schedule = \"@daily\"\nstarting_deadline = \"1s\"\n", ""),
        4,
        21,
        "cronjob[0].starting_deadline",
        "at least 10s",
    );
    fails(&cronjob("", ""), 1, 1, "cronjob[0]", "missing field `schedule`");
    let two = format!("{}\n{}", cronjob("schedule = \"@daily\"\n", ""), cronjob("schedule = \"@daily\"\n", ""));
    fails(&two, 8, 8, "cronjob[1].name", "duplicate cronjob name");
}

#[test]
fn an_app_without_a_name_is_refused() {
    fails("[[app]]\nimage = \"b\"\n", 1, 1, "app[0].name", "expected a name");
}

const POD: &str = r#"[[app]]
name = "web"
image = "busybox"
ports = [{ name = "http", container = 8080 }]
env = { MODE = "prod", LEVEL = "info" }
resources = { cpu = "100m", memory = "64Mi" }
[[app.init]]
name = "migrate"
image = "busybox"
command = ["/migrate"]
resources = { cpu = "500m", memory = "16Mi" }
[[app.containers]]
name = "shipper"
image = "busybox"
env = { LEVEL = "debug" }
resources = { cpu = "50m", memory = "32Mi" }
ports = [{ container = 9100 }]
probes = { readiness = { tcp = { port = 9100 } } }
"#;

#[test]
fn an_app_with_init_and_sidecar_containers_parses_into_units_in_start_order() {
    let m = parse_manifest("pod.toml", POD).unwrap();
    let a = &m.apps[0];
    assert!(a.is_pod());
    let units = a.units("web-abc-0");
    let ids: Vec<(&str, &str, Role)> = units.iter().map(|u| (u.id.as_str(), u.name.as_str(), u.role)).collect();
    assert_eq!(
        ids,
        [
            ("web-abc-0.migrate", "migrate", Role::Init(0)),
            ("web-abc-0", "web", Role::Main),
            ("web-abc-0.shipper", "shipper", Role::Sidecar)
        ]
    );
    // What the agent's plan reads every pass, without the specs: the same containers.
    let slots: Vec<(String, &str, Role, String)> =
        a.slots("web-abc-0").into_iter().map(|s| (s.id, s.name, s.role, s.image.to_string())).collect();
    let from_units: Vec<(String, &str, Role, String)> =
        units.iter().map(|u| (u.id.clone(), u.name.as_str(), u.role, u.spec.image.to_string())).collect();
    assert_eq!(slots, from_units);
    assert_eq!(replica_of("web-abc-0.shipper"), "web-abc-0");
    assert_eq!(replica_of("web-abc-0"), "web-abc-0");
    let shipper = &units[2].spec;
    assert_eq!(shipper.env.get(&EnvName("LEVEL".into())).map(String::as_str), Some("debug"), "its env over the app's");
    assert_eq!(shipper.env.get(&EnvName("MODE".into())).map(String::as_str), Some("prod"));
    assert_eq!(shipper.ports.len(), 1);
    assert!(units[0].spec.probes.is_empty() && units[0].spec.restart == RestartPolicy::OnFailure);
    assert!(units[1].spec.containers.is_empty() && units[1].spec.ports[0].container.0 == 8080);
    // The board is asked for the running containers together, or the largest init if more.
    assert_eq!(a.requests(), (500, (64 + 32) << 20));
    let again = toml::to_string(&m).unwrap();
    assert_eq!(parse_manifest("again.toml", &again).unwrap(), m, "{again}");
}

#[test]
fn a_pods_containers_are_checked_where_they_are_written() {
    let dup = POD.replace("name = \"shipper\"", "name = \"migrate\"");
    fails(&dup, 13, 8, "app[0].containers[0].name", "\"migrate\" is another container's name");
    let own = POD.replace("name = \"shipper\"", "name = \"web\"");
    fails(&own, 13, 8, "app[0].containers[0].name", "the app's own container's name");
    let port = POD.replace("container = 9100 }]", "container = 8080 }]");
    fails(&port, 17, 24, "app[0].containers[0].ports[0].container", "port 8080 is the app's own container's");
    let probe = POD.replace("tcp = { port = 9100 }", "tcp = { port = 8080 }");
    fails(&probe, 18, 41, "app[0].containers[0].probes.readiness.tcp.port", "found port 8080");
    let init = POD.replace("command = [\"/migrate\"]", "command = [\"/migrate\"]\nrestart = \"always\"");
    fails(&init, 11, 11, "app[0].init[0].restart", "an init container runs to completion");
    let job = POD.replace("[[app", "[[job").replace("ports = [{ name = \"http\", container = 8080 }]\n", "");
    let job = job.replace("probes = { readiness = { tcp = { port = 9100 } } }", "restart = \"always\"");
    fails(&job, 17, 11, "job[0].containers[0].restart", "a job's containers are not restarted in place");
    let bad = POD.replace("name = \"shipper\"", "name = \"Shipper\"");
    fails(&bad, 13, 8, "app[0].containers[0].name", "DNS label");
}

const INGRESS: &str = r#"[[ingress]]
name = "site"
host = "shop.lan"
tls = { secret = "shop-cert" }
max_body = "10Mi"
timeouts = { read = "30s" }
[[ingress.paths]]
path = "/api"
service = "api"
port = 80
[[ingress.paths]]
path = "/"
service = "web"
port = "http"
"#;

#[test]
fn an_ingress_parses_with_its_paths_and_tls() {
    let m = parse_manifest("i.toml", INGRESS).unwrap();
    let i = &m.ingresses[0];
    let b: Vec<(String, PathMatch, &str)> = i.backends().into_iter().map(|(p, m, s, _)| (p, m, s.as_str())).collect();
    assert_eq!(b, [("/api".into(), PathMatch::Prefix, "api"), ("/".into(), PathMatch::Prefix, "web")]);
    assert!(i.redirects(), "with TLS, http:// redirects by default");
    assert_eq!(i.max_body.unwrap().0, 10 << 20);
    let again = toml::to_string(&m).unwrap();
    assert_eq!(parse_manifest("again.toml", &again).unwrap(), m, "{again}");
    let one = "[[ingress]]\nname = \"g\"\nhost = \"*.lan\"\nservice = \"grafana\"\nport = 3000\n";
    let m = parse_manifest("i.toml", one).unwrap();
    assert_eq!(m.ingresses[0].backends().len(), 1);
    assert!(!m.ingresses[0].redirects());
}

#[test]
fn an_ingress_refuses_what_would_reach_the_proxy_unchecked() {
    let host = INGRESS.replace("shop.lan", "shop.lan/evil");
    fails(&host, 3, 8, "ingress[0].host", "expected a DNS name");
    let wild = INGRESS.replace("shop.lan", "*");
    fails(&wild, 3, 8, "ingress[0].host", "expected a DNS name");
    let placeholder = INGRESS.replace("path = \"/api\"", "path = \"/{http.request.uri}\"");
    fails(&placeholder, 8, 8, "ingress[0].paths[0].path", "has '{'");
    let dots = INGRESS.replace("path = \"/api\"", "path = \"/a/../admin\"");
    fails(&dots, 8, 8, "ingress[0].paths[0].path", "\"..\" segments");
    let twice = INGRESS.replace("path = \"/api\"", "path = \"/\"");
    fails(&twice, 12, 8, "ingress[0].paths[1].path", "listed twice");
    let both = INGRESS.replace("tls = { secret = \"shop-cert\" }", "tls = { secret = \"shop-cert\", acme = true }");
    fails(&both, 4, 7, "ingress[0].tls", "expected one of");
    let acme_wild = INGRESS.replace("shop.lan", "*.shop.lan").replace("secret = \"shop-cert\"", "acme = true");
    fails(&acme_wild, 4, 16, "ingress[0].tls.acme", "wildcard");
    let body = INGRESS.replace("10Mi", "2Gi");
    fails(&body, 5, 12, "ingress[0].max_body", "at most 1Gi");
    let none = "[[ingress]]\nname = \"x\"\nhost = \"x.lan\"\n";
    fails(none, 1, 1, "ingress[0].service", "expected a service and port");
}

#[test]
fn registries_are_checked_by_their_hosts_parts() {
    let ok = parse_manifest(
        "r.toml",
        "[[registry]]\nname = \"hub\"\nhost = \"docker.io\"\nsecret = \"hub\"\nmirrors = [\"cache.lan:5000\", \"10.0.0.2:5000\"]\n",
    )
    .unwrap();
    assert_eq!(ok.registries[0].mirrors.len(), 2);
    let bad = |text: &str| parse_manifest("r.toml", text).unwrap_err().to_string();
    let e = bad("[[registry]]\nname = \"x\"\nhost = \"lan\"\n");
    assert!(
        e.contains("r.toml:3") && e.contains("registry[0].host") && e.contains("\"lan\" is not a registry host"),
        "{e}"
    );
    let e = bad("[[registry]]\nname = \"x\"\nhost = \"a.lan/evil\"\n");
    assert!(e.contains("is not a registry host"), "{e}");
    let e = bad(
        "[[registry]]\nname = \"x\"\nhost = \"a.lan\"\nmirrors = [\"a.lan\", \"b.lan\", \"b.lan\", \"user@c.lan\"]\n",
    );
    assert!(e.contains("a registry is not its own mirror"), "{e}");
    assert!(e.contains("b.lan is listed twice"), "{e}");
    assert!(e.contains("\"user@c.lan\" is not a registry host"), "{e}");
    let e = bad("[[registry]]\nname = \"x\"\nhost = \"a.lan\"\n[[registry]]\nname = \"y\"\nhost = \"a.lan\"\n");
    assert!(e.contains("a.lan has two [[registry]] objects"), "{e}");
    let e = bad("[[registry]]\nname = \"x\"\nhost = \"a.lan\"\npassword = \"hunter2\"\n");
    assert!(e.contains("unknown field `password`"), "{e}");
}
