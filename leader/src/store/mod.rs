//! The leader's state store: a small key-value interface with compare-and-swap and watches.
//!
//! [`Store`] is what controllers and the API see; [`RedbStore`] is the embedded implementation,
//! [`EtcdStore`] keeps the cluster in etcd for highly available leaders, [`MemStore`] is one in
//! memory for simulations and tests. All three pass one conformance suite (`tests.rs`; etcd's
//! against a real etcd). Keys are `/kind/name` paths; values are JSON objects. Every write bumps
//! one store-wide `revision`.

mod etcd_store;
pub mod local_etcd;
mod mem_store;
mod redb_store;

pub use etcd_store::{EtcdOptions, EtcdStore, Fence, Pool};
pub use mem_store::MemStore;
pub use redb_store::RedbStore;

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
}

/// The condition a compare-and-swap write requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// Only if the key does not exist.
    Absent,
    /// Only if the key exists and was last written at this revision.
    Revision(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conflict on {key}: expected {expected:?}, found revision {found:?}")]
    Conflict { key: String, expected: Expect, found: Option<u64> },
    #[error("revision {requested} is no longer available to watch from (oldest is {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    #[error("store: {0}")]
    Backend(String),
    /// This leader lost (or never held) the right to write: another leader is active.
    #[error("this leader is not the active one (its lease is gone); writes go to the active leader")]
    Fenced,
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        expect: Expect,
    },
    Delete {
        key: String,
        expect: Expect,
    },
    /// Writes nothing; the transaction happens only if `expect` holds for `key`.
    Check {
        key: String,
        expect: Expect,
    },
}

/// A change, as delivered to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub revision: u64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// The key-value interface every backend provides.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// All keys starting with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    /// Writes `value` if `expect` holds; returns the new revision. Durable when it returns.
    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError>;
    /// Deletes `key` if `expect` holds; returns the new revision.
    fn delete(&self, key: &str, expect: Expect) -> Result<u64, StoreError>;
    /// Applies every op or none: all conditions are checked first (against the state before the
    /// transaction), then all writes are made in one durable commit. On redb each write gets its
    /// own revision; on etcd they share one. Returns the last revision.
    fn txn(&self, ops: &[TxnOp]) -> Result<u64, StoreError>;
    /// The current revision.
    fn revision(&self) -> u64;
    /// Changes to keys under `prefix` after revision `after`: first those already made (from a
    /// bounded in-memory history), then live ones.
    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError>;
}

/// A stream of changes under a prefix.
#[derive(Debug)]
pub struct Watch {
    prefix: String,
    backlog: VecDeque<(u64, WatchEvent)>,
    live: broadcast::Receiver<(u64, WatchEvent)>,
    /// The sequence number (per store, one per change) of the last change seen. Revisions do
    /// not serve: the writes of one etcd transaction share one.
    seen: u64,
    last: u64,
}

impl Watch {
    /// The next change. Errors with [`StoreError::Compacted`] if this watcher fell too far behind.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            let (seq, ev) = match self.backlog.pop_front() {
                Some(ev) => ev,
                None => match self.live.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Err(StoreError::Compacted { requested: self.last + 1, oldest: 0 })
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Backend("store closed".into())),
                },
            };
            if seq <= self.seen || ev.revision < self.last {
                continue;
            }
            self.seen = seq;
            self.last = ev.revision;
            if ev.key.starts_with(&self.prefix) {
                return Ok(ev);
            }
        }
    }
}

/// One write a transaction makes, after every condition held.
#[derive(Debug)]
pub(crate) enum Write {
    Put(KeyValue),
    Delete(String),
}

/// Checks every op's condition against the state before the transaction (`current`), then
/// returns the writes in order with their revisions (the first after `rev`). Shared by every
/// backend, so they agree on what a transaction means.
pub(crate) fn plan_txn(
    ops: &[TxnOp],
    rev: u64,
    mut current: impl FnMut(&str) -> Result<Option<KeyValue>, StoreError>,
) -> Result<Vec<Write>, StoreError> {
    let mut existing = Vec::with_capacity(ops.len());
    for op in ops {
        let (key, expect, is_delete) = match op {
            TxnOp::Put { key, expect, .. } => (key, *expect, false),
            TxnOp::Delete { key, expect } => (key, *expect, true),
            TxnOp::Check { key, expect } => (key, *expect, false),
        };
        let now = current(key)?;
        let found = now.as_ref().map(|e| e.mod_revision);
        let ok = match expect {
            Expect::Any => true,
            Expect::Absent => now.is_none(),
            Expect::Revision(r) => found == Some(r),
        };
        if !ok || (is_delete && now.is_none()) {
            return Err(StoreError::Conflict { key: key.clone(), expected: expect, found });
        }
        existing.push(now);
    }
    let mut rev = rev;
    let mut writes = Vec::with_capacity(ops.len());
    for (op, now) in ops.iter().zip(existing) {
        match op {
            TxnOp::Check { .. } => {}
            TxnOp::Put { key, value, .. } => {
                rev += 1;
                let create_revision = now.map_or(rev, |e| e.create_revision);
                let kv = KeyValue { key: key.clone(), value: value.clone(), create_revision, mod_revision: rev };
                writes.push(Write::Put(kv));
            }
            TxnOp::Delete { key, .. } => {
                rev += 1;
                writes.push(Write::Delete(key.clone()));
            }
        }
    }
    Ok(writes)
}

/// History of recent changes and the channel to live watchers; shared by backends.
#[derive(Debug)]
pub(crate) struct Changes {
    inner: Mutex<ChangeLog>,
    capacity: usize,
}

#[derive(Debug)]
struct ChangeLog {
    history: VecDeque<(u64, WatchEvent)>,
    live: broadcast::Sender<(u64, WatchEvent)>,
    seq: u64,
    /// Every change after this revision is in `history` (the store's revision when it opened,
    /// then the revision of the last change dropped). Revisions need not be contiguous: on etcd
    /// other keys take some.
    floor: u64,
}

impl Changes {
    /// A history that starts at revision `floor` (the store's when it opened).
    pub(crate) fn new(capacity: usize, floor: u64) -> Self {
        let (live, _) = broadcast::channel(capacity);
        let log = ChangeLog { history: VecDeque::with_capacity(capacity), live, seq: 0, floor };
        Changes { inner: Mutex::new(log), capacity }
    }

    pub(crate) fn publish(&self, ev: WatchEvent) {
        let mut g = self.inner.lock().expect("changes lock");
        if g.history.len() == self.capacity {
            if let Some((_, dropped)) = g.history.pop_front() {
                g.floor = g.floor.max(dropped.revision);
            }
        }
        g.seq += 1;
        let item = (g.seq, ev);
        g.history.push_back(item.clone());
        let _ = g.live.send(item);
    }

    pub(crate) fn watch(&self, prefix: &str, after: u64, current: u64) -> Result<Watch, StoreError> {
        let g = self.inner.lock().expect("changes lock");
        if after < current && after < g.floor {
            return Err(StoreError::Compacted { requested: after + 1, oldest: g.floor + 1 });
        }
        let backlog = g.history.iter().filter(|e| e.1.revision > after).cloned().collect();
        Ok(Watch { prefix: prefix.to_string(), backlog, live: g.live.subscribe(), seen: 0, last: after })
    }
}

#[cfg(test)]
mod tests;
