//! Certificates that renew themselves, for real: with one-minute lifetimes (test config) a board's
//! agent renews its certificate over its session two thirds in — a new key and CSR — without
//! leaving the cluster or restarting a container, and reconnects with it after a restart; the
//! leader renews its own serving certificate without a restart (the CLI keeps working); a board
//! whose certificate expired (it was off too long) is refused with a message that says so.

use bramble_proto::model::{ConditionStatus, EventReason, ReplicaPhase};
use bramble_tests::ok;
use bramble_tests::ClusterOptions;
use std::time::Duration;

#[test]
fn board_and_leader_certificates_renew_themselves_and_an_expired_one_is_refused() {
    let opts = ClusterOptions { agents: 1, cert_lifetime: Some("1m"), ..Default::default() };
    let (mut c, _registry, image) = bramble_tests::cluster::with_busybox_opts(opts, "");
    let manifest = c.dir.path().join("app.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[app]]\nname = \"steady\"\nimage = \"{image}\"\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        ),
    )
    .unwrap();
    ok(c.cli(&["apply", "-f", manifest.to_str().unwrap()]), "apply");
    let first = bramble_tests::wait_for("the app running", Duration::from_secs(60), || {
        c.replicas_of("steady").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    let node_crt = c.agent_dir(1).join("node.crt");
    let node_key = c.agent_dir(1).join("node.key");
    let leader_crt = c.leader_dir().join("pki/leader.crt");
    let (crt0, key0) = (std::fs::read_to_string(&node_crt).unwrap(), std::fs::read_to_string(&node_key).unwrap());
    let described = ok(c.cli(&["describe", "node", "board-1"]), "describe node");
    assert!(described.contains("Certificate:   expires in"), "{described}");

    // Two thirds into the minute (~35 s after joining) the agent renews: a new key too.
    bramble_tests::wait_for("the board's certificate renewed", Duration::from_secs(90), || {
        (std::fs::read_to_string(&node_crt).unwrap() != crt0).then_some(())
    });
    assert_ne!(std::fs::read_to_string(&node_key).unwrap(), key0, "a new key");
    let leader0 = std::fs::read_to_string(&leader_crt).unwrap();
    // The leader's own: shortened to a minute at start, then renewed again two thirds in.
    bramble_tests::wait_for("the leader's certificate renewed", Duration::from_secs(90), || {
        (std::fs::read_to_string(&leader_crt).unwrap() != leader0).then_some(())
    });
    ok(c.cli(&["get", "nodes"]), "the CLI against the renewed serving certificate");
    // Nothing left: the board stayed Ready, the container was not touched.
    let events = ok(c.cli(&["events"]), "events");
    assert!(events.contains("certificate renewed, valid for"), "{events}");
    let evs: Vec<bramble_proto::model::Event> =
        serde_json::from_str(&ok(c.cli(&["events", "-o", "json"]), "events json")).unwrap();
    assert!(!evs.iter().any(|e| e.reason == EventReason::NodeNotReady), "the board never left: {events}");
    let now = c.replicas_of("steady").remove(0);
    assert_eq!((now.meta.name, now.container_id, now.restarts), (first.meta.name, first.container_id, 0));
    assert_eq!(c.node(1).ready.status, ConditionStatus::True);

    // A restarted agent connects with the renewed key and certificate.
    c.kill_agent(1);
    c.start_agent(1);
    c.wait_status(1, ConditionStatus::True, Duration::from_secs(30));

    // Off for too long: its certificate expired. It says so, and the leader does not let it in.
    c.kill_agent(1);
    let pki = c.leader_dir().join("pki");
    let ca = bramble_transport::pki::Ca::load(
        &std::fs::read_to_string(pki.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(pki.join("ca.key")).unwrap(),
    )
    .unwrap();
    let key = std::fs::read_to_string(&node_key).unwrap();
    let csr = bramble_transport::pki::node_csr_with_key("board-1", &key).unwrap();
    let (short, _) = ca.sign_node_csr_for(&csr, "board-1", Duration::from_secs(1)).unwrap();
    std::fs::write(&node_crt, short).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.start_agent(1);
    let log = c.dir.path().join("agent-1.log");
    bramble_tests::wait_for("the agent saying its certificate expired", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).ok()?.contains("this board's certificate expired").then_some(())
    });
    let view = c.wait_status(1, ConditionStatus::False, Duration::from_secs(30));
    assert_eq!(view.ready.status, ConditionStatus::False);
    c.kill_agent(1);
    c.remove_containers();
}
