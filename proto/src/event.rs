//! Events: what happened, for humans, kept in a bounded ring. The reason is an enum so that code
//! matches on it rather than on strings; on the wire it is its CamelCase name, and a reason this
//! build does not know (from a newer agent) is kept as [`Reason::Other`] if it looks like one.

use crate::object::ObjectRef;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Something that happened, for humans; kept in a bounded ring, not forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub time_ms: u64,
    /// What it is about.
    pub object: ObjectRef,
    /// For a replica's events, the app it belongs to (so `describe app` shows the events of its
    /// replicas, also of those already gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub reason: Reason,
    pub message: String,
}

impl Event {
    pub fn new(time_ms: u64, object: ObjectRef, reason: Reason, message: impl Into<String>) -> Event {
        Event { time_ms, object, app: None, reason, message: message.into() }
    }

    /// An event about replica `name` of app `app`.
    pub fn replica(time_ms: u64, app: &str, name: &str, reason: Reason, message: impl Into<String>) -> Event {
        Event { app: Some(app.to_string()), ..Event::new(time_ms, ObjectRef::replica(name), reason, message) }
    }

    /// Whether the event is about app `app` or one of its replicas.
    pub fn concerns_app(&self, app: &str) -> bool {
        self.object == ObjectRef::app(app) || self.app.as_deref() == Some(app)
    }
}

macro_rules! reasons {
    ($($(#[$m:meta])* $v:ident),* $(,)?) => {
        /// Why an event happened.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum Reason {
            $($(#[$m])* $v,)*
            /// A reason this build does not know (CamelCase letters and digits, at most 64).
            Other(String),
        }

        impl Reason {
            pub fn as_str(&self) -> &str {
                match self {
                    $(Reason::$v => stringify!($v),)*
                    Reason::Other(s) => s,
                }
            }

            fn known(s: &str) -> Option<Reason> {
                match s {
                    $(stringify!($v) => Some(Reason::$v),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    // Objects, by the API.
    Created, Configured, Deleted, Scaled, Revoked, BackupTaken, BackupFailed,
    // Placement, by the replica controller.
    Scheduled, FailedScheduling, ReplicaLost, ImagePlatform, DeviceMissing, WaitingForApps,
    // Rollouts.
    RolloutComplete, RolloutFailed, RolledBack, Draining,
    // Nodes.
    NodeJoined, JoinRefused, NodeReady, NodeNotReady, SessionEnded, NodeCordoned, NodeUncordoned,
    NodeLabeled, NodeDeleted, NoPodSubnet, PodSubnet, CertificateRenewed, NetworkUnavailable, NetworkAvailable,
    DevicesChanged, NodeDraining, DrainBlocked, NodeDrained,
    // Cron jobs, by the leader's cron controller.
    JobCreated, MissedSchedule, RunWaiting, JobReplaced, HistoryPruned,
    // Ingresses, by the leader's ingress controller.
    ProxyConfigured, IngressUnserved, IngressServed, CertificateExpiring, CertificateMissing,
    // Containers, from the boards.
    Pulling, Pulled, Started, BackOff, Restarted, Completed, Stopped, Failed, Unhealthy, Killing,
    Reloaded, ReloadFailed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event reason {0:?}: expected a CamelCase word of at most 64 letters and digits")]
pub struct ReasonError(String);

impl TryFrom<String> for Reason {
    type Error = ReasonError;
    fn try_from(s: String) -> Result<Reason, ReasonError> {
        if let Some(r) = Reason::known(&s) {
            return Ok(r);
        }
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars().all(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(Reason::Other(s))
        } else {
            Err(ReasonError(s))
        }
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_their_names_on_the_wire() {
        assert_eq!(serde_json::to_string(&Reason::BackOff).unwrap(), "\"BackOff\"");
        assert_eq!(serde_json::from_str::<Reason>("\"NodeReady\"").unwrap(), Reason::NodeReady);
        assert_eq!(serde_json::from_str::<Reason>("\"Evicted\"").unwrap(), Reason::Other("Evicted".into()));
        assert!(serde_json::from_str::<Reason>("\"not a reason\"").is_err());
        assert!(serde_json::from_str::<Reason>(&format!("\"A{}\"", "b".repeat(64))).is_err());
    }

    #[test]
    fn events_of_an_app_include_its_replicas() {
        let e = Event::replica(1, "web", "web-abc-0", Reason::Started, "container started");
        assert!(e.concerns_app("web") && !e.concerns_app("we"));
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"object\":\"replica/web-abc-0\""), "{json}");
        let n = Event::new(1, ObjectRef::node("pi"), Reason::NodeReady, "up");
        assert!(!serde_json::to_string(&n).unwrap().contains("\"app\""), "no app on other objects");
    }
}
