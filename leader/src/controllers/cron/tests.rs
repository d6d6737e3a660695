//! The cron controller over a store with a manual clock: schedules across days, daylight-saving
//! changes, a leader down for an hour, a failover to a second leader (also one racing the first
//! inside a pass), concurrency, deadlines and history. Each "leader" is its own [`Cron`] on the
//! shared store, as two leaders share etcd.

use super::*;
use crate::admission::Reserved;
use crate::api::apps::{apply, delete, Specs};
use crate::store::{KeyValue, MemStore, Store, Watch};
use bramble_proto::manifest::parse_manifest;
use bramble_proto::model::Replica;
use bramble_proto::network::ClusterNetwork;
use std::sync::Arc;

const MINUTE: u64 = 60_000;

fn utc(s: &str) -> u64 {
    s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64
}

fn world() -> (Objects, Events) {
    (Objects::new(Arc::new(MemStore::new())), Events::new())
}

/// Applies the cron jobs of `text` at `now`, as `bramble apply` does.
fn apply_at(objects: &Objects, events: &Events, text: &str, now: u64) {
    let m = parse_manifest("cron.toml", text).unwrap();
    let reserved = Reserved::of_leader(7443, None, None);
    let specs = Specs { cronjobs: m.cronjobs, ..Default::default() };
    apply(objects, events, (&ClusterNetwork::default(), &reserved), specs, "deployer:ci", now).unwrap();
}

/// Created at `now` (apply stamps the wall clock).
fn created_at(objects: &Objects, name: &str, now: u64) {
    let mut v = objects.load::<CronJob>(name).unwrap();
    v.value.meta.created_ms = now;
    objects.put(&v.value, Expect::Revision(v.rev)).unwrap();
}

/// The jobs that exist, by name.
fn jobs(objects: &Objects) -> Vec<String> {
    objects.list::<App>().unwrap().into_iter().filter(|v| v.value.spec.is_job()).map(|v| v.value.meta.name).collect()
}

fn said(events: &Events, reason: EventReason) -> Vec<String> {
    events.filter(|e| e.reason == reason).into_iter().map(|e| e.message).collect()
}

/// Job `name`'s one run ends (succeeded or failed) at `now`.
fn finish(objects: &Objects, name: &str, ok: bool, now: u64) {
    let mut r = Replica::new(name, &format!("{name}-x-0"), "x", now);
    r.phase = if ok { ReplicaPhase::Succeeded } else { ReplicaPhase::Failed };
    r.exit_code = Some(if ok { 0 } else { 1 });
    r.finished_ms = Some(now);
    objects.put(&r, Expect::Absent).unwrap();
}

/// The scheduled minute a job of cron job `cron` is named after, as UTC text.
fn minute_of(cron: &str, job: &str) -> String {
    let minutes: u64 = job.strip_prefix(cron).unwrap().trim_start_matches('-').parse().unwrap();
    let ts = jiff::Timestamp::from_millisecond((minutes * MINUTE) as i64).unwrap();
    ts.strftime("%FT%H:%MZ").to_string()
}

const EVERY_MINUTE: &str = r#"
[[cronjob]]
name = "tick"
schedule = "* * * * *"
[cronjob.job]
image = "registry.local/busybox:1"
command = ["true"]
"#;

#[test]
fn every_minute_across_a_failover_and_an_hour_down_neither_skips_nor_doubles() {
    let (objects, events) = world();
    let t0 = utc("2026-12-06T10:00:00Z");
    apply_at(&objects, &events, EVERY_MINUTE, t0);
    created_at(&objects, "tick", t0);
    let (a, b) = (Cron::default(), Cron::default());
    // Leader A, a pass every 10 s for 20 minutes.
    let mut now = t0;
    while now < t0 + 20 * MINUTE {
        now += 10_000;
        a.pass(&objects, &events, now).unwrap();
    }
    assert_eq!(jobs(&objects).len(), 20, "one job per minute: {:?}", jobs(&objects));
    // A fails over to B mid-minute; for a while both still pass (A not yet fenced).
    while now < t0 + 30 * MINUTE {
        now += 7_000;
        b.pass(&objects, &events, now).unwrap();
        a.pass(&objects, &events, now).unwrap();
    }
    assert_eq!(jobs(&objects).len(), 30);
    // No leader for an hour; B comes back.
    now = t0 + 90 * MINUTE + 20_000;
    b.pass(&objects, &events, now).unwrap();
    let all = jobs(&objects);
    assert_eq!(all.len(), 31, "the hour's missed runs run once: {all:?}");
    let expected: Vec<String> = (1..=30)
        .chain([90])
        .map(|m| {
            let ts = jiff::Timestamp::from_millisecond((t0 + m * MINUTE) as i64).unwrap();
            ts.strftime("%FT%H:%MZ").to_string()
        })
        .collect();
    let mut got: Vec<String> = all.iter().map(|j| minute_of("tick", j)).collect();
    got.sort();
    assert_eq!(got, expected);
    let made = said(&events, EventReason::JobCreated);
    assert_eq!(made.len(), 31, "each job said once (no leader made one twice): {made:?}");
    assert!(made.last().unwrap().contains("(59 earlier runs were missed; the latest runs once)"), "{:?}", made.last());
    let record = objects.load::<CronJob>("tick").unwrap().value.status;
    assert_eq!(record.last_schedule_ms, Some(t0 + 90 * MINUTE));
    assert_eq!(record.last_job.as_deref(), Some(all.iter().max().unwrap().as_str()));
    // Passes later in the same minute make nothing more.
    b.pass(&objects, &events, now + 30_000).unwrap();
    a.pass(&objects, &events, now + 39_000).unwrap();
    assert_eq!(jobs(&objects).len(), 31);
}

/// A store whose next transaction first lets another leader act: a pass that read before the
/// other wrote.
struct Racing {
    inner: Arc<dyn Store>,
    before_txn: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Store for Racing {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix)
    }
    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError> {
        self.inner.put(key, value, expect)
    }
    fn delete(&self, key: &str, expect: Expect) -> Result<u64, StoreError> {
        self.inner.delete(key, expect)
    }
    fn txn(&self, ops: &[TxnOp]) -> Result<u64, StoreError> {
        let other = self.before_txn.lock().unwrap().take();
        if let Some(f) = other {
            f();
        }
        self.inner.txn(ops)
    }
    fn revision(&self) -> u64 {
        self.inner.revision()
    }
    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        self.inner.watch(prefix, after)
    }
}

#[test]
fn two_leaders_racing_inside_one_pass_make_one_job() {
    let shared: Arc<dyn Store> = Arc::new(MemStore::new());
    let plain = Objects::new(shared.clone());
    let events = Arc::new(Events::new());
    let t0 = utc("2026-12-06T10:00:00Z");
    let text = EVERY_MINUTE.replace("[cronjob.job]", "concurrency = \"replace\"\n[cronjob.job]");
    apply_at(&plain, &events, &text, t0);
    created_at(&plain, "tick", t0);
    let racing = Arc::new(Racing { inner: shared.clone(), before_txn: Default::default() });
    let slow = Objects::new(racing.clone());
    // B acts between A's read and A's write.
    let (o, e) = (plain.clone(), events.clone());
    *racing.before_txn.lock().unwrap() = Some(Box::new(move || {
        assert!(Cron::default().pass(&o, &e, t0 + MINUTE + 2_000).unwrap(), "B makes the job");
    }));
    let a = Cron::default();
    assert!(!a.pass(&slow, &events, t0 + MINUTE + 1_000).unwrap(), "A's write is refused: B changed the cron job");
    assert_eq!(jobs(&plain).len(), 1);
    assert_eq!(said(&events, EventReason::JobCreated).len(), 1);
    // A reads again next pass and sees the run made: nothing replaced, nothing doubled.
    assert!(!a.pass(&slow, &events, t0 + MINUTE + 3_000).unwrap());
    assert_eq!(jobs(&plain).len(), 1);
}

#[test]
fn daily_runs_in_berlin_across_spring_forward_and_a_leader_down_over_the_jump() {
    let (objects, events) = world();
    let text = r#"
[[cronjob]]
name = "nightly"
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
[cronjob.job]
image = "registry.local/busybox:1"
"#;
    // Thursday 26 March 2026, noon UTC; the clocks jump 02:00 → 03:00 on Sunday the 29th.
    let t0 = utc("2026-03-26T12:00:00Z");
    apply_at(&objects, &events, text, t0);
    created_at(&objects, "nightly", t0);
    let cron = Cron::default();
    let mut now = t0;
    // A pass a minute for five days, except from Sunday 00:00 to 04:00 UTC (leader down).
    while now < t0 + 5 * 1_440 * MINUTE {
        now += MINUTE;
        let down = utc("2026-03-29T00:00:00Z")..utc("2026-03-29T04:00:00Z");
        if !down.contains(&now) {
            cron.pass(&objects, &events, now).unwrap();
        }
        // Each run ends at once (history keeps 3).
        for j in jobs(&objects) {
            if objects.replicas(Some(&j)).unwrap().is_empty() {
                finish(&objects, &j, true, now);
            }
        }
    }
    let made = said(&events, EventReason::JobCreated);
    let whens: Vec<&str> = made.iter().map(|m| m.split(" for the run of ").nth(1).unwrap()).collect();
    assert_eq!(
        whens,
        [
            "2026-03-27 02:30 +01:00",
            "2026-03-28 02:30 +01:00",
            // 02:30 did not exist: due at the jump (01:00 UTC), made when the leader came back.
            "2026-03-29 03:00 +02:00",
            "2026-03-30 02:30 +02:00",
            "2026-03-31 02:30 +02:00"
        ]
    );
    // The history keeps the last three successful jobs.
    let mut left: Vec<String> = jobs(&objects).iter().map(|j| minute_of("nightly", j)).collect();
    left.sort();
    assert_eq!(left, ["2026-03-29T01:00Z", "2026-03-30T00:30Z", "2026-03-31T00:30Z"]);
    assert_eq!(said(&events, EventReason::HistoryPruned).len(), 2);
}

#[test]
fn forbid_waits_for_the_running_job_then_runs_late_or_skips_past_the_deadline() {
    let (objects, events) = world();
    let text = r#"
[[cronjob]]
name = "sync"
schedule = "*/5 * * * *"
concurrency = "forbid"
starting_deadline = "2m"
[cronjob.job]
image = "registry.local/busybox:1"
"#;
    let t0 = utc("2026-12-06T10:00:00Z");
    apply_at(&objects, &events, text, t0);
    created_at(&objects, "sync", t0);
    let cron = Cron::default();
    cron.pass(&objects, &events, t0 + 5 * MINUTE + 1_000).unwrap();
    assert_eq!(jobs(&objects), ["sync-29942525"]);
    // 10:10 is due while 10:05's job runs: it waits, saying so once.
    for s in 0..30 {
        cron.pass(&objects, &events, t0 + 10 * MINUTE + s * 1_000).unwrap();
    }
    assert_eq!(jobs(&objects).len(), 1);
    let waits = said(&events, EventReason::RunWaiting);
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!(waits[0].contains("job sync-29942525 is still running (concurrency forbid)"), "{waits:?}");
    // It ends at 10:11; 10:10's run starts then, late but within its deadline.
    finish(&objects, "sync-29942525", true, t0 + 11 * MINUTE);
    cron.pass(&objects, &events, t0 + 11 * MINUTE + 1_000).unwrap();
    assert_eq!(jobs(&objects).len(), 2);
    // 10:15 waits for 10:10's job; it ends at 10:18, past 10:15's deadline (10:17): skipped.
    cron.pass(&objects, &events, t0 + 15 * MINUTE + 1_000).unwrap();
    finish(&objects, "sync-29942530", true, t0 + 18 * MINUTE);
    cron.pass(&objects, &events, t0 + 18 * MINUTE + 1_000).unwrap();
    assert_eq!(jobs(&objects).len(), 2);
    let missed = said(&events, EventReason::MissedSchedule);
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert!(missed[0].starts_with("the run of 2026-12-06 10:15 +00:00 was skipped: 181s late"), "{missed:?}");
    // 10:20 runs on time.
    cron.pass(&objects, &events, t0 + 20 * MINUTE + 1_000).unwrap();
    assert!(jobs(&objects).contains(&"sync-29942540".to_string()));
}

#[test]
fn replace_stops_the_running_job_and_history_keeps_what_it_says() {
    let (objects, events) = world();
    let text = r#"
[[cronjob]]
name = "poll"
schedule = "* * * * *"
concurrency = "replace"
history = { successful = 2, failed = 1 }
[cronjob.job]
image = "registry.local/busybox:1"
"#;
    let t0 = utc("2026-12-06T10:00:00Z");
    apply_at(&objects, &events, text, t0);
    created_at(&objects, "poll", t0);
    let cron = Cron::default();
    cron.pass(&objects, &events, t0 + MINUTE).unwrap();
    cron.pass(&objects, &events, t0 + 2 * MINUTE).unwrap();
    assert_eq!(jobs(&objects), ["poll-29942522"], "the first job was replaced");
    assert_eq!(said(&events, EventReason::JobReplaced).len(), 1);
    // Five finish (three succeed, two fail): two successful and one failed stay.
    // Each finishes before the next minute (a failed run fails its job: backoff_limit 0).
    let mut failing = objects.load::<CronJob>("poll").unwrap();
    failing.value.spec.job.backoff_limit = Some(0);
    objects.put(&failing.value, Expect::Revision(failing.rev)).unwrap();
    for (m, ok) in [(2, true), (3, false), (4, true), (5, false), (6, true)] {
        let current = objects.load::<CronJob>("poll").unwrap().value.status.last_job.unwrap();
        finish(&objects, &current, ok, t0 + (m + 1) * MINUTE - 1_000);
        cron.pass(&objects, &events, t0 + (m + 1) * MINUTE).unwrap();
    }
    assert_eq!(said(&events, EventReason::JobReplaced).len(), 1, "finished jobs are not replaced");
    // Made at 10:02–10:06, and 10:07's running: 10:06 and 10:04 succeeded, 10:05 failed.
    let mut left = jobs(&objects);
    left.sort();
    assert_eq!(left, ["poll-29942524", "poll-29942525", "poll-29942526", "poll-29942527"]);
}

#[test]
fn suspend_apply_run_now_and_delete() {
    let (objects, events) = world();
    let t0 = utc("2026-12-06T10:00:00Z");
    apply_at(&objects, &events, EVERY_MINUTE, t0);
    created_at(&objects, "tick", t0);
    let cron = Cron::default();
    cron.pass(&objects, &events, t0 + MINUTE).unwrap();
    // Applying again (suspended) keeps the record; nothing runs while suspended.
    let suspended = EVERY_MINUTE.replace("[cronjob.job]", "suspend = true\n[cronjob.job]");
    apply_at(&objects, &events, &suspended, t0);
    assert_eq!(objects.load::<CronJob>("tick").unwrap().value.status.last_schedule_ms, Some(t0 + MINUTE));
    cron.pass(&objects, &events, t0 + 5 * MINUTE).unwrap();
    assert_eq!(jobs(&objects).len(), 1);
    // Run at once: a job from the template, counted in its history.
    let done = crate::api::cronjobs::run_now(&objects, &events, "tick", "tick-by-hand", "admin:me", t0).unwrap();
    assert_eq!(done, "job/tick-by-hand created from cronjob/tick");
    let job = objects.load::<App>("tick-by-hand").unwrap().value;
    assert_eq!((job.cronjob.as_deref(), job.spec.is_job()), (Some("tick"), true));
    assert_eq!(job.spec.command, ["true"]);
    let again = crate::api::cronjobs::run_now(&objects, &events, "tick", "tick-by-hand", "admin:me", t0);
    assert!(again.unwrap_err().to_string().contains("an app or job named tick-by-hand exists"));
    let bad = crate::api::cronjobs::run_now(&objects, &events, "tick", "Bad_Name", "admin:me", t0);
    assert!(bad.unwrap_err().to_string().contains("job name \"Bad_Name\": expected a DNS label"));
    let long = format!("../{}", "x".repeat(5_000));
    let e = crate::api::cronjobs::run_now(&objects, &events, "tick", &long, "admin:me", t0).unwrap_err().to_string();
    assert!(e.len() < 300, "the caller's text is not quoted whole: {} bytes", e.len());
    assert!(crate::api::cronjobs::run_now(&objects, &events, "nope", "x", "admin:me", t0).is_err());
    // Deleting the cron job deletes its jobs, and nothing else.
    objects.put(&App { cronjob: None, ..job.clone() }.renamed("other"), Expect::Absent).unwrap();
    let done =
        delete(&objects, crate::api::apps::Names { cronjobs: vec!["tick".into()], ..Default::default() }).unwrap();
    assert!(done.contains("cronjob/tick deleted"), "{done}");
    assert_eq!(jobs(&objects), ["other"]);
}

trait Renamed {
    fn renamed(self, name: &str) -> Self;
}

impl Renamed for App {
    fn renamed(mut self, name: &str) -> App {
        self.meta.name = name.into();
        self.spec.name = bramble_proto::names::Name::new(name).unwrap();
        self
    }
}

/// The problems an apply of `text` is refused with, as `kind/name field: message`.
fn refused(objects: &Objects, text: &str) -> Vec<String> {
    let m = parse_manifest("cron.toml", text).unwrap();
    let reserved = Reserved::of_leader(7443, None, None);
    let specs = Specs { cronjobs: m.cronjobs, ..Default::default() };
    match apply(objects, &Events::new(), (&ClusterNetwork::default(), &reserved), specs, "deployer:ci", 1) {
        Err(crate::error::Error::Problems(p)) => {
            p.into_iter().map(|p| format!("{}/{} {}: {}", p.kind, p.name, p.field, p.message)).collect()
        }
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn the_leader_refuses_what_its_zoneinfo_lacks_its_own_ports_and_a_privileged_template_from_a_deployer() {
    let (objects, _) = world();
    let zone = EVERY_MINUTE.replace("[cronjob.job]", "timezone = \"Mars/Olympus\"\n[cronjob.job]");
    let found = refused(&objects, &zone);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cronjob/tick timezone: unknown time zone \"Mars/Olympus\""), "{found:?}");
    // The template is checked as a job would be, where it lands.
    let port = format!("{EVERY_MINUTE}ports = [{{ container = 80, host = 7443, protocol = \"udp\" }}]\n");
    let found = refused(&objects, &port);
    assert!(
        found[0].starts_with("cronjob/tick job.ports[0].host: host port 7443/udp is the cluster's own"),
        "{found:?}"
    );
    // A template asking for capabilities needs the admin (or a policy for the cron job's name).
    let privileged = format!("{EVERY_MINUTE}security = {{ cap_add = [\"NET_ADMIN\"] }}\n");
    let m = parse_manifest("cron.toml", &privileged).unwrap();
    let needs = crate::api::apps::needing_admin(&objects, &[], &m.cronjobs).unwrap();
    assert_eq!(needs, ["cronjob/tick asks for security.cap_add"]);
}

#[test]
fn a_run_whose_job_name_is_taken_is_skipped_and_said_not_retried_for_ever() {
    let (objects, events) = world();
    let t0 = utc("2026-12-06T10:00:00Z");
    apply_at(&objects, &events, EVERY_MINUTE, t0);
    created_at(&objects, "tick", t0);
    // Someone applied a job with the name 10:01's run would have.
    let m =
        parse_manifest("j.toml", "[[job]]\nname = \"tick-29942521\"\nimage = \"registry.local/busybox:1\"\n").unwrap();
    let specs = Specs { apps: m.jobs, ..Default::default() };
    let reserved = Reserved::of_leader(7443, None, None);
    apply(&objects, &events, (&ClusterNetwork::default(), &reserved), specs, "deployer:ci", t0).unwrap();
    let cron = Cron::default();
    assert!(cron.pass(&objects, &events, t0 + MINUTE + 1_000).unwrap(), "the skip is recorded");
    let missed = said(&events, EventReason::MissedSchedule);
    assert!(
        missed[0].contains("an app or job named tick-29942521 exists that this cron job did not make"),
        "{missed:?}"
    );
    assert_eq!(objects.load::<App>("tick-29942521").unwrap().value.cronjob, None, "left alone");
    assert!(!cron.pass(&objects, &events, t0 + MINUTE + 2_000).unwrap(), "not tried again");
    cron.pass(&objects, &events, t0 + 2 * MINUTE + 1_000).unwrap();
    assert!(jobs(&objects).contains(&"tick-29942522".to_string()), "the next run is made");
}

#[test]
fn a_restored_cron_job_passes_the_checks_an_apply_makes() {
    let (objects, events) = world();
    apply_at(&objects, &events, EVERY_MINUTE, 0);
    let kv = objects.store().get("/cronjobs/tick").unwrap().unwrap();
    let good = String::from_utf8(kv.value).unwrap();
    let reserved = Reserved::of_leader(7443, None, None);
    let backup = |v: &str| std::collections::BTreeMap::from([("/cronjobs/tick".to_string(), v.to_string())]);
    crate::admission::check_restored(&backup(&good), &reserved).unwrap();
    // A hand-edited backup: a zone the leader lacks, a template on the cluster's own port.
    let zone = good.replace("\"schedule\":", "\"timezone\":\"Mars/Olympus\",\"schedule\":");
    let e = crate::admission::check_restored(&backup(&zone), &reserved).unwrap_err().to_string();
    assert!(e.contains("unknown time zone"), "{e}");
    let port = good.replace("\"ports\":[]", "\"ports\":[{\"container\":80,\"host\":7443,\"protocol\":\"udp\"}]");
    assert_ne!(port, good);
    let e = crate::admission::check_restored(&backup(&port), &reserved).unwrap_err();
    assert!(format!("{e:?}").contains("is the cluster's own"), "{e:?}");
    let renamed = good.replace("\"name\":\"tick\"", "\"name\":\"other\"");
    let e = crate::admission::check_restored(&backup(&renamed), &reserved).unwrap_err();
    assert!(format!("{e:?}").contains("names another object"), "{e:?}");
}
