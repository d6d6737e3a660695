//! Tables and JSON for humans and scripts.

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// A table.
    #[default]
    Table,
    /// A wider table.
    Wide,
    /// JSON, for scripts.
    Json,
}

/// Prints rows as left-aligned columns separated by three spaces, as kubectl does.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}

/// `v` as YAML (block style). Every string is written as a JSON string, which is a YAML
/// double-quoted scalar, so nothing in a value can change the document's structure.
pub fn yaml<T: Serialize>(v: &T) -> String {
    let v = serde_json::to_value(v).expect("serialisable");
    let mut out = String::from("---\n");
    yaml_block(&v, 0, &mut out);
    out
}

fn yaml_scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Array(a) if a.is_empty() => "[]".into(),
        serde_json::Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &serde_json::Value) -> bool {
    matches!(v, serde_json::Value::Array(a) if !a.is_empty())
        || matches!(v, serde_json::Value::Object(o) if !o.is_empty())
}

fn yaml_block(v: &serde_json::Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        serde_json::Value::Object(o) if !o.is_empty() => {
            for (k, val) in o {
                let key = serde_json::Value::String(k.clone()).to_string();
                if is_block(val) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    yaml_block(val, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", yaml_scalar(val)));
                }
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    out.push_str(&format!("{pad}-\n"));
                    yaml_block(item, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}- {}\n", yaml_scalar(item)));
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", yaml_scalar(scalar))),
    }
}

/// The last `width` values as a small chart (`▁▂▃▄▅▆▇█`), scaled to their largest (and to `floor`,
/// so that a flat low line stays low).
pub fn sparkline(values: &[u64], width: usize, floor: u64) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().max().unwrap_or(0).max(floor).max(1);
    tail.iter().map(|v| BARS[((v * 7 + max / 2) / max).min(7) as usize]).collect()
}

#[cfg(test)]
mod sparkline_tests {
    #[test]
    fn scaled_to_the_largest_or_the_floor() {
        assert_eq!(super::sparkline(&[0, 50, 100], 10, 0), "▁▅█");
        assert_eq!(super::sparkline(&[10, 10], 10, 1000), "▁▁");
        assert_eq!(super::sparkline(&[1, 2, 3, 4], 2, 0), "▆█");
        assert_eq!(super::sparkline(&[], 5, 0), "");
    }
}

#[cfg(test)]
mod yaml_tests {
    #[test]
    fn yaml_quotes_every_string_so_values_cannot_change_the_structure() {
        let v = serde_json::json!({
            "name": "a: b\n- c # d",
            "list": [1, "x", {"k": null}, []],
            "empty": {},
            "nested": {"deep": [true]}
        });
        let y = super::yaml(&v);
        assert_eq!(
            y,
            "---\n\"empty\": {}\n\"list\":\n  - 1\n  - \"x\"\n  -\n    \"k\": null\n  - []\n\"name\": \"a: b\\n- c # d\"\n\"nested\":\n  \"deep\":\n    - true\n"
        );
    }
}
