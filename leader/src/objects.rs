//! The typed object layer: every store key, every encode and decode, and the one path that
//! reports a stored value that does not decode. Nothing else in the leader builds a key or
//! parses stored bytes.
//!
//! ```text
//! /nodes/<name>              Node
//! /apps/<name>               App
//! /services/<name>           Service
//! /replicas/<name>           Replica
//! /revisions/<app>/<hash>    AppSpec: the pod template of a revision that still has replicas
//! /history/<app>/<number>    RevisionRecord: a revision and its rollout (the last ten)
//! /tokens/<id>               a join token (hash of its secret)
//! /configs/<name>           Config: files apps mount (plain: configs are not secret)
//! /cronjobs/<name>          CronJob: a schedule, its job template, the last run it made
//! /ingresses/<name>         Ingress: a host's paths to services, and its TLS
//! /registries/<name>        Registry: a registry host's secret, insecure, mirrors
//! /users/<name>              a user: role, key fingerprint, expiry, who made it, revoked when
//! /revoked/<key fingerprint> a revoked user certificate (until it would have expired)
//! /images/<reference>        ImagePlatforms: what an image offers, as a board found out
//! /cluster/network           ClusterNetwork: the network chosen at init
//! /subnets/<cidr>            the node holding a pod subnet (a claim: one holder at most)
//! /vips/<ip>                 the service holding a virtual IP (a claim)
//! /volume-homes/<node>/<vol> when a replica mounting local volume <vol> first ran on <node>:
//!                            what makes that board's report of the volume believed
//! ```

use crate::error::{Error, Result};
use crate::store::{Expect, KeyValue, Store, StoreError, TxnOp};
use bramble_proto::manifest::AppSpec;
use bramble_proto::model::{App, Node, ObjectMeta, Platform, Replica, ReplicaPhase, RevisionRecord, Service};
use bramble_proto::wire::ReplicaCount;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where each kind lives.
pub mod keys {
    pub const NODES: &str = "/nodes/";
    pub const APPS: &str = "/apps/";
    pub const SERVICES: &str = "/services/";
    pub const REPLICAS: &str = "/replicas/";
    pub const REVISIONS: &str = "/revisions/";
    pub const HISTORY: &str = "/history/";
    pub const TOKENS: &str = "/tokens/";
    pub const IMAGES: &str = "/images/";
    pub const CLUSTER_NETWORK: &str = "/cluster/network";
    /// Set by a restore without `--prune`: boards keep what the backup does not know until the
    /// leader has seen every board.
    pub const RESTORED: &str = "/cluster/restored";
    /// The fingerprint of the CA the cluster's boards trust: a leader with another CA refuses
    /// to serve this store (e.g. a second leader on the wrong etcd prefix).
    pub const CA: &str = "/cluster/ca";
    pub const SUBNETS: &str = "/subnets/";
    pub const VIPS: &str = "/vips/";
    pub const SECRETS: &str = "/secrets/";
    pub const USERS: &str = "/users/";
    pub const CONFIGS: &str = "/configs/";
    pub const CRONJOBS: &str = "/cronjobs/";
    pub const INGRESSES: &str = "/ingresses/";
    pub const REGISTRIES: &str = "/registries/";
    pub const POLICIES: &str = "/policies/";
    pub const REVOKED: &str = "/revoked/";
    pub const VOLUME_HOMES: &str = "/volume-homes/";

    pub fn volume_home(node: &str, volume: &str) -> String {
        format!("{VOLUME_HOMES}{node}/{volume}")
    }

    pub fn subnet(cidr: &bramble_proto::network::Cidr) -> String {
        // "/" inside the CIDR would read as a path: the prefix length follows a "_".
        format!("{SUBNETS}{}_{}", cidr.addr(), cidr.prefix())
    }

    pub fn vip(ip: &std::net::Ipv4Addr) -> String {
        format!("{VIPS}{ip}")
    }

    pub fn image(reference: &str) -> String {
        format!("{IMAGES}{reference}")
    }

    pub fn revisions_of(app: &str) -> String {
        format!("{REVISIONS}{app}/")
    }

    pub fn revision(app: &str, hash: &str) -> String {
        format!("{REVISIONS}{app}/{hash}")
    }

    /// `(app, hash)` of a revision key.
    pub fn parse_revision(key: &str) -> Option<(&str, &str)> {
        key.strip_prefix(REVISIONS)?.split_once('/')
    }

    /// Numbers are zero-padded so that keys sort as numbers do.
    pub fn history(app: &str, number: u64) -> String {
        format!("{HISTORY}{app}/{number:010}")
    }

    pub fn history_of(app: &str) -> String {
        format!("{HISTORY}{app}/")
    }

    pub fn token(id: &str) -> String {
        format!("{TOKENS}{id}")
    }

    pub fn user(name: &str) -> String {
        format!("{USERS}{name}")
    }
}

/// A stored object kind with a name and metadata.
pub trait Object: Serialize + DeserializeOwned + Clone {
    /// The kind as users name it (`app`), for messages.
    const KIND: &'static str;
    const PREFIX: &'static str;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

macro_rules! object {
    ($t:ty, $kind:literal, $prefix:expr) => {
        impl Object for $t {
            const KIND: &'static str = $kind;
            const PREFIX: &'static str = $prefix;
            fn meta(&self) -> &ObjectMeta {
                &self.meta
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.meta
            }
        }
    };
}

object!(Node, "node", keys::NODES);
object!(App, "app", keys::APPS);
object!(Service, "service", keys::SERVICES);
object!(Replica, "replica", keys::REPLICAS);
object!(bramble_proto::model::Config, "config", keys::CONFIGS);
object!(bramble_proto::model::CronJob, "cronjob", keys::CRONJOBS);
object!(bramble_proto::model::Ingress, "ingress", keys::INGRESSES);
object!(bramble_proto::model::Registry, "registry", keys::REGISTRIES);
object!(bramble_proto::model::Policy, "policy", keys::POLICIES);

/// The key of object `name` of kind `T`.
pub fn key<T: Object>(name: &str) -> String {
    format!("{}{name}", T::PREFIX)
}

/// What an image offers, as each board whose arch it lacked found (board → platforms): kept per
/// board, since a board speaks only for itself; written when a board's finding changes, so that
/// a restarted leader does not place the image on such boards again. Dropped when no app uses
/// the image any more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ImagePlatforms {
    pub image: String,
    #[serde(default)]
    pub boards: BTreeMap<String, Vec<Platform>>,
    pub learned_ms: u64,
}

/// The most platforms a board may say an image offers (a real index has a dozen at most).
pub const MAX_OFFERED: usize = 64;

/// A value with the store revision it was read at (for compare-and-swap).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub rev: u64,
}

/// Decodes a stored value; the one place a corrupt value is reported.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt { key: key.to_string(), source })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("objects serialise")
}

fn decode_object<T: Object>(kv: &KeyValue) -> Result<Versioned<T>> {
    let mut value: T = decode(&kv.key, &kv.value)?;
    value.meta_mut().revision = kv.mod_revision;
    Ok(Versioned { value, rev: kv.mod_revision })
}

impl Objects {
    /// An object listed raw from the store (with its revision), decoded.
    pub fn decode_versioned<T: Object>(kv: &KeyValue) -> Result<Versioned<T>> {
        decode_object(kv)
    }
}

/// Typed access to the store.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("revision", &self.store.revision()).finish()
    }
}

impl Objects {
    /// Replicas of `app` (all if `None`; an unknown app is an error), by name.
    pub fn replicas(&self, app: Option<&str>) -> Result<Vec<Replica>> {
        if let Some(a) = app {
            self.load::<App>(a)?;
        }
        let all = self.list::<Replica>()?.into_iter().map(|v| v.value);
        Ok(all.filter(|r| app.is_none_or(|a| r.app == a)).collect())
    }

    /// Every app's replicas counted by phase, apps by name. Reads only the fields it counts (no
    /// replica is decoded whole): a look at 10,000 replicas that costs far less than listing them.
    pub fn count_replicas(&self) -> Result<Vec<ReplicaCount>> {
        /// What counting needs of a stored replica (serde skips the rest).
        #[derive(serde::Deserialize)]
        struct Counted {
            app: String,
            phase: ReplicaPhase,
            #[serde(default)]
            ready: bool,
            #[serde(default)]
            terminating_ms: Option<u64>,
        }
        let counted = self
            .store
            .list(Replica::PREFIX)?
            .iter()
            .map(|kv| decode::<Counted>(&kv.key, &kv.value))
            .collect::<Result<Vec<_>>>()?;
        Ok(ReplicaCount::tally(counted.into_iter().map(|r| (r.app, r.phase, r.ready, r.terminating_ms.is_some()))))
    }

    pub fn new(store: Arc<dyn Store>) -> Objects {
        Objects { store }
    }

    /// The store underneath, for watches and revisions.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn get<T: Object>(&self, name: &str) -> Result<Option<Versioned<T>>> {
        self.store.get(&key::<T>(name))?.map(|kv| decode_object(&kv)).transpose()
    }

    /// Like [`Objects::get`], with "not found" as an error that names the object.
    pub fn load<T: Object>(&self, name: &str) -> Result<Versioned<T>> {
        self.get(name)?.ok_or_else(|| Error::NotFound(format!("{} {name:?} not found", T::KIND)))
    }

    pub fn list<T: Object>(&self) -> Result<Vec<Versioned<T>>> {
        self.store.list(T::PREFIX)?.iter().map(decode_object).collect()
    }

    pub fn put_op<T: Object>(value: &T, expect: Expect) -> TxnOp {
        TxnOp::Put { key: key::<T>(&value.meta().name), value: encode(value), expect }
    }

    pub fn delete_op<T: Object>(name: &str, expect: Expect) -> TxnOp {
        TxnOp::Delete { key: key::<T>(name), expect }
    }

    pub fn check_op<T: Object>(name: &str, expect: Expect) -> TxnOp {
        TxnOp::Check { key: key::<T>(name), expect }
    }

    pub fn put<T: Object>(&self, value: &T, expect: Expect) -> Result<u64, StoreError> {
        self.store.put(&key::<T>(&value.meta().name), &encode(value), expect)
    }

    pub fn delete<T: Object>(&self, name: &str, expect: Expect) -> Result<u64, StoreError> {
        self.store.delete(&key::<T>(name), expect)
    }

    /// Every op or none.
    pub fn txn(&self, ops: &[TxnOp]) -> Result<u64, StoreError> {
        self.store.txn(ops)
    }

    /// Read-modify-write with compare-and-swap, retried when someone else wrote in between.
    /// `change` returns whether it changed anything; nothing is written if not. The generation
    /// is bumped on every write.
    pub fn update<T: Object>(&self, name: &str, change: impl Fn(&mut T) -> Result<bool>) -> Result<bool> {
        for _ in 0..5 {
            let Versioned { mut value, rev } = self.load::<T>(name)?;
            if !change(&mut value)? {
                return Ok(false);
            }
            value.meta_mut().generation += 1;
            match self.put(&value, Expect::Revision(rev)) {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!("{} {name} kept changing; try again", T::KIND)))
    }

    /// Every stored pod template: app → hash → template.
    pub fn revisions(&self) -> Result<BTreeMap<String, BTreeMap<String, Versioned<AppSpec>>>> {
        let mut out: BTreeMap<String, BTreeMap<String, Versioned<AppSpec>>> = BTreeMap::new();
        for kv in self.store.list(keys::REVISIONS)? {
            let Some((app, hash)) = keys::parse_revision(&kv.key) else { continue };
            let value = decode(&kv.key, &kv.value)?;
            out.entry(app.to_string()).or_default().insert(hash.to_string(), Versioned { value, rev: kv.mod_revision });
        }
        Ok(out)
    }

    /// An app's revision records, oldest first.
    pub fn history(&self, app: &str) -> Result<Vec<Versioned<RevisionRecord>>> {
        self.store
            .list(&keys::history_of(app))?
            .iter()
            .map(|kv| Ok(Versioned { value: decode(&kv.key, &kv.value)?, rev: kv.mod_revision }))
            .collect()
    }

    /// Every app's revision records (also of apps that are gone), oldest first.
    pub fn all_history(&self) -> Result<BTreeMap<String, Vec<Versioned<RevisionRecord>>>> {
        let mut out: BTreeMap<String, Vec<Versioned<RevisionRecord>>> = BTreeMap::new();
        for kv in self.store.list(keys::HISTORY)? {
            let value: RevisionRecord = decode(&kv.key, &kv.value)?;
            out.entry(value.app.clone()).or_default().push(Versioned { value, rev: kv.mod_revision });
        }
        Ok(out)
    }

    pub fn put_history_op(record: &RevisionRecord, expect: Expect) -> TxnOp {
        TxnOp::Put { key: keys::history(&record.app, record.number), value: encode(record), expect }
    }

    pub fn delete_history_op(app: &str, number: u64, rev: u64) -> TxnOp {
        TxnOp::Delete { key: keys::history(app, number), expect: Expect::Revision(rev) }
    }

    pub fn put_revision_op(app: &str, hash: &str, spec: &AppSpec) -> TxnOp {
        TxnOp::Put { key: keys::revision(app, hash), value: encode(spec), expect: Expect::Absent }
    }

    pub fn delete_revision_op(app: &str, hash: &str, rev: u64) -> TxnOp {
        TxnOp::Delete { key: keys::revision(app, hash), expect: Expect::Revision(rev) }
    }

    /// What each image offers, per board that has told: image → board → platforms (with the
    /// store revision).
    pub fn image_platforms(&self) -> Result<BTreeMap<String, Versioned<crate::scheduler::Misses>>> {
        self.store
            .list(keys::IMAGES)?
            .into_iter()
            .map(|kv| {
                let v: ImagePlatforms = decode(&kv.key, &kv.value)?;
                Ok((v.image, Versioned { value: v.boards, rev: kv.mod_revision }))
            })
            .collect()
    }

    /// Records what `node` found `image` offers, if it is news; returns whether it was.
    pub fn learn_platforms(&self, image: &str, node: &str, offered: &[Platform], now_ms: u64) -> Result<bool> {
        let key = keys::image(image);
        if offered.is_empty() || offered.len() > MAX_OFFERED {
            return Ok(false);
        }
        for _ in 0..5 {
            let current = self.store.get(&key)?;
            let (mut value, expect) = match &current {
                Some(kv) => (decode::<ImagePlatforms>(&kv.key, &kv.value)?, Expect::Revision(kv.mod_revision)),
                None => (
                    ImagePlatforms { image: image.to_string(), boards: BTreeMap::new(), learned_ms: now_ms },
                    Expect::Absent,
                ),
            };
            if value.boards.get(node).is_some_and(|o| o == offered) {
                return Ok(false);
            }
            value.boards.insert(node.to_string(), offered.to_vec());
            value.learned_ms = now_ms;
            match self.put_at(&key, &value, expect) {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    pub fn delete_image_platforms_op(image: &str, rev: u64) -> TxnOp {
        TxnOp::Delete { key: keys::image(image), expect: Expect::Revision(rev) }
    }

    /// Records that a replica mounting local volume `volume` ran on `node` (once).
    pub fn record_volume_home(&self, node: &str, volume: &str, now_ms: u64) -> Result<()> {
        let key = keys::volume_home(node, volume);
        if self.store.get(&key)?.is_some() {
            return Ok(());
        }
        match self.put_at(&key, &now_ms, Expect::Absent) {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The local volumes the leader saw replicas use on each board: node → names.
    pub fn volume_homes(&self) -> Result<BTreeMap<String, std::collections::BTreeSet<String>>> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for kv in self.store.list(keys::VOLUME_HOMES)? {
            if let Some((node, vol)) = kv.key.strip_prefix(keys::VOLUME_HOMES).and_then(|r| r.split_once('/')) {
                out.entry(node.to_string()).or_default().insert(vol.to_string());
            }
        }
        Ok(out)
    }

    pub fn forget_volume_home_op(node: &str, volume: &str) -> TxnOp {
        TxnOp::Delete { key: keys::volume_home(node, volume), expect: Expect::Any }
    }

    /// Every claim under `prefix` (subnets, VIPs): key → holder.
    pub fn claims(&self, prefix: &str) -> Result<BTreeMap<String, String>> {
        self.store.list(prefix)?.into_iter().map(|kv| Ok((kv.key.clone(), decode(&kv.key, &kv.value)?))).collect()
    }

    pub fn claim_op(key: String, holder: &str) -> TxnOp {
        TxnOp::Put { key, value: encode(&holder), expect: Expect::Absent }
    }

    pub fn release_op(key: String) -> TxnOp {
        TxnOp::Delete { key, expect: Expect::Any }
    }

    /// Every value stored under `prefix` outside the object kinds (tokens): key → value.
    pub fn list_at<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        self.store.list(prefix)?.into_iter().map(|kv| Ok((kv.key.clone(), decode(&kv.key, &kv.value)?))).collect()
    }

    /// A value stored at `key` outside the object kinds (tokens).
    pub fn get_at<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.store.get(key)?.map(|kv| decode(&kv.key, &kv.value)).transpose()
    }

    pub fn put_at<T: Serialize>(&self, key: &str, value: &T, expect: Expect) -> Result<u64, StoreError> {
        self.store.put(key, &encode(value), expect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn keys_round_trip_and_corrupt_values_name_their_key() {
        assert_eq!(key::<App>("web"), "/apps/web");
        assert_eq!(keys::parse_revision(&keys::revision("web", "abc")), Some(("web", "abc")));
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        store.put("/apps/web", b"{not json", Expect::Any).unwrap();
        let objects = Objects::new(store);
        let e = objects.list::<App>().unwrap_err();
        assert!(e.to_string().starts_with("stored object /apps/web is corrupt: "), "{e}");
        let e = objects.load::<Node>("pi").unwrap_err();
        assert_eq!(e.to_string(), "node \"pi\" not found");
    }

    #[test]
    fn replicas_counted_by_phase_match_the_whole_list_and_a_corrupt_one_is_named() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let objects = Objects::new(store.clone());
        let put = |name: &str, app: &str, phase: ReplicaPhase, ready: bool, terminating: bool| {
            let mut r = Replica::new(app, name, "h1", 1);
            (r.phase, r.ready, r.terminating_ms) = (phase, ready, terminating.then_some(5));
            objects.put(&r, Expect::Any).unwrap();
        };
        put("web-1", "web", ReplicaPhase::Running, true, false);
        put("web-2", "web", ReplicaPhase::Running, false, false);
        put("web-3", "web", ReplicaPhase::Running, true, true);
        put("web-4", "web", ReplicaPhase::Lost, false, false);
        put("db-1", "db", ReplicaPhase::Pending, false, false);
        let counts = objects.count_replicas().unwrap();
        let names: Vec<&str> = counts.iter().map(|c| c.app.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        let web = &counts[1];
        assert_eq!((web.total, web.serving, web.live), (4, 1, 2));
        assert_eq!(web.phases, BTreeMap::from([("Lost".to_string(), 1), ("Running".to_string(), 3)]));
        // The same as counting the decoded replicas.
        let all = objects.replicas(None).unwrap();
        let tallied =
            ReplicaCount::tally(all.into_iter().map(|r| (r.app, r.phase, r.ready, r.terminating_ms.is_some())));
        assert_eq!(counts, tallied);
        store.put("/replicas/bad-1", b"{\"app\": 3}", Expect::Any).unwrap();
        let e = objects.count_replicas().unwrap_err();
        assert!(e.to_string().starts_with("stored object /replicas/bad-1 is corrupt: "), "{e}");
    }
}
