//! The store on etcd, for highly available leaders (DESIGN §6).
//!
//! Every leader keeps a copy of the cluster's keys in memory, filled from one range read and kept
//! current by an etcd watch; reads and watches are served from it. Writes are etcd transactions:
//! each op's condition becomes a compare (`version = 0` for absent, `mod_revision = r`), and the
//! active leader's [`Fence`] adds one more — its election key must still be the one it created —
//! so a leader whose lease ran out cannot write, whatever it believes. A write returns once the
//! copy has caught up with it, so a leader reads its own writes.
//!
//! The trait is synchronous (redb's commits are); the etcd client runs on a runtime of its own,
//! on its own thread, and callers wait on a channel.

use super::{Changes, Expect, KeyValue, Store, StoreError, TxnOp, Watch, WatchEvent};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, TlsOptions,
    TxnOpResponse, WatchOptions,
};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Changes kept in memory for watchers that resume.
const HISTORY: usize = 4096;
/// How long one request may take, retries included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the cluster lives in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `http://host:2379` or `https://…` (then `ca_file` is needed).
    pub endpoints: Vec<String>,
    /// The cluster's keys live under `<prefix>/data`, the leaders' under `<prefix>/leaders`; one
    /// etcd can hold several clusters under different prefixes.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdOptions {
    pub fn data_prefix(&self) -> String {
        format!("{}/data", self.prefix.trim_end_matches('/'))
    }

    pub fn leaders_prefix(&self) -> String {
        format!("{}/leaders/", self.prefix.trim_end_matches('/'))
    }

    /// Connects to each endpoint (lazily: an unreachable member is found by the first request).
    pub async fn connect(&self) -> Result<Pool, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_millis(1500))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", p.display())))
        };
        if let Some(ca) = &self.ca_file {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            match (&self.cert_file, &self.key_file) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => return Err(StoreError::Backend("etcd TLS needs both cert_file and key_file, or neither".into())),
            }
            opts = opts.with_tls(tls);
        }
        let mut clients = Vec::new();
        for e in &self.endpoints {
            let c = Client::connect([e], Some(opts.clone()))
                .await
                .map_err(|err| StoreError::Backend(format!("cannot reach etcd at {e}: {err}")))?;
            clients.push(c);
        }
        Ok(Pool(Arc::new(PoolInner { clients, current: AtomicUsize::new(0) })))
    }
}

/// One client per etcd member, and the one in use: a request that fails as a dead member's
/// would moves everyone to the next member (etcd-client's own balancing keeps sending some
/// requests to a member that is down).
#[derive(Clone)]
pub struct Pool(Arc<PoolInner>);

struct PoolInner {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Pool {
    /// The member in use and its client.
    pub fn get(&self) -> (usize, Client) {
        let i = self.0.current.load(Ordering::Relaxed) % self.0.clients.len();
        (i, self.0.clients[i].clone())
    }

    /// Member `i` failed a request: use the next one (unless someone moved on already).
    pub fn failed(&self, i: usize) {
        let next = (i + 1) % self.0.clients.len();
        let _ = self.0.current.compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// What a write must carry to be accepted: the active leader's election key and the revision
/// that created it. Gone with the lease, so a stale leader's writes fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

#[derive(Debug, Default)]
struct Copy {
    map: BTreeMap<String, KeyValue>,
    revision: u64,
    /// Set while the watch is down: reads still answer, from what was last seen.
    stale: Option<String>,
}

struct Shared {
    copy: Mutex<Copy>,
    caught_up: Condvar,
    changes: Changes,
    data: String,
}

pub struct EtcdStore {
    shared: Arc<Shared>,
    client: Pool,
    rt: tokio::runtime::Handle,
    fence: Mutex<Option<Fence>>,
    endpoints: String,
    _runtime: RuntimeThread,
}

/// A runtime on a thread of its own, stopped when the store is dropped.
struct RuntimeThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd {what}: {e}"))
}

fn rev(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

impl EtcdStore {
    /// Connects, reads every key under the data prefix and starts following changes. Fails if
    /// etcd does not answer within a few seconds (the caller retries).
    pub fn open(options: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| backend("thread", e))?;
        let rt = handle_rx.recv().map_err(|e| backend("runtime", e))?.map_err(|e| backend("runtime", e))?;
        let runtime = RuntimeThread { stop: Some(stop_tx) };
        let client = wait(&rt, REQUEST_TIMEOUT, {
            let options = options.clone();
            async move { options.connect().await }
        })??;
        // The first load happens here, so a store that opened has the cluster in it.
        let data = options.data_prefix();
        let (map, revision) = wait(&rt, REQUEST_TIMEOUT, read_all(client.clone(), data.clone()))?
            .map_err(|e| StoreError::Backend(format!("cannot read the cluster from etcd: {e}")))?;
        let shared = Arc::new(Shared {
            copy: Mutex::new(Copy { map: map.clone(), revision, stale: None }),
            caught_up: Condvar::new(),
            changes: Changes::new(HISTORY, revision),
            data,
        });
        let first = (map, revision);
        rt.spawn(follow(client.clone(), shared.clone(), first));
        Ok(EtcdStore {
            shared,
            client,
            rt,
            fence: Mutex::new(None),
            endpoints: options.endpoints.join(", "),
            _runtime: runtime,
        })
    }

    /// From now on every write must carry `fence` (or, with `None`, none: for tools that write
    /// while no leader runs, such as restore).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().expect("fence lock") = fence;
    }

    /// The clients, for the election (the same connections).
    pub fn client(&self) -> Pool {
        self.client.clone()
    }

    /// The runtime the client lives on.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.rt.clone()
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.shared.data)
    }

    /// Waits until the copy holds revision `r` (a write's own), so the writer reads it back.
    fn catch_up(&self, r: u64) -> Result<(), StoreError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut g = self.shared.copy.lock().expect("copy lock");
        while g.revision < r {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Backend(format!(
                    "the write at revision {r} is in etcd, but its watch has not delivered it within {}s",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
            g = self.shared.caught_up.wait_timeout(g, left).expect("copy lock").0;
        }
        Ok(())
    }
}

/// Runs `fut` on the store's runtime and waits for it (at most `timeout`).
fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    timeout: Duration,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv_timeout(timeout)
        .map_err(|_| StoreError::Backend(format!("etcd did not answer within {}s", timeout.as_secs())))
}

/// Reads every key under `data` and the revision that holds them.
async fn read_all(pool: Pool, data: String) -> Result<(BTreeMap<String, KeyValue>, u64), String> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let resp = loop {
        let (i, mut client) = pool.get();
        match client.get(data.as_bytes(), Some(GetOptions::new().with_prefix())).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline && retryable(&e) => {
                pool.failed(i);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                pool.failed(i);
                return Err(e.to_string());
            }
        }
    };
    let revision = resp.header().map_or(0, |h| rev(h.revision()));
    let mut map = BTreeMap::new();
    for kv in resp.kvs() {
        if let Some(kv) = convert(&data, kv) {
            map.insert(kv.key.clone(), kv);
        }
    }
    Ok((map, revision))
}

/// Reads every key under the data prefix again (after a compaction or a long outage) and makes
/// the copy that; returns it and its revision.
async fn load(pool: Pool, shared: Arc<Shared>) -> Result<(BTreeMap<String, KeyValue>, u64), String> {
    let (map, revision) = read_all(pool, shared.data.clone()).await?;
    let mut g = shared.copy.lock().expect("copy lock");
    // Differences from what the copy held become events, so watchers miss nothing across a
    // reload (after a compaction or a long outage).
    let mut events = Vec::new();
    for (k, old) in &g.map {
        match map.get(k) {
            None => events.push(WatchEvent { revision, key: k.clone(), value: None }),
            Some(new) if new.mod_revision != old.mod_revision => {
                events.push(WatchEvent { revision: new.mod_revision, key: k.clone(), value: Some(new.value.clone()) })
            }
            _ => {}
        }
    }
    for (k, new) in &map {
        if !g.map.contains_key(k) {
            events.push(WatchEvent { revision: new.mod_revision, key: k.clone(), value: Some(new.value.clone()) });
        }
    }
    events.sort_by_key(|e| e.revision);
    g.map = map.clone();
    g.revision = g.revision.max(revision);
    g.stale = None;
    for ev in events {
        shared.changes.publish(ev);
    }
    shared.caught_up.notify_all();
    Ok((map, revision))
}

fn convert(data: &str, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    let key = std::str::from_utf8(kv.key()).ok()?.strip_prefix(data)?.to_string();
    Some(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: rev(kv.create_revision()),
        mod_revision: rev(kv.mod_revision()),
    })
}

/// Follows changes for as long as the store lives: watch from the copy's revision; on any
/// failure say so, wait, and watch again (reloading everything if etcd compacted past us).
async fn follow(client: Pool, shared: Arc<Shared>, first: (BTreeMap<String, KeyValue>, u64)) {
    let mut from = first.1;
    let mut delay = Duration::from_millis(200);
    let mut reload = false;
    loop {
        if reload {
            match load(client.clone(), shared.clone()).await {
                Ok((_, r)) => {
                    from = r;
                    reload = false;
                }
                Err(e) => {
                    warn!("etcd unreachable, retrying in {:.1}s: {e}", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        match watch_once(client.clone(), &shared, &mut from).await {
            WatchEnd::Compacted => reload = true,
            WatchEnd::Failed(e) => {
                shared.copy.lock().expect("copy lock").stale = Some(e.clone());
                warn!("the etcd watch ended, following again in {:.1}s: {e}", delay.as_secs_f64());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        delay = Duration::from_millis(200);
    }
}

enum WatchEnd {
    Compacted,
    Failed(String),
}

async fn watch_once(pool: Pool, shared: &Shared, from: &mut u64) -> WatchEnd {
    let options = WatchOptions::new().with_prefix().with_start_revision(*from as i64 + 1).with_progress_notify();
    let (i, mut client) = pool.get();
    let mut stream = match client.watch(shared.data.as_bytes(), Some(options)).await {
        Ok(s) => s,
        Err(e) => {
            pool.failed(i);
            return WatchEnd::Failed(e.to_string());
        }
    };
    let mut said = false;
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                pool.failed(i);
                return WatchEnd::Failed("etcd closed the watch".into());
            }
            Err(e) => {
                pool.failed(i);
                return WatchEnd::Failed(e.to_string());
            }
        };
        if resp.compact_revision() > 0 {
            warn!(compacted = resp.compact_revision(), "etcd compacted past revision {from}; reading everything again");
            return WatchEnd::Compacted;
        }
        if resp.canceled() {
            return WatchEnd::Failed(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
        }
        if !said {
            let mut g = shared.copy.lock().expect("copy lock");
            if g.stale.take().is_some() {
                info!("following etcd again from revision {from}");
            }
            said = true;
        }
        let mut g = shared.copy.lock().expect("copy lock");
        let mut top = 0;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(key) = std::str::from_utf8(kv.key()).ok().and_then(|k| k.strip_prefix(&shared.data)) else {
                continue;
            };
            let r = rev(kv.mod_revision());
            top = top.max(r);
            let key = key.to_string();
            match ev.event_type() {
                EventType::Put => {
                    let v = convert(&shared.data, kv).expect("checked key");
                    g.map.insert(key.clone(), v);
                    shared.changes.publish(WatchEvent { revision: r, key, value: Some(kv.value().to_vec()) });
                }
                EventType::Delete => {
                    g.map.remove(&key);
                    shared.changes.publish(WatchEvent { revision: r, key, value: None });
                }
            }
        }
        if resp.events().is_empty() && !resp.created() {
            // A progress notification: everything up to the header's revision has been sent.
            // (Not the answer that creates the watch: its header is etcd's revision then, and
            // events up to it may still be on their way — the copy would claim a write it lacks.)
            top = resp.header().map_or(0, |h| rev(h.revision()));
        }
        if top > g.revision {
            g.revision = top;
        }
        *from = (*from).max(g.revision);
        drop(g);
        shared.caught_up.notify_all();
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.shared.copy.lock().expect("copy lock").map.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let g = self.shared.copy.lock().expect("copy lock");
        Ok(g.map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StoreError> {
        self.txn(&[TxnOp::Put { key: key.to_string(), value: value.to_vec(), expect }])
    }

    fn delete(&self, key: &str, expect: Expect) -> Result<u64, StoreError> {
        self.txn(&[TxnOp::Delete { key: key.to_string(), expect }])
    }

    fn txn(&self, ops: &[TxnOp]) -> Result<u64, StoreError> {
        // Conditions, each against the state before the transaction (etcd's compares are).
        let mut compares = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        // etcd refuses two writes to one key in a transaction: the last one is what counts.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let (key, expect, must_exist) = match op {
                TxnOp::Put { key, expect, .. } => {
                    last.insert(key, i);
                    (key, *expect, false)
                }
                TxnOp::Delete { key, expect } => {
                    last.insert(key, i);
                    (key, *expect, true)
                }
                TxnOp::Check { key, expect } => (key, *expect, false),
            };
            let full = self.full(key);
            match expect {
                Expect::Any if must_exist => compares.push(Compare::version(full, CompareOp::Greater, 0)),
                Expect::Any => {}
                Expect::Absent => compares.push(Compare::version(full, CompareOp::Equal, 0)),
                Expect::Revision(r) => compares.push(Compare::mod_revision(full, CompareOp::Equal, r as i64)),
            }
            keys.push(key.clone());
        }
        let fence = self.fence.lock().expect("fence lock").clone();
        if let Some(f) = &fence {
            compares.push(Compare::create_revision(f.key.clone(), CompareOp::Equal, f.create_revision));
        }
        let mut writes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                TxnOp::Put { key, value, .. } if last.get(key.as_str()) == Some(&i) => {
                    writes.push(etcd_client::TxnOp::put(self.full(key), value.clone(), None))
                }
                TxnOp::Delete { key, .. } if last.get(key.as_str()) == Some(&i) => {
                    writes.push(etcd_client::TxnOp::delete(self.full(key), None))
                }
                _ => {}
            }
        }
        if writes.is_empty() && compares.is_empty() {
            return Ok(self.revision());
        }
        let wrote = !writes.is_empty();
        // When it fails: read what is there, to say which condition did not hold.
        let mut reads: Vec<etcd_client::TxnOp> =
            keys.iter().map(|k| etcd_client::TxnOp::get(self.full(k), None)).collect();
        if let Some(f) = &fence {
            reads.push(etcd_client::TxnOp::get(f.key.clone(), None));
        }
        let txn = etcd_client::Txn::new().when(compares).and_then(writes).or_else(reads);
        let client = self.client.clone();
        let resp = wait(&self.rt, REQUEST_TIMEOUT + Duration::from_secs(1), async move {
            // A member that is down fails some requests at once (the client balances over
            // endpoints); another try goes to another one. A retried write whose first try did
            // land fails its compare, except `Any` puts, which write the same value again.
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            loop {
                let (i, mut c) = client.get();
                match c.txn(txn.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(e) if Instant::now() < deadline && retryable(&e) => {
                        client.failed(i);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })?
        .map_err(|e| backend("transaction", format!("{e} (endpoints {})", self.endpoints)))?;
        let revision = resp.header().map_or(0, |h| rev(h.revision()));
        if resp.succeeded() {
            // Only checks: nothing to read back (and the revision may be of keys the copy does
            // not follow, such as the leaders').
            if !wrote {
                return Ok(self.revision());
            }
            self.catch_up(revision)?;
            return Ok(revision);
        }
        // Which condition failed, from the reads in the same transaction.
        let found: Vec<Option<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| KeyValue {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: Vec::new(),
                    create_revision: rev(kv.create_revision()),
                    mod_revision: rev(kv.mod_revision()),
                }),
                _ => None,
            })
            .collect();
        if let Some(f) = &fence {
            let holder = found.get(keys.len()).cloned().flatten();
            if holder.is_none_or(|h| h.create_revision as i64 != f.create_revision) {
                return Err(StoreError::Fenced);
            }
        }
        for (i, op) in ops.iter().enumerate() {
            let (key, expect, must_exist) = match op {
                TxnOp::Put { key, expect, .. } => (key, *expect, false),
                TxnOp::Delete { key, expect } => (key, *expect, true),
                TxnOp::Check { key, expect } => (key, *expect, false),
            };
            let now = found.get(i).cloned().flatten();
            let f = now.as_ref().map(|kv| kv.mod_revision);
            let ok = match expect {
                Expect::Any => !must_exist || now.is_some(),
                Expect::Absent => now.is_none(),
                Expect::Revision(r) => f == Some(r),
            };
            if !ok {
                return Err(StoreError::Conflict { key: key.clone(), expected: expect, found: f });
            }
        }
        Err(StoreError::Backend("etcd refused the transaction, yet every condition holds; try again".into()))
    }

    fn revision(&self) -> u64 {
        self.shared.copy.lock().expect("copy lock").revision
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        let g = self.shared.copy.lock().expect("copy lock");
        self.shared.changes.watch(prefix, after, g.revision)
    }
}

/// Failures another try may not have: the member was down or had no leader.
pub(crate) fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            )
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}
