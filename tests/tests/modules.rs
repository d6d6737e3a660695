//! No import cycle between the top-level modules of any crate (issue 29): each crate's modules form
//! layers, so a module can be read, tested and moved with what it uses and not what uses it.
//!
//! Read from the sources: a file under `src/X/` or `src/X.rs` belongs to module `X`; it uses `Y` when
//! its code (comments and `#[cfg(test)]` parts left out, test files skipped) names `crate::Y` or
//! `crate::{…Y…}`. A cycle fails with each edge and the line that makes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 7] = ["proto", "transport", "daemon", "images", "leader", "agent", "cli"];

/// An edge's witness: file and line.
type Edges = BTreeMap<String, BTreeMap<String, (PathBuf, usize)>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The identifiers right after `crate::` on `line` (a group `crate::{a, b::c}` gives `a` and `b`).
fn used_modules(line: &str) -> Vec<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let preceded = rest[..i].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[i + "crate::".len()..];
        if preceded {
            continue; // `bramble_crate::…`, not this crate
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        start = false;
                        out.push(ident(&group[j..]));
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// The module graph of `krate`, and how many files it was read from.
fn edges(krate: &str) -> (Edges, usize) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = Edges::new();
    let read = files.len();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines().enumerate();
        while let Some((n, line)) = lines.next() {
            // A test module (`#[cfg(test)] mod tests { … }`) ends the file's code; any other
            // test-only item (`mod tests;`, a `use`) is one line that is left out.
            if line.trim_start().starts_with("#[cfg(test)]") {
                match lines.next() {
                    Some((_, item)) if item.trim_end().ends_with('{') => break,
                    _ => continue,
                }
            }
            let code = line.split("//").next().unwrap_or("");
            for m in used_modules(code) {
                if m != top {
                    edges.entry(top.clone()).or_default().entry(m).or_insert((file.clone(), n + 1));
                }
            }
        }
    }
    (edges, read)
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(edges: &Edges) -> Vec<BTreeSet<String>> {
    struct T<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_reader_finds_paths_groups_and_ignores_other_crates() {
    assert_eq!(used_modules("use crate::api::Api;"), ["api"]);
    assert_eq!(
        used_modules("use crate::{objects::Objects, store::{Expect, TxnOp}, error};"),
        ["objects", "store", "error"]
    );
    assert_eq!(used_modules("x: crate::a::B, y: crate::c"), ["a", "c"]);
    assert!(used_modules("bramble_crate::x; use crate::{self};").is_empty());
    let mut e = Edges::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")] {
        e.entry(a.into()).or_default().insert(b.into(), (PathBuf::new(), 1));
    }
    assert_eq!(cycles(&e), [BTreeSet::from(["a".to_string(), "b".into(), "c".into()])], "the cycle, and only it");
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut found = Vec::new();
    for krate in CRATES {
        let (edges, read) = edges(krate);
        assert!(read > 3, "{krate}: {read} source files read; is the checkout whole?");
        for comp in cycles(&edges) {
            let mut lines = vec![format!("{krate}: the modules {comp:?} use each other:")];
            for a in &comp {
                for (b, (file, line)) in edges[a].iter().filter(|(b, _)| comp.contains(*b)) {
                    lines.push(format!("  {a} -> {b} ({}:{line})", file.display()));
                }
            }
            found.push(lines.join("\n"));
        }
    }
    assert!(found.is_empty(), "import cycles (move what both sides need into a lower module):\n{}", found.join("\n"));
}
