//! The event ring: what happened, for humans (`describe`, `events`), bounded, in memory only.

use bramble_proto::model::{Event, EventReason, ObjectRef};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept.
pub const EVENT_HISTORY: usize = 1000;

#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Events {
    pub fn new() -> Events {
        Events::default()
    }

    /// Adds an event (and logs it), dropping the oldest when full.
    pub fn record(&self, event: Event) {
        tracing::info!(object = %event.object, reason = %event.reason, "{}", event.message);
        let mut ring = self.ring.lock().expect("events lock");
        if ring.len() == EVENT_HISTORY {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// Records an event about node `name`.
    pub fn node(&self, name: &str, reason: EventReason, message: impl Into<String>, now_ms: u64) {
        self.record(Event::new(now_ms, ObjectRef::node(name), reason, message));
    }

    /// Events `keep` selects, oldest first.
    pub fn filter(&self, keep: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.ring.lock().expect("events lock").iter().filter(|e| keep(e)).cloned().collect()
    }

    /// Events at or after `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Event> {
        self.filter(|e| e.time_ms >= since_ms)
    }

    /// Events about `object`, oldest first.
    pub fn about(&self, object: &ObjectRef) -> Vec<Event> {
        self.filter(|e| e.object == *object)
    }

    /// Events about app `app` and its replicas (also replicas already gone), oldest first.
    pub fn of_app(&self, app: &str) -> Vec<Event> {
        self.filter(|e| e.concerns_app(app))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_finds_an_apps_replicas() {
        let ev = Events::new();
        for i in 0..EVENT_HISTORY + 5 {
            ev.node("pi", EventReason::NodeReady, format!("{i}"), i as u64);
        }
        assert_eq!(ev.since(0).len(), EVENT_HISTORY);
        assert_eq!(ev.since(0)[0].message, "5", "the oldest went first");
        ev.record(Event::replica(9, "web", "web-a-0", EventReason::Started, "up"));
        ev.record(Event::replica(9, "web2", "web2-a-0", EventReason::Started, "up"));
        assert_eq!(ev.of_app("web").len(), 1, "not web2's, although its name starts the same");
        assert_eq!(ev.about(&ObjectRef::node("pi")).len(), EVENT_HISTORY - 2, "two more went for the replicas");
    }
}

/// Refusals that a stranger can cause at will (joins with a bad token): the first of each
/// minute is an event (and a log line); the rest are counted and summed up in one event when the
/// next minute's first comes, so that a flood writes neither a line each to the journal (flash)
/// nor pushes the real events out of the ring.
#[derive(Debug, Default)]
pub struct Throttle {
    state: std::sync::Mutex<(u64, u64)>,
}

/// How long one summary covers.
pub const THROTTLE_WINDOW_MS: u64 = 60_000;

impl Throttle {
    /// What to record for a refusal at `now`: none (counted), or the event's message with how
    /// many were counted since the last one.
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let mut g = self.state.lock().expect("throttle lock");
        let (window_start, suppressed) = &mut *g;
        if *window_start != 0 && now_ms < *window_start + THROTTLE_WINDOW_MS {
            *suppressed += 1;
            return None;
        }
        let before = *suppressed;
        *window_start = now_ms.max(1);
        *suppressed = 0;
        Some(before)
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn one_a_minute_and_a_count_of_the_rest() {
        let t = Throttle::default();
        assert_eq!(t.admit(1_000), Some(0));
        for i in 0..500 {
            assert_eq!(t.admit(2_000 + i), None);
        }
        assert_eq!(t.admit(61_001), Some(500), "the next minute's first says how many were left out");
        assert_eq!(t.admit(61_002), None);
    }
}
