//! YAML as the converters read it: each document a tree of nodes that know their line and column,
//! anchors resolved, merge keys (`<<`, as Compose files use them) applied, within bounds (nesting,
//! and nodes after aliases are expanded: a "billion laughs" file is refused, not expanded).
//! Scalars stay text (with whether they were plain, for `true`, `null` and numbers); mapping keys
//! must be scalars.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// The deepest nesting read.
const MAX_DEPTH: usize = 64;
/// The most nodes a file may hold once its aliases are expanded.
const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// The text, and whether it was plain (unquoted, not a block).
    Str(String, bool),
    Seq(Vec<Node>),
    /// Entries in the file's order, keys unique (a repeated key is an error).
    Map(Vec<(String, Node)>),
}

/// A value and where it starts (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub col: usize,
    pub value: Value,
}

/// What is wrong with a YAML file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

impl std::error::Error for YamlError {}

fn at(span: &Span, message: impl Into<String>) -> YamlError {
    YamlError { line: span.start.line(), col: span.start.col() + 1, message: message.into() }
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A scalar's text (not for maps, sequences or null).
    pub fn str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        self.value == Value::Null
    }

    /// A plain `true` or `false`.
    pub fn bool(&self) -> Option<bool> {
        match &self.value {
            Value::Str(s, true) if s == "true" => Some(true),
            Value::Str(s, true) if s == "false" => Some(false),
            _ => None,
        }
    }

    pub fn entries(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(e) => Some(e),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Str(..) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Seq(s) => s.iter().map(Node::size).sum(),
            Value::Map(m) => m.iter().map(|(_, v)| v.size()).sum(),
            _ => 0,
        }
    }
}

enum Frame {
    Seq { node: Node, anchor: usize },
    Map { node: Node, anchor: usize, key: Option<(String, Span)>, merged: Vec<(String, Node)> },
}

/// Every document of `text`.
pub fn load(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut docs = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut nodes = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        let done = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) | Event::Nothing => None,
            Event::DocumentEnd => {
                anchors.clear();
                None
            }
            Event::Alias(id) => {
                let node = anchors.get(&id).cloned().ok_or_else(|| at(&span, "an alias to an unknown anchor"))?;
                nodes += node.size();
                Some((node, span))
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == ScalarStyle::Plain;
                let value = if plain && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Str(text.into_owned(), plain)
                };
                let node = Node { line: span.start.line(), col: span.start.col() + 1, value };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                nodes += 1;
                Some((node, span))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(at(&span, format!("nested deeper than {MAX_DEPTH} levels")));
                }
                let seq = matches!(event, Event::SequenceStart(..));
                let node = Node {
                    line: span.start.line(),
                    col: span.start.col() + 1,
                    value: if seq { Value::Seq(Vec::new()) } else { Value::Map(Vec::new()) },
                };
                stack.push(if seq {
                    Frame::Seq { node, anchor }
                } else {
                    Frame::Map { node, anchor, key: None, merged: Vec::new() }
                });
                nodes += 1;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { node, anchor }) => {
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some((node, span))
                }
                Some(Frame::Map { mut node, anchor, merged, .. }) => {
                    // Merged entries count where the mapping has no key of its own.
                    if let Value::Map(entries) = &mut node.value {
                        for (k, v) in merged {
                            if !entries.iter().any(|(e, _)| *e == k) {
                                entries.push((k, v));
                            }
                        }
                    }
                    if anchor > 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some((node, span))
                }
                None => return Err(at(&span, "an end without a start")),
            },
        };
        if nodes > MAX_NODES {
            return Err(at(&span, format!("more than {MAX_NODES} values once its aliases are expanded")));
        }
        let Some((node, span)) = done else { continue };
        match stack.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq { node: parent, .. }) => {
                if let Value::Seq(items) = &mut parent.value {
                    items.push(node);
                }
            }
            Some(Frame::Map { node: parent, key, merged, .. }) => match key.take() {
                None => match node.value {
                    Value::Str(k, _) => *key = Some((k, span)),
                    Value::Null => *key = Some((String::new(), span)),
                    _ => return Err(at(&span, "a mapping key must be a scalar")),
                },
                Some((k, kspan)) if k == "<<" => match &node.value {
                    Value::Map(entries) => merge(merged, entries),
                    Value::Seq(list) => {
                        for m in list {
                            let Value::Map(entries) = &m.value else {
                                return Err(at(&kspan, "a merge key (<<) takes a mapping or a list of mappings"));
                            };
                            merge(merged, entries);
                        }
                    }
                    _ => return Err(at(&kspan, "a merge key (<<) takes a mapping or a list of mappings")),
                },
                Some((k, kspan)) => {
                    if let Value::Map(entries) = &mut parent.value {
                        if entries.iter().any(|(e, _)| *e == k) {
                            return Err(at(&kspan, format!("{k:?} is given twice")));
                        }
                        entries.push((k, node));
                    }
                }
            },
        }
    }
    Ok(docs)
}

/// Entries merged in: the first merged mapping that has a key wins.
fn merge(into: &mut Vec<(String, Node)>, entries: &[(String, Node)]) {
    for (k, v) in entries {
        if !into.iter().any(|(e, _)| e == k) {
            into.push((k.clone(), v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_and_merge_keys_resolve_as_compose_files_use_them() {
        let text = "x-common: &common\n  restart: always\n  environment:\n    A: \"1\"\nservices:\n  web:\n    <<: *common\n    image: nginx\n    restart: \"no\"\n";
        let docs = load(text).unwrap();
        let web = docs[0].get("services").unwrap().get("web").unwrap();
        assert_eq!(web.get("image").unwrap().str(), Some("nginx"));
        assert_eq!(web.get("restart").unwrap().str(), Some("no"), "its own key wins over the merged one");
        assert_eq!(web.get("environment").unwrap().get("A").unwrap().str(), Some("1"));
        assert_eq!((web.get("image").unwrap().line, web.get("image").unwrap().col), (8, 12));
    }

    #[test]
    fn bad_yaml_says_where() {
        let e = load("a: [1, 2\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = load("a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (2, "\"a\" is given twice"));
        let e = load("? [a]\n: 1\n").unwrap_err();
        assert!(e.message.contains("must be a scalar"), "{e}");
        let e = load("a: *nope\n").unwrap_err();
        assert!(e.to_string().contains("1:"), "{e}");
        // A billion laughs is refused, not expanded.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
                p = i - 1
            ));
        }
        assert!(load(&text).unwrap_err().message.contains("aliases are expanded"));
        let mut deep = String::new();
        for _ in 0..100 {
            deep.push('[');
        }
        assert!(load(&deep).unwrap_err().message.contains("nested deeper"));
    }

    #[test]
    fn documents_nulls_and_plain_scalars() {
        let docs = load("a: ~\nb: 'true'\nc: true\n---\nd: [1, \"2\"]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert!(docs[0].get("a").unwrap().is_null());
        assert_eq!(docs[0].get("b").unwrap().bool(), None, "quoted: text");
        assert_eq!(docs[0].get("c").unwrap().bool(), Some(true));
        assert_eq!(docs[1].get("d").unwrap().items().unwrap().len(), 2);
    }
}
