//! `[[registry]]` objects end to end: a private registry (Debian's docker-registry with htpasswd)
//! whose credentials come from a secret, and a registry reached only through its mirror — on a
//! board whose agent.toml names no registry at all. The credentials reach the board that pulls,
//! in memory only.

use bramble_proto::model::ReplicaPhase;
use bramble_tests::registry::Registry;
use bramble_tests::{ok, text, wait_for, Cluster, ClusterOptions};
use std::process::Command;
use std::time::Duration;

fn running(c: &Cluster, app: &str) -> bool {
    c.replicas_of(app).iter().any(|r| r.phase == ReplicaPhase::Running)
}

/// The replica's reason (pull errors land there).
fn reason(c: &Cluster, app: &str) -> String {
    c.replicas_of(app).iter().map(|r| r.reason.clone()).collect()
}

#[test]
fn credentials_from_a_secret_and_a_mirror_in_front_of_a_registry_out_of_reach() {
    let c = Cluster::start(ClusterOptions { agents: 1, ..Default::default() });
    let (ns, ip) = (c.lab.ns(0), c.lab.addr(0));
    let password = format!("rasp-{}", bramble_proto::time::now_ms());
    let out = Command::new("htpasswd")
        .args(["-Bbn", "pi", &password])
        .output()
        .expect("htpasswd (apt-get install apache2-utils; scripts/test does)");
    assert!(out.status.success());
    let htpasswd = c.dir.path().join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let private = Registry::start_in_netns_on(&ns, &ip, 5001, Some(&htpasswd));
    let mirror = Registry::start_in_netns_on(&ns, &ip, 5002, None);
    let layout = c.dir.path().join("layout");
    bramble_tests::testimages::busybox_layout(&layout, "1");
    let push = |dest: &str, creds: Option<&str>| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some(cr) = creds {
            cmd.args(["--dest-creds", cr]);
        }
        let out = cmd.arg(format!("oci:{}:1", layout.display())).arg(format!("docker://{dest}")).output().unwrap();
        assert!(out.status.success(), "skopeo copy to {dest}: {}", text(&out.stderr));
    };
    push(&format!("{}/private/busybox:1", private.addr), Some(&format!("pi:{password}")));
    push(&format!("{}/bramble/busybox:1", mirror.addr), None);
    // Nothing listens on 5003: the "upstream" is out of reach, its mirror is not.
    let upstream = format!("{ip}:5003");

    let app = |name: &str, image: &str| {
        format!(
            "[[app]]\nname = \"{name}\"\nimage = \"{image}\"\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        )
    };
    let apps = c.write(
        "apps.toml",
        &(app("priv", &format!("{}/private/busybox:1", private.addr))
            + &app("mirrored", &format!("{upstream}/bramble/busybox:1"))),
    );
    ok(c.cli(&["apply", "-f", &apps]), "apply apps");
    // Without [[registry]] objects: HTTPS to a plain-HTTP registry, and an upstream that is down.
    for (name, host) in [("priv", &private.addr), ("mirrored", &upstream)] {
        wait_for(&format!("{name}: cannot reach {host}"), Duration::from_secs(60), || {
            reason(&c, name).contains(&format!("cannot reach registry {host}")).then_some(())
        });
    }
    let regs = |secret: Option<&str>| {
        format!(
            "[[registry]]\nname = \"private\"\nhost = \"{}\"\ninsecure = true\n{}\n\
             [[registry]]\nname = \"upstream\"\nhost = \"{upstream}\"\ninsecure = true\nmirrors = [\"{}\"]\n\n\
             [[registry]]\nname = \"mirror\"\nhost = \"{}\"\ninsecure = true\n",
            private.addr,
            secret.map(|s| format!("secret = \"{s}\"")).unwrap_or_default(),
            mirror.addr,
            mirror.addr
        )
    };
    // Plain HTTP said, no credentials yet: the private one asks for them; the mirror serves the
    // other while its upstream stays down.
    let said = ok(c.cli(&["apply", "-f", &c.write("plain.toml", &regs(None))]), "apply registries");
    assert!(said.contains("registry/private created") && said.contains("registry/upstream created"), "{said}");
    wait_for("the private pull refused for want of credentials", Duration::from_secs(60), || {
        reason(&c, "priv").contains("asks for a user name and password").then_some(())
    });
    wait_for("mirrored running from the mirror", Duration::from_secs(90), || running(&c, "mirrored").then_some(()));

    // A registry naming a secret that does not exist, or one without credentials: refused.
    let file = c.write("registries.toml", &regs(Some("regcred")));
    let refused = c.cli(&["apply", "-f", &file]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("secret regcred does not exist"), "{}", text(&refused.stderr));
    ok(c.cli(&["secret", "create", "notcreds", "--from-literal", "motd=hi"]), "secret");
    let refused = c.cli(&["apply", "-f", &c.write("registries2.toml", &regs(Some("notcreds")))]);
    assert!(text(&refused.stderr).contains("secret notcreds holds motd: expected username and password"));

    ok(
        c.cli(&[
            "secret",
            "create",
            "regcred",
            "--from-literal",
            "username=pi",
            "--from-literal",
            &format!("password={password}"),
        ]),
        "secret create",
    );
    let said = ok(c.cli(&["apply", "-f", &file]), "apply registries with the secret");
    assert!(said.contains("registry/private configured"), "{said}");
    wait_for("priv running", Duration::from_secs(90), || running(&c, "priv").then_some(()));
    // diff shows what a file would change of a registry: nothing for the applied one.
    assert_eq!(c.cli(&["diff", "-f", &file]).status.code(), Some(0));
    let d = c.cli(&["diff", "-f", &c.write("plain2.toml", &regs(None))]);
    assert_eq!(d.status.code(), Some(1));
    assert!(text(&d.stdout).contains("-secret = \"regcred\""), "{}", text(&d.stdout));

    // Listed without a credential; the board's log says what it got, never the password.
    let table = ok(c.cli(&["get", "registries"]), "get registries");
    assert!(table.starts_with("NAME") && table.contains("regcred") && table.contains(&mirror.addr), "{table}");
    let json = ok(c.cli(&["get", "registries", "-o", "json"]), "get registries -o json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let log = std::fs::read_to_string(c.dir.path().join("agent-1.log")).unwrap_or_default();
    assert!(log.contains("registry settings from the leader"), "{log}");
    for shown in [&table, &json, &log] {
        assert!(!shown.contains(&password), "the password was shown");
    }
    // Not on the board's disk: agent.toml holds no registry, the data dir no password.
    let toml = std::fs::read_to_string(c.dir.path().join("agent-1.toml")).unwrap();
    assert!(!toml.contains("images.registry"), "{toml}");
    let mut stack = vec![c.agent_dir(1)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() && !p.ends_with("images") => stack.push(p),
                Ok(t) if t.is_file() => {
                    let b = std::fs::read(&p).unwrap_or_default();
                    assert!(!b.windows(password.len()).any(|w| w == password.as_bytes()), "{} holds it", p.display());
                }
                _ => {}
            }
        }
    }

    // Deleted: the board forgets them; a new pull from the private registry fails again.
    ok(c.cli(&["delete", "registry", "private"]), "delete registry");
    wait_for("the board drops the settings", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(c.dir.path().join("agent-1.log")).unwrap_or_default();
        log.contains(&format!("dropped=[\"{}\"]", private.addr)).then_some(())
    });
}

#[test]
fn prefetch_warms_every_board_with_the_registrys_credentials_for_that_pull() {
    let c = Cluster::start(ClusterOptions { agents: 2, ..Default::default() });
    let (ns, ip) = (c.lab.ns(0), c.lab.addr(0));
    let password = format!("pf-{}", bramble_proto::time::now_ms());
    let out = Command::new("htpasswd").args(["-Bbn", "pi", &password]).output().expect("htpasswd");
    let htpasswd = c.dir.path().join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let private = Registry::start_in_netns_on(&ns, &ip, 5001, Some(&htpasswd));
    let layout = c.dir.path().join("layout");
    bramble_tests::testimages::busybox_layout(&layout, "1");
    let image = format!("{}/private/busybox:1", private.addr);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .args(["--dest-creds", &format!("pi:{password}")])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    ok(
        c.cli(&[
            "secret",
            "create",
            "regcred",
            "--from-literal",
            "username=pi",
            "--from-literal",
            &format!("password={password}"),
        ]),
        "secret",
    );
    let reg = format!(
        "[[registry]]\nname = \"private\"\nhost = \"{}\"\ninsecure = true\nsecret = \"regcred\"\n",
        private.addr
    );
    ok(c.cli(&["apply", "-f", &c.write("reg.toml", &reg)]), "apply registry");

    // No replica uses the registry: the boards get its credentials with the prefetch, for it only.
    let said = ok(c.cli(&["image", "prefetch", &image]), "prefetch");
    for b in ["board-1", "board-2"] {
        assert!(said.contains(&format!("{b}: {image} ")) && said.contains("linux/amd64"), "{said}");
        let ls = ok(c.cli(&["image", "ls", "--node", b]), "image ls");
        assert!(ls.contains(&image), "{b}: {ls}");
    }
    let json = ok(c.cli(&["image", "prefetch", &image, "--node", "board-2", "-o", "json"]), "prefetch -o json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{json}");
    assert_eq!(v[0]["node"], "board-2");
    assert!(v[0]["image"]["digest"].as_str().unwrap().starts_with("sha256:"), "{json}");
    for i in 1..=2 {
        let log = std::fs::read_to_string(c.dir.path().join(format!("agent-{i}.log"))).unwrap_or_default();
        assert!(!log.contains(&password), "the password in board-{i}'s log");
        assert!(!log.contains("registry settings from the leader") || !log.contains(&private.addr));
    }

    // What cannot be pulled says so per board, and the exit code says it failed.
    let missing = c.cli(&["image", "prefetch", &format!("{}/private/busybox:nope", private.addr)]);
    assert_eq!(missing.status.code(), Some(1));
    let out = text(&missing.stdout);
    assert!(out.contains("board-1: failed:") && out.contains("not found"), "{out}");
    assert!(text(&missing.stderr).contains("2 of 2 boards could not pull it"), "{}", text(&missing.stderr));
    let nobody = c.cli(&["image", "prefetch", &image, "--node", "nope"]);
    assert_eq!(nobody.status.code(), Some(4), "{}", text(&nobody.stderr));
    assert!(text(&nobody.stderr).contains("no node nope"));
    let bad = c.cli(&["image", "prefetch", "UPPER/Case"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("invalid image reference"), "{}", text(&bad.stderr));
}
