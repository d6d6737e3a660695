//! Calls: a request from the CLI (or a joining agent) and the one response it gets.

use super::session::{ProbeStatus, SecretValues};
use crate::manifest::{AppSpec, ConfigSpec, ServiceSpec};
use crate::model::{App, Config, Event, NodeInfo, NodeView, Replica, RevisionRecord, Service};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A request that gets exactly one [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// An agent without a certificate asks to join with a token and a CSR (PEM).
    Join {
        token: String,
        node_name: String,
        csr_pem: String,
        info: Box<NodeInfo>,
    },
    GetNodes,
    /// The leaders sharing the cluster's store and which one is active (any leader answers).
    GetLeaders,
    GetNode {
        name: String,
    },
    LabelNode {
        name: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    SetCordon {
        name: String,
        cordoned: bool,
    },
    /// Lets deployers apply app `app` with these privileges (admins only): `bramble policy allow`.
    AllowPrivileges {
        app: String,
        #[serde(default)]
        cap_add: Vec<crate::manifest::CapName>,
        #[serde(default)]
        seccomp_unconfined: bool,
        #[serde(default)]
        control_plane: bool,
        #[serde(default)]
        host_network: bool,
    },
    GetPolicies,
    DeletePolicy {
        app: String,
    },
    /// Cordon, then move the node's replicas away one app at a time (`bramble drain`).
    Drain {
        name: String,
        #[serde(default)]
        include_every_board: bool,
    },
    CreateToken {
        ttl_secs: u64,
        /// Gone after the first board joins with it.
        #[serde(default)]
        single_use: bool,
    },
    GetTokens,
    RevokeToken {
        id: String,
    },
    /// Signs a CSR as user `name` with `role` (`admin`, `deployer`, `viewer`) for `ttl_secs`.
    CreateUser {
        name: String,
        role: String,
        ttl_secs: u64,
        csr_pem: String,
    },
    GetUsers,
    /// One consistent snapshot of the cluster, for the admin's CLI to seal (admins only).
    Backup,
    /// What boards and replicas use now, with their recent history (`bramble top`).
    Top {
        /// Only this app's replicas.
        app: Option<String>,
    },
    /// Refuses the user's certificate from the next connection on.
    RevokeUser {
        name: String,
    },
    /// Creates or updates every object, or none of them. With `dry_run`, the leader checks and
    /// plans everything as for real, stores nothing, and answers [`Response::Planned`].
    Apply {
        apps: Vec<AppSpec>,
        services: Vec<ServiceSpec>,
        #[serde(default)]
        configs: Vec<ConfigSpec>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cronjobs: Vec<crate::manifest::CronJobSpec>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ingresses: Vec<crate::manifest::IngressSpec>,
        /// Admins only.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        registries: Vec<crate::manifest::RegistrySpec>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Every cron job, with when each runs next.
    GetCronJobs,
    GetIngresses,
    /// Every `[[registry]]` (hosts, secrets' names, mirrors; never a credential).
    GetRegistries,
    /// Pulls `image` onto `nodes` (none: every connected node) ahead of a rollout. Answered with
    /// [`Response::Pulling`] frames as the boards go, one [`Response::Pulled`] per node, then `Done`.
    Prefetch {
        image: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        nodes: Vec<String>,
    },
    /// An ingress with its backends, certificate and proxies.
    GetIngress {
        name: String,
    },
    /// Makes a job from cron job `cronjob`'s template at once, named `name` (its schedule and
    /// record unchanged; its history counts the job).
    RunCronJob {
        cronjob: String,
        name: String,
    },
    GetConfigs,
    GetConfig {
        name: String,
    },
    GetApps,
    GetServices,
    /// Deletes the named objects (all must exist), or none of them.
    Delete {
        apps: Vec<String>,
        services: Vec<String>,
        #[serde(default)]
        secrets: Vec<String>,
        #[serde(default)]
        configs: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cronjobs: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ingresses: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        registries: Vec<String>,
    },
    /// Creates a secret (`create`: refused if it exists) or replaces its keys (refused if it does
    /// not). Write-only: no request ever returns a value.
    PutSecret {
        name: String,
        values: SecretValues,
        create: bool,
    },
    /// Which apps may use a secret (`None`: any). Admins only.
    AllowSecret {
        name: String,
        apps: Option<Vec<String>>,
    },
    GetSecrets,
    GetSecret {
        name: String,
    },
    /// Replicas, of one app or all.
    GetReplicas {
        app: Option<String>,
    },
    /// How many replicas each app has, by phase: what `get apps` shows, without every replica
    /// crossing the network (10,000 replicas are ~5 MB as a list, a few KB as counts).
    CountReplicas,
    GetApp {
        name: String,
    },
    GetReplica {
        name: String,
    },
    /// An app's revisions, oldest first, with how each rollout went.
    RolloutHistory {
        app: String,
    },
    /// Goes back to revision `to` (default: the one before the current) as a new revision.
    RolloutUndo {
        app: String,
        to: Option<u64>,
    },
    /// Replaces every replica with a new one of the same spec, rolled like any update.
    RolloutRestart {
        app: String,
    },
    /// Sets an app's replica count; `expect_generation` refuses the change if the app changed since.
    Scale {
        app: String,
        replicas: u32,
        expect_generation: Option<u64>,
    },
    /// A service with its endpoints.
    GetService {
        name: String,
    },
    /// Removes a node (its pod subnet is released; its replicas are replaced elsewhere).
    DeleteNode {
        name: String,
    },
    /// Events at or after `since_ms`, oldest first.
    GetEvents {
        since_ms: u64,
    },
    /// A replica's output (or every replica of `app/NAME`), streamed as [`Response::Log`] frames
    /// and ended by [`Response::Done`].
    Logs(LogRequest),
    /// The image store of one node. For `Import`, the archive's bytes follow the opening frame
    /// on the same stream, raw, until the client finishes its side.
    Image {
        node: String,
        op: ImageOp,
    },
    /// The local volumes of one node (`ls` of every connected node when `node` is None).
    Volume {
        node: Option<String>,
        op: VolumeOp,
    },
    /// A command in a running replica's container: [`ExecInput`] frames follow on the client's
    /// side, [`ExecOutput`] frames come back (an error instead of `Started` if it cannot run).
    Exec(ExecRequest),
}

/// What `bramble exec` runs, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// A replica name, or `app/NAME` for one of the app's running replicas.
    pub replica: String,
    pub command: Vec<String>,
    /// Give the command standard input (otherwise it reads end-of-file).
    pub stdin: bool,
    /// Run it on a terminal (one stream: stderr goes to stdout).
    pub tty: bool,
    /// The terminal's size, rows and columns.
    pub size: Option<(u16, u16)>,
    /// Which of the replica's containers (`-c`; none: the app's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Client → replica, after an [`ExecRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecInput {
    Stdin(Vec<u8>),
    /// The client's terminal changed size.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// No more input.
    Eof,
}

/// Replica → client: the command started, its output, then its exit code (or an error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecOutput {
    /// Running, in `replica` (the one chosen for `app/NAME`).
    Started {
        replica: String,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The exit code (128 + the signal for a command killed by a signal).
    Exit(i32),
    Error(ApiError),
}

/// What to do with a node's image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageOp {
    Ls,
    Rm {
        reference: String,
    },
    /// An OCI layout (as a tar), an OCI archive or a `docker save` tarball of `size` bytes.
    Import {
        name: Option<String>,
        size: u64,
    },
}

/// `bramble volume ls|rm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeOp {
    Ls,
    /// Refused while a replica on the node uses it.
    Rm {
        name: String,
    },
}

/// One local volume on a board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub node: String,
    pub name: String,
    /// Bytes its files take (as `du` counts, apparent sizes).
    pub size: u64,
    pub files: u64,
    pub created_ms: u64,
    /// Replicas on the node whose app mounts it.
    pub used_by: Vec<String>,
}

/// One image in a node's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    pub platform: String,
    pub size: u64,
    pub layers: usize,
}

/// What output to send: the last `tail` lines, lines since `since_ms`, and with `follow` new ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// A replica name, or `app/NAME` for every replica of an app.
    pub target: String,
    pub tail: Option<u64>,
    pub since_ms: Option<u64>,
    pub follow: bool,
    /// Which of each replica's containers (`-c`; none: the app's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Joined {
        node_name: String,
        cert_pem: String,
        ca_pem: String,
    },
    Nodes(Vec<NodeView>),
    Leaders(Vec<LeaderInfo>),
    Node {
        node: Box<NodeView>,
        events: Vec<Event>,
    },
    Token {
        token: String,
        expires_ms: u64,
    },
    /// A user's new certificate, and the CA that signed it (for the CLI config it goes into).
    User {
        cert_pem: String,
        ca_pem: String,
        expires_ms: u64,
    },
    Users(Vec<UserInfo>),
    Backup(Box<crate::backup::Snapshot>),
    Top {
        nodes: Vec<crate::usage::NodeUsage>,
        replicas: Vec<crate::usage::ReplicaUsage>,
    },
    Configs(Vec<Config>),
    Policies(Vec<crate::model::Policy>),
    Config {
        config: Config,
        events: Vec<Event>,
    },
    /// Done, with a sentence for humans (e.g. `node/pi-1 cordoned`).
    Done(String),
    /// What `Apply` did to each object, in order.
    Applied(Vec<Applied>),
    /// What a dry-run `Apply` would do.
    Planned(ApplyPlan),
    Apps(Vec<App>),
    CronJobs(Vec<CronJobView>),
    Ingresses(Vec<crate::model::Ingress>),
    Registries(Vec<crate::model::Registry>),
    /// A prefetch's progress on `node` (bytes of the image's layers so far, of all).
    Pulling {
        #[serde(default)]
        node: String,
        done: u64,
        total: u64,
    },
    /// A prefetch ended on `node`: the image, or why not.
    Pulled {
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Ingress(Box<IngressView>),
    Services(Vec<Service>),
    Replicas(Vec<Replica>),
    ReplicaCounts(Vec<ReplicaCount>),
    App {
        app: Box<App>,
        replicas: Vec<Replica>,
        events: Vec<Event>,
        /// The latest revision and its rollout.
        #[serde(default)]
        rollout: Option<Box<RevisionRecord>>,
        /// The autoscaler's last decision, if the app is autoscaled.
        #[serde(default)]
        autoscale: Option<String>,
    },
    History(Vec<RevisionRecord>),
    Replica {
        replica: Box<Replica>,
        /// Live detail the leader keeps in memory only (e.g. image pull progress).
        detail: Option<String>,
        /// Each probe's latest result (memory only).
        #[serde(default)]
        probes: Vec<ProbeStatus>,
        events: Vec<Event>,
    },
    Service {
        service: Box<Service>,
        /// Whether the app it sends to exists (a service may come before its app).
        app_exists: bool,
        /// Each port with the app's port it sends to (names resolved).
        ports: Vec<crate::network::RoutePort>,
        /// Where each endpoint replica runs and its phase, for `describe`.
        replicas: Vec<Replica>,
        events: Vec<Event>,
    },
    Events(Vec<Event>),
    Images(Vec<ImageInfo>),
    Volumes(Vec<VolumeInfo>),
    /// Secrets without their values.
    Secrets(Vec<SecretInfo>),
    /// Join tokens without their secrets.
    Tokens(Vec<TokenInfo>),
    Secret {
        secret: SecretInfo,
        events: Vec<Event>,
    },
    /// Lines of a replica's output (CRI log records without the stream tag).
    Log {
        replica: String,
        lines: Vec<String>,
    },
    Error(ApiError),
}

/// A cron job as `get cronjobs` shows it: stored, with its next run as the leader reads the
/// schedule in its zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronJobView {
    pub cronjob: crate::model::CronJob,
    /// None: suspended, or a schedule that never comes again.
    pub next_ms: Option<u64>,
    pub events: Vec<Event>,
}

/// A user as `user ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub expired: bool,
    pub revoked_ms: Option<u64>,
    pub created_by: String,
}

/// A join token as `token ls` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub expired: bool,
    pub single_use: bool,
}

/// `describe ingress`: the ingress, where each path goes now, its certificate, and the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngressView {
    pub ingress: crate::model::Ingress,
    pub backends: Vec<IngressBackend>,
    #[serde(default)]
    pub certificate: Option<IngressCertificate>,
    /// The proxy's replicas (`bramble-ingress`): where it runs and whether it is ready.
    pub proxies: Vec<crate::model::Replica>,
    /// Why the proxy cannot serve some of it (empty: all served).
    pub problems: Vec<String>,
    pub events: Vec<crate::model::Event>,
}

/// One path of an ingress and the service behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressBackend {
    pub path: String,
    /// `prefix` or `exact`.
    pub matching: String,
    pub service: String,
    pub port: String,
    /// Where the proxy sends it (the service's virtual IP and port), if it can.
    pub upstream: Option<String>,
    /// The service's endpoints that receive traffic, and all of them.
    pub ready: usize,
    pub endpoints: usize,
}

/// Where an ingress's certificate comes from, and when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressCertificate {
    /// `secret NAME` or `acme`.
    pub source: String,
    /// The certificate's end (secrets only: ACME's are the proxy's, renewed by it).
    #[serde(default)]
    pub not_after_ms: Option<u64>,
    /// What is wrong with it (unreadable, a key that does not match, the host not among its
    /// names, expired).
    #[serde(default)]
    pub problem: Option<String>,
    /// ACME: what each proxy serves for the host, as the leader last found it (it connects to
    /// each ingress board's HTTPS port, asks for the host and reads the certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served: Vec<ServedCertificate>,
}

/// A certificate one proxy serves for a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedCertificate {
    pub node: String,
    /// Its end (none: none is served).
    #[serde(default)]
    pub not_after_ms: Option<u64>,
    #[serde(default)]
    pub problem: Option<String>,
    /// When the leader looked.
    pub checked_ms: u64,
}

/// What may be shown of a secret: its keys and their sizes, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    /// Each key's value size in bytes.
    pub keys: BTreeMap<String, u64>,
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Who wrote it last (`deployer:ci`).
    #[serde(default)]
    pub changed_by: Option<String>,
    /// The apps that may use it (none: any app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_apps: Option<Vec<String>>,
}

/// What applying did to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// `app` or `service`.
    pub kind: String,
    pub name: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = match self.outcome {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        };
        write!(f, "{}/{} {o}", self.kind, self.name)
    }
}

/// What `apply --dry-run` found: each object's outcome, and where each app's replicas would go
/// once its rollout has run (as `nomad job plan` shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPlan {
    pub applied: Vec<Applied>,
    /// One per app in the manifests, in their order.
    pub apps: Vec<AppPlanView>,
}

/// One app's part of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPlanView {
    pub app: String,
    /// The revision a new pod template would get (None: the template stays).
    pub revision: Option<u64>,
    /// Why there is a new revision (`apply: image A -> B`).
    pub cause: Option<String>,
    pub changes: Vec<PlannedChange>,
    /// How the rollout would end if every new replica became ready: `complete`, or why it
    /// would stop.
    pub outcome: String,
}

/// One replica that would be created, replaced or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChange {
    pub action: PlannedAction,
    /// The replica that goes (replace, remove).
    pub replica: Option<String>,
    /// The board it runs or would run on (None: no board would take it).
    pub node: Option<String>,
    /// Why a new replica would stay Pending.
    pub pending: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlannedAction {
    Create,
    Replace,
    Remove,
}

/// Errors the leader returns, with codes a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Set by a standby leader: the active leader's address, where to ask instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// What the leader found wrong in the objects of an apply, each by object and field, so the
    /// CLI can point at the file and line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ObjectProblem>,
}

/// A problem with one field of one object a user sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectProblem {
    /// `app`, `service`, `config`, `secret`.
    pub kind: String,
    pub name: String,
    /// The dotted field, as `ports[0].host` (empty: the whole object).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ObjectProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: ", self.kind, self.name)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), leader: None, problems: Vec::new() }
    }

    /// A standby's answer to anything but `GetLeaders`: ask the active leader.
    pub fn not_active(me: &str, active: Option<&LeaderInfo>) -> Self {
        match active {
            Some(a) => ApiError {
                code: ErrorCode::Unavailable,
                message: format!("leader {me} is a standby; the active leader is {} at {}", a.name, a.addr),
                leader: Some(a.addr.clone()),
                problems: Vec::new(),
            },
            None => ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "leader {me} is a standby and no leader is active right now (an election is under way); try again"
                ),
            ),
        }
    }
}

/// One leader of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub name: String,
    /// Where boards and the CLI reach it.
    pub addr: String,
    pub active: bool,
    /// Since when it has been running (standby) or active.
    pub since_ms: u64,
    /// `redb` or `etcd`.
    pub store: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    /// No valid client certificate, or a bad join token.
    Unauthenticated,
    PermissionDenied,
    /// A compare-and-swap lost, or a name is taken.
    Conflict,
    VersionMismatch,
    Unavailable,
    Internal,
}

/// An app's replicas counted (`CountReplicas`), apps by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaCount {
    pub app: String,
    /// Every replica the store holds for it, whatever its phase.
    pub total: u32,
    /// By phase (`Running`, `Pending`, …); phases with none are left out.
    pub phases: BTreeMap<String, u32>,
    /// Running, ready and not being stopped: taking traffic ([`Replica::serving`]).
    pub serving: u32,
    /// Neither being stopped nor Lost: the replicas the app counts as its own.
    pub live: u32,
}

impl ReplicaCount {
    /// Counts one more replica of this app.
    pub fn add(&mut self, phase: crate::model::ReplicaPhase, ready: bool, terminating: bool) {
        use crate::model::ReplicaPhase;
        self.total += 1;
        *self.phases.entry(format!("{phase:?}")).or_default() += 1;
        self.serving += u32::from(ready && phase == ReplicaPhase::Running && !terminating);
        self.live += u32::from(!terminating && phase != ReplicaPhase::Lost);
    }

    /// Replicas counted by app, apps by name.
    pub fn tally(
        replicas: impl IntoIterator<Item = (String, crate::model::ReplicaPhase, bool, bool)>,
    ) -> Vec<ReplicaCount> {
        let mut apps: BTreeMap<String, ReplicaCount> = BTreeMap::new();
        for (app, phase, ready, terminating) in replicas {
            apps.entry(app).or_default().add(phase, ready, terminating);
        }
        apps.into_iter().map(|(app, c)| ReplicaCount { app, ..c }).collect()
    }
}
