//! The agent's planner alone, then the reconciler driven step by step with recording fakes and a
//! manual clock: no shims, no registry, no threads.

use super::*;
use crate::reconcile::effects::{Containers, Images};
use crate::reconcile::fake::{Call, FakeContainers, FakeImages, FakeNetwork};
use crate::reconcile::reconciler::{Input, Job, Reconciler};
use crate::runtime::lifecycle::{BackoffPolicy, Lifecycle};
use bramble_proto::manifest::parse_manifest;
use bramble_proto::manifest::Protocol;
use bramble_proto::model::{Arch, Platform};
use bramble_proto::time::{Clock, ManualClock};
use std::sync::Arc;
use std::time::Duration;

fn assignment(replica: &str, image: &str) -> Assignment {
    let spec =
        parse_manifest("t.toml", &format!("[[app]]\nname = \"web\"\nimage = \"{image}\"\n")).unwrap().apps.remove(0);
    Assignment { replica: replica.into(), app: "web".into(), revision: "r1".into(), spec: spec.into() }
}

fn desired(list: &[(&str, &str)]) -> Desired {
    list.iter().map(|(r, i)| (r.to_string(), assignment(r, i))).collect()
}

fn running(id: &str, pid: i32) -> ShimState {
    let mut l = Lifecycle::new(crate::runtime::config::RestartPolicy::Always, BackoffPolicy::default());
    l.started(pid, 5).unwrap();
    ShimState {
        protocol: crate::runtime::protocol::SHIM_PROTOCOL,
        version: String::new(),
        id: id.into(),
        shim_pid: 1,
        boot_id: "b".into(),
        lifecycle: l,
        stats: None,
        ready: true,
        probes: Vec::new(),
    }
}

#[test]
fn undesired_containers_go_but_never_while_the_desired_set_is_unknown() {
    let mut o = Observed::default();
    o.containers.insert("old".into(), Some(running("old", 7)));
    let d = desired(&[]);
    assert_eq!(plan(Some(&d), &o, &Retries::new(), 0), [Action::Remove { id: "old".into() }]);
    assert!(plan(None, &o, &Retries::new(), 0).is_empty(), "a set that could not be read removes nothing");
    o.removing.insert("old".into());
    assert!(plan(Some(&d), &o, &Retries::new(), 0).is_empty(), "already on its way out");
}

#[test]
fn each_image_is_pulled_once_and_present_images_start_at_once() {
    let d = desired(&[("a-1", "reg/a:1"), ("a-2", "reg/a:1"), ("b-1", "reg/b:1"), ("c-1", "reg/c:1")]);
    let mut o = Observed::default();
    o.images.insert("reg/b:1".into());
    o.pulling.insert("reg/c:1".into(), (5, 10));
    let actions = plan(Some(&d), &o, &Retries::new(), 0);
    assert_eq!(
        actions,
        [Action::Pull { image: "reg/a:1".into() }, Action::Start { replica: "b-1".into(), id: "b-1".into() }],
        "one pull for two replicas, none for a pull in flight, and b starts without waiting for a"
    );
    let st = status(&d["c-1"], &o, &Retries::new());
    assert_eq!((st.phase, st.detail.as_deref()), (ReplicaPhase::Pulling, Some("pulling reg/c:1: 5 of 10")));
    assert_eq!(status(&d["b-1"], &o, &Retries::new()).phase, ReplicaPhase::Starting);
    assert_eq!(status(&d["a-1"], &o, &Retries::new()).phase, ReplicaPhase::Pending);
}

#[test]
fn retries_wait_and_a_returning_replica_waits_for_its_old_container() {
    let d = desired(&[("a-1", "reg/a:1")]);
    let mut o = Observed::default();
    o.images.insert("reg/a:1".into());
    let mut retries = Retries::new();
    let e = ReconcileError::Runtime("no space".into());
    retries.insert("a-1".into(), Retry::after(None, e, 1_000));
    assert!(plan(Some(&d), &o, &retries, 1_999).is_empty(), "not before its time");
    assert_eq!(plan(Some(&d), &o, &retries, 2_000), [Action::Start { replica: "a-1".into(), id: "a-1".into() }]);
    let st = status(&d["a-1"], &o, &retries);
    assert_eq!((st.phase, st.reason.as_str()), (ReplicaPhase::BackOff, "no space; retrying in 1s"));
    o.removing.insert("a-1".into());
    assert!(plan(Some(&d), &o, &Retries::new(), 0).is_empty());
    let delays: Vec<u64> = (0..8)
        .scan(None, |prev: &mut Option<Retry>, _| {
            let r = Retry::after(prev.as_ref(), ReconcileError::NotPulled("x".into()), 0);
            *prev = Some(r.clone());
            Some(r.delay_ms / 1000)
        })
        .collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60], "doubling to a minute");
}

#[test]
fn a_running_replica_reports_its_pod_address() {
    let d = desired(&[("a-1", "reg/a:1")]);
    let mut o = Observed::default();
    o.containers.insert("a-1".into(), Some(running("a-1", 42)));
    assert!(plan(Some(&d), &o, &Retries::new(), 0).is_empty(), "running: nothing to do");
    assert_eq!(status(&d["a-1"], &o, &Retries::new()).ip, None);
    o.ips.insert("a-1".into(), "10.42.0.7".parse().unwrap());
    let st = status(&d["a-1"], &o, &Retries::new());
    assert_eq!((st.phase, st.ip), (ReplicaPhase::Running, Some("10.42.0.7".parse().unwrap())));
}

#[test]
fn a_platform_miss_is_reported_with_what_the_image_offers() {
    let d = desired(&[("a-1", "reg/a:1")]);
    let offered = vec!["linux/amd64".parse::<Platform>().unwrap()];
    let e =
        ReconcileError::NoPlatform { image: "reg/a:1".into(), offered: offered.clone(), message: "no arm64".into() };
    let st = status(&d["a-1"], &Observed::default(), &Retries::from([("a-1".to_string(), Retry::after(None, e, 0))]));
    assert_eq!(st.platform_miss.unwrap().offered, offered);
    assert_eq!(st.reason, "pulling reg/a:1: no arm64; retrying in 1s");
}

#[test]
fn status_changes_become_events() {
    let mut s = ReplicaStatus::new("a-1", ReplicaPhase::Running);
    let first = transitions(None, &s);
    assert_eq!(first.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(), [EventReason::Started]);
    let old = s.clone();
    s.restarts = 1;
    assert_eq!(transitions(Some(&old), &s)[0].0, EventReason::Restarted);
    let mut waiting = s.clone();
    waiting.phase = ReplicaPhase::BackOff;
    waiting.reason = "exited with code 1; restarting after 10s".into();
    assert_eq!(transitions(Some(&s), &waiting), [(EventReason::BackOff, waiting.reason.clone())]);
    let mut failed = s.clone();
    failed.phase = ReplicaPhase::Failed;
    failed.reason = "exited with code 1; not restarted (restart policy)".into();
    assert_eq!(transitions(Some(&s), &failed), [(EventReason::Failed, failed.reason.clone())]);
    // Probes: a failure in a row is Unhealthy, a kill is Killing.
    let probe = |failures, kills| bramble_proto::wire::ProbeStatus {
        probe: "liveness".into(),
        action: "http :8080/healthz".into(),
        ok: Some(failures == 0),
        failures,
        message: "HTTP status 500".into(),
        kills,
    };
    let mut a = s.clone();
    a.probes = vec![probe(0, 0)];
    let mut b = a.clone();
    b.probes = vec![probe(1, 0)];
    assert_eq!(
        transitions(Some(&a), &b),
        [(EventReason::Unhealthy, "liveness probe failed (http :8080/healthz): HTTP status 500".into())]
    );
    let mut c = b.clone();
    c.probes = vec![probe(3, 1)];
    let reasons: Vec<(EventReason, String)> = transitions(Some(&b), &c);
    assert_eq!(
        reasons,
        [
            (
                EventReason::Unhealthy,
                "liveness probe failed (http :8080/healthz): HTTP status 500 (3 times in a row)".into()
            ),
            (EventReason::Killing, "the container failed its liveness probe and will be restarted".into())
        ]
    );
    assert!(transitions(Some(&c), &c).is_empty(), "nothing new, no event");
    // A probe that keeps failing says so on its 1st, 2nd, 4th, 8th… failure, not on each one.
    let failing = |n| {
        let mut r = s.clone();
        r.probes = vec![probe(n, 0)];
        r
    };
    let unhealthy = |from: u32, to: u32| transitions(Some(&failing(from)), &failing(to)).len();
    assert_eq!((unhealthy(3, 4), unhealthy(4, 5), unhealthy(5, 7), unhealthy(7, 8), unhealthy(8, 15)), (1, 0, 0, 1, 0));
    assert_eq!(unhealthy(15, 17), 1, "16 in between");
    let said = (0..43_200u32).filter(|n| unhealthy(*n, n + 1) == 1).count();
    assert_eq!(said, 16, "a day of a probe failing every 2 s");
    // It passed in between (fewer failures than last time): a new run, said again.
    assert_eq!(unhealthy(9, 1), 1);
    assert!(repeat_worth_an_event(0, 1) && !repeat_worth_an_event(2, 3) && repeat_worth_an_event(2, 4));
}

#[test]
fn host_ports_of_the_desired_replicas() {
    let mut a = assignment("a-1", "reg/a:1");
    a.spec = parse_manifest(
        "t.toml",
        "[[app]]\nname = \"web\"\nimage = \"reg/a:1\"\n[[app.ports]]\ncontainer = 80\nhost = 8080\n\
         [[app.ports]]\ncontainer = 53\nhost = 5353\nprotocol = \"udp\"\n",
    )
    .unwrap()
    .apps
    .remove(0)
    .into();
    let d: Desired = [("a-1".to_string(), a)].into();
    assert_eq!(
        bindings(Some(&d)),
        [
            Binding { protocol: Protocol::Tcp, host: 8080, container: 80, replica: "a-1".into() },
            Binding { protocol: Protocol::Udp, host: 5353, container: 53, replica: "a-1".into() },
        ]
    );
}

// The reconciler with fakes.

struct Board {
    clock: Arc<ManualClock>,
    containers: Arc<FakeContainers>,
    images: Arc<FakeImages>,
    r: Reconciler<FakeContainers, FakeImages, FakeNetwork>,
}

fn board(dir: Option<std::path::PathBuf>) -> Board {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let containers = Arc::new(FakeContainers::new(clock.clone()));
    let images = Arc::new(FakeImages::new(Arch::Arm64));
    let r = Reconciler::new(containers.clone(), images.clone(), Arc::new(FakeNetwork::default()), dir)
        .with_parallel_starts(1);
    Board { clock, containers, images, r }
}

impl Board {
    fn send(&mut self, d: &[(&str, &str)]) {
        let upsert = desired(d).into_values().collect();
        self.r.input(Input::Desired { full: true, upsert, remove: Vec::new() }, self.clock.now_ms());
    }

    /// A pass; returns its jobs without doing them.
    fn pass(&mut self) -> Vec<Job> {
        self.r.pass(self.clock.now_ms())
    }

    /// Does `job` as the pools would, and tells the reconciler.
    fn finish(&mut self, job: Job) {
        let now = self.clock.now_ms();
        let input = match job {
            Job::Pull { image, progress } => {
                let result = self.images.pull(&image, &progress);
                Input::Pulled { image: image.to_string(), result, took_ms: 3 }
            }
            Job::Remove { id } => Input::Removed { result: self.containers.remove(&id), id },
            Job::Stop { id, grace } => Input::Stopped { result: self.containers.stop(&id, grace), id },
            Job::Reload { id, config, args } => {
                Input::Reloaded { result: self.containers.exec(&id, args, Duration::from_secs(15)), id, config }
            }
        };
        self.r.input(input, now);
    }

    fn phase(&self, replica: &str) -> ReplicaPhase {
        self.r.statuses()[replica].phase
    }
}

#[test]
fn a_cold_image_never_delays_the_others() {
    let mut b = board(None);
    b.send(&[("a-1", "reg/a:1")]);
    let jobs = b.pass();
    assert!(matches!(&jobs[..], [Job::Pull { .. }]));
    assert_eq!(b.phase("a-1"), ReplicaPhase::Pulling);
    // While a's pull is still going, b arrives with an image that is already there.
    b.images.pull(&"reg/b:1".parse().unwrap(), &Default::default()).unwrap();
    b.send(&[("a-1", "reg/a:1"), ("b-1", "reg/b:1")]);
    assert!(b.pass().is_empty(), "no second pull of a");
    assert_eq!(b.phase("b-1"), ReplicaPhase::Running, "b started without waiting for a's pull");
    assert_eq!(b.containers.calls(), [Call::Start("b-1".into())]);
    for j in jobs {
        b.finish(j);
    }
    b.pass();
    assert_eq!(b.phase("a-1"), ReplicaPhase::Running);
    let events: Vec<EventReason> = b.r.take_events().into_iter().map(|e| e.reason).collect();
    assert!(events.contains(&EventReason::Pulled) && events.contains(&EventReason::Started), "{events:?}");
}

#[test]
fn a_failed_pull_is_retried_with_backoff_and_a_platform_miss_goes_up() {
    let mut b = board(None);
    b.images.offer("reg/x86:1", vec!["linux/amd64".parse().unwrap()]);
    b.send(&[("a-1", "reg/x86:1")]);
    for j in b.pass() {
        b.finish(j);
    }
    b.pass();
    let st = &b.r.statuses()["a-1"];
    assert_eq!(st.phase, ReplicaPhase::BackOff);
    assert!(st.platform_miss.is_some() && st.reason.ends_with("retrying in 1s"), "{st:?}");
    assert!(b.pass().is_empty(), "waits for the retry");
    b.clock.advance(Duration::from_secs(1));
    let jobs = b.pass();
    assert_eq!(jobs.len(), 1, "tried again");
    for j in jobs {
        b.finish(j);
    }
    b.pass();
    assert!(b.r.statuses()["a-1"].reason.ends_with("retrying in 2s"), "the delay doubles");
    assert_eq!(b.images.pulls().len(), 2);
}

#[test]
fn crashes_are_restarted_by_the_shim_with_backoff_and_reported() {
    let mut b = board(None);
    b.images.pull(&"reg/a:1".parse().unwrap(), &Default::default()).unwrap();
    b.send(&[("a-1", "reg/a:1")]);
    b.pass();
    b.r.take_events();
    let mut delays = Vec::new();
    for i in 0..3 {
        assert!(b.containers.crash("a-1", 1));
        b.pass();
        if i > 0 {
            let st = &b.r.statuses()["a-1"];
            assert_eq!(st.phase, ReplicaPhase::BackOff, "a crash that repeats waits");
            assert!(st.restart_at_ms.is_some() && st.reason.starts_with("exited with code 1; restarting after"));
        }
        let mut waited = 0;
        while b.phase("a-1") != ReplicaPhase::Running {
            b.clock.advance(Duration::from_secs(1));
            waited += 1;
            b.pass();
        }
        delays.push(waited);
    }
    assert_eq!(delays, [0, 10, 20], "the first restart at once, then 10 s doubling");
    assert_eq!(b.r.statuses()["a-1"].restarts, 3);
    let reasons: Vec<EventReason> = b.r.take_events().into_iter().map(|e| e.reason).collect();
    assert_eq!(reasons.iter().filter(|r| **r == EventReason::BackOff).count(), 2);
    assert_eq!(reasons.iter().filter(|r| **r == EventReason::Restarted).count(), 3);
    assert_eq!(b.containers.calls(), [Call::Start("a-1".into())], "the agent started it once; the shim did the rest");
}

#[test]
fn removals_happen_in_the_background_and_the_desired_set_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = board(Some(dir.path().to_path_buf()));
    b.images.pull(&"reg/a:1".parse().unwrap(), &Default::default()).unwrap();
    b.send(&[("a-1", "reg/a:1"), ("a-2", "reg/a:1")]);
    b.pass();
    b.send(&[("a-1", "reg/a:1")]);
    let jobs = b.pass();
    assert!(matches!(&jobs[..], [Job::Remove { id }] if id == "a-2"));
    assert!(b.pass().is_empty(), "asked once");
    for j in jobs {
        b.finish(j);
    }
    assert!(b.r.take_events().iter().any(|e| e.reason == EventReason::Stopped && e.app.as_deref() == Some("web")));
    // A new agent process on the same board: same desired set, nothing started or removed.
    let containers = b.containers.clone();
    containers.clear_calls();
    let mut again = Reconciler::new(
        containers.clone(),
        b.images.clone(),
        Arc::new(FakeNetwork::default()),
        Some(dir.path().to_path_buf()),
    );
    assert_eq!(again.desired().map(|d| d.keys().cloned().collect::<Vec<_>>()), Some(vec!["a-1".to_string()]));
    assert!(again.pass(b.clock.now_ms()).is_empty());
    assert!(containers.calls().is_empty(), "an agent restart changes no container");
}

#[test]
fn a_host_network_replica_is_reached_at_the_boards_bridge_address() {
    let mut b = board(None);
    b.images.pull(&"reg/a:1".parse().unwrap(), &Default::default()).unwrap();
    let mut d = desired(&[("a-1", "reg/a:1"), ("h-1", "reg/a:1")]);
    let h = d.get_mut("h-1").unwrap();
    let mut spec = (*h.spec).clone();
    spec.host_network = true;
    h.spec = spec.into();
    b.r.input(Input::Desired { full: true, upsert: d.into_values().collect(), remove: Vec::new() }, b.clock.now_ms());
    b.pass();
    let st = b.r.statuses();
    assert_eq!(st["h-1"].phase, ReplicaPhase::Running);
    assert_eq!(st["h-1"].ip, Some("10.42.0.1".parse().unwrap()), "the gateway: the board itself");
    assert_eq!(st["a-1"].ip, Some("10.42.0.2".parse().unwrap()), "a pod has its own");
}

#[test]
fn cut_off_for_the_fence_a_board_stops_its_jobs_runs_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = board(Some(dir.path().to_path_buf()));
    b.images.pull(&"reg/a:1".parse().unwrap(), &Default::default()).unwrap();
    let job = parse_manifest("t.toml", "[[job]]\nname = \"batch\"\nimage = \"reg/a:1\"\nstop_grace = \"2s\"\n")
        .unwrap()
        .jobs
        .remove(0);
    let run = Assignment { replica: "batch-1".into(), app: "batch".into(), revision: "r1".into(), spec: job.into() };
    let upsert = vec![assignment("web-1", "reg/a:1"), run];
    b.r.input(Input::Desired { full: true, upsert, remove: Vec::new() }, b.clock.now_ms());
    b.r.input(Input::Leader { connected: true, fence: Some(Duration::from_secs(15)) }, b.clock.now_ms());
    b.pass();
    assert_eq!(b.phase("batch-1"), ReplicaPhase::Running);
    // Connected, time passes: nothing is fenced.
    b.clock.advance(Duration::from_secs(60));
    assert!(b.pass().is_empty());
    // Cut off: 14 s is not the fence; 15 s is — the run stops, the app's replica does not.
    b.r.input(Input::Leader { connected: false, fence: None }, b.clock.now_ms());
    b.clock.advance(Duration::from_secs(14));
    assert!(b.pass().is_empty());
    b.r.input(Input::Leader { connected: false, fence: None }, b.clock.now_ms());
    b.clock.advance(Duration::from_secs(1));
    let jobs = b.pass();
    assert!(
        matches!(&jobs[..], [Job::Stop { id, grace }] if id == "batch-1" && *grace == Duration::from_secs(2)),
        "{jobs:?}"
    );
    assert!(b.pass().is_empty(), "stopped once");
    for j in jobs {
        b.finish(j);
    }
    b.pass();
    assert_eq!(b.phase("batch-1"), ReplicaPhase::Failed, "the run ended on SIGTERM and is not restarted");
    assert_eq!(b.phase("web-1"), ReplicaPhase::Running, "apps keep running without a leader");
    let events = b.r.take_events();
    assert!(events.iter().any(|e| e.message.starts_with("stopped: no leader for 15s")), "{events:?}");
    // A new agent process, still cut off, keeps the fence it was told (and counts from its start).
    let fence = std::fs::read_to_string(dir.path().join(crate::reconcile::reconciler::FENCE_FILE)).unwrap();
    assert_eq!(fence, "15000");
    // An older leader sets no fence: nothing is ever stopped.
    let mut old = board(None);
    old.images.pull(&"reg/a:1".parse().unwrap(), &Default::default()).unwrap();
    let job = parse_manifest("t.toml", "[[job]]\nname = \"batch\"\nimage = \"reg/a:1\"\n").unwrap().jobs.remove(0);
    let run = Assignment { replica: "batch-2".into(), app: "batch".into(), revision: "r1".into(), spec: job.into() };
    old.r.input(Input::Desired { full: true, upsert: vec![run], remove: Vec::new() }, old.clock.now_ms());
    old.r.input(Input::Leader { connected: true, fence: None }, old.clock.now_ms());
    old.pass();
    old.r.input(Input::Leader { connected: false, fence: None }, old.clock.now_ms());
    old.clock.advance(Duration::from_secs(3600));
    assert!(old.pass().is_empty());
    assert_eq!(old.phase("batch-2"), ReplicaPhase::Running);
}

fn pod(replica: &str, job: bool) -> Assignment {
    let kind = if job { "job" } else { "app" };
    let text = format!(
        "[[{kind}]]\nname = \"web\"\nimage = \"reg/web:1\"\n\
         [[{kind}.init]]\nname = \"one\"\nimage = \"reg/init:1\"\n\
         [[{kind}.init]]\nname = \"two\"\nimage = \"reg/init:1\"\n\
         [[{kind}.containers]]\nname = \"side\"\nimage = \"reg/side:1\"\n"
    );
    let m = parse_manifest("t.toml", &text).unwrap();
    let spec = if job { m.jobs[0].clone() } else { m.apps[0].clone() };
    Assignment { replica: replica.into(), app: "web".into(), revision: "r1".into(), spec: spec.into() }
}

/// A container that ran and exited with `code` (restart policy `restart`).
fn exited(id: &str, code: i32, restart: crate::runtime::config::RestartPolicy) -> ShimState {
    let mut s = running(id, 9);
    s.lifecycle = Lifecycle::new(restart, BackoffPolicy::default());
    s.lifecycle.started(9, 5).unwrap();
    let exit = crate::runtime::lifecycle::Exit {
        code,
        signal: None,
        oom_killed: false,
        finished_ms: 50,
        killed_by: None,
        started_ms: Some(5),
    };
    s.lifecycle.exited(exit).unwrap();
    s.ready = false;
    s
}

fn starts(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pods_init_containers_run_in_order_then_the_others_start_together() {
    use crate::runtime::config::RestartPolicy::OnFailure;
    let d: Desired = [("web-1".to_string(), pod("web-1", false))].into();
    let mut o = Observed::default();
    o.images.extend(["reg/web:1", "reg/init:1"].map(String::from));
    let r = Retries::new();
    // Only the first init container; the sidecar's image is pulled meanwhile.
    let a = plan(Some(&d), &o, &r, 0);
    assert_eq!(starts(&a), ["web-1.one"]);
    assert!(a.contains(&Action::Pull { image: "reg/side:1".into() }), "{a:?}");
    assert_eq!(status(&d["web-1"], &o, &r).reason, "Init:0/2 (init container one)");
    // The first fails: it restarts with backoff, the second waits; the replica says Init:Error.
    o.containers.insert("web-1.one".into(), Some(exited("web-1.one", 3, OnFailure)));
    assert!(starts(&plan(Some(&d), &o, &r, 100)).is_empty());
    let st = status(&d["web-1"], &o, &r);
    assert_eq!(st.phase, ReplicaPhase::BackOff);
    assert!(st.reason.starts_with("Init:Error (init container one): exited with code 3"), "{}", st.reason);
    // It succeeds: the second runs, alone.
    o.containers.insert("web-1.one".into(), Some(exited("web-1.one", 0, OnFailure)));
    assert_eq!(starts(&plan(Some(&d), &o, &r, 200)), ["web-1.two"]);
    o.containers.insert("web-1.two".into(), Some(running("web-1.two", 11)));
    assert_eq!(status(&d["web-1"], &o, &r).reason, "Init:1/2 (init container two)");
    assert!(!status(&d["web-1"], &o, &r).ready);
    // Both done: the app's own container and its sidecar (once its image is there).
    o.containers.insert("web-1.two".into(), Some(exited("web-1.two", 0, OnFailure)));
    assert_eq!(starts(&plan(Some(&d), &o, &r, 300)), ["web-1"]);
    o.images.insert("reg/side:1".into());
    assert_eq!(starts(&plan(Some(&d), &o, &r, 300)), ["web-1", "web-1.side"]);
    // Ready only when both are; restarts counted together.
    o.containers.insert("web-1".into(), Some(running("web-1", 12)));
    let mut side = running("web-1.side", 13);
    side.ready = false;
    side.lifecycle.restarts = 2;
    o.containers.insert("web-1.side".into(), Some(side));
    let st = status(&d["web-1"], &o, &r);
    assert_eq!((st.phase, st.ready, st.restarts), (ReplicaPhase::Running, false, 2));
    o.containers.get_mut("web-1.side").unwrap().as_mut().unwrap().ready = true;
    assert!(status(&d["web-1"], &o, &r).ready);
    // Gone from the set: its other containers go first, its own (with the pod's network) last.
    let none = Desired::new();
    let mut gone: Vec<Action> = plan(Some(&none), &o, &r, 400);
    gone.sort();
    assert_eq!(gone, ["web-1.one", "web-1.side", "web-1.two"].map(|id| Action::Remove { id: id.into() }).to_vec());
    for id in ["web-1.one", "web-1.side", "web-1.two"] {
        o.containers.remove(id);
    }
    assert_eq!(plan(Some(&none), &o, &r, 500), [Action::Remove { id: "web-1".into() }]);
}

#[test]
fn a_jobs_other_containers_stop_when_its_own_has_ended() {
    use crate::runtime::config::RestartPolicy::{Never, OnFailure};
    let d: Desired = [("batch-1".to_string(), pod("batch-1", true))].into();
    let mut o = Observed::default();
    o.images.extend(["reg/web:1", "reg/init:1", "reg/side:1"].map(String::from));
    for id in ["batch-1.one", "batch-1.two"] {
        o.containers.insert(id.into(), Some(exited(id, 0, OnFailure)));
    }
    o.containers.insert("batch-1".into(), Some(running("batch-1", 5)));
    o.containers.insert("batch-1.side".into(), Some(running("batch-1.side", 6)));
    assert!(plan(Some(&d), &o, &Retries::new(), 0).is_empty());
    o.containers.insert("batch-1".into(), Some(exited("batch-1", 0, Never)));
    assert_eq!(plan(Some(&d), &o, &Retries::new(), 0), [Action::Stop { id: "batch-1.side".into() }]);
    assert_eq!(status(&d["batch-1"], &o, &Retries::new()).phase, ReplicaPhase::Succeeded);
}

#[test]
fn a_config_changed_in_place_runs_its_reload_in_the_apps_own_container() {
    let mut b = board(None);
    let spec = |reload: &str| -> Arc<bramble_proto::manifest::AppSpec> {
        parse_manifest(
            "t.toml",
            &format!(
                "[[app]]\nname = \"web\"\nimage = \"reg/a:1\"\n\
                 configs = [{{ name = \"site\", path = \"/etc/site\", reload = [{reload}] }}, {{ name = \"other\", path = \"/etc/o\" }}]\n"
            ),
        )
        .unwrap()
        .apps
        .remove(0)
        .into()
    };
    let mut a = assignment("web-1", "reg/a:1");
    a.spec = spec("\"nginx\", \"-s\", \"reload\"");
    b.images.pull(&"reg/a:1".parse().unwrap(), &Default::default()).unwrap();
    b.r.input(Input::Desired { full: true, upsert: vec![a.clone()], remove: Vec::new() }, b.clock.now_ms());
    for job in b.pass() {
        b.finish(job);
    }
    assert_eq!(b.phase("web-1"), ReplicaPhase::Running);
    let now = b.clock.now_ms();
    // Its config changed (a sidecar's copy too, and a config without reload, and a replica that
    // is not here): one reload, in the app's own container.
    let changed = [("web-1", "site"), ("web-1.side", "site"), ("web-1", "other"), ("gone-1", "site")];
    let changed = changed.iter().map(|(i, c)| (i.to_string(), c.to_string())).collect();
    b.r.input(Input::ConfigsChanged { changed }, now);
    let jobs = b.pass();
    let reloads: Vec<&Job> = jobs.iter().filter(|j| matches!(j, Job::Reload { .. })).collect();
    assert!(
        matches!(&reloads[..], [Job::Reload { id, config, args }] if id == "web-1" && config == "site" && args[0] == "nginx"),
        "{jobs:?}"
    );
    b.r.take_events();
    for job in jobs {
        b.finish(job);
    }
    let said: Vec<(EventReason, String)> = b.r.take_events().into_iter().map(|e| (e.reason, e.message)).collect();
    assert_eq!(said, [(EventReason::Reloaded, "config site changed: reloaded".to_string())]);
    assert!(b.pass().iter().all(|j| !matches!(j, Job::Reload { .. })), "once");
    // A reload that fails says its exit and output.
    a.spec = spec("\"false\"");
    b.r.input(Input::Desired { full: true, upsert: vec![a], remove: Vec::new() }, now);
    b.r.input(Input::ConfigsChanged { changed: vec![("web-1".into(), "site".into())] }, now);
    for job in b.pass() {
        if matches!(job, Job::Reload { .. }) {
            b.finish(job);
        }
    }
    let said: Vec<String> =
        b.r.take_events().into_iter().filter(|e| e.reason == EventReason::ReloadFailed).map(|e| e.message).collect();
    assert_eq!(said, ["config site changed: reload exited 1: it failed"]);
}
