//! Requests from the CLI and from joining agents: who may do what, and what it does. Handlers
//! return the leader's typed [`Error`]; it becomes the wire's `ApiError` here, at the edge.
//!
//! Each area's handlers take only the handles they use: a small struct of borrows that [`Api`]
//! lends them for the request (`Api::nodes()`, `Api::secrets()`, …).
//!
//! ```text
//! nodes.rs     Nodes: join, get/describe nodes, label, cordon, delete
//! apps.rs      apply (all or nothing), dry run, list and delete apps, services and configs
//! replicas.rs  Replicas: describe replicas and apps, scale
//! rollouts.rs  Rollouts: an app's revision history, undo, restart; new revisions for changes
//! services.rs  Services: list and describe services with their virtual IPs and endpoints
//! secrets.rs   Secrets: create, update, allow, list, describe — never read their values
//! usage.rs     Top: `bramble top`, what boards and replicas use beside what they ask for
//! ```
//! The rest — users, tokens, configs, images, volumes, backups, leaders, events — is answered in
//! `dispatch` below; logs, exec, images and volumes go on to the board through `crate::edge::relay`.

pub mod apps;
pub mod cronjobs;
pub mod ingresses;
pub mod nodes;
pub mod replicas;
pub mod rollouts;
pub mod secrets;
pub mod services;
pub mod usage;

use crate::boards::nodes::NodeRegistry;
use crate::boards::observed::Observed;
use crate::controllers::{Context, Published};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::objects::Objects;
use bramble_proto::model::{Event, EventReason, ObjectRef};
use bramble_proto::names::check_dns_subdomain;
use bramble_proto::network::ClusterNetwork;
use bramble_proto::object::Kind;
use bramble_proto::time::now_ms;
use bramble_proto::wire::{ImageOp, Request, Response, VolumeOp};
use bramble_transport::pki::{Ca, Role};
use bramble_transport::Identity;
use std::sync::Arc;
use std::time::Duration;

/// The handles the API's handlers share, built once by `crate::wiring`; each area borrows the few
/// it uses.
pub struct Api {
    pub objects: Objects,
    pub ca: Arc<Ca>,
    pub registry: Arc<NodeRegistry>,
    pub events: Arc<Events>,
    pub observed: Arc<Observed>,
    pub published: Arc<Published>,
    pub network: Arc<ClusterNetwork>,
    pub drain: Arc<crate::controllers::drain::Drain>,
    /// Seals secrets' values (the data dir's `secrets.key`; in memory for tests).
    pub keyring: Arc<crate::trust::secrets::Keyring>,
    /// Revoked user certificates, checked on every connection.
    pub revoked: Arc<crate::trust::users::Revoked>,
    /// How long the certificates given to boards (at join and renewal) live.
    pub node_cert_lifetime: Duration,
    /// What boards and replicas use (memory only).
    pub usage: Arc<crate::boards::usage::Usage>,
    /// The autoscaler's recommendations and last decisions (memory only).
    pub autoscaler: Arc<crate::controllers::autoscaler::Autoscaler>,
    /// The store's file, for its size in `/metrics` (none: in memory).
    pub store_path: Option<std::path::PathBuf>,
    /// The data dir and cluster name (backups read the PKI and configs there; none in tests).
    pub data_dir: Option<(std::path::PathBuf, String)>,
    /// Scheduled backups' results.
    pub backups: Arc<crate::backup::BackupStats>,
    /// Restored without `--prune` and not every board seen yet: sessions send boards their sets
    /// as additions only, so nothing the backup does not know is stopped.
    pub restored: Arc<std::sync::atomic::AtomicBool>,
    /// This leader, as `get leaders` shows it.
    pub me: bramble_proto::wire::LeaderInfo,
    /// The election, when leaders share etcd (none: the only leader, on redb).
    pub ha: Option<Arc<crate::ha::Ha>>,
    /// Ports and directories no app may take on the cluster's boards.
    pub reserved: Arc<crate::admission::Reserved>,
    /// Refused joins: one event a minute, the rest counted.
    pub join_refusals: crate::events::Throttle,
    /// The ingress proxy's settings and what it cannot serve (`describe ingress`).
    pub ingress: Arc<crate::ingress::ProxyState>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(
        objects: Objects,
        ca: Ca,
        registry: Arc<NodeRegistry>,
        events: Arc<Events>,
        network: ClusterNetwork,
    ) -> Api {
        let (observed, published, network) = (Arc::new(Observed::new()), Arc::default(), Arc::new(network));
        let keyring = Arc::new(crate::trust::secrets::Keyring::ephemeral().expect("randomness for a secrets key"));
        let revoked = Arc::new(crate::trust::users::Revoked::load_or_refuse_all(&objects));
        Api {
            objects,
            ca: Arc::new(ca),
            registry,
            events,
            observed,
            published,
            network,
            drain: Arc::default(),
            keyring,
            revoked,
            node_cert_lifetime: bramble_transport::pki::NODE_VALIDITY,
            usage: Arc::default(),
            autoscaler: Arc::default(),
            store_path: None,
            data_dir: None,
            backups: Arc::default(),
            restored: Arc::default(),
            me: bramble_proto::wire::LeaderInfo {
                name: "leader".into(),
                addr: String::new(),
                active: true,
                since_ms: now_ms(),
                store: "redb".into(),
            },
            ha: None,
            reserved: Arc::new(crate::admission::Reserved::of_leader(7443, None, None)),
            join_refusals: Default::default(),
            ingress: Arc::default(),
        }
    }

    /// Seals secrets with `keyring` (the leader's `secrets.key`) instead of a key in memory.
    pub fn with_keyring(mut self, keyring: crate::trust::secrets::Keyring) -> Api {
        self.keyring = Arc::new(keyring);
        self
    }

    /// What the controllers get: the store, the registry, observations and events.
    pub fn context(&self) -> Context {
        Context {
            objects: self.objects.clone(),
            registry: self.registry.clone(),
            observed: self.observed.clone(),
            events: self.events.clone(),
            network: self.network.clone(),
            drain: self.drain.clone(),
            control_ports: Arc::new(self.reserved.control_ports()),
        }
    }

    /// The node requests' handles.
    pub fn nodes(&self) -> nodes::Nodes<'_> {
        nodes::Nodes {
            objects: &self.objects,
            ca: &self.ca,
            registry: &self.registry,
            events: &self.events,
            observed: &self.observed,
            published: &self.published,
            network: &self.network,
            drain: &self.drain,
            node_cert_lifetime: self.node_cert_lifetime,
        }
    }

    fn replicas(&self) -> replicas::Replicas<'_> {
        replicas::Replicas {
            objects: &self.objects,
            events: &self.events,
            observed: &self.observed,
            published: &self.published,
            autoscaler: &self.autoscaler,
        }
    }

    fn rollouts(&self) -> rollouts::Rollouts<'_> {
        rollouts::Rollouts { objects: &self.objects, events: &self.events, published: &self.published }
    }

    fn ingresses(&self) -> ingresses::Ingresses<'_> {
        ingresses::Ingresses {
            objects: &self.objects,
            keyring: &self.keyring,
            events: &self.events,
            controller: &self.ingress,
        }
    }

    fn services(&self) -> services::Services<'_> {
        services::Services { objects: &self.objects, events: &self.events }
    }

    /// The secret requests' handles.
    pub fn secrets(&self) -> secrets::Secrets<'_> {
        secrets::Secrets {
            objects: &self.objects,
            keyring: &self.keyring,
            events: &self.events,
            published: &self.published,
        }
    }

    fn top(&self) -> usage::Top<'_> {
        usage::Top { objects: &self.objects, usage: &self.usage }
    }

    /// Handles one request from a peer with `identity` (None: no client certificate).
    pub fn handle(&self, identity: Option<&Identity>, request: Request) -> Response {
        match self.dispatch(identity, request) {
            Ok(r) => r,
            Err(e) => Response::Error(e.into()),
        }
    }

    fn dispatch(&self, identity: Option<&Identity>, request: Request) -> Result<Response> {
        if let Request::Join { token, node_name, csr_pem, info } = request {
            return self.nodes().join(&token, &node_name, &csr_pem, *info).inspect_err(|e| {
                let now = now_ms();
                let Some(left_out) = self.join_refusals.admit(now) else { return };
                let name = if check_dns_subdomain(&node_name).is_ok() { node_name.as_str() } else { "<invalid>" };
                let more = if left_out > 0 {
                    format!(" ({left_out} more joins were refused in the minute before; only the first of each minute is shown)")
                } else {
                    String::new()
                };
                let message: String = e.to_string().chars().take(300).collect();
                self.events.node(name, EventReason::JoinRefused, format!("{message}{more}"), now);
            });
        }
        authorize(identity, required_role(&request))?;
        let who = identity.map_or_else(|| "the leader".to_string(), |i| i.to_string());
        let who = who.as_str();
        // Containers with more than the defaults: admins only, however the app is written.
        if let Request::Apply { apps, cronjobs, .. } = &request {
            if identity.and_then(|i| i.role()) != Some(Role::Admin) {
                let privileged = apps::needing_admin(&self.objects, apps, cronjobs)?;
                if !privileged.is_empty() {
                    return Err(Error::PermissionDenied(format!(
                        "nothing applied: {}; this needs the admin role; you are {who}",
                        privileged.join(", ")
                    )));
                }
            }
        }
        match request {
            Request::Join { .. } => unreachable!("handled above"),
            Request::GetNodes => Ok(Response::Nodes(self.nodes().node_views()?)),
            Request::GetLeaders => Ok(Response::Leaders(match &self.ha {
                Some(ha) => ha.leaders(),
                None => vec![self.me.clone()],
            })),
            Request::GetNode { name } => self.nodes().describe_node(&name),
            Request::LabelNode { name, set, remove } => self.nodes().label(&name, set, remove, who),
            Request::SetCordon { name, cordoned } => self.nodes().cordon(&name, cordoned, who),
            Request::Drain { name, include_every_board } => self.nodes().drain_node(&name, include_every_board, who),
            Request::AllowPrivileges { app, cap_add, seccomp_unconfined, control_plane, host_network } => {
                apps::allow_privileges(
                    &self.objects,
                    &self.events,
                    &app,
                    cap_add,
                    seccomp_unconfined,
                    control_plane,
                    host_network,
                    who,
                )
            }
            Request::GetPolicies => Ok(Response::Policies(
                self.objects.list::<bramble_proto::model::Policy>()?.into_iter().map(|v| v.value).collect(),
            )),
            Request::DeletePolicy { app } => apps::delete_policy(&self.objects, &self.events, &app, who),
            Request::Apply { apps, configs, cronjobs, .. }
                if !crate::ingress::proxy::reserved(&apps, &configs, &cronjobs).is_empty() =>
            {
                Err(Error::Problems(crate::ingress::proxy::reserved(&apps, &configs, &cronjobs)))
            }
            Request::Delete { apps, configs, .. }
                if apps.iter().chain(configs.iter()).any(|n| n == crate::ingress::proxy::NAME) =>
            {
                Err(Error::Invalid(format!(
                    "{} is the leader's ingress proxy: it goes when the leader's [ingress] names no image",
                    crate::ingress::proxy::NAME
                )))
            }
            Request::Apply { ingresses, .. }
                if let Err(e) = self.ingresses().check_certificates(&ingresses, now_ms()) =>
            {
                Err(e)
            }
            Request::Apply { apps, services, configs, cronjobs, ingresses, registries, dry_run: true } => {
                let specs = apps::Specs { apps, services, configs, cronjobs, ingresses, registries };
                Ok(Response::Planned(apps::dry_run(&self.context(), &self.reserved, specs, now_ms())?))
            }
            Request::Apply { apps, services, configs, cronjobs, ingresses, registries, dry_run: false } => {
                let objects = apps::Specs { apps, services, configs, cronjobs, ingresses, registries };
                let cluster = (self.network.as_ref(), self.reserved.as_ref());
                let applied = apps::apply(&self.objects, &self.events, cluster, objects, who, now_ms())?;
                self.published.kick.notify_one();
                self.ingress.wake.notify_one();
                self.rollouts().after_configs_changed(&applied, who);
                Ok(Response::Applied(applied))
            }
            Request::GetConfigs => Ok(Response::Configs(apps::list(&self.objects)?)),
            Request::GetConfig { name } => {
                let config = self.objects.load::<bramble_proto::model::Config>(&name)?.value;
                let events = self.events.about(&ObjectRef::new(Kind::Config, name));
                Ok(Response::Config { config, events })
            }
            Request::GetApps => Ok(Response::Apps(apps::list(&self.objects)?)),
            Request::GetServices => Ok(Response::Services(self.services().services()?)),
            Request::GetService { name } => self.services().describe_service(&name),
            Request::DeleteNode { name } => Ok(Response::Done(self.nodes().delete_node(&name, who)?)),
            Request::GetCronJobs => Ok(Response::CronJobs(cronjobs::views(&self.objects, &self.events, now_ms())?)),
            Request::RunCronJob { cronjob, name } => {
                let done = cronjobs::run_now(&self.objects, &self.events, &cronjob, &name, who, now_ms())?;
                self.published.kick.notify_one();
                Ok(Response::Done(done))
            }
            Request::GetIngresses => Ok(Response::Ingresses(apps::list(&self.objects)?)),
            Request::GetRegistries => Ok(Response::Registries(apps::list(&self.objects)?)),
            Request::GetIngress { name } => self.ingresses().describe(&self.services(), &name, now_ms()),
            Request::Delete { apps, services, secrets, configs, cronjobs, ingresses, registries } => {
                // Boards drop the settings of a registry that is gone.
                let bump = !registries.is_empty();
                let names = apps::Names { apps, services, secrets, configs, cronjobs, ingresses, registries };
                let done = apps::delete(&self.objects, names)?;
                if bump {
                    self.published.secrets.send_modify(|v| *v += 1);
                }
                self.ingress.wake.notify_one();
                for line in done.lines() {
                    let Some(object) = line.split(' ').next().and_then(|r| r.parse::<ObjectRef>().ok()) else {
                        continue;
                    };
                    self.events.record(Event::new(now_ms(), object, EventReason::Deleted, format!("{line} by {who}")));
                }
                Ok(Response::Done(done))
            }
            Request::PutSecret { name, values, create } => {
                Ok(Response::Done(self.secrets().put_secret(&name, values.0, create, who)?))
            }
            Request::AllowSecret { name, apps } => Ok(Response::Done(self.secrets().allow_secret(&name, apps, who)?)),
            Request::GetSecrets => Ok(Response::Secrets(self.secrets().secrets()?)),
            Request::GetSecret { name } => self.secrets().describe_secret(&name),
            Request::GetReplicas { app } => Ok(Response::Replicas(self.objects.replicas(app.as_deref())?)),
            Request::CountReplicas => Ok(Response::ReplicaCounts(self.objects.count_replicas()?)),
            Request::GetApp { name } => self.replicas().describe_app(&name),
            Request::RolloutHistory { app } => self.rollouts().history(&app),
            Request::RolloutUndo { app, to } => Ok(Response::Done(self.rollouts().undo(&app, to, who)?)),
            Request::RolloutRestart { app } => Ok(Response::Done(self.rollouts().restart(&app, who)?)),
            Request::GetReplica { name } => self.replicas().describe_replica(&name),
            Request::Scale { app, replicas, expect_generation } => {
                Ok(Response::Done(self.replicas().scale(&app, replicas, expect_generation, who)?))
            }
            Request::GetEvents { since_ms } => Ok(Response::Events(self.events.since(since_ms))),
            Request::Logs(_)
            | Request::Image { .. }
            | Request::Exec(_)
            | Request::Volume { .. }
            | Request::Prefetch { .. } => {
                Err(Error::Invalid("this request is relayed to an agent on a stream of its own".into()))
            }
            Request::GetTokens => Ok(Response::Tokens(crate::trust::tokens::list(&self.objects, now_ms())?)),
            Request::RevokeToken { id } => Ok(Response::Done(crate::trust::tokens::revoke(&self.objects, &id)?)),
            Request::CreateToken { ttl_secs, single_use } => {
                let fp = self.ca.fingerprint();
                let ttl = Duration::from_secs(ttl_secs);
                let (token, expires_ms) =
                    crate::trust::tokens::create_with(&self.objects, &fp, ttl, single_use, now_ms())?;
                Ok(Response::Token { token: token.to_string(), expires_ms })
            }
            Request::CreateUser { name, role, ttl_secs, csr_pem } => {
                let role: Role = role.parse().map_err(|e| Error::Invalid(format!("role: {e}")))?;
                let ttl = Duration::from_secs(ttl_secs);
                let (cert_pem, expires_ms) =
                    crate::trust::users::create(&self.objects, &self.ca, &name, role, ttl, &csr_pem, who, now_ms())?;
                self.events.record(Event::new(
                    now_ms(),
                    ObjectRef::new(Kind::User, name.clone()),
                    EventReason::Created,
                    format!(
                        "user {name} ({role}) created by {who}, valid for {}",
                        bramble_proto::quantity::format_duration(ttl)
                    ),
                ));
                Ok(Response::User { cert_pem, ca_pem: self.ca.cert_pem().to_string(), expires_ms })
            }
            Request::GetUsers => Ok(Response::Users(crate::trust::users::list(&self.objects, now_ms())?)),
            Request::Backup => {
                let (dir, name) = self
                    .data_dir
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("this leader has no data dir to back up".into()))?;
                let snapshot = crate::backup::take(self.objects.store().as_ref(), dir, name)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                self.events.record(Event::new(
                    now_ms(),
                    ObjectRef::new(Kind::Node, "leader"),
                    EventReason::BackupTaken,
                    format!(
                        "backup of {} objects at revision {} taken by {who}",
                        snapshot.objects.len(),
                        snapshot.revision
                    ),
                ));
                Ok(Response::Backup(Box::new(snapshot)))
            }
            Request::Top { app } => self.top().top(app.as_deref()),
            Request::RevokeUser { name } => {
                let done = crate::trust::users::revoke(&self.objects, &self.revoked, &name, now_ms())?;
                self.events.record(Event::new(
                    now_ms(),
                    ObjectRef::new(Kind::User, name.clone()),
                    EventReason::Revoked,
                    format!("{done} (by {who})"),
                ));
                Ok(Response::Done(done))
            }
        }
    }
}

/// The least role that may make `request`. Viewers read (never a secret's value: nothing
/// returns one); deployers change apps, services and secrets; admins do everything, including
/// nodes, tokens, users, registries, `exec` (which could read a secret) and the boards' images
/// and volumes.
pub fn required_role(request: &Request) -> Role {
    match request {
        Request::GetNodes
        | Request::GetLeaders
        | Request::GetNode { .. }
        | Request::GetApps
        | Request::GetCronJobs
        | Request::GetIngresses
        | Request::GetIngress { .. }
        | Request::GetRegistries
        | Request::GetServices
        | Request::GetService { .. }
        | Request::GetSecrets
        | Request::GetSecret { .. }
        | Request::GetConfigs
        | Request::GetPolicies
        | Request::GetConfig { .. }
        | Request::Top { .. }
        | Request::GetReplicas { .. }
        | Request::CountReplicas
        | Request::GetApp { .. }
        | Request::GetReplica { .. }
        | Request::RolloutHistory { .. }
        | Request::GetEvents { .. }
        | Request::Logs(_)
        | Request::Volume { op: VolumeOp::Ls, .. }
        | Request::Image { op: ImageOp::Ls, .. }
        | Request::Join { .. } => Role::Viewer,
        // Registries decide where boards send credentials: admins only.
        Request::Apply { registries, .. } if !registries.is_empty() => Role::Admin,
        Request::Delete { registries, .. } if !registries.is_empty() => Role::Admin,
        Request::Apply { .. }
        | Request::Delete { .. }
        | Request::RunCronJob { .. }
        | Request::PutSecret { .. }
        | Request::RolloutUndo { .. }
        // What an apply of the image would pull anyway, earlier.
        | Request::Prefetch { .. }
        | Request::RolloutRestart { .. }
        | Request::Scale { .. } => Role::Deployer,
        Request::LabelNode { .. }
        | Request::SetCordon { .. }
        | Request::Drain { .. }
        | Request::AllowPrivileges { .. }
        | Request::DeletePolicy { .. }
        | Request::CreateToken { .. }
        | Request::GetTokens
        | Request::RevokeToken { .. }
        | Request::DeleteNode { .. }
        | Request::Image { .. }
        | Request::Exec(_)
        | Request::Volume { .. }
        | Request::CreateUser { .. }
        | Request::GetUsers
        | Request::Backup
        | Request::AllowSecret { .. }
        | Request::RevokeUser { .. } => Role::Admin,
    }
}

/// Whether a peer with `identity` may make a request that needs `need`; if not, says which role
/// it needs and what the peer is.
pub fn authorize(identity: Option<&Identity>, need: Role) -> Result<()> {
    match identity {
        None => Err(Error::Unauthenticated(
            "a client certificate signed by this cluster's CA is required (only joining works without one)".into(),
        )),
        Some(id) => match id.role() {
            Some(have) if have >= need => Ok(()),
            Some(_) => Err(Error::PermissionDenied(format!("this needs the {need} role; you are {id}"))),
            None => Err(Error::PermissionDenied(format!("{id} may not make client requests"))),
        },
    }
}

/// Requests as an admin, for the leader's tests.
#[cfg(test)]
pub mod testing {
    use super::Api;
    use bramble_proto::wire::{Request, Response};

    /// `req` from an admin's certificate.
    pub fn admin(api: &Api, req: Request) -> Response {
        api.handle(Some(&bramble_transport::Identity::admin("test")), req)
    }

    /// Applies manifest `text` as an admin.
    pub fn apply(api: &Api, text: &str) -> Response {
        let m = bramble_proto::manifest::parse_manifest("t.toml", text).unwrap();
        let (apps, services, configs, cronjobs, ingresses) = (m.apps, m.services, m.configs, m.cronjobs, m.ingresses);
        let registries = m.registries;
        admin(api, Request::Apply { apps, services, configs, cronjobs, ingresses, registries, dry_run: false })
    }
}
