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
