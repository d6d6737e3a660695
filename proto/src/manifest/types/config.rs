//! `[[config]]`: files an app reads, and how an app mounts them.

use super::PathPart::Key;
use super::*;
use crate::names::Name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    pub name: Name,
    /// File name → content.
    pub files: BTreeMap<String, String>,
}

/// The most a config holds, all files together.
pub const MAX_CONFIG_BYTES: usize = 512 << 10;

/// Whether `k` may be a file name in a secret or config: `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn is_file_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ConfigSpec {
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.files.is_empty() {
            out.push(Problem::new(vec![Key("files")], "expected at least one file"));
        }
        for k in self.files.keys() {
            if !is_file_key(k) {
                out.push(Problem::new(
                    vec![Key("files")],
                    format!("{k:?} is not a file name (letters, digits, '.', '_', '-'; not '.' or '..')"),
                ));
            }
        }
        let total: usize = self.files.values().map(String::len).sum();
        if total > MAX_CONFIG_BYTES {
            out.push(Problem::new(
                vec![Key("files")],
                format!("{total} bytes of files; a config holds at most {MAX_CONFIG_BYTES} bytes (512 KiB)"),
            ));
        }
        out
    }
}

/// A config mounted into an app's replicas: its files, read-only, in the directory `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMount {
    pub name: Name,
    /// The directory its files appear in (absolute).
    pub path: String,
    /// A change of the config rolls the app (a rolling restart) instead of only updating the
    /// files in place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub roll: bool,
    /// A command the board runs in the replica's own container after the config's files changed
    /// in place (`["nginx", "-s", "reload"]`): the program reloads without a restart. Its exit
    /// and output are an event on the replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
}

impl ConfigMount {
    /// The mount's own problems (`reload` beside `roll`, empty or oversized arguments).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.roll && !self.reload.is_empty() {
            out.push(("reload", "a config that rolls the app restarts it: leave out reload, or roll".to_string()));
        }
        if self.reload.len() > 32 || self.reload.iter().any(|a| a.is_empty() || a.len() > 1024 || a.contains('\0')) {
            out.push(("reload", "expected at most 32 arguments, each of 1 to 1024 characters".to_string()));
        }
        out
    }
}
