//! Cron jobs end to end (issue 31), real containers on a board: a `* * * * *` schedule makes a
//! job at the next minute and its run goes through a real container; `get cronjobs` shows LAST
//! and NEXT, `describe cronjob` its jobs and events, `logs job/NAME` the run's output; `job run
//! --from cronjob/NAME` runs one at once; `diff` and `apply --dry-run` show cron jobs; an unknown
//! time zone is an apply error at its line; deleting the cron job takes its jobs away.

use bramble_tests::{text, wait_for};
use std::time::Duration;

#[test]
fn a_cron_job_every_minute_runs_real_containers_and_says_what_it_did() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(1, "");
    let file = |name: &str, body: String| c.write(name, &body);
    let cron = |head: &str| {
        format!(
            "[[cronjob]]\nname = \"tick\"\nschedule = \"* * * * *\"\n{head}\
             [cronjob.job]\nimage = \"{image}\"\ncommand = [\"/bin/sh\", \"-c\", \"echo tick at $(date +%H:%M:%S)\"]\n"
        )
    };

    // An unknown zone: refused by the leader, pointed at its line.
    let bad = file("bad.toml", cron("timezone = \"Mars/Olympus\"\n"));
    let out = c.cli(&["apply", "-f", &bad]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.toml:4:12: cronjob[0].timezone: unknown time zone"), "{err}");

    let good = file("tick.toml", cron("history = { successful = 2 }\n"));
    let plan = c.ok(&["apply", "--dry-run", "-f", &good]);
    assert!(plan.contains("cronjob/tick created") && plan.contains("dry run: nothing was stored"), "{plan}");
    let out = c.cli(&["diff", "-f", &good]);
    assert_eq!(out.status.code(), Some(1), "a new cron job is a change");
    assert!(text(&out.stdout).contains("+[[cronjob]]"), "{}", text(&out.stdout));
    let applied = c.ok(&["apply", "-f", &good]);
    assert!(applied.contains("cronjob/tick created"), "{applied}");
    assert_eq!(c.cli(&["diff", "-f", &good]).status.code(), Some(0), "applied: no change");

    // The next minute makes a job; its run ends in a real container.
    let first = wait_for("the first job", Duration::from_secs(100), || {
        let v: serde_json::Value = serde_json::from_str(&c.ok(&["get", "cronjobs", "tick", "-o", "json"])).unwrap();
        let job = v["cronjob"]["status"]["last_job"].as_str().map(str::to_string);
        job.map(|j| (j, v))
    });
    let (job, view) = first;
    let scheduled = view["cronjob"]["status"]["last_schedule_ms"].as_u64().unwrap();
    assert_eq!(scheduled % 60_000, 0, "a minute's start");
    assert_eq!(job, format!("tick-{}", scheduled / 60_000));
    let next = view["next_ms"].as_u64().unwrap();
    assert_eq!(next, scheduled + 60_000, "{view}");
    let run = wait_for("the run done", Duration::from_secs(120), || {
        let runs = c.replicas_of(&job);
        runs.into_iter().find(|r| r.finished_ms.is_some())
    });
    let created = c.ok(&["get", "jobs", &job, "-o", "json"]);
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["cronjob"], "tick");
    eprintln!(
        "schedule {scheduled}: job made after {} ms, container started after {} ms, run done after {} ms",
        created["meta"]["created_ms"].as_u64().unwrap() - scheduled,
        run.started_ms.unwrap() - scheduled,
        run.finished_ms.unwrap() - scheduled
    );
    assert_eq!(run.exit_code, Some(0), "{run:?}");
    let logs = c.ok(&["logs", &format!("job/{job}")]);
    assert!(logs.contains("tick at "), "{logs}");

    let table = c.ok(&["get", "cronjobs"]);
    let row = table.lines().find(|l| l.starts_with("tick")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("* * * * *") && row.contains("UTC") && row.contains(" ago") && row.contains("in "), "{table}");
    let described = c.ok(&["describe", "cronjob", "tick"]);
    assert!(described.contains(&format!("(job {job})")) && described.contains("made job"), "{described}");
    assert!(c.ok(&["describe", "job", &job]).contains("Made by:     cronjob/tick"));

    // At once, from its template; a name taken is refused.
    let out = c.ok(&["job", "run", "tick-now", "--from", "cronjob/tick"]);
    assert!(out.contains("job/tick-now created from cronjob/tick"), "{out}");
    let again = c.cli(&["job", "run", "tick-now", "--from", "cronjob/tick"]);
    assert!(!again.status.success() && text(&again.stderr).contains("exists"), "{}", text(&again.stderr));
    let wrong = c.cli(&["job", "run", "x", "--from", "app/tick"]);
    assert!(!wrong.status.success() && text(&wrong.stderr).contains("expected cronjob/NAME"));
    wait_for("the manual run done", Duration::from_secs(120), || {
        c.replicas_of("tick-now").into_iter().find(|r| r.finished_ms.is_some())
    });

    // Suspended: no more jobs; deleting it takes its jobs away.
    c.ok(&["apply", "-f", &file("tick.toml", cron("suspend = true\nhistory = { successful = 2 }\n"))]);
    let out = c.ok(&["delete", "cronjob", "tick"]);
    assert!(out.contains("cronjob/tick deleted") && out.contains("tick-now"), "{out}");
    let jobs = c.ok(&["get", "jobs"]);
    assert!(!jobs.contains("tick"), "{jobs}");
    wait_for("the runs gone", Duration::from_secs(60), || {
        let all: Vec<bramble_proto::model::Replica> =
            serde_json::from_str(&c.ok(&["get", "replicas", "-o", "json"])).unwrap();
        (!all.iter().any(|r| r.app.starts_with("tick"))).then_some(())
    });
}
