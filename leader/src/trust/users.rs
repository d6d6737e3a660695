//! People and pipelines: certificates naming a user and a role, signed by the cluster CA from a
//! CSR the CLI makes (the private key never leaves the user's machine), and the revocation list.
//!
//! Stored: `/users/<name>` (role, key fingerprint, expiry, who made it) and `/revoked/<key fp>`
//! (kept until the certificate would have expired). The list of revoked fingerprints is held in
//! memory too, so the check on every connection is a hash lookup.

use crate::error::{Error, Result};
use crate::objects::{keys, Objects};
use crate::store::Expect;
use bramble_proto::names::check_dns_label;
use bramble_proto::quantity::format_duration;
use bramble_proto::wire::UserInfo;
use bramble_transport::pki::{Ca, Role};
use bramble_transport::Identity;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

pub const MIN_TTL: Duration = Duration::from_secs(60);
pub const MAX_TTL: Duration = Duration::from_secs(5 * 365 * 86400);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredUser {
    role: Role,
    key_fp: String,
    created_ms: u64,
    expires_ms: u64,
    created_by: String,
    #[serde(default)]
    revoked_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRevocation {
    user: String,
    revoked_ms: u64,
    /// After this the certificate is refused as expired anyway; the entry may go.
    expires_ms: u64,
}

/// The revoked key fingerprints, in memory (loaded from the store at start).
#[derive(Debug, Default)]
pub struct Revoked {
    by_fp: RwLock<HashMap<String, String>>,
    /// The list could not be read: every user is refused (closed, not open).
    unreadable: Option<String>,
}

impl Revoked {
    pub fn load(objects: &Objects) -> Result<Revoked> {
        let map = objects
            .list_at::<StoredRevocation>(keys::REVOKED)?
            .into_iter()
            .map(|(k, r)| (k.trim_start_matches(keys::REVOKED).to_string(), r.user))
            .collect();
        Ok(Revoked { by_fp: RwLock::new(map), unreadable: None })
    }

    /// The list from the store; if it cannot be read, one that refuses every user.
    pub fn load_or_refuse_all(objects: &Objects) -> Revoked {
        Revoked::load(objects).unwrap_or_else(|e| {
            tracing::error!("cannot read the revocation list, refusing every user certificate: {e}");
            Revoked { by_fp: RwLock::default(), unreadable: Some(e.to_string()) }
        })
    }

    /// Why a peer with `identity` and key fingerprint `fp` is refused, if it is.
    pub fn refusal(&self, identity: &Identity, fp: &str) -> Option<String> {
        if !matches!(identity, Identity::User { .. }) {
            return None;
        }
        if let Some(e) = &self.unreadable {
            return Some(format!("the leader cannot read its revocation list ({e}); user certificates are refused"));
        }
        let map = self.by_fp.read().expect("revoked lock");
        map.get(fp)
            .map(|user| format!("the certificate of {identity} was revoked (user {user}); ask an admin for a new one"))
    }

    /// Adds `fp` (tests and benchmarks fill it directly).
    pub fn insert(&self, fp: &str, user: &str) {
        self.by_fp.write().expect("revoked lock").insert(fp.to_string(), user.to_string());
    }
}

/// Signs `csr_pem` for a new user `name` with `role`, valid for `ttl`; records it. Refused if the
/// name is taken by a user that is not revoked.
#[allow(clippy::too_many_arguments)]
pub fn create(
    objects: &Objects,
    ca: &Ca,
    name: &str,
    role: Role,
    ttl: Duration,
    csr_pem: &str,
    by: &str,
    now_ms: u64,
) -> Result<(String, u64)> {
    check_dns_label(name).map_err(|e| Error::Invalid(format!("user name {name:?}: {e}")))?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(Error::Invalid(format!("ttl {} is out of range: expected 1m to 1825d", format_duration(ttl))));
    }
    let key = keys::user(name);
    let expect = match objects.store().get(&key)? {
        None => Expect::Absent,
        Some(kv) => {
            let rev = kv.mod_revision;
            let u: StoredUser = crate::objects::decode(&key, &kv.value)?;
            if u.revoked_ms.is_none() && u.expires_ms > now_ms {
                return Err(Error::Conflict(format!(
                    "user {name} exists; `bramble user revoke {name}` first to issue a new certificate"
                )));
            }
            Expect::Revision(rev)
        }
    };
    let (cert_pem, key_fp) =
        ca.sign_user_csr(csr_pem, name, role, ttl).map_err(|e| Error::Invalid(format!("user {name}: {e}")))?;
    let expires_ms = now_ms + ttl.as_millis() as u64;
    let stored =
        StoredUser { role, key_fp, created_ms: now_ms, expires_ms, created_by: by.to_string(), revoked_ms: None };
    objects.put_at(&key, &stored, expect)?;
    Ok((cert_pem, expires_ms))
}

/// Records the admin `bramble-leader init` made (its `admin.toml`, `text`), once, so that it is
/// listed and can be revoked like any user.
pub fn record_init_admin(objects: &Objects, text: &str, now_ms: u64) -> Result<()> {
    let cfg =
        bramble_transport::admin::AdminConfig::parse("admin.toml", text).map_err(|e| Error::Invalid(e.to_string()))?;
    let der = bramble_transport::pki::cert_der_from_pem(&cfg.cert).map_err(|e| Error::Invalid(e.to_string()))?;
    let (identity, key_fp) = bramble_transport::pki::identity_of(&der).map_err(|e| Error::Invalid(e.to_string()))?;
    let Identity::User { name, role } = identity else { return Ok(()) };
    let expires_ms = bramble_transport::pki::not_after_ms(&der).map_err(|e| Error::Invalid(e.to_string()))?;
    let stored = StoredUser {
        role,
        key_fp,
        created_ms: now_ms,
        expires_ms,
        created_by: "bramble-leader init".into(),
        revoked_ms: None,
    };
    match objects.put_at(&keys::user(&name), &stored, Expect::Absent) {
        Ok(_) | Err(crate::store::StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Every user, by name.
pub fn list(objects: &Objects, now_ms: u64) -> Result<Vec<UserInfo>> {
    Ok(objects
        .list_at::<StoredUser>(keys::USERS)?
        .into_iter()
        .map(|(k, u)| UserInfo {
            name: k.trim_start_matches(keys::USERS).to_string(),
            role: u.role.to_string(),
            created_ms: u.created_ms,
            expires_ms: u.expires_ms,
            expired: now_ms >= u.expires_ms,
            revoked_ms: u.revoked_ms,
            created_by: u.created_by,
        })
        .collect())
}

/// Revokes user `name`'s certificate: recorded (with the user, in one transaction) and refused
/// from the next connection on. Expired revocations are dropped on the way.
pub fn revoke(objects: &Objects, revoked: &Revoked, name: &str, now_ms: u64) -> Result<String> {
    let key = keys::user(name);
    let Some(kv) = objects.store().get(&key)? else {
        return Err(Error::NotFound(format!("user {name} not found (`bramble user ls` lists them)")));
    };
    let rev = kv.mod_revision;
    let mut u: StoredUser = crate::objects::decode(&key, &kv.value)?;
    if u.revoked_ms.is_some() {
        return Ok(format!("user {name} was already revoked"));
    }
    u.revoked_ms = Some(now_ms);
    let record = StoredRevocation { user: name.to_string(), revoked_ms: now_ms, expires_ms: u.expires_ms };
    let mut ops = vec![
        crate::store::TxnOp::Put { key: key.clone(), value: crate::objects::encode(&u), expect: Expect::Revision(rev) },
        crate::store::TxnOp::Put {
            key: format!("{}{}", keys::REVOKED, u.key_fp),
            value: crate::objects::encode(&record),
            expect: Expect::Any,
        },
    ];
    for (k, r) in objects.list_at::<StoredRevocation>(keys::REVOKED)? {
        if r.expires_ms <= now_ms {
            ops.push(crate::store::TxnOp::Delete { key: k, expect: Expect::Any });
        }
    }
    objects.txn(&ops)?;
    revoked.insert(&u.key_fp, name);
    Ok(format!("user {name} revoked: its certificate is refused from now on"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use std::sync::Arc;

    #[test]
    fn users_are_made_from_csrs_listed_and_revoked() {
        let objects = Objects::new(Arc::new(MemStore::new()));
        let ca = Ca::generate("t").unwrap();
        let (csr, _key) = bramble_transport::pki::user_csr("ci").unwrap();
        let day = Duration::from_secs(86400);
        let (pem, expires) = create(&objects, &ca, "ci", Role::Deployer, day, &csr, "admin:admin", 1000).unwrap();
        assert_eq!(expires, 1000 + 86_400_000);
        let der = bramble_transport::pki::cert_der_from_pem(&pem).unwrap();
        let (id, fp) = bramble_transport::pki::identity_of(&der).unwrap();
        assert_eq!(id.to_string(), "deployer:ci");
        let again = create(&objects, &ca, "ci", Role::Admin, day, &csr, "admin:admin", 2000).unwrap_err();
        assert!(matches!(again, Error::Conflict(_)), "{again}");
        assert!(create(&objects, &ca, "Bad_Name", Role::Viewer, day, &csr, "a", 0).is_err());
        assert!(create(&objects, &ca, "x", Role::Viewer, Duration::from_secs(1), &csr, "a", 0).is_err());
        assert!(create(&objects, &ca, "y", Role::Viewer, day, "not a csr", "a", 0).is_err());

        let revoked = Revoked::load(&objects).unwrap();
        assert_eq!(revoked.refusal(&id, &fp), None);
        assert!(revoke(&objects, &revoked, "ci", 5000).unwrap().contains("revoked"));
        assert!(revoked.refusal(&id, &fp).unwrap().contains("was revoked"));
        // From the store, as after a restart.
        assert!(Revoked::load(&objects).unwrap().refusal(&id, &fp).is_some());
        let l = list(&objects, 6000).unwrap();
        assert_eq!((l[0].name.as_str(), l[0].role.as_str(), l[0].revoked_ms), ("ci", "deployer", Some(5000)));
        assert!(matches!(revoke(&objects, &revoked, "nobody", 1), Err(Error::NotFound(_))));
        // Revoked: the name may be given a new certificate (a new key), the old one stays refused.
        let (csr2, _) = bramble_transport::pki::user_csr("ci").unwrap();
        create(&objects, &ca, "ci", Role::Deployer, day, &csr2, "admin:admin", 7000).unwrap();
        assert!(Revoked::load(&objects).unwrap().refusal(&id, &fp).is_some());
    }
}
