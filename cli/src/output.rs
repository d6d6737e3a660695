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
