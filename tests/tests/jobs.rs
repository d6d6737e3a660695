//! Jobs end to end (issue 31), real containers on two boards: a job of 5 completions, 2 at a
//! time, whose first run fails (exit 3) and is retried after its backoff; `get jobs`, `describe
//! job`, `logs job/NAME`; a job past its backoff limit fails and says why; a job's bad fields are
//! apply errors with their line; `delete job` takes its runs away. A migration job that an app
//! starts after (`after`), shown by `diff` as a job; a job that deletes itself once finished
//! (`ttl_after_finished`), and what may not start after one. A run on a board cut off from the
//! leader: the board stops it (the fence) before the leader starts its replacement elsewhere.

use bramble_agent::runtime::lifecycle::Phase;
use bramble_agent::runtime::protocol::ShimState;
use bramble_proto::model::{Replica, ReplicaPhase};
use bramble_tests::{text, wait_for, Cluster};
use std::time::Duration;

fn job_status(c: &Cluster, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["get", "jobs", name, "-o", "json"])).unwrap();
    v["status"].clone()
}

#[test]
fn jobs_run_to_completion_retry_failures_and_say_what_happened() {
    // Both boards may mount one directory of this machine: the runs share it, wherever they run.
    let host = tempfile::Builder::new().prefix("bramble-job-").tempdir().unwrap();
    let allow = format!("[volumes]\nhost_paths = [\"{}\"]\n", host.path().display());
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(2, &allow);
    c.ok(&["label", "node", "board-1", "scratch=yes"]);
    c.ok(&["label", "node", "board-2", "scratch=yes"]);
    let file = |name: &str, body: String| c.write(name, &body);
    let job = |name: &str, settings: &str, run: &str| {
        format!(
            "[[job]]\nname = \"{name}\"\nimage = \"{image}\"\n{settings}\
             command = [\"/bin/sh\", \"-c\", \"{run}\"]\n\
             [[job.volumes]]\ntype = \"host\"\nhost_path = \"{}\"\nnode_label = \"scratch=yes\"\npath = \"/shared\"\n",
            host.path().display()
        )
    };

    // Bad fields: refused with the line.
    let bad = file("bad.toml", job("bad", "replicas = 3\n", "true"));
    let out = c.cli(&["apply", "-f", &bad]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.toml:4:12: job[0].replicas") && err.contains("runs to completion"),
        "{err}"
    );

    // The first run to take the marker fails; the others take a second each and succeed.
    let run = "if mkdir /shared/failed-once 2>/dev/null; then echo failing; exit 3; fi; \
               sleep 1; echo ran >> /shared/log; echo done";
    let batch = file("batch.toml", job("batch", "completions = 5\nparallelism = 2\nbackoff_limit = 2\n", run));
    let out = c.ok(&["apply", "-f", &batch]);
    assert!(out.contains("job/batch created"), "{out}");
    let started = std::time::Instant::now();
    let status = wait_for("the job complete", Duration::from_secs(180), || {
        let s = job_status(&c, "batch");
        (s["state"] == "Complete").then_some(s)
    });
    eprintln!("job of 5 runs, 2 at a time, one failure: complete in {:?}", started.elapsed());
    assert_eq!((status["succeeded"].as_u64(), status["failed"].as_u64()), (Some(5), Some(1)), "{status}");
    let log = std::fs::read_to_string(host.path().join("log")).unwrap();
    assert_eq!(log.lines().count(), 5, "five runs did the work: {log}");

    // Its runs: never more than two at once; the failure's exit code kept.
    let runs: Vec<Replica> = c.replicas_of("batch");
    assert_eq!(runs.len(), 6, "{runs:?}");
    let spans: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r.started_ms.unwrap_or_else(|| panic!("{r:?}")), r.finished_ms.unwrap_or_else(|| panic!("{r:?}"))))
        .collect();
    for (a, _) in &spans {
        let at_once = spans.iter().filter(|(s, e)| s <= a && a < e).count();
        assert!(at_once <= 2, "{at_once} runs at once: {spans:?}");
    }
    let failed: Vec<&Replica> = runs.iter().filter(|r| r.phase == ReplicaPhase::Failed).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].exit_code, Some(3));
    let first_retry =
        runs.iter().filter(|r| r.meta.created_ms > failed[0].finished_ms.unwrap()).map(|r| r.meta.created_ms).min();
    if let Some(t) = first_retry {
        assert!(t >= failed[0].finished_ms.unwrap() + 9_000, "the retry waited out the 10 s backoff");
    }

    let table = c.ok(&["get", "jobs"]);
    assert!(table.lines().any(|l| l.starts_with("batch") && l.contains("5/5") && l.contains("Complete")), "{table}");
    assert!(!c.ok(&["get", "apps"]).contains("batch"), "a job is not listed as an app");
    let described = c.ok(&["describe", "job", "batch"]);
    assert!(described.contains("Status:      Complete") && described.contains("exit 3"), "{described}");
    assert!(described.contains("5 succeeded of 5 wanted, 1 failed"), "{described}");
    let logs = c.ok(&["logs", "job/batch"]);
    assert_eq!(logs.matches("] done").count(), 5, "{logs}");
    assert!(logs.contains("] failing"), "{logs}");
    let out = c.cli(&["scale", "app", "batch", "--replicas", "3"]);
    assert!(!out.status.success() && text(&out.stderr).contains("is a job"), "{}", text(&out.stderr));
    // Its template is its runs': a change is refused; its parallelism may change.
    let changed = file("changed.toml", job("batch", "completions = 5\nparallelism = 2\n", "echo other"));
    let out = c.cli(&["apply", "-f", &changed]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("a job's template cannot change"),
        "{}",
        text(&out.stderr)
    );

    // Always failing, backoff_limit 1: the second failure fails the job, saying why.
    let doomed = file("doomed.toml", job("doomed", "backoff_limit = 1\n", "echo no; exit 1"));
    c.ok(&["apply", "-f", &doomed]);
    let status = wait_for("the job failed", Duration::from_secs(120), || {
        let s = job_status(&c, "doomed");
        (s["state"] == "Failed").then_some(s)
    });
    assert!(status["reason"].as_str().unwrap().starts_with("BackoffLimitExceeded: 2 failed runs"), "{status}");
    assert_eq!(c.replicas_of("doomed").len(), 2, "no run after it failed");

    // Deleted, its runs go from the boards.
    c.ok(&["delete", "job", "batch", "doomed"]);
    wait_for("the runs gone", Duration::from_secs(60), || {
        let out = c.cli(&["get", "replicas", "-o", "json"]);
        let rs: Vec<Replica> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rs.is_empty().then_some(())
    });
    c.remove_containers();
}

#[test]
fn an_app_starts_after_a_job_completes_and_a_job_with_a_ttl_deletes_itself() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(1, "");
    let file = |name: &str, body: String| c.write(name, &body);
    let migrate = |settings: &str| {
        format!(
            "[[job]]\nname = \"migrate\"\nimage = \"{image}\"\n{settings}\
             command = [\"/bin/sh\", \"-c\", \"sleep 6; echo migrated\"]\n"
        )
    };
    let web = format!(
        "[[app]]\nname = \"web\"\nimage = \"{image}\"\nafter = [\"migrate\"]\n\
         command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
    );

    // diff shows the job as one, written as [[job]].
    let both = file("both.toml", migrate("") + &web);
    let out = c.cli(&["diff", "-f", &both]);
    let d = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "something would change: {d}{}", text(&out.stderr));
    assert!(d.contains("+++ job/migrate (new)") && d.contains("+[[job]]") && !d.contains("mode ="), "{d}");
    assert!(d.contains("+++ app/web (new)"), "{d}");

    // web waits for the job to complete, not for its run to be running.
    c.ok(&["apply", "-f", &both]);
    let waiting = wait_for("web waits for the job", Duration::from_secs(30), || {
        let rs = c.replicas_of("web");
        rs.iter().find(|r| r.reason.contains("waiting for job migrate to complete")).cloned()
    });
    assert!(waiting.node.is_none(), "{waiting:?}");
    wait_for("the job's run running", Duration::from_secs(60), || {
        c.replicas_of("migrate").iter().any(|r| r.phase == ReplicaPhase::Running).then_some(())
    });
    assert!(c.replicas_of("web").iter().all(|r| r.node.is_none()), "a running job is not a complete one");
    let web_run = wait_for("web running", Duration::from_secs(90), || {
        c.replicas_of("web").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    let run = c.replicas_of("migrate").into_iter().next().expect("the job's run");
    let (done, started) = (run.finished_ms.expect("its end"), web_run.started_ms.expect("web's start"));
    assert!(started >= done, "web started at {started}, before the job completed at {done}");
    assert_eq!(c.ok(&["diff", "-f", &both]), "", "applied: nothing would change");

    // A ttl on a job an app starts after is refused (then nothing could start after it).
    let fleeting = file("fleeting.toml", migrate("ttl_after_finished = \"3s\"\n"));
    let out = c.cli(&["apply", "-f", &fleeting]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("fleeting.toml:4:")
            && err.contains("job[0].ttl_after_finished")
            && err.contains("web start after this job"),
        "{err}"
    );

    // A job with a ttl, nothing after it: kept 3 s once complete, then deleted with its runs.
    let once = file(
        "once.toml",
        format!(
            "[[job]]\nname = \"once\"\nimage = \"{image}\"\nttl_after_finished = \"3s\"\n\
             command = [\"/bin/sh\", \"-c\", \"echo once\"]\n"
        ),
    );
    c.ok(&["apply", "-f", &once]);
    let finished = wait_for("once complete", Duration::from_secs(60), || {
        let s = job_status(&c, "once");
        (s["state"] == "Complete").then(|| s["finished_ms"].as_u64()).flatten()
    });
    let described = c.ok(&["describe", "job", "once"]);
    assert!(described.contains("Kept:        3s after it finishes (deleted "), "{described}");
    wait_for("once deleted", Duration::from_secs(30), || {
        let out = c.cli(&["get", "jobs", "once"]);
        (!out.status.success()).then_some(())
    });
    let gone = bramble_proto::time::now_ms();
    assert!(gone >= finished + 3_000, "deleted {} ms after it finished", gone - finished);
    wait_for("its run gone", Duration::from_secs(30), || {
        let out = c.cli(&["get", "replicas", "-o", "json"]);
        let rs: Vec<Replica> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.success() && !rs.iter().any(|r| r.app == "once")).then_some(())
    });
    let events = c.ok(&["events"]);
    assert!(events.contains("job once deleted: finished 3s ago (ttl_after_finished)"), "{events}");
    assert!(!c.ok(&["get", "jobs"]).contains("once"));

    c.ok(&["delete", "app", "web"]);
    c.ok(&["delete", "job", "migrate"]);
    wait_for("the replicas gone", Duration::from_secs(60), || {
        let out = c.cli(&["get", "replicas", "-o", "json"]);
        let rs: Vec<Replica> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rs.is_empty().then_some(())
    });
    c.remove_containers();
}

/// The state its shim keeps of container `id` on board `i`.
fn shim_state(c: &Cluster, i: usize, id: &str) -> Option<ShimState> {
    let bytes = std::fs::read(c.shims_dir(i).join(id).join("state.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[test]
fn a_cut_off_board_stops_its_run_before_the_leader_starts_another() {
    let (c, _registry, image) = bramble_tests::cluster::with_busybox(2, "");
    let manifest = c.dir.path().join("long.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[job]]\nname = \"long\"\nimage = \"{image}\"\nstop_grace = \"1s\"\n\
             command = [\"/bin/sh\", \"-c\", \"exec sleep 600\"]\n"
        ),
    )
    .unwrap();
    c.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let first = wait_for("the run running", Duration::from_secs(60), || {
        c.replicas_of("long").into_iter().find(|r| r.phase == ReplicaPhase::Running)
    });
    let board: usize = first.node.as_deref().unwrap().trim_start_matches("board-").parse().unwrap();
    let other = 3 - board;

    // Its board is cut off (the agent keeps running, alone).
    let cut = bramble_proto::time::now_ms();
    c.lab.set_link(board, false);
    let second = wait_for("a new run running on the other board", Duration::from_secs(120), || {
        c.replicas_of("long").into_iter().find(|r| r.meta.name != first.meta.name && r.phase == ReplicaPhase::Running)
    });
    assert_eq!(second.node, Some(format!("board-{other}")));
    let started = second.started_ms.expect("its start");
    // The cut-off board had stopped the first run by then: its shim says when it ended.
    let old = shim_state(&c, board, &first.meta.name).expect("the first run's container is still on its board");
    let ended = match &old.lifecycle.phase {
        Phase::Exited { last, stopped: true } => last.finished_ms,
        other => panic!("the first run still {other:?} on the cut-off board when the second started"),
    };
    eprintln!(
        "cut at 0: the board stopped its run at {:.1}s, the leader started another at {:.1}s",
        (ended - cut) as f64 / 1000.0,
        (started - cut) as f64 / 1000.0
    );
    assert!(ended < started, "the first run ended at {ended}, after the second started at {started}");

    // Back: the board says why it stopped the run, and keeps only the new one's place.
    c.lab.set_link(board, true);
    c.wait_status(board, bramble_proto::model::ConditionStatus::True, Duration::from_secs(60));
    wait_for("the board's event", Duration::from_secs(30), || {
        c.ok(&["events"]).contains("stopped: no leader for").then_some(())
    });
    let runs = c.replicas_of("long");
    assert_eq!(runs.iter().filter(|r| bramble_proto::job::is_active(r)).count(), 1, "{runs:?}");
    c.ok(&["delete", "job", "long"]);
    wait_for("the runs gone", Duration::from_secs(60), || {
        let out = c.cli(&["get", "replicas", "-o", "json"]);
        let rs: Vec<Replica> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.success() && rs.is_empty()).then_some(())
    });
    c.remove_containers();
}
