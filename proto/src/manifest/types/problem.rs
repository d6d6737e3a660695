//! A problem found after parsing, with the path of the field it is about.

/// A problem that spans several fields, found after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<PathPart>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Key(&'static str),
    Index(usize),
}

impl Problem {
    pub(crate) fn new(path: Vec<PathPart>, message: impl Into<String>) -> Self {
        Problem { path, message: message.into() }
    }

    /// The dotted field path, as `ports[1].container`.
    pub fn field(&self) -> String {
        let mut s = String::new();
        for p in &self.path {
            match p {
                PathPart::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                PathPart::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }
}
