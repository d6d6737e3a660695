//! A line diff (longest common subsequence) shown as a unified diff with three lines of context:
//! enough for specs of a few dozen lines, with no dependency.

/// One line of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line<'a> {
    Same(&'a str),
    Gone(&'a str),
    New(&'a str),
}

/// The lines of `old` and `new` in order, each kept, removed or added.
fn lines<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff(1) shows them.
            out.push(Line::Gone(a[i]));
            i += 1;
        } else {
            out.push(Line::New(b[j]));
            j += 1;
        }
    }
    out
}

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// `old` and `new` as a unified diff under `---`/`+++` headers, or None when they are equal.
pub fn unified(old_name: &str, new_name: &str, old: &str, new: &str) -> Option<String> {
    let all = lines(old, new);
    let changed: Vec<usize> = (0..all.len()).filter(|&k| !matches!(all[k], Line::Same(_))).collect();
    if changed.is_empty() {
        return None;
    }
    // Hunks: runs of changes closer than twice the context, with the context around them.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let (from, to) = (k.saturating_sub(CONTEXT), (k + CONTEXT + 1).min(all.len()));
        match hunks.last_mut() {
            Some(last) if from <= last.1 => last.1 = to,
            _ => hunks.push((from, to)),
        }
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for (from, to) in hunks {
        // 1-based line numbers where the hunk starts in each side.
        let before = &all[..from];
        let old_at = before.iter().filter(|l| !matches!(l, Line::New(_))).count();
        let new_at = before.iter().filter(|l| !matches!(l, Line::Gone(_))).count();
        let hunk = &all[from..to];
        let old_len = hunk.iter().filter(|l| !matches!(l, Line::New(_))).count();
        let new_len = hunk.iter().filter(|l| !matches!(l, Line::Gone(_))).count();
        let start = |at: usize, len: usize| if len == 0 { at } else { at + 1 };
        out.push_str(&format!("@@ -{},{old_len} +{},{new_len} @@\n", start(old_at, old_len), start(new_at, new_len)));
        for l in hunk {
            match l {
                Line::Same(s) => out.push_str(&format!(" {s}\n")),
                Line::Gone(s) => out.push_str(&format!("-{s}\n")),
                Line::New(s) => out.push_str(&format!("+{s}\n")),
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a", "b", "x\ny\n", "x\ny\n"), None);
        assert_eq!(unified("a", "b", "", ""), None);
    }

    #[test]
    fn a_changed_line_is_shown_with_its_context() {
        let old = "1\n2\n3\n4\nimage = \"web:1\"\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nimage = \"web:2\"\n6\n7\n8\n9\n";
        let d = unified("stored", "new", old, new).unwrap();
        assert_eq!(
            d,
            "--- stored\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-image = \"web:1\"\n+image = \"web:2\"\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn changes_far_apart_are_separate_hunks_and_additions_count_right() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new: String = (1..=20)
            .map(|i| match i {
                2 => "two\n".to_string(),
                18 => "18\nextra\n".to_string(),
                i => format!("{i}\n"),
            })
            .collect();
        let d = unified("a", "b", &old, &new).unwrap();
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n"), "{d}");
        assert!(d.contains("@@ -16,5 +16,6 @@\n"), "{d}");
        assert!(d.contains(" 18\n+extra\n 19\n"), "{d}");
    }

    #[test]
    fn a_new_object_is_all_additions() {
        let d = unified("/dev/null", "app/web", "", "a\nb\n").unwrap();
        assert_eq!(d, "--- /dev/null\n+++ app/web\n@@ -0,0 +1,2 @@\n+a\n+b\n");
    }
}
