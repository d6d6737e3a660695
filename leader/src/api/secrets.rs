//! Secrets through the API: created, updated, listed, described and deleted — never read. Values
//! are sealed before they reach the store (`crate::trust::secrets`); answers, events and logs carry key
//! names and sizes only.

use crate::error::{Error, Result};
use crate::objects::{key, Object, Objects};
use crate::store::{Expect, StoreError, TxnOp};
use crate::trust::secrets::{check, StoredSecret};
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
        allowed_apps: s.allowed_apps.as_ref().map(|a| a.iter().cloned().collect()),
    }
}

/// The problems of apps that name a secret they may not use, and a check of each such secret's
/// revision for the apply's transaction (so that a concurrent `secret allow` cannot slip between).
pub(super) fn access(
    objects: &Objects,
    apps: &[bramble_proto::manifest::AppSpec],
) -> Result<(Vec<bramble_proto::wire::ObjectProblem>, Vec<TxnOp>)> {
    let (mut problems, mut checks) = (Vec::new(), Vec::new());
    let mut seen = std::collections::BTreeSet::new();
    // The ingress proxy (the leader's; no user applies it) mounts the secrets of the ingresses'
    // certificates: each ingress was checked against its secret when it was applied.
    for a in apps.iter().filter(|a| a.name.as_str() != crate::ingress::proxy::NAME) {
        for name in a.secret_names() {
            let Some(v) = objects.get::<StoredSecret>(&name)? else { continue };
            if seen.insert(name.clone()) {
                checks.push(TxnOp::Check { key: key::<StoredSecret>(&name), expect: Expect::Revision(v.rev) });
            }
            if let Some(allowed) = &v.value.allowed_apps {
                if !allowed.contains(a.name.as_str()) {
                    let who = if allowed.is_empty() {
                        "no app".to_string()
                    } else {
                        allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                    };
                    let field = if a.secrets.iter().any(|s| s.as_str() == name) { "secrets" } else { "secret_env" };
                    problems.push(bramble_proto::wire::ObjectProblem {
                        kind: "app".into(),
                        name: a.name.as_str().into(),
                        field: field.into(),
                        message: format!(
                            "secret {name} may be used only by {who} (an admin changes that: bramble secret allow {name} --apps …)"
                        ),
                    });
                }
            }
        }
    }
    Ok((problems, checks))
}

/// What the secret requests use: the store, the key that seals values, events, and the replica
/// controller (apps using a changed secret roll).
pub struct Secrets<'a> {
    pub objects: &'a Objects,
    pub keyring: &'a crate::trust::secrets::Keyring,
    pub events: &'a crate::events::Events,
    pub published: &'a crate::controllers::Published,
}

impl Secrets<'_> {
    fn rollouts(&self) -> super::rollouts::Rollouts<'_> {
        super::rollouts::Rollouts { objects: self.objects, events: self.events, published: self.published }
    }

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
        // An update keeps who may use it: only `secret allow` (admins) changes that.
        let allowed_apps = current.as_ref().and_then(|v| v.value.allowed_apps.clone());
        let stored = StoredSecret { meta, version, updated_ms: now, sizes, sealed, allowed_apps };
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
                    match self.rollouts().roll(&app.meta.name, who, &format!("secret {name} changed")) {
                        Ok(_) => rolled.push(format!("app/{} rolling", app.meta.name)),
                        Err(e) => tracing::warn!(app = %app.meta.name, "cannot roll after secret {name} changed: {e}"),
                    }
                }
            }
        }
        let rolled = if rolled.is_empty() { String::new() } else { format!(" ({})", rolled.join(", ")) };
        Ok(format!("secret/{name} {done}{rolled}"))
    }

    /// Which apps may use secret `name` (`None`: any). Refused while an app outside the list
    /// uses it (it would be left waiting for a secret it can no longer have).
    pub(super) fn allow_secret(&self, name: &str, apps: Option<Vec<String>>, who: &str) -> Result<String> {
        let apps: Option<std::collections::BTreeSet<String>> = match apps {
            None => None,
            Some(list) => {
                for a in &list {
                    check_dns_label(a).map_err(|e| Error::Invalid(format!("app name {a:?}: {e}")))?;
                }
                Some(list.into_iter().collect())
            }
        };
        let current = self.objects.load::<StoredSecret>(name)?;
        if let Some(allowed) = &apps {
            let users: Vec<String> = self
                .objects
                .list::<bramble_proto::model::App>()?
                .into_iter()
                .map(|v| v.value.spec)
                .filter(|s| s.secret_names().contains(name) && !allowed.contains(s.name.as_str()))
                .map(|s| s.name.as_str().to_string())
                .collect();
            if !users.is_empty() {
                return Err(Error::Conflict(format!(
                    "secret {name} is used by {} (not in the list); remove it from those apps first",
                    users.join(", ")
                )));
            }
        }
        let mut stored = current.value;
        stored.allowed_apps = apps.clone();
        stored.meta.changed_by = Some(who.to_string());
        self.objects.txn(&[Objects::put_op(&stored, Expect::Revision(current.rev))]).map_err(|e| match e {
            StoreError::Conflict { .. } => Error::Conflict(format!("secret {name} changed meanwhile; try again")),
            e => e.into(),
        })?;
        let said = match &apps {
            None => "any app".to_string(),
            Some(a) if a.is_empty() => "no app".to_string(),
            Some(a) => a.iter().cloned().collect::<Vec<_>>().join(", "),
        };
        let message = format!("secret/{name} may be used by {said} (set by {who})");
        self.events.record(Event::new(
            now_ms(),
            ObjectRef::new(Kind::Secret, name),
            EventReason::Configured,
            message.clone(),
        ));
        Ok(message)
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

#[cfg(test)]
mod tests {
    use crate::api::Api;
    use crate::boards::nodes::NodeRegistry;
    use crate::error::Error;
    use crate::events::Events;
    use crate::objects::Objects;
    use crate::store::{MemStore, Store};
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::wire::{Request, Response};
    use bramble_transport::pki::Role;
    use std::sync::Arc;

    fn api() -> Api {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let events = Arc::new(Events::new());
        let registry = Arc::new(NodeRegistry::new(std::time::Duration::from_secs(15), events.clone()));
        let ca = bramble_transport::pki::Ca::generate("test").unwrap();
        Api::new(Objects::new(store), ca, registry, events, Default::default())
    }

    fn apply(api: &Api, app: &str) -> crate::error::Result<()> {
        let text = format!("[[app]]\nname = \"{app}\"\nimage = \"busybox\"\nsecrets = [\"db\"]\n");
        let apps = parse_manifest("t.toml", &text).unwrap().apps;
        let cluster = (api.network.as_ref(), api.reserved.as_ref());
        crate::api::apps::apply(
            &api.objects,
            &api.events,
            cluster,
            crate::api::apps::Specs { apps, ..Default::default() },
            "deployer:ci",
            1,
        )
        .map(drop)
    }

    #[test]
    fn only_the_apps_an_admin_allows_may_use_a_secret() {
        let api = api();
        let values = [("pw".to_string(), b"x".to_vec())].into();
        api.secrets().put_secret("db", values, true, "deployer:ci").unwrap();
        apply(&api, "web").unwrap();
        assert_eq!(crate::api::required_role(&Request::AllowSecret { name: "db".into(), apps: None }), Role::Admin);
        // Not while an app outside the list uses it.
        let e = api.secrets().allow_secret("db", Some(vec!["api".into()]), "admin:root").unwrap_err();
        assert!(matches!(&e, Error::Conflict(m) if m.contains("used by web")), "{e}");
        api.secrets().allow_secret("db", Some(vec!["web".into()]), "admin:root").unwrap();
        match apply(&api, "thief").unwrap_err() {
            Error::Problems(p) => {
                assert_eq!((p[0].name.as_str(), p[0].field.as_str()), ("thief", "secrets"));
                assert!(p[0].message.contains("secret db may be used only by web"), "{}", p[0].message);
            }
            e => panic!("{e}"),
        }
        apply(&api, "web").unwrap();
        // An update by a deployer keeps the list.
        api.secrets().put_secret("db", [("pw".to_string(), b"y".to_vec())].into(), false, "deployer:ci").unwrap();
        match api.secrets().describe_secret("db").unwrap() {
            Response::Secret { secret, .. } => assert_eq!(secret.allowed_apps, Some(vec!["web".to_string()])),
            r => panic!("{r:?}"),
        }
        api.secrets().allow_secret("db", None, "admin:root").unwrap();
        apply(&api, "thief").unwrap();
    }
}

#[cfg(test)]
mod registry_tests {
    use crate::api::Api;
    use crate::boards::nodes::NodeRegistry;
    use crate::error::Error;
    use crate::events::Events;
    use crate::objects::Objects;
    use crate::store::{MemStore, Store};
    use bramble_proto::manifest::parse_manifest;
    use bramble_proto::wire::Request;
    use bramble_transport::pki::Role;
    use std::sync::Arc;

    fn apply(api: &Api, text: &str) -> crate::error::Result<Vec<bramble_proto::wire::Applied>> {
        let registries = parse_manifest("t.toml", text).unwrap().registries;
        let cluster = (api.network.as_ref(), api.reserved.as_ref());
        let specs = crate::api::apps::Specs { registries, ..Default::default() };
        crate::api::apps::apply(&api.objects, &api.events, cluster, specs, "admin:root", 1)
    }

    fn problems(r: crate::error::Result<Vec<bramble_proto::wire::Applied>>) -> String {
        match r {
            Err(Error::Problems(p)) => {
                p.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; ")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn registries_are_admins_and_name_a_secret_with_credentials_and_a_host_once() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let events = Arc::new(Events::new());
        let nodes = Arc::new(NodeRegistry::new(std::time::Duration::from_secs(15), events.clone()));
        let api = Api::new(
            Objects::new(store),
            bramble_transport::pki::Ca::generate("t").unwrap(),
            nodes,
            events,
            Default::default(),
        );
        let lan = "[[registry]]\nname = \"lan\"\nhost = \"reg.lan:5000\"\nsecret = \"reg\"\n";
        // A deployer may not: a registry decides where boards send credentials.
        let m = parse_manifest("t.toml", lan).unwrap();
        let req = Request::Apply {
            apps: vec![],
            services: vec![],
            configs: vec![],
            cronjobs: vec![],
            ingresses: vec![],
            registries: m.registries,
            dry_run: false,
        };
        assert_eq!(crate::api::required_role(&req), Role::Admin);
        let del = Request::Delete {
            apps: vec![],
            services: vec![],
            secrets: vec![],
            configs: vec![],
            cronjobs: vec![],
            ingresses: vec![],
            registries: vec!["lan".into()],
        };
        assert_eq!(crate::api::required_role(&del), Role::Admin);
        assert_eq!(crate::api::required_role(&Request::GetRegistries), Role::Viewer);
        assert!(problems(apply(&api, lan)).contains("secret: secret reg does not exist"));
        api.secrets().put_secret("reg", [("tls.crt".to_string(), b"x".to_vec())].into(), true, "admin:root").unwrap();
        let p = problems(apply(&api, lan));
        assert!(p.contains("secret reg holds tls.crt: expected username and password, token"), "{p}");
        let values = [("username".to_string(), b"pi".to_vec()), ("password".to_string(), b"raspberry".to_vec())];
        api.secrets().put_secret("reg", values.into(), false, "admin:root").unwrap();
        apply(&api, lan).unwrap();
        // One object per host.
        let p = problems(apply(&api, "[[registry]]\nname = \"again\"\nhost = \"reg.lan:5000\"\n"));
        assert!(p.contains("host: reg.lan:5000 is registry lan's host already"), "{p}");
        // Renaming the host of the one that holds it is fine.
        apply(&api, "[[registry]]\nname = \"lan\"\nhost = \"reg2.lan:5000\"\nsecret = \"reg\"\n").unwrap();
        apply(&api, "[[registry]]\nname = \"again\"\nhost = \"reg.lan:5000\"\nmirrors = [\"cache.lan\"]\n").unwrap();
    }
}
