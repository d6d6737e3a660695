//! A job's state, read from its runs (the replicas of an app whose mode is `job`): how many
//! succeeded and failed, how many are running, whether it is complete or failed, and when the
//! next run may start after a failure. Pure: the leader plans with it and the CLI shows it.

use crate::manifest::AppSpec;
use crate::model::{Replica, ReplicaPhase};
use serde::{Deserialize, Serialize};

/// The first delay after a failed run; it doubles with each failure up to [`MAX_BACKOFF_MS`].
pub const BACKOFF_MS: u64 = 10_000;
pub const MAX_BACKOFF_MS: u64 = 360_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Complete,
    /// Too many failed runs, or past its deadline (`JobStatus::reason` says which).
    Failed,
}

impl JobState {
    pub fn finished(&self) -> bool {
        !matches!(self, JobState::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub completions: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Runs placed or waiting that have not finished (lost ones not counted).
    pub active: u32,
    pub state: JobState,
    /// Why it failed (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When it finished (complete: its last successful run's end; failed: the failure's).
    pub finished_ms: Option<u64>,
    /// After a failure, no new run before this.
    pub retry_at_ms: Option<u64>,
}

/// Added to [`lost_run_wait_ms`] for what takes time besides: the board's reconciler pass, the
/// shim's kill, clocks a little apart.
pub const FENCE_MARGIN_MS: u64 = 3_000;

/// How long after its board went NotReady (`not_ready_after` of silence) a job's lost run may be
/// replaced, so that it never runs twice at once: the board, cut off at most a heartbeat after
/// the leader last heard it, notices within `idle_timeout_ms` (QUIC), waits the fence (the
/// leader's `not_ready_after`, told in its welcome) and stops the run within `stop_grace_ms`.
pub fn lost_run_wait_ms(heartbeat_ms: u64, idle_timeout_ms: u64, stop_grace_ms: u64) -> u64 {
    heartbeat_ms + idle_timeout_ms + stop_grace_ms + FENCE_MARGIN_MS
}

/// Runs that are not over: neither finished nor lost, nor being stopped.
pub fn is_active(r: &Replica) -> bool {
    !matches!(r.phase, ReplicaPhase::Succeeded | ReplicaPhase::Failed | ReplicaPhase::Lost)
        && r.terminating_ms.is_none()
}

/// The state of job `spec` created at `created_ms`, from its `runs`, at `now_ms`.
pub fn status(spec: &AppSpec, created_ms: u64, runs: &[&Replica], now_ms: u64) -> JobStatus {
    let settings = spec.job();
    let count = |phase| runs.iter().filter(|r| r.phase == phase).count() as u32;
    let (succeeded, failed) = (count(ReplicaPhase::Succeeded), count(ReplicaPhase::Failed));
    let active = runs.iter().filter(|r| is_active(r)).count() as u32;
    let last_end = |phase| runs.iter().filter(|r| r.phase == phase).filter_map(|r| r.finished_ms).max();
    let deadline = settings.active_deadline_ms.map(|d| created_ms.saturating_add(d));
    let (state, reason, finished_ms) = if succeeded >= settings.completions {
        (JobState::Complete, String::new(), last_end(ReplicaPhase::Succeeded))
    } else if failed > settings.backoff_limit {
        let why =
            format!("BackoffLimitExceeded: {failed} failed runs, more than backoff_limit {}", settings.backoff_limit);
        (JobState::Failed, why, last_end(ReplicaPhase::Failed))
    } else if let Some(d) = deadline.filter(|d| now_ms >= *d) {
        let why = format!(
            "DeadlineExceeded: still running after active_deadline {}",
            spec.active_deadline.map(|d| d.to_string()).unwrap_or_default()
        );
        (JobState::Failed, why, Some(d))
    } else {
        (JobState::Running, String::new(), None)
    };
    let retry_at_ms = (failed > 0 && state == JobState::Running).then(|| {
        let delay = BACKOFF_MS.saturating_mul(1 << (failed - 1).min(16)).min(MAX_BACKOFF_MS);
        last_end(ReplicaPhase::Failed).unwrap_or(0).saturating_add(delay)
    });
    JobStatus { completions: settings.completions, succeeded, failed, active, state, reason, finished_ms, retry_at_ms }
}

/// How many new runs to start now: enough to have `parallelism` going, never more than the
/// completions still needed; none while finished or waiting out a failure's backoff.
pub fn runs_to_start(spec: &AppSpec, s: &JobStatus, now_ms: u64) -> u32 {
    if s.state.finished() || s.retry_at_ms.is_some_and(|t| now_ms < t) {
        return 0;
    }
    let settings = spec.job();
    let want = settings.parallelism.min(settings.completions.saturating_sub(s.succeeded));
    want.saturating_sub(s.active)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifest;

    fn job(extra: &str) -> AppSpec {
        parse_manifest("t.toml", &format!("[[job]]\nname = \"backup\"\nimage = \"r/b:1\"\n{extra}"))
            .unwrap()
            .jobs
            .remove(0)
    }

    fn run(name: &str, phase: ReplicaPhase, finished: Option<u64>) -> Replica {
        Replica { phase, finished_ms: finished, node: Some("pi-1".into()), ..Replica::new("backup", name, "r", 0) }
    }

    #[test]
    fn runs_are_counted_and_a_failure_waits_out_its_backoff() {
        let spec = job("completions = 5\nparallelism = 2\nbackoff_limit = 1\n");
        let s = status(&spec, 0, &[], 0);
        assert_eq!((s.state, runs_to_start(&spec, &s, 0)), (JobState::Running, 2));
        let rs = [
            run("a", ReplicaPhase::Succeeded, Some(1_000)),
            run("b", ReplicaPhase::Failed, Some(2_000)),
            run("c", ReplicaPhase::Running, None),
        ];
        let refs: Vec<&Replica> = rs.iter().collect();
        let s = status(&spec, 0, &refs, 3_000);
        assert_eq!((s.succeeded, s.failed, s.active), (1, 1, 1));
        assert_eq!(s.retry_at_ms, Some(12_000), "10 s after the failure");
        assert_eq!(runs_to_start(&spec, &s, 3_000), 0, "waiting");
        assert_eq!(runs_to_start(&spec, &s, 12_000), 1, "then one beside the running one");
        // A second failure is one more than backoff_limit 1: failed.
        let mut rs = rs.to_vec();
        rs.push(run("d", ReplicaPhase::Failed, Some(20_000)));
        let refs: Vec<&Replica> = rs.iter().collect();
        let s = status(&spec, 0, &refs, 30_000);
        assert!(s.state == JobState::Failed && s.reason.starts_with("BackoffLimitExceeded"), "{s:?}");
        assert_eq!((s.finished_ms, runs_to_start(&spec, &s, 30_000)), (Some(20_000), 0));
    }

    #[test]
    fn complete_at_its_completions_and_failed_past_its_deadline() {
        let spec = job("completions = 2\nparallelism = 3\nactive_deadline = \"1m\"\n");
        let s = status(&spec, 0, &[], 0);
        assert_eq!(runs_to_start(&spec, &s, 0), 2, "never more than the completions left");
        let rs = [run("a", ReplicaPhase::Succeeded, Some(5_000)), run("b", ReplicaPhase::Succeeded, Some(7_000))];
        let refs: Vec<&Replica> = rs.iter().collect();
        let s = status(&spec, 0, &refs, 100_000);
        assert_eq!((s.state, s.finished_ms), (JobState::Complete, Some(7_000)), "complete wins over the deadline");
        let rs = [run("a", ReplicaPhase::Running, None)];
        let refs: Vec<&Replica> = rs.iter().collect();
        let s = status(&spec, 1_000, &refs, 61_000);
        assert!(s.state == JobState::Failed && s.reason.starts_with("DeadlineExceeded"), "{s:?}");
        assert_eq!(s.finished_ms, Some(61_000));
    }

    #[test]
    fn only_a_job_has_a_ttl_and_it_is_read_as_a_duration() {
        assert_eq!(job("ttl_after_finished = \"1h\"\n").job().ttl_after_finished_ms, Some(3_600_000));
        assert_eq!(job("").job().ttl_after_finished_ms, None);
        let err = parse_manifest("t.toml", "[[app]]\nname = \"web\"\nimage = \"r/w:1\"\nttl_after_finished = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml:4:") && err.contains("only a job ([[job]]) has ttl_after_finished"), "{err}");
        let err = parse_manifest("t.toml", "[[job]]\nname = \"b\"\nimage = \"r/b:1\"\nttl_after_finished = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml:4:") && err.contains("ttl_after_finished"), "{err}");
    }
}
