//! Secrets through the API: created, updated, listed, described and deleted — never read. Values
//! are sealed before they reach the store (`crate::secrets`); answers, events and logs carry key
//! names and sizes only.

use super::Api;
use crate::error::{Error, Result};
use crate::objects::{key, Object, Objects};
use crate::secrets::{check, StoredSecret};
use crate::store::{Expect, StoreError, TxnOp};
use bramble_proto::model::{Event, EventReason, Kind, ObjectMeta, ObjectRef};
use bramble_proto::names::check_dns_label;
use bramble_proto::time::now_ms;
use bramble_proto::wire::{Response, SecretInfo};
use std::collections::BTreeMap;

fn info(s: &StoredSecret) -> SecretInfo {
    SecretInfo {
        name: s.meta.name.clone(),
        keys: s.sizes.clone(),
        version: s.version,
        created_ms: s.meta.created_ms,
        updated_ms: s.updated_ms,
        changed_by: s.meta.changed_by.clone(),
    }
}

impl Api {
    /// Creates secret `name` (`create`) or replaces its keys; `who` made the change.
    pub fn put_secret(&self, name: &str, values: BTreeMap<String, Vec<u8>>, create: bool, who: &str) -> Result<String> {
        check_dns_label(name).map_err(|e| Error::Invalid(format!("secret name {name:?}: {e}")))?;
        check(name, &values).map_err(Error::Invalid)?;
        let now = now_ms();
        let current = self.objects.get::<StoredSecret>(name)?;
        let (meta, version, expect) = match (&current, create) {
            (Some(_), true) => {
                return Err(Error::Conflict(format!(
                    "secret {name} exists; `bramble secret update {name}` replaces its keys"
                )))
            }
            (None, false) => {
                return Err(Error::NotFound(format!(
                    "secret {name} not found; `bramble secret create {name}` makes it"
                )))
            }
            (None, true) => (
                ObjectMeta { name: name.to_string(), generation: 1, revision: 0, created_ms: now, changed_by: None },
                1,
                Expect::Absent,
            ),
            (Some(v), false) => {
                let mut meta = v.value.meta.clone();
                meta.generation += 1;
                (meta, v.value.version + 1, Expect::Revision(v.rev))
            }
        };
        let sealed = self.keyring.seal(name, &values).map_err(|e| Error::Internal(e.to_string()))?;
        let sizes = values.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect();
        let mut meta = meta;
        meta.changed_by = Some(who.to_string());
        let stored = StoredSecret { meta, version, updated_ms: now, sizes, sealed };
        self.objects.txn(&[Objects::put_op(&stored, expect)]).map_err(|e| match e {
            StoreError::Conflict { .. } => Error::Conflict(format!("secret {name} changed meanwhile; try again")),
            e => e.into(),
        })?;
        let keys: Vec<&String> = values.keys().collect();
        let (reason, done) =
            if create { (EventReason::Created, "created") } else { (EventReason::Configured, "updated") };
        let keys = keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
        let message = format!("secret/{name} {done} by {who} (version {version}; keys: {keys})");
        self.events.record(Event::new(now, ObjectRef::new(Kind::Secret, name), reason, message));
        self.published.secrets.send_modify(|v| *v += 1);
        // Files change in place; an environment cannot: apps that take it there roll.
        let mut rolled = Vec::new();
        if !create {
            for app in self.objects.list::<bramble_proto::model::App>()?.into_iter().map(|v| v.value) {
                if app.spec.secret_env_refs().any(|(_, s, _)| s == name) {
                    match self.roll(&app.meta.name, who, &format!("secret {name} changed")) {
                        Ok(_) => rolled.push(format!("app/{} rolling", app.meta.name)),
                        Err(e) => tracing::warn!(app = %app.meta.name, "cannot roll after secret {name} changed: {e}"),
                    }
                }
            }
        }
        let rolled = if rolled.is_empty() { String::new() } else { format!(" ({})", rolled.join(", ")) };
        Ok(format!("secret/{name} {done}{rolled}"))
    }

    pub(super) fn secrets(&self) -> Result<Vec<SecretInfo>> {
        Ok(self.objects.list::<StoredSecret>()?.iter().map(|v| info(&v.value)).collect())
    }

    pub(super) fn describe_secret(&self, name: &str) -> Result<Response> {
        let secret = info(&self.objects.load::<StoredSecret>(name)?.value);
        let events = self.events.about(&ObjectRef::new(Kind::Secret, name));
        Ok(Response::Secret { secret, events })
    }
}

/// The writes that delete secrets `names`, or which are missing.
pub(super) fn delete_ops(objects: &Objects, names: &[String]) -> Result<(Vec<TxnOp>, Vec<String>, Vec<String>)> {
    let (mut ops, mut done, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for n in names {
        let k = key::<StoredSecret>(n);
        match objects.store().get(&k)? {
            Some(kv) => {
                ops.push(TxnOp::Delete { key: k, expect: Expect::Revision(kv.mod_revision) });
                done.push(format!("{}/{n} deleted", StoredSecret::KIND));
            }
            None => missing.push(format!("secret/{n}")),
        }
    }
    Ok((ops, done, missing))
}
