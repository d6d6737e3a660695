//! The leader's live view of nodes: sessions, heartbeats and readiness. All of it lives in memory;
//! only the node objects themselves (identity, info, labels) are stored.

use crate::events::Events;
use bramble_proto::model::{Condition, ConditionStatus, EventReason};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// When the last session ended (contact lasts as long as a session does).
    ended: Option<Instant>,
    ready: Condition,
    damping: Damping,
}

/// How often a board's link was lost lately (sessions that timed out), for the damping of its
/// grace period: each loss adds one, and the sum halves every [`DAMPING_HALF_LIFE_MS`].
#[derive(Debug, Default, Clone, Copy)]
struct Damping {
    /// The decayed count as of `at_ms`.
    penalty: f64,
    at_ms: u64,
    /// Losses since the leader started.
    losses: u64,
    last_lost_ms: u64,
}

/// The penalty halves every five minutes.
pub const DAMPING_HALF_LIFE_MS: u64 = 5 * 60 * 1000;
/// A board's grace period is at most this many times the configured one.
pub const DAMPING_MAX_FACTOR: f64 = 6.0;
/// The penalty never grows past this (so a board that flapped for an hour recovers its grace
/// within about half an hour of its link holding).
const DAMPING_MAX_PENALTY: f64 = 12.0;

impl Damping {
    fn penalty(&self, now_ms: u64) -> f64 {
        let halvings = now_ms.saturating_sub(self.at_ms) as f64 / DAMPING_HALF_LIFE_MS as f64;
        self.penalty * 0.5f64.powf(halvings)
    }

    fn lost(&mut self, now_ms: u64) {
        self.penalty = (self.penalty(now_ms) + 1.0).min(DAMPING_MAX_PENALTY);
        self.at_ms = now_ms;
        self.losses += 1;
        self.last_lost_ms = now_ms;
    }

    /// `grace` lengthened for a board that keeps losing its link: as configured for a board that
    /// lost it at most once lately, then in proportion to the (decayed) losses, up to
    /// [`DAMPING_MAX_FACTOR`] times.
    fn grace(&self, grace: Duration, now_ms: u64) -> Duration {
        grace.mul_f64(self.penalty(now_ms).clamp(1.0, DAMPING_MAX_FACTOR))
    }
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
    /// How many times a node's readiness changed (the replica controller skips passes while this
    /// and the store stay the same over a settled cluster).
    transitions: AtomicU64,
}

/// What the registry shows about one node.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub ready: Condition,
    pub last_seen_ms: u64,
    pub session_epoch: Option<u64>,
    pub session_address: Option<String>,
    pub link: bramble_proto::model::LinkHealth,
}

impl NodeRegistry {
    /// Node events (ready, not ready, session ended) go to `events`.
    pub fn new(grace: Duration, events: Arc<Events>) -> Self {
        NodeRegistry {
            grace,
            heartbeat: Duration::from_secs(2),
            live: Mutex::new(HashMap::new()),
            events,
            transitions: AtomicU64::new(0),
        }
    }

    /// How many times a node's readiness changed so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::SeqCst)
    }

    /// Sets a node's Ready condition; a change of its status is counted in [`Self::transitions`].
    fn set_ready(&self, c: &mut Condition, status: ConditionStatus, reason: &str, message: &str, now_ms: u64) -> bool {
        let changed = c.status != status;
        if changed {
            c.last_transition_ms = now_ms;
            self.transitions.fetch_add(1, Ordering::SeqCst);
        }
        c.status = status;
        c.reason = reason.to_string();
        c.message = message.to_string();
        changed
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
            ended: None,
            damping: Damping::default(),
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
                self.set_ready(&mut l.ready, ConditionStatus::True, "AgentConnected", "the agent is connected", now_ms);
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
        if self.set_ready(&mut l.ready, ConditionStatus::True, "AgentConnected", "the agent is connected", now_ms) {
            self.events.node(name, EventReason::NodeReady, "heartbeats resumed", now_ms);
        }
        true
    }

    /// Ends session `epoch` (only if it is still the current one). `lost`: it timed out (the
    /// link or the board went silent) rather than being closed; such losses lengthen the
    /// board's grace period for a while (damping).
    pub fn disconnect(&self, name: &str, epoch: u64, reason: &str, lost: bool, now: Instant, now_ms: u64) {
        let mut live = self.live.lock().expect("registry lock");
        let Some(l) = live.get_mut(name) else { return };
        if l.session.as_ref().map(|s| s.epoch) == Some(epoch) {
            l.session = None;
            l.ended = Some(now);
            if lost {
                l.damping.lost(now_ms);
            }
            self.events.node(name, EventReason::SessionEnded, format!("session {epoch} ended: {reason}"), now_ms);
        }
    }

    /// `name`'s grace period now: the configured one, lengthened while its link flaps.
    pub fn grace_of(&self, name: &str, now_ms: u64) -> Duration {
        let live = self.live.lock().expect("registry lock");
        live.get(name).map_or(self.grace, |l| l.damping.grace(self.grace, now_ms))
    }

    /// Marks nodes without contact for longer than the grace period NotReady; returns their names.
    pub fn check(&self, nodes: impl IntoIterator<Item = String>, now: Instant, now_ms: u64) -> Vec<String> {
        let mut live = self.live.lock().expect("registry lock");
        let mut changed = Vec::new();
        for name in nodes {
            let l = Self::entry(&mut live, &name, now_ms);
            // Contact lasts as long as the session: it ends within the session's idle timeout
            // of the link going silent. A session that stays up without heartbeats (a stuck
            // agent) gets a heartbeat period more.
            let since = match (&l.session, l.ended) {
                (None, Some(ended)) => Some(l.last_seen.map_or(ended, |t| t.max(ended))),
                _ => l.last_seen,
            };
            let silent_for = match since {
                Some(t) => now.saturating_duration_since(t),
                None => Duration::from_millis(now_ms.saturating_sub(l.ready.last_transition_ms)),
            };
            let grace = l.damping.grace(self.grace, now_ms);
            let limit = if l.session.is_some() { grace + self.heartbeat } else { grace };
            if silent_for > limit && l.ready.status != ConditionStatus::False {
                let damped = if grace > self.grace {
                    format!(", lengthened from {} while its link flaps", fmt_secs(self.grace))
                } else {
                    String::new()
                };
                let msg = format!(
                    "no contact from the agent for {} (grace period {}{damped})",
                    fmt_secs(silent_for),
                    fmt_secs(grace)
                );
                self.set_ready(&mut l.ready, ConditionStatus::False, "NodeStatusUnknown", &msg, now_ms);
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
            link: bramble_proto::model::LinkHealth {
                losses: l.damping.losses,
                last_lost_ms: l.damping.last_lost_ms,
                grace_ms: l.damping.grace(self.grace, now_ms).as_millis() as u64,
                base_grace_ms: self.grace.as_millis() as u64,
            },
        }
    }

    /// The connection of `name`'s current session, if it has one.
    pub fn connection(&self, name: &str) -> Option<quinn::Connection> {
        self.live.lock().expect("registry lock").get(name)?.session.as_ref()?.connection.clone()
    }
}

/// `1.5s`, `5s`, `30s`.
fn fmt_secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Marks nodes NotReady when they fall silent, and then calls `not_ready`; reads the store, never
/// writes it.
pub async fn monitor(
    objects: crate::objects::Objects,
    registry: Arc<NodeRegistry>,
    not_ready: impl Fn(),
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
                let marked = registry.check(
                    nodes.into_iter().map(|n| n.value.meta.name),
                    Instant::now(),
                    bramble_proto::time::now_ms(),
                );
                if !marked.is_empty() {
                    not_ready();
                }
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
        r.disconnect("pi", 5, "closed", false, t, 0);
        assert_eq!(r.view("pi", 0).session_epoch, Some(6));
        assert!(!r.heartbeat("pi", 5, t, 0), "heartbeats of old sessions are ignored");
        assert!(r.heartbeat("pi", 6, t, 0));
        r.disconnect("pi", 6, "closed", false, t, 0);
        assert_eq!(r.view("pi", 0).session_epoch, None);
    }

    #[test]
    fn ready_after_contact_not_ready_after_grace_ready_again_on_heartbeat() {
        let (r, events) = registry();
        let t0 = Instant::now();
        r.connect("pi", session(1), t0, 1_000).unwrap();
        assert_eq!(r.view("pi", 1_000).ready.status, ConditionStatus::True);
        // The session is up but says nothing (a stuck agent): the grace and a heartbeat period.
        assert!(
            r.check(["pi".to_string()], t0 + Duration::from_secs(17), 18_000).is_empty(),
            "not before the grace period and a heartbeat end"
        );
        assert_eq!(r.check(["pi".to_string()], t0 + Duration::from_secs(18), 19_000), ["pi"]);
        let v = r.view("pi", 19_000);
        assert_eq!((v.ready.status, v.ready.last_transition_ms), (ConditionStatus::False, 19_000));
        assert!(r.check(["pi".to_string()], t0 + Duration::from_secs(30), 31_000).is_empty(), "reported once");
        assert!(r.heartbeat("pi", 1, t0 + Duration::from_secs(31), 32_000));
        assert_eq!(r.view("pi", 32_000).ready.status, ConditionStatus::True);
        let reasons: Vec<_> = events.about(&ObjectRef::node("pi")).into_iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [EventReason::NodeReady, EventReason::NodeNotReady, EventReason::NodeReady]);
    }

    /// One board's link over time, one step a second: heartbeats while up; the leader's end of the
    /// session times out 2 s (QUIC's idle timeout) after it last heard; the board reconnects when
    /// the link is back. Returns when it went NotReady, if it did.
    fn link(r: &NodeRegistry, up: impl Fn(u64) -> bool, secs: u64) -> Vec<u64> {
        let t0 = Instant::now();
        let at = |s: u64| (t0 + Duration::from_secs(s), s * 1000);
        let (mut epoch, mut connected, mut heard) = (1, true, 0);
        r.connect("pi", session(epoch), at(0).0, 0).unwrap();
        let mut not_ready = Vec::new();
        for s in 1..=secs {
            let (t, ms) = at(s);
            if up(s) {
                if !connected {
                    epoch += 1;
                    r.connect("pi", session(epoch), t, ms).unwrap();
                    connected = true;
                }
                r.heartbeat("pi", epoch, t, ms);
                heard = s;
            } else if connected && s - heard >= 2 {
                r.disconnect("pi", epoch, "timed out", true, t, ms);
                connected = false;
            }
            if !r.check(["pi".to_string()], t, ms).is_empty() {
                not_ready.push(s);
            }
        }
        not_ready
    }

    #[test]
    fn a_board_whose_link_goes_down_is_not_ready_within_seconds() {
        let r = NodeRegistry::new(Duration::from_secs(5), Arc::new(Events::new()));
        // Down from second 10 on (last heard at 9): the session ends at 11, and the board is
        // NotReady once more than 5 s have passed since — 8 s after its link went down.
        assert_eq!(link(&r, |s| s < 10, 30), [17]);
        let v = r.view("pi", 30_000);
        assert_eq!((v.link.losses, v.link.grace_ms), (1, 5_000), "one loss does not lengthen the grace");
        assert!(v.ready.message.contains("grace period 5s"), "{}", v.ready.message);
    }

    #[test]
    fn a_flapping_board_is_never_not_ready_and_its_grace_lengthens_then_recovers() {
        let r = NodeRegistry::new(Duration::from_secs(5), Arc::new(Events::new()));
        // Down 2 s every 10 s for 5 minutes (the link comes back at the third second).
        let flapping = |s: u64| s % 10 >= 2 || s < 10;
        assert_eq!(link(&r, flapping, 300), Vec::<u64>::new(), "never NotReady");
        let v = r.view("pi", 300_000);
        assert!(v.link.losses >= 25, "each cut ended its session: {:?}", v.link);
        assert_eq!(v.link.grace_ms, 30_000, "six times the grace while it flaps: {:?}", v.link);
        // Longer cuts now (8 s every 20 s) stay within the lengthened grace.
        let r2 = NodeRegistry::new(Duration::from_secs(5), Arc::new(Events::new()));
        let long_cuts = |s: u64| s % 20 >= 8 || s < 20;
        let churn = link(&r2, long_cuts, 300);
        assert!(churn.len() <= 2, "at most the first cuts, before the damping: {churn:?}");
        // Once the link holds, the penalty halves every five minutes.
        let later = 300_000 + 4 * DAMPING_HALF_LIFE_MS;
        assert_eq!(r.view("pi", later).link.grace_ms, 5_000, "back to the configured grace");
    }

    #[test]
    fn a_session_closed_on_purpose_is_not_a_loss() {
        let r = NodeRegistry::new(Duration::from_secs(5), Arc::new(Events::new()));
        let t = Instant::now();
        for e in 1..=10 {
            r.connect("pi", session(e), t, 0).unwrap();
            r.disconnect("pi", e, "closed by the agent", false, t, 0);
        }
        assert_eq!(r.view("pi", 0).link.losses, 0);
        assert_eq!(r.grace_of("pi", 0), Duration::from_secs(5));
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
