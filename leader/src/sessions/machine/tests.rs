//! What one board is sent and in which order, with the store's secrets and configs as a map.

use super::*;
use bramble_proto::manifest::parse_manifest;
use bramble_proto::network::ClusterNetwork;
use bramble_proto::wire::Assignment;
use std::sync::Arc;

/// `[[app]]` `web` using secret `db` (by env) and config `site`; `plain` using neither.
fn set(replicas: &[(&str, &str)]) -> DesiredSet {
    let m = parse_manifest(
        "t.toml",
        r#"
[[app]]
name = "web"
image = "reg.lan/web:1"
secret_env = { DB_PASSWORD = "db/password" }
configs = [{ name = "site", path = "/etc/site" }]

[[app]]
name = "plain"
image = "reg.lan/plain:1"
"#,
    )
    .unwrap();
    replicas
        .iter()
        .map(|(replica, app)| {
            let spec = m.apps.iter().find(|a| a.name.as_str() == *app).unwrap().clone();
            let a = Assignment {
                replica: replica.to_string(),
                app: app.to_string(),
                revision: "r1".into(),
                spec: Arc::new(spec),
            };
            (replica.to_string(), a)
        })
        .collect()
}

fn view(version: u64) -> std::sync::Arc<NetworkView> {
    std::sync::Arc::new(NetworkView {
        version,
        cluster: ClusterNetwork::default(),
        nodes: BTreeMap::from([("b1".to_string(), (Some("10.42.0.0/24".parse().unwrap()), None))]),
        services: Default::default(),
        control_ports: vec![],
        nodes_changed: None,
    })
}

/// The store: (kind, name) → version and files.
type Store = BTreeMap<(&'static str, &'static str), u64>;

fn loader(store: &Store) -> impl FnMut(Payload, &str) -> Result<Option<Versioned>, String> + '_ {
    |kind, name| {
        let k = match kind {
            Payload::Secrets => "secret",
            Payload::Configs => "config",
            Payload::Registries => "registry",
        };
        Ok(store.iter().find(|((sk, sn), _)| *sk == k && *sn == name).map(|(_, v)| (*v, BTreeMap::new())))
    }
}

/// A short name for each message, in order.
fn kinds(msgs: &[LeaderMsg]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m {
            LeaderMsg::Network { full, .. } => format!("network(full={full})"),
            LeaderMsg::Secrets { put, drop, full } => format!(
                "secrets(put={:?},drop={drop:?}{})",
                put.iter().map(|p| (&p.name, p.version)).collect::<Vec<_>>(),
                if *full { ",full" } else { "" }
            ),
            LeaderMsg::Configs { put, drop, full } => format!(
                "configs(put={:?},drop={drop:?}{})",
                put.iter().map(|p| (&p.name, p.version)).collect::<Vec<_>>(),
                if *full { ",full" } else { "" }
            ),
            LeaderMsg::Registries { put, drop, full } => format!(
                "registries(put={:?},drop={drop:?}{})",
                put.iter().map(|p| (&p.name, p.version)).collect::<Vec<_>>(),
                if *full { ",full" } else { "" }
            ),
            LeaderMsg::Desired { full, upsert, remove } => format!(
                "desired(full={full},upsert={:?},remove={remove:?})",
                upsert.iter().map(|a| a.replica.as_str()).collect::<Vec<_>>()
            ),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn network_first_then_the_payloads_the_set_needs_then_the_set() {
    let store = Store::from([(("secret", "db"), 1), (("config", "site"), 4), (("secret", "unused"), 1)]);
    let mut s = Session::new("b1");
    let out = s.poll(Some(&view(1)), Some(set(&[("web-1", "web")])), false, loader(&store));
    assert_eq!(
        kinds(&out),
        [
            "network(full=true)",
            r#"secrets(put=[("db", 1)],drop=[],full)"#,
            r#"configs(put=[("site", 4)],drop=[],full)"#,
            "registries(put=[],drop=[],full)",
            r#"desired(full=true,upsert=["web-1"],remove=[])"#,
        ],
        "a secret no replica here uses is never sent"
    );
    // Nothing changed: nothing sent, and the store is not read.
    assert!(!s.reads_store(Some(&set(&[("web-1", "web")]))));
    assert!(s.poll(Some(&view(1)), Some(set(&[("web-1", "web")])), false, |_, _| panic!("no read")).is_empty());
}

#[test]
fn nothing_of_the_set_before_the_controllers_first_pass() {
    let mut s = Session::new("b1");
    let out = s.poll(Some(&view(1)), None, false, |_, _| panic!("no set, no read"));
    assert_eq!(kinds(&out), ["network(full=true)"]);
    let out = s.poll(Some(&view(1)), Some(DesiredSet::new()), false, loader(&Store::new()));
    assert_eq!(
        kinds(&out),
        [
            "secrets(put=[],drop=[],full)",
            "configs(put=[],drop=[],full)",
            "registries(put=[],drop=[],full)",
            "desired(full=true,upsert=[],remove=[])"
        ],
        "an empty set is still said, whole; so are the payloads it needs (none: the board drops what it holds)"
    );
}

#[test]
fn a_changed_secret_is_sent_again_and_one_no_longer_used_is_dropped() {
    let mut store = Store::from([(("secret", "db"), 1), (("config", "site"), 1)]);
    let mut s = Session::new("b1");
    s.poll(None, Some(set(&[("web-1", "web")])), false, loader(&store));
    // Rotated: only after the driver says a payload changed is the store read again.
    store.insert(("secret", "db"), 2);
    assert!(!s.reads_store(Some(&set(&[("web-1", "web")]))));
    s.payloads_changed();
    assert!(s.reads_store(Some(&set(&[("web-1", "web")]))));
    let out = s.poll(None, Some(set(&[("web-1", "web")])), false, loader(&store));
    assert_eq!(kinds(&out), [r#"secrets(put=[("db", 2)],drop=[])"#]);
    // web moves away: its secret and config leave the board with it, before the set says so.
    let out = s.poll(None, Some(set(&[("plain-1", "plain")])), false, loader(&store));
    assert_eq!(
        kinds(&out),
        [
            r#"secrets(put=[],drop=["db"])"#,
            r#"configs(put=[],drop=["site"])"#,
            r#"desired(full=false,upsert=["plain-1"],remove=["web-1"])"#,
        ]
    );
}

#[test]
fn a_secret_created_after_its_replica_is_sent_when_it_appears() {
    let mut store = Store::new();
    let mut s = Session::new("b1");
    let out = s.poll(None, Some(set(&[("web-1", "web")])), false, loader(&store));
    assert_eq!(
        kinds(&out),
        [
            "secrets(put=[],drop=[],full)",
            "configs(put=[],drop=[],full)",
            "registries(put=[],drop=[],full)",
            r#"desired(full=true,upsert=["web-1"],remove=[])"#
        ],
        "the replica waits, saying why"
    );
    store.insert(("secret", "db"), 1);
    s.payloads_changed();
    let out = s.poll(None, Some(set(&[("web-1", "web")])), false, loader(&store));
    assert_eq!(kinds(&out), [r#"secrets(put=[("db", 1)],drop=[])"#]);
}

#[test]
fn a_store_that_fails_a_read_does_not_stop_the_set() {
    let mut s = Session::new("b1");
    let out = s.poll(None, Some(set(&[("web-1", "web")])), false, |_, _| Err("etcd: deadline".into()));
    assert_eq!(kinds(&out), [r#"desired(full=true,upsert=["web-1"],remove=[])"#]);
    // The next look says them whole (the failed read sent nothing).
    s.payloads_changed();
    let out = s.poll(None, Some(set(&[("web-1", "web")])), false, |_, _| Ok(Some((1, BTreeMap::new()))));
    assert_eq!(
        kinds(&out),
        [
            r#"secrets(put=[("db", 1)],drop=[],full)"#,
            r#"configs(put=[("site", 1)],drop=[],full)"#,
            r#"registries(put=[("reg.lan", 1)],drop=[],full)"#
        ]
    );
}

#[test]
fn after_a_restore_only_additions_until_every_board_is_seen_then_the_whole_set_once() {
    let store = Store::new();
    let mut s = Session::new("b1");
    let out = s.poll(None, Some(set(&[("plain-1", "plain")])), true, loader(&store));
    assert_eq!(
        kinds(&out),
        [r#"desired(full=false,upsert=["plain-1"],remove=[])"#],
        "held back: a whole set (or whole payloads) would stop what the backup does not know"
    );
    let out = s.poll(None, Some(set(&[("plain-2", "plain")])), true, loader(&store));
    assert_eq!(kinds(&out), [r#"desired(full=false,upsert=["plain-2"],remove=["plain-1"])"#]);
    let out = s.poll(None, Some(set(&[("plain-2", "plain")])), false, loader(&store));
    assert_eq!(
        kinds(&out),
        [
            "secrets(put=[],drop=[],full)",
            "configs(put=[],drop=[],full)",
            "registries(put=[],drop=[],full)",
            r#"desired(full=true,upsert=["plain-2"],remove=[])"#
        ],
        "released: whole, once"
    );
    assert!(s.poll(None, Some(set(&[("plain-2", "plain")])), false, loader(&store)).is_empty());
}

#[test]
fn the_whole_payloads_after_a_restore_carry_what_was_sent_during_the_hold_back() {
    let store = Store::from([(("secret", "db"), 2), (("config", "site"), 1)]);
    let mut s = Session::new("b1");
    let web = || Some(set(&[("web-1", "web")]));
    let out = s.poll(None, web(), true, loader(&store));
    assert_eq!(
        kinds(&out),
        [
            r#"secrets(put=[("db", 2)],drop=[])"#,
            r#"configs(put=[("site", 1)],drop=[])"#,
            r#"desired(full=false,upsert=["web-1"],remove=[])"#
        ],
        "held back: what the set uses is added, nothing else the board holds is touched"
    );
    let out = s.poll(None, web(), false, loader(&store));
    assert_eq!(
        kinds(&out),
        [
            r#"secrets(put=[("db", 2)],drop=[],full)"#,
            r#"configs(put=[("site", 1)],drop=[],full)"#,
            "registries(put=[],drop=[],full)",
            r#"desired(full=true,upsert=["web-1"],remove=[])"#
        ],
        "a whole message replaces what the board holds, so it names db and site again (found by the \
         simulated cluster's random run: the board had dropped them)"
    );
}

#[test]
fn a_new_network_view_is_sent_even_with_nothing_new_for_this_board() {
    let mut s = Session::new("b1");
    s.poll(Some(&view(1)), None, false, |_, _| Ok(None));
    let out = s.poll(Some(&view(2)), None, false, |_, _| Ok(None));
    assert!(matches!(out.as_slice(), [LeaderMsg::Network { full: false, version: 2, .. }]), "{out:?}");
    assert!(s.poll(Some(&view(2)), None, false, |_, _| Ok(None)).is_empty());
}

#[test]
fn a_board_joining_is_an_entry_for_a_current_agent_and_the_whole_part_for_an_older_one() {
    let joined = |version| {
        let mut v = (*view(version)).clone();
        v.nodes.insert("b2".into(), (Some("10.42.1.0/24".parse().unwrap()), Some("192.168.1.12".parse().unwrap())));
        Arc::new(v)
    };
    let mut current = Session::new("b1");
    let mut older = Session::new("b1").without_peer_deltas();
    for s in [&mut current, &mut older] {
        s.poll(Some(&view(1)), None, false, |_, _| Ok(None));
    }
    let out = current.poll(Some(&joined(2)), None, false, |_, _| Ok(None));
    assert!(
        matches!(out.as_slice(), [LeaderMsg::Network { node: None, peers: Some(c), .. }] if c.upsert.len() == 1 && c.upsert[0].node == "b2"),
        "{out:?}"
    );
    let out = older.poll(Some(&joined(2)), None, false, |_, _| Ok(None));
    assert!(
        matches!(out.as_slice(), [LeaderMsg::Network { node: Some(n), peers: None, .. }] if n.peers.len() == 1),
        "{out:?}"
    );
}

/// `[[app]]` `hub` from Docker Hub with a sidecar from `reg.lan`.
fn hub_set() -> DesiredSet {
    let m = parse_manifest(
        "t.toml",
        r#"
[[app]]
name = "hub"
image = "busybox:1.36"
[[app.containers]]
name = "side"
image = "reg.lan/side:1"
"#,
    )
    .unwrap();
    let a = Assignment {
        replica: "hub-1".into(),
        app: "hub".into(),
        revision: "r1".into(),
        spec: Arc::new(m.apps[0].clone()),
    };
    DesiredSet::from([("hub-1".to_string(), a)])
}

#[test]
fn an_agent_from_before_registries_is_sent_none() {
    let store = Store::from([(("registry", "docker.io"), 7)]);
    let mut s = Session::new("b1").without_registries();
    let out = s.poll(None, Some(hub_set()), false, loader(&store));
    assert!(kinds(&out).iter().all(|k| !k.starts_with("registries")), "{:?}", kinds(&out));
}

#[test]
fn registry_settings_go_only_where_replicas_pull_from_that_host_and_leave_with_them() {
    let mut store = Store::from([(("registry", "docker.io"), 7), (("registry", "other.lan"), 1)]);
    let mut s = Session::new("b1");
    let out = s.poll(None, Some(hub_set()), false, loader(&store));
    assert_eq!(
        kinds(&out)[2],
        r#"registries(put=[("docker.io", 7)],drop=[],full)"#,
        "the app's image and its sidecar's hosts are asked for; only those with settings go, never other.lan"
    );
    // The secret behind it rotated (a new version): sent again.
    store.insert(("registry", "docker.io"), 8);
    s.payloads_changed();
    let out = s.poll(None, Some(hub_set()), false, loader(&store));
    assert_eq!(kinds(&out), [r#"registries(put=[("docker.io", 8)],drop=[])"#]);
    // The [[registry]] is deleted: the board forgets it though the replica stays.
    store.remove(&("registry", "docker.io"));
    s.payloads_changed();
    let out = s.poll(None, Some(hub_set()), false, loader(&store));
    assert_eq!(kinds(&out), [r#"registries(put=[],drop=["docker.io"])"#]);
    // Back, then the replica leaves: its settings go with it.
    store.insert(("registry", "docker.io"), 9);
    s.payloads_changed();
    s.poll(None, Some(hub_set()), false, loader(&store));
    let out = s.poll(None, Some(DesiredSet::new()), false, loader(&store));
    assert_eq!(kinds(&out)[0], r#"registries(put=[],drop=["docker.io"])"#);
}
