//! One session's rules, without a leader or a network: messages in, messages and actions out.

use super::*;
use bramble_proto::model::ReplicaPhase;
use bramble_proto::wire::{ApiError, ReplicaStatus, SecretValues};

fn net(version: u64) -> LeaderMsg {
    LeaderMsg::Network { node: None, full: false, upsert: vec![], remove: vec![], version, peers: None }
}

fn statuses(list: &[(&str, ReplicaPhase)]) -> Statuses {
    list.iter().map(|(n, p)| (n.to_string(), ReplicaStatus::new(n, *p))).collect()
}

#[test]
fn the_welcome_sets_the_heartbeat_and_anything_else_ends_the_session() {
    let mut s = Session::new(true);
    let welcome =
        |ms, fence_ms| Session::new(true).welcome(Some(LeaderMsg::Welcome { epoch: 1, heartbeat_ms: ms, fence_ms }));
    let hb = |ms| welcome(ms, 0).unwrap().heartbeat;
    assert_eq!(hb(2000), Duration::from_secs(2));
    assert_eq!(hb(0), Duration::from_millis(100), "a leader cannot make the board spin");
    assert_eq!(hb(u64::MAX), Duration::from_secs(60), "nor go silent");
    let fence = |ms| welcome(1000, ms).unwrap().fence;
    assert_eq!(fence(0), None, "an older leader: runs are never fenced");
    assert_eq!(fence(15_000), Some(Duration::from_secs(15)));
    assert_eq!(fence(1), Some(Duration::from_secs(1)), "not at every hiccup");
    let refused = LeaderMsg::Refused(ApiError {
        leader: Some("10.0.0.2:7443".into()),
        ..ApiError::new(ErrorCode::Unavailable, "standby")
    });
    match s.welcome(Some(refused)) {
        Err(SessionError::Refused { code: ErrorCode::Unavailable, active: Some(a), .. }) => {
            assert_eq!(a, "10.0.0.2:7443")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.welcome(Some(net(1))), Err(SessionError::Unexpected)), "a view before the welcome");
    assert!(matches!(s.welcome(None), Err(SessionError::Closed)));
}

#[test]
fn only_network_views_this_session_passed_on_are_confirmed_and_each_once() {
    let mut s = Session::new(true);
    for v in [3, 4, 6] {
        let out = s.from_leader(net(v)).unwrap();
        assert!(matches!(out.as_slice(), [Output::Network(_)]), "{out:?}");
    }
    assert!(s.network_applied(7).is_none(), "another session's (or leader's) number");
    assert!(matches!(s.network_applied(4), Some(AgentMsg::NetworkApplied { version: 4 })));
    assert!(s.network_applied(4).is_none(), "confirmed once");
    assert!(s.network_applied(3).is_none(), "a view before a confirmed one is forgotten");
    assert!(matches!(s.network_applied(6), Some(AgentMsg::NetworkApplied { version: 6 })));
    // A board without the network controller passes nothing on and confirms nothing.
    let mut s = Session::new(false);
    assert!(s.from_leader(net(1)).unwrap().is_empty());
    assert!(s.network_applied(1).is_none());
}

#[test]
fn the_board_reports_all_at_the_start_then_only_what_changed() {
    let mut s = Session::new(true);
    let images = vec!["reg.lan/web:1".to_string()];
    let volumes = vec!["data".to_string()];
    let mut now = statuses(&[("web-1", ReplicaPhase::Running), ("web-2", ReplicaPhase::Pending)]);
    let first = s.report(&images, &volumes, &now);
    assert!(
        matches!(first.as_slice(), [AgentMsg::Images(_), AgentMsg::Volumes(_), AgentMsg::Status { full: true, replicas }] if replicas.len() == 2),
        "{first:?}"
    );
    assert!(s.report(&images, &volumes, &now).is_empty(), "nothing changed, nothing sent");
    now.insert("web-2".into(), ReplicaStatus::new("web-2", ReplicaPhase::Running));
    let out = s.report(&images, &volumes, &now);
    match out.as_slice() {
        [AgentMsg::Status { full: false, replicas }] => {
            assert_eq!(replicas.iter().map(|r| r.replica.as_str()).collect::<Vec<_>>(), ["web-2"]);
        }
        other => panic!("only web-2's change: {other:?}"),
    }
    let out = s.report(&[], &volumes, &now);
    assert!(matches!(out.as_slice(), [AgentMsg::Images(l)] if l.is_empty()), "an emptied store is said: {out:?}");
}

#[test]
fn renewal_is_asked_after_two_thirds_of_the_life_retried_after_30s_and_its_answer_kept() {
    let mut s = Session::new(true);
    let csr = |n: u32| move || Ok::<_, String>((format!("csr{n}"), format!("key{n}")));
    let renew_at = Some(10_000);
    let out = s.tick(9_999, renew_at, csr(0));
    assert!(matches!(out.as_slice(), [AgentMsg::Heartbeat { seq: 1 }]), "not due yet: {out:?}");
    let out = s.tick(10_000, renew_at, csr(1));
    assert!(
        matches!(out.as_slice(), [AgentMsg::Heartbeat { seq: 2 }, AgentMsg::Renew { csr_pem }] if csr_pem == "csr1"),
        "{out:?}"
    );
    let out = s.tick(20_000, renew_at, csr(2));
    assert_eq!(out.len(), 1, "no second request within 30 s: {out:?}");
    let out = s.tick(40_000, renew_at, csr(3));
    assert!(matches!(out.as_slice(), [_, AgentMsg::Renew { csr_pem }] if csr_pem == "csr3"), "retried: {out:?}");
    // The answer goes with the key of the latest request, once.
    let renewed = || LeaderMsg::Renewed { cert_pem: Some("cert".into()), error: None };
    match s.from_leader(renewed()).unwrap().as_slice() {
        [Output::Renewed { cert_pem, key_pem }] => {
            assert_eq!((cert_pem.as_str(), key_pem.as_str()), ("cert", "key3"))
        }
        other => panic!("{other:?}"),
    }
    assert!(s.from_leader(renewed()).unwrap().is_empty(), "a certificate not asked for is not kept");
    // A refusal drops the key; a certificate that cannot be read never asks.
    s.tick(80_000, renew_at, csr(4));
    assert!(s.from_leader(LeaderMsg::Renewed { cert_pem: None, error: Some("no".into()) }).unwrap().is_empty());
    assert!(s.from_leader(renewed()).unwrap().is_empty());
    assert_eq!(Session::new(true).tick(u64::MAX, None, csr(5)).len(), 1);
    // A CSR that cannot be made is tried again only after the retry period.
    let mut s = Session::new(true);
    assert_eq!(s.tick(10_000, renew_at, || Err("no entropy".into())).len(), 1);
    assert_eq!(s.tick(11_000, renew_at, csr(6)).len(), 1);
    assert_eq!(s.tick(40_000, renew_at, csr(7)).len(), 2);
}

#[test]
fn leader_messages_become_actions_in_order_and_a_refusal_ends_the_session() {
    let mut s = Session::new(true);
    let values = SecretValues(BTreeMap::from([("k".to_string(), b"v".to_vec())]));
    let put = vec![SecretPayload { name: "db".into(), version: 2, values }];
    let out = s.from_leader(LeaderMsg::Secrets { put, drop: vec!["old".into()], full: false }).unwrap();
    match out.as_slice() {
        [Output::Secrets { put, drop, full: false }] => {
            assert_eq!((put[0].0.as_str(), put[0].1), ("db", 2));
            assert_eq!(drop, &["old".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    let out = s.from_leader(LeaderMsg::Desired { full: true, upsert: vec![], remove: vec![] }).unwrap();
    assert!(matches!(out.as_slice(), [Output::Desired { full: true, .. }]));
    let out = s.from_leader(LeaderMsg::Configs { put: vec![], drop: vec![], full: true }).unwrap();
    assert!(matches!(out.as_slice(), [Output::Configs { full: true, .. }]));
    let refused = LeaderMsg::Refused(ApiError::new(ErrorCode::Unauthenticated, "revoked"));
    assert!(matches!(s.from_leader(refused), Err(SessionError::Refused { code: ErrorCode::Unauthenticated, .. })));
    assert!(matches!(
        s.from_leader(LeaderMsg::Welcome { epoch: 1, heartbeat_ms: 1000, fence_ms: 0 }),
        Err(SessionError::Unexpected)
    ));
}
