//! The embedded store on redb: one file, durable commits, copy-on-write (a crash at any moment
//! leaves the last committed state).

use super::{plan_txn, Changes, Expect, KeyValue, Store, StoreError, TxnOp, Watch, WatchEvent, Write};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Changes kept in memory for watchers that resume.
const HISTORY: usize = 4096;
/// redb's own cache of the file's pages (its default is 1 GiB: the whole file in the leader's
/// heap). Pages beyond it are read again through the kernel's page cache, which the leader's
/// RSS does not count.
const CACHE_BYTES: usize = 4 << 20;

pub struct RedbStore {
    db: Database,
    revision: AtomicU64,
    /// Serialises writers so revisions and published events stay in order.
    write_lock: Mutex<()>,
    changes: Changes,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("revision", &self.revision()).finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Values are stored as create revision, mod revision (8 bytes each, big-endian), then the data.
fn pack(create: u64, modified: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&create.to_be_bytes());
    v.extend_from_slice(&modified.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn unpack(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 16 {
        return Err(StoreError::Backend(format!("corrupt record for {key}: {} bytes", raw.len())));
    }
    let create = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let modified = u64::from_be_bytes(raw[8..16].try_into().expect("8 bytes"));
    Ok(KeyValue { key: key.to_string(), value: raw[16..].to_vec(), create_revision: create, mod_revision: modified })
}

impl RedbStore {
    /// Opens the store file at `path`, creating it if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        // The cluster's objects (sealed secrets among them): the leader's alone, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(format!("cannot make {} private: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            txn.open_table(KV).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let r = meta.get(REVISION).map_err(backend)?.map_or(0, |g| g.value());
            r
        };
        txn.commit().map_err(backend)?;
        Ok(RedbStore {
            db,
            revision: AtomicU64::new(revision),
            write_lock: Mutex::new(()),
            changes: Changes::new(HISTORY, revision),
        })
    }

    fn write(&self, key: &str, value: Option<&[u8]>, expect: Expect) -> Result<u64, StoreError> {
        let op = match value {
            Some(v) => TxnOp::Put { key: key.to_string(), value: v.to_vec(), expect },
            None => TxnOp::Delete { key: key.to_string(), expect },
        };
        self.apply(std::slice::from_ref(&op))
    }

    fn apply(&self, ops: &[TxnOp]) -> Result<u64, StoreError> {
        let _guard = self.write_lock.lock().expect("write lock");
        let txn = self.db.begin_write().map_err(backend)?;
        let mut rev = self.revision.load(Ordering::SeqCst);
        let mut events = Vec::with_capacity(ops.len());
        {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let writes = plan_txn(ops, rev, |key| match kv.get(key).map_err(backend)? {
                Some(g) => Ok(Some(unpack(key, g.value())?)),
                None => Ok(None),
            })?;
            for w in writes {
                rev += 1;
                match w {
                    Write::Put(e) => {
                        kv.insert(e.key.as_str(), pack(e.create_revision, e.mod_revision, &e.value).as_slice())
                            .map_err(backend)?;
                        events.push(WatchEvent { revision: rev, key: e.key, value: Some(e.value) });
                    }
                    Write::Delete(key) => {
                        kv.remove(key.as_str()).map_err(backend)?;
                        events.push(WatchEvent { revision: rev, key, value: None });
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(REVISION, rev).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        self.revision.store(rev, Ordering::SeqCst);
        for ev in events {
            self.changes.publish(ev);
        }
        Ok(rev)
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        match kv.get(key).map_err(backend)? {
            Some(g) => Ok(Some(unpack(key, g.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        let mut out = Vec::new();
        for item in kv.range(prefix..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push(unpack(k, v.value())?);
        }
        Ok(out)
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError> {
        self.write(key, Some(value), expect)
    }

    fn delete(&self, key: &str, expect: Expect) -> Result<u64, StoreError> {
        self.write(key, None, expect)
    }

    fn txn(&self, ops: &[TxnOp]) -> Result<u64, StoreError> {
        self.apply(ops)
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        self.changes.watch(prefix, after, self.revision())
    }
}
