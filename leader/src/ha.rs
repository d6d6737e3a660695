//! Highly available leaders on etcd: every leader registers under a lease; one wins the election
//! and is active (controllers, scheduler, sessions, writes); the others stand by, answer
//! `GetLeaders` and send everyone else to the active one.
//!
//! The election is one key, `<prefix>/leaders/active`, created only if absent and bound to the
//! winner's lease. Its create revision is the [`Fence`] every write of the active leader carries
//! (an etcd compare), so once the lease runs out — a crash, a power cut, a partition — no write of
//! that leader lands, even before it notices. A leader that notices it lost its lease stops at
//! once; systemd starts it again as a standby.

use crate::store::{EtcdOptions, Fence, Pool, StoreError};
use bramble_proto::time::now_ms;
use bramble_proto::wire::LeaderInfo;
use etcd_client::{Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One leader's part in the election.
pub struct Ha {
    pool: Pool,
    prefix: String,
    me: Mutex<LeaderInfo>,
    ttl: Duration,
    lease: Mutex<i64>,
    /// Fires when this leader's lease is gone (or cannot be known to live).
    lost: CancellationToken,
    view: Mutex<Vec<LeaderInfo>>,
    /// Runs the lease and view tasks.
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Ha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha").field("me", &self.me).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd {what}: {e}"))
}

impl Ha {
    /// Takes a lease, registers this leader (`name` at `addr`) and starts keeping the lease alive
    /// and the list of leaders current. `client` and `rt` are the store's.
    pub async fn join(
        pool: Pool,
        rt: tokio::runtime::Handle,
        options: &EtcdOptions,
        name: &str,
        addr: &str,
        ttl: Duration,
    ) -> Result<Arc<Ha>, StoreError> {
        let me = LeaderInfo {
            name: name.to_string(),
            addr: addr.to_string(),
            active: false,
            since_ms: now_ms(),
            store: "etcd".into(),
        };
        let ha = Arc::new(Ha {
            pool,
            prefix: options.leaders_prefix(),
            me: Mutex::new(me),
            ttl,
            lease: Mutex::new(0),
            lost: CancellationToken::new(),
            view: Mutex::new(Vec::new()),
            rt: rt.clone(),
        });
        let lease = ha.grant().await?;
        ha.register(lease).await?;
        rt.spawn(keep_alive(ha.clone(), lease));
        rt.spawn(follow_view(ha.clone()));
        Ok(ha)
    }

    fn active_key(&self) -> String {
        format!("{}active", self.prefix)
    }

    fn member_key(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }

    async fn grant(&self) -> Result<i64, StoreError> {
        let secs = self.ttl.as_secs().max(1) as i64;
        let (i, mut c) = self.pool.get();
        let lease =
            c.lease_grant(secs, None).await.inspect_err(|_| self.pool.failed(i)).map_err(|e| err("lease", e))?.id();
        *self.lease.lock().expect("lease lock") = lease;
        Ok(lease)
    }

    async fn register(&self, lease: i64) -> Result<(), StoreError> {
        let me = self.me.lock().expect("me lock").clone();
        let value = serde_json::to_vec(&me).expect("leader info serialises");
        let (i, mut c) = self.pool.get();
        c.put(self.member_key(&me.name), value, Some(PutOptions::new().with_lease(lease)))
            .await
            .inspect_err(|_| self.pool.failed(i))
            .map_err(|e| err("register", e))?;
        Ok(())
    }

    /// Waits until this leader is elected (or its lease is lost); returns the fence its writes
    /// must carry.
    pub async fn campaign(self: &Arc<Self>) -> Result<Fence, StoreError> {
        let key = self.active_key();
        let mut delay = Duration::from_millis(200);
        loop {
            if self.lost.is_cancelled() {
                return Err(StoreError::Backend("stopped before being elected".into()));
            }
            let lease = *self.lease.lock().expect("lease lock");
            let mut me = self.me.lock().expect("me lock").clone();
            me.active = true;
            me.since_ms = now_ms();
            let value = serde_json::to_vec(&me).expect("leader info serialises");
            let txn = Txn::new()
                .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            let (i, mut c) = self.pool.get();
            let resp = match c.txn(txn).await {
                Ok(r) => r,
                Err(e) => {
                    self.pool.failed(i);
                    warn!("etcd unreachable while campaigning, retrying in {:.1}s: {e}", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            delay = Duration::from_millis(200);
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                *self.me.lock().expect("me lock") = me;
                info!(revision, "elected: this leader is now the active one");
                return Ok(Fence { key, create_revision: revision });
            }
            // Someone is active: wait for its key to go (lease expiry or resignation).
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            });
            let Some(holder_rev) = holder else { continue };
            let options = WatchOptions::new().with_start_revision(holder_rev + 1);
            let (i, mut c) = self.pool.get();
            let mut stream = match c.watch(key.clone(), Some(options)).await {
                Ok(s) => s,
                Err(e) => {
                    self.pool.failed(i);
                    warn!("cannot watch the active leader's key: {e}");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(r)) if r.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                    Ok(Some(r)) if r.canceled() => break,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        self.pool.failed(i);
                        break;
                    }
                }
            }
        }
    }

    /// Fires when this leader's lease is gone.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Who is who, from the last view of the leaders' keys.
    pub fn leaders(&self) -> Vec<LeaderInfo> {
        self.view.lock().expect("view lock").clone()
    }

    pub fn active(&self) -> Option<LeaderInfo> {
        self.leaders().into_iter().find(|l| l.active)
    }

    pub fn me(&self) -> LeaderInfo {
        self.me.lock().expect("me lock").clone()
    }

    /// Gives up the election at once (a clean stop), so a standby takes over without waiting
    /// for the lease to run out.
    pub fn resign(&self) {
        let lease = *self.lease.lock().expect("lease lock");
        let mut client = self.pool.get().1;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(client.lease_revoke(lease).await.is_ok());
        });
        let _ = rx.recv_timeout(Duration::from_secs(2));
    }
}

/// Renews the lease every third of its life, moving to another etcd member when one fails. If a
/// renewal is refused (the lease is gone) or none succeeded for two TTLs, the lease may be gone:
/// an active leader must stop; a standby takes a new lease and registers again.
async fn keep_alive(ha: Arc<Ha>, mut lease: i64) {
    let every = (ha.ttl / 3).max(Duration::from_millis(300));
    // etcd extends every lease when it elects a new leader of its own, so a member's death (and
    // the election it may cause, ~1-2 s) costs no lease even when renewals stall meanwhile. A
    // lease etcd says is gone is lost at once; one merely not renewed is given up after two TTLs
    // (a stale leader's writes are fenced meanwhile; it only risks holding boards' sessions that
    // long).
    let give_up = ha.ttl * 2;
    let mut last_ok = Instant::now();
    loop {
        let lost = 'member: {
            let (member, mut c) = ha.pool.get();
            let (mut keeper, mut stream) = match c.lease_keep_alive(lease).await {
                Ok(k) => k,
                Err(e) => {
                    ha.pool.failed(member);
                    if last_ok.elapsed() >= give_up {
                        warn!("the leader lease was not renewed for {give_up:?}: {e}");
                        break 'member true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break 'member false;
                }
            };
            loop {
                let renewed = tokio::time::timeout(every, async {
                    keeper.keep_alive().await.map_err(|e| e.to_string())?;
                    match stream.message().await {
                        Ok(Some(r)) if r.ttl() > 0 => Ok(()),
                        Ok(Some(_)) => Err("etcd says the lease has expired".to_string()),
                        Ok(None) => Err("etcd closed the lease stream".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                })
                .await
                .unwrap_or_else(|_| Err("no answer".into()));
                match renewed {
                    Ok(()) => last_ok = Instant::now(),
                    Err(e) if e.contains("expired") => {
                        warn!("the leader lease expired");
                        break 'member true;
                    }
                    Err(e) => {
                        ha.pool.failed(member);
                        if last_ok.elapsed() >= give_up {
                            warn!("the leader lease was not renewed for {give_up:?}: {e}");
                            break 'member true;
                        }
                        warn!("renewing the leader lease failed, trying another etcd member: {e}");
                        break 'member false;
                    }
                }
                tokio::time::sleep(every.saturating_sub(Duration::from_millis(50))).await;
            }
        };
        if lost {
            if !retry_or_lose(&ha, &mut lease).await {
                return;
            }
            last_ok = Instant::now();
        }
    }
}

/// After a lease may be gone: the active leader loses (returns false); a standby gets a new one.
async fn retry_or_lose(ha: &Arc<Ha>, lease: &mut i64) -> bool {
    if ha.me().active {
        ha.lost.cancel();
        return false;
    }
    let mut delay = Duration::from_millis(200);
    loop {
        match ha.grant().await {
            Ok(l) => {
                if ha.register(l).await.is_ok() {
                    *lease = l;
                    return true;
                }
            }
            Err(e) => warn!("etcd unreachable, retrying in {:.1}s: {e}", delay.as_secs_f64()),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Keeps `ha.view` in step with the leaders' keys: the members, and which one is active.
async fn follow_view(ha: Arc<Ha>) {
    loop {
        let (member, mut c) = ha.pool.get();
        let got = c.get(ha.prefix.clone(), Some(GetOptions::new().with_prefix())).await;
        let resp = match got {
            Ok(r) => r,
            Err(e) => {
                ha.pool.failed(member);
                warn!("cannot read the leaders from etcd: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut keys: std::collections::BTreeMap<String, LeaderInfo> = std::collections::BTreeMap::new();
        for kv in resp.kvs() {
            if let Ok(info) = serde_json::from_slice::<LeaderInfo>(kv.value()) {
                keys.insert(String::from_utf8_lossy(kv.key()).into_owned(), info);
            }
        }
        publish(&ha, &keys);
        let from = resp.header().map_or(0, |h| h.revision()) + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = match c.watch(ha.prefix.clone(), Some(options)).await {
            Ok(s) => s,
            Err(_) => {
                ha.pool.failed(member);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let r = match stream.message().await {
                Ok(Some(r)) => r,
                _ => {
                    ha.pool.failed(member);
                    break;
                }
            };
            if r.canceled() {
                break;
            }
            for ev in r.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match ev.event_type() {
                    EventType::Put => {
                        if let Ok(info) = serde_json::from_slice::<LeaderInfo>(kv.value()) {
                            keys.insert(key, info);
                        }
                    }
                    EventType::Delete => {
                        keys.remove(&key);
                    }
                }
            }
            publish(&ha, &keys);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn publish(ha: &Ha, keys: &std::collections::BTreeMap<String, LeaderInfo>) {
    let active = keys.get(&ha.active_key()).cloned();
    let mut out: Vec<LeaderInfo> = keys
        .iter()
        .filter(|(k, _)| k.as_str() != ha.active_key())
        .map(|(_, l)| {
            let mut l = l.clone();
            if let Some(a) = &active {
                if a.name == l.name {
                    l.active = true;
                    l.since_ms = a.since_ms;
                }
            }
            l
        })
        .collect();
    // An active leader whose member key is gone (its lease ran out a moment ago) still shows.
    if let Some(a) = active {
        if !out.iter().any(|l| l.name == a.name) {
            out.push(a);
        }
    }
    *ha.view.lock().expect("view lock") = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local_etcd::LocalEtcd;
    use crate::store::{EtcdStore, Expect, Store};

    /// The death of any etcd member — one of them etcd's leader — costs the active leader
    /// neither its lease nor its writes; a second leader stays standby throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_active_leader_keeps_its_lease_while_etcd_members_die_one_at_a_time() {
        let mut etcd = LocalEtcd::start(3, "127.0.0.1", None, None);
        let options = EtcdOptions {
            endpoints: etcd.endpoints(),
            prefix: "/ha".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        };
        let o = options.clone();
        let store = Arc::new(tokio::task::spawn_blocking(move || EtcdStore::open(&o)).await.unwrap().unwrap());
        let ttl = Duration::from_secs(2);
        let a = Ha::join(store.client(), store.runtime(), &options, "a", "127.0.0.1:1", ttl).await.unwrap();
        let fence = a.campaign().await.unwrap();
        store.set_fence(Some(fence));
        let o = options.clone();
        let other = Arc::new(tokio::task::spawn_blocking(move || EtcdStore::open(&o)).await.unwrap().unwrap());
        let b = Ha::join(other.client(), other.runtime(), &options, "b", "127.0.0.1:2", ttl).await.unwrap();
        let standby = {
            let b = b.clone();
            tokio::spawn(async move { b.campaign().await })
        };
        for i in 0..3 {
            etcd.kill(i);
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(!a.lost().is_cancelled(), "the lease survived the death of member {i}");
            let s = store.clone();
            let key = format!("/k{i}");
            tokio::task::spawn_blocking(move || s.put(&key, b"1", Expect::Absent)).await.unwrap().unwrap();
            assert!(!standby.is_finished(), "b is still standing by after member {i} died");
            etcd.restart(i);
            etcd.wait_ready(Duration::from_secs(20));
        }
        assert_eq!(a.active().map(|l| l.name), Some("a".to_string()));
        assert_eq!(b.leaders().len(), 2);
        // A clean stop hands over at once.
        let t = std::time::Instant::now();
        tokio::task::spawn_blocking(move || a.resign()).await.unwrap();
        let fence = tokio::time::timeout(Duration::from_secs(5), standby).await.unwrap().unwrap().unwrap();
        assert!(t.elapsed() < ttl, "no wait for the lease to run out: {:?}", t.elapsed());
        other.set_fence(Some(fence));
        let s = store.clone();
        let stale = tokio::task::spawn_blocking(move || s.put("/after", b"1", Expect::Any)).await.unwrap();
        assert!(matches!(stale, Err(StoreError::Fenced)), "the old leader's fence no longer holds: {stale:?}");
    }
}
