//! Cron schedules: the five fields (minute, hour, day of month, month, day of week) with lists,
//! ranges, steps and names, and the `@hourly`-style macros. Pure and civil: what matches is a
//! local date and time; which instants those are in a time zone (gaps and repeats of daylight
//! saving) is the caller's (the leader's cron controller).
//!
//! As Vixie cron: when both the day of month and the day of week are restricted (neither is
//! `*`), a day matches if either does.

use std::fmt;

/// A local date and time to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilMinute {
    pub year: i32,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
}

/// A parsed schedule.
#[derive(Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u32,
    /// Bits 1–31.
    days: u32,
    /// Bits 1–12.
    months: u16,
    /// Bits 0–6, Sunday 0.
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name's number.
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[], names_from: 0 },
    Field { name: "hour", min: 0, max: 23, names: &[], names_from: 0 },
    Field { name: "day of month", min: 1, max: 31, names: &[], names_from: 1 },
    Field { name: "month", min: 1, max: 12, names: &MONTHS, names_from: 1 },
    // 7 is Sunday too.
    Field { name: "day of week", min: 0, max: 7, names: &WEEKDAYS, names_from: 0 },
];

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => {
                return Err(ScheduleError(format!(
                    "unknown macro {t:?}: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                )))
            }
            t => t,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(ScheduleError(format!(
                "expected five fields (minute hour day-of-month month day-of-week) or a macro such as @hourly, \
                 found {} in {text:?}",
                parts.len()
            )));
        }
        let mut bits = [0u64; 5];
        for (i, (part, field)) in parts.iter().zip(FIELDS.iter()).enumerate() {
            bits[i] = parse_field(part, field)?;
        }
        // Sunday is 0 and 7.
        let weekdays = ((bits[4] & 0x7f) | (bits[4] >> 7 & 1)) as u8;
        let s = Schedule {
            text: text.trim().to_string(),
            minutes: bits[0],
            hours: bits[1] as u32,
            days: bits[2] as u32,
            months: bits[3] as u16,
            weekdays,
            days_any: parts[2] == "*" || parts[2] == "?",
            weekdays_any: parts[4] == "*" || parts[4] == "?",
        };
        // A day of month no month of the schedule has (30 February) never comes.
        if !s.days_any && s.weekdays_any {
            let possible = (1..=12u8).filter(|m| s.months >> m & 1 == 1).any(|m| {
                let longest = if m == 2 { 29 } else { days_in_month(2001, m) };
                (1..=longest).any(|d| s.days >> d & 1 == 1)
            });
            if !possible {
                return Err(ScheduleError(format!("{text:?} never comes: none of its months has those days")));
            }
        }
        Ok(s)
    }
}

fn parse_field(part: &str, f: &Field) -> Result<u64, ScheduleError> {
    let mut out = 0u64;
    for item in part.split(',') {
        let bad = |why: String| ScheduleError(format!("{} field {part:?}: {why}", f.name));
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| bad(format!("expected a step number after '/', found {s:?}")))?;
                if step == 0 {
                    return Err(bad("a step of 0".into()));
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (f.min, if f.max == 7 { 6 } else { f.max })
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, f).map_err(bad)?, value(b, f).map_err(bad)?)
        } else {
            let v = value(range, f).map_err(bad)?;
            // `5/15`: from 5 to the end, every 15.
            (v, if item.contains('/') { f.max } else { v })
        };
        if lo > hi {
            return Err(bad(format!("the range {lo}-{hi} runs backwards")));
        }
        let mut v = lo;
        while v <= hi {
            out |= 1 << v;
            v += step;
        }
    }
    Ok(out)
}

fn value(s: &str, f: &Field) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = f.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + f.names_from);
    }
    let v: u32 = s.parse().map_err(|_| {
        if f.names.is_empty() {
            format!("expected a number from {} to {}, found {s:?}", f.min, f.max)
        } else {
            format!("expected a number from {} to {} or a name ({}), found {s:?}", f.min, f.max, f.names.join(", "))
        }
    })?;
    if v < f.min || v > f.max {
        return Err(format!("{v} is outside {} to {}", f.min, f.max));
    }
    Ok(v)
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// 0 Sunday … 6 Saturday (Sakamoto's method).
pub fn weekday(year: i32, month: u8, day: u8) -> u8 {
    const T: [i32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = if month < 3 { year - 1 } else { year };
    ((y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400) + T[month as usize - 1] + day as i32).rem_euclid(7))
        as u8
}

impl Schedule {
    fn day_matches(&self, year: i32, month: u8, day: u8) -> bool {
        let dom = self.days >> day & 1 == 1;
        let dow = self.weekdays >> weekday(year, month, day) & 1 == 1;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// Whether `t` is one of the schedule's minutes.
    pub fn matches(&self, t: CivilMinute) -> bool {
        self.months >> t.month & 1 == 1
            && self.day_matches(t.year, t.month, t.day)
            && self.hours >> t.hour & 1 == 1
            && self.minutes >> t.minute & 1 == 1
    }

    /// The first of the schedule's minutes after `t` (within eight years: none for a schedule
    /// that never comes, which parsing refuses).
    pub fn next_after(&self, t: CivilMinute) -> Option<CivilMinute> {
        let first_in = |from_hour: u8, from_minute: u8| -> Option<(u8, u8)> {
            for h in from_hour..24 {
                if self.hours >> h & 1 == 0 {
                    continue;
                }
                let start = if h == from_hour { from_minute } else { 0 };
                if let Some(m) = (start..60).find(|m| self.minutes >> m & 1 == 1) {
                    return Some((h, m));
                }
            }
            None
        };
        // The rest of `t`'s day, then day by day.
        let (mut year, mut month, mut day) = (t.year, t.month, t.day);
        let (mut hour, mut minute) = if t.minute == 59 { (t.hour + 1, 0) } else { (t.hour, t.minute + 1) };
        for _ in 0..(366 * 8) {
            if hour < 24 && self.months >> month & 1 == 1 && self.day_matches(year, month, day) {
                if let Some((h, m)) = first_in(hour, minute) {
                    return Some(CivilMinute { year, month, day, hour: h, minute: m });
                }
            }
            (hour, minute) = (0, 0);
            day += 1;
            if day > days_in_month(year, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> CivilMinute {
        let (date, time) = s.split_once(' ').unwrap();
        let d: Vec<i32> = date.split('-').map(|x| x.parse().unwrap()).collect();
        let t: Vec<u8> = time.split(':').map(|x| x.parse().unwrap()).collect();
        CivilMinute { year: d[0], month: d[1] as u8, day: d[2] as u8, hour: t[0], minute: t[1] }
    }

    fn next(schedule: &str, after: &str) -> CivilMinute {
        schedule.parse::<Schedule>().unwrap().next_after(at(after)).unwrap()
    }

    #[test]
    fn the_next_minute_of_common_schedules() {
        assert_eq!(next("* * * * *", "2026-12-31 23:59"), at("2027-01-01 00:00"));
        assert_eq!(next("*/15 * * * *", "2026-03-01 10:07"), at("2026-03-01 10:15"));
        assert_eq!(next("5/20 * * * *", "2026-03-01 10:46"), at("2026-03-01 11:05"));
        assert_eq!(next("0 3 * * *", "2026-03-01 03:00"), at("2026-03-02 03:00"));
        assert_eq!(next("@hourly", "2026-03-01 10:00"), at("2026-03-01 11:00"));
        assert_eq!(next("@weekly", "2026-12-05 12:00"), at("2026-12-06 00:00"), "a Sunday");
        assert_eq!(next("@monthly", "2026-01-31 00:00"), at("2026-02-01 00:00"));
        assert_eq!(next("@yearly", "2026-01-01 00:00"), at("2027-01-01 00:00"));
        assert_eq!(next("30 9 * * mon-fri", "2026-12-04 10:00"), at("2026-12-07 09:30"), "Friday → Monday");
        assert_eq!(next("0 0 29 feb *", "2026-03-01 00:00"), at("2028-02-29 00:00"), "the next leap day");
        assert_eq!(next("0 0 31 * *", "2026-04-01 00:00"), at("2026-05-31 00:00"), "April has no 31st");
        // Both days restricted: either matches (the 13th, or a Friday).
        assert_eq!(next("0 0 13 * fri", "2026-12-01 00:00"), at("2026-12-04 00:00"));
        assert_eq!(next("0 0 13 * fri", "2026-12-11 00:00"), at("2026-12-13 00:00"));
        assert_eq!(next("0 12 * * 7", "2026-12-05 00:00"), at("2026-12-06 12:00"), "7 is Sunday");
        assert_eq!(next("0 12 * JAN,Jul *", "2026-02-01 00:00"), at("2026-07-01 12:00"), "names in any case");
    }

    #[test]
    fn weekdays_are_right() {
        assert_eq!(weekday(2026, 12, 6), 0, "a Sunday");
        assert_eq!(weekday(2000, 2, 29), 2, "a Tuesday");
        assert_eq!(weekday(1970, 1, 1), 4, "a Thursday");
    }

    #[test]
    fn bad_schedules_say_what_was_expected() {
        let err = |s: &str| s.parse::<Schedule>().unwrap_err().to_string();
        assert!(err("* * * *").contains("expected five fields"), "{}", err("* * * *"));
        assert!(err("60 * * * *").contains("minute field \"60\": 60 is outside 0 to 59"), "{}", err("60 * * * *"));
        assert!(err("* * * foo *").contains("a name (jan, feb"), "{}", err("* * * foo *"));
        assert!(err("*/0 * * * *").contains("a step of 0"));
        assert!(err("* 5-2 * * *").contains("runs backwards"));
        assert!(err("@fortnightly").contains("unknown macro"));
        assert!(err("0 0 30 2 *").contains("never comes"), "{}", err("0 0 30 2 *"));
        assert!("0 0 30 2 mon".parse::<Schedule>().is_ok(), "either day: Mondays in February come");
    }

    #[test]
    fn a_schedule_is_its_text_in_toml_and_json() {
        #[derive(Debug, serde::Deserialize, serde::Serialize)]
        struct T {
            schedule: Schedule,
        }
        let t: T = toml::from_str("schedule = \"*/5 * * * *\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"schedule":"*/5 * * * *"}"#);
        let err = toml::from_str::<T>("schedule = \"61 * * * *\"").unwrap_err().to_string();
        assert!(err.contains("minute field \"61\""), "{err}");
    }
}
