//! A store in memory: the same semantics as [`super::RedbStore`] (one conformance suite), no
//! durability. For simulated clusters and tests that need thousands of commits in milliseconds.

use super::{plan_txn, Changes, Expect, KeyValue, Store, StoreError, TxnOp, Watch, WatchEvent, Write};
use std::collections::BTreeMap;
use std::sync::Mutex;

const HISTORY: usize = 4096;

#[derive(Debug)]
pub struct MemStore {
    state: Mutex<(BTreeMap<String, KeyValue>, u64)>,
    changes: Changes,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore { state: Mutex::new((BTreeMap::new(), 0)), changes: Changes::new(HISTORY, 0) }
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.state.lock().expect("store lock").0.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let g = self.state.lock().expect("store lock");
        Ok(g.0.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone()).collect())
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError> {
        self.txn(&[TxnOp::Put { key: key.to_string(), value: value.to_vec(), expect }])
    }

    fn delete(&self, key: &str, expect: Expect) -> Result<u64, StoreError> {
        self.txn(&[TxnOp::Delete { key: key.to_string(), expect }])
    }

    fn txn(&self, ops: &[TxnOp]) -> Result<u64, StoreError> {
        let mut g = self.state.lock().expect("store lock");
        let (map, rev) = &mut *g;
        let writes = plan_txn(ops, *rev, |key| Ok(map.get(key).cloned()))?;
        let mut events = Vec::with_capacity(writes.len());
        for w in writes {
            *rev += 1;
            match w {
                Write::Put(kv) => {
                    events.push(WatchEvent { revision: *rev, key: kv.key.clone(), value: Some(kv.value.clone()) });
                    map.insert(kv.key.clone(), kv);
                }
                Write::Delete(key) => {
                    map.remove(&key);
                    events.push(WatchEvent { revision: *rev, key, value: None });
                }
            }
        }
        // Published under the lock, so watchers see changes in revision order.
        for ev in events {
            self.changes.publish(ev);
        }
        Ok(*rev)
    }

    fn revision(&self) -> u64 {
        self.state.lock().expect("store lock").1
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        let g = self.state.lock().expect("store lock");
        self.changes.watch(prefix, after, g.1)
    }
}
