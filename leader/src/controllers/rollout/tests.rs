use super::*;
use bramble_proto::manifest::parse_manifest;

fn spec(extra: &str) -> AppSpec {
    let text = format!("[[app]]\nname = \"web\"\nimage = \"reg/web:1\"\nreplicas = 2\n{extra}");
    parse_manifest("t.toml", &text).unwrap().apps.remove(0)
}

fn replica(name: &str, hash: &str, ready_ms: Option<u64>) -> Replica {
    Replica {
        node: Some("a".into()),
        phase: ReplicaPhase::Running,
        ready: ready_ms.is_some(),
        ready_ms,
        ..Replica::new("web", name, hash, 0)
    }
}

fn complete(mut r: RevisionRecord) -> RevisionRecord {
    r.state = RolloutState::Complete;
    r
}

#[test]
fn a_rollout_progresses_then_completes_when_every_replica_is_available() {
    let (v1, v2) = (spec(""), spec("args = [\"-v\"]"));
    let (h1, h2) = (revision_hash(&v1), revision_hash(&v2));
    let history =
        vec![complete(new_record("web", 1, &v1, "created", 0, 0)), new_record("web", 2, &v2, "apply", 2, 100)];
    let mut rs = vec![replica("a", &h1, Some(0)), replica("b", &h1, Some(0)), replica("c", &h2, None)];
    assert_eq!(evaluate(&v2, &history, &rs, 200), Step::Unchanged, "nothing moved yet");
    rs[2].ready = true;
    rs[2].ready_ms = Some(300);
    rs.remove(0);
    let Step::Update(r) = evaluate(&v2, &history, &rs, 300) else { panic!("progress") };
    assert_eq!((r.state, r.available, r.old, r.progress_ms), (RolloutState::Progressing, 1, 1, 300));
    let history = vec![history[0].clone(), *r];
    let done = vec![replica("c", &h2, Some(300)), replica("d", &h2, Some(400))];
    let Step::Update(r) = evaluate(&v2, &history, &done, 400) else { panic!("complete") };
    assert_eq!((r.state, r.finished_ms), (RolloutState::Complete, Some(400)));
    assert_eq!(r.message, "2 of 2 replicas available");
    assert_eq!(evaluate(&v2, &[*r], &done, 500), Step::Unchanged, "an ended rollout stays ended");
}

#[test]
fn min_ready_holds_a_replica_back_until_it_has_been_ready_long_enough() {
    let v = spec("update = { min_ready = \"5s\" }");
    let h = revision_hash(&v);
    let r = replica("a", &h, Some(10_000));
    assert!(!available(&r, &v, 14_999));
    assert!(available(&r, &v, 15_000));
    let history = vec![new_record("web", 1, &v, "created", 0, 10_000)];
    let rs = vec![replica("a", &h, Some(10_000)), replica("b", &h, Some(10_000))];
    assert_eq!(evaluate(&v, &history, &rs, 12_000), Step::Unchanged);
    assert!(matches!(evaluate(&v, &history, &rs, 15_000), Step::Update(r) if r.state == RolloutState::Complete));
}

#[test]
fn no_progress_past_the_deadline_rolls_back_to_the_last_complete_revision() {
    let v1 = spec("");
    let v2 = AppSpec { image: "reg/web:2".parse().unwrap(), ..spec("update = { progress_deadline = \"1m\" }") };
    let (h1, h2) = (revision_hash(&v1), revision_hash(&v2));
    let history =
        vec![complete(new_record("web", 1, &v1, "created", 0, 0)), new_record("web", 2, &v2, "apply", 2, 1_000)];
    // The new replica never becomes ready; the old ones keep serving.
    let rs = vec![replica("a", &h1, Some(0)), replica("b", &h1, Some(0)), replica("c", &h2, None)];
    assert_eq!(evaluate(&v2, &history, &rs, 61_000), Step::Unchanged, "within the deadline");
    let Step::Rollback { failed, spec: to, record } = evaluate(&v2, &history, &rs, 61_001) else { panic!("rollback") };
    assert_eq!(failed.state, RolloutState::RolledBack);
    assert!(
        failed.message.starts_with("no progress for 1m (0 of 2 updated replicas available, 2 old left)"),
        "{}",
        failed.message
    );
    assert!(failed.message.ends_with("rolled back to revision 1"), "{}", failed.message);
    assert_eq!(to.image, v1.image, "the template of revision 1");
    assert_eq!(to.update, v2.update, "the current update strategy stays");
    assert_eq!((record.number, record.hash.as_str(), record.old), (3, h1.as_str(), 1));
    assert_eq!(record.cause, "rollback of revision 2 to revision 1");
}

#[test]
fn without_auto_rollback_or_an_earlier_good_revision_it_fails_and_holds() {
    let v1 = spec("");
    let v2 = spec("args = [\"x\"]\nupdate = { progress_deadline = \"1m\", auto_rollback = false }");
    let (h1, h2) = (revision_hash(&v1), revision_hash(&v2));
    let history = vec![complete(new_record("web", 1, &v1, "created", 0, 0)), new_record("web", 2, &v2, "apply", 2, 0)];
    let rs = vec![replica("a", &h1, Some(0)), replica("b", &h1, Some(0)), replica("c", &h2, None)];
    let Step::Update(r) = evaluate(&v2, &history, &rs, 60_001) else { panic!("failed") };
    assert_eq!(r.state, RolloutState::Failed);
    assert!(r.message.ends_with("held where it is (auto_rollback = false)"), "{}", r.message);
    let lone = vec![new_record("web", 1, &spec("update = { progress_deadline = \"1m\" }"), "created", 0, 0)];
    let Step::Update(r) = evaluate(&lone[0].spec, &lone, &[], 60_001) else { panic!("failed") };
    assert!(r.state == RolloutState::Failed && r.message.contains("no earlier revision completed"), "{r:?}");
}

#[test]
fn a_new_revision_supersedes_one_still_going() {
    let v1 = spec("");
    let first = new_record("web", 1, &v1, "created", 0, 0);
    let history = vec![crate::objects::Versioned { value: first, rev: 7 }];
    let old = [replica("a", &revision_hash(&v1), Some(0))];
    let (record, ops) = new_revision("web", &history, &spec("args = [\"y\"]"), "apply", &old, 50);
    assert_eq!((record.number, record.old, record.state), (2, 1, RolloutState::Progressing));
    assert_eq!(ops.len(), 2, "the new record and the superseded one");
    match &ops[1] {
        TxnOp::Put { value, expect, .. } => {
            let old: RevisionRecord = serde_json::from_slice(value).unwrap();
            assert_eq!((old.state, *expect), (RolloutState::Superseded, Expect::Revision(7)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_new_replica_that_cannot_be_placed_is_said_once_and_named_in_the_failure() {
    let (v1, v2) = (spec(""), spec("args = [\"-v\"]"));
    let (h1, h2) = (revision_hash(&v1), revision_hash(&v2));
    let history =
        vec![complete(new_record("web", 1, &v1, "created", 0, 0)), new_record("web", 2, &v2, "apply", 2, 100)];
    let mut pending = Replica::new("web", "c", &h2, 100);
    pending.reason = "0/1 nodes: 1 host port in use".into();
    let rs = vec![replica("a", &h1, Some(0)), replica("b", &h1, Some(0)), pending];
    let Step::Update(r) = evaluate(&v2, &history, &rs, 200) else { panic!("the reason is recorded") };
    assert_eq!(r.state, RolloutState::Progressing);
    assert_eq!(r.progress_ms, 100, "saying why is not progress");
    assert!(r.message.ends_with("a new replica is Pending: 0/1 nodes: 1 host port in use"), "{}", r.message);
    let history = vec![history[0].clone(), *r];
    assert_eq!(evaluate(&v2, &history, &rs, 300), Step::Unchanged, "said once");
    let Step::Rollback { failed, .. } = evaluate(&v2, &history, &rs, 100 + 600_001) else { panic!("deadline") };
    assert!(failed.message.contains("a new replica is Pending: 0/1 nodes: 1 host port in use"), "{}", failed.message);
}
