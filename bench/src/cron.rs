//! The leader's cost of cron jobs: 1,000 cron jobs (schedules of every kind, a dozen time zones)
//! in a real redb store. The cron controller's pass every second when nothing is due, and when
//! all 1,000 are due at once (a job made and recorded in one durable transaction each), beside
//! the leader's other per-second loop, the replica controller's pass, over the same store in the
//! same run; the store's bytes per cron job; this process's RSS before and after.

use bramble_leader::admission::Reserved;
use bramble_leader::api::apps::{apply, Specs};
use bramble_leader::boards::nodes::NodeRegistry;
use bramble_leader::boards::observed::Observed;
use bramble_leader::controllers::cron::Cron;
use bramble_leader::controllers::Context;
use bramble_leader::events::Events;
use bramble_leader::objects::Objects;
use bramble_leader::store::{RedbStore, Store};
use bramble_proto::manifest::parse_manifest;
use bramble_proto::network::ClusterNetwork;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ZONES: [&str; 12] = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
    "Africa/Johannesburg",
    "Pacific/Auckland",
    "Asia/Kathmandu",
];
const SCHEDULES: [&str; 6] =
    ["0 3 * * *", "*/15 * * * *", "@hourly", "30 2 * * 1-5", "0 0 1 * *", "5,35 8-18 * * mon-fri"];

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(count: usize, passes: usize) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("store.redb")).expect("store"));
    let objects = Objects::new(store.clone());
    let events = Arc::new(Events::new());
    let reserved = Reserved::of_leader(7443, None, None);
    let network = ClusterNetwork::default();
    let rss_before = rss_kib();
    let mut text = String::new();
    for i in 0..count {
        text.push_str(&format!(
            "[[cronjob]]\nname = \"cron-{i}\"\nschedule = \"{}\"\ntimezone = \"{}\"\n[cronjob.job]\nimage = \"reg.lan/backup:1\"\ncommand = [\"/backup\", \"--to\", \"nas\"]\nresources = {{ cpu = \"50m\", memory = \"32Mi\" }}\n",
            SCHEDULES[i % SCHEDULES.len()],
            ZONES[i % ZONES.len()]
        ));
    }
    let m = parse_manifest("bench.toml", &text).expect("manifest");
    let t = Instant::now();
    let specs = Specs { cronjobs: m.cronjobs, ..Default::default() };
    apply(&objects, &events, (&network, &reserved), specs, "bench", 0).expect("apply");
    let applied = t.elapsed();
    let bytes: usize = store.list("/cronjobs/").expect("list").iter().map(|kv| kv.value.len()).sum();
    let cron = Cron::default();
    // Just after their creation: none is due, as in almost every second.
    let now = bramble_proto::time::now_ms();
    cron.pass(&objects, &events, now).expect("first pass");
    // Each pass a second after the last (every tenth also looks at the history).
    let idle: Vec<Duration> = (0..passes)
        .map(|k| {
            let t = Instant::now();
            cron.pass(&objects, &events, now + 1_000 * (k as u64 + 1)).expect("pass");
            t.elapsed()
        })
        .collect();
    let idle_max = *idle.iter().max().expect("passes");
    let idle = median(idle);
    let rss_after = rss_kib();
    // All due at once: every cron job's record set back 40 days, so the latest run of each is
    // due (a job made, one transaction each).
    for mut v in objects.list::<bramble_proto::model::CronJob>().expect("list") {
        v.value.status.last_schedule_ms = Some(now - 40 * 86_400_000);
        objects.put(&v.value, bramble_leader::store::Expect::Revision(v.rev)).expect("put");
    }
    let t = Instant::now();
    cron.pass(&objects, &events, now + 1_000 * (passes as u64 + 1)).expect("due pass");
    let due = t.elapsed();
    let made = objects.list::<bramble_proto::model::App>().expect("apps").len();
    // The replica controller's pass over the same store, with the jobs just made (no boards: all Pending).
    let ctx = Context {
        objects: objects.clone(),
        registry: Arc::new(NodeRegistry::new(Duration::from_secs(15), events.clone())),
        observed: Arc::new(Observed::new()),
        events: events.clone(),
        network: Arc::new(network.clone()),
        drain: Arc::default(),
        control_ports: Arc::default(),
    };
    let replica_pass: Vec<Duration> = (0..passes)
        .map(|_| {
            let t = Instant::now();
            bramble_leader::controllers::run::pass(&ctx, now + 2_000 * (passes as u64 + 1)).expect("replica pass");
            t.elapsed()
        })
        .collect();
    let replica_pass = median(replica_pass);
    println!("cron jobs: {count} in a redb store ({} schedules, {} zones):", SCHEDULES.len(), ZONES.len());
    println!("  apply all:                      {:>8.1} ms", applied.as_secs_f64() * 1e3);
    println!(
        "  cron pass, none due:            {:>8.2} ms median, {:.2} ms the slowest (every 10 s it reads the jobs)",
        idle.as_secs_f64() * 1e3,
        idle_max.as_secs_f64() * 1e3
    );
    println!(
        "  cron pass, all due:             {:>8.1} ms  ({made} jobs made, one durable commit each)",
        due.as_secs_f64() * 1e3
    );
    println!(
        "  replica controller pass over the same store and those jobs (median): {:>8.2} ms",
        replica_pass.as_secs_f64() * 1e3
    );
    println!(
        "  store: {} bytes per cron job; RSS {} KiB before, {} KiB after (this process)",
        bytes / count,
        rss_before,
        rss_after
    );
    serde_json::json!({
        "count": count,
        "apply_ms": applied.as_secs_f64() * 1e3,
        "idle_pass_ms": idle.as_secs_f64() * 1e3,
        "idle_pass_max_ms": idle_max.as_secs_f64() * 1e3,
        "replica_pass_ms": replica_pass.as_secs_f64() * 1e3,
        "due_pass_ms": due.as_secs_f64() * 1e3,
        "jobs_made": made,
        "store_bytes_per_cronjob": bytes / count,
        "rss_kib": { "before": rss_before, "after": rss_after },
    })
}
