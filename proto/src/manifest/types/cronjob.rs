//! `[[cronjob]]`: a job made on a schedule. Its `[cronjob.job]` table is a job's (without a
//! name: each job it makes is named `<cronjob>-<minute>`, the scheduled minute since the epoch).

use super::PathPart::Key;
use super::*;
use crate::cron::Schedule;
use crate::names::Name;
use crate::quantity::HumanDuration;
use serde::{Deserialize, Serialize};

/// What happens when a run is due while the last one is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Both run.
    #[default]
    Allow,
    /// The new run waits (within `starting_deadline`) until the last one has finished.
    Forbid,
    /// The last one is stopped and deleted; the new one runs.
    Replace,
}

impl Concurrency {
    pub fn is_default(&self) -> bool {
        *self == Concurrency::Allow
    }
}

/// How many finished jobs a cron job keeps (older ones are deleted with their runs and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    #[serde(default = "three")]
    pub successful: u32,
    #[serde(default = "one")]
    pub failed: u32,
}

fn three() -> u32 {
    3
}
fn one() -> u32 {
    1
}

impl Default for History {
    fn default() -> Self {
        History { successful: 3, failed: 1 }
    }
}

/// The most finished jobs of one kind a cron job keeps.
pub const MAX_HISTORY: u32 = 100;

/// The longest cron job name: its jobs add `-` and eight digits of minutes.
pub const MAX_CRONJOB_NAME: usize = 54;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronJobSpec {
    pub name: Name,
    /// Five fields (minute hour day-of-month month day-of-week) or a macro (`@hourly`).
    pub schedule: Schedule,
    /// The tz database zone the schedule is read in (`Europe/Berlin`); default UTC, so that
    /// every leader reads it alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Concurrency::is_default")]
    pub concurrency: Concurrency,
    /// A run not started this long after its time is skipped (with an event). Unset: a run
    /// missed (leader down, `forbid` waiting) runs once, however late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<HumanDuration>,
    #[serde(default)]
    pub history: History,
    /// No new runs while set (runs going on are left alone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// The job each run makes: a `[[job]]`'s fields, without `name`.
    pub job: AppSpec,
}

/// Whether `name` could be a tz database zone: components of letters, digits, `_`, `-`, `+`,
/// none `.` or `..` (the leader looks it up in the system's zoneinfo).
pub fn zone_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '+'))
        })
}

impl CronJobSpec {
    /// Its own problems and its job template's (as `job.FIELD`).
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.name.as_str().len() > MAX_CRONJOB_NAME {
            out.push(Problem::new(
                vec![Key("name")],
                format!(
                    "{} characters: a cron job's name has {MAX_CRONJOB_NAME} at most (its jobs add the minute)",
                    self.name.as_str().len()
                ),
            ));
        }
        if let Some(z) = self.timezone.as_deref().filter(|z| !zone_name_ok(z)) {
            out.push(Problem::new(
                vec![Key("timezone")],
                format!("{z:?} is not a time zone name: expected one from the tz database, as \"Europe/Berlin\""),
            ));
        }
        for (key, v) in [("successful", self.history.successful), ("failed", self.history.failed)] {
            if v > MAX_HISTORY {
                out.push(Problem::new(
                    vec![Key("history"), Key(key)],
                    format!("{v}: expected at most {MAX_HISTORY} finished jobs kept"),
                ));
            }
        }
        if self.starting_deadline.is_some_and(|d| d.0.as_secs() < 10) {
            out.push(Problem::new(
                vec![Key("starting_deadline")],
                "expected at least 10s (the leader looks at schedules every second, and may fail over)",
            ));
        }
        if !self.job.name.is_unnamed() {
            out.push(Problem::new(
                vec![Key("job"), Key("name")],
                "a cron job names its jobs (<cronjob>-<minute>): expected no name here",
            ));
        }
        if !matches!(self.job.mode, AppMode::Replicated | AppMode::Job) {
            out.push(Problem::new(vec![Key("job"), Key("mode")], "a cron job's runs are jobs: expected no mode"));
        }
        if !self.job.after.is_empty() {
            out.push(Problem::new(
                vec![Key("job"), Key("after")],
                "a cron job's runs start on its schedule: it has no start order",
            ));
        }
        let template = self.job_named(self.name.clone());
        for mut p in template.check() {
            p.path.insert(0, Key("job"));
            out.push(p);
        }
        out
    }

    /// The job its run scheduled at `scheduled_ms` makes: its template, named after the minute.
    pub fn job_named(&self, name: Name) -> AppSpec {
        let mut spec = self.job.clone();
        spec.name = name;
        spec.mode = AppMode::Job;
        spec
    }

    /// The name of the job of the run scheduled at `scheduled_ms`.
    pub fn job_name(&self, scheduled_ms: u64) -> Name {
        Name::new(format!("{}-{}", self.name.as_str(), scheduled_ms / 60_000)).expect("a name and digits")
    }
}
