//! Cron schedules in a time zone: which instants a schedule's local minutes are, and which runs
//! are due. Each local time runs once: in the hour a spring-forward skips, its runs happen at the
//! jump; in the hour a fall-back repeats, only on its first pass. Time zones are the system's
//! zoneinfo (the board's tzdata, with its POSIX rules for the years past its table).

use bramble_proto::cron::{CivilMinute, Schedule};
use bramble_proto::job::JobState;
use bramble_proto::manifest::{Concurrency, CronJobSpec};
use bramble_proto::model::EventReason;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{civil, Timestamp};

/// Why a time zone cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {name:?}: expected a name from the tz database, as \"Europe/Berlin\" or \"UTC\" ({why})")]
pub struct ZoneError {
    pub name: String,
    pub why: String,
}

/// The time zone `name` (none: UTC; UTC needs no zoneinfo, others the board's tzdata).
pub fn zone(name: Option<&str>) -> Result<TimeZone, ZoneError> {
    match name {
        None | Some("UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|e| ZoneError { name: n.to_string(), why: e.to_string() }),
    }
}

fn civil_of(tz: &TimeZone, ms: u64) -> Option<CivilMinute> {
    let dt = tz.to_datetime(Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok()?);
    Some(CivilMinute {
        year: dt.year() as i32,
        month: dt.month() as u8,
        day: dt.day() as u8,
        hour: dt.hour() as u8,
        minute: dt.minute() as u8,
    })
}

fn ms(ts: Timestamp) -> Option<u64> {
    u64::try_from(ts.as_millisecond()).ok()
}

/// The first instant (ms since the epoch) after `after_ms` at which `schedule` runs in `tz`.
pub fn next_run(schedule: &Schedule, tz: &TimeZone, after_ms: u64) -> Option<u64> {
    let mut c = civil_of(tz, after_ms)?;
    // Bounded: a fold skips a handful of minutes at most, but a schedule could match every one.
    for _ in 0..10_000 {
        c = schedule.next_after(c)?;
        let dt =
            civil::DateTime::new(c.year as i16, c.month as i8, c.day as i8, c.hour as i8, c.minute as i8, 0, 0).ok()?;
        let at = match tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => ms(offset.to_timestamp(dt).ok()?)?,
            // Skipped by the clock: at the jump (between the two readings of the minute).
            AmbiguousOffset::Gap { before, after } => {
                let (mut lo, mut hi) = (ms(after.to_timestamp(dt).ok()?)?, ms(before.to_timestamp(dt).ok()?)?);
                // The first instant whose offset is `after`: the transition.
                while hi - lo > 1_000 {
                    let mid = lo + (hi - lo) / 2;
                    let off = tz.to_offset(Timestamp::from_millisecond(mid as i64).ok()?);
                    if off == after {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi - hi % 1_000
            }
            // Repeated: its first pass only.
            AmbiguousOffset::Fold { before, .. } => ms(before.to_timestamp(dt).ok()?)?,
        };
        if at > after_ms {
            return Some(at);
        }
    }
    None
}

/// What is due for a schedule last run (or created) at `last_ms`, at `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The latest scheduled time at or before now, if any came since `last_ms`.
    pub latest_ms: Option<u64>,
    /// Scheduled times since `last_ms` before the latest (missed: not run).
    pub missed: u32,
    /// The next scheduled time after now.
    pub next_ms: Option<u64>,
}

/// The scheduled times since `last_ms` up to `now_ms` (past `limit` of them, `missed` says
/// `limit` and the latest is found from now backwards).
pub fn due(schedule: &Schedule, tz: &TimeZone, last_ms: u64, now_ms: u64, limit: u32) -> Due {
    let (mut latest, mut count) = (None, 0u32);
    let mut at = last_ms;
    loop {
        match next_run(schedule, tz, at) {
            Some(t) if t <= now_ms && count < limit => {
                latest = Some(t);
                count += 1;
                at = t;
            }
            Some(t) if t <= now_ms => {
                // Too many to count: the latest from windows before now, wider each time.
                latest = latest_before(schedule, tz, at, now_ms).or(latest);
                return Due { latest_ms: latest, missed: limit, next_ms: next_run(schedule, tz, now_ms) };
            }
            next => return Due { latest_ms: latest, missed: count.saturating_sub(1), next_ms: next },
        }
    }
}

/// The last scheduled time in `(floor, now]`, looked for in windows ending now (two minutes, two
/// hours, two days, …), each walked forwards.
fn latest_before(schedule: &Schedule, tz: &TimeZone, floor: u64, now_ms: u64) -> Option<u64> {
    const MINUTE: u64 = 60_000;
    for window in [2 * MINUTE, 120 * MINUTE, 2 * 1_440 * MINUTE, 64 * 1_440 * MINUTE, 800 * 1_440 * MINUTE] {
        let mut at = now_ms.saturating_sub(window).max(floor);
        let mut found = None;
        while let Some(t) = next_run(schedule, tz, at).filter(|t| *t <= now_ms) {
            found = Some(t);
            at = t;
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// A job a cron job made, as its history and its concurrency see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub name: String,
    pub created_ms: u64,
    pub state: JobState,
}

/// What one cron job's pass does; written in one transaction with the cron job's revision
/// checked, so two leaders never both act on one schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Make the job of the run scheduled at this time.
    pub run: Option<u64>,
    /// The scheduled time to record as the last (a run made, or one skipped past its deadline).
    pub record: Option<u64>,
    /// Jobs to delete: replaced (`concurrency = "replace"`) or past the history kept.
    pub replace: Vec<String>,
    pub prune: Vec<String>,
    /// What to say, about the cron job.
    pub say: Vec<(EventReason, String)>,
    /// A run is due but waits (`concurrency = "forbid"`): why.
    pub waiting: Option<String>,
    /// When it runs next (none: suspended, or never again).
    pub next_ms: Option<u64>,
}

/// How many missed runs a pass counts (past that, "100 or more").
pub const MISSED_LIMIT: u32 = 100;

/// One cron job at `now_ms`: `last_ms` is its record (none: never ran; counted from
/// `created_ms`), `made` the jobs it made that still exist.
pub fn decide(
    spec: &CronJobSpec,
    tz: &TimeZone,
    created_ms: u64,
    last_ms: Option<u64>,
    made: &[Made],
    now_ms: u64,
) -> Decision {
    let mut d = Decision::default();
    // History: the newest finished jobs of each kind stay.
    let mut finished: Vec<&Made> = made.iter().filter(|m| m.state.finished()).collect();
    finished.sort_by_key(|m| std::cmp::Reverse((m.created_ms, m.name.clone())));
    let (mut ok, mut failed) = (0, 0);
    for m in finished {
        let (kept, limit) = match m.state {
            JobState::Complete => (&mut ok, spec.history.successful),
            _ => (&mut failed, spec.history.failed),
        };
        *kept += 1;
        if *kept > limit {
            d.prune.push(m.name.clone());
        }
    }
    if spec.suspend {
        return d;
    }
    let base = last_ms.unwrap_or(created_ms);
    let due = due(&spec.schedule, tz, base, now_ms, MISSED_LIMIT);
    d.next_ms = due.next_ms;
    let Some(at) = due.latest_ms else { return d };
    let when = show(tz, at);
    let missed = match due.missed {
        0 => String::new(),
        MISSED_LIMIT => format!(" ({MISSED_LIMIT} or more earlier runs were missed; the latest runs once)"),
        n => format!(" ({n} earlier run{} missed; the latest runs once)", if n == 1 { " was" } else { "s were" }),
    };
    let late_ms = now_ms.saturating_sub(at);
    if let Some(deadline) = spec.starting_deadline.filter(|dl| late_ms > dl.0.as_millis() as u64) {
        d.record = Some(at);
        d.say.push((
            EventReason::MissedSchedule,
            format!(
                "the run of {when} was skipped: {}s late, past starting_deadline {deadline}{missed}",
                late_ms / 1000
            ),
        ));
        return d;
    }
    let running: Vec<&Made> = made.iter().filter(|m| !m.state.finished()).collect();
    match spec.concurrency {
        Concurrency::Forbid if !running.is_empty() => {
            let names: Vec<&str> = running.iter().map(|m| m.name.as_str()).collect();
            d.waiting = Some(format!(
                "the run of {when} waits: job {} is still running (concurrency forbid)",
                names.join(", ")
            ));
            return d;
        }
        Concurrency::Replace => d.replace = running.iter().map(|m| m.name.clone()).collect(),
        _ => {}
    }
    d.run = Some(at);
    d.record = Some(at);
    let job = spec.job_name(at);
    let replaced = if d.replace.is_empty() {
        String::new()
    } else {
        format!(", replacing {} (concurrency replace)", d.replace.join(", "))
    };
    d.say.push((EventReason::JobCreated, format!("made job {job} for the run of {when}{replaced}{missed}")));
    d
}

/// A time as the cron job's zone reads it: `2026-12-06 11:00 +01:00`.
pub fn show(tz: &TimeZone, ms: u64) -> String {
    match Timestamp::from_millisecond(ms as i64) {
        Ok(ts) => ts.to_zoned(tz.clone()).strftime("%F %H:%M %:z").to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    fn runs(schedule: &str, zone_name: &str, from: &str, n: usize) -> Vec<String> {
        let s: Schedule = schedule.parse().unwrap();
        let tz = zone(Some(zone_name)).unwrap();
        let mut at = utc(from);
        (0..n)
            .map(|_| {
                at = next_run(&s, &tz, at).unwrap();
                show(&tz, at)
            })
            .collect()
    }

    #[test]
    fn daily_runs_across_both_daylight_saving_changes_run_once_each_day() {
        // Berlin, 2026: 29 March 02:00 → 03:00; 25 October 03:00 → 02:00.
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
            ["2026-03-28 02:30 +01:00", "2026-03-29 03:00 +02:00", "2026-03-30 02:30 +02:00"],
            "02:30 does not exist on the 29th: it runs at the jump"
        );
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", "2026-10-23T12:00:00Z", 3),
            ["2026-10-24 02:30 +02:00", "2026-10-25 02:30 +02:00", "2026-10-26 02:30 +01:00"],
            "02:30 comes twice on the 25th: once"
        );
        // Every 30 minutes through the repeated hour: its first pass only.
        assert_eq!(
            runs("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:10:00Z", 5),
            [
                "2026-10-25 01:30 +02:00",
                "2026-10-25 02:00 +02:00",
                "2026-10-25 02:30 +02:00",
                "2026-10-25 03:00 +01:00",
                "2026-10-25 03:30 +01:00"
            ]
        );
        // New York and UTC.
        assert_eq!(
            runs("0 9 * * *", "America/New_York", "2026-03-07T20:00:00Z", 2),
            ["2026-03-08 09:00 -04:00", "2026-03-09 09:00 -04:00"]
        );
        assert_eq!(runs("@hourly", "UTC", "2026-12-06T10:30:00Z", 1), ["2026-12-06 11:00 +00:00"]);
    }

    #[test]
    fn missed_runs_are_counted_and_the_latest_is_due() {
        let s: Schedule = "* * * * *".parse().unwrap();
        let tz = zone(None).unwrap();
        // A leader down for an hour: 60 minutes came, the latest is due, 59 were missed.
        let d = due(&s, &tz, utc("2026-12-06T10:00:00Z"), utc("2026-12-06T11:00:30Z"), 1_000);
        assert_eq!(d.latest_ms, Some(utc("2026-12-06T11:00:00Z")));
        assert_eq!(d.missed, 59);
        assert_eq!(d.next_ms, Some(utc("2026-12-06T11:01:00Z")));
        // Nothing came yet.
        let d = due(&s, &tz, utc("2026-12-06T10:00:00Z"), utc("2026-12-06T10:00:59Z"), 1_000);
        assert_eq!((d.latest_ms, d.missed), (None, 0));
        // Counting stops at the limit and goes on from now.
        let d = due(&s, &tz, utc("2026-01-01T00:00:00Z"), utc("2026-12-06T11:00:30Z"), 100);
        assert_eq!(d.latest_ms, Some(utc("2026-12-06T11:00:00Z")));
        assert_eq!(d.missed, 100);
    }

    #[test]
    fn an_unknown_zone_says_what_was_expected() {
        let e = zone(Some("Mars/Olympus")).unwrap_err().to_string();
        assert!(e.starts_with("unknown time zone \"Mars/Olympus\": expected a name from the tz database"), "{e}");
        assert!(zone(Some("../../etc/passwd")).is_err());
    }
}
