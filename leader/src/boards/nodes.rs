//! The leader's live view of nodes: sessions, heartbeats and readiness. All of it lives in memory;
//! only the node objects themselves (identity, info, labels) are stored.

use crate::events::Events;
use bramble_proto::model::{Condition, ConditionStatus, EventReason};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A connected agent's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub epoch: u64,
    pub address: String,
    /// Closes the session's connection (when a newer session replaces it).
    pub connection: Option<quinn::Connection>,
}

#[derive(Debug)]
struct Live {
    session: Option<Session>,
    last_seen: Option<Instant>,
    last_seen_ms: u64,
    ready: Condition,
}

/// Why a session was not registered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale session: epoch {offered} is older than the current session's epoch {current}")]
pub struct StaleSession {
    pub offered: u64,
    pub current: u64,
}

/// The leader's memory of which nodes are connected and ready.
#[derive(Debug)]
pub struct NodeRegistry {
    grace: Duration,
    /// How often boards send heartbeats (the leader's `nodes.heartbeat`).
    heartbeat: Duration,
    live: Mutex<HashMap<String, Live>>,
    events: Arc<Events>,
}

/// What the registry shows about one node.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub ready: Condition,
    pub last_seen_ms: u64,
    pub session_epoch: Option<u64>,
    pub session_address: Option<String>,
}

impl NodeRegistry {
    /// Node events (ready, not ready, session ended) go to `events`.
    pub fn new(grace: Duration, events: Arc<Events>) -> Self {
        NodeRegistry { grace, heartbeat: Duration::from_secs(5), live: Mutex::new(HashMap::new()), events }
    }

    /// Boards send heartbeats every `heartbeat`.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn heartbeat_period(&self) -> Duration {
        self.heartbeat
    }

    fn entry<'a>(live: &'a mut HashMap<String, Live>, name: &str, now_ms: u64) -> &'a mut Live {
        live.entry(name.to_string()).or_insert_with(|| Live {
            session: None,
            last_seen: None,
            last_seen_ms: 0,
            ready: Condition {
                kind: "Ready".into(),
                status: ConditionStatus::Unknown,
                reason: "LeaderStarted".into(),
                message: "waiting for the agent to connect".into(),
                last_transition_ms: now_ms,
            },
        })
    }

    /// Registers a session; a newer epoch replaces (and closes) an older session, an older epoch
    /// is refused so that a stale connection can never evict a new one.
    pub fn connect(&self, name: &str, session: Session, now: Instant, now_ms: u64) -> Result<(), StaleSession> {
        let replaced = {
            let mut live = self.live.lock().expect("registry lock");
            let l = Self::entry(&mut live, name, now_ms);
            if let Some(cur) = &l.session {
                if session.epoch < cur.epoch {
                    return Err(StaleSession { offered: session.epoch, current: cur.epoch });
                }
            }
            let replaced = l.session.replace(session.clone());
            l.last_seen = Some(now);
            l.last_seen_ms = now_ms;
            let changed =
                set_ready(&mut l.ready, ConditionStatus::True, "AgentConnected", "the agent is connected", now_ms);
            if changed {
                self.events.node(
                    name,
                    EventReason::NodeReady,
                    format!("agent connected from {} (session {})", session.address, session.epoch),
                    now_ms,
                );
            }
            replaced
        };
        if let Some(old) = replaced.and_then(|s| s.connection) {
            old.close(quinn::VarInt::from_u32(1), b"replaced by a newer session");
        }
        Ok(())
    }

    /// Records contact on session `epoch`; ignored for any other epoch.
    pub fn heartbeat(&self, name: &str, epoch: u64, now: Instant, now_ms: u64) -> bool {
        let mut live = self.live.lock().expect("registry lock");
        let Some(l) = live.get_mut(name) else {
            return false;
        };
        if l.session.as_ref().map(|s| s.epoch) != Some(epoch) {
            return false;
        }
        l.last_seen = Some(now);
        l.last_seen_ms = now_ms;
        if set_ready(&mut l.ready, ConditionStatus::True, "AgentConnected", "the agent is connected", now_ms) {
            self.events.node(name, EventReason::NodeReady, "heartbeats resumed", now_ms);
        }
        true
    }

    /// Ends session `epoch` (only if it is still the current one).
    pub fn disconnect(&self, name: &str, epoch: u64, reason: &str, now_ms: u64) {
        let mut live = self.live.lock().expect("registry lock");
        let Some(l) = live.get_mut(name) else { return };
        if l.session.as_ref().map(|s| s.epoch) == Some(epoch) {
            l.session = None;
            self.events.node(name, EventReason::SessionEnded, format!("session {epoch} ended: {reason}"), now_ms);
        }
    }

    /// Marks nodes without contact for longer than the grace period NotReady; returns their names.
    pub fn check(&self, nodes: impl IntoIterator<Item = String>, now: Instant, now_ms: u64) -> Vec<String> {
        let mut live = self.live.lock().expect("registry lock");
        let mut changed = Vec::new();
        for name in nodes {
            let l = Self::entry(&mut live, &name, now_ms);
            let silent_for = match l.last_seen {
                Some(t) => now.saturating_duration_since(t),
                None => Duration::from_millis(now_ms.saturating_sub(l.ready.last_transition_ms)),
            };
            if silent_for > self.grace && l.ready.status != ConditionStatus::False {
                let msg = format!(
                    "no contact from the agent for {}s (grace period {}s)",
                    silent_for.as_secs(),
                    self.grace.as_secs()
                );
                set_ready(&mut l.ready, ConditionStatus::False, "NodeStatusUnknown", &msg, now_ms);
                self.events.node(&name, EventReason::NodeNotReady, msg, now_ms);
                changed.push(name);
            }
        }
        changed
    }

    pub fn view(&self, name: &str, now_ms: u64) -> LiveView {
        let mut live = self.live.lock().expect("registry lock");
        let l = Self::entry(&mut live, name, now_ms);
        LiveView {
            ready: l.ready.clone(),
            last_seen_ms: l.last_seen_ms,
            session_epoch: l.session.as_ref().map(|s| s.epoch),
            session_address: l.session.as_ref().map(|s| s.address.clone()),
        }
    }

    /// The connection of `name`'s current session, if it has one.
    pub fn connection(&self, name: &str) -> Option<quinn::Connection> {
        self.live.lock().expect("registry lock").get(name)?.session.as_ref()?.connection.clone()
    }
}

fn set_ready(c: &mut Condition, status: ConditionStatus, reason: &str, message: &str, now_ms: u64) -> bool {
    let changed = c.status != status;
    if changed {
        c.last_transition_ms = now_ms;
    }
    c.status = status;
    c.reason = reason.to_string();
    c.message = message.to_string();
    changed
}

/// Marks nodes NotReady when they fall silent; reads the store, never writes it.
pub async fn monitor(
    objects: crate::objects::Objects,
    registry: Arc<NodeRegistry>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let period = (registry.grace() / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let a = objects.clone();
        let names = tokio::task::spawn_blocking(move || a.list::<bramble_proto::model::Node>()).await;
        match names {
            Ok(Ok(nodes)) => {
                registry.check(
                    nodes.into_iter().map(|n| n.value.meta.name),
                    Instant::now(),
                    bramble_proto::time::now_ms(),
                );
            }
            Ok(Err(e)) => tracing::warn!("cannot list nodes: {e}"),
            Err(e) => tracing::warn!("node monitor: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_proto::model::ObjectRef;

    fn registry() -> (NodeRegistry, Arc<Events>) {
        let events = Arc::new(Events::new());
        (NodeRegistry::new(Duration::from_secs(15), events.clone()), events)
    }

    fn session(epoch: u64) -> Session {
        Session { epoch, address: "10.0.0.2:5000".into(), connection: None }
    }

    #[test]
    fn a_stale_session_never_evicts_a_newer_one() {
        let (r, _) = registry();
        let t = Instant::now();
        r.connect("pi", session(5), t, 0).unwrap();
        assert_eq!(r.connect("pi", session(4), t, 0), Err(StaleSession { offered: 4, current: 5 }));
        r.connect("pi", session(6), t, 0).unwrap();
        // The old session's end must not remove the new one.
        r.disconnect("pi", 5, "closed", 0);
        assert_eq!(r.view("pi", 0).session_epoch, Some(6));
        assert!(!r.heartbeat("pi", 5, t, 0), "heartbeats of old sessions are ignored");
        assert!(r.heartbeat("pi", 6, t, 0));
        r.disconnect("pi", 6, "closed", 0);
        assert_eq!(r.view("pi", 0).session_epoch, None);
    }

    #[test]
    fn ready_after_contact_not_ready_after_grace_ready_again_on_heartbeat() {
        let (r, events) = registry();
        let t0 = Instant::now();
        r.connect("pi", session(1), t0, 1_000).unwrap();
        assert_eq!(r.view("pi", 1_000).ready.status, ConditionStatus::True);
        assert!(
            r.check(["pi".to_string()], t0 + Duration::from_secs(15), 16_000).is_empty(),
            "not before the grace period ends"
        );
        assert_eq!(r.check(["pi".to_string()], t0 + Duration::from_secs(16), 17_000), ["pi"]);
        let v = r.view("pi", 17_000);
        assert_eq!((v.ready.status, v.ready.last_transition_ms), (ConditionStatus::False, 17_000));
        assert!(r.check(["pi".to_string()], t0 + Duration::from_secs(30), 31_000).is_empty(), "reported once");
        assert!(r.heartbeat("pi", 1, t0 + Duration::from_secs(31), 32_000));
        assert_eq!(r.view("pi", 32_000).ready.status, ConditionStatus::True);
        let reasons: Vec<_> = events.about(&ObjectRef::node("pi")).into_iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [EventReason::NodeReady, EventReason::NodeNotReady, EventReason::NodeReady]);
    }

    #[test]
    fn nodes_never_seen_since_start_go_not_ready_after_grace() {
        let (r, _) = registry();
        let t0 = Instant::now();
        assert!(r.check(["pi".to_string()], t0, 0).is_empty());
        assert_eq!(r.view("pi", 0).ready.status, ConditionStatus::Unknown);
        assert_eq!(r.check(["pi".to_string()], t0, 16_000), ["pi"]);
    }
}
