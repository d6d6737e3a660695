//! Caps on what clients may hold at once: per client (an address) and in all. Pure: a
//! [`Slot`] gives its place back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts per client and in all, with a cap on each; a [`Slot`] gives its place back when dropped.
#[derive(Debug)]
pub struct Limiter {
    per_client: usize,
    total: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A place taken in a [`Limiter`].
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<Limiter>,
    client: IpAddr,
}

impl Limiter {
    pub fn new(per_client: usize, total: usize) -> Arc<Limiter> {
        Arc::new(Limiter { per_client, total, held: Default::default() })
    }

    /// A place for `client`, if it and everyone together are under their caps.
    pub fn take(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let mut g = self.held.lock().expect("limiter lock");
        let (total, map) = &mut *g;
        let mine = map.entry(client).or_insert(0);
        if *total >= self.total || *mine >= self.per_client {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot { limiter: self.clone(), client })
    }

    /// Places held (all clients).
    pub fn held(&self) -> usize {
        self.held.lock().expect("limiter lock").0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.limiter.held.lock().expect("limiter lock");
        let (total, map) = &mut *g;
        *total -= 1;
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_client_and_in_all_and_places_come_back() {
        let l = Limiter::new(2, 3);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.42.0.2".parse().unwrap(), "10.42.0.3".parse().unwrap(), "10.42.0.4".parse().unwrap());
        let a1 = l.take(a).unwrap();
        let _a2 = l.take(a).unwrap();
        assert!(l.take(a).is_none(), "per client");
        let _b1 = l.take(b).unwrap();
        assert!(l.take(c).is_none(), "in all");
        drop(a1);
        let _c = l.take(c).expect("given back");
        assert_eq!(l.held(), 3);
    }
}
