//! Parsing TOML text into typed values with errors that point at the file, line, column and field.

use serde::de::DeserializeOwned;
use std::fmt;

/// A problem in a file a user wrote: where it is and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceError {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Dotted path of the field, e.g. `app[0].resources.memory`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl SourceError {
    /// Builds an error located at byte offset `offset` of `text`.
    pub fn at(file: &str, text: &str, offset: usize, field: &str, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        SourceError { file: file.to_string(), line, column, field: field.to_string(), message: message.into() }
    }
}

/// 1-based line and column of a byte offset (clamped to the text).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Parses `text` (read from `file`) as TOML into `T`, naming the failing field on error.
pub fn parse_toml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, SourceError> {
    let de = toml::Deserializer::parse(text).map_err(|e| from_toml(file, text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        from_toml(file, text, &path, e.inner())
    })
}

fn from_toml(file: &str, text: &str, field: &str, e: &toml::de::Error) -> SourceError {
    let offset = e.span().map_or(0, |s| s.start);
    let message = e.message().trim_end().trim_end_matches('.').to_string();
    SourceError::at(file, text, offset, field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 9), (2, 3));
        assert_eq!(line_col(t, 1000), (3, 1));
    }
}

/// One step of a path into a TOML document.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Byte offset of the value at `path` in `text` (or of the deepest part of the path that exists).
pub fn locate(text: &str, path: &[Seg<'_>]) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut offset = root.span().start;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut array = None;
    for seg in path {
        let value = match (*seg, table, array) {
            (Seg::Key(k), Some(t), _) => t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v),
            (Seg::Index(i), _, Some(a)) => {
                let a: &toml::de::DeArray<'_> = a;
                a.get(i)
            }
            _ => None,
        };
        let Some(value) = value else { break };
        offset = value.span().start;
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    offset
}

#[cfg(test)]
mod locate_tests {
    use super::*;

    #[test]
    fn finds_nested_values() {
        let t = "[[app]]\nname = \"a\"\n\n[[app]]\nname = \"b\"\n[app.resources]\ncpu = \"1\"\n";
        assert_eq!(line_col(t, locate(t, &[Seg::Key("app"), Seg::Index(1), Seg::Key("name")])), (5, 8));
        assert_eq!(
            line_col(t, locate(t, &[Seg::Key("app"), Seg::Index(1), Seg::Key("resources"), Seg::Key("cpu")])),
            (7, 7)
        );
    }
}
