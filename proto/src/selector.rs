//! Label selectors, as `-l` takes them: `tier=web,env!=test,critical,!legacy` — every term must
//! hold (`key=value`, `key!=value`, `key` present, `!key` absent).

use crate::names::{check_label_key, check_label_value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed selector: matches label maps where all its terms hold (an empty one matches all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(Vec<Term>);

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for raw in s.split(',') {
            let t = raw.trim();
            if t.is_empty() {
                return Err(format!("expected key=value, key!=value, key or !key between commas, found {s:?}"));
            }
            let key = |k: &str| -> Result<String, String> {
                let k = k.trim();
                check_label_key(k).map_err(|e| format!("in {t:?}: {e}"))?;
                Ok(k.to_string())
            };
            let value = |v: &str| -> Result<String, String> {
                let v = v.trim();
                check_label_value(v).map_err(|e| format!("in {t:?}: {e}"))?;
                Ok(v.to_string())
            };
            let term = if let Some((k, v)) = t.split_once("!=") {
                Term::NotEquals(key(k)?, value(v)?)
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Equals(key(k)?, value(v)?)
            } else if let Some(k) = t.strip_prefix('!') {
                Term::Absent(key(k)?)
            } else {
                Term::Exists(key(t)?)
            };
            terms.push(term);
        }
        Ok(Selector(terms))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|t| match t {
                Term::Equals(k, v) => format!("{k}={v}"),
                Term::NotEquals(k, v) => format!("{k}!={v}"),
                Term::Exists(k) => k.clone(),
                Term::Absent(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_term_must_hold() {
        let web = labels(&[("tier", "web"), ("env", "prod"), ("critical", "")]);
        let db = labels(&[("tier", "db"), ("env", "test")]);
        let sel = |s: &str| s.parse::<Selector>().unwrap();
        assert!(sel("tier=web").matches(&web) && !sel("tier=web").matches(&db));
        assert!(sel("tier==web").matches(&web));
        assert!(sel("env!=test").matches(&web) && !sel("env!=test").matches(&db));
        assert!(sel("critical").matches(&web) && !sel("critical").matches(&db));
        assert!(sel("!critical").matches(&db) && !sel("!critical").matches(&web));
        assert!(sel("tier=web, env=prod").matches(&web));
        assert!(!sel("tier=web,env=test").matches(&web));
        assert!(sel("env!=test").matches(&BTreeMap::new()), "absent is not equal");
        assert_eq!(sel("tier=web, !legacy,env!=x").to_string(), "tier=web,!legacy,env!=x");
    }

    #[test]
    fn bad_selectors_say_what_was_expected() {
        for s in ["", "a=b,", ",a", "tier=web app", "=web", "Tier Name=x", "a!=b c"] {
            assert!(s.parse::<Selector>().is_err(), "{s:?} was taken");
        }
    }
}
