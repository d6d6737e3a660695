//! Quantities in Kubernetes' notation: cpu (`250m`, `0.5`, `2`), memory (`64Mi`, `1G`) and durations
//! (`500ms`, `10s`, `5m`, `1h30m`).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuantityError(pub String);

/// CPU in millicores (`1000` = one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cpu(pub u64);

/// The largest CPU quantity accepted: 1024 cores.
pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;

impl FromStr for Cpu {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            QuantityError(format!(
                "invalid cpu quantity {s:?}: expected millicores like \"250m\" or cores like \"0.5\" or \"2\""
            ))
        };
        let millis = if let Some(m) = s.strip_suffix('m') {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            m.parse::<u64>().map_err(|_| err())?
        } else {
            parse_decimal_thousandths(s).ok_or_else(err)?
        };
        Cpu::from_millis(millis).map_err(|e| QuantityError(format!("invalid cpu quantity {s:?}: {e}")))
    }
}

impl Cpu {
    pub fn from_millis(millis: u64) -> Result<Self, String> {
        if millis == 0 {
            return Err("expected more than zero".into());
        }
        if millis > MAX_CPU_MILLIS {
            return Err("expected at most 1024 cores".into());
        }
        Ok(Cpu(millis))
    }
}

/// Parses `"2"`, `"0.5"`, `"1.25"` into thousandths, refusing more than three decimals.
fn parse_decimal_thousandths(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 3 {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_val: u64 = if frac.is_empty() { 0 } else { frac.parse::<u64>().ok()? * 10u64.pow(3 - frac.len() as u32) };
    int.checked_mul(1000)?.checked_add(frac_val)
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory(pub u64);

const MEMORY_UNITS: [(&str, u64); 12] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

impl FromStr for Memory {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            QuantityError(format!(
                "invalid memory quantity {s:?}: expected a whole number of bytes or a number with a unit like \"64Mi\" or \"64M\" (units: Ki, Mi, Gi, Ti, k, M, G, T)"
            ))
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(err());
        }
        let num: u64 = num.parse().map_err(|_| err())?;
        let mult = if unit.is_empty() {
            1
        } else {
            MEMORY_UNITS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(err)?
        };
        let bytes =
            num.checked_mul(mult).ok_or_else(|| QuantityError(format!("invalid memory quantity {s:?}: too large")))?;
        if bytes == 0 {
            return Err(QuantityError(format!("invalid memory quantity {s:?}: expected more than zero")));
        }
        Ok(Memory(bytes))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in MEMORY_UNITS.iter().take(6).rev() {
            if self.0 >= *mult && self.0.is_multiple_of(*mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Formats bytes for humans in tables (`3.8Gi`, `512Mi`).
pub fn human_bytes(bytes: u64) -> String {
    let units =
        [("Ei", 1u64 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (unit, mult) in units {
        if bytes >= mult {
            let v = bytes as f64 / mult as f64;
            return if v >= 10.0 || bytes.is_multiple_of(mult) {
                format!("{:.0}{unit}", v.floor())
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{bytes}")
}

/// A duration written as `500ms`, `10s`, `5m`, `2h`, `1d` or a combination like `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            QuantityError(format!(
                "invalid duration {s:?}: expected a number with a unit like \"500ms\", \"10s\", \"5m\", \"24h\" or \"1h30m\""
            ))
        };
        let mut rest = s;
        let mut total = Duration::ZERO;
        if rest.is_empty() {
            return Err(err());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
                "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
                "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(err)?),
                _ => return Err(err()),
            };
            total = total.checked_add(part).ok_or_else(err)?;
            rest = &rest[unit_len..];
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// Formats a duration briefly, as `kubectl` shows ages: `45s`, `3m12s`, `5h`, `2d3h`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 && s < 10 {
        return format!("{}ms", d.as_millis());
    }
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ if s.is_multiple_of(86400) => format!("{}d", s / 86400),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

macro_rules! string_serde {
    ($ty:ty, $what:literal, $int:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        let f: fn(i64) -> Result<$ty, QuantityError> = $int;
                        f(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

string_serde!(Cpu, "a cpu quantity like \"250m\" or \"0.5\"", |v| {
    if v < 0 {
        return Err(QuantityError(format!("invalid cpu quantity {v}: expected more than zero")));
    }
    Cpu::from_millis((v as u64).saturating_mul(1000))
        .map_err(|e| QuantityError(format!("invalid cpu quantity {v}: {e}")))
});
string_serde!(Memory, "a memory quantity like \"64Mi\"", |v| {
    if v <= 0 {
        return Err(QuantityError(format!("invalid memory quantity {v}: expected more than zero bytes")));
    }
    Ok(Memory(v as u64))
});
string_serde!(HumanDuration, "a duration like \"10s\" or \"5m\"", |v| {
    Err(QuantityError(format!("invalid duration {v}: expected a string with a unit like \"{v}s\"")))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!("250m".parse::<Cpu>().unwrap(), Cpu(250));
        assert_eq!("0.5".parse::<Cpu>().unwrap(), Cpu(500));
        assert_eq!("2".parse::<Cpu>().unwrap(), Cpu(2000));
        assert_eq!(".25".parse::<Cpu>().unwrap(), Cpu(250));
        for bad in ["0.25cores", "", "m", "-1", "1.2345", "0", "0m", "2000", "1e3"] {
            assert!(bad.parse::<Cpu>().is_err(), "{bad:?}");
        }
        assert_eq!(Cpu(250).to_string(), "250m");
        assert_eq!(Cpu(2000).to_string(), "2");
    }

    #[test]
    fn memory() {
        assert_eq!("64Mi".parse::<Memory>().unwrap(), Memory(64 << 20));
        assert_eq!("64M".parse::<Memory>().unwrap(), Memory(64_000_000));
        assert_eq!("1024".parse::<Memory>().unwrap(), Memory(1024));
        for bad in ["64MB", "64mi", "", "Mi", "1.5Gi", "0", "99999999999Ei"] {
            assert!(bad.parse::<Memory>().is_err(), "{bad:?}");
        }
        assert_eq!(Memory(64 << 20).to_string(), "64Mi");
        assert_eq!(Memory(1000).to_string(), "1000");
        assert_eq!(human_bytes(3 << 30), "3Gi");
        assert_eq!(human_bytes((3 << 30) + (1 << 29)), "3.5Gi");
    }

    #[test]
    fn durations() {
        assert_eq!("1h30m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(5400));
        assert_eq!("500ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(500));
        for bad in ["", "10", "s", "1x", "1.5h", "-1s"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h2m");
        assert_eq!(format_duration(Duration::from_secs(86400 * 2)), "2d");
    }
}
