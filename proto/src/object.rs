//! References to objects (`app/web`, `replica/web-1a2b3c4d5e-0`, `node/pi-1`): what events are
//! about. On the wire and in JSON a reference is its `kind/name` string; an unknown kind or an
//! empty name is refused when decoded.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The kinds of objects the cluster knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    App,
    Replica,
    Service,
    Secret,
    User,
    Config,
    CronJob,
    Ingress,
    Registry,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Node,
        Kind::App,
        Kind::Replica,
        Kind::Service,
        Kind::Secret,
        Kind::User,
        Kind::Config,
        Kind::CronJob,
        Kind::Ingress,
        Kind::Registry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::App => "app",
            Kind::Replica => "replica",
            Kind::Service => "service",
            Kind::Secret => "secret",
            Kind::User => "user",
            Kind::Config => "config",
            Kind::CronJob => "cronjob",
            Kind::Ingress => "ingress",
            Kind::Registry => "registry",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ObjectRefError;
    fn from_str(s: &str) -> Result<Kind, ObjectRefError> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            ObjectRefError(format!(
                "unknown kind {s:?}: expected node, app, replica, service, secret, user, config, cronjob, ingress or registry"
            ))
        })
    }
}

/// One object, by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectRef {
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ObjectRefError(String);

impl ObjectRef {
    pub fn new(kind: Kind, name: impl Into<String>) -> ObjectRef {
        ObjectRef { kind, name: name.into() }
    }
    pub fn node(name: impl Into<String>) -> ObjectRef {
        ObjectRef::new(Kind::Node, name)
    }
    pub fn app(name: impl Into<String>) -> ObjectRef {
        ObjectRef::new(Kind::App, name)
    }
    pub fn replica(name: impl Into<String>) -> ObjectRef {
        ObjectRef::new(Kind::Replica, name)
    }
    pub fn service(name: impl Into<String>) -> ObjectRef {
        ObjectRef::new(Kind::Service, name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded as a whole, so that tables line up.
        f.pad(&format!("{}/{}", self.kind, self.name))
    }
}

impl FromStr for ObjectRef {
    type Err = ObjectRefError;
    fn from_str(s: &str) -> Result<ObjectRef, ObjectRefError> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| ObjectRefError(format!("invalid object reference {s:?}: expected kind/name")))?;
        if name.is_empty() || name.len() > 253 || name.contains('/') {
            return Err(ObjectRefError(format!("invalid object reference {s:?}: expected a name after the kind")));
        }
        Ok(ObjectRef { kind: kind.parse()?, name: name.to_string() })
    }
}

impl TryFrom<String> for ObjectRef {
    type Error = ObjectRefError;
    fn try_from(s: String) -> Result<ObjectRef, ObjectRefError> {
        s.parse()
    }
}

impl From<ObjectRef> for String {
    fn from(r: ObjectRef) -> String {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_kind_slash_name_on_the_wire() {
        let r = ObjectRef::replica("web-abc-0");
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"replica/web-abc-0\"");
        assert_eq!(serde_json::from_str::<ObjectRef>("\"node/pi-1\"").unwrap(), ObjectRef::node("pi-1"));
        assert_eq!(format!("[{:<8}]", ObjectRef::app("a")), "[app/a   ]", "padded like a string");
        for bad in ["\"pod/x\"", "\"app\"", "\"app/\"", "\"app/a/b\""] {
            assert!(serde_json::from_str::<ObjectRef>(bad).is_err(), "{bad} is refused");
        }
    }
}
