//! Users and roles end to end, with a real leader and the real CLI: certificates made from CSRs
//! (the key stays with the CLI), each role allowed what it should and refused the rest with exit
//! code 5 and the role it needs, every write recorded with its author, a revoked user refused on
//! its next connection (and after a leader restart), an expired certificate refused with a message
//! that says so.

use bramble_tests::{ok, text};
use bramble_tests::{Cluster, ClusterOptions};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::Duration;

/// Refused with exit code 5 and a message containing `says`.
fn refused(out: std::process::Output, says: &str) {
    assert_eq!(out.status.code(), Some(5), "stdout {} stderr {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains(says), "{:?} should say {says:?}", text(&out.stderr));
}

#[test]
fn roles_limit_what_users_do_writes_name_their_author_and_revoked_or_expired_certificates_are_refused() {
    let mut c = Cluster::start(ClusterOptions { agents: 1, ..Default::default() });
    let dir = c.dir.path().to_path_buf();
    let ci = dir.join("ci.toml");
    let viewer = dir.join("viewer.toml");
    let said = ok(
        c.cli(&["user", "create", "ci", "--role", "deployer", "--ttl", "30d", "--out", ci.to_str().unwrap()]),
        "create ci",
    );
    assert!(said.starts_with("user/ci created (deployer, valid for 29d"), "{said}");
    // The old spelling of --out still works for a release, with a warning.
    let old = c.cli(&["user", "create", "watcher", "--role", "viewer", "-o", viewer.to_str().unwrap()]);
    assert!(old.status.success(), "{}", String::from_utf8_lossy(&old.stderr));
    assert!(String::from_utf8_lossy(&old.stderr).contains("-o FILE (--output-file) is deprecated: use --out FILE"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ci).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the config holds a key");
    let again = c.cli(&["user", "create", "ci", "--role", "admin", "--out", dir.join("x.toml").to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(6), "{}", text(&again.stderr));
    assert!(!dir.join("x.toml").exists(), "no config left behind for a refused user");
    let exists = c.cli(&["user", "create", "y", "--role", "viewer", "--out", ci.to_str().unwrap()]);
    assert!(text(&exists.stderr).contains("File exists"), "{}", text(&exists.stderr));
    let bad_role = c.cli(&["user", "create", "z", "--role", "root", "--out", dir.join("z.toml").to_str().unwrap()]);
    assert_eq!(bad_role.status.code(), Some(2), "a usage error: {}", text(&bad_role.stderr));

    // The private key never went to the leader: only the CSR did.
    let key = std::fs::read_to_string(&ci).unwrap();
    let key = key.split("key = \"\"\"\n").nth(1).unwrap().lines().nth(1).unwrap().to_string();
    let store = std::fs::read(c.leader_dir().join("store.redb")).unwrap();
    assert!(!store.windows(key.len()).any(|w| w == key.as_bytes()), "a line of the key is in the leader's store");

    let manifest = dir.join("web.toml");
    std::fs::write(&manifest, "[[app]]\nname = \"web\"\nimage = \"reg.lan/web:1\"\nreplicas = 0\n").unwrap();
    let f = manifest.to_str().unwrap();

    // A viewer reads, and nothing else.
    ok(c.cli_as(&viewer, &["get", "nodes"]), "viewer get nodes");
    ok(c.cli_as(&viewer, &["events"]), "viewer events");
    refused(c.cli_as(&viewer, &["apply", "-f", f]), "this needs the deployer role; you are viewer:watcher");
    refused(c.cli_as(&viewer, &["secret", "create", "s", "--from-literal", "a=b"]), "needs the deployer role");

    // A deployer deploys and writes secrets; nodes, tokens, users and exec are not theirs.
    ok(c.cli_as(&ci, &["apply", "-f", f]), "deployer apply");
    ok(c.cli_as(&ci, &["scale", "app", "web", "--replicas", "0"]), "deployer scale");
    ok(c.cli_as(&ci, &["secret", "create", "db", "--from-literal", "pw=x"]), "deployer secret");
    ok(c.cli_as(&ci, &["describe", "secret", "db"]), "deployer describe secret (keys only)");
    refused(c.cli_as(&ci, &["token", "create"]), "this needs the admin role; you are deployer:ci");
    refused(c.cli_as(&ci, &["label", "node", "board-1", "a=b"]), "needs the admin role");
    refused(c.cli_as(&ci, &["user", "ls"]), "needs the admin role");
    refused(c.cli_as(&ci, &["exec", "app/web", "--", "true"]), "needs the admin role");
    refused(c.cli_as(&ci, &["delete", "node", "board-1"]), "needs the admin role");

    // Every write names its author.
    let app = ok(c.cli(&["describe", "app", "web"]), "describe app");
    assert!(app.contains("Changed by:  deployer:ci"), "{app}");
    let secret = ok(c.cli(&["describe", "secret", "db"]), "describe secret");
    assert!(secret.contains("Changed by:  deployer:ci"), "{secret}");
    let events = ok(c.cli(&["events"]), "events");
    assert!(events.contains("app/web created by deployer:ci"), "{events}");
    assert!(events.contains("user ci (deployer) created by admin:admin"), "{events}");
    ok(c.cli_as(&ci, &["delete", "secret", "db"]), "deployer delete secret");
    assert!(ok(c.cli(&["events"]), "events").contains("secret/db deleted by deployer:ci"));

    // user ls: the first admin too; revoking refuses the next connection, also after a restart.
    let users = ok(c.cli(&["user", "ls"]), "user ls");
    for (name, role, by) in [("admin", "admin", "bramble-leader init"), ("ci", "deployer", "admin:admin")] {
        assert!(users.lines().any(|l| l.starts_with(name) && l.contains(role) && l.contains(by)), "{users}");
    }
    ok(c.cli(&["user", "revoke", "ci"]), "revoke");
    refused(c.cli_as(&ci, &["get", "apps"]), "the certificate of deployer:ci was revoked");
    assert!(ok(c.cli(&["user", "ls"]), "ls").lines().any(|l| l.starts_with("ci") && l.contains("revoked")));
    c.leader.take().unwrap().stop(Signal::SIGTERM);
    c.start_leader();
    bramble_tests::wait_for("the leader back", Duration::from_secs(30), || {
        c.cli(&["get", "nodes"]).status.success().then_some(())
    });
    refused(c.cli_as(&ci, &["get", "apps"]), "was revoked");
    ok(c.cli_as(&viewer, &["get", "apps"]), "others still get in");
    // The name may be given a new certificate; the old one stays refused.
    let ci2 = dir.join("ci2.toml");
    ok(c.cli(&["user", "create", "ci", "--role", "deployer", "--out", ci2.to_str().unwrap()]), "ci again");
    ok(c.cli_as(&ci2, &["get", "apps"]), "the new certificate");
    refused(c.cli_as(&ci, &["get", "apps"]), "was revoked");

    // An expired certificate: signed here by the cluster CA for 1 s, then refused with the reason.
    let expired = expired_config(&c.leader_dir(), &ci2, &dir.join("old.toml"));
    std::thread::sleep(Duration::from_secs(2));
    refused(c.cli_as(&expired, &["get", "apps"]), "expired");
    c.remove_containers();
}

/// A copy of CLI config `like` with a certificate for viewer:old valid for one second.
fn expired_config(leader_dir: &Path, like: &Path, out: &Path) -> std::path::PathBuf {
    use bramble_transport::admin::AdminConfig;
    use bramble_transport::pki::{user_csr, Ca, Role};
    let pki = leader_dir.join("pki");
    let ca = Ca::load(
        &std::fs::read_to_string(pki.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(pki.join("ca.key")).unwrap(),
    )
    .unwrap();
    let (csr, key) = user_csr("old").unwrap();
    let (cert, _) = ca.sign_user_csr(&csr, "old", Role::Viewer, Duration::from_secs(1)).unwrap();
    let base = AdminConfig::parse("c", &std::fs::read_to_string(like).unwrap()).unwrap();
    let cfg = AdminConfig { cert, key, ..base };
    std::fs::write(out, cfg.render()).unwrap();
    out.to_path_buf()
}
