//! A container's lifecycle as the shim runs it: an enum with guarded transitions, persisted, and
//! the restart decision: the first restart after a crash is immediate; crashes that repeat wait
//! as Kubernetes' backoff does (10 s doubling to 5 min), reset after 10 min of running. Pure: time
//! comes in as `now_ms`.

use super::config::RestartPolicy;
use serde::{Deserialize, Serialize};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code, or 128 + signal when killed by one.
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_ms: u64,
    /// Why Bramble killed it, if it did (a failing liveness or startup probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<String>,
    /// When that run started (set as the exit is recorded): a run over before anyone saw it
    /// running still says when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Being created or waiting for its first start.
    Starting,
    Running {
        pid: i32,
        started_ms: u64,
    },
    /// Exited; restarts at `until_ms`.
    BackingOff {
        until_ms: u64,
        last: Exit,
    },
    /// Exited for good (policy) or stopped on request.
    Exited {
        last: Exit,
        stopped: bool,
    },
    /// The container could not be created or started; retried like an exit.
    Failed {
        reason: String,
        until_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffPolicy {
    pub base_ms: u64,
    pub cap_ms: u64,
    /// A run at least this long resets the backoff.
    pub reset_after_ms: u64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { base_ms: 10_000, cap_ms: 300_000, reset_after_ms: 600_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub phase: Phase,
    pub restarts: u32,
    /// The delay the next restart waits (0 after a long run: the first restart is immediate).
    pub next_backoff_ms: u64,
    pub policy: RestartPolicy,
    pub backoff: BackoffPolicy,
    /// A stop was asked for: no more restarts.
    pub stopping: bool,
    /// How the previous run ended (kept while the next one runs).
    #[serde(default)]
    pub last_exit: Option<Exit>,
    /// Runs the kernel ended for running out of memory (each restart makes a new cgroup, whose
    /// own counter starts again).
    #[serde(default)]
    pub oom_kills: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a container that is {from}")]
pub struct BadTransition {
    pub action: &'static str,
    pub from: &'static str,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running { .. } => "running",
            Phase::BackingOff { .. } => "backing off",
            Phase::Exited { .. } => "exited",
            Phase::Failed { .. } => "failed",
        }
    }
}

impl Lifecycle {
    pub fn new(policy: RestartPolicy, backoff: BackoffPolicy) -> Self {
        Lifecycle {
            phase: Phase::Starting,
            restarts: 0,
            next_backoff_ms: 0,
            policy,
            backoff,
            stopping: false,
            last_exit: None,
            oom_kills: 0,
        }
    }

    fn bad(&self, action: &'static str) -> BadTransition {
        BadTransition { action, from: self.phase.name() }
    }

    pub fn can_start(&self, now_ms: u64) -> bool {
        !self.stopping
            && match &self.phase {
                Phase::Starting => true,
                Phase::BackingOff { until_ms, .. } | Phase::Failed { until_ms, .. } => now_ms >= *until_ms,
                _ => false,
            }
    }

    /// The container is running as `pid`.
    pub fn started(&mut self, pid: i32, now_ms: u64) -> Result<(), BadTransition> {
        if !self.can_start(now_ms) {
            return Err(self.bad("start"));
        }
        if !matches!(self.phase, Phase::Starting) {
            self.restarts += 1;
        }
        self.phase = Phase::Running { pid, started_ms: now_ms };
        Ok(())
    }

    /// The container could not be started; try again after a backoff.
    pub fn start_failed(&mut self, reason: String, now_ms: u64) {
        let delay = self.take_backoff();
        self.phase = Phase::Failed { reason, until_ms: now_ms + delay };
    }

    fn take_backoff(&mut self) -> u64 {
        let d = self.next_backoff_ms;
        self.next_backoff_ms = if d == 0 { self.backoff.base_ms } else { (d * 2).min(self.backoff.cap_ms) };
        d
    }

    /// The running container exited; decides whether and when it restarts.
    pub fn exited(&mut self, exit: Exit) -> Result<(), BadTransition> {
        let Phase::Running { started_ms, .. } = self.phase else { return Err(self.bad("record the exit of")) };
        let mut exit = exit;
        exit.started_ms.get_or_insert(started_ms);
        if exit.oom_killed {
            self.oom_kills += 1;
        }
        self.last_exit = Some(exit.clone());
        if exit.finished_ms.saturating_sub(started_ms) >= self.backoff.reset_after_ms {
            self.next_backoff_ms = 0;
        }
        let restart = !self.stopping
            && match self.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Never => false,
            };
        self.phase = if restart {
            let delay = self.take_backoff();
            Phase::BackingOff { until_ms: exit.finished_ms + delay, last: exit }
        } else {
            Phase::Exited { last: exit, stopped: self.stopping }
        };
        Ok(())
    }

    /// A stop was asked for: a waiting restart is cancelled; a running container must be signalled.
    pub fn stop(&mut self) {
        self.stopping = true;
        match &self.phase {
            Phase::BackingOff { last, .. } => self.phase = Phase::Exited { last: last.clone(), stopped: true },
            Phase::Failed { .. } | Phase::Starting => {
                self.phase = Phase::Exited {
                    last: Exit {
                        code: 0,
                        signal: None,
                        oom_killed: false,
                        finished_ms: 0,
                        killed_by: None,
                        started_ms: None,
                    },
                    stopped: true,
                }
            }
            _ => {}
        }
    }

    /// When the shim must act next (a restart due), if ever.
    pub fn wake_at(&self) -> Option<u64> {
        match &self.phase {
            Phase::BackingOff { until_ms, .. } | Phase::Failed { until_ms, .. } if !self.stopping => Some(*until_ms),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32, at: u64) -> Exit {
        Exit { code, signal: None, oom_killed: false, finished_ms: at, killed_by: None, started_ms: None }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut l = Lifecycle::new(RestartPolicy::Always, BackoffPolicy::default());
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            l.started(1, now).unwrap();
            now += 1000;
            l.exited(exit(1, now)).unwrap();
            let until = l.wake_at().unwrap();
            delays.push((until - now) / 1000);
            assert!(!l.can_start(until - 1), "not before the backoff ends");
            now = until;
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300], "the first restart at once, then backing off");
        assert_eq!(l.restarts, 6);
        l.started(1, now).unwrap();
        now += 600_000;
        l.exited(exit(1, now)).unwrap();
        assert_eq!(l.wake_at().unwrap() - now, 0, "ten minutes of running reset the backoff");
        l.started(1, now).unwrap();
        l.exited(exit(1, now + 5)).unwrap();
        assert_eq!(l.wake_at().unwrap() - (now + 5), 10_000, "a second crash in a row waits");
    }

    #[test]
    fn policies() {
        let mut l = Lifecycle::new(RestartPolicy::OnFailure, BackoffPolicy::default());
        l.started(1, 0).unwrap();
        l.exited(exit(0, 5)).unwrap();
        assert!(matches!(l.phase, Phase::Exited { stopped: false, .. }), "on-failure: success stays exited");
        let mut l = Lifecycle::new(RestartPolicy::OnFailure, BackoffPolicy::default());
        l.started(1, 0).unwrap();
        l.exited(Exit {
            code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_ms: 5,
            killed_by: None,
            started_ms: None,
        })
        .unwrap();
        assert!(matches!(l.phase, Phase::BackingOff { .. }));
        let mut l = Lifecycle::new(RestartPolicy::Never, BackoffPolicy::default());
        l.started(1, 0).unwrap();
        l.exited(exit(3, 5)).unwrap();
        assert_eq!(l.wake_at(), None);
    }

    #[test]
    fn guarded_transitions_and_stop() {
        let mut l = Lifecycle::new(RestartPolicy::Always, BackoffPolicy::default());
        assert_eq!(l.exited(exit(0, 1)), Err(BadTransition { action: "record the exit of", from: "starting" }));
        l.started(7, 0).unwrap();
        assert_eq!(l.started(8, 0), Err(BadTransition { action: "start", from: "running" }));
        l.stop();
        l.exited(exit(143, 10)).unwrap();
        assert!(matches!(l.phase, Phase::Exited { stopped: true, .. }), "no restart after a stop");
        assert!(!l.can_start(u64::MAX));
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Lifecycle>(&json).unwrap(), l, "persisted as JSON");
    }
}
